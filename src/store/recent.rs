//! Current versions recently read or written, kept in memory so reads skip the database.
//!
//! Every write of this process is offered after COMMIT. Other processes' writes arrive
//! differently per backend:
//! - SQLite: this process is the only writer (an operator command beside it calls
//!   `clear`), so an entry is never older than the database.
//! - PostgreSQL: other gateway processes write too. Their commits are announced over
//!   LISTEN/NOTIFY (see `replicas`) and each one supersedes the entry it names, so an
//!   entry lags the database by at most the notification's delivery. Until the listener
//!   is listening, and after it lost its connection, nothing is served from memory.
//!
//! Invariants: an entry only ever moves to a newer version, and a reader that fetched
//! version n before the writer committed n+1 cannot put n back. A superseded entry
//! keeps the newer version number without a body, and `clear` starts a new epoch that
//! turns away offers read before it.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::StoredResource;
use crate::generations::Generations;
use crate::telemetry::CacheStats;

/// JSON kept until the gateway's memory budget says otherwise (`set_budget`).
const DEFAULT_BUDGET: usize = 256 << 20;

/// What a superseded entry (no body) counts for against the budget.
const SUPERSEDED_BYTES: usize = 64;

pub struct RecentVersions {
    map: RwLock<Map>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Map {
    /// Two generations: when full, the older half is dropped (and a new epoch starts,
    /// so that no offer read before it brings back what a dropped entry superseded).
    entries: Generations<(String, String), Entry>,
    /// Bumped by every `clear`: offers read in an earlier epoch are turned away.
    epoch: u64,
    /// Whether entries may be served (see the module comment).
    trusted: bool,
}

struct Entry {
    version: i64,
    /// The body of `version`; None once another process wrote a newer one.
    resource: Option<StoredResource>,
}

impl RecentVersions {
    /// `trusted`: whether entries may be served from the start (see `set_trusted`).
    pub fn new(trusted: bool) -> RecentVersions {
        RecentVersions {
            map: RwLock::new(Map {
                entries: Generations::new(DEFAULT_BUDGET),
                epoch: 0,
                trusted,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The bytes of JSON this cache may keep.
    pub fn set_budget(&self, bytes: usize) {
        self.write().entries.set_budget(bytes);
    }

    pub fn stats(&self) -> CacheStats {
        let map = self.read();
        CacheStats {
            bytes: map.entries.bytes(),
            entries: map.entries.len(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evicted: map.entries.evicted(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Map> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// To pass to `offer_all` with what is read from the database after this call.
    pub fn epoch(&self) -> u64 {
        self.read().epoch
    }

    pub fn get(&self, resource_type: &str, id: &str) -> Option<StoredResource> {
        let k = key(resource_type, id);
        let (found, old) = {
            let map = self.read();
            if !map.trusted {
                return None;
            }
            let found = map.entries.get(&k).and_then(|e| e.resource.clone());
            (found, map.entries.is_old(&k))
        };
        if old {
            // Used again: it survives the next turn.
            self.write().entries.promote(&k);
        }
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The current version: known even when its body is not (superseded).
    pub fn version(&self, resource_type: &str, id: &str) -> Option<i64> {
        let map = self.read();
        if !map.trusted {
            return None;
        }
        map.entries.get(&key(resource_type, id)).map(|e| e.version)
    }

    /// Forgets everything (another process wrote, or its announcements may be lost).
    pub fn clear(&self) {
        self.write().forget_all();
    }

    /// Serves entries again, or stops (forgetting them either way).
    pub fn set_trusted(&self, trusted: bool) {
        let mut map = self.write();
        map.forget_all();
        map.trusted = trusted;
    }

    /// Keeps each version unless a newer one is known, or `epoch` has passed.
    pub fn offer_all(&self, versions: impl IntoIterator<Item = StoredResource>, epoch: u64) {
        let mut map = self.write();
        if !map.trusted || map.epoch != epoch {
            return;
        }
        for r in versions {
            let k = (r.resource_type.clone(), r.id.clone());
            if map.entries.get(&k).is_some_and(|e| {
                e.version > r.version || (e.version == r.version && e.resource.is_some())
            }) {
                continue;
            }
            let bytes = r.body.len();
            let entry = Entry {
                version: r.version,
                resource: Some(r),
            };
            if map.insert(k, entry, bytes) {
                // The rest was read before the turn: it could be older than what a
                // dropped entry knew.
                return;
            }
        }
    }

    /// Another process committed `version`: older entries lose their body, and a
    /// reader's older copy is no longer taken.
    pub fn supersede(&self, resource_type: &str, id: &str, version: i64) {
        let mut map = self.write();
        let k = key(resource_type, id);
        if map.entries.get(&k).is_some_and(|e| e.version >= version) {
            return;
        }
        let entry = Entry {
            version,
            resource: None,
        };
        map.insert(k, entry, SUPERSEDED_BYTES);
    }
}

impl Map {
    /// Empties the map and starts a new epoch.
    fn forget_all(&mut self) {
        self.entries.clear();
        self.epoch += 1;
    }

    /// Keeps `entry`; true when a turn dropped the old generation first, which starts
    /// a new epoch.
    fn insert(&mut self, k: (String, String), entry: Entry, bytes: usize) -> bool {
        let (_, turned) = self.entries.insert(k, entry, bytes);
        if turned {
            self.epoch += 1;
        }
        turned
    }
}

fn key(resource_type: &str, id: &str) -> (String, String) {
    (resource_type.to_string(), id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: i64) -> StoredResource {
        StoredResource {
            resource_type: "Task".into(),
            id: "t".into(),
            version,
            last_updated: version,
            body: format!("v{version}"),
        }
    }

    #[test]
    fn a_late_reader_cannot_bring_back_an_old_version() {
        let recent = RecentVersions::new(true);
        let epoch = recent.epoch();
        recent.offer_all([v(2)], epoch);
        recent.offer_all([v(1)], epoch);
        assert_eq!(recent.get("Task", "t").unwrap().body, "v2");
        recent.offer_all([v(3)], epoch);
        assert_eq!(recent.get("Task", "t").unwrap().version, 3);
        assert!(recent.get("Task", "other").is_none());
    }

    #[test]
    fn another_process_s_commit_supersedes_what_a_reader_fetched_before_it() {
        let recent = RecentVersions::new(true);
        let epoch = recent.epoch();
        recent.offer_all([v(1)], epoch);
        recent.supersede("Task", "t", 2);
        assert!(recent.get("Task", "t").is_none());
        assert_eq!(recent.version("Task", "t"), Some(2));
        // A reader that fetched version 1 before the commit offers it late.
        recent.offer_all([v(1)], epoch);
        assert!(recent.get("Task", "t").is_none());
        recent.offer_all([v(2)], epoch);
        assert_eq!(recent.get("Task", "t").unwrap().body, "v2");
        // Announced before anyone here read it: older copies are still refused.
        recent.supersede("Task", "u", 4);
        let mut older = v(3);
        older.id = "u".into();
        recent.offer_all([older], epoch);
        assert!(recent.get("Task", "u").is_none());
    }

    #[test]
    fn offers_read_before_a_clear_are_turned_away() {
        let recent = RecentVersions::new(true);
        let before = recent.epoch();
        recent.clear();
        recent.offer_all([v(1)], before);
        assert!(recent.get("Task", "t").is_none());
        recent.offer_all([v(1)], recent.epoch());
        assert!(recent.get("Task", "t").is_some());
    }

    #[test]
    fn nothing_is_served_or_kept_while_untrusted() {
        let recent = RecentVersions::new(false);
        recent.offer_all([v(1)], recent.epoch());
        assert!(recent.get("Task", "t").is_none());
        assert_eq!(recent.version("Task", "t"), None);
        recent.set_trusted(true);
        recent.offer_all([v(1)], recent.epoch());
        assert_eq!(recent.version("Task", "t"), Some(1));
        recent.set_trusted(false);
        assert!(recent.get("Task", "t").is_none());
    }
}
