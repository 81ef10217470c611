//! The space: tuples with ids, the index, waiters and expiry.

use std::collections::BTreeSet;

use crate::index::{Index, Posting};
use crate::store::Store;
use crate::union;
use crate::waiters::{Served, WaitKind, Waiter, Waiters};
use crate::{Millis, Template, Tuple, TupleId, WaiterId};

/// What an `out` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOutcome {
    /// The id the tuple was given.
    pub id: TupleId,
    /// The blocked `in` that took the tuple at once, if any: the tuple was not stored.
    pub taken_by: Option<WaiterId>,
    /// The blocked `rd`s that saw the tuple (and are no longer waiting).
    pub seen_by: Vec<WaiterId>,
}

/// The result of a blocking operation: a tuple now, or a registered waiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait<T> {
    /// A tuple matched at once.
    Ready(T),
    /// Nothing matched; the waiter with this id now waits.
    Waiting(WaiterId),
}

/// What the clock reaching a new value expired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Tuples whose time to live ran out, by id, earliest expiry first.
    pub tuples: Vec<TupleId>,
    /// Waiters whose deadline passed, earliest deadline first.
    pub waiters: Vec<WaiterId>,
}

/// Which matches a copy-collect returns, and in what order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// At most this many tuples.
    pub limit: usize,
    /// Only tuples with an id greater than this (0: no lower bound).
    pub after: TupleId,
    /// Only tuples with an id less than this (`TupleId::MAX`: no upper bound).
    pub before: TupleId,
    /// Newest (highest id) first instead of oldest first.
    pub newest_first: bool,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            limit: usize::MAX,
            after: 0,
            before: TupleId::MAX,
            newest_first: false,
        }
    }
}

impl Query {
    /// At most `limit` tuples, oldest first.
    pub fn limit(limit: usize) -> Query {
        Query {
            limit,
            ..Query::default()
        }
    }
}

/// A consistent, read-only view of a [`Space`] as it was when [`Space::view`] took it: what a
/// snapshot encodes, a digest sums, and a long scan reads, on another thread while the space goes
/// on changing. Taking one costs a page table (the tuples' pages are shared copy-on-write).
#[derive(Clone, Debug)]
pub struct SpaceView {
    pub(crate) tuples: Store,
    pub(crate) waiters: Vec<(WaiterId, Waiter)>,
    pub(crate) now: Millis,
    pub(crate) next_id: TupleId,
    pub(crate) next_waiter: WaiterId,
}

impl SpaceView {
    /// How many tuples the view holds.
    pub fn len(&self) -> usize {
        self.tuples.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.tuples.is_empty()
    }

    /// Every tuple, with its id and expiry, in id order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (TupleId, Option<Millis>, &Tuple)> {
        self.tuples.iter_sorted()
    }

    /// How many tuples match (a scan of every tuple: for templates the index cannot narrow).
    pub fn count(&self, template: &Template) -> usize {
        self.iter().filter(|(_, _, t)| template.matches(t)).count()
    }

    /// [`Space::rd_join`] over the view (scans).
    pub fn rd_join(
        &self,
        templates: &[Template],
        join: &crate::union::Join,
        query: &Query,
    ) -> Result<Vec<(TupleId, Tuple)>, crate::union::JoinError> {
        let sources = self.rd_all(&join.source, &Query::limit(crate::union::MAX_TEMPLATES + 1));
        let mut all = templates.to_vec();
        all.extend(join.templates(sources.iter().map(|(_, t)| t))?);
        Ok(self.rd_any(&all, query))
    }

    /// A union copy-collect over the view (a scan of every tuple in the query's order).
    pub fn rd_any(&self, templates: &[Template], query: &Query) -> Vec<(TupleId, Tuple)> {
        let inside = |id: TupleId| id > query.after && id < query.before;
        let matching = |(id, _, t): &(TupleId, Option<Millis>, &Tuple)| {
            inside(*id) && crate::union::any_matches(templates, t)
        };
        let pick = |(id, _, t): (TupleId, Option<Millis>, &Tuple)| (id, t.clone());
        if query.newest_first {
            self.iter()
                .rev()
                .filter(matching)
                .take(query.limit)
                .map(pick)
                .collect()
        } else {
            self.iter()
                .filter(matching)
                .take(query.limit)
                .map(pick)
                .collect()
        }
    }

    /// A copy-collect over the view (a scan of every tuple in the query's order).
    pub fn rd_all(&self, template: &Template, query: &Query) -> Vec<(TupleId, Tuple)> {
        self.rd_any(std::slice::from_ref(template), query)
    }
}

/// A tuple space: the pure, deterministic core of the replicated state machine.
///
/// Ids are assigned in increasing order from 1. Time is whatever the caller says it is: `out`
/// with a TTL and blocking operations with a timeout measure from the space's clock, which only
/// [`Space::advance`] moves (and never backwards).
#[derive(Debug)]
pub struct Space {
    /// Resident tuples by id ("oldest" is the lowest id; the posting lists keep the order).
    pub(crate) tuples: Store,
    /// Arity and (arity, first field) postings over `tuples`.
    index: Index,
    /// Tuples with a time to live, by expiry time (each tuple's own expiry is in the store).
    expiries: BTreeSet<(Millis, TupleId)>,
    /// Blocked `in`s and `rd`s.
    waiters: Waiters,
    /// The id the next tuple gets.
    pub(crate) next_id: TupleId,
    /// The id the next waiter gets.
    pub(crate) next_waiter: WaiterId,
    /// The clock: the highest value passed to `advance`.
    pub(crate) now: Millis,
    /// Encoded bytes of the resident tuples (what a space cap counts).
    bytes: u64,
}

impl Default for Space {
    fn default() -> Self {
        Space::new()
    }
}

impl Space {
    /// An empty space at clock 0.
    pub fn new() -> Space {
        Space {
            tuples: Store::default(),
            index: Index::default(),
            expiries: BTreeSet::new(),
            waiters: Waiters::default(),
            next_id: 1,
            next_waiter: 1,
            now: 0,
            bytes: 0,
        }
    }

    /// How many tuples are resident.
    pub fn len(&self) -> usize {
        self.tuples.len()
    }

    /// Whether no tuple is resident.
    pub fn is_empty(&self) -> bool {
        self.tuples.is_empty()
    }

    /// The encoded bytes of the resident tuples (their [`codec::tuple_len`](crate::codec::tuple_len)
    /// summed).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The clock.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// A consistent view of the space as it is now, for reading elsewhere (see [`SpaceView`]).
    pub fn view(&self) -> SpaceView {
        SpaceView {
            tuples: self.tuples.clone(),
            waiters: self.waiters().map(|(id, w)| (id, w.clone())).collect(),
            now: self.now,
            next_id: self.next_id,
            next_waiter: self.next_waiter,
        }
    }

    /// The id the next `out` will assign.
    pub fn next_id(&self) -> TupleId {
        self.next_id
    }

    /// The expiry time of a resident tuple, if it has one.
    pub fn expiry(&self, id: TupleId) -> Option<Millis> {
        self.tuples.expiry(id)
    }

    /// Every resident tuple, oldest first (sorts the ids: for snapshots and checks, not hot
    /// paths).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (TupleId, &Tuple)> {
        self.tuples.iter_sorted().map(|(id, _, t)| (id, t))
    }

    /// Adds a tuple, which expires `ttl` after the current clock if given. If a blocked `in`
    /// matches it, the oldest such takes it at once and it is not stored; every blocked `rd`
    /// that matches sees it.
    pub fn out(&mut self, tuple: Tuple, ttl: Option<Millis>) -> OutOutcome {
        let id = self.next_id;
        self.next_id += 1;
        let Served { taker, readers } = if self.waiters.is_empty() {
            Served::default()
        } else {
            self.waiters.serve(id, &tuple)
        };
        if taker.is_none() {
            self.store(id, tuple, ttl.map(|ttl| self.now.saturating_add(ttl)));
        }
        OutOutcome {
            id,
            taken_by: taker,
            seen_by: readers,
        }
    }

    fn store(&mut self, id: TupleId, tuple: Tuple, expires_at: Option<Millis>) {
        self.bytes += crate::codec::tuple_len(&tuple) as u64;
        self.index.insert(id, &tuple);
        self.tuples.insert(id, tuple, expires_at);
        if let Some(at) = expires_at {
            self.expiries.insert((at, id));
        }
    }

    fn remove(&mut self, id: TupleId) -> Option<Tuple> {
        let (tuple, expires_at) = self.tuples.remove(&id)?;
        self.bytes -= crate::codec::tuple_len(&tuple) as u64;
        self.index.remove(id, &tuple, &self.tuples);
        if let Some(at) = expires_at {
            self.expiries.remove(&(at, id));
        }
        Some(tuple)
    }

    /// Matching resident tuples in id order within the query's bounds.
    fn matches<'a: 't, 't>(
        &'a self,
        template: &'t Template,
        after: TupleId,
        before: TupleId,
        newest_first: bool,
    ) -> Box<dyn Iterator<Item = (TupleId, &'a Tuple)> + 't> {
        let Some(posting) = self.index.candidates(template) else {
            return Box::new(std::iter::empty());
        };
        let ids: Box<dyn Iterator<Item = TupleId> + 't> = if newest_first {
            Box::new(posting.descending(after, before))
        } else {
            Box::new(posting.ascending(after, before))
        };
        Box::new(ids.filter_map(move |id| {
            self.tuples
                .get(&id)
                .filter(|t| template.matches(t))
                .map(|t| (id, t))
        }))
    }

    /// The oldest matching tuple with an id greater than `after`, left in place.
    pub fn rdp(&self, template: &Template, after: TupleId) -> Option<(TupleId, &Tuple)> {
        self.index
            .candidates(template)?
            .first_match(after, &self.tuples, |t| template.matches(t))
    }

    /// Removes and returns the oldest matching tuple.
    pub fn inp(&mut self, template: &Template) -> Option<(TupleId, Tuple)> {
        let (id, _) = self.rdp(template, 0)?;
        self.remove(id).map(|t| (id, t))
    }

    /// Blocking `in`: the oldest matching tuple now, or a waiter that an `out` will serve. The
    /// waiter gives up `timeout` after the current clock, or never.
    pub fn in_or_wait(
        &mut self,
        template: Template,
        timeout: Option<Millis>,
    ) -> Wait<(TupleId, Tuple)> {
        match self.inp(&template) {
            Some(found) => Wait::Ready(found),
            None => Wait::Waiting(self.register(WaitKind::Take, template, 0, timeout)),
        }
    }

    /// Blocking `rd`: the oldest matching tuple with an id greater than `after` now, or a waiter.
    pub fn rd_or_wait(
        &mut self,
        template: Template,
        after: TupleId,
        timeout: Option<Millis>,
    ) -> Wait<(TupleId, Tuple)> {
        match self.rdp(&template, after) {
            Some((id, t)) => Wait::Ready((id, t.clone())),
            None => Wait::Waiting(self.register(WaitKind::Read, template, after, timeout)),
        }
    }

    fn register(
        &mut self,
        kind: WaitKind,
        template: Template,
        after: TupleId,
        timeout: Option<Millis>,
    ) -> WaiterId {
        let id = self.next_waiter;
        self.next_waiter += 1;
        let deadline = timeout.map(|t| self.now.saturating_add(t));
        self.waiters.insert(
            id,
            Waiter {
                kind,
                template,
                after,
                deadline,
            },
        );
        id
    }

    /// Puts back a waiter under its old id (used when decoding a snapshot).
    pub(crate) fn restore_waiter(&mut self, id: WaiterId, waiter: Waiter) {
        self.waiters.insert(id, waiter);
    }

    /// Makes room for `n` more tuples (used when decoding a snapshot).
    pub(crate) fn reserve(&mut self, n: usize) {
        self.tuples.reserve(n);
    }

    /// Restores a tuple under its old id (used when decoding a snapshot).
    pub(crate) fn restore_tuple(&mut self, id: TupleId, tuple: Tuple, expires_at: Option<Millis>) {
        self.store(id, tuple, expires_at);
    }

    /// Withdraws a waiter (its client went away); returns it if it was still waiting.
    pub fn cancel(&mut self, waiter: WaiterId) -> Option<Waiter> {
        self.waiters.remove(waiter)
    }

    /// A waiter that is still waiting.
    pub fn waiter(&self, id: WaiterId) -> Option<&Waiter> {
        self.waiters.get(id)
    }

    /// Every waiter, oldest first.
    pub fn waiters(&self) -> impl Iterator<Item = (WaiterId, &Waiter)> {
        self.waiters.iter()
    }

    /// How many waiters wait.
    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    /// Copy-collect: matching tuples within the query, oldest or newest first.
    pub fn rd_all(&self, template: &Template, query: &Query) -> Vec<(TupleId, &Tuple)> {
        self.matches(template, query.after, query.before, query.newest_first)
            .take(query.limit)
            .collect()
    }

    /// Union copy-collect: tuples matching any of `templates` within the query, each once, oldest
    /// or newest first, at most `query.limit` (see [`crate::union`]). No template: nothing.
    pub fn rd_any(&self, templates: &[Template], query: &Query) -> Vec<(TupleId, &Tuple)> {
        if let [template] = templates {
            return self.rd_all(template, query);
        }
        let postings = union::distinct(templates.iter().map(|t| self.index.candidates(t)));
        union::merged(&postings, query)
            .filter_map(|id| {
                self.tuples
                    .get(&id)
                    .filter(|t| union::any_matches(templates, t))
                    .map(|t| (id, t))
            })
            .take(query.limit)
            .collect()
    }

    /// Union copy-collect of `templates` and the templates `join` yields from the tuples its
    /// source matches now (see [`union::Join`]): one consistent read, e.g. a whole timeline.
    pub fn rd_join(
        &self,
        templates: &[Template],
        join: &union::Join,
        query: &Query,
    ) -> Result<Vec<(TupleId, &Tuple)>, union::JoinError> {
        let sources = self.rd_all(&join.source, &Query::limit(union::MAX_TEMPLATES + 1));
        let mut all = templates.to_vec();
        all.extend(join.templates(sources.iter().map(|(_, t)| *t))?);
        Ok(self.rd_any(&all, query))
    }

    /// Collect: removes and returns up to `limit` matching tuples, oldest first.
    pub fn in_all(&mut self, template: &Template, limit: usize) -> Vec<(TupleId, Tuple)> {
        let ids: Vec<TupleId> = self
            .matches(template, 0, TupleId::MAX, false)
            .take(limit)
            .map(|(id, _)| id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.remove(id).map(|t| (id, t)))
            .collect()
    }

    /// The tuple with this id, if resident.
    pub fn read_id(&self, id: TupleId) -> Option<&Tuple> {
        self.tuples.get(&id)
    }

    /// Removes the tuple with this id, if resident.
    pub fn take_id(&mut self, id: TupleId) -> Option<Tuple> {
        self.remove(id)
    }

    /// Compare-and-set: adds `tuple` only if nothing matches `template`. Returns the `out`'s
    /// outcome if it added it.
    pub fn cas(
        &mut self,
        template: &Template,
        tuple: Tuple,
        ttl: Option<Millis>,
    ) -> Option<OutOutcome> {
        if self.rdp(template, 0).is_some() {
            return None;
        }
        Some(self.out(tuple, ttl))
    }

    /// How many resident tuples match. A template whose only constraint is its literal first
    /// field (or nothing at all) is counted from the index without a scan.
    pub fn count(&self, template: &Template) -> usize {
        let Some(posting) = self.index.candidates(template) else {
            return 0;
        };
        let unconstrained = template
            .fields()
            .iter()
            .skip(usize::from(template.index_key().is_some()))
            .all(|f| matches!(f, crate::Field::Any));
        if unconstrained {
            posting.live_len()
        } else {
            self.count_scan(template, posting)
        }
    }

    fn count_scan(&self, template: &Template, posting: &Posting) -> usize {
        posting
            .ascending(0, TupleId::MAX)
            .filter(|id| self.tuples.get(id).is_some_and(|t| template.matches(t)))
            .count()
    }

    /// Moves the clock to `now` (never backwards) and expires every tuple and waiter whose time
    /// is at or before it.
    pub fn advance(&mut self, now: Millis) -> Expired {
        self.now = self.now.max(now);
        let mut expired = Expired::default();
        while let Some(&(at, id)) = self.expiries.first() {
            if at > self.now {
                break;
            }
            self.remove(id);
            expired.tuples.push(id);
        }
        expired.waiters = self.waiters.expire(self.now);
        expired
    }

    /// The earliest clock value at which something (a tuple or a waiter) expires.
    pub fn next_deadline(&self) -> Option<Millis> {
        let tuple = self.expiries.first().map(|&(at, _)| at);
        match (tuple, self.waiters.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Field, Kind, Value, tuple};

    fn tpl(fields: Vec<Field>) -> Template {
        Template::new(fields)
    }

    fn lit(v: impl Into<Value>) -> Field {
        Field::Literal(v.into())
    }

    #[test]
    fn out_assigns_increasing_ids_and_inp_takes_oldest() {
        let mut s = Space::new();
        let a = s.out(tuple!["job", 1], None).id;
        let b = s.out(tuple!["job", 2], None).id;
        let _ = s.out(tuple!["other", 3], None);
        assert!(a < b);
        let jobs = tpl(vec![lit("job"), Field::Any]);
        assert_eq!(s.count(&jobs), 2);
        assert_eq!(s.inp(&jobs), Some((a, tuple!["job", 1])));
        assert_eq!(s.inp(&jobs), Some((b, tuple!["job", 2])));
        assert_eq!(s.inp(&jobs), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn rdp_reads_without_removing_and_respects_after() {
        let mut s = Space::new();
        let a = s.out(tuple!["x", 1], None).id;
        let b = s.out(tuple!["x", 2], None).id;
        let any_x = tpl(vec![lit("x"), Field::Formal(Kind::Int)]);
        assert_eq!(s.rdp(&any_x, 0).map(|(id, _)| id), Some(a));
        assert_eq!(s.rdp(&any_x, a).map(|(id, _)| id), Some(b));
        assert_eq!(s.rdp(&any_x, b), None);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn unindexed_templates_scan_their_arity_only() {
        let mut s = Space::new();
        s.out(tuple!["a", 1], None);
        s.out(tuple!["b", 2, 3], None);
        let t = s.out(tuple!["c", 2], None).id;
        let second_is_two = tpl(vec![Field::Formal(Kind::Str), lit(2)]);
        assert_eq!(s.rdp(&second_is_two, 0).map(|(id, _)| id), Some(t));
        assert_eq!(s.count(&second_is_two), 1);
        assert_eq!(s.count(&tpl(vec![Field::Any, Field::Any])), 2);
        assert_eq!(s.count(&tpl(vec![Field::Any; 7])), 0);
    }

    #[test]
    fn rd_all_orders_limits_and_bounds() {
        let mut s = Space::new();
        let ids: Vec<TupleId> = (0..10).map(|i| s.out(tuple!["p", i], None).id).collect();
        let p = tpl(vec![lit("p"), Field::Any]);
        let newest = s.rd_all(
            &p,
            &Query {
                limit: 3,
                newest_first: true,
                ..Query::default()
            },
        );
        assert_eq!(
            newest.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![ids[9], ids[8], ids[7]]
        );
        let page = s.rd_all(
            &p,
            &Query {
                limit: 2,
                before: ids[5],
                newest_first: true,
                ..Query::default()
            },
        );
        assert_eq!(
            page.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![ids[4], ids[3]]
        );
        let after = s.rd_all(
            &p,
            &Query {
                after: ids[7],
                ..Query::default()
            },
        );
        assert_eq!(after.len(), 2);
        assert_eq!(s.in_all(&p, 4).len(), 4);
        assert_eq!(s.count(&p), 6);
        assert_eq!(s.rdp(&p, 0).map(|(id, _)| id), Some(ids[4]));
    }

    #[test]
    fn read_and_take_by_id() {
        let mut s = Space::new();
        let id = s.out(tuple!["k", 1], None).id;
        assert_eq!(s.read_id(id), Some(&tuple!["k", 1]));
        assert_eq!(s.take_id(id), Some(tuple!["k", 1]));
        assert_eq!(s.take_id(id), None);
        assert_eq!(s.read_id(999), None);
        assert!(s.rdp(&tpl(vec![lit("k"), Field::Any]), 0).is_none());
    }

    #[test]
    fn cas_inserts_only_when_nothing_matches() {
        let mut s = Space::new();
        let lock = tpl(vec![lit("lock"), Field::Any]);
        assert!(s.cas(&lock, tuple!["lock", "alice"], None).is_some());
        assert!(s.cas(&lock, tuple!["lock", "bob"], None).is_none());
        assert_eq!(s.count(&lock), 1);
    }

    #[test]
    fn a_blocked_in_gets_the_next_matching_out_fifo() {
        let mut s = Space::new();
        let job = tpl(vec![lit("job"), Field::Formal(Kind::Int)]);
        let Wait::Waiting(first) = s.in_or_wait(job.clone(), None) else {
            panic!("nothing to take yet")
        };
        let Wait::Waiting(second) = s.in_or_wait(job.clone(), Some(50)) else {
            panic!("nothing to take yet")
        };
        let unrelated = s.out(tuple!["job", "not-an-int"], None);
        assert_eq!(unrelated.taken_by, None);
        let o1 = s.out(tuple!["job", 1], None);
        assert_eq!(o1.taken_by, Some(first));
        assert_eq!(s.read_id(o1.id), None, "a taken tuple is not stored");
        let o2 = s.out(tuple!["job", 2], None);
        assert_eq!(o2.taken_by, Some(second));
        let o3 = s.out(tuple!["job", 3], None);
        assert_eq!(o3.taken_by, None);
        assert_eq!(s.waiter_count(), 0);
    }

    #[test]
    fn blocked_reads_all_see_an_out_and_the_taker_still_takes_it() {
        let mut s = Space::new();
        let any = tpl(vec![Field::Formal(Kind::Int)]);
        let Wait::Waiting(r1) = s.rd_or_wait(any.clone(), 0, None) else {
            panic!()
        };
        let Wait::Waiting(t) = s.in_or_wait(any.clone(), None) else {
            panic!()
        };
        let Wait::Waiting(r2) = s.rd_or_wait(any.clone(), 0, None) else {
            panic!()
        };
        let o = s.out(tuple![7], None);
        assert_eq!(o.taken_by, Some(t));
        assert_eq!(o.seen_by, vec![r1, r2]);
        assert!(s.is_empty());
    }

    #[test]
    fn rd_wait_after_an_id_ignores_older_tuples() {
        let mut s = Space::new();
        let old = s.out(tuple!["feed", 1], None).id;
        let feed = tpl(vec![lit("feed"), Field::Any]);
        let Wait::Waiting(w) = s.rd_or_wait(feed.clone(), old, Some(100)) else {
            panic!("the only tuple is not after `old`")
        };
        let o = s.out(tuple!["feed", 2], None);
        assert_eq!(o.seen_by, vec![w]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn ttl_and_deadlines_follow_the_clock() {
        let mut s = Space::new();
        s.advance(1_000);
        let short = s.out(tuple!["t", 1], Some(10)).id;
        let long = s.out(tuple!["t", 2], Some(100)).id;
        let Wait::Waiting(w) = s.in_or_wait(tpl(vec![lit("none")]), Some(50)) else {
            panic!()
        };
        assert_eq!(s.next_deadline(), Some(1_010));
        assert_eq!(s.advance(1_009), Expired::default());
        assert_eq!(
            s.advance(1_010),
            Expired {
                tuples: vec![short],
                waiters: vec![]
            }
        );
        assert_eq!(s.next_deadline(), Some(1_050));
        assert_eq!(
            s.advance(2_000),
            Expired {
                tuples: vec![long],
                waiters: vec![w]
            }
        );
        assert_eq!(
            s.advance(5),
            Expired::default(),
            "the clock never goes back"
        );
        assert_eq!(s.now(), 2_000);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn taking_a_tuple_unschedules_its_expiry() {
        let mut s = Space::new();
        let id = s.out(tuple!["t"], Some(5)).id;
        assert!(s.take_id(id).is_some());
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.advance(10).tuples, Vec::<TupleId>::new());
    }

    #[test]
    fn the_latest_expiry_time_is_kept_exactly() {
        let mut s = Space::new();
        let id = s.out(tuple!["t"], Some(Millis::MAX)).id;
        assert_eq!(s.expiry(id), Some(Millis::MAX));
        assert_eq!(s.next_deadline(), Some(Millis::MAX));
        assert!(s.take_id(id).is_some());
        assert_eq!(s.next_deadline(), None, "its expiry left with it");
    }

    #[test]
    fn cancel_withdraws_a_waiter() {
        let mut s = Space::new();
        let Wait::Waiting(w) = s.in_or_wait(tpl(vec![Field::Any]), Some(5)) else {
            panic!()
        };
        assert!(s.cancel(w).is_some());
        assert!(s.cancel(w).is_none());
        assert_eq!(s.out(tuple![1], None).taken_by, None);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn middle_removals_keep_the_index_right() {
        let mut s = Space::new();
        let ids: Vec<TupleId> = (0..100).map(|i| s.out(tuple!["k", i], None).id).collect();
        for id in ids.iter().skip(1).step_by(2) {
            s.take_id(*id);
        }
        let k = tpl(vec![lit("k"), Field::Any]);
        assert_eq!(s.count(&k), 50);
        let all: Vec<TupleId> = s
            .rd_all(&k, &Query::default())
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(all, ids.iter().copied().step_by(2).collect::<Vec<_>>());
        assert_eq!(s.in_all(&k, usize::MAX).len(), 50);
        assert!(s.is_empty());
        assert_eq!(s.count(&k), 0);
    }

    #[test]
    fn snapshot_round_trips_tuples_waiters_and_clock() {
        let mut s = Space::new();
        s.advance(500);
        s.out(tuple!["a", 1.5, vec![1u8, 2]], Some(20));
        let gone = s.out(tuple!["b"], None).id;
        s.take_id(gone);
        s.out(tuple![tuple!["n", 1], true], None);
        s.in_or_wait(tpl(vec![lit("z"), Field::Any]), Some(7));
        s.rd_or_wait(tpl(vec![Field::Formal(Kind::Str)]), 3, None);
        let mut back = Space::decode(&s.encode()).expect("decodes");
        assert_eq!(back.encode(), s.encode());
        assert_eq!(back.digest(), s.digest());
        assert_eq!(back.now(), 500);
        assert_eq!(back.next_deadline(), s.next_deadline());
        // The decoded space behaves the same: ids continue, waiters are served.
        let (a, b) = (s.out(tuple!["z", 1], None), back.out(tuple!["z", 1], None));
        assert_eq!(a, b);
        assert_eq!(s.advance(600), back.advance(600));
        assert_eq!(s.digest(), back.digest());
    }
}
