//! Every referral row in memory: CBO lists and reads are answered without a query.
//!
//! The writers apply each batch's rows after COMMIT. On SQLite this process is the only
//! writer and the rows are loaded at open, so the index is never older than the
//! database. On PostgreSQL `replicas` loads them once it listens for other processes'
//! announcements, and reads the rows they announce; until then, and while it has no
//! connection, the index is untrusted and the store asks the database. As with
//! `recent`, a reader may see a commit a few milliseconds before its fsync completes;
//! only the writer's client is promised durability.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use super::{ReferralFilter, ReferralRow};
use crate::shards::Shards;

pub struct ReferralIndex {
    inner: RwLock<Inner>,
}

struct Inner {
    by_id: Shards<String, ReferralRow>,
    /// Per organisation, the list order: (updated_at, id).
    by_org: HashMap<String, BTreeSet<(i64, String)>>,
    /// Whether it may answer (see the module comment).
    trusted: bool,
}

impl ReferralIndex {
    pub fn new(trusted: bool) -> ReferralIndex {
        ReferralIndex {
            inner: RwLock::new(Inner {
                by_id: Shards::default(),
                by_org: HashMap::new(),
                trusted,
            }),
        }
    }

    pub fn trusted(&self) -> bool {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).trusted
    }

    pub fn set_trusted(&self, trusted: bool) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .trusted = trusted;
    }

    /// Keeps each row unless the row held has a newer version: rows come from the
    /// writers after COMMIT and from the database after another process wrote, and
    /// the two may cross. (A row changes only with its Task's version.)
    pub fn apply(&self, rows: impl IntoIterator<Item = ReferralRow>) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            let id = row.referral.id.clone();
            if let Some(old) = inner.by_id.get(&id) {
                if old.referral.version > row.referral.version {
                    continue;
                }
                let key = (old.updated_at, id.clone());
                let org = old.referral.organization.clone();
                if let Some(set) = inner.by_org.get_mut(&org) {
                    set.remove(&key);
                }
            }
            inner
                .by_org
                .entry(row.referral.organization.clone())
                .or_default()
                .insert((row.updated_at, id.clone()));
            inner.by_id.insert(id, row);
        }
    }

    pub fn get(&self, organization: &str, id: &str) -> Option<ReferralRow> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .by_id
            .get(id)
            .filter(|r| r.referral.organization == organization)
            .cloned()
    }

    /// A page in list order; the same rows the SQL query of `Store::referrals` returns.
    pub fn page(&self, organization: &str, f: &ReferralFilter) -> Vec<ReferralRow> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let Some(order) = inner.by_org.get(organization) else {
            return Vec::new();
        };
        let start = match &f.after {
            Some((at, id)) => std::ops::Bound::Excluded((*at, id.clone())),
            None => std::ops::Bound::Unbounded,
        };
        order
            .range((start, std::ops::Bound::Unbounded))
            .filter_map(|(_, id)| inner.by_id.get(id))
            .filter(|r| f.status.as_ref().is_none_or(|s| *s == r.referral.status))
            .filter(|r| f.urgency.as_ref().is_none_or(|u| *u == r.referral.urgency))
            .filter(|r| f.updated_since.is_none_or(|t| r.updated_at >= t))
            .take(usize::try_from(f.limit).unwrap_or(0))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::Referral;

    pub(in crate::store) fn row(id: &str, org: &str, status: &str, at: i64) -> ReferralRow {
        ReferralRow {
            referral: Referral {
                id: id.into(),
                organization: org.into(),
                task_id: format!("t-{id}"),
                status: status.into(),
                version: 1,
                urgency: "routine".into(),
                respond_by: None,
                respond_by_text: None,
                client_ref: None,
                domain: None,
                created_at: 0,
            },
            updated_at: at,
        }
    }

    #[test]
    fn pages_follow_the_last_change_and_stay_per_organisation() {
        let index = ReferralIndex::new(true);
        index.apply([
            row("a", "o1", "pending", 1),
            row("b", "o1", "pending", 2),
            row("c", "o2", "pending", 3),
        ]);
        index.apply([row("a", "o1", "accepted", 4)]);
        let all = ReferralFilter {
            limit: 10,
            ..Default::default()
        };
        let ids =
            |rows: Vec<ReferralRow>| rows.into_iter().map(|r| r.referral.id).collect::<Vec<_>>();
        assert_eq!(ids(index.page("o1", &all)), ["b", "a"]);
        let after_b = ReferralFilter {
            after: Some((2, "b".into())),
            ..all.clone()
        };
        assert_eq!(ids(index.page("o1", &after_b)), ["a"]);
        let accepted = ReferralFilter {
            status: Some("accepted".into()),
            ..all.clone()
        };
        assert_eq!(ids(index.page("o1", &accepted)), ["a"]);
        assert!(index.get("o2", "a").is_none());
        assert_eq!(index.get("o1", "a").unwrap().referral.status, "accepted");
    }

    #[test]
    fn a_row_read_late_does_not_replace_a_newer_one() {
        let index = ReferralIndex::new(true);
        let mut newer = row("a", "o1", "accepted", 5);
        newer.referral.version = 3;
        index.apply([newer]);
        index.apply([row("a", "o1", "pending", 1)]);
        assert_eq!(index.get("o1", "a").unwrap().referral.status, "accepted");
        let all = ReferralFilter {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(index.page("o1", &all).len(), 1);
    }
}
