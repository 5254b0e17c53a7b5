//! A bounded map that forgets its oldest entries first.

use std::collections::{HashMap, VecDeque};

/// At most `capacity` entries; inserting into a full cache evicts the oldest insertion.
pub(super) struct FifoCache<V> {
    capacity: usize,
    map: HashMap<u64, V>,
    /// Insertion order. May hold keys already removed from `map`; its length bounds the map's.
    order: VecDeque<u64>,
}

impl<V> FifoCache<V> {
    pub(super) fn new(capacity: usize) -> Self {
        FifoCache {
            capacity: capacity.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(super) fn insert(&mut self, key: u64, value: V) {
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
        }
    }

    pub(super) fn remove(&mut self, key: u64) -> Option<V> {
        self.map.remove(&key)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_and_stays_bounded_with_removals() {
        let mut c = FifoCache::new(3);
        for k in 0..10 {
            c.insert(k, k);
            if k % 2 == 0 {
                c.remove(k);
            }
        }
        assert!(c.len() <= 3 && c.order.len() <= 3);
        assert_eq!(c.remove(9), Some(9));
        assert_eq!(c.remove(1), None);
    }
}
