//! The answer cache (CLOCK eviction over a slab) and the record of which set elements leash has
//! given the kernel and until when. Pure: the caller passes the time in.

use crate::message::Prepared;
use crate::rules::{Planned, SetId};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cached answer and the set elements it needs.
#[derive(Debug)]
pub struct Entry {
    pub prepared: Prepared,
    pub inserts: Vec<Planned>,
    pub stored: Instant,
}

impl Entry {
    /// Whole seconds since the answer was stored.
    pub fn age(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX)
    }

    fn expired(&self, now: Instant) -> bool {
        self.prepared.lifetime.is_none_or(|l| self.age(now) >= l)
    }
}

#[derive(Debug)]
struct Slot {
    key: Box<[u8]>,
    entry: Arc<Entry>,
    /// CLOCK's second-chance bit: set on every hit, cleared when the hand passes.
    referenced: bool,
}

/// A fixed-capacity cache. CLOCK approximates LRU with one bit per entry and no list to update
/// on a hit, so a hit is one hash lookup and a bit store.
#[derive(Debug)]
pub struct Cache {
    map: HashMap<Box<[u8]>, usize>,
    slots: Vec<Slot>,
    hand: usize,
    capacity: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache { map: HashMap::with_capacity(capacity.min(1 << 16)), slots: Vec::with_capacity(capacity.min(1 << 16)), hand: 0, capacity }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The live entry for `key`; expired entries are removed on the way.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<Arc<Entry>> {
        let &i = self.map.get(key)?;
        if self.slots[i].entry.expired(now) {
            self.remove_slot(i);
            return None;
        }
        self.slots[i].referenced = true;
        Some(self.slots[i].entry.clone())
    }

    pub fn put(&mut self, key: &[u8], entry: Arc<Entry>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        if let Some(&i) = self.map.get(key) {
            self.slots[i].entry = entry;
            self.slots[i].referenced = true;
            return;
        }
        let key: Box<[u8]> = key.into();
        if self.slots.len() >= self.capacity {
            // Reuse the victim's slot in place: moving another entry into it (swap_remove) would
            // put the newest entry under the hand, to be evicted by the very next insertion.
            let i = self.victim(now);
            let old = std::mem::replace(&mut self.slots[i], Slot { key: key.clone(), entry, referenced: false });
            self.map.remove(&old.key);
            self.map.insert(key, i);
            return;
        }
        self.map.insert(key.clone(), self.slots.len());
        self.slots.push(Slot { key, entry, referenced: false });
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.slots.clear();
        self.hand = 0;
    }

    /// Advances the hand to the first expired or unreferenced entry and returns its index, with
    /// the hand moved past it. Every pass clears bits, so this ends within two turns. The cache
    /// must not be empty.
    fn victim(&mut self, now: Instant) -> usize {
        for _ in 0..2 * self.slots.len() + 1 {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let s = &mut self.slots[self.hand];
            self.hand += 1;
            if s.referenced && !s.entry.expired(now) {
                s.referenced = false;
            } else {
                return self.hand - 1;
            }
        }
        // Unreachable in practice (the second turn finds every bit cleared); any slot will do.
        self.hand % self.slots.len()
    }

    fn remove_slot(&mut self, i: usize) {
        let slot = self.slots.swap_remove(i);
        self.map.remove(&slot.key);
        if let Some(moved) = self.slots.get(i)
            && let Some(v) = self.map.get_mut(&moved.key)
        {
            *v = i;
        }
    }
}

/// When each set element leash inserted expires in the kernel, at the latest as far as leash
/// knows (it is computed from the moment the insert was submitted, before the kernel saw it, so
/// the real expiry is never earlier).
#[derive(Debug, Default)]
pub struct KernelState {
    expiry: HashMap<(SetId, IpAddr), Instant>,
    prune_at: usize,
    /// Bumped by [`KernelState::clear`]: an insert submitted before a clear may have gone into
    /// the table that was replaced, so its ack must not be recorded.
    generation: u64,
}

impl KernelState {
    /// Whether the element must be (re)inserted before an answer giving the client `ttl` more
    /// seconds goes out: when leash does not know it to live at least `ttl + grace/2` longer.
    /// Half the grace is the slack that keeps cache hits from inserting on every query while the
    /// element still always outlives the client's TTL.
    pub fn needs(&self, p: &Planned, ttl: u32, grace: u32, now: Instant) -> bool {
        let want = now + Duration::from_secs(u64::from(ttl) + u64::from(grace / 2));
        self.expiry.get(&(p.set, p.addr)).is_none_or(|&e| e < want)
    }

    /// The generation to pass to [`KernelState::inserted`] for an insert submitted now.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records that the kernel acked an element with `timeout_ms`, submitted at `submitted` in
    /// `generation` (ignored if the state was cleared since).
    pub fn inserted(&mut self, set: SetId, addr: IpAddr, submitted: Instant, timeout_ms: u64, generation: u64) {
        if generation != self.generation {
            return;
        }
        let e = submitted + Duration::from_millis(timeout_ms);
        let slot = self.expiry.entry((set, addr)).or_insert(e);
        *slot = (*slot).max(e);
        if self.expiry.len() > self.prune_at {
            self.expiry.retain(|_, e| *e > submitted);
            self.prune_at = (self.expiry.len() * 2).max(4096);
        }
    }

    /// Forgets everything: the table was re-applied, so the kernel's sets may be empty.
    pub fn clear(&mut self) {
        self.expiry.clear();
        self.generation += 1;
    }

    pub fn len(&self) -> usize {
        self.expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expiry.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(now: Instant, lifetime: Option<u32>) -> Arc<Entry> {
        Arc::new(Entry {
            prepared: Prepared { bytes: vec![], ttls: vec![], opt_at: None, question_end: 0, addrs: vec![], lifetime },
            inserts: vec![],
            stored: now,
        })
    }

    #[test]
    fn entries_expire_with_their_lifetime() {
        let t0 = Instant::now();
        let mut c = Cache::new(10);
        c.put(b"a", entry(t0, Some(5)), t0);
        assert!(c.get(b"a", t0 + Duration::from_secs(4)).is_some());
        assert!(c.get(b"a", t0 + Duration::from_secs(5)).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn clock_evicts_unreferenced_entries_first() {
        let t0 = Instant::now();
        let mut c = Cache::new(3);
        for k in [b"a", b"b", b"c"] {
            c.put(k, entry(t0, Some(100)), t0);
        }
        assert!(c.get(b"a", t0).is_some());
        assert!(c.get(b"c", t0).is_some());
        c.put(b"d", entry(t0, Some(100)), t0);
        assert_eq!(c.len(), 3);
        assert!(c.get(b"b", t0).is_none(), "b was the only unreferenced entry");
        for k in [b"a", b"c", b"d"] {
            assert!(c.get(k, t0).is_some());
        }
        // Heavy churn keeps the map and the slab consistent.
        for i in 0..1000u32 {
            c.put(&i.to_be_bytes(), entry(t0, Some(100)), t0);
            assert!(c.get(&i.to_be_bytes(), t0).is_some());
            assert_eq!(c.map.len(), c.slots.len());
        }
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_new_entry_survives_the_next_insertion_in_a_full_cache() {
        // Regression: eviction used to move the newest entry under the hand, so in a full cache
        // every new entry was evicted by the next one and later names never hit.
        let t0 = Instant::now();
        let mut c = Cache::new(3);
        for i in 0..100u32 {
            c.put(&i.to_be_bytes(), entry(t0, Some(100)), t0);
            if i >= 1 {
                assert!(c.map.contains_key(&(i - 1).to_be_bytes()[..]), "entry {} evicted by entry {i}", i - 1);
            }
            assert_eq!(c.map.len(), c.slots.len());
        }
        // A long run of one-off names, then a small working set still gets hits.
        let mut c = Cache::new(100);
        for i in 0..1000u32 {
            c.put(&i.to_be_bytes(), entry(t0, Some(100)), t0);
        }
        for k in 5000..5010u32 {
            c.put(&k.to_be_bytes(), entry(t0, Some(100)), t0);
        }
        let hits = (0..10).flat_map(|_| 5000..5010u32).filter(|k| c.get(&k.to_be_bytes(), t0).is_some()).count();
        assert_eq!(hits, 100);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let t0 = Instant::now();
        let mut c = Cache::new(0);
        c.put(b"a", entry(t0, Some(100)), t0);
        assert!(c.get(b"a", t0).is_none());
    }

    #[test]
    fn elements_are_refreshed_only_when_they_might_expire_before_ttl_plus_half_grace() {
        let t0 = Instant::now();
        let mut k = KernelState::default();
        let p = Planned { set: 0, addr: "192.0.2.1".parse().unwrap(), ttl: 60 };
        assert!(k.needs(&p, 60, 120, t0));
        // Inserted with (60 + 120) s.
        k.inserted(0, p.addr, t0, 180_000, k.generation());
        assert!(!k.needs(&p, 60, 120, t0));
        // 100 s later the client gets at most 60 s more: 160 + 60 + 60 > 180, refresh.
        assert!(!k.needs(&p, 60, 120, t0 + Duration::from_secs(60)));
        assert!(k.needs(&p, 60, 120, t0 + Duration::from_secs(61)));
        let before_clear = k.generation();
        k.clear();
        assert!(k.needs(&p, 1, 120, t0));
        // An ack for an insert submitted before the clear is not trusted.
        k.inserted(0, p.addr, t0, 180_000, before_clear);
        assert!(k.needs(&p, 1, 120, t0));
    }
}
