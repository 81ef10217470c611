//! The history checker: did the replicated tuplespace lose, duplicate, invent or reorder
//! anything?
//!
//! [`check`] takes a [`history`](crate::history) and the final state of every node (the tuples
//! left in each node's space) and returns a [`Report`] of [`Anomaly`]s, each with the few events
//! of the history that show it. The checks:
//!
//! 1. **Lost writes**: every acknowledged write (`out`, and `cas` that inserted) is in the final
//!    state or was taken by an `in`/`inp`; and a taken tuple is not in the final state any more.
//!    (Skipped when no final state is given. A write missing from the final state that some
//!    `info` take could have taken is left to check 4, which knows whether one take could have
//!    taken it.)
//! 2. **Double takes**: no tuple id is returned by two takes.
//! 3. **Phantoms**: every tuple returned (by a take, a read, an `rd_all` or in a final state) was
//!    written: its id is the id an `out`/`cas` was acknowledged with, with the same tuple, or it
//!    is the tuple of an `out`/`cas` whose outcome is unknown (`info`; each such write explains at
//!    most one id). One id never comes with two different tuples.
//! 4. **Linearizability** of the history against the sequential tuplespace, split by key (below).
//! 5. **Convergence**: the final states of all nodes are equal ([`compare_final_states`]; `check`
//!    runs it too when given two or more final states).
//!
//! # The sequential model
//!
//! A map from id to tuple. `out` adds its tuple with the id the system returned, which must be
//! greater than every id added before (ids increase in the order writes apply); `in`/`inp`
//! remove and return the matching tuple with the lowest id, and return none only if nothing
//! matches (also a blocking `in` the server timed out); `rd`/`rdp` return the lowest-id match with
//! an id greater than `after`, or none; `rd_all` returns exactly every match, in id order; `cas`
//! inserts its tuple only if nothing matches its template. The final state, when given, is a last
//! read of every tuple, after every operation. A `fail`ed operation did not happen. An `info`
//! operation happened at some point after its invocation, or never: an `info` take removes the
//! lowest match; an `info` write whose tuple was observed later has the observed id; an `info`
//! write never observed is left out unless some `cas` of its key found a match (only then can such
//! a tuple change an outcome), in which case it may insert a tuple nobody sees; `info` reads have
//! no effect and are left out.
//!
//! # The search
//!
//! Wing & Gong's search with Lowe's memoization (the same as Porcupine's): depth-first over which
//! pending operation to linearize next, where an operation may go next only if no operation that
//! is still unlinearized completed before it was invoked; a cache of (set of linearized
//! operations, model state) fingerprints (two independent 64-bit Zobrist hashes, so in practice
//! collision-free) cuts every path that reaches a configuration already explored. `info`
//! operations need never be linearized. Four reductions, each sound (they never turn a
//! linearizable history into a failure), keep the search small:
//!
//! - a read-only operation (a read, a take or `cas` that changed nothing, the final state) that
//!   can go next goes next, with no other choice explored at that point: it can be moved to the
//!   front of any linearization from there;
//! - an `info` take may only remove a tuple that *vanishes*: one no ok take returned and that is
//!   not in the final state (otherwise it would have been taken twice, or not at all);
//! - `info` operations that do the same thing (the same template, up to which tuples it
//!   matches) are interchangeable, so they are linearized in invocation order only;
//! - candidates are tried read-only first, then `info` takes and observed `info` writes, then
//!   the other completed operations, then unobserved `info` writes.
//!
//! The history is split by key (P-compositionality): the runner's tuples are `("k", KEY, UNIQUE)`
//! and `("cas", KEY, VALUE)`, and an operation's key is the first two fields of its tuple, or of
//! its template when both are literals. Operations whose template has no such key form one
//! catch-all partition, merged with every key one of its templates could match. Each partition is
//! searched with a step budget ([`CheckOptions::step_budget`]); a partition whose search runs out
//! is counted as [`Unknown`], not as an anomaly.
//!
//! When a partition is not linearizable the checker finds the shortest prefix of its history
//! (cut at an event, operations still open at the cut counted as `info`) that is not
//! linearizable; the operation whose completion ends it is the culprit, and the anomaly shows
//! it, the operations of the tuple ids involved (their writes and takes, the older tuples a take
//! or read should have returned) and the operations concurrent with it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use tuplespace::{Field, Template, Tuple, TupleId, Value as TsValue};

use crate::history::{Event, EventKind, Op, Operation, Outcome, pair_events};

/// The final state of one node: its id and every tuple in its space, with ids.
pub type FinalState = (u64, Vec<(TupleId, Tuple)>);

/// What kind of violation an [`Anomaly`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// An acknowledged write is neither in the final state nor was it taken.
    LostWrite,
    /// Two takes returned the same tuple id.
    DoubleTake,
    /// A taken tuple is still in a final state.
    TakenButPresent,
    /// A tuple was returned that was never written (or was written by a failed operation, or
    /// a write took effect twice).
    Phantom,
    /// One id with two different tuples, or two writes acknowledged with one id.
    IdConflict,
    /// No linearization explains the operations of a key.
    NotLinearizable,
    /// Two nodes' final states differ.
    Divergence,
    /// The history itself is malformed (unparsable values, completions without invocations).
    Malformed,
}

impl AnomalyKind {
    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::DoubleTake => "double-take",
            AnomalyKind::TakenButPresent => "taken-but-present",
            AnomalyKind::Phantom => "phantom",
            AnomalyKind::IdConflict => "id-conflict",
            AnomalyKind::NotLinearizable => "not-linearizable",
            AnomalyKind::Divergence => "divergence",
            AnomalyKind::Malformed => "malformed-history",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One violation, with the smallest slice of the history that shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// What kind.
    pub kind: AnomalyKind,
    /// What went wrong, for people.
    pub description: String,
    /// The events involved, in history order (invocations and completions of the operations
    /// involved; empty when no operation is, e.g. for a divergence given no history).
    pub events: Vec<Event>,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[{}] {}", self.kind, self.description)?;
        for e in &self.events {
            writeln!(f, "    {e}")?;
        }
        Ok(())
    }
}

/// A partition whose linearizability search ran out of budget: neither proved nor refuted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown {
    /// The partition's keys.
    pub partition: String,
    /// How many operations it has.
    pub ops: usize,
    /// The steps spent on it.
    pub steps: u64,
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Every violation.
    pub anomalies: Vec<Anomaly>,
    /// Partitions whose linearizability could not be decided within the budget.
    pub unknown: Vec<Unknown>,
    /// Operations in the history.
    pub ops: usize,
    /// Partitions checked for linearizability.
    pub partitions: usize,
    /// Search steps spent on linearizability, in total.
    pub steps: u64,
}

impl Report {
    /// Whether no anomaly was found (unknown partitions do not count).
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// How many anomalies of this kind were found.
    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.anomalies.iter().filter(|a| a.kind == kind).count()
    }

    /// Whether an anomaly of this kind was found.
    pub fn has(&self, kind: AnomalyKind) -> bool {
        self.count(kind) > 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checker: {} operations, {} partitions, {} search steps, {} unknown, {} anomalies",
            self.ops,
            self.partitions,
            self.steps,
            self.unknown.len(),
            self.anomalies.len()
        )?;
        for u in &self.unknown {
            writeln!(
                f,
                "unknown: partition {} ({} operations): search budget ran out after {} steps",
                u.partition, u.ops, u.steps
            )?;
        }
        for (i, a) in self.anomalies.iter().enumerate() {
            write!(f, "anomaly {}: {a}", i + 1)?;
        }
        Ok(())
    }
}

/// Knobs of [`check_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Search steps (attempts to linearize an operation) per search of a partition (default
    /// 5,000,000: a few seconds in a debug build; a valid history usually needs about one step
    /// per operation). A failing partition is searched again on about log2(events) prefixes,
    /// each with this budget.
    pub step_budget: u64,
    /// Whether to look for the shortest non-linearizable prefix of a failing partition (to
    /// show a small slice); without it the culprit is the partition's last event.
    pub shrink: bool,
    /// At most this many operations in the slice of an anomaly.
    pub max_slice_ops: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            step_budget: 5_000_000,
            shrink: true,
            max_slice_ops: 24,
        }
    }
}

/// Checks a history and the final states of the nodes (see the [module docs](self)) with the
/// default [`CheckOptions`].
pub fn check(history: &[Event], final_states: &[FinalState]) -> Report {
    check_with(history, final_states, &CheckOptions::default())
}

/// [`check`] with options.
pub fn check_with(history: &[Event], final_states: &[FinalState], opts: &CheckOptions) -> Report {
    let mut ctx = Ctx::new(history, final_states, opts);
    ctx.check_ids();
    ctx.check_takes_and_losses();
    ctx.check_linearizability();
    ctx.check_convergence();
    ctx.report
}

/// Compares the final states of the nodes: one [`AnomalyKind::Divergence`] for each node whose
/// state differs from the largest group of nodes that agree (the first such group on a tie).
/// The anomalies carry no events (see [`check`], which adds the operations of the differing ids).
pub fn compare_final_states(final_states: &[FinalState]) -> Vec<Anomaly> {
    divergences(final_states)
        .into_iter()
        .map(|d| Anomaly {
            kind: AnomalyKind::Divergence,
            description: d.description,
            events: Vec::new(),
        })
        .collect()
}

struct Divergence {
    description: String,
    ids: Vec<TupleId>,
}

fn divergences(final_states: &[FinalState]) -> Vec<Divergence> {
    if final_states.len() < 2 {
        return Vec::new();
    }
    let states: Vec<BTreeMap<TupleId, &Tuple>> = final_states
        .iter()
        .map(|(_, items)| items.iter().map(|(id, t)| (*id, t)).collect())
        .collect();
    // Groups of nodes with equal states, in order of first appearance.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, s) in states.iter().enumerate() {
        match groups.iter_mut().find(|g| states[g[0]] == *s) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    if groups.len() < 2 {
        return Vec::new();
    }
    let major = (0..groups.len())
        .max_by_key(|&g| (groups[g].len(), std::cmp::Reverse(g)))
        .expect("at least two groups");
    let reference = &states[groups[major][0]];
    let reference_nodes: Vec<u64> = groups[major].iter().map(|&i| final_states[i].0).collect();
    let mut out = Vec::new();
    for (g, members) in groups.iter().enumerate() {
        if g == major {
            continue;
        }
        for &i in members {
            let s = &states[i];
            let missing: Vec<TupleId> = reference
                .keys()
                .filter(|id| !s.contains_key(id))
                .copied()
                .collect();
            let extra: Vec<TupleId> = s
                .keys()
                .filter(|id| !reference.contains_key(id))
                .copied()
                .collect();
            let changed: Vec<TupleId> = s
                .iter()
                .filter(|(id, t)| reference.get(id).is_some_and(|r| r != *t))
                .map(|(id, _)| *id)
                .collect();
            let description = format!(
                "node {} ({} tuples) differs from node(s) {:?} ({} tuples): missing {}, extra {}, \
                 different {}",
                final_states[i].0,
                s.len(),
                reference_nodes,
                reference.len(),
                id_list(&missing),
                id_list(&extra),
                id_list(&changed)
            );
            let mut ids = missing;
            ids.extend(extra);
            ids.extend(changed);
            out.push(Divergence { description, ids });
        }
    }
    out
}

fn id_list(ids: &[TupleId]) -> String {
    const SHOWN: usize = 10;
    if ids.is_empty() {
        return "none".to_string();
    }
    let shown: Vec<String> = ids.iter().take(SHOWN).map(|id| format!("#{id}")).collect();
    if ids.len() > SHOWN {
        format!("{} ids ({}, ...)", ids.len(), shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------
// Parsed operations
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Res {
    /// `fail`: did not happen.
    Failed,
    /// `info`: unknown.
    Unknown,
    /// `out`/`cas` ok: the id inserted (`None`: a cas that found a match).
    Written(Option<TupleId>),
    /// take/read ok.
    Found(Option<(TupleId, Tuple)>),
    /// `rd_all` ok.
    All(Vec<(TupleId, Tuple)>),
}

#[derive(Clone, Debug)]
struct POp {
    op: Operation,
    template: Option<Template>,
    tuple: Option<Tuple>,
    after: TupleId,
    res: Res,
    /// Index of the invoke event in the history.
    inv_event: usize,
    /// Index of the completion event, if one was recorded.
    comp_event: Option<usize>,
}

impl POp {
    fn parse(op: Operation, inv_event: usize, comp_event: Option<usize>) -> Result<POp, String> {
        let tuple = op.input.parsed_tuple().map_err(|e| format!("tuple: {e}"))?;
        let template = op
            .input
            .parsed_template()
            .map_err(|e| format!("template: {e}"))?;
        let needs_tuple = matches!(op.f, Op::Out | Op::Cas);
        let needs_template = op.f != Op::Out;
        if needs_tuple && tuple.is_none() {
            return Err(format!("{} without a tuple", op.f));
        }
        if needs_template && template.is_none() {
            return Err(format!("{} without a template", op.f));
        }
        let res = match &op.output {
            Outcome::Fail => Res::Failed,
            Outcome::Info => Res::Unknown,
            Outcome::Ok(v) => match op.f {
                Op::Out if v.id.is_none() => return Err("ok out without an id".to_string()),
                Op::Out | Op::Cas => Res::Written(v.id),
                Op::In | Op::Inp | Op::Rd | Op::Rdp => Res::Found(v.parsed_found()?),
                Op::RdAll => Res::All(v.parsed_items()?),
            },
        };
        Ok(POp {
            after: op.input.after.unwrap_or(0),
            op,
            template,
            tuple,
            res,
            inv_event,
            comp_event,
        })
    }

    fn is_info(&self) -> bool {
        matches!(self.res, Res::Unknown)
    }

    fn is_failed(&self) -> bool {
        matches!(self.res, Res::Failed)
    }

    /// The id an ok write was acknowledged with.
    fn acked_id(&self) -> Option<TupleId> {
        match self.res {
            Res::Written(id) if self.op.f.is_write() => id,
            _ => None,
        }
    }

    /// Every (id, tuple) this op returned.
    fn observed(&self) -> Vec<(TupleId, &Tuple)> {
        match &self.res {
            Res::Found(Some((id, t))) => vec![(*id, t)],
            Res::All(items) => items.iter().map(|(id, t)| (*id, t)).collect(),
            _ => Vec::new(),
        }
    }

    fn taken(&self) -> Option<TupleId> {
        match &self.res {
            Res::Found(Some((id, _))) if self.op.f.is_take() => Some(*id),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let o = &self.op;
        let mut s = format!("op {} (process {}) {}", o.op_id, o.process, o.f);
        if let Some(t) = &self.template {
            s.push_str(&format!(" {t}"));
        }
        if let Some(t) = &self.tuple {
            s.push_str(&format!(" {t}"));
        }
        if matches!(o.f, Op::Rd | Op::Rdp) && self.after > 0 {
            s.push_str(&format!(" after #{}", self.after));
        }
        let result = match &self.res {
            Res::Failed => "fail".to_string(),
            Res::Unknown => "info".to_string(),
            Res::Written(Some(id)) if o.f == Op::Cas => format!("inserted #{id}"),
            Res::Written(None) => "matched".to_string(),
            Res::Written(Some(id)) => format!("#{id}"),
            Res::Found(Some((id, t))) => format!("#{id} {t}"),
            Res::Found(None) => "none".to_string(),
            Res::All(items) => {
                let ids: Vec<TupleId> = items.iter().map(|(id, _)| *id).collect();
                id_list(&ids)
            }
        };
        s.push_str(&format!(" -> {result}"));
        s
    }
}

/// An operation's or a tuple's partition key: the first two fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Pair(TsValue, TsValue),
    Other,
}

impl Key {
    fn of_tuple(t: &Tuple) -> Key {
        match t.fields() {
            [a, b, ..] => Key::Pair(a.clone(), b.clone()),
            _ => Key::Other,
        }
    }

    fn of_template(t: &Template) -> Key {
        match t.fields() {
            [Field::Literal(a), Field::Literal(b), ..] => Key::Pair(a.clone(), b.clone()),
            _ => Key::Other,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Pair(a, b) => write!(f, "({a}, {b}, ..)"),
            Key::Other => f.write_str("(other)"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

struct Ctx<'a> {
    events: &'a [Event],
    final_states: &'a [FinalState],
    opts: &'a CheckOptions,
    /// Parsed operations, in invocation order (the ones that parsed).
    ops: Vec<POp>,
    /// Ids acknowledged to writes: id -> the ok writes (normally one).
    acked: BTreeMap<TupleId, Vec<usize>>,
    /// The id each observed `info` write was given (index in `ops` -> id).
    info_ids: HashMap<usize, TupleId>,
    /// And the other way round.
    info_writer_of: HashMap<TupleId, usize>,
    /// Ok takes of each id.
    takes_of: BTreeMap<TupleId, Vec<usize>>,
    /// Operations that returned each id.
    observers_of: BTreeMap<TupleId, Vec<usize>>,
    /// Every id in some final state.
    final_ids: HashSet<TupleId>,
    report: Report,
}

impl<'a> Ctx<'a> {
    fn new(events: &'a [Event], final_states: &'a [FinalState], opts: &'a CheckOptions) -> Self {
        let mut report = Report::default();
        let (operations, problems) = pair_events(events);
        for p in problems {
            report.anomalies.push(Anomaly {
                kind: AnomalyKind::Malformed,
                description: p.what,
                events: vec![events[p.event].clone()],
            });
        }
        // Where each op's invoke and (first) completion are.
        let mut positions: HashMap<u64, (usize, Option<usize>)> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            match e.kind {
                EventKind::Invoke => {
                    positions.entry(e.op_id).or_insert((i, None));
                }
                _ => {
                    if let Some((_, comp @ None)) = positions.get_mut(&e.op_id) {
                        *comp = Some(i);
                    }
                }
            }
        }
        let mut ops = Vec::new();
        for op in operations {
            let (inv, comp) = positions[&op.op_id];
            let op_id = op.op_id;
            match POp::parse(op, inv, comp) {
                Ok(p) => ops.push(p),
                Err(what) => report.anomalies.push(Anomaly {
                    kind: AnomalyKind::Malformed,
                    description: format!("op {op_id}: {what}; the op is left out of the checks"),
                    events: std::iter::once(inv)
                        .chain(comp)
                        .map(|i| events[i].clone())
                        .collect(),
                }),
            }
        }
        report.ops = ops.len();
        let final_ids = final_states
            .iter()
            .flat_map(|(_, items)| items.iter().map(|(id, _)| *id))
            .collect();
        Ctx {
            events,
            final_states,
            opts,
            ops,
            acked: BTreeMap::new(),
            info_ids: HashMap::new(),
            info_writer_of: HashMap::new(),
            takes_of: BTreeMap::new(),
            observers_of: BTreeMap::new(),
            final_ids,
            report,
        }
    }

    /// The events of these ops (indices in `ops`), in history order, at most
    /// `max_slice_ops` ops (the first ones given win).
    fn slice(&self, ops: impl IntoIterator<Item = usize>) -> Vec<Event> {
        let mut chosen = Vec::new();
        let mut seen = HashSet::new();
        for i in ops {
            if chosen.len() >= self.opts.max_slice_ops {
                break;
            }
            if seen.insert(i) {
                chosen.push(i);
            }
        }
        let mut idx: Vec<usize> = chosen
            .iter()
            .flat_map(|&i| std::iter::once(self.ops[i].inv_event).chain(self.ops[i].comp_event))
            .collect();
        idx.sort_unstable();
        idx.into_iter().map(|i| self.events[i].clone()).collect()
    }

    fn anomaly(&mut self, kind: AnomalyKind, description: String, ops: Vec<usize>) {
        let events = self.slice(ops);
        self.report.anomalies.push(Anomaly {
            kind,
            description,
            events,
        });
    }

    /// The ops that wrote this id (acknowledged, or `info` and observed).
    fn writers_of(&self, id: TupleId) -> Vec<usize> {
        let mut w: Vec<usize> = self.acked.get(&id).cloned().unwrap_or_default();
        w.extend(self.info_writer_of.get(&id));
        w
    }

    /// Check 3 (and the bookkeeping the other checks need): ids and tuples.
    fn check_ids(&mut self) {
        for (i, p) in self.ops.iter().enumerate() {
            if let Some(id) = p.acked_id() {
                self.acked.entry(id).or_default().push(i);
            }
            if let Some(id) = p.taken() {
                self.takes_of.entry(id).or_default().push(i);
            }
            for (id, _) in p.observed() {
                let v = self.observers_of.entry(id).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        let dup_acks: Vec<(TupleId, Vec<usize>)> = self
            .acked
            .iter()
            .filter(|(_, w)| w.len() > 1)
            .map(|(id, w)| (*id, w.clone()))
            .collect();
        for (id, writers) in dup_acks {
            let what: Vec<String> = writers.iter().map(|&w| self.ops[w].describe()).collect();
            self.anomaly(
                AnomalyKind::IdConflict,
                format!(
                    "id #{id} was acknowledged to {} writes: {}",
                    writers.len(),
                    what.join("; ")
                ),
                writers,
            );
        }

        // Every observation: id -> (tuple, where) of the first, checking the others agree.
        enum Src {
            Op(usize),
            Node(u64),
        }
        let mut observations: Vec<(TupleId, &Tuple, Src)> = Vec::new();
        for (i, p) in self.ops.iter().enumerate() {
            for (id, t) in p.observed() {
                observations.push((id, t, Src::Op(i)));
            }
        }
        for (node, items) in self.final_states {
            for (id, t) in items {
                observations.push((*id, t, Src::Node(*node)));
            }
        }
        let src_name = |s: &Src| match s {
            Src::Op(i) => self.ops[*i].describe(),
            Src::Node(n) => format!("the final state of node {n}"),
        };
        let mut canonical: BTreeMap<TupleId, (&Tuple, &Src)> = BTreeMap::new();
        let mut conflicts: Vec<(String, Vec<usize>)> = Vec::new();
        let mut conflicted: HashSet<TupleId> = HashSet::new();
        for (id, t, src) in &observations {
            match canonical.get(id) {
                None => {
                    canonical.insert(*id, (t, src));
                }
                Some((first, first_src)) if first != t && conflicted.insert(*id) => {
                    let mut ops = self.acked.get(id).cloned().unwrap_or_default();
                    for s in [*first_src, src] {
                        if let Src::Op(i) = s {
                            ops.push(*i);
                        }
                    }
                    conflicts.push((
                        format!(
                            "id #{id} was returned as {first} by {} and as {t} by {}",
                            src_name(first_src),
                            src_name(src)
                        ),
                        ops,
                    ));
                }
                Some(_) => {}
            }
        }
        // Observed ids against the writes.
        let mut unexplained: BTreeMap<&Tuple, Vec<TupleId>> = BTreeMap::new();
        for (id, (t, src)) in &canonical {
            match self.acked.get(id) {
                Some(writers) => {
                    let w = writers[0];
                    let written = self.ops[w].tuple.as_ref().expect("a write has a tuple");
                    if written != *t && conflicted.insert(*id) {
                        let mut ops = vec![w];
                        if let Src::Op(i) = src {
                            ops.push(*i);
                        }
                        conflicts.push((
                            format!(
                                "id #{id} was acknowledged to {} but returned as {t} by {}",
                                self.ops[w].describe(),
                                src_name(src)
                            ),
                            ops,
                        ));
                    }
                }
                None => unexplained.entry(t).or_default().push(*id),
            }
        }
        // Ids no acknowledged write explains: each `info` write of the same tuple explains one.
        let mut writes_of: HashMap<&Tuple, Vec<usize>> = HashMap::new();
        for (i, p) in self.ops.iter().enumerate() {
            if let (true, Some(t)) = (p.op.f.is_write(), &p.tuple) {
                writes_of.entry(t).or_default().push(i);
            }
        }
        let mut phantoms: Vec<(String, Vec<usize>)> = Vec::new();
        for (t, ids) in unexplained {
            let writes = writes_of.get(t).cloned().unwrap_or_default();
            let mut infos = writes.iter().copied().filter(|&w| self.ops[w].is_info());
            for id in ids {
                if let Some(w) = infos.next() {
                    self.info_ids.insert(w, id);
                    self.info_writer_of.insert(id, w);
                    continue;
                }
                let mut ops: Vec<usize> = self.observers_of.get(&id).cloned().unwrap_or_default();
                ops.truncate(4);
                let failed: Vec<usize> = writes
                    .iter()
                    .copied()
                    .filter(|&w| self.ops[w].is_failed())
                    .collect();
                let acked: Vec<usize> = writes
                    .iter()
                    .copied()
                    .filter(|&w| self.ops[w].acked_id().is_some())
                    .collect();
                let seen_by = match self.observers_of.get(&id).and_then(|o| o.first()) {
                    Some(&o) => self.ops[o].describe(),
                    None => "a final state".to_string(),
                };
                let why = if !failed.is_empty() {
                    format!(
                        "its only unexplained write failed: {}",
                        self.ops[failed[0]].describe()
                    )
                } else if !acked.is_empty() {
                    format!(
                        "the write of that tuple was acknowledged with another id ({}): applied twice?",
                        self.ops[acked[0]].describe()
                    )
                } else if !writes.is_empty() {
                    "more ids carry this tuple than there are writes of it".to_string()
                } else {
                    "no operation ever wrote that tuple".to_string()
                };
                ops.extend(failed);
                ops.extend(acked);
                ops.extend(writes.iter().copied());
                phantoms.push((
                    format!("id #{id} {t} was returned by {seen_by}, but {why}"),
                    ops,
                ));
            }
        }
        for (description, ops) in conflicts {
            self.anomaly(AnomalyKind::IdConflict, description, ops);
        }
        for (description, ops) in phantoms {
            self.anomaly(AnomalyKind::Phantom, description, ops);
        }
    }

    /// Checks 1 and 2.
    fn check_takes_and_losses(&mut self) {
        let mut found: Vec<(AnomalyKind, String, Vec<usize>)> = Vec::new();
        for (id, takes) in &self.takes_of {
            let mut ops = self.writers_of(*id);
            ops.extend(takes.iter().copied());
            if takes.len() > 1 {
                let what: Vec<String> = takes.iter().map(|&t| self.ops[t].describe()).collect();
                found.push((
                    AnomalyKind::DoubleTake,
                    format!(
                        "id #{id} was taken {} times: {}",
                        takes.len(),
                        what.join("; ")
                    ),
                    ops.clone(),
                ));
            }
            if self.final_ids.contains(id) {
                let nodes: Vec<u64> = self
                    .final_states
                    .iter()
                    .filter(|(_, items)| items.iter().any(|(x, _)| x == id))
                    .map(|(n, _)| *n)
                    .collect();
                found.push((
                    AnomalyKind::TakenButPresent,
                    format!(
                        "id #{id} was taken by {} but is still in the final state of node(s) {nodes:?}",
                        self.ops[takes[0]].describe()
                    ),
                    ops,
                ));
            }
        }
        if !self.final_states.is_empty() {
            let info_takes: Vec<&Template> = self
                .ops
                .iter()
                .filter(|p| p.op.f.is_take() && p.is_info())
                .filter_map(|p| p.template.as_ref())
                .collect();
            for (id, writers) in &self.acked {
                let w = writers[0];
                if self.final_ids.contains(id) || self.takes_of.contains_key(id) {
                    continue;
                }
                let t = self.ops[w].tuple.as_ref().expect("a write has a tuple");
                if info_takes.iter().any(|tpl| tpl.matches(t)) {
                    continue; // maybe taken by an `info` take: check 4 decides
                }
                let mut ops = vec![w];
                ops.extend(self.observers_of.get(id).into_iter().flatten().take(4));
                found.push((
                    AnomalyKind::LostWrite,
                    format!(
                        "{} was acknowledged, but id #{id} is in no final state and no take returned it",
                        self.ops[w].describe()
                    ),
                    ops,
                ));
            }
        }
        for (kind, description, ops) in found {
            self.anomaly(kind, description, ops);
        }
    }

    /// Check 5, with slices.
    fn check_convergence(&mut self) {
        for d in divergences(self.final_states) {
            let mut ops = Vec::new();
            for id in d.ids.iter().take(8) {
                ops.extend(self.writers_of(*id));
                ops.extend(self.takes_of.get(id).into_iter().flatten());
            }
            self.anomaly(AnomalyKind::Divergence, d.description, ops);
        }
    }

    /// Check 4.
    fn check_linearizability(&mut self) {
        // Union-find over keys.
        let mut keys: Vec<Key> = Vec::new();
        let mut key_index: HashMap<Key, usize> = HashMap::new();
        let mut parent: Vec<usize> = Vec::new();
        fn find(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        fn union(parent: &mut [usize], a: usize, b: usize) {
            let (a, b) = (find(parent, a), find(parent, b));
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
        }
        let mut intern = |k: Key, keys: &mut Vec<Key>, parent: &mut Vec<usize>| -> usize {
            *key_index.entry(k.clone()).or_insert_with(|| {
                keys.push(k);
                parent.push(parent.len());
                parent.len() - 1
            })
        };
        let mut op_key: Vec<Option<usize>> = vec![None; self.ops.len()];
        let mut tuples_of_key: HashMap<usize, Vec<&Tuple>> = HashMap::new();
        for (i, p) in self.ops.iter().enumerate() {
            if p.is_failed() {
                continue;
            }
            let mut mine = Vec::new();
            if let Some(t) = &p.tuple {
                let k = intern(Key::of_tuple(t), &mut keys, &mut parent);
                tuples_of_key.entry(k).or_default().push(t);
                mine.push(k);
            }
            if let Some(t) = &p.template {
                mine.push(intern(Key::of_template(t), &mut keys, &mut parent));
            }
            for (_, t) in p.observed() {
                let k = intern(Key::of_tuple(t), &mut keys, &mut parent);
                tuples_of_key.entry(k).or_default().push(t);
            }
            for w in mine.windows(2) {
                union(&mut parent, w[0], w[1]);
            }
            op_key[i] = mine.first().copied();
        }
        let final_items: Option<&Vec<(TupleId, Tuple)>> = self.final_states.first().map(|(_, s)| s);
        for (_, t) in final_items.into_iter().flatten() {
            let k = intern(Key::of_tuple(t), &mut keys, &mut parent);
            tuples_of_key.entry(k).or_default().push(t);
        }
        // Templates without a key may match tuples of any key: merge those keys in.
        if let Some(&other) = key_index.get(&Key::Other) {
            let loose: Vec<&Template> = self
                .ops
                .iter()
                .filter(|p| !p.is_failed())
                .filter_map(|p| p.template.as_ref())
                .filter(|t| Key::of_template(t) == Key::Other)
                .collect();
            for (&k, tuples) in &tuples_of_key {
                if loose
                    .iter()
                    .any(|tpl| tuples.iter().any(|t| tpl.matches(t)))
                {
                    union(&mut parent, k, other);
                }
            }
        }
        // The partitions.
        // Root key -> (its ops, its tuples in the final state).
        type Part = (Vec<usize>, Vec<(TupleId, Tuple)>);
        let mut parts: BTreeMap<usize, Part> = BTreeMap::new();
        for (i, k) in op_key.iter().enumerate() {
            if let Some(k) = k {
                let root = find(&mut parent, *k);
                parts.entry(root).or_default().0.push(i);
            }
        }
        for (id, t) in final_items.into_iter().flatten() {
            let k = key_index[&Key::of_tuple(t)];
            let root = find(&mut parent, k);
            parts.entry(root).or_default().1.push((*id, t.clone()));
        }
        let mut members: BTreeMap<usize, Vec<&Key>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            members.entry(find(&mut parent, i)).or_default().push(k);
        }
        self.report.partitions = parts.len();
        for (root, (ops, mut finals)) in parts {
            let mut names = members.remove(&root).unwrap_or_default();
            names.sort();
            let mut name: Vec<String> = names.iter().take(4).map(ToString::to_string).collect();
            if names.len() > 4 {
                name.push(format!("and {} more keys", names.len() - 4));
            }
            finals.sort_by_key(|(id, _)| *id);
            let finals = final_items.map(|_| finals);
            self.check_partition(&name.join(" + "), ops, finals);
        }
    }

    fn check_partition(
        &mut self,
        name: &str,
        ops: Vec<usize>,
        finals: Option<Vec<(TupleId, Tuple)>>,
    ) {
        let part = Partition::new(self, ops, finals);
        let budget = self.opts.step_budget;
        let full = part.full_cut();
        let (verdict, steps) = search(&part.build(full), &part.tables, budget);
        let mut spent = steps;
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Unknown => self.report.unknown.push(Unknown {
                partition: name.to_string(),
                ops: part.ops.len(),
                steps,
            }),
            Verdict::NotLinearizable => {
                let mut lo = 0;
                let mut hi = full;
                if self.opts.shrink {
                    while hi - lo > 1 {
                        let mid = lo + (hi - lo) / 2;
                        let (v, s) = search(&part.build(mid), &part.tables, budget);
                        spent += s;
                        if v == Verdict::NotLinearizable {
                            hi = mid;
                        } else {
                            lo = mid;
                        }
                    }
                }
                let (description, slice) = part.explain(self, hi, name);
                self.anomaly(AnomalyKind::NotLinearizable, description, slice);
            }
        }
        self.report.steps += spent;
    }
}

// ---------------------------------------------------------------------------------------------
// One partition: its ops, interned tuples and templates, its events in time order
// ---------------------------------------------------------------------------------------------

struct Tables {
    /// `matches[template][tuple]`.
    matches: Vec<Vec<bool>>,
    /// Ids an `info` take cannot have taken: those an ok take returned, and those in the final
    /// state (a tuple taken once is not taken again, nor left at the end).
    kept: HashSet<TupleId>,
}

struct Partition {
    /// Indices in `Ctx::ops`, in invocation order.
    ops: Vec<usize>,
    /// Per op: its model operation, if it has one (see `build`).
    models: Vec<Option<Model>>,
    tables: Tables,
    /// Events in time order: (op position in `ops`, is completion).
    events: Vec<(usize, bool)>,
    /// Per op: position of its invocation and completion in `events`.
    inv_pos: Vec<usize>,
    comp_pos: Vec<Option<usize>>,
    inv_ns: Vec<u64>,
    comp_ns: Vec<u64>,
    /// When the completion was recorded (also for `info`), or `u64::MAX`.
    recorded_end_ns: Vec<u64>,
    finals: Option<Vec<(TupleId, u32)>>,
    last_ns: u64,
}

/// What an op does in the model, before the cut decides whether it is complete.
#[derive(Clone, Debug)]
struct Model {
    m: MOp,
    /// Whether it has an effect when its result is unknown (else it is dropped when pending).
    effect_when_pending: bool,
    /// Whether it is `info` (always optional).
    info: bool,
}

impl Partition {
    fn new(ctx: &Ctx<'_>, ops: Vec<usize>, finals: Option<Vec<(TupleId, Tuple)>>) -> Partition {
        let mut contents: HashMap<Tuple, u32> = HashMap::new();
        let mut templates: HashMap<Template, u32> = HashMap::new();
        let mut content = |t: &Tuple| -> u32 {
            let n = contents.len() as u32;
            *contents.entry(t.clone()).or_insert(n)
        };
        let mut template = |t: &Template| -> u32 {
            let n = templates.len() as u32;
            *templates.entry(t.clone()).or_insert(n)
        };
        let guarded_cas = ops.iter().any(|&i| {
            let p = &ctx.ops[i];
            p.op.f == Op::Cas && matches!(p.res, Res::Written(None))
        });
        let mut models = Vec::with_capacity(ops.len());
        for &i in &ops {
            let p = &ctx.ops[i];
            let tmpl = p.template.as_ref().map(&mut template);
            let tup = p.tuple.as_ref().map(&mut content);
            let info_id = ctx.info_ids.get(&i).copied();
            let found = |r: &Option<(TupleId, Tuple)>, content: &mut dyn FnMut(&Tuple) -> u32| {
                r.as_ref().map(|(id, t)| (*id, content(t)))
            };
            let model = match (p.op.f, &p.res) {
                (_, Res::Failed) => None,
                (Op::Out, Res::Written(id)) => Some((
                    MOp::Insert {
                        id: *id,
                        content: tup.expect("out has a tuple"),
                        guard: None,
                    },
                    true,
                )),
                (Op::Out, Res::Unknown) if info_id.is_some() || guarded_cas => Some((
                    MOp::Insert {
                        id: info_id,
                        content: tup.expect("out has a tuple"),
                        guard: None,
                    },
                    true,
                )),
                (Op::Cas, Res::Written(Some(id))) => Some((
                    MOp::Insert {
                        id: Some(*id),
                        content: tup.expect("cas has a tuple"),
                        guard: tmpl,
                    },
                    true,
                )),
                (Op::Cas, Res::Written(None)) => Some((
                    MOp::CasMatched {
                        guard: tmpl.expect("cas has a template"),
                    },
                    false,
                )),
                (Op::Cas, Res::Unknown) if info_id.is_some() => Some((
                    MOp::Insert {
                        id: info_id,
                        content: tup.expect("cas has a tuple"),
                        guard: tmpl,
                    },
                    true,
                )),
                (Op::Cas, Res::Unknown) if guarded_cas => Some((
                    MOp::MaybeCas {
                        guard: tmpl.expect("cas has a template"),
                        content: tup.expect("cas has a tuple"),
                    },
                    true,
                )),
                (Op::In | Op::Inp, Res::Found(r)) => Some((
                    MOp::Take {
                        tmpl: tmpl.expect("a take has a template"),
                        res: found(r, &mut content),
                    },
                    r.is_some(),
                )),
                (Op::In | Op::Inp, Res::Unknown) => Some((
                    MOp::TakeAny {
                        tmpl: tmpl.expect("a take has a template"),
                    },
                    true,
                )),
                (Op::Rd | Op::Rdp, Res::Found(r)) => Some((
                    MOp::Read {
                        tmpl: tmpl.expect("a read has a template"),
                        after: p.after,
                        res: found(r, &mut content),
                    },
                    false,
                )),
                (Op::RdAll, Res::All(items)) => Some((
                    MOp::ReadAll {
                        tmpl: tmpl.expect("a read has a template"),
                        items: items.iter().map(|(id, t)| (*id, content(t))).collect(),
                    },
                    false,
                )),
                _ => None,
            };
            models.push(model.map(|(m, effect_when_pending)| Model {
                m,
                effect_when_pending,
                info: p.is_info(),
            }));
        }
        let finals = finals.map(|items| {
            items
                .iter()
                .map(|(id, t)| (*id, content(t)))
                .collect::<Vec<_>>()
        });
        // The match table.
        let mut tuple_list: Vec<(&Tuple, u32)> = contents.iter().map(|(t, &c)| (t, c)).collect();
        tuple_list.sort_by_key(|&(_, c)| c);
        let mut matches = vec![Vec::new(); templates.len()];
        for (tpl, &ti) in &templates {
            matches[ti as usize] = tuple_list.iter().map(|(t, _)| tpl.matches(t)).collect();
        }
        // A tuple nobody saw (of an unobserved `info` write) matters only through the templates
        // it matches: give all such tuples that match the same templates one content, so that
        // their writes are interchangeable (see `search`).
        let mut class_of: HashMap<Vec<bool>, u32> = HashMap::new();
        let class: Vec<u32> = (0..contents.len())
            .map(|c| {
                let column: Vec<bool> = matches.iter().map(|row| row[c]).collect();
                *class_of.entry(column).or_insert(c as u32)
            })
            .collect();
        // Templates that match the same tuples are the same to the model.
        let mut row_of: HashMap<&Vec<bool>, u32> = HashMap::new();
        let same_row: Vec<u32> = (0..matches.len())
            .map(|ti| *row_of.entry(&matches[ti]).or_insert(ti as u32))
            .collect();
        let tmpl = |t: &mut u32| *t = same_row[*t as usize];
        for model in models.iter_mut().flatten() {
            match &mut model.m {
                MOp::Take { tmpl: t, .. }
                | MOp::TakeAny { tmpl: t }
                | MOp::Read { tmpl: t, .. }
                | MOp::ReadAll { tmpl: t, .. }
                | MOp::CasMatched { guard: t }
                | MOp::Insert {
                    id: Some(_),
                    guard: Some(t),
                    ..
                } => tmpl(t),
                MOp::Insert {
                    id: None,
                    content,
                    guard,
                } => {
                    *content = class[*content as usize];
                    if let Some(t) = guard {
                        tmpl(t);
                    }
                }
                MOp::MaybeCas { guard, content } => {
                    tmpl(guard);
                    *content = class[*content as usize];
                }
                MOp::Insert { guard: None, .. } | MOp::Final { .. } => {}
            }
        }
        let kept: HashSet<TupleId> = ctx
            .takes_of
            .keys()
            .copied()
            .chain(
                ctx.final_states
                    .first()
                    .into_iter()
                    .flat_map(|(_, items)| items.iter().map(|(id, _)| *id)),
            )
            .collect();
        // Events in time order (ties: history order).
        let mut evs: Vec<(u64, usize, usize, bool)> = Vec::new();
        for (pos, &i) in ops.iter().enumerate() {
            let p = &ctx.ops[i];
            evs.push((p.op.invoke_ns, p.inv_event, pos, false));
            if let (Some(c), false) = (p.comp_event, p.is_info()) {
                evs.push((p.op.complete_ns, c, pos, true));
            }
        }
        evs.sort_unstable();
        let mut inv_pos = vec![0; ops.len()];
        let mut comp_pos = vec![None; ops.len()];
        for (at, &(_, _, pos, is_comp)) in evs.iter().enumerate() {
            if is_comp {
                comp_pos[pos] = Some(at);
            } else {
                inv_pos[pos] = at;
            }
        }
        let last_ns = evs.iter().map(|e| e.0).max().unwrap_or(0);
        Partition {
            inv_ns: ops.iter().map(|&i| ctx.ops[i].op.invoke_ns).collect(),
            comp_ns: ops.iter().map(|&i| ctx.ops[i].op.complete_ns).collect(),
            recorded_end_ns: ops
                .iter()
                .map(|&i| {
                    ctx.ops[i]
                        .comp_event
                        .map_or(u64::MAX, |e| ctx.events[e].time_ns)
                })
                .collect(),
            ops,
            models,
            tables: Tables { matches, kept },
            events: evs.iter().map(|e| (e.2, e.3)).collect(),
            inv_pos,
            comp_pos,
            finals,
            last_ns,
        }
    }

    /// The cut that includes everything (and the final read, if any).
    fn full_cut(&self) -> usize {
        self.events.len() + usize::from(self.finals.is_some())
    }

    /// The model operations of the history cut after its first `cut` events: ops invoked
    /// before the cut; those not completed before it are optional (as if `info`), and dropped
    /// when a pending op has no effect; the final read only when the cut is past every event.
    fn build(&self, cut: usize) -> Vec<LinOp> {
        let mut out = Vec::new();
        for (pos, model) in self.models.iter().enumerate() {
            let Some(model) = model else { continue };
            if self.inv_pos[pos] >= cut {
                continue;
            }
            let done = !model.info && self.comp_pos[pos].is_some_and(|c| c < cut);
            if !done && !model.effect_when_pending {
                continue;
            }
            out.push(LinOp {
                inv: self.inv_ns[pos],
                comp: if done { self.comp_ns[pos] } else { u64::MAX },
                optional: !done,
                m: model.m.clone(),
                tag: pos as u32 + 1,
            });
        }
        if let (Some(items), true) = (&self.finals, cut > self.events.len()) {
            out.push(LinOp {
                inv: self.last_ns.saturating_add(1),
                comp: self.last_ns.saturating_add(2),
                optional: false,
                m: MOp::Final {
                    items: items.clone(),
                },
                tag: 0,
            });
        }
        out.sort_by_key(|op| op.inv);
        out
    }

    /// Describes the failure of the shortest failing prefix `cut`: its culprit, the ops of
    /// the ids involved and the ops concurrent with the culprit.
    fn explain(&self, ctx: &Ctx<'_>, cut: usize, name: &str) -> (String, Vec<usize>) {
        let culprit = (cut <= self.events.len()).then(|| self.events[cut - 1].0);
        let (lo_ns, hi_ns) = match culprit {
            Some(pos) => (self.inv_ns[pos], self.comp_ns[pos]),
            None => (self.last_ns, u64::MAX),
        };
        // Writes with a known id in this partition.
        let mut written: Vec<(TupleId, usize)> = Vec::new();
        for &i in &self.ops {
            let p = &ctx.ops[i];
            if let Some(id) = p.acked_id().or_else(|| ctx.info_ids.get(&i).copied()) {
                written.push((id, i));
            }
        }
        written.sort_unstable();
        // Ids surely resident while the culprit ran: written before it was invoked, and not
        // taken by an ok take invoked before it completed.
        let surely_resident = |matches: &dyn Fn(&Tuple) -> bool, after: TupleId| -> Vec<TupleId> {
            written
                .iter()
                .filter(|&&(id, w)| {
                    let p = &ctx.ops[w];
                    id > after
                        && p.op.complete_ns < lo_ns
                        && p.tuple.as_ref().is_some_and(matches)
                        && !ctx
                            .takes_of
                            .get(&id)
                            .into_iter()
                            .flatten()
                            .any(|&t| ctx.ops[t].op.invoke_ns < hi_ns)
                })
                .map(|&(id, _)| id)
                .collect()
        };
        let taken_before = |id: TupleId| {
            ctx.takes_of
                .get(&id)
                .into_iter()
                .flatten()
                .any(|&t| ctx.ops[t].op.complete_ns < lo_ns)
        };
        let mut related: BTreeSet<TupleId> = BTreeSet::new();
        let description;
        match culprit {
            Some(pos) => {
                let p = &ctx.ops[self.ops[pos]];
                let tpl = p.template.as_ref();
                let tpl_matches = |t: &Tuple| tpl.is_some_and(|tpl| tpl.matches(t));
                let mut why = String::new();
                match (&p.res, p.op.f) {
                    (Res::Found(r), f) => {
                        let after = if f.is_take() { 0 } else { p.after };
                        let older = surely_resident(&tpl_matches, after);
                        let older: Vec<TupleId> = match r {
                            Some((id, _)) => older.into_iter().filter(|x| x < id).collect(),
                            None => older,
                        };
                        if let Some((id, _)) = r {
                            related.insert(*id);
                            if taken_before(*id) {
                                why = format!(" (#{id} was taken before it was invoked)");
                            }
                        }
                        if !older.is_empty() && why.is_empty() {
                            why = format!(
                                " (matches present all along: {})",
                                id_list(&older[..older.len().min(3)])
                            );
                        }
                        related.extend(older.into_iter().take(3));
                    }
                    (Res::All(items), _) => {
                        let resident = surely_resident(&tpl_matches, 0);
                        let got: BTreeSet<TupleId> = items.iter().map(|(id, _)| *id).collect();
                        let missing: Vec<TupleId> =
                            resident.into_iter().filter(|x| !got.contains(x)).collect();
                        let stale: Vec<TupleId> =
                            got.iter().copied().filter(|&x| taken_before(x)).collect();
                        why = format!(
                            " (missing matches present all along: {}; taken before it was invoked: {})",
                            id_list(&missing),
                            id_list(&stale)
                        );
                        related.extend(missing.into_iter().take(5));
                        related.extend(stale.into_iter().take(5));
                    }
                    (Res::Written(Some(id)), f) => {
                        related.insert(*id);
                        if f == Op::Cas {
                            let older = surely_resident(&tpl_matches, 0);
                            if !older.is_empty() {
                                why = format!(
                                    " (matches present all along: {})",
                                    id_list(&older[..older.len().min(3)])
                                );
                            }
                            related.extend(older.into_iter().take(3));
                        }
                        let newer: Vec<TupleId> = written
                            .iter()
                            .filter(|&&(x, w)| x > *id && ctx.ops[w].op.complete_ns < lo_ns)
                            .map(|&(x, _)| x)
                            .take(3)
                            .collect();
                        if !newer.is_empty() && why.is_empty() {
                            why = format!(
                                " (higher ids were written before it was invoked: {})",
                                id_list(&newer)
                            );
                        }
                        related.extend(newer);
                    }
                    _ => {}
                }
                description = format!(
                    "key {name}: {}{why} has no linearization consistent with the operations \
                     before it (the {} events of this key before its completion are linearizable, \
                     with it they are not)",
                    p.describe(),
                    cut - 1
                );
            }
            None => {
                let finals: BTreeSet<TupleId> =
                    self.finals.iter().flatten().map(|(id, _)| *id).collect();
                let expected: BTreeSet<TupleId> = written
                    .iter()
                    .filter(|(id, _)| !ctx.takes_of.contains_key(id))
                    .map(|(id, _)| *id)
                    .collect();
                let missing: Vec<TupleId> = expected.difference(&finals).copied().collect();
                let extra: Vec<TupleId> = finals.difference(&expected).copied().collect();
                related.extend(missing.iter().take(5));
                related.extend(extra.iter().take(5));
                description = format!(
                    "key {name}: no linearization of its {} operations ends in the final state of \
                     node {} (written and never taken but absent: {}; present but taken or never \
                     written: {})",
                    self.ops.len(),
                    ctx.final_states.first().map_or(0, |s| s.0),
                    id_list(&missing),
                    id_list(&extra)
                );
            }
        }
        let mut slice: Vec<usize> = Vec::new();
        if let Some(pos) = culprit {
            slice.push(self.ops[pos]);
        }
        for id in &related {
            slice.extend(written.iter().filter(|(x, _)| x == id).map(|&(_, w)| w));
            slice.extend(ctx.takes_of.get(id).into_iter().flatten());
        }
        // Ops that ran at the same time (as recorded: an `info` op until its completion was
        // recorded), nearest first.
        let mut concurrent: Vec<(u64, usize)> = (0..self.ops.len())
            .filter(|&q| Some(q) != culprit && self.models[q].is_some())
            .filter(|&q| self.inv_ns[q] <= hi_ns && self.recorded_end_ns[q] >= lo_ns)
            .map(|q| (self.inv_ns[q].abs_diff(lo_ns), self.ops[q]))
            .collect();
        concurrent.sort_unstable();
        slice.extend(concurrent.into_iter().map(|(_, i)| i));
        (description, slice)
    }
}

// ---------------------------------------------------------------------------------------------
// The model and the search
// ---------------------------------------------------------------------------------------------

/// A model operation; tuples and templates are interned (`u32`s into the partition's tables).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum MOp {
    /// Adds a tuple with this id (`None`: an unobserved `info` write, with an id nobody saw),
    /// only if nothing matches `guard` (a `cas`).
    Insert {
        id: Option<TupleId>,
        content: u32,
        guard: Option<u32>,
    },
    /// An unobserved `info` cas: inserts (an unseen id) if nothing matches, else nothing.
    MaybeCas { guard: u32, content: u32 },
    /// A cas that found a match.
    CasMatched { guard: u32 },
    /// `in`/`inp` with its result.
    Take {
        tmpl: u32,
        res: Option<(TupleId, u32)>,
    },
    /// An `info` take: removes the lowest match. Never linearized where nothing matches (that
    /// is the same as linearizing it later or never), nor where the lowest match is a tuple
    /// that some ok take returned or that is in the final state.
    TakeAny { tmpl: u32 },
    /// `rd`/`rdp` with its result.
    Read {
        tmpl: u32,
        after: TupleId,
        res: Option<(TupleId, u32)>,
    },
    /// `rd_all` with its result.
    ReadAll {
        tmpl: u32,
        items: Vec<(TupleId, u32)>,
    },
    /// The final state: exactly these tuples.
    Final { items: Vec<(TupleId, u32)> },
}

impl MOp {
    /// Whether the op never changes the state (a take is read-only only with a none result).
    fn read_only(&self) -> bool {
        match self {
            MOp::Read { .. } | MOp::ReadAll { .. } | MOp::CasMatched { .. } | MOp::Final { .. } => {
                true
            }
            MOp::Take { res, .. } => res.is_none(),
            MOp::Insert { .. } | MOp::MaybeCas { .. } | MOp::TakeAny { .. } => false,
        }
    }
}

#[derive(Clone, Debug)]
struct LinOp {
    inv: u64,
    /// `u64::MAX` for optional ops.
    comp: u64,
    optional: bool,
    m: MOp,
    /// Distinguishes the unseen ids of different unobserved writes.
    tag: u32,
}

/// A model id: `(id, 0)` for a real id; `(m, tag)` for an unseen id given after id `m`, which
/// sorts after `m` and before any id given later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Mid(u64, u32);

impl Mid {
    fn real(id: TupleId) -> Mid {
        Mid(id, 0)
    }

    /// Whether the id is surely greater than `after` (unseen ids only when they must be).
    fn after(self, after: TupleId) -> bool {
        if self.1 == 0 {
            self.0 > after
        } else {
            self.0 >= after
        }
    }
}

enum Undo {
    Nothing,
    Inserted {
        id: Mid,
        content: u32,
        prev_max: u64,
    },
    Removed {
        at: usize,
        id: Mid,
        content: u32,
    },
}

#[derive(Default)]
struct State {
    /// Resident tuples by id.
    resident: Vec<(Mid, u32)>,
    /// The highest real id added so far.
    max_id: u64,
    /// Zobrist hash of `resident`.
    hash: (u64, u64),
}

const SEED_A: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_B: u64 = 0xc2b2_ae3d_27d4_eb4f;

fn mix(mut z: u64) -> u64 {
    // splitmix64's finalizer.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn entry_hash(id: Mid, content: u32, seed: u64) -> u64 {
    mix(mix(mix(id.0 ^ seed) ^ u64::from(id.1)) ^ u64::from(content).wrapping_add(seed))
}

impl State {
    fn toggle(&mut self, id: Mid, content: u32) {
        self.hash.0 ^= entry_hash(id, content, SEED_A);
        self.hash.1 ^= entry_hash(id, content, SEED_B);
    }

    fn insert(&mut self, id: Mid, content: u32) {
        let at = self.resident.partition_point(|e| e.0 < id);
        self.resident.insert(at, (id, content));
        self.toggle(id, content);
    }

    fn remove_at(&mut self, at: usize) -> (Mid, u32) {
        let (id, content) = self.resident.remove(at);
        self.toggle(id, content);
        (id, content)
    }

    fn first_match(&self, row: &[bool], after: TupleId) -> Option<usize> {
        self.resident
            .iter()
            .position(|&(id, c)| row[c as usize] && id.after(after))
    }

    fn take_at(&mut self, at: usize) -> Undo {
        let (id, content) = self.remove_at(at);
        Undo::Removed { at, id, content }
    }

    fn add(&mut self, id: Option<TupleId>, content: u32, tag: u32) -> Option<Undo> {
        let prev_max = self.max_id;
        let mid = match id {
            Some(id) if id <= self.max_id => return None,
            Some(id) => {
                self.max_id = id;
                Mid::real(id)
            }
            None => Mid(self.max_id, tag),
        };
        self.insert(mid, content);
        Some(Undo::Inserted {
            id: mid,
            content,
            prev_max,
        })
    }

    /// Applies `op` if the model allows its result here; returns how to undo it.
    fn apply(&mut self, op: &LinOp, t: &Tables) -> Option<Undo> {
        let row = |tmpl: u32| t.matches[tmpl as usize].as_slice();
        match &op.m {
            MOp::Insert { id, content, guard } => {
                if guard.is_some_and(|g| self.first_match(row(g), 0).is_some()) {
                    return None;
                }
                self.add(*id, *content, op.tag)
            }
            MOp::MaybeCas { guard, content } => {
                if self.first_match(row(*guard), 0).is_some() {
                    return None;
                }
                self.add(None, *content, op.tag)
            }
            MOp::CasMatched { guard } => self.first_match(row(*guard), 0).map(|_| Undo::Nothing),
            MOp::Take { tmpl, res } => match (self.first_match(row(*tmpl), 0), res) {
                (None, None) => Some(Undo::Nothing),
                (Some(at), Some((id, c))) if self.resident[at] == (Mid::real(*id), *c) => {
                    Some(self.take_at(at))
                }
                _ => None,
            },
            MOp::TakeAny { tmpl } => {
                let at = self.first_match(row(*tmpl), 0)?;
                let (id, _) = self.resident[at];
                if id.1 == 0 && t.kept.contains(&id.0) {
                    return None;
                }
                Some(self.take_at(at))
            }
            MOp::Read { tmpl, after, res } => match (self.first_match(row(*tmpl), *after), res) {
                (None, None) => Some(Undo::Nothing),
                (Some(at), Some((id, c))) if self.resident[at] == (Mid::real(*id), *c) => {
                    Some(Undo::Nothing)
                }
                _ => None,
            },
            MOp::ReadAll { tmpl, items } => {
                let r = row(*tmpl);
                let mut got = self.resident.iter().filter(|&&(_, c)| r[c as usize]);
                let mut want = items.iter();
                loop {
                    match (got.next(), want.next()) {
                        (None, None) => return Some(Undo::Nothing),
                        (Some(&(id, c)), Some(&(wid, wc))) if id == Mid::real(wid) && c == wc => {}
                        _ => return None,
                    }
                }
            }
            MOp::Final { items } => {
                let same = self.resident.len() == items.len()
                    && self
                        .resident
                        .iter()
                        .zip(items)
                        .all(|(&(id, c), &(wid, wc))| id == Mid::real(wid) && c == wc);
                same.then_some(Undo::Nothing)
            }
        }
    }

    fn undo(&mut self, u: Undo) {
        match u {
            Undo::Nothing => {}
            Undo::Inserted {
                id,
                content,
                prev_max,
            } => {
                let at = self.resident.partition_point(|e| e.0 < id);
                debug_assert_eq!(self.resident[at], (id, content));
                self.remove_at(at);
                self.max_id = prev_max;
            }
            Undo::Removed { at, id, content } => {
                self.resident.insert(at, (id, content));
                self.toggle(id, content);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Linearizable,
    NotLinearizable,
    Unknown,
}

/// Whether the ops (sorted by invocation) have a linearization; and the steps it took.
fn search(ops: &[LinOp], tables: &Tables, budget: u64) -> (Verdict, u64) {
    const NIL: usize = usize::MAX;
    let n = ops.len();
    let mut required: Vec<usize> = (0..n).filter(|&i| !ops[i].optional).collect();
    required.sort_by_key(|&i| (ops[i].comp, i));
    if required.is_empty() {
        return (Verdict::Linearizable, 0);
    }
    // A doubly linked list of the ops not yet linearized, in invocation order; `n` is the head.
    let head = n;
    let mut next: Vec<usize> = (1..=n).map(|i| if i < n { i } else { NIL }).collect();
    next.push(if n > 0 { 0 } else { NIL });
    let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { head } else { i - 1 }).collect();
    prev.push(NIL);
    let zobrist: Vec<(u64, u64)> = (0..n as u64)
        .map(|i| (mix(i ^ SEED_A), mix(i.wrapping_add(SEED_B))))
        .collect();
    // Optional ops that do the same thing are interchangeable, the earlier-invoked one having
    // the wider window: linearize them in invocation order only.
    let mut twin_before: Vec<Option<usize>> = vec![None; n];
    let mut last_twin: HashMap<&MOp, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate().filter(|(_, op)| op.optional) {
        twin_before[i] = last_twin.insert(&op.m, i);
    }
    let mut linearized = vec![false; n];
    let mut lin_hash = (0u64, 0u64);
    // `required[frontier..]` are the required ops not yet linearized... except that ones
    // linearized out of completion order stay in front until the cursor passes them.
    let mut frontier = 0usize;
    let mut state = State::default();
    let mut visited: HashSet<(u64, u64)> = HashSet::new();
    let mut steps = 0u64;

    // Candidates: the ops invoked before the earliest completion of a required op not yet
    // linearized. Tried in this order (any order is sound; this one finds linearizations
    // fast): read-only ones (see below); `info` takes, which can only remove a tuple that
    // vanishes, so the sooner the better, and `info` writes that were observed; other required
    // ones; other optional ones (writes nobody saw).
    let candidates = |next: &[usize], linearized: &[bool], frontier: usize| -> Vec<usize> {
        let limit = ops[required[frontier]].comp;
        let mut order: [Vec<usize>; 4] = Default::default();
        let mut i = next[head];
        while i != NIL && ops[i].inv <= limit {
            let op = &ops[i];
            let class = match (op.optional, &op.m) {
                (false, m) if m.read_only() => 0,
                (true, MOp::TakeAny { .. } | MOp::Insert { id: Some(_), .. }) => 1,
                (false, _) => 2,
                (true, _) => 3,
            };
            if !op.optional || twin_before[i].is_none_or(|t| linearized[t]) {
                order[class].push(i);
            }
            i = next[i];
        }
        order.concat()
    };

    let mut frames: Vec<(Vec<usize>, usize)> = vec![(candidates(&next, &linearized, frontier), 0)];
    let mut path: Vec<(usize, Undo, usize)> = Vec::new();
    loop {
        let Some((cands, at)) = frames.last_mut() else {
            return (Verdict::NotLinearizable, steps);
        };
        if *at >= cands.len() {
            frames.pop();
            let Some((i, undo, saved)) = path.pop() else {
                return (Verdict::NotLinearizable, steps);
            };
            state.undo(undo);
            linearized[i] = false;
            lin_hash.0 ^= zobrist[i].0;
            lin_hash.1 ^= zobrist[i].1;
            frontier = saved;
            // Relink (the list is restored in the reverse order of unlinking).
            next[prev[i]] = i;
            if next[i] != NIL {
                prev[next[i]] = i;
            }
            continue;
        }
        let i = cands[*at];
        *at += 1;
        steps += 1;
        if steps > budget {
            return (Verdict::Unknown, steps);
        }
        let Some(undo) = state.apply(&ops[i], tables) else {
            continue;
        };
        if ops[i].m.read_only() {
            // A read-only op that can go next may as well go next: in any linearization from
            // here it can be moved to the front (it changes nothing, and no op left completed
            // before it was invoked). So no other choice at this node needs exploring.
            *at = cands.len();
        }
        let key = (
            lin_hash.0 ^ zobrist[i].0 ^ state.hash.0 ^ mix(state.max_id ^ SEED_B),
            lin_hash.1 ^ zobrist[i].1 ^ state.hash.1 ^ mix(state.max_id.wrapping_add(SEED_A)),
        );
        if !visited.insert(key) {
            state.undo(undo);
            continue;
        }
        linearized[i] = true;
        lin_hash.0 ^= zobrist[i].0;
        lin_hash.1 ^= zobrist[i].1;
        next[prev[i]] = next[i];
        if next[i] != NIL {
            prev[next[i]] = prev[i];
        }
        path.push((i, undo, frontier));
        while frontier < required.len() && linearized[required[frontier]] {
            frontier += 1;
        }
        if frontier == required.len() {
            return (Verdict::Linearizable, steps);
        }
        frames.push((candidates(&next, &linearized, frontier), 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(inv: u64, comp: Option<u64>, m: MOp) -> LinOp {
        LinOp {
            inv,
            comp: comp.unwrap_or(u64::MAX),
            optional: comp.is_none(),
            m,
            tag: inv as u32 + 1,
        }
    }

    /// One template (0) matching both tuples (0 and 1).
    fn tables() -> Tables {
        Tables {
            matches: vec![vec![true, true]],
            kept: HashSet::new(),
        }
    }

    fn verdict(ops: &[LinOp]) -> Verdict {
        let mut ops = ops.to_vec();
        ops.sort_by_key(|o| o.inv);
        search(&ops, &tables(), 10_000).0
    }

    fn out(id: u64, c: u32) -> MOp {
        MOp::Insert {
            id: Some(id),
            content: c,
            guard: None,
        }
    }

    fn take(res: Option<(u64, u32)>) -> MOp {
        MOp::Take { tmpl: 0, res }
    }

    #[test]
    fn fifo_takes_and_concurrency() {
        // Sequential: out 1, out 2, take -> 1, take -> 2, take -> none.
        let ok = [
            op(0, Some(1), out(1, 0)),
            op(2, Some(3), out(2, 1)),
            op(4, Some(5), take(Some((1, 0)))),
            op(6, Some(7), take(Some((2, 1)))),
            op(8, Some(9), take(None)),
        ];
        assert_eq!(verdict(&ok), Verdict::Linearizable);
        // Taking 2 first while 1 was resident is not FIFO.
        let bad = [
            op(0, Some(1), out(1, 0)),
            op(2, Some(3), out(2, 1)),
            op(4, Some(5), take(Some((2, 1)))),
        ];
        assert_eq!(verdict(&bad), Verdict::NotLinearizable);
        // ... unless a concurrent take took 1 first.
        let concurrent = [
            op(0, Some(1), out(1, 0)),
            op(2, Some(3), out(2, 1)),
            op(4, Some(5), take(Some((2, 1)))),
            op(3, Some(9), take(Some((1, 0)))),
        ];
        assert_eq!(verdict(&concurrent), Verdict::Linearizable);
    }

    #[test]
    fn ids_increase_in_linearization_order() {
        let bad = [op(0, Some(1), out(2, 0)), op(2, Some(3), out(1, 1))];
        assert_eq!(verdict(&bad), Verdict::NotLinearizable);
        let concurrent = [op(0, Some(3), out(2, 0)), op(1, Some(2), out(1, 1))];
        assert_eq!(verdict(&concurrent), Verdict::Linearizable);
    }

    #[test]
    fn info_ops_may_happen_or_not() {
        // An info take explains a tuple gone.
        let gone = [
            op(0, Some(1), out(1, 0)),
            op(2, None, MOp::TakeAny { tmpl: 0 }),
            op(5, Some(6), take(None)),
        ];
        assert_eq!(verdict(&gone), Verdict::Linearizable);
        // But not one invoked after the take that found nothing.
        let late = [
            op(0, Some(1), out(1, 0)),
            op(5, Some(6), take(None)),
            op(7, None, MOp::TakeAny { tmpl: 0 }),
        ];
        assert_eq!(verdict(&late), Verdict::NotLinearizable);
        // An unobserved info cas explains a cas that found a match.
        let cas = [
            op(
                0,
                None,
                MOp::MaybeCas {
                    guard: 0,
                    content: 0,
                },
            ),
            op(3, Some(4), MOp::CasMatched { guard: 0 }),
        ];
        assert_eq!(verdict(&cas), Verdict::Linearizable);
        assert_eq!(
            verdict(&[op(3, Some(4), MOp::CasMatched { guard: 0 })]),
            Verdict::NotLinearizable
        );
    }

    #[test]
    fn the_budget_gives_unknown() {
        // Concurrent outs and info takes, then an impossible take: refuting it means trying
        // the info takes at every point.
        let mut ops: Vec<LinOp> = Vec::new();
        for i in 0..6 {
            ops.push(op(i, Some(100), out(i + 1, 0)));
            ops.push(op(i, None, MOp::TakeAny { tmpl: 0 }));
        }
        ops.push(op(200, Some(201), take(Some((99, 0)))));
        ops.sort_by_key(|o| o.inv);
        assert_eq!(search(&ops, &tables(), 20).0, Verdict::Unknown);
        let (v, steps) = search(&ops, &tables(), 10_000_000);
        assert_eq!(v, Verdict::NotLinearizable);
        assert!(steps > 20);
    }

    #[test]
    fn concurrent_reads_do_not_blow_up() {
        // Many concurrent reads of nothing, then an impossible op: read-only ops are
        // linearized greedily, so this fails fast instead of trying 2^40 subsets.
        let mut ops: Vec<LinOp> = (0..40)
            .map(|i| {
                op(
                    i,
                    Some(100),
                    MOp::Read {
                        tmpl: 0,
                        after: 0,
                        res: None,
                    },
                )
            })
            .collect();
        ops.push(op(200, Some(201), take(Some((9, 0)))));
        let (v, steps) = search(&ops, &tables(), 10_000);
        assert_eq!(v, Verdict::NotLinearizable);
        assert!(steps < 1_000, "{steps}");
    }

    #[test]
    fn keys_come_from_the_first_two_literal_fields() {
        let t: Tuple = r#"("k", 3, 17)"#.parse().unwrap();
        let tpl: Template = r#"("k", 3, ?int)"#.parse().unwrap();
        let loose: Template = r#"("k", _, ?int)"#.parse().unwrap();
        assert_eq!(Key::of_tuple(&t), Key::of_template(&tpl));
        assert_eq!(Key::of_template(&loose), Key::Other);
        assert_eq!(Key::of_tuple(&"(1)".parse().unwrap()), Key::Other);
    }
}
