//! Current versions recently read or written, kept in memory for the embedded store.
//!
//! Only for SQLite, where this process is the only writer: the writer offers every
//! version it commits, so an entry is never older than the database. (With PostgreSQL
//! other processes write too, and every read goes to the database.)
//!
//! Invariant: an entry only ever moves to a newer version. A reader that fetched
//! version n before the writer committed n+1 cannot put n back.

use std::collections::HashMap;
use std::sync::RwLock;

use super::StoredResource;

/// JSON kept before the map is emptied and refilled by use: enough for the current
/// versions of a few hundred thousand typical referral resources.
const MAX_BYTES: usize = 256 << 20;

#[derive(Default)]
pub struct RecentVersions {
    map: RwLock<Map>,
}

#[derive(Default)]
struct Map {
    entries: HashMap<(String, String), StoredResource>,
    bytes: usize,
}

impl RecentVersions {
    pub fn get(&self, resource_type: &str, id: &str) -> Option<StoredResource> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.entries
            .get(&(resource_type.to_string(), id.to_string()))
            .cloned()
    }

    pub fn version(&self, resource_type: &str, id: &str) -> Option<i64> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.entries
            .get(&(resource_type.to_string(), id.to_string()))
            .map(|r| r.version)
    }

    /// Forgets everything (another process wrote: an operator's merge or unmerge).
    pub fn clear(&self) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.entries.clear();
        map.bytes = 0;
    }

    /// Keeps `r` unless a newer version of the same resource is already known.
    pub fn offer(&self, r: StoredResource) {
        self.offer_all(std::iter::once(r));
    }

    pub fn offer_all(&self, versions: impl IntoIterator<Item = StoredResource>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for r in versions {
            if map.bytes >= MAX_BYTES {
                map.entries.clear();
                map.bytes = 0;
            }
            let key = (r.resource_type.clone(), r.id.clone());
            match map.entries.get(&key) {
                Some(known) if known.version >= r.version => {}
                _ => {
                    map.bytes += r.body.len();
                    if let Some(old) = map.entries.insert(key, r) {
                        map.bytes -= old.body.len();
                    }
                }
            }
        }
    }
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
        let recent = RecentVersions::default();
        recent.offer(v(2));
        recent.offer(v(1));
        assert_eq!(recent.get("Task", "t").unwrap().body, "v2");
        recent.offer(v(3));
        assert_eq!(recent.get("Task", "t").unwrap().version, 3);
        assert!(recent.get("Task", "other").is_none());
    }
}
