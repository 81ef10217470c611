//! Posting lists: which tuple ids live under an index key.
//!
//! The space indexes every tuple twice: under its arity, and under its (arity, first field) pair.
//! A posting list is a deque of ids in increasing order; since ids only grow, an `out` appends.
//! Removal is lazy where it would be slow: an id taken from the front or back is popped at once,
//! one from the middle is left as a "dead" entry that readers skip, and the list is compacted
//! when dead entries outnumber live ones. So every operation stays amortised O(1) apart from the
//! skipping, which is bounded by the live length.
//!
//! The ids are kept compactly (see [`Ids`]): as 4-byte offsets from a base, or as runs of
//! consecutive ids where runs are long (the list of an arity that every tuple has is then a
//! handful of runs, not an id per tuple).

use std::collections::{BTreeMap, HashMap, VecDeque, vec_deque};
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
    ids: Ids,
    dead: usize,
}

impl Posting {
    pub(crate) fn push(&mut self, id: TupleId) {
        debug_assert!(self.ids.back().is_none_or(|last| last < id));
        self.ids.push_back(id);
    }

    /// Forgets `id`, which the caller has already removed from `store`.
    pub(crate) fn remove(&mut self, id: TupleId, store: &Store) {
        if self.ids.front() == Some(id) {
            self.ids.pop_front();
        } else if self.ids.back() == Some(id) {
            self.ids.pop_back();
        } else {
            self.dead += 1;
        }
        // Dead ids at the front would make every scan from the start walk them: pop them now
        // (a hash lookup each, and each dead id is popped once).
        while self.dead > 0 {
            match self.ids.front() {
                Some(front) if !store.contains_key(&front) => {
                    self.ids.pop_front();
                    self.dead -= 1;
                }
                _ => break,
            }
        }
        // Dead ids elsewhere (left by removals from the middle) are skipped by readers and dropped
        // in one pass once they outnumber the live ones, so each removal is amortised O(1).
        if self.dead > 0 && self.dead * 2 > self.ids.len() {
            self.ids.retain(|id| store.contains_key(&id));
            self.dead = 0;
        }
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
        self.ids
            .up(after)
            .find_map(|id| store.get(&id).filter(|t| found(t)).map(|t| (id, t)))
    }

    /// Ids greater than `after` and less than `before`, ascending (may include dead ids).
    pub(crate) fn ascending(
        &self,
        after: TupleId,
        before: TupleId,
    ) -> impl Iterator<Item = TupleId> + '_ {
        self.ids.up(after).take_while(move |&id| id < before)
    }

    /// Ids greater than `after` and less than `before`, descending (may include dead ids).
    pub(crate) fn descending(
        &self,
        after: TupleId,
        before: TupleId,
    ) -> impl Iterator<Item = TupleId> + '_ {
        self.ids.down(before).take_while(move |&id| id > after)
    }
}

/// The widest spread of a narrow list's ids (2^32 - 1: an offset is a `u32`).
const NARROW_SPAN: u64 = u32::MAX as u64;

/// A list shorter than this stays as it is (the forms only differ by a few bytes).
const SMALL: usize = 16;

/// `first .. first + len` (`len` >= 1).
#[derive(Clone, Copy, Debug)]
struct Run {
    first: TupleId,
    len: u64,
}

impl Run {
    fn last(&self) -> TupleId {
        self.first + (self.len - 1)
    }
}

/// An ascending sequence of ids, in the cheapest of three forms:
///
/// - `Narrow`: each id as a 4-byte offset from a base, while the ids span less than 2^32 (in
///   practice always: that is four billion `out`s between the oldest and the newest id of one
///   list);
/// - `Wide`: each id whole (8 bytes), when they span more;
/// - `Runs`: runs of consecutive ids (16 bytes a run), when runs are long, as in the list of an
///   arity that most tuples share (a space of one shape lists all its ids there).
///
/// A list moves to runs when it must grow and its ids average at least 8 to a run (a scan of the
/// list, as long as the copy that growing makes), and back when they average fewer than 2 to a
/// run; the gap between the two keeps a list from changing form more than once per O(n) pushes
/// or pops.
#[derive(Debug)]
enum Ids {
    /// Id `base + offsets[i]` for each i.
    Narrow {
        base: TupleId,
        offsets: VecDeque<u32>,
    },
    /// The ids themselves.
    Wide(VecDeque<TupleId>),
    /// The ids of each run, in order; `len` ids in all.
    Runs { runs: VecDeque<Run>, len: usize },
}

impl Default for Ids {
    fn default() -> Self {
        Ids::Narrow {
            base: 0,
            offsets: VecDeque::new(),
        }
    }
}

impl Ids {
    fn len(&self) -> usize {
        match self {
            Ids::Narrow { offsets, .. } => offsets.len(),
            Ids::Wide(ids) => ids.len(),
            Ids::Runs { len, .. } => *len,
        }
    }

    fn front(&self) -> Option<TupleId> {
        match self {
            Ids::Narrow { base, offsets } => offsets.front().map(|&o| base + u64::from(o)),
            Ids::Wide(ids) => ids.front().copied(),
            Ids::Runs { runs, .. } => runs.front().map(|r| r.first),
        }
    }

    fn back(&self) -> Option<TupleId> {
        match self {
            Ids::Narrow { base, offsets } => offsets.back().map(|&o| base + u64::from(o)),
            Ids::Wide(ids) => ids.back().copied(),
            Ids::Runs { runs, .. } => runs.back().map(Run::last),
        }
    }

    fn pop_front(&mut self) {
        match self {
            Ids::Narrow { offsets, .. } => {
                offsets.pop_front();
            }
            Ids::Wide(ids) => {
                ids.pop_front();
            }
            Ids::Runs { runs, len } => {
                if let Some(run) = runs.front_mut() {
                    *len -= 1;
                    if run.len == 1 {
                        runs.pop_front();
                    } else {
                        run.first += 1;
                        run.len -= 1;
                    }
                }
            }
        }
    }

    fn pop_back(&mut self) {
        match self {
            Ids::Narrow { offsets, .. } => {
                offsets.pop_back();
            }
            Ids::Wide(ids) => {
                ids.pop_back();
            }
            Ids::Runs { runs, len } => {
                if let Some(run) = runs.back_mut() {
                    *len -= 1;
                    if run.len == 1 {
                        runs.pop_back();
                    } else {
                        run.len -= 1;
                    }
                }
            }
        }
    }

    /// Appends `id`, greater than every id held.
    fn push_back(&mut self, id: TupleId) {
        match self {
            Ids::Narrow { base, offsets } => {
                let Some(&first) = offsets.front() else {
                    *base = id;
                    offsets.push_back(0);
                    return;
                };
                if offsets.len() == offsets.capacity() && self.make_runs() {
                    return self.push_back(id);
                }
                let Ids::Narrow { base, offsets } = self else {
                    unreachable!("still narrow")
                };
                if let Ok(offset) = u32::try_from(id - *base) {
                    offsets.push_back(offset);
                    return;
                }
                // Past the base's reach: move the base up to the oldest id if that leaves at
                // least half the range free (so this O(n) step is taken at most once per 2^31
                // ids), or else hold whole ids.
                let oldest = *base + u64::from(first);
                if id - oldest <= NARROW_SPAN / 2 {
                    for offset in offsets.iter_mut() {
                        *offset -= first;
                    }
                    *base = oldest;
                    offsets.push_back((id - oldest) as u32);
                } else {
                    let mut ids = VecDeque::with_capacity(offsets.len() + 1);
                    ids.extend(offsets.iter().map(|&o| *base + u64::from(o)));
                    ids.push_back(id);
                    *self = Ids::Wide(ids);
                }
            }
            Ids::Wide(ids) => {
                if ids.len() == ids.capacity() && self.make_runs() {
                    return self.push_back(id);
                }
                let Ids::Wide(ids) = self else {
                    unreachable!("still wide")
                };
                ids.push_back(id);
                // Whole ids are needed no longer once the oldest has caught up: back to offsets
                // while they leave half the range free (so a list changes form at most once per
                // 2^31 ids).
                if let Some(&oldest) = ids.front()
                    && id - oldest <= NARROW_SPAN / 2
                {
                    *self = self.as_list();
                }
            }
            Ids::Runs { runs, len } => {
                *len += 1;
                match runs.back_mut() {
                    Some(run) if run.last() + 1 == id => run.len += 1,
                    _ => {
                        runs.push_back(Run { first: id, len: 1 });
                        if *len >= SMALL && runs.len() * 2 > *len {
                            self.make_list();
                        }
                    }
                }
            }
        }
    }

    /// Turns a list into runs if its ids average at least 8 to a run; whether it did.
    fn make_runs(&mut self) -> bool {
        let len = self.len();
        if len < SMALL || matches!(self, Ids::Runs { .. }) {
            return false;
        }
        // Count the runs first (stopping as soon as there are too many), so a list that stays
        // a list costs a partial scan and no allocation.
        let mut count = 0;
        let mut prev: Option<TupleId> = None;
        for id in self.iter() {
            if prev.is_none_or(|p| p + 1 != id) {
                count += 1;
                if count * 8 > len {
                    return false;
                }
            }
            prev = Some(id);
        }
        let mut runs: VecDeque<Run> = VecDeque::with_capacity(count);
        for id in self.iter() {
            match runs.back_mut() {
                Some(run) if run.last() + 1 == id => run.len += 1,
                _ => runs.push_back(Run { first: id, len: 1 }),
            }
        }
        *self = Ids::Runs { runs, len };
        true
    }

    /// Turns runs into a list of ids.
    fn make_list(&mut self) {
        *self = self.as_list();
    }

    /// The same ids as a narrow list if they span little enough, else as a wide one.
    fn as_list(&self) -> Ids {
        let (Some(first), Some(last)) = (self.front(), self.back()) else {
            return Ids::default();
        };
        if last - first <= NARROW_SPAN {
            let mut offsets = VecDeque::with_capacity(self.len());
            offsets.extend(self.iter().map(|id| (id - first) as u32));
            Ids::Narrow {
                base: first,
                offsets,
            }
        } else {
            let mut wide = VecDeque::with_capacity(self.len());
            wide.extend(self.iter());
            Ids::Wide(wide)
        }
    }

    /// Keeps the ids `keep` says to, in the cheapest form for what is left.
    fn retain(&mut self, mut keep: impl FnMut(TupleId) -> bool) {
        fn shrink<T>(deque: &mut VecDeque<T>) {
            if deque.capacity() > 4 * deque.len().max(4) {
                deque.shrink_to_fit();
            }
        }
        match self {
            Ids::Narrow { base, offsets } => {
                let base = *base;
                offsets.retain(|&o| keep(base + u64::from(o)));
                shrink(offsets);
            }
            Ids::Wide(ids) => {
                ids.retain(|&id| keep(id));
                shrink(ids);
            }
            Ids::Runs { runs, len } => {
                let mut kept: VecDeque<Run> = VecDeque::new();
                let mut count = 0;
                for run in runs.iter() {
                    for id in run.first..=run.last() {
                        if !keep(id) {
                            continue;
                        }
                        count += 1;
                        match kept.back_mut() {
                            Some(last) if last.last() + 1 == id => last.len += 1,
                            _ => kept.push_back(Run { first: id, len: 1 }),
                        }
                    }
                }
                kept.shrink_to_fit();
                *runs = kept;
                *len = count;
                if *len >= SMALL && runs.len() * 2 > *len {
                    self.make_list();
                }
                return;
            }
        }
        self.make_runs();
    }

    /// Every id, ascending.
    fn iter(&self) -> Up<'_> {
        match self {
            Ids::Narrow { base, offsets } => Up::Narrow {
                base: *base,
                offsets: offsets.iter(),
            },
            Ids::Wide(ids) => Up::Wide(ids.iter()),
            Ids::Runs { runs, .. } => Up::Runs {
                rest: runs.iter(),
                next: 0,
                left: 0,
            },
        }
    }

    /// The ids greater than `after`, ascending.
    fn up(&self, after: TupleId) -> Up<'_> {
        match self {
            Ids::Narrow { base, offsets } => {
                let start = offsets.partition_point(|&o| base + u64::from(o) <= after);
                Up::Narrow {
                    base: *base,
                    offsets: offsets.range(start..),
                }
            }
            Ids::Wide(ids) => {
                let start = ids.partition_point(|&id| id <= after);
                Up::Wide(ids.range(start..))
            }
            Ids::Runs { runs, .. } => {
                let start = runs.partition_point(|r| r.last() <= after);
                let mut rest = runs.range(start..);
                match rest.next() {
                    // `run.last() > after`, so `after + 1` does not overflow.
                    Some(run) => {
                        let next = run.first.max(after + 1);
                        Up::Runs {
                            rest,
                            next,
                            left: run.last() - next + 1,
                        }
                    }
                    None => Up::Runs {
                        rest,
                        next: 0,
                        left: 0,
                    },
                }
            }
        }
    }

    /// The ids less than `before`, descending.
    fn down(&self, before: TupleId) -> Down<'_> {
        match self {
            Ids::Narrow { base, offsets } => {
                let end = offsets.partition_point(|&o| base + u64::from(o) < before);
                Down::Narrow {
                    base: *base,
                    offsets: offsets.range(..end),
                }
            }
            Ids::Wide(ids) => {
                let end = ids.partition_point(|&id| id < before);
                Down::Wide(ids.range(..end))
            }
            Ids::Runs { runs, .. } => {
                let end = runs.partition_point(|r| r.first < before);
                let mut rest = runs.range(..end);
                match rest.next_back() {
                    // `run.first < before`, so `before - 1` does not underflow.
                    Some(run) => {
                        let next = run.last().min(before - 1);
                        Down::Runs {
                            rest,
                            next,
                            left: next - run.first + 1,
                        }
                    }
                    None => Down::Runs {
                        rest,
                        next: 0,
                        left: 0,
                    },
                }
            }
        }
    }
}

/// A list's ids from some point up.
enum Up<'a> {
    Narrow {
        base: TupleId,
        offsets: vec_deque::Iter<'a, u32>,
    },
    Wide(vec_deque::Iter<'a, TupleId>),
    /// `left` ids from `next` up, then the runs in `rest`.
    Runs {
        rest: vec_deque::Iter<'a, Run>,
        next: TupleId,
        left: u64,
    },
}

impl Iterator for Up<'_> {
    type Item = TupleId;

    #[inline]
    fn next(&mut self) -> Option<TupleId> {
        match self {
            Up::Narrow { base, offsets } => offsets.next().map(|&o| *base + u64::from(o)),
            Up::Wide(ids) => ids.next().copied(),
            Up::Runs { rest, next, left } => {
                if *left == 0 {
                    let run = rest.next()?;
                    (*next, *left) = (run.first, run.len);
                }
                let id = *next;
                *next = id.wrapping_add(1);
                *left -= 1;
                Some(id)
            }
        }
    }
}

/// A list's ids from some point down.
enum Down<'a> {
    Narrow {
        base: TupleId,
        offsets: vec_deque::Iter<'a, u32>,
    },
    Wide(vec_deque::Iter<'a, TupleId>),
    /// `left` ids from `next` down, then the runs in `rest` from the back.
    Runs {
        rest: vec_deque::Iter<'a, Run>,
        next: TupleId,
        left: u64,
    },
}

impl Iterator for Down<'_> {
    type Item = TupleId;

    #[inline]
    fn next(&mut self) -> Option<TupleId> {
        match self {
            Down::Narrow { base, offsets } => offsets.next_back().map(|&o| *base + u64::from(o)),
            Down::Wide(ids) => ids.next_back().copied(),
            Down::Runs { rest, next, left } => {
                if *left == 0 {
                    let run = rest.next_back()?;
                    (*next, *left) = (run.last(), run.len);
                }
                let id = *next;
                *next = id.wrapping_sub(1);
                *left -= 1;
                Some(id)
            }
        }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::tuple;

    /// A posting, the store it indexes, and the live ids it should answer with.
    #[derive(Default)]
    struct Fixture {
        posting: Posting,
        store: Store,
        live: BTreeSet<TupleId>,
        last: TupleId,
    }

    impl Fixture {
        fn push(&mut self, gap: u64) -> TupleId {
            let id = self.last + gap;
            self.last = id;
            self.store.insert(id, tuple![1], None);
            self.posting.push(id);
            self.live.insert(id);
            id
        }

        fn remove(&mut self, id: TupleId) {
            self.store.remove(&id);
            self.posting.remove(id, &self.store);
            self.live.remove(&id);
        }

        fn live_only(&self, ids: impl Iterator<Item = TupleId>) -> Vec<TupleId> {
            ids.filter(|id| self.store.contains_key(id)).collect()
        }

        /// Every read agrees with the model, for bounds around some of the ids held.
        fn check(&self) {
            assert_eq!(self.posting.live_len(), self.live.len());
            let mut bounds: Vec<TupleId> = vec![0, TupleId::MAX];
            for &id in self.live.iter().step_by((self.live.len() / 3).max(1)) {
                bounds.extend([id - 1, id, id + 1]);
            }
            for &after in &bounds {
                let expected = self.live.range(after.saturating_add(1)..).next().copied();
                let found = self
                    .posting
                    .first_match(after, &self.store, |_| true)
                    .map(|(id, _)| id);
                assert_eq!(found, expected, "first after {after}");
                for &before in &bounds {
                    let inside: Vec<TupleId> = self
                        .live
                        .iter()
                        .copied()
                        .filter(|&id| id > after && id < before)
                        .collect();
                    let up = self.live_only(self.posting.ascending(after, before));
                    assert_eq!(up, inside, "ascending ({after}, {before})");
                    let mut down = self.live_only(self.posting.descending(after, before));
                    down.reverse();
                    assert_eq!(down, inside, "descending ({after}, {before})");
                }
            }
        }
    }

    #[test]
    fn consecutive_ids_are_kept_as_runs_and_sparse_ones_as_offsets() {
        let mut f = Fixture::default();
        for _ in 0..1_000 {
            f.push(1);
        }
        assert!(matches!(&f.posting.ids, Ids::Runs { runs, .. } if runs.len() == 1));
        f.check();
        // Taking two ids of every three from the middle leaves dead ids until they outnumber
        // the live ones; compaction then sees runs of one and goes back to a list.
        let ids: Vec<TupleId> = f.live.iter().copied().filter(|id| id % 3 != 0).collect();
        for id in ids {
            f.remove(id);
        }
        assert!(matches!(f.posting.ids, Ids::Narrow { .. }));
        f.check();

        let mut sparse = Fixture::default();
        for _ in 0..1_000 {
            sparse.push(1_000);
        }
        assert!(matches!(sparse.posting.ids, Ids::Narrow { .. }));
        sparse.check();
    }

    #[test]
    fn ids_spread_past_four_billion_are_kept_whole_and_narrowed_again() {
        let mut f = Fixture::default();
        let first = f.push(1);
        f.push(3);
        f.push(1 << 33);
        assert!(matches!(f.posting.ids, Ids::Wide(_)));
        f.check();
        f.remove(first);
        f.remove(first + 3);
        f.push(5);
        assert!(matches!(f.posting.ids, Ids::Narrow { .. }));
        f.check();
        // The base moves up to the oldest id when that leaves half the range free.
        let mut g = Fixture::default();
        let old = g.push(1);
        let kept = g.push(3 << 30);
        g.remove(old);
        g.push((1 << 30) + 10);
        assert!(matches!(g.posting.ids, Ids::Narrow { base, .. } if base == kept));
        g.check();
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Push the id this far past the last one.
        Push(u64),
        /// Push this many consecutive ids.
        Burst(u8),
        /// Remove the live id at this position (modulo how many there are).
        Remove(usize),
        /// Remove the oldest or the newest live id.
        RemoveEnd(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop_oneof![Just(1u64), 1u64..4, 1u64..100, (1u64 << 31)..(1u64 << 34)]
                .prop_map(Op::Push),
            2 => (1u8..40).prop_map(Op::Burst),
            3 => any::<usize>().prop_map(Op::Remove),
            1 => any::<bool>().prop_map(Op::RemoveEnd),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        #[test]
        fn a_posting_answers_like_the_set_of_live_ids(ops in proptest::collection::vec(op(), 1..80)) {
            let mut f = Fixture::default();
            for op in ops {
                match op {
                    Op::Push(gap) => {
                        f.push(gap);
                    }
                    Op::Burst(n) => {
                        for _ in 0..n {
                            f.push(1);
                        }
                    }
                    Op::Remove(at) if !f.live.is_empty() => {
                        let id = *f.live.iter().nth(at % f.live.len()).expect("in range");
                        f.remove(id);
                    }
                    Op::RemoveEnd(oldest) if !f.live.is_empty() => {
                        let id = if oldest { f.live.first() } else { f.live.last() };
                        f.remove(*id.expect("not empty"));
                    }
                    Op::Remove(_) | Op::RemoveEnd(_) => {}
                }
                f.check();
            }
        }
    }
}
