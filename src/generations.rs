//! A map bounded by bytes that forgets gradually: two generations. New entries go to
//! the young one; when it holds its half of the budget, the old generation is dropped
//! (on another thread, see `reclaim`) and the young one becomes old. Emptying a whole
//! cache when it is full made every read go to the database at once; here the newer
//! half is kept, and an entry read from the old generation moves back to the young
//! one, so what is in use survives each turn.
//!
//! Callers keep their own lock around the map, as with [`Shards`].

use std::borrow::Borrow;
use std::hash::Hash;

use crate::shards::Shards;

pub struct Generations<K, V> {
    young: Shards<K, (V, usize)>,
    old: Shards<K, (V, usize)>,
    young_bytes: usize,
    old_bytes: usize,
    /// Bytes the two generations may hold together.
    budget: usize,
    /// Entries dropped by turns, since the start.
    evicted: u64,
    /// Turns since the start.
    turns: u64,
}

impl<K: Hash + Eq + Send + 'static, V: Send + 'static> Generations<K, V> {
    pub fn new(budget: usize) -> Generations<K, V> {
        Generations {
            young: Shards::default(),
            old: Shards::default(),
            young_bytes: 0,
            old_bytes: 0,
            budget,
            evicted: 0,
            turns: 0,
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.young
            .get(key)
            .or_else(|| self.old.get(key))
            .map(|(v, _)| v)
    }

    /// Whether `key` is only in the old generation: worth [`Generations::promote`].
    pub fn is_old<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.young.get(key).is_none() && self.old.get(key).is_some()
    }

    /// Moves `key` from the old generation to the young one (it was used again).
    pub fn promote<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q> + Clone,
        Q: Hash + Eq + ?Sized,
    {
        if self.young.get(key).is_some() {
            return;
        }
        if let Some((k, (v, bytes))) = self.old.remove_entry(key) {
            self.old_bytes -= bytes;
            self.insert(k, v, bytes);
        }
    }

    /// Keeps `value` (counted as `bytes`) under `key`; returns the value it replaces.
    /// Returns `true` in the second place when a turn dropped the old generation
    /// first (callers that must not let an answer read before the turn back in, as
    /// `store::recent`, start a new epoch then).
    pub fn insert(&mut self, key: K, value: V, bytes: usize) -> (Option<V>, bool) {
        let turned = self.young_bytes + bytes > self.budget / 2 && self.young_bytes > 0;
        if turned {
            self.turn();
        }
        let replaced = match self.old.remove(&key) {
            Some((v, b)) => {
                self.old_bytes -= b;
                Some(v)
            }
            None => None,
        };
        self.young_bytes += bytes;
        let replaced = match self.young.insert(key, (value, bytes)) {
            Some((v, b)) => {
                self.young_bytes -= b;
                Some(v)
            }
            None => replaced,
        };
        (replaced, turned)
    }

    /// Drops the old generation; the young one becomes old.
    fn turn(&mut self) {
        self.evicted += self.old.len() as u64;
        self.turns += 1;
        let dropped = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
        crate::reclaim::drop_elsewhere(dropped);
        self.old_bytes = std::mem::take(&mut self.young_bytes);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        crate::reclaim::drop_elsewhere(std::mem::take(&mut self.young));
        crate::reclaim::drop_elsewhere(std::mem::take(&mut self.old));
        self.young_bytes = 0;
        self.old_bytes = 0;
    }

    pub fn bytes(&self) -> usize {
        self.young_bytes + self.old_bytes
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_stays_within_its_budget_and_keeps_the_newer_half() {
        let mut g = Generations::new(1_000);
        for i in 0..1_000 {
            g.insert(i, i, 10);
            assert!(g.bytes() <= 1_000, "{} bytes after {i}", g.bytes());
        }
        // The last 50 inserted (a young generation's worth) are all still there.
        assert!((950..1_000).all(|i| g.get(&i) == Some(&i)));
        assert!(g.get(&0).is_none());
        assert!(g.len() >= 50, "never emptied whole: {}", g.len());
        assert_eq!(g.evicted() as usize + g.len(), 1_000);
    }

    #[test]
    fn an_entry_used_again_survives_the_turns() {
        let mut g = Generations::new(100);
        g.insert("hot", 0, 10);
        for i in 0..100 {
            g.insert(format!("cold{i}").leak(), i, 10);
            if g.is_old("hot") {
                g.promote("hot");
            }
        }
        assert_eq!(g.get("hot"), Some(&0));
        assert!(g.get("cold0").is_none());
    }

    #[test]
    fn a_replaced_entry_counts_once_whichever_generation_held_it() {
        let mut g = Generations::new(100);
        g.insert(1, "a", 30);
        g.insert(2, "b", 30); // turns: 1 is old now
        assert!(g.is_old(&1));
        assert_eq!(g.insert(1, "c", 5).0, Some("a"));
        assert_eq!(g.get(&1), Some(&"c"));
        assert_eq!(g.bytes(), 35);
        assert_eq!(g.len(), 2);
    }
}
