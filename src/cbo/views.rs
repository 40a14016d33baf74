//! Referral views already built, kept as the JSON sent, and reused while every input is
//! unchanged: the referral row, the organisation's visibility rules, and the version of
//! each resource the view was built from.
//!
//! Building a view parses the Task and the resources around it and projects them; a
//! read that finds its view here does neither. The versions are checked against what
//! the store knows without a query (`Store::known_version`, which on PostgreSQL hears
//! of other processes' commits through `store::replicas`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::generations::Generations;
use crate::referral::projection::Summary;
use crate::store::CacheStats;

/// JSON kept until the gateway's memory budget says otherwise (`set_budget`).
const DEFAULT_BUDGET: usize = 256 << 20;

pub struct Views {
    /// Two generations: when full, the older half is dropped, never the whole map.
    map: RwLock<Generations<(String, String), Arc<View>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for Views {
    fn default() -> Views {
        Views {
            map: RwLock::new(Generations::new(DEFAULT_BUDGET)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }
}

/// One organisation's view of one referral, and what it was built from.
pub struct View {
    pub summary: Summary,
    pub omit: Vec<String>,
    /// (type, id, version) of the Task and of every resource read around it.
    pub inputs: Vec<(String, String, i64)>,
    pub body: Bytes,
}

impl Views {
    /// The view of `id` for `org` if it was built from exactly these inputs;
    /// `current` gives a resource's current version, None when unknown.
    pub fn get(
        &self,
        org: &str,
        id: &str,
        summary: &Summary,
        omit: &[String],
        current: impl Fn(&str, &str) -> Option<i64>,
    ) -> Option<Bytes> {
        let k = (org.to_string(), id.to_string());
        let (view, old) = {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            (map.get(&k).cloned(), map.is_old(&k))
        };
        let fresh = view.filter(|view| {
            view.summary == *summary
                && view.omit == omit
                && view
                    .inputs
                    .iter()
                    .all(|(ty, id, version)| current(ty, id) == Some(*version))
        });
        let counter = if fresh.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if old && fresh.is_some() {
            // Used again: it survives the next turn.
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            map.promote(&k);
        }
        fresh.map(|view| view.body.clone())
    }

    pub fn put(&self, org: &str, id: &str, view: View) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let bytes = view.body.len();
        map.insert((org.to_string(), id.to_string()), Arc::new(view), bytes);
    }

    /// The bytes of JSON these views may keep.
    pub fn set_budget(&self, bytes: usize) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.set_budget(bytes);
    }

    pub fn stats(&self) -> CacheStats {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        CacheStats {
            bytes: map.bytes(),
            entries: map.len(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evicted: map.evicted(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::referral::CboStatus;

    fn summary(version: i64) -> Summary {
        Summary {
            id: "r1".into(),
            version,
            status: CboStatus::Pending,
            urgency: "routine".into(),
            created_at: "2025-03-14T16:02:11Z".into(),
            updated_at: "2025-03-14T16:02:11Z".into(),
            respond_by: None,
            domain: None,
            client_ref: None,
        }
    }

    fn view() -> View {
        View {
            summary: summary(1),
            omit: vec!["need.conditions".into()],
            inputs: vec![
                ("Task".into(), "t1".into(), 1),
                ("Patient".into(), "p1".into(), 3),
            ],
            body: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn a_view_is_reused_only_while_everything_it_was_built_from_is_current() {
        let views = Views::default();
        views.put("cbo-1", "r1", view());
        let omit = ["need.conditions".to_string()];
        let versions = |task: i64, patient: Option<i64>| {
            move |ty: &str, _: &str| if ty == "Task" { Some(task) } else { patient }
        };
        assert!(
            views
                .get("cbo-1", "r1", &summary(1), &omit, versions(1, Some(3)))
                .is_some()
        );
        // Another organisation, another referral, another row, other rules.
        assert!(
            views
                .get("cbo-2", "r1", &summary(1), &omit, versions(1, Some(3)))
                .is_none()
        );
        assert!(
            views
                .get("cbo-1", "r2", &summary(1), &omit, versions(1, Some(3)))
                .is_none()
        );
        assert!(
            views
                .get("cbo-1", "r1", &summary(2), &omit, versions(1, Some(3)))
                .is_none()
        );
        assert!(
            views
                .get("cbo-1", "r1", &summary(1), &[], versions(1, Some(3)))
                .is_none()
        );
        // A newer input, or one whose version is not known without a query.
        assert!(
            views
                .get("cbo-1", "r1", &summary(1), &omit, versions(2, Some(3)))
                .is_none()
        );
        assert!(
            views
                .get("cbo-1", "r1", &summary(1), &omit, versions(1, Some(4)))
                .is_none()
        );
        assert!(
            views
                .get("cbo-1", "r1", &summary(1), &omit, versions(1, None))
                .is_none()
        );
    }
}
