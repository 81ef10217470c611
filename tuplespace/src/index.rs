//! Posting lists: which tuple ids live under an index key.
//!
//! The space indexes every tuple twice: under its arity, and under its (arity, first field) pair.
//! A posting list is a deque of ids in increasing order; since ids only grow, an `out` appends.
//! Removal is lazy where it would be slow: an id taken from the front or back is popped at once,
//! one from the middle is left as a "dead" entry that readers skip, and the list is compacted
//! when dead entries outnumber live ones. So every operation stays amortised O(1) apart from the
//! skipping, which is bounded by the live length.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hasher;

use crate::store::Store;
use crate::value::Value;
use crate::{Template, Tuple, TupleId};

/// Hashes tuple ids by one multiplication. Ids are assigned by the space itself, never chosen by
/// a client, so nobody can aim collisions at it; sequential ids spread over the table's low bits
/// (the multiplier is odd) and its control bits (the high bits of the product).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Ids of live (and some dead) tuples, ascending.
#[derive(Default, Debug)]
pub(crate) struct Posting {
    ids: VecDeque<TupleId>,
    dead: usize,
}

impl Posting {
    pub(crate) fn push(&mut self, id: TupleId) {
        debug_assert!(self.ids.back().is_none_or(|&last| last < id));
        self.ids.push_back(id);
    }

    /// Forgets `id`, which the caller has already removed from `store`.
    pub(crate) fn remove(&mut self, id: TupleId, store: &Store) {
        if self.ids.front() == Some(&id) {
            self.ids.pop_front();
        } else if self.ids.back() == Some(&id) {
            self.ids.pop_back();
        } else {
            self.dead += 1;
        }
        // Dead ids at the front would make every scan from the start walk them: pop them now
        // (a hash lookup each, and each dead id is popped once).
        while self.dead > 0 {
            match self.ids.front() {
                Some(front) if !store.contains_key(front) => {
                    self.ids.pop_front();
                    self.dead -= 1;
                }
                _ => break,
            }
        }
        // Dead ids elsewhere (left by removals from the middle) are skipped by readers and dropped
        // in one pass once they outnumber the live ones, so each removal is amortised O(1).
        if self.dead > 0 && self.dead * 2 > self.ids.len() {
            self.compact(store);
            self.dead = 0;
            if self.ids.capacity() > 4 * self.ids.len().max(4) {
                self.ids.shrink_to_fit();
            }
        }
    }

    /// Drops the dead ids.
    fn compact(&mut self, store: &Store) {
        self.ids.retain(|id| store.contains_key(id));
    }

    /// How many live ids the list holds.
    pub(crate) fn live_len(&self) -> usize {
        self.ids.len() - self.dead
    }

    /// The first id greater than `after` whose tuple is live and satisfies `found`.
    pub(crate) fn first_match<'a>(
        &self,
        after: TupleId,
        store: &'a Store,
        mut found: impl FnMut(&Tuple) -> bool,
    ) -> Option<(TupleId, &'a Tuple)> {
        let start = self.ids.partition_point(|&id| id <= after);
        self.ids
            .range(start..)
            .find_map(|&id| store.get(&id).filter(|t| found(t)).map(|t| (id, t)))
    }

    /// Ids greater than `after` and less than `before`, ascending (may include dead ids).
    pub(crate) fn ascending(
        &self,
        after: TupleId,
        before: TupleId,
    ) -> impl Iterator<Item = TupleId> + '_ {
        let start = self.ids.partition_point(|&id| id <= after);
        self.ids
            .range(start..)
            .copied()
            .take_while(move |&id| id < before)
    }

    /// Ids greater than `after` and less than `before`, descending (may include dead ids).
    pub(crate) fn descending(
        &self,
        after: TupleId,
        before: TupleId,
    ) -> impl Iterator<Item = TupleId> + '_ {
        let end = self.ids.partition_point(|&id| id < before);
        self.ids
            .range(..end)
            .rev()
            .copied()
            .take_while(move |&id| id > after)
    }
}

/// The postings of one arity.
#[derive(Default, Debug)]
struct ArityIndex {
    /// Every tuple of this arity: what a template without a literal first field scans.
    all: Posting,
    /// Tuples of this arity by their first field.
    by_first: HashMap<Value, Posting>,
}

/// The space's index: arity, and (arity, first field). (A BTreeMap for arities: a space holds
/// few distinct arities, and a short ordered search beats hashing a usize.)
#[derive(Default, Debug)]
pub(crate) struct Index {
    arities: BTreeMap<usize, ArityIndex>,
}

impl Index {
    pub(crate) fn insert(&mut self, id: TupleId, fields: &[Value]) {
        let arity = self.arities.entry(fields.len()).or_default();
        arity.all.push(id);
        if let Some(first) = fields.first() {
            match arity.by_first.get_mut(first) {
                Some(posting) => posting.push(id),
                None => {
                    let mut posting = Posting::default();
                    posting.push(id);
                    arity.by_first.insert(first.clone(), posting);
                }
            }
        }
    }

    pub(crate) fn remove(&mut self, id: TupleId, fields: &[Value], store: &Store) {
        let Some(arity) = self.arities.get_mut(&fields.len()) else {
            return;
        };
        arity.all.remove(id, store);
        if let Some(first) = fields.first()
            && let Some(posting) = arity.by_first.get_mut(first)
        {
            posting.remove(id, store);
            if posting.live_len() == 0 {
                arity.by_first.remove(first);
            }
        }
        if arity.all.live_len() == 0 {
            self.arities.remove(&fields.len());
        }
    }

    /// The posting list a template's candidates come from, or `None` if nothing can match.
    pub(crate) fn candidates(&self, template: &Template) -> Option<&Posting> {
        let arity = self.arities.get(&template.arity())?;
        match template.index_key() {
            Some(key) => arity.by_first.get(key),
            None => Some(&arity.all),
        }
    }
}
