//! Model-based property tests: `Space` against a naive, obviously-correct model.
//!
//! The model keeps resident tuples in a `Vec` in id order and waiters in a `Vec` in registration
//! order, and implements every operation with linear scans, following the semantics documented
//! on `Space` and `Waiters`. Random operation sequences over a deliberately tiny value domain (so
//! that matches, collisions and waiter hand-offs are frequent) are run against both, comparing
//! every outcome and, after every step, the whole observable state. Snapshots are round-tripped
//! through `Space::encode`/`Space::decode` mid-run, and the decoder is fed garbage.

use std::ops::Bound;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;
use tuplespace::{
    Expired, Field, Kind, Millis, OutOutcome, Query, Range, Space, Template, Tuple, TupleId, Value,
    Wait, WaitKind, Waiter, WaiterId,
};

// ---------------------------------------------------------------------------------------------
// The model

#[derive(Clone, Debug)]
struct Model {
    /// Resident tuples in id order, with their expiry.
    tuples: Vec<(TupleId, Tuple, Option<Millis>)>,
    /// Waiters in registration (= id) order.
    waiters: Vec<(WaiterId, Waiter)>,
    now: Millis,
    next_id: TupleId,
    next_waiter: WaiterId,
}

impl Model {
    fn new() -> Model {
        Model {
            tuples: Vec::new(),
            waiters: Vec::new(),
            now: 0,
            next_id: 1,
            next_waiter: 1,
        }
    }

    fn out(&mut self, tuple: Tuple, ttl: Option<Millis>) -> OutOutcome {
        let id = self.next_id;
        self.next_id += 1;
        let sees = |w: &Waiter| id > w.after && w.template.matches(&tuple);
        let seen_by: Vec<WaiterId> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.kind == WaitKind::Read && sees(w))
            .map(|(wid, _)| *wid)
            .collect();
        let taken_by = self
            .waiters
            .iter()
            .find(|(_, w)| w.kind == WaitKind::Take && sees(w))
            .map(|(wid, _)| *wid);
        self.waiters
            .retain(|(wid, _)| !seen_by.contains(wid) && Some(*wid) != taken_by);
        if taken_by.is_none() {
            let expires_at = ttl.map(|ttl| self.now.saturating_add(ttl));
            self.tuples.push((id, tuple, expires_at));
        }
        OutOutcome {
            id,
            taken_by,
            seen_by,
        }
    }

    /// Position of the oldest matching tuple with an id greater than `after`.
    fn find(&self, template: &Template, after: TupleId) -> Option<usize> {
        self.tuples
            .iter()
            .position(|(id, t, _)| *id > after && template.matches(t))
    }

    fn rdp(&self, template: &Template, after: TupleId) -> Option<(TupleId, Tuple)> {
        self.find(template, after).map(|i| {
            let (id, t, _) = &self.tuples[i];
            (*id, t.clone())
        })
    }

    fn inp(&mut self, template: &Template) -> Option<(TupleId, Tuple)> {
        let i = self.find(template, 0)?;
        let (id, t, _) = self.tuples.remove(i);
        Some((id, t))
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
        self.waiters.push((
            id,
            Waiter {
                kind,
                template,
                after,
                deadline,
            },
        ));
        id
    }

    fn in_or_wait(
        &mut self,
        template: Template,
        timeout: Option<Millis>,
    ) -> Wait<(TupleId, Tuple)> {
        match self.inp(&template) {
            Some(found) => Wait::Ready(found),
            None => Wait::Waiting(self.register(WaitKind::Take, template, 0, timeout)),
        }
    }

    fn rd_or_wait(
        &mut self,
        template: Template,
        after: TupleId,
        timeout: Option<Millis>,
    ) -> Wait<(TupleId, Tuple)> {
        match self.rdp(&template, after) {
            Some(found) => Wait::Ready(found),
            None => Wait::Waiting(self.register(WaitKind::Read, template, after, timeout)),
        }
    }

    /// Union copy-collect: each tuple matching any template, once, in the query's order.
    fn rd_any(&self, templates: &[Template], query: &Query) -> Vec<(TupleId, Tuple)> {
        let mut found: Vec<(TupleId, Tuple)> = self
            .tuples
            .iter()
            .filter(|(id, t, _)| {
                *id > query.after && *id < query.before && templates.iter().any(|p| p.matches(t))
            })
            .map(|(id, t, _)| (*id, t.clone()))
            .collect();
        if query.newest_first {
            found.reverse();
        }
        found.truncate(query.limit);
        found
    }

    fn rd_all(&self, template: &Template, query: &Query) -> Vec<(TupleId, Tuple)> {
        let mut found: Vec<(TupleId, Tuple)> = self
            .tuples
            .iter()
            .filter(|(id, t, _)| *id > query.after && *id < query.before && template.matches(t))
            .map(|(id, t, _)| (*id, t.clone()))
            .collect();
        if query.newest_first {
            found.reverse();
        }
        found.truncate(query.limit);
        found
    }

    fn in_all(&mut self, template: &Template, limit: usize) -> Vec<(TupleId, Tuple)> {
        let mut taken = Vec::new();
        let mut kept = Vec::new();
        for (id, t, exp) in std::mem::take(&mut self.tuples) {
            if taken.len() < limit && template.matches(&t) {
                taken.push((id, t));
            } else {
                kept.push((id, t, exp));
            }
        }
        self.tuples = kept;
        taken
    }

    fn read_id(&self, id: TupleId) -> Option<Tuple> {
        self.tuples
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, t, _)| t.clone())
    }

    fn take_id(&mut self, id: TupleId) -> Option<Tuple> {
        let pos = self.tuples.iter().position(|(i, _, _)| *i == id)?;
        Some(self.tuples.remove(pos).1)
    }

    fn cas(
        &mut self,
        template: &Template,
        tuple: Tuple,
        ttl: Option<Millis>,
    ) -> Option<OutOutcome> {
        if self.find(template, 0).is_some() {
            return None;
        }
        Some(self.out(tuple, ttl))
    }

    fn count(&self, template: &Template) -> usize {
        self.tuples
            .iter()
            .filter(|(_, t, _)| template.matches(t))
            .count()
    }

    fn advance(&mut self, now: Millis) -> Expired {
        self.now = self.now.max(now);
        let clock = self.now;
        let mut tuples: Vec<(Millis, TupleId)> = self
            .tuples
            .iter()
            .filter_map(|(id, _, exp)| exp.filter(|&at| at <= clock).map(|at| (at, *id)))
            .collect();
        tuples.sort();
        self.tuples
            .retain(|(_, _, exp)| exp.is_none_or(|at| at > clock));
        let mut waiters: Vec<(Millis, WaiterId)> = self
            .waiters
            .iter()
            .filter_map(|(id, w)| w.deadline.filter(|&d| d <= clock).map(|d| (d, *id)))
            .collect();
        waiters.sort();
        self.waiters
            .retain(|(_, w)| w.deadline.is_none_or(|d| d > clock));
        Expired {
            tuples: tuples.into_iter().map(|(_, id)| id).collect(),
            waiters: waiters.into_iter().map(|(_, id)| id).collect(),
        }
    }

    fn cancel(&mut self, id: WaiterId) -> Option<Waiter> {
        let pos = self.waiters.iter().position(|(w, _)| *w == id)?;
        Some(self.waiters.remove(pos).1)
    }

    fn next_deadline(&self) -> Option<Millis> {
        let tuples = self.tuples.iter().filter_map(|(_, _, exp)| *exp);
        let waiters = self.waiters.iter().filter_map(|(_, w)| w.deadline);
        tuples.chain(waiters).min()
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

/// A tuple id chosen relative to the state at the time the operation runs.
#[derive(Clone, Debug)]
enum IdPick {
    /// 0.
    Zero,
    /// A resident tuple (or any plausible id if none is resident).
    Resident(Index),
    /// Anything in `0..=next_id + 1`.
    Any(Index),
}

impl IdPick {
    fn resolve(&self, model: &Model) -> TupleId {
        match self {
            IdPick::Zero => 0,
            IdPick::Resident(ix) if !model.tuples.is_empty() => {
                model.tuples[ix.index(model.tuples.len())].0
            }
            IdPick::Resident(ix) | IdPick::Any(ix) => {
                ix.index(model.next_id as usize + 2) as TupleId
            }
        }
    }
}

/// A waiter id chosen relative to the state at the time the operation runs.
#[derive(Clone, Debug)]
enum WaiterPick {
    /// A waiting waiter (or any plausible id if none waits).
    Waiting(Index),
    /// Anything in `0..=next_waiter`.
    Any(Index),
}

impl WaiterPick {
    fn resolve(&self, model: &Model) -> WaiterId {
        match self {
            WaiterPick::Waiting(ix) if !model.waiters.is_empty() => {
                model.waiters[ix.index(model.waiters.len())].0
            }
            WaiterPick::Waiting(ix) | WaiterPick::Any(ix) => {
                ix.index(model.next_waiter as usize + 1) as WaiterId
            }
        }
    }
}

#[derive(Clone, Debug)]
struct QueryPick {
    limit: usize,
    after: IdPick,
    /// `None`: no upper bound.
    before: Option<IdPick>,
    newest_first: bool,
}

impl QueryPick {
    fn resolve(&self, model: &Model) -> Query {
        Query {
            limit: self.limit,
            after: self.after.resolve(model),
            before: self
                .before
                .as_ref()
                .map_or(TupleId::MAX, |b| b.resolve(model)),
            newest_first: self.newest_first,
        }
    }
}

/// A template, possibly chosen relative to the state at the time the operation runs.
#[derive(Clone, Debug)]
enum TplPick {
    Fixed(Template),
    /// Loosened from a resident tuple (an arbitrary fixed template if none is resident).
    Resident(Index, Vec<u8>),
}

impl TplPick {
    fn resolve(&self, model: &Model) -> Template {
        match self {
            TplPick::Fixed(t) => t.clone(),
            TplPick::Resident(ix, choices) => match model.tuples.len() {
                0 => Template::new(vec![Field::Any, Field::Any]),
                n => loosen(&model.tuples[ix.index(n)].1, choices),
            },
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Out(Tuple, Option<Millis>),
    Inp(TplPick),
    Rdp(TplPick, IdPick),
    InOrWait(TplPick, Option<Millis>),
    RdOrWait(TplPick, IdPick, Option<Millis>),
    RdAll(TplPick, QueryPick),
    RdAny(Vec<TplPick>, QueryPick),
    /// A join whose source is a template and whose target takes field 0 from field `from`.
    RdJoin(TplPick, usize, QueryPick),
    InAll(TplPick, usize),
    ReadId(IdPick),
    TakeId(IdPick),
    Cas(TplPick, Tuple, Option<Millis>),
    Count(TplPick),
    /// Advance the clock by this much (or, if `back`, try to move it back by this much).
    Advance {
        by: Millis,
        back: bool,
    },
    Cancel(WaiterPick),
    RoundTrip,
}

fn owned(found: Option<(TupleId, &Tuple)>) -> Option<(TupleId, Tuple)> {
    found.map(|(id, t)| (id, t.clone()))
}

fn owned_all(found: Vec<(TupleId, &Tuple)>) -> Vec<(TupleId, Tuple)> {
    found.into_iter().map(|(id, t)| (id, t.clone())).collect()
}

/// Runs one operation on both, comparing the outcomes. Picks are resolved against the model
/// first; failure messages show what they resolved to.
fn step(space: &mut Space, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Out(t, ttl) => {
            prop_assert_eq!(space.out(t.clone(), *ttl), model.out(t.clone(), *ttl));
        }
        Op::Inp(tpl) => {
            let tpl = tpl.resolve(model);
            prop_assert_eq!(space.inp(&tpl), model.inp(&tpl), "inp {:?}", tpl);
        }
        Op::Rdp(tpl, after) => {
            let (tpl, after) = (tpl.resolve(model), after.resolve(model));
            prop_assert_eq!(
                owned(space.rdp(&tpl, after)),
                model.rdp(&tpl, after),
                "rdp {:?} after {}",
                tpl,
                after
            );
        }
        Op::InOrWait(tpl, timeout) => {
            let tpl = tpl.resolve(model);
            prop_assert_eq!(
                space.in_or_wait(tpl.clone(), *timeout),
                model.in_or_wait(tpl.clone(), *timeout),
                "in_or_wait {:?}",
                tpl
            );
        }
        Op::RdOrWait(tpl, after, timeout) => {
            let (tpl, after) = (tpl.resolve(model), after.resolve(model));
            prop_assert_eq!(
                space.rd_or_wait(tpl.clone(), after, *timeout),
                model.rd_or_wait(tpl.clone(), after, *timeout),
                "rd_or_wait {:?} after {}",
                tpl,
                after
            );
        }
        Op::RdAll(tpl, query) => {
            let (tpl, query) = (tpl.resolve(model), query.resolve(model));
            prop_assert_eq!(
                owned_all(space.rd_all(&tpl, &query)),
                model.rd_all(&tpl, &query),
                "rd_all {:?} {:?}",
                tpl,
                query
            );
        }
        Op::RdAny(tpls, query) => {
            let tpls: Vec<Template> = tpls.iter().map(|t| t.resolve(model)).collect();
            let query = query.resolve(model);
            prop_assert_eq!(
                owned_all(space.rd_any(&tpls, &query)),
                model.rd_any(&tpls, &query),
                "rd_any {:?} {:?}",
                tpls,
                query
            );
        }
        Op::RdJoin(source, from, query) => {
            let source = source.resolve(model);
            let query = query.resolve(model);
            let join = tuplespace::union::Join {
                source: source.clone(),
                source_field: *from,
                target: Template::new(vec![Field::Any, Field::Any]),
                target_field: 0,
            };
            // The model: the source's matches (oldest first), each giving a template.
            let sources = model.rd_all(&source, &Query::default());
            let expected =
                if *from >= source.arity() || sources.len() > tuplespace::union::MAX_TEMPLATES {
                    Err(())
                } else {
                    let templates: Vec<Template> = sources
                        .iter()
                        .filter_map(|(_, t)| t.fields().get(*from))
                        .map(|v| Template::new(vec![Field::Literal(v.clone()), Field::Any]))
                        .collect();
                    Ok(model.rd_any(&templates, &query))
                };
            let got = space
                .rd_join(&[], &join, &query)
                .map(owned_all)
                .map_err(|_| ());
            prop_assert_eq!(got, expected, "rd_join {:?} {} {:?}", source, from, query);
        }
        Op::InAll(tpl, limit) => {
            let tpl = tpl.resolve(model);
            prop_assert_eq!(
                space.in_all(&tpl, *limit),
                model.in_all(&tpl, *limit),
                "in_all {:?}",
                tpl
            );
        }
        Op::ReadId(id) => {
            let id = id.resolve(model);
            prop_assert_eq!(
                space.read_id(id).cloned(),
                model.read_id(id),
                "read_id {}",
                id
            );
        }
        Op::TakeId(id) => {
            let id = id.resolve(model);
            prop_assert_eq!(space.take_id(id), model.take_id(id), "take_id {}", id);
        }
        Op::Cas(tpl, t, ttl) => {
            let tpl = tpl.resolve(model);
            prop_assert_eq!(
                space.cas(&tpl, t.clone(), *ttl),
                model.cas(&tpl, t.clone(), *ttl),
                "cas {:?}",
                tpl
            );
        }
        Op::Count(tpl) => {
            let tpl = tpl.resolve(model);
            prop_assert_eq!(space.count(&tpl), model.count(&tpl), "count {:?}", tpl);
        }
        Op::Advance { by, back } => {
            let to = if *back {
                model.now.saturating_sub(*by)
            } else {
                model.now + by
            };
            prop_assert_eq!(space.advance(to), model.advance(to), "advance({})", to);
        }
        Op::Cancel(w) => {
            let w = w.resolve(model);
            prop_assert_eq!(space.cancel(w), model.cancel(w), "cancel({})", w);
        }
        Op::RoundTrip => {
            let bytes = space.encode();
            let decoded = match Space::decode(&bytes) {
                Ok(s) => s,
                Err(e) => return Err(TestCaseError::fail(format!("decode failed: {e}"))),
            };
            prop_assert_eq!(decoded.encode(), bytes, "re-encoding differs");
            prop_assert_eq!(decoded.digest(), space.digest());
            *space = decoded;
        }
    }
    Ok(())
}

/// Index keys worth counting by after every step.
fn count_probes() -> Vec<Template> {
    let mut probes = Vec::new();
    for arity in 0..=3 {
        probes.push(Template::new(vec![Field::Any; arity]));
    }
    let firsts: Vec<Value> = STRS
        .iter()
        .map(|&s| Value::from(s))
        .chain(INTS.map(Value::Int))
        .chain([Value::from("k"), Value::from("other")])
        .collect();
    for first in firsts {
        for arity in 1..=3 {
            let mut fields = vec![Field::Literal(first.clone())];
            fields.resize(arity, Field::Any);
            probes.push(Template::new(fields));
        }
    }
    probes
}

/// Compares the whole observable state.
fn check_state(space: &Space, model: &Model, probes: &[Template]) -> Result<(), TestCaseError> {
    let tuples: Vec<(TupleId, Tuple, Option<Millis>)> = space
        .iter()
        .map(|(id, t)| (id, t.clone(), space.expiry(id)))
        .collect();
    prop_assert_eq!(&tuples, &model.tuples);
    let newest_first: Vec<TupleId> = space.iter().rev().map(|(id, _)| id).collect();
    prop_assert!(
        newest_first
            .iter()
            .rev()
            .eq(tuples.iter().map(|(id, _, _)| id))
    );
    let waiters: Vec<(WaiterId, Waiter)> = space.waiters().map(|(id, w)| (id, w.clone())).collect();
    prop_assert_eq!(&waiters, &model.waiters);
    for (id, w) in &model.waiters {
        prop_assert_eq!(space.waiter(*id), Some(w));
    }
    prop_assert_eq!(space.next_deadline(), model.next_deadline());
    prop_assert_eq!(space.len(), model.tuples.len());
    prop_assert_eq!(space.is_empty(), model.tuples.is_empty());
    prop_assert_eq!(space.waiter_count(), model.waiters.len());
    prop_assert_eq!(space.now(), model.now);
    prop_assert_eq!(space.next_id(), model.next_id);
    for probe in probes {
        prop_assert_eq!(space.count(probe), model.count(probe), "count {:?}", probe);
    }
    Ok(())
}

fn run(ops: &[Op]) -> Result<Space, TestCaseError> {
    let probes = count_probes();
    let mut space = Space::new();
    let mut model = Model::new();
    for (i, op) in ops.iter().enumerate() {
        step(&mut space, &mut model, op)
            .map_err(|e| TestCaseError::fail(format!("op #{i} {op:?}: {e}")))?;
        check_state(&space, &model, &probes)
            .map_err(|e| TestCaseError::fail(format!("state after op #{i} {op:?}: {e}")))?;
    }
    Ok(space)
}

// ---------------------------------------------------------------------------------------------
// Generators: a tiny domain, so that things collide.

const STRS: [&str; 3] = ["a", "ab", "b"];
const INTS: [i64; 3] = [0, 1, 2];
const OTHER_STRS: [&str; 3] = ["x", "xy", "y"];

fn first_value() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => select(&STRS[..]).prop_map(Value::from),
        6 => select(&INTS[..]).prop_map(Value::Int),
        // Rarer index keys: floats that differ only in sign, and a nested tuple.
        1 => select(vec![0.0, -0.0]).prop_map(Value::Float),
        1 => Just(Value::Tuple(Tuple::new(vec![Value::Int(0)]))),
    ]
    .boxed()
}

fn scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        (0i64..2).prop_map(Value::Int),
        select(&OTHER_STRS[..2]).prop_map(Value::from),
    ]
    .boxed()
}

fn other_value() -> BoxedStrategy<Value> {
    prop_oneof![
        5 => (0i64..3).prop_map(Value::Int),
        3 => select(&OTHER_STRS[..2]).prop_map(Value::from),
        1 => select(&OTHER_STRS[2..]).prop_map(Value::from),
        2 => any::<bool>().prop_map(Value::Bool),
        1 => select(vec![0.0, -0.0, 1.5]).prop_map(Value::Float),
        1 => vec(scalar(), 1..=2).prop_map(|v| Value::Tuple(Tuple::new(v))),
    ]
    .boxed()
}

fn tuple_strategy() -> BoxedStrategy<Tuple> {
    prop_oneof![
        30 => (first_value(), vec(other_value(), 0..=2)).prop_map(|(first, rest)| {
            let mut fields = vec![first];
            fields.extend(rest);
            Tuple::new(fields)
        }),
        1 => Just(Tuple::default()),
    ]
    .boxed()
}

fn range_of(values: BoxedStrategy<Value>) -> BoxedStrategy<Range> {
    (option::of(values.clone()), 0u8..3, values)
        .prop_map(|(lo, hi_kind, hi)| {
            let hi = match hi_kind {
                0 => Bound::Unbounded,
                1 => Bound::Included(hi),
                _ => Bound::Excluded(hi),
            };
            let lo = match (&lo, &hi) {
                (None, Bound::Unbounded) => Some(Value::Int(1)),
                _ => lo,
            };
            Range::new(lo, hi).expect("bounds of one kind")
        })
        .boxed()
}

fn int_range() -> BoxedStrategy<Range> {
    range_of((0i64..4).prop_map(Value::Int).boxed())
}

fn str_range() -> BoxedStrategy<Range> {
    range_of(
        select(&["a", "ab", "b", "x", "y"][..])
            .prop_map(Value::from)
            .boxed(),
    )
}

fn first_field() -> BoxedStrategy<Field> {
    prop_oneof![
        8 => first_value().prop_map(Field::Literal),
        3 => Just(Field::Any),
        1 => select(vec![Kind::Int, Kind::Str, Kind::Float]).prop_map(Field::Formal),
        1 => int_range().prop_map(Field::Range),
        1 => str_range().prop_map(Field::Range),
        1 => select(&["", "a", "b"][..]).prop_map(|p| Field::Prefix(p.into())),
    ]
    .boxed()
}

fn inner_field() -> BoxedStrategy<Field> {
    prop_oneof![
        2 => scalar().prop_map(Field::Literal),
        1 => Just(Field::Any),
        1 => select(vec![Kind::Int, Kind::Str]).prop_map(Field::Formal),
    ]
    .boxed()
}

fn other_field() -> BoxedStrategy<Field> {
    prop_oneof![
        4 => other_value().prop_map(Field::Literal),
        4 => Just(Field::Any),
        2 => select(vec![Kind::Int, Kind::Str, Kind::Bool]).prop_map(Field::Formal),
        1 => select(Kind::ALL.to_vec()).prop_map(Field::Formal),
        1 => int_range().prop_map(Field::Range),
        1 => select(&["", "x", "y"][..]).prop_map(|p| Field::Prefix(p.into())),
        1 => vec(inner_field(), 1..=2).prop_map(|f| Field::nested(Template::new(f))),
    ]
    .boxed()
}

/// A template loosened from `tuple`: each field kept as a literal or replaced by something
/// that still matches it.
fn loosen(tuple: &Tuple, choices: &[u8]) -> Template {
    let fields = tuple
        .iter()
        .zip(choices.iter().chain(std::iter::repeat(&0)))
        .map(|(v, c)| match c {
            0 | 1 => Field::Literal(v.clone()),
            2 | 3 => Field::Any,
            4 => Field::Formal(v.kind()),
            _ => match v {
                Value::Int(i) => Field::Range(
                    Range::new(Some(Value::Int(i - 1)), Bound::Included(Value::Int(*i)))
                        .expect("int range"),
                ),
                Value::Str(s) => Field::Prefix(s.chars().take(1).collect::<String>().into()),
                Value::Tuple(inner) => Field::nested(loosen(inner, &choices[1..])),
                _ => Field::Any,
            },
        })
        .collect();
    Template::new(fields)
}

/// A template loosened from a random tuple: likely to match something.
fn derived_template() -> BoxedStrategy<Template> {
    (tuple_strategy(), vec(0u8..7, 3))
        .prop_map(|(t, choices)| loosen(&t, &choices))
        .boxed()
}

fn free_template() -> BoxedStrategy<Template> {
    prop_oneof![
        30 => (first_field(), vec(other_field(), 0..=2)).prop_map(|(first, rest)| {
            let mut fields = vec![first];
            fields.extend(rest);
            Template::new(fields)
        }),
        1 => Just(Template::default()),
    ]
    .boxed()
}

fn template_strategy() -> BoxedStrategy<Template> {
    prop_oneof![free_template(), derived_template()].boxed()
}

/// A template: a fixed one, or one loosened at run time from a resident tuple.
fn tpl_pick() -> BoxedStrategy<TplPick> {
    prop_oneof![
        3 => template_strategy().prop_map(TplPick::Fixed),
        2 => (any::<Index>(), vec(0u8..7, 3)).prop_map(|(ix, c)| TplPick::Resident(ix, c)),
    ]
    .boxed()
}

fn time_strategy() -> BoxedStrategy<Option<Millis>> {
    prop_oneof![Just(None), (0u64..20).prop_map(Some)].boxed()
}

fn id_pick() -> BoxedStrategy<IdPick> {
    prop_oneof![
        2 => Just(IdPick::Zero),
        3 => any::<Index>().prop_map(IdPick::Resident),
        2 => any::<Index>().prop_map(IdPick::Any),
    ]
    .boxed()
}

fn waiter_pick() -> BoxedStrategy<WaiterPick> {
    prop_oneof![
        3 => any::<Index>().prop_map(WaiterPick::Waiting),
        1 => any::<Index>().prop_map(WaiterPick::Any),
    ]
    .boxed()
}

fn query_pick() -> BoxedStrategy<QueryPick> {
    (
        prop_oneof![3 => Just(usize::MAX), 3 => 0usize..5],
        id_pick(),
        option::of(prop_oneof![
            any::<Index>().prop_map(IdPick::Resident),
            any::<Index>().prop_map(IdPick::Any),
        ]),
        any::<bool>(),
    )
        .prop_map(|(limit, after, before, newest_first)| QueryPick {
            limit,
            after,
            before,
            newest_first,
        })
        .boxed()
}

fn op_strategy() -> BoxedStrategy<Op> {
    prop_oneof![
        14 => (tuple_strategy(), time_strategy()).prop_map(|(t, ttl)| Op::Out(t, ttl)),
        2 => tpl_pick().prop_map(Op::Inp),
        2 => (tpl_pick(), id_pick()).prop_map(|(t, a)| Op::Rdp(t, a)),
        3 => (tpl_pick(), time_strategy()).prop_map(|(t, to)| Op::InOrWait(t, to)),
        3 => (tpl_pick(), id_pick(), time_strategy())
            .prop_map(|(t, a, to)| Op::RdOrWait(t, a, to)),
        2 => (tpl_pick(), query_pick()).prop_map(|(t, q)| Op::RdAll(t, q)),
        2 => (vec(tpl_pick(), 0..5), query_pick()).prop_map(|(t, q)| Op::RdAny(t, q)),
        1 => (tpl_pick(), 0usize..3, query_pick()).prop_map(|(t, f, q)| Op::RdJoin(t, f, q)),
        1 => (tpl_pick(), prop_oneof![Just(usize::MAX), 0usize..4])
            .prop_map(|(t, l)| Op::InAll(t, l)),
        1 => id_pick().prop_map(Op::ReadId),
        2 => id_pick().prop_map(Op::TakeId),
        1 => (tpl_pick(), tuple_strategy(), time_strategy())
            .prop_map(|(tpl, t, ttl)| Op::Cas(tpl, t, ttl)),
        1 => tpl_pick().prop_map(Op::Count),
        3 => (0u64..15, prop::bool::weighted(0.1)).prop_map(|(by, back)| Op::Advance { by, back }),
        1 => waiter_pick().prop_map(Op::Cancel),
        1 => Just(Op::RoundTrip),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// Lazy deletion in the index: one key, takes from the middle, then reads in both orders.

fn key_tuple(i: i64) -> Tuple {
    Tuple::new(vec![Value::from("k"), Value::Int(i)])
}

fn lazy_templates() -> BoxedStrategy<TplPick> {
    let k = || Field::Literal(Value::from("k"));
    select(vec![
        Template::new(vec![k(), Field::Any]),
        Template::new(vec![k(), Field::Formal(Kind::Int)]),
        Template::new(vec![Field::Any, Field::Any]),
        Template::new(vec![Field::Formal(Kind::Str), Field::Any]),
        Template::new(vec![
            k(),
            Field::Range(
                Range::new(Some(Value::Int(10)), Bound::Excluded(Value::Int(40))).expect("range"),
            ),
        ]),
        Template::new(vec![Field::Prefix("k".into()), Field::Any]),
        Template::new(vec![Field::Literal(Value::from("other")), Field::Any]),
    ])
    .prop_map(TplPick::Fixed)
    .boxed()
}

fn lazy_ops() -> BoxedStrategy<Vec<Op>> {
    let tail_op = prop_oneof![
        3 => lazy_templates().prop_map(Op::Inp),
        4 => (lazy_templates(), query_pick()).prop_map(|(t, q)| Op::RdAll(t, q)),
        2 => (lazy_templates(), id_pick()).prop_map(|(t, a)| Op::Rdp(t, a)),
        3 => any::<Index>().prop_map(|ix| Op::TakeId(IdPick::Resident(ix))),
        1 => lazy_templates().prop_map(Op::Count),
        1 => (lazy_templates(), 0usize..4).prop_map(|(t, l)| Op::InAll(t, l)),
        2 => (0i64..60).prop_map(|i| Op::Out(key_tuple(i), None)),
        1 => Just(Op::RoundTrip),
    ];
    (
        vec(prop::bool::weighted(0.15), 5..80),
        vec(any::<Index>(), 0..60),
        vec(tail_op, 0..60),
    )
        .prop_map(|(outs, takes, tail)| {
            let mut ops: Vec<Op> = outs
                .iter()
                .enumerate()
                .map(|(i, &other)| {
                    let first = if other { "other" } else { "k" };
                    Op::Out(
                        Tuple::new(vec![Value::from(first), Value::Int(i as i64)]),
                        None,
                    )
                })
                .collect();
            ops.extend(takes.into_iter().map(|ix| Op::TakeId(IdPick::Resident(ix))));
            for newest_first in [false, true] {
                for t in [
                    Template::new(vec![Field::Literal(Value::from("k")), Field::Any]),
                    Template::new(vec![Field::Any, Field::Any]),
                ] {
                    ops.push(Op::RdAll(
                        TplPick::Fixed(t),
                        QueryPick {
                            limit: usize::MAX,
                            after: IdPick::Zero,
                            before: None,
                            newest_first,
                        },
                    ));
                }
            }
            ops.extend(tail);
            ops
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// The tests

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn space_matches_model(ops in vec(op_strategy(), 1..120)) {
        run(&ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn lazy_deletion_matches_model(ops in lazy_ops()) {
        run(&ops)?;
    }

    /// A view taken at any point keeps showing the space as it was then, whatever the space does
    /// afterwards: it encodes to the same bytes, and its scans answer what the space's answered.
    #[test]
    fn a_view_is_the_space_as_it_was(
        before in vec(op_strategy(), 0..60),
        after in vec(op_strategy(), 0..60),
    ) {
        let probes = count_probes();
        let mut space = run(&before)?;
        let view = space.view();
        let bytes = space.encode();
        let counts: Vec<usize> = probes.iter().map(|p| space.count(p)).collect();
        let newest: Vec<Vec<(TupleId, Tuple)>> = probes
            .iter()
            .map(|p| {
                let q = Query { limit: 3, newest_first: true, ..Query::default() };
                space.rd_all(p, &q).into_iter().map(|(id, t)| (id, t.clone())).collect()
            })
            .collect();
        let union: Vec<(TupleId, Tuple)> = {
            let q = Query { limit: 5, newest_first: true, ..Query::default() };
            owned_all(space.rd_any(&probes, &q))
        };
        let mut model = Model::new();
        // Replay `before` on a fresh model so the steps after run against matching state.
        let mut replay = Space::new();
        for op in &before {
            step(&mut replay, &mut model, op)?;
        }
        for op in &after {
            step(&mut space, &mut model, op)?;
        }
        prop_assert_eq!(view.encode(), bytes);
        for (i, p) in probes.iter().enumerate() {
            prop_assert_eq!(view.count(p), counts[i], "count {:?}", p);
            let q = Query { limit: 3, newest_first: true, ..Query::default() };
            prop_assert_eq!(&view.rd_all(p, &q), &newest[i], "rd_all {:?}", p);
        }
        let q = Query { limit: 5, newest_first: true, ..Query::default() };
        prop_assert_eq!(view.rd_any(&probes, &q), union, "rd_any {:?}", probes);
    }

    /// A valid snapshot with any one byte changed is refused.
    #[test]
    fn mutated_snapshots_are_refused(
        ops in vec(op_strategy(), 0..40),
        at in any::<Index>(),
        flip in 1u8..=255,
    ) {
        let space = run(&ops)?;
        let mut bytes = space.encode();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(Space::decode(&bytes).is_err(), "byte {} ^ {:#04x} accepted", i, flip);
    }

    /// A valid snapshot cut short is refused.
    #[test]
    fn truncated_snapshots_are_refused(ops in vec(op_strategy(), 0..40), cut in any::<Index>()) {
        let space = run(&ops)?;
        let bytes = space.encode();
        let cut = cut.index(bytes.len());
        prop_assert!(Space::decode(&bytes[..cut]).is_err());
    }

    /// A snapshot whose body was tampered with and whose checksum was recomputed gets past the
    /// checksum into the parser: that must not panic, and whatever it accepts must round-trip.
    #[test]
    fn resealed_mutated_snapshots_never_panic(
        ops in vec(op_strategy(), 0..40),
        edits in vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        let space = run(&ops)?;
        let mut bytes = space.encode();
        let body = bytes.len() - 4;
        for (at, byte) in edits {
            // Leave the magic and version alone so the parser gets a go.
            let i = 8 + at.index(body - 8);
            bytes[i] = byte;
        }
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(decoded) = Space::decode(&bytes) {
            let again = decoded.encode();
            let redecoded = Space::decode(&again);
            prop_assert!(redecoded.is_ok(), "re-encoding of an accepted snapshot refused");
            prop_assert_eq!(redecoded.map(|s| s.encode()).ok(), Some(again));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes never make the decoder panic.
    #[test]
    fn decode_never_panics(bytes in any::<Vec<u8>>()) {
        let _ = Space::decode(&bytes);
    }

    /// Arbitrary bytes behind a valid header and checksum never make the decoder panic.
    #[test]
    fn decode_sealed_garbage_never_panics(body in vec(any::<u8>(), 0..200)) {
        let mut bytes = b"TSPACE\x01\x00".to_vec();
        bytes.extend_from_slice(&body);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        if let Ok(decoded) = Space::decode(&bytes) {
            let again = decoded.encode();
            prop_assert_eq!(Space::decode(&again).map(|s| s.encode()).ok(), Some(again));
        }
    }
}
