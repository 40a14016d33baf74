//! PostgreSQL: keeps this process's current versions in memory (`recent`) in step with
//! the other gateway processes sharing the database, through LISTEN/NOTIFY.
//!
//! Each writer announces the versions it commits, in the same transaction, so an
//! announcement is delivered at COMMIT or not at all. The listener supersedes the
//! entries they name. Until it listens, and while it has no connection, `recent` is
//! untrusted; when a connection is replaced, announcements may have been missed, so
//! everything is forgotten.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::StoredResource;
use super::recent::RecentVersions;

pub(super) const CHANNEL: &str = "crossway_versions";

/// Payload bytes per notification, under PostgreSQL's limit of 8,000.
const MAX_PAYLOAD: usize = 7_000;

/// Announces `written` (sent by the writer before COMMIT): a JSON array of payloads, each
/// `origin` then one `type/id/version` per line. FHIR ids have no `/` or newline.
pub(super) fn announcements(origin: &str, written: &[StoredResource]) -> Option<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for r in written {
        let line = format!("\n{}/{}/{}", r.resource_type, r.id, r.version);
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

/// The statement that sends them (`$1`: the channel, `$2`: `announcements`).
pub(super) const ANNOUNCE: &str =
    "SELECT count(pg_notify($1, p)) FROM jsonb_array_elements_text($2::jsonb) AS p";

impl super::Tx<'_> {
    /// Announces the versions this transaction wrote, delivered if it commits.
    pub(super) async fn announce(&mut self, origin: &str) -> super::Result<()> {
        if let Some(payloads) = announcements(origin, &self.written) {
            sqlx::query(ANNOUNCE)
                .bind(CHANNEL)
                .bind(payloads)
                .fetch_one(&mut *self.conn)
                .await?;
        }
        Ok(())
    }
}

/// Applies one payload from another process.
fn apply(recent: &RecentVersions, origin: &str, payload: &str) {
    let mut lines = payload.split('\n');
    if lines.next() == Some(origin) {
        return;
    }
    for line in lines {
        let parsed = line.rsplit_once('/').and_then(|(key, version)| {
            let (resource_type, id) = key.split_once('/')?;
            Some((resource_type, id, version.parse::<i64>().ok()?))
        });
        match parsed {
            Some((resource_type, id, version)) => recent.supersede(resource_type, id, version),
            // Not ours to read: serve nothing that it might have named.
            None => {
                tracing::warn!(
                    message =
                        "Unreadable version announcement; current versions in memory dropped."
                );
                recent.clear();
                return;
            }
        }
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
/// process's own apart).
pub(super) fn listen(url: String, origin: String, recent: Arc<RecentVersions>) -> Listening {
    let task = tokio::spawn(async move {
        loop {
            recent.set_trusted(false);
            let mut listener = match PgListener::connect(&url).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(message = "Cannot listen for other processes' writes; reading everything from the database.", error = %e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(message = "Cannot listen for other processes' writes; reading everything from the database.", error = %e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            recent.set_trusted(true);
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => apply(&recent, &origin, n.payload()),
                    // Reconnected (and listening again): what was missed is unknown.
                    Ok(None) => recent.clear(),
                    Err(e) => {
                        tracing::warn!(message = "Lost the listener for other processes' writes.", error = %e);
                        break;
                    }
                }
            }
        }
    });
    Listening(task.abort_handle())
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

    #[test]
    fn announcements_supersede_other_processes_entries_only() {
        let written = [version("Task", "t1", 2), version("Patient", "p-1.a", 7)];
        let sent: Vec<String> =
            serde_json::from_str(&announcements("a", &written).unwrap()).unwrap();
        assert_eq!(sent, vec!["a\nTask/t1/2\nPatient/p-1.a/7"]);

        let recent = RecentVersions::new(true);
        let mut old = written.clone().map(|mut r| {
            r.version -= 1;
            r
        });
        recent.offer_all(old.clone(), recent.epoch());
        apply(&recent, "a", &sent[0]);
        assert_eq!(
            recent.version("Task", "t1"),
            Some(1),
            "its own announcement"
        );
        apply(&recent, "b", &sent[0]);
        assert_eq!(recent.version("Task", "t1"), Some(2));
        assert!(recent.get("Patient", "p-1.a").is_none());
        old[0].version = 2;
        recent.offer_all(old, recent.epoch());
        assert_eq!(recent.get("Task", "t1").unwrap().version, 2);
    }

    #[test]
    fn long_announcements_are_split_under_the_payload_limit() {
        let written: Vec<StoredResource> = (0..1_000)
            .map(|i| version("Observation", &format!("{i:064}"), 1))
            .collect();
        let sent: Vec<String> =
            serde_json::from_str(&announcements("origin", &written).unwrap()).unwrap();
        assert!(sent.len() > 1);
        assert!(
            sent.iter()
                .all(|p| p.len() <= MAX_PAYLOAD && p.starts_with("origin\n"))
        );
        let lines: usize = sent.iter().map(|p| p.lines().count() - 1).sum();
        assert_eq!(lines, 1_000);
        assert_eq!(announcements("origin", &[]), None);
    }

    #[test]
    fn an_unreadable_announcement_forgets_everything() {
        let recent = RecentVersions::new(true);
        recent.offer_all([version("Task", "t", 1)], recent.epoch());
        apply(&recent, "b", "a\nnot a version");
        assert_eq!(recent.version("Task", "t"), None);
    }
}
