//! The referral rows of the organisations in use, in memory: their CBO lists and reads
//! are answered without a query. An organisation's rows are read the first time it is
//! asked for (nothing is loaded at start, so a restart is ready at any size), and the
//! organisations least recently asked for are forgotten when the rows held pass the
//! budget; an organisation with more rows than the whole budget is always answered by
//! the database, from its `(organization, updated_at, id)` index.
//!
//! The writers apply each batch's rows after COMMIT. An organisation is marked as
//! loading *before* its rows are read, and rows of loading or loaded organisations are
//! applied: a row committed after the read began arrives through `apply`, one committed
//! before is in the read, and of two copies the newer version is kept. On SQLite this
//! process is the only writer. On PostgreSQL `replicas` applies the rows other
//! processes announce; until it listens, and while it has no connection, the index is
//! untrusted and the store asks the database. As with `recent`, a reader may see a
//! commit a few milliseconds before its fsync completes; only the writer's client is
//! promised durability.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{CacheStats, ReferralFilter, ReferralRow};
use crate::shards::Shards;

/// What one row costs in memory, roughly (the row's strings, its list entry, the
/// maps' overhead), to turn the byte budget into rows.
pub const ROW_BYTES: usize = 512;

pub struct ReferralIndex {
    inner: RwLock<Inner>,
}

/// Where an organisation stands.
#[derive(Debug)]
enum Held {
    /// Its rows are being read: writes are applied, reads go to the database.
    Loading,
    /// Every row is here; the tick of its last use (set under the read lock: a read
    /// takes no write lock).
    Loaded(AtomicU64),
    /// More rows than the budget: always the database.
    TooMany,
}

struct Inner {
    by_id: Shards<String, ReferralRow>,
    /// Per organisation, the list order: (updated_at, id).
    by_org: HashMap<String, BTreeSet<(i64, String)>>,
    held: HashMap<String, Held>,
    rows: usize,
    max_rows: usize,
    tick: AtomicU64,
    /// Organisations forgotten to stay within the budget, since the start.
    evicted: u64,
    /// Whether it may answer (see the module comment).
    trusted: bool,
}

/// What the store should do for an organisation's read.
pub enum Ask<'a> {
    /// Answer from memory.
    Here(&'a ReferralIndex),
    /// Read its rows (then [`ReferralIndex::loaded`]), answering from memory after.
    Load,
    /// Ask the database.
    Database,
}

impl ReferralIndex {
    pub fn new(trusted: bool) -> ReferralIndex {
        ReferralIndex {
            inner: RwLock::new(Inner {
                by_id: Shards::default(),
                by_org: HashMap::new(),
                held: HashMap::new(),
                rows: 0,
                max_rows: (64 << 20) / ROW_BYTES,
                tick: AtomicU64::new(0),
                evicted: 0,
                trusted,
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows this index may hold, from a byte budget.
    pub fn set_budget(&self, bytes: usize) {
        self.write().max_rows = bytes / ROW_BYTES;
    }

    pub fn max_rows(&self) -> usize {
        self.read().max_rows
    }

    /// Rows held (and their estimated bytes) and organisations forgotten, for
    /// `/metrics`; hits and misses are not counted.
    pub fn stats(&self) -> CacheStats {
        let inner = self.read();
        CacheStats {
            bytes: inner.rows * ROW_BYTES,
            entries: inner.rows,
            evicted: inner.evicted,
            ..CacheStats::default()
        }
    }

    pub fn trusted(&self) -> bool {
        self.read().trusted
    }

    /// Serves again, or stops; forgets every organisation either way (what was missed
    /// while not following is unknown).
    pub fn set_trusted(&self, trusted: bool) {
        let mut inner = self.write();
        inner.forget_all();
        inner.trusted = trusted;
    }

    /// Forgets every organisation (another process wrote).
    pub fn clear(&self) {
        self.write().forget_all();
    }

    /// How to answer a read of `organization`'s referrals; `Load` marks it loading,
    /// so the caller must read its rows and hand them to [`ReferralIndex::loaded`] (or
    /// [`ReferralIndex::not_loaded`] when the read failed).
    pub fn ask(&self, organization: &str) -> Ask<'_> {
        {
            let inner = self.read();
            if !inner.trusted {
                return Ask::Database;
            }
            match inner.held.get(organization) {
                Some(Held::Loaded(used)) => {
                    used.store(
                        inner.tick.fetch_add(1, Ordering::Relaxed) + 1,
                        Ordering::Relaxed,
                    );
                    return Ask::Here(self);
                }
                Some(Held::Loading | Held::TooMany) => return Ask::Database,
                None => {}
            }
        }
        let mut inner = self.write();
        if !inner.trusted {
            return Ask::Database;
        }
        match inner.held.get(organization) {
            Some(Held::Loaded(_)) => Ask::Here(self),
            Some(_) => Ask::Database,
            None => {
                inner.held.insert(organization.to_string(), Held::Loading);
                Ask::Load
            }
        }
    }

    /// The rows of `organization` as read after [`Ask::Load`]; `complete` is false when
    /// it has more than the budget (the read stopped early). Forgets the organisations
    /// least recently used until the rows held fit the budget again.
    pub fn loaded(&self, organization: &str, rows: Vec<ReferralRow>, complete: bool) {
        let mut inner = self.write();
        if !matches!(inner.held.get(organization), Some(Held::Loading)) {
            // Forgotten meanwhile (a reconnect, a foreign write): read again next time.
            return;
        }
        if !complete {
            inner.forget(organization);
            inner.held.insert(organization.to_string(), Held::TooMany);
            tracing::info!(
                message = "An organisation's referrals exceed the memory budget; its lists are read from the database.",
                organization
            );
            return;
        }
        inner.apply(rows);
        let tick = inner.tick.fetch_add(1, Ordering::Relaxed) + 1;
        inner
            .held
            .insert(organization.to_string(), Held::Loaded(AtomicU64::new(tick)));
        while inner.rows > inner.max_rows {
            let Some(coldest) = inner
                .held
                .iter()
                .filter_map(|(org, h)| match h {
                    Held::Loaded(used) if org != organization => {
                        Some((used.load(Ordering::Relaxed), org.clone()))
                    }
                    _ => None,
                })
                .min()
                .map(|(_, org)| org)
            else {
                break;
            };
            inner.forget(&coldest);
            inner.evicted += 1;
        }
    }

    /// The read after [`Ask::Load`] failed: the next ask tries again.
    pub fn not_loaded(&self, organization: &str) {
        let mut inner = self.write();
        if matches!(inner.held.get(organization), Some(Held::Loading)) {
            inner.forget(organization);
        }
    }

    /// Keeps each row of a loading or loaded organisation unless the row held has a
    /// newer version: rows come from the writers after COMMIT and from the database
    /// after another process wrote, and the two may cross. (A row changes only with
    /// its Task's version.)
    pub fn apply(&self, rows: impl IntoIterator<Item = ReferralRow>) {
        let mut inner = self.write();
        let rows: Vec<ReferralRow> = rows
            .into_iter()
            .filter(|r| {
                matches!(
                    inner.held.get(&r.referral.organization),
                    Some(Held::Loading | Held::Loaded(_))
                )
            })
            .collect();
        inner.apply(rows);
    }

    /// Only after [`Ask::Here`].
    pub fn get(&self, organization: &str, id: &str) -> Option<ReferralRow> {
        let inner = self.read();
        inner
            .by_id
            .get(id)
            .filter(|r| r.referral.organization == organization)
            .cloned()
    }

    /// A page in list order; the same rows the SQL query of `Store::referrals` returns.
    /// Only after [`Ask::Here`].
    pub fn page(&self, organization: &str, f: &ReferralFilter) -> Vec<ReferralRow> {
        let inner = self.read();
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

impl Inner {
    fn apply(&mut self, rows: Vec<ReferralRow>) {
        for row in rows {
            let id = row.referral.id.clone();
            if let Some(old) = self.by_id.get(&id) {
                if old.referral.version > row.referral.version {
                    continue;
                }
                let key = (old.updated_at, id.clone());
                let org = old.referral.organization.clone();
                if let Some(set) = self.by_org.get_mut(&org) {
                    set.remove(&key);
                }
            } else {
                self.rows += 1;
            }
            self.by_org
                .entry(row.referral.organization.clone())
                .or_default()
                .insert((row.updated_at, id.clone()));
            self.by_id.insert(id, row);
        }
    }

    /// Drops an organisation's rows and its standing.
    fn forget(&mut self, organization: &str) {
        self.held.remove(organization);
        if let Some(order) = self.by_org.remove(organization) {
            for (_, id) in order {
                if self.by_id.remove(&id).is_some() {
                    self.rows -= 1;
                }
            }
        }
    }

    fn forget_all(&mut self) {
        crate::reclaim::drop_elsewhere(std::mem::take(&mut self.by_id));
        crate::reclaim::drop_elsewhere(std::mem::take(&mut self.by_org));
        self.held.clear();
        self.rows = 0;
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

    /// Marks `org` loading and hands it `rows`, as the store does on a first read.
    fn load(index: &ReferralIndex, org: &str, rows: Vec<ReferralRow>) {
        assert!(matches!(index.ask(org), Ask::Load));
        index.loaded(org, rows, true);
        assert!(matches!(index.ask(org), Ask::Here(_)));
    }

    fn all() -> ReferralFilter {
        ReferralFilter {
            limit: 10,
            ..Default::default()
        }
    }

    fn ids(rows: Vec<ReferralRow>) -> Vec<String> {
        rows.into_iter().map(|r| r.referral.id).collect()
    }

    #[test]
    fn pages_follow_the_last_change_and_stay_per_organisation() {
        let index = ReferralIndex::new(true);
        load(
            &index,
            "o1",
            vec![row("a", "o1", "pending", 1), row("b", "o1", "pending", 2)],
        );
        load(&index, "o2", vec![row("c", "o2", "pending", 3)]);
        index.apply([row("a", "o1", "accepted", 4)]);
        assert_eq!(ids(index.page("o1", &all())), ["b", "a"]);
        let after_b = ReferralFilter {
            after: Some((2, "b".into())),
            ..all()
        };
        assert_eq!(ids(index.page("o1", &after_b)), ["a"]);
        let accepted = ReferralFilter {
            status: Some("accepted".into()),
            ..all()
        };
        assert_eq!(ids(index.page("o1", &accepted)), ["a"]);
        assert!(index.get("o2", "a").is_none());
        assert_eq!(index.get("o1", "a").unwrap().referral.status, "accepted");
    }

    #[test]
    fn a_row_read_late_does_not_replace_a_newer_one() {
        let index = ReferralIndex::new(true);
        assert!(matches!(index.ask("o1"), Ask::Load));
        // Committed while the organisation's rows were being read: kept.
        let mut newer = row("a", "o1", "accepted", 5);
        newer.referral.version = 3;
        index.apply([newer]);
        index.loaded("o1", vec![row("a", "o1", "pending", 1)], true);
        assert_eq!(index.get("o1", "a").unwrap().referral.status, "accepted");
        assert_eq!(index.page("o1", &all()).len(), 1);
    }

    #[test]
    fn nothing_is_held_for_an_organisation_nobody_asked_for() {
        let index = ReferralIndex::new(true);
        index.apply([row("a", "o1", "pending", 1)]);
        assert_eq!(index.stats().entries, 0);
        assert!(matches!(index.ask("o1"), Ask::Load));
        // A second reader while the first loads: the database answers it.
        assert!(matches!(index.ask("o1"), Ask::Database));
    }

    #[test]
    fn the_least_recently_used_organisations_are_forgotten_beyond_the_budget() {
        let index = ReferralIndex::new(true);
        index.set_budget(5 * ROW_BYTES);
        let rows = |org: &str, n: usize| {
            (0..n)
                .map(|i| row(&format!("{org}-{i}"), org, "pending", i as i64))
                .collect::<Vec<_>>()
        };
        load(&index, "o1", rows("o1", 2));
        load(&index, "o2", rows("o2", 2));
        assert!(matches!(index.ask("o1"), Ask::Here(_))); // o2 is now the coldest
        load(&index, "o3", rows("o3", 2));
        assert_eq!(index.stats().entries, 4);
        assert_eq!(index.stats().evicted, 1);
        assert!(matches!(index.ask("o2"), Ask::Load), "o2 was forgotten");
        index.not_loaded("o2");
        assert!(matches!(index.ask("o1"), Ask::Here(_)));
        // More rows than the whole budget: the database, always.
        assert!(matches!(index.ask("big"), Ask::Load));
        index.loaded("big", rows("big", 6), false);
        assert!(matches!(index.ask("big"), Ask::Database));
        assert_eq!(index.stats().entries, 4);
    }

    #[test]
    fn untrusted_it_answers_nothing_and_forgets_what_it_held() {
        let index = ReferralIndex::new(true);
        load(&index, "o1", vec![row("a", "o1", "pending", 1)]);
        index.set_trusted(false);
        assert!(matches!(index.ask("o1"), Ask::Database));
        index.set_trusted(true);
        assert!(matches!(index.ask("o1"), Ask::Load));
    }
}
