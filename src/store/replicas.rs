//! PostgreSQL: keeps this process's memory (`recent`, `referral_index`) in step with
//! the other gateway processes sharing the database, through LISTEN/NOTIFY.
//!
//! Each writer announces the versions and referral rows it commits, in the same
//! transaction, so an announcement is delivered at COMMIT or not at all. The listener
//! supersedes the versions they name and reads the referral rows again. Until it
//! listens, and while it has no connection, the memory is untrusted (the store asks
//! the database); once it listens (again), announcements may have been missed, so the
//! versions are forgotten and every referral row is read again.

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{ReferralRow, Store, StoredResource};

const CHANNEL: &str = "crossway_versions";

/// Payload bytes per notification, under PostgreSQL's limit of 8,000.
const MAX_PAYLOAD: usize = 7_000;

/// The announcement lines' "type" for a referral row (resource types are capitalised).
const REFERRAL: &str = "referral";

/// The payloads announcing `written` and `referrals` (sent by the writer before
/// COMMIT), as a JSON array: each is `origin`, then one `type/id/version` per line.
/// FHIR and referral ids have no `/` or newline.
fn announcements(
    origin: &str,
    written: &[StoredResource],
    referrals: &[ReferralRow],
) -> Option<String> {
    let lines = written
        .iter()
        .map(|r| format!("\n{}/{}/{}", r.resource_type, r.id, r.version))
        .chain(
            referrals
                .iter()
                .map(|r| format!("\n{REFERRAL}/{}/{}", r.referral.id, r.referral.version)),
        );
    let mut payloads = Vec::new();
    let mut current = String::new();
    for line in lines {
        if !current.is_empty() && current.len() + line.len() > MAX_PAYLOAD {
            payloads.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(origin);
        }
        current.push_str(&line);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    (!payloads.is_empty()).then(|| serde_json::to_string(&payloads).expect("strings serialise"))
}

impl super::Tx<'_> {
    /// Queues the announcement of what this transaction wrote, to go with its last
    /// statement; delivered if it commits.
    pub(super) fn defer_announcement(&mut self, origin: &str) {
        if let Some(payloads) = announcements(origin, &self.written, &self.written_referrals) {
            self.defer(
                "SELECT count(pg_notify($1, p)) FROM jsonb_array_elements_text($2::jsonb) AS p"
                    .into(),
                vec![super::Arg::Text(CHANNEL.into()), super::Arg::Text(payloads)],
            );
        }
    }
}

/// What one payload from another process asks for.
#[derive(Debug, PartialEq)]
enum Announced<'a> {
    /// Versions to supersede and referral rows to read again.
    Changes {
        versions: Vec<(&'a str, &'a str, i64)>,
        referrals: Vec<String>,
    },
    /// This process's own.
    Own,
    /// Not readable: nothing it might have named can be trusted.
    Unreadable,
}

fn parse<'a>(origin: &str, payload: &'a str) -> Announced<'a> {
    let mut lines = payload.split('\n');
    if lines.next() == Some(origin) {
        return Announced::Own;
    }
    let (mut versions, mut referrals) = (Vec::new(), Vec::new());
    for line in lines {
        let parsed = line.rsplit_once('/').and_then(|(key, version)| {
            let (kind, id) = key.split_once('/')?;
            Some((kind, id, version.parse::<i64>().ok()?))
        });
        match parsed {
            Some((REFERRAL, id, _)) => referrals.push(id.to_string()),
            Some(version) => versions.push(version),
            None => return Announced::Unreadable,
        }
    }
    Announced::Changes {
        versions,
        referrals,
    }
}

/// Stops the listener when the last clone of the store is dropped.
pub(super) struct Listening(tokio::task::AbortHandle);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts listening for the announcements of other processes (`origin` tells this
/// process's own apart). `store` must not hold the returned handle.
pub(super) fn listen(url: String, origin: String, store: Store) -> Listening {
    let task = tokio::spawn(async move {
        loop {
            if let Err(e) = follow(&url, &origin, &store).await {
                tracing::warn!(message = "Not following other processes' writes; reading from the database until it does.", error = %e);
            }
            store.recent.set_trusted(false);
            store.referral_index.set_trusted(false);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Listening(task.abort_handle())
}

/// Listens and applies announcements until the connection fails.
async fn follow(url: &str, origin: &str, store: &Store) -> Result<(), Box<dyn std::error::Error>> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    catch_up(store).await?;
    loop {
        match listener.try_recv().await? {
            Some(n) => match parse(origin, n.payload()) {
                Announced::Own => {}
                Announced::Changes {
                    versions,
                    referrals,
                } => {
                    for (resource_type, id, version) in versions {
                        store.recent.supersede(resource_type, id, version);
                    }
                    if !referrals.is_empty() {
                        store
                            .referral_index
                            .apply(store.referral_rows(&referrals).await?);
                    }
                }
                Announced::Unreadable => {
                    tracing::warn!(
                        message =
                            "Unreadable announcement from another process; memory read again."
                    );
                    catch_up(store).await?;
                }
            },
            // Reconnected and listening again: what was missed is unknown.
            None => catch_up(store).await?,
        }
    }
}

/// Forgets the versions and the referral rows (organisations' rows are read again as
/// they are asked for); then both may answer.
async fn catch_up(store: &Store) -> super::Result<()> {
    store.recent.set_trusted(true);
    store.referral_index.set_trusted(true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(resource_type: &str, id: &str, version: i64) -> StoredResource {
        StoredResource {
            resource_type: resource_type.into(),
            id: id.into(),
            version,
            last_updated: 0,
            body: "{}".into(),
        }
    }

    fn referral(id: &str, version: i64) -> ReferralRow {
        let mut row = crate::store::referral_index::tests::row(id, "o", "pending", 0);
        row.referral.version = version;
        row
    }

    #[test]
    fn announcements_name_versions_and_referrals_for_other_processes() {
        let written = [version("Task", "t1", 2), version("Patient", "p-1.a", 7)];
        let sent: Vec<String> =
            serde_json::from_str(&announcements("a", &written, &[referral("r1", 2)]).unwrap())
                .unwrap();
        assert_eq!(sent, vec!["a\nTask/t1/2\nPatient/p-1.a/7\nreferral/r1/2"]);
        assert_eq!(parse("a", &sent[0]), Announced::Own);
        assert_eq!(
            parse("b", &sent[0]),
            Announced::Changes {
                versions: vec![("Task", "t1", 2), ("Patient", "p-1.a", 7)],
                referrals: vec!["r1".into()],
            }
        );
        assert_eq!(parse("b", "a\nnot a version"), Announced::Unreadable);
        assert_eq!(announcements("a", &[], &[]), None);
    }

    #[test]
    fn long_announcements_are_split_under_the_payload_limit() {
        let written: Vec<StoredResource> = (0..1_000)
            .map(|i| version("Observation", &format!("{i:064}"), 1))
            .collect();
        let sent: Vec<String> =
            serde_json::from_str(&announcements("origin", &written, &[]).unwrap()).unwrap();
        assert!(sent.len() > 1);
        assert!(
            sent.iter()
                .all(|p| p.len() <= MAX_PAYLOAD && p.starts_with("origin\n"))
        );
        let lines: usize = sent.iter().map(|p| p.lines().count() - 1).sum();
        assert_eq!(lines, 1_000);
    }
}
