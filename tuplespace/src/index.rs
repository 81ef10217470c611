//! Posting lists: which tuple ids live under an index key.
//!
//! The space indexes every tuple twice: under its arity, and under its (arity, first field) pair.
//! A posting list is a deque of ids in increasing order; since ids only grow, an `out` appends.
//! Removal is lazy where it would be slow: an id taken from the front or back is popped at once,
//! one from the middle is left as a "dead" entry that readers skip, and the list is compacted
//! when dead entries outnumber live ones. So every operation stays amortised O(1) apart from the
//! skipping, which is bounded by the live length.

use std::collections::{HashMap, VecDeque};

use crate::value::Value;
use crate::{Template, TupleId};

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

    /// Forgets `id`, which the caller has already removed from the store (`is_live` says what is
    /// still there).
    pub(crate) fn remove(&mut self, id: TupleId, is_live: impl Fn(TupleId) -> bool) {
        if self.ids.front() == Some(&id) {
            self.ids.pop_front();
        } else if self.ids.back() == Some(&id) {
            self.ids.pop_back();
        } else {
            self.dead += 1;
        }
        while let Some(&front) = self.ids.front() {
            if is_live(front) || self.dead == 0 {
                break;
            }
            self.ids.pop_front();
            self.dead -= 1;
        }
        if self.dead > 0 && self.dead * 2 > self.ids.len() {
            self.ids.retain(|&id| is_live(id));
            self.dead = 0;
            if self.ids.capacity() > 4 * self.ids.len().max(4) {
                self.ids.shrink_to_fit();
            }
        }
    }

    /// How many live ids the list holds.
    pub(crate) fn live_len(&self) -> usize {
        self.ids.len() - self.dead
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

/// The space's index: arity, and (arity, first field).
#[derive(Default, Debug)]
pub(crate) struct Index {
    arities: HashMap<usize, ArityIndex>,
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

    pub(crate) fn remove(
        &mut self,
        id: TupleId,
        fields: &[Value],
        is_live: impl Fn(TupleId) -> bool + Copy,
    ) {
        let Some(arity) = self.arities.get_mut(&fields.len()) else {
            return;
        };
        arity.all.remove(id, is_live);
        if let Some(first) = fields.first()
            && let Some(posting) = arity.by_first.get_mut(first)
        {
            posting.remove(id, is_live);
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
