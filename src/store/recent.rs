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

use super::StoredResource;
use crate::shards::Shards;

/// JSON kept before the map is emptied and refilled by use: enough for the current
/// versions of a few hundred thousand typical referral resources.
const MAX_BYTES: usize = 256 << 20;

/// What a superseded entry (no body) counts for against `MAX_BYTES`.
const SUPERSEDED_BYTES: usize = 64;

pub struct RecentVersions {
    map: RwLock<Map>,
}

struct Map {
    entries: Shards<(String, String), Entry>,
    bytes: usize,
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
                entries: Shards::default(),
                bytes: 0,
                epoch: 0,
                trusted,
            }),
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
        let map = self.read();
        if !map.trusted {
            return None;
        }
        let entry = map.entries.get(&key(resource_type, id))?;
        entry.resource.clone()
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
            map.make_room();
            let k = (r.resource_type.clone(), r.id.clone());
            if map.entries.get(&k).is_some_and(|e| {
                e.version > r.version || (e.version == r.version && e.resource.is_some())
            }) {
                continue;
            }
            map.bytes += r.body.len();
            let old = map.entries.insert(
                k,
                Entry {
                    version: r.version,
                    resource: Some(r),
                },
            );
            map.forget(old);
        }
    }

    /// Another process committed `version`: older entries lose their body, and a
    /// reader's older copy is no longer taken.
    pub fn supersede(&self, resource_type: &str, id: &str, version: i64) {
        let mut map = self.write();
        map.make_room();
        let k = key(resource_type, id);
        if map.entries.get(&k).is_some_and(|e| e.version >= version) {
            return;
        }
        map.bytes += SUPERSEDED_BYTES;
        let old = map.entries.insert(
            k,
            Entry {
                version,
                resource: None,
            },
        );
        map.forget(old);
    }
}

impl Map {
    /// Empties the map and starts a new epoch.
    fn forget_all(&mut self) {
        crate::reclaim::drop_elsewhere(std::mem::take(&mut self.entries));
        self.bytes = 0;
        self.epoch += 1;
    }

    fn make_room(&mut self) {
        if self.bytes >= MAX_BYTES {
            self.forget_all();
        }
    }

    fn forget(&mut self, old: Option<Entry>) {
        if let Some(old) = old {
            self.bytes -= old.resource.map_or(SUPERSEDED_BYTES, |r| r.body.len());
        }
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
