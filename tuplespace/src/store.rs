//! The resident tuples by id, in pages shared copy-on-write, so that a consistent view of the
//! whole space costs a page table, not a copy of every tuple.
//!
//! Ids are assigned in increasing order, so tuples written together sit together: page `p` holds
//! the tuples with ids `p * 64 .. (p + 1) * 64` that are still resident. The pages are
//! reference-counted: [`Store::clone`] copies the table of page pointers (one per 64 ids), and a
//! page is copied only when it changes while a clone still shares it ([`Arc::make_mut`]). A
//! snapshot or a digest therefore takes a clone on the raft thread in microseconds to milliseconds
//! and encodes it on another thread, while the space keeps changing; only the pages written
//! meanwhile are copied, once each.
//!
//! A page is a bitmap of its resident slots and their tuples in slot order, so a resident tuple
//! costs its 16-byte [`Tuple`] handle in the page and nothing else: its position is the number of
//! resident slots below it (one popcount). Expiry times are kept the same way beside the tuples,
//! for the few tuples that have one (a second bitmap and a vector that stays unallocated in a page
//! where no tuple has one), so a view needs nothing else to encode a tuple and a tuple without a
//! time to live pays nothing for the feature.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use crate::index::IdHasher;
use crate::{Millis, Tuple, TupleId};

/// log2 of the ids per page.
const PAGE_BITS: u32 = 6;
/// Ids per page (one bit each in a page's `u64` bitmaps).
const PAGE_IDS: u64 = 1 << PAGE_BITS;

/// The tuples of 64 consecutive ids that are resident.
///
/// (Boxing the expiry fields would make the page 40 bytes, not 64, but under the production
/// allocator as installed (`mimalloc::MiMalloc`, mimalloc v3, every request through
/// `mi_malloc_aligned`) that measured 8 bytes a tuple *more* resident memory: the pages' 80-byte
/// `Arc` blocks happen to feed the size class the tuples' 96-byte field arrays can then use. See
/// the memory bench before changing this.)
#[derive(Clone, Debug, Default)]
struct Page {
    /// Bit `s` is set when the id at slot `s` is resident.
    present: u64,
    /// The resident tuples, in slot order: slot `s`'s is at `rank(present, s)`.
    tuples: Vec<Tuple>,
    /// Bit `s` is set when the resident tuple at slot `s` has an expiry time.
    expiring: u64,
    /// Those expiry times, in slot order: slot `s`'s is at `rank(expiring, s)` (empty, and not
    /// allocated, in a page where no tuple has one).
    expires: Vec<Millis>,
}

/// How many bits of `bits` are set below bit `slot`.
fn rank(bits: u64, slot: u8) -> usize {
    (bits & ((1u64 << slot) - 1)).count_ones() as usize
}

fn has(bits: u64, slot: u8) -> bool {
    bits & (1u64 << slot) != 0
}

impl Page {
    /// The position of slot `slot`'s tuple in `tuples`, if resident.
    fn find(&self, slot: u8) -> Option<usize> {
        has(self.present, slot).then(|| rank(self.present, slot))
    }

    fn expiry(&self, slot: u8) -> Option<Millis> {
        has(self.expiring, slot).then(|| self.expires[rank(self.expiring, slot)])
    }

    /// Sets (or clears) slot `slot`'s expiry time.
    fn set_expiry(&mut self, slot: u8, expires: Option<Millis>) {
        let i = rank(self.expiring, slot);
        match (has(self.expiring, slot), expires) {
            (true, Some(at)) => self.expires[i] = at,
            (true, None) => {
                self.expires.remove(i);
                self.expiring &= !(1u64 << slot);
                if self.expiring == 0 {
                    self.expires = Vec::new();
                }
            }
            (false, Some(at)) => {
                self.expires.insert(i, at);
                self.expiring |= 1u64 << slot;
            }
            (false, None) => {}
        }
    }

    /// The resident slots, lowest first from the front, with their expiries and tuples.
    fn entries(&self) -> PageEntries<'_> {
        PageEntries {
            page: self,
            left: self.present,
        }
    }
}

/// A page's resident slots (those still in `left`), in slot order from either end.
struct PageEntries<'a> {
    page: &'a Page,
    left: u64,
}

impl<'a> PageEntries<'a> {
    fn entry(&self, slot: u8) -> (u8, Option<Millis>, &'a Tuple) {
        let page = self.page;
        (
            slot,
            page.expiry(slot),
            &page.tuples[rank(page.present, slot)],
        )
    }
}

impl<'a> Iterator for PageEntries<'a> {
    type Item = (u8, Option<Millis>, &'a Tuple);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let slot = self.left.trailing_zeros() as u8;
        self.left &= self.left - 1;
        Some(self.entry(slot))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.left.count_ones() as usize;
        (n, Some(n))
    }
}

impl DoubleEndedIterator for PageEntries<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let slot = 63 - self.left.leading_zeros() as u8;
        self.left &= !(1u64 << slot);
        Some(self.entry(slot))
    }
}

fn split(id: TupleId) -> (u64, u8) {
    (id >> PAGE_BITS, (id & (PAGE_IDS - 1)) as u8)
}

/// The resident tuples by id. Cloning shares every page (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct Store {
    pages: HashMap<u64, Arc<Page>, BuildHasherDefault<IdHasher>>,
    len: usize,
}

impl Store {
    /// How many tuples are resident.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether none is.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `n` more tuples (written with consecutive ids).
    pub(crate) fn reserve(&mut self, n: usize) {
        self.pages.reserve(n / PAGE_IDS as usize + 1);
    }

    /// The tuple with this id, if resident.
    pub(crate) fn get(&self, id: &TupleId) -> Option<&Tuple> {
        let (page, slot) = split(*id);
        let page = self.pages.get(&page)?;
        page.find(slot).map(|i| &page.tuples[i])
    }

    /// The expiry time of a resident tuple that has one.
    pub(crate) fn expiry(&self, id: TupleId) -> Option<Millis> {
        let (page, slot) = split(id);
        self.pages.get(&page)?.expiry(slot)
    }

    /// Whether the tuple with this id is resident.
    pub(crate) fn contains_key(&self, id: &TupleId) -> bool {
        let (page, slot) = split(*id);
        self.pages
            .get(&page)
            .is_some_and(|page| has(page.present, slot))
    }

    /// Stores a tuple (replacing one with the same id, which the space never has).
    pub(crate) fn insert(&mut self, id: TupleId, tuple: Tuple, expires: Option<Millis>) {
        let (page, slot) = split(id);
        let page = Arc::make_mut(self.pages.entry(page).or_default());
        match page.find(slot) {
            Some(i) => page.tuples[i] = tuple,
            None => {
                // Ids grow, so this is almost always a push at the end.
                page.tuples.insert(rank(page.present, slot), tuple);
                page.present |= 1u64 << slot;
                self.len += 1;
            }
        }
        page.set_expiry(slot, expires);
    }

    /// Removes the tuple with this id, if resident, and returns it with its expiry time.
    pub(crate) fn remove(&mut self, id: &TupleId) -> Option<(Tuple, Option<Millis>)> {
        let (number, slot) = split(*id);
        let shared = self.pages.get_mut(&number)?;
        let i = shared.find(slot)?;
        let page = Arc::make_mut(shared);
        let expires = page.expiry(slot);
        page.set_expiry(slot, None);
        let tuple = page.tuples.remove(i);
        page.present &= !(1u64 << slot);
        if page.present == 0 {
            self.pages.remove(&number);
        } else if page.tuples.capacity() > 4 * page.tuples.len().max(4) {
            page.tuples.shrink_to_fit();
        }
        self.len -= 1;
        Some((tuple, expires))
    }

    /// Every resident tuple with its id and expiry, in id order.
    pub(crate) fn iter_sorted(
        &self,
    ) -> impl DoubleEndedIterator<Item = (TupleId, Option<Millis>, &Tuple)> {
        let mut numbers: Vec<u64> = self.pages.keys().copied().collect();
        numbers.sort_unstable();
        numbers.into_iter().flat_map(move |number| {
            self.pages[&number]
                .entries()
                .map(move |(slot, expires, tuple)| {
                    ((number << PAGE_BITS) | u64::from(slot), expires, tuple)
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple;

    #[test]
    fn get_insert_remove_and_order() {
        let mut s = Store::default();
        for id in [5u64, 1, 64, 63, 200, 1_000_000] {
            s.insert(id, tuple![id as i64], (id == 64).then_some(99));
        }
        assert_eq!(s.len(), 6);
        assert_eq!(s.get(&63), Some(&tuple![63]));
        assert_eq!(s.get(&62), None);
        assert_eq!(s.expiry(64), Some(99));
        s.insert(7, tuple![7], Some(0));
        assert_eq!(s.expiry(7), Some(0), "every expiry time is kept exactly");
        s.remove(&7);
        assert_eq!(s.expiry(63), None);
        let ids: Vec<u64> = s.iter_sorted().map(|(id, _, _)| id).collect();
        assert_eq!(ids, vec![1, 5, 63, 64, 200, 1_000_000]);
        assert_eq!(s.remove(&64), Some((tuple![64], Some(99))));
        assert_eq!(s.remove(&64), None);
        assert_eq!(s.len(), 5);
        assert!(!s.contains_key(&64));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Inserts and removes (ids within a few pages, some with an expiry time) agree with a
        /// map of id to (tuple, expiry), read by id and in order from both ends.
        #[test]
        fn pages_read_like_a_sorted_map(
            ops in proptest::collection::vec((0u64..200, proptest::option::of(0u64..5), proptest::bool::ANY), 1..300)
        ) {
            let mut s = Store::default();
            let mut model: std::collections::BTreeMap<TupleId, (Tuple, Option<Millis>)> =
                std::collections::BTreeMap::new();
            for (id, expires, insert) in ops {
                if insert {
                    s.insert(id, tuple![id as i64], expires);
                    model.insert(id, (tuple![id as i64], expires));
                } else {
                    proptest::prop_assert_eq!(s.remove(&id), model.remove(&id));
                }
                proptest::prop_assert_eq!(s.len(), model.len());
            }
            for id in 0..200 {
                let entry = model.get(&id);
                proptest::prop_assert_eq!(s.get(&id), entry.map(|(t, _)| t));
                proptest::prop_assert_eq!(s.contains_key(&id), entry.is_some());
                proptest::prop_assert_eq!(s.expiry(id), entry.and_then(|(_, e)| *e));
            }
            let forward: Vec<_> = s.iter_sorted().map(|(id, e, t)| (id, e, t.clone())).collect();
            let expected: Vec<_> = model.iter().map(|(id, (t, e))| (*id, *e, t.clone())).collect();
            proptest::prop_assert_eq!(&forward, &expected);
            let mut backward: Vec<_> =
                s.iter_sorted().rev().map(|(id, e, t)| (id, e, t.clone())).collect();
            backward.reverse();
            proptest::prop_assert_eq!(&backward, &expected);
        }
    }

    #[test]
    fn a_clone_is_a_view_that_later_changes_do_not_touch() {
        let mut s = Store::default();
        for id in 1..=1_000u64 {
            s.insert(id, tuple![id as i64], None);
        }
        let view = s.clone();
        for id in (1..=1_000u64).step_by(3) {
            s.remove(&id);
        }
        s.insert(1_001, tuple![1_001], None);
        assert_eq!(view.len(), 1_000);
        assert_eq!(view.iter_sorted().count(), 1_000);
        assert_eq!(view.get(&1), Some(&tuple![1]));
        assert_eq!(view.get(&1_001), None);
        assert_eq!(s.get(&1), None);
        assert_eq!(s.len(), 1_000 - 334 + 1);
    }
}
