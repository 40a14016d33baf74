//! A hash map split into many, so that growing it rehashes one part, not all of it.
//!
//! The in-memory views (`store::recent`, `store::referral_index`, `cbo::views`) reach
//! hundreds of thousands of entries, and are updated under their lock. A single
//! `HashMap` rehashes every entry when it doubles: measured during referral intake on
//! SQLite, those doublings held the writer (and every reader) for 11, 62, 125 and
//! 216 ms, and every request of the batch waited. Split in 64, the worst was 7 ms; in
//! 256, a doubling moves a 256th of the entries. Callers keep their own lock around the
//! whole map, so what they guarantee under it is unchanged.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

const SHARDS: usize = 256;

pub struct Shards<K, V> {
    /// Picks the part; each part hashes again with its own keys.
    hasher: RandomState,
    parts: Vec<HashMap<K, V>>,
}

impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        Shards {
            hasher: RandomState::new(),
            parts: (0..SHARDS).map(|_| HashMap::new()).collect(),
        }
    }
}

impl<K: Hash + Eq, V> Shards<K, V> {
    fn part<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.parts[self.part(key)].get(key)
    }

    /// Returns the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let part = self.part(&key);
        self.parts[part].insert(key, value)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let part = self.part(key);
        self.parts[part].remove(key)
    }

    pub fn remove_entry<Q>(&mut self, key: &Q) -> Option<(K, V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let part = self.part(key);
        self.parts[part].remove_entry(key)
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_answers_as_one_map_whatever_part_a_key_lands_in() {
        let mut shards = Shards::default();
        for i in 0..10_000 {
            assert_eq!(shards.insert(format!("k{i}"), i), None);
        }
        assert_eq!(shards.insert("k42".to_string(), -42), Some(42));
        assert_eq!(shards.parts.iter().map(HashMap::len).sum::<usize>(), 10_000);
        assert_eq!(shards.get("k42"), Some(&-42));
        assert_eq!(shards.get("k9999"), Some(&9999));
        assert_eq!(shards.get("k10000"), None);
        // Keys spread over the parts, or a part would grow as large as one map.
        assert!(shards.parts.iter().all(|p| p.len() < 10_000 / SHARDS * 2));
    }
}
