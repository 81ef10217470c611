//! The resident tuples by id, in pages shared copy-on-write, so that a consistent view of the
//! whole space costs a page table, not a copy of every tuple.
//!
//! Ids are assigned in increasing order, so tuples written together sit together: page `p` holds
//! the tuples with ids `p * 64 .. (p + 1) * 64`, as a short vector sorted by id (a page holds only
//! the tuples still resident). The pages are reference-counted: [`Store::clone`] copies the table
//! of page pointers (one per 64 ids), and a page is copied only when it changes while a clone
//! still shares it ([`Arc::make_mut`]). A snapshot or a digest therefore takes a clone on the raft
//! thread in microseconds to milliseconds and encodes it on another thread, while the space
//! keeps changing; only the pages written meanwhile are copied, once each.
//!
//! Each entry also carries the tuple's expiry time (0: none), so a view needs nothing else to
//! encode a tuple.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use crate::index::IdHasher;
use crate::{Millis, Tuple, TupleId};

/// log2 of the ids per page.
const PAGE_BITS: u32 = 6;
/// Ids per page.
const PAGE_IDS: u64 = 1 << PAGE_BITS;

/// One resident tuple in its page.
#[derive(Clone, Debug)]
struct Entry {
    /// Its id's offset in the page.
    slot: u8,
    /// When it expires, plus one (0: never).
    expires: Millis,
    tuple: Tuple,
}

/// The tuples of 64 consecutive ids that are resident, sorted by id.
#[derive(Clone, Debug, Default)]
struct Page {
    entries: Vec<Entry>,
}

impl Page {
    fn find(&self, slot: u8) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&slot, |e| e.slot)
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
        page.find(slot).ok().map(|i| &page.entries[i].tuple)
    }

    /// The expiry time of a resident tuple that has one.
    pub(crate) fn expiry(&self, id: TupleId) -> Option<Millis> {
        let (page, slot) = split(id);
        let page = self.pages.get(&page)?;
        let entry = &page.entries[page.find(slot).ok()?];
        entry.expires.checked_sub(1)
    }

    /// Whether the tuple with this id is resident.
    pub(crate) fn contains_key(&self, id: &TupleId) -> bool {
        self.get(id).is_some()
    }

    /// Stores a tuple (replacing one with the same id, which the space never has).
    pub(crate) fn insert(&mut self, id: TupleId, tuple: Tuple, expires: Option<Millis>) {
        let (page, slot) = split(id);
        let page = Arc::make_mut(self.pages.entry(page).or_default());
        let entry = Entry {
            slot,
            expires: expires.map_or(0, |at| at.saturating_add(1)),
            tuple,
        };
        match page.find(slot) {
            Ok(i) => page.entries[i] = entry,
            Err(i) => {
                // Ids grow, so this is almost always a push at the end.
                page.entries.insert(i, entry);
                self.len += 1;
            }
        }
    }

    /// Removes and returns the tuple with this id, if resident.
    pub(crate) fn remove(&mut self, id: &TupleId) -> Option<Tuple> {
        let (number, slot) = split(*id);
        let shared = self.pages.get_mut(&number)?;
        let i = shared.find(slot).ok()?;
        let page = Arc::make_mut(shared);
        let entry = page.entries.remove(i);
        if page.entries.is_empty() {
            self.pages.remove(&number);
        } else if page.entries.capacity() > 4 * page.entries.len().max(4) {
            page.entries.shrink_to_fit();
        }
        self.len -= 1;
        Some(entry.tuple)
    }

    /// Every resident tuple with its id and expiry, in id order.
    pub(crate) fn iter_sorted(
        &self,
    ) -> impl DoubleEndedIterator<Item = (TupleId, Option<Millis>, &Tuple)> {
        let mut numbers: Vec<u64> = self.pages.keys().copied().collect();
        numbers.sort_unstable();
        numbers.into_iter().flat_map(move |number| {
            let page = &self.pages[&number];
            page.entries.iter().map(move |e| {
                let id = (number << PAGE_BITS) | u64::from(e.slot);
                (id, e.expires.checked_sub(1), &e.tuple)
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
        assert_eq!(s.remove(&64), Some(tuple![64]));
        assert_eq!(s.remove(&64), None);
        assert_eq!(s.len(), 5);
        assert!(!s.contains_key(&64));
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
