//! The state machine: the tuple space, exactly-once client sessions and the applied index.
//!
//! Every committed [`Command`] is applied here, in log order, on every replica. Time is read only
//! from the commands' stamps (the machine clock is the highest stamp seen), so TTLs, waiter
//! deadlines and session expiry come out the same on every replica.
//!
//! # Exactly once
//!
//! Raft alone is at-least-once: a client that times out and retries may get its command into the
//! log twice. Each client therefore has a session (a random id it picks) and numbers its requests.
//! The machine keeps, per session, the response of every request the client has not yet
//! acknowledged; a request seen again gets that recorded response and is not applied again. A
//! blocking `in` records the waiter it registered, so a retry that arrives while it waits — even
//! through another node, after a leader change — attaches to the same waiter and gets the tuple it
//! took. A session is created by its first request (seq 1); a later request of an unknown or
//! expired session is refused and not applied. Sessions expire after [`SESSION_TTL_MS`] of log
//! time without a request.

// The error side of these results is the answer sent to the client, built once and moved along;
// boxing it would only add an allocation to the error path.
#![allow(clippy::result_large_err)]

mod access;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};

use prost::Message;
use tuplespace::{Millis, Query, Space, Template, Tuple, TupleId, Wait, WaiterId, codec};

use crate::answer::{self, error, id_tuple};
use crate::proto::{
    self, Command, MachineState, SessionResult, SessionState, TupleList, command, error::Code,
    response, session_result,
};

/// Log time after which a session that sent nothing expires.
pub const SESSION_TTL_MS: Millis = 30 * 60 * 1000;

/// The longest a blocking operation may wait. Shorter than [`SESSION_TTL_MS`], so a session never
/// expires while one of its requests waits.
pub const MAX_WAIT_MS: Millis = 10 * 60 * 1000;

/// Responses kept per session for requests the client has not acknowledged; a client that never
/// acknowledges loses the oldest beyond this (a retry of a lost one is refused, never applied
/// again).
const MAX_RESULTS_PER_SESSION: usize = 64;

/// Bytes of responses kept per session (the same rule as [`MAX_RESULTS_PER_SESSION`]).
pub const MAX_SESSION_RESULT_BYTES: usize = 4 << 20;

/// Sessions kept at once; a new one beyond this ends the one idle longest (decided in the log,
/// so every replica ends the same one).
pub const MAX_SESSIONS: usize = 100_000;

/// Blocking `in`s one session may have waiting at once.
pub const MAX_WAITERS_PER_SESSION: usize = 16;

/// Blocking `in`s waiting at once, over all sessions.
pub const MAX_WAITERS: usize = 100_000;

/// What a machine state in the streamed format starts with ([`MachineView::encode_to`]). The
/// older format, a bare [`MachineState`], cannot start so: its first byte is the key of a field
/// numbered 1 to 9, and `R` would be field 10.
pub const MACHINE_MAGIC: &[u8; 8] = b"RNMACH02";

/// The most bytes the part of a machine state other than the space may take in the streamed
/// format (the sessions, members and policy: far less in practice).
pub const MAX_STATE_BYTES: u64 = 1 << 30;

/// The most bytes of tuples one copy-collect or collect answers with (it says it was cut short).
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// The space's caps unless the cluster file's `[limits]` say otherwise.
pub const DEFAULT_LIMITS: proto::SpaceLimits = proto::SpaceLimits {
    max_tuples: 20_000_000,
    max_bytes: 8 << 30,
};

/// A response for the client request `(session, seq)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The client's session.
    pub session: u64,
    /// The request's number in that session.
    pub seq: u64,
    /// What to answer.
    pub result: response::Result,
}

/// What applying one entry produced.
#[derive(Debug, Default)]
pub struct Applied {
    /// Responses now known, for whichever node holds the client's request.
    pub completions: Vec<Completion>,
    /// Tuples written by this entry (stored or handed straight to a waiter), for blocked `rd`s;
    /// collected only when asked for (copying every tuple on every replica would be waste).
    pub outs: Vec<(TupleId, Tuple)>,
    /// Whether to fill `outs`.
    collect_outs: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Done(response::Result),
    Waiting(WaiterId),
}

#[derive(Clone, Debug, Default)]
struct Session {
    /// Log time of its latest request.
    last_active: Millis,
    /// The client holds every response numbered up to here.
    acked: u64,
    /// Outcomes of requests not yet acknowledged.
    results: BTreeMap<u64, Outcome>,
    /// Encoded bytes of the finished results held.
    bytes: usize,
    /// Results numbered up to here were dropped unacknowledged.
    forgotten: u64,
    /// The user it belongs to ("" for anonymous writes).
    user: String,
}

fn outcome_bytes(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Done(result) => proto::Response {
            result: Some(result.clone()),
            ..Default::default()
        }
        .encoded_len(),
        Outcome::Waiting(_) => 0,
    }
}

/// The replicated state: what every replica holds identically after applying the same log.
#[derive(Debug, Default)]
pub struct Machine {
    /// The tuples and blocked `in`s.
    space: Space,
    /// Client sessions by id.
    sessions: HashMap<u64, Session>,
    /// Sessions by last activity, to expire the idle ones in order.
    by_activity: BTreeSet<(Millis, u64)>,
    /// Which request each waiter answers.
    waiter_owner: HashMap<WaiterId, (u64, u64)>,
    /// The index and term of the last applied entry.
    applied_index: u64,
    applied_term: u64,
    /// Members and their addresses as the log last set them (membership changes keep this).
    members: Vec<proto::Member>,
    /// Every node id the log has removed. Ids are never reused: a node wiped and added again
    /// under its old id has forgotten its vote, and could vote twice in one term.
    removed_ids: BTreeSet<u64>,
    /// The cluster this state belongs to, as the founding entries name it (0: not seen yet).
    cluster_id: u64,
    /// The space's caps, as the log last set them.
    limits: Option<proto::SpaceLimits>,
    /// The access policy, as the log last set it (`None`: the default policy).
    policy: Option<proto::Policy>,
    /// Registered users' public keys, mirroring the space's `("user", name, key)` tuples.
    users: HashMap<String, Vec<u8>>,
}

/// A take's or read's answer from an owned result.
fn found(item: Option<(TupleId, Tuple)>) -> response::Result {
    answer::found(item.as_ref().map(|(id, t)| (*id, t)))
}

/// Decodes a template from the wire, or the error to answer.
pub fn decode_template(bytes: &[u8]) -> Result<Template, response::Result> {
    if bytes.len() > crate::MAX_TUPLE_BYTES {
        return Err(error(Code::TooLarge, too_large("template", bytes.len())));
    }
    codec::decode_template(bytes).map_err(|e| error(Code::Invalid, format!("bad template: {e}")))
}

/// Decodes a tuple from the wire, or the error to answer.
pub fn decode_tuple(bytes: &[u8]) -> Result<Tuple, response::Result> {
    if bytes.len() > crate::MAX_TUPLE_BYTES {
        return Err(error(Code::TooLarge, too_large("tuple", bytes.len())));
    }
    codec::decode_tuple(bytes).map_err(|e| error(Code::Invalid, format!("bad tuple: {e}")))
}

fn too_large(what: &str, len: usize) -> String {
    format!(
        "{what} of {len} bytes exceeds the limit of {} bytes",
        crate::MAX_TUPLE_BYTES
    )
}

/// How many of `found` (in order) fit in one response of [`MAX_RESPONSE_BYTES`] (at least one),
/// and whether that cut the list short.
fn fitting(found: Vec<(TupleId, &Tuple)>) -> (usize, bool) {
    let mut bytes = 0usize;
    for (i, (_, t)) in found.iter().enumerate() {
        bytes += codec::tuple_len(t) + 16;
        if bytes > MAX_RESPONSE_BYTES && i > 0 {
            return (i, true);
        }
    }
    (found.len(), false)
}

/// A copy-collect's answer from owned tuples (a view's scan), cut at [`MAX_RESPONSE_BYTES`].
pub fn fitting_view(found: Vec<(TupleId, Tuple)>) -> TupleList {
    let (fit, truncated) = fitting(found.iter().map(|(id, t)| (*id, t)).collect());
    TupleList {
        items: found[..fit]
            .iter()
            .map(|(id, t)| id_tuple(*id, t))
            .collect(),
        truncated,
    }
}

fn ttl(ms: u64) -> Option<Millis> {
    (ms > 0).then_some(ms)
}

impl Machine {
    /// An empty machine.
    pub fn new() -> Machine {
        Machine::default()
    }

    /// The space, for reads.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Puts `n` tuples of about 100 bytes in the space (for tests that need a large state).
    #[cfg(test)]
    pub(crate) fn fill_for_tests(&mut self, n: usize) {
        for i in 0..n {
            let payload = format!("{i:0>80}");
            let tuple = tuplespace::tuple!["fill", i as i64, payload.as_str()];
            self.space.out(tuple, None);
        }
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The term of the last applied entry.
    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    /// How many sessions are open.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Members and their addresses as the log last set them.
    pub fn members(&self) -> &[proto::Member] {
        &self.members
    }

    /// The space's caps in force.
    pub fn limits(&self) -> proto::SpaceLimits {
        self.limits.unwrap_or(DEFAULT_LIMITS)
    }

    /// The cluster id the founding entries named (0: not known).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Records the cluster id the founding entries name.
    pub fn set_cluster_id(&mut self, id: u64) {
        self.cluster_id = id;
    }

    /// Records node ids that a membership change entry removes.
    pub fn note_removed(&mut self, ids: impl IntoIterator<Item = u64>) {
        self.removed_ids.extend(ids);
    }

    /// Whether the log has ever removed node `id`.
    pub fn was_removed(&self, id: u64) -> bool {
        self.removed_ids.contains(&id)
    }

    /// Replaces the member list (applied from a membership change).
    pub fn set_members(&mut self, members: Vec<proto::Member>) {
        self.members = members;
    }

    /// Records that an entry without a command (leader no-op, membership change) was applied.
    pub fn mark_applied(&mut self, index: u64, term: u64) {
        self.applied_index = index;
        self.applied_term = term;
    }

    /// Applies one committed command. Undecodable data is skipped the same way on every replica.
    /// With `collect_outs`, the tuples it writes come back in [`Applied::outs`] (for blocked
    /// `rd`s waiting on this node).
    pub fn apply(
        &mut self,
        index: u64,
        term: u64,
        data: &[u8],
        collect_outs: bool,
    ) -> Result<Applied, String> {
        self.mark_applied(index, term);
        let cmd = Command::decode(data).map_err(|e| format!("undecodable command: {e}"))?;
        Ok(self.apply_command(cmd, collect_outs))
    }

    fn apply_command(&mut self, cmd: Command, collect_outs: bool) -> Applied {
        let mut applied = Applied {
            collect_outs,
            ..Applied::default()
        };
        self.advance(cmd.stamp_ms, &mut applied);
        let Some(op) = cmd.op else {
            return applied;
        };
        let (session, seq) = (cmd.session, cmd.seq);
        match op {
            command::Op::Tick(_) => return applied,
            command::Op::SetLimits(limits) => {
                self.limits = Some(limits);
                return applied;
            }
            command::Op::Cancel(cancel) => {
                let result = match self.authenticate(&cmd.user, &cmd.public_key, &op) {
                    Ok(()) => self.cancel(session, cancel.seq, &cmd.user, &mut applied),
                    Err(result) => result,
                };
                applied.completions.push(Completion {
                    session,
                    seq: 0,
                    result,
                });
                return applied;
            }
            _ => {}
        }
        if let Err(result) = self.authenticate(&cmd.user, &cmd.public_key, &op) {
            // Not recorded in the session: nobody can poison another's request numbers.
            applied.completions.push(Completion {
                session,
                seq,
                result,
            });
            return applied;
        }
        match self.admit(session, seq, cmd.ack, &cmd.user) {
            Admit::Apply => {
                // An expired signed write is refused, not recorded.
                if let Err(result) = self.fresh(&cmd.user, cmd.not_after_ms) {
                    applied.completions.push(Completion {
                        session,
                        seq,
                        result,
                    });
                    return applied;
                }
            }
            Admit::Answer(result) => {
                applied.completions.push(Completion {
                    session,
                    seq,
                    result: *result,
                });
                return applied;
            }
            Admit::StillWaiting => return applied,
        }
        let outcome = self.apply_op(op, (session, seq), &cmd.user, &mut applied);
        if let Outcome::Done(result) = &outcome {
            applied.completions.push(Completion {
                session,
                seq,
                result: result.clone(),
            });
        }
        self.record(session, seq, outcome);
        applied
    }

    /// Moves the clock and expires tuples, waiters and idle sessions.
    fn advance(&mut self, stamp: Millis, applied: &mut Applied) {
        let expired = self.space.advance(stamp);
        for waiter in expired.waiters {
            if let Some((session, seq)) = self.waiter_owner.remove(&waiter) {
                let result = error(Code::TimedOut, "no matching tuple before the timeout");
                self.finish(session, seq, result.clone());
                applied.completions.push(Completion {
                    session,
                    seq,
                    result,
                });
            }
        }
        let now = self.space.now();
        while let Some(&(last, id)) = self.by_activity.first() {
            if last.saturating_add(SESSION_TTL_MS) > now {
                break;
            }
            self.by_activity.pop_first();
            if let Some(session) = self.sessions.remove(&id) {
                for outcome in session.results.values() {
                    if let Outcome::Waiting(w) = outcome {
                        self.waiter_owner.remove(w);
                        self.space.cancel(*w);
                    }
                }
            }
        }
    }

    fn admit(&mut self, session: u64, seq: u64, ack: u64, user: &str) -> Admit {
        let now = self.space.now();
        if session == 0 || seq == 0 {
            return Admit::Answer(Box::new(error(
                Code::Invalid,
                "writes need a session id and a sequence number from 1",
            )));
        }
        if seq == 1 && !self.sessions.contains_key(&session) && !self.make_room_for_a_session() {
            return Admit::Answer(Box::new(error(
                Code::Limit,
                format!(
                    "{MAX_SESSIONS} sessions are open and none has been idle for 15 minutes; \
                     retry later"
                ),
            )));
        }
        let entry = match self.sessions.get_mut(&session) {
            Some(s) if s.user != user => {
                return Admit::Answer(Box::new(error(
                    Code::PermissionDenied,
                    format!("session {session:016x} belongs to another user"),
                )));
            }
            Some(s) => s,
            None if seq == 1 => self.sessions.entry(session).or_insert_with(|| Session {
                user: user.to_string(),
                ..Session::default()
            }),
            None => {
                return Admit::Answer(Box::new(error(
                    Code::SessionExpired,
                    format!(
                        "session {session:016x} is unknown or expired; request {seq} was not \
                         applied (start a new session and retry)"
                    ),
                )));
            }
        };
        self.by_activity.remove(&(entry.last_active, session));
        entry.last_active = now;
        self.by_activity.insert((now, session));
        if ack > entry.acked {
            entry.acked = ack;
            // A waiting request cannot have been received: it stays (and counts) until answered.
            let mut freed = 0;
            entry.results.retain(|&s, o| {
                let keep = s > ack || matches!(o, Outcome::Waiting(_));
                if !keep {
                    freed += outcome_bytes(o);
                }
                keep
            });
            entry.bytes = entry.bytes.saturating_sub(freed);
        }
        if let Some(outcome) = entry.results.get(&seq) {
            return match outcome {
                Outcome::Done(result) => Admit::Answer(Box::new(result.clone())),
                Outcome::Waiting(_) => Admit::StillWaiting,
            };
        }
        if seq <= entry.acked {
            return Admit::Answer(Box::new(error(
                Code::Invalid,
                format!("request {seq} of session {session:016x} was already acknowledged"),
            )));
        }
        if seq <= entry.forgotten {
            return Admit::Answer(Box::new(error(
                Code::SessionExpired,
                format!(
                    "the result of request {seq} of session {session:016x} was not kept (too \
                     many unacknowledged results): it may have been applied; not applied again"
                ),
            )));
        }
        Admit::Apply
    }

    /// At the session cap, ends the session idle longest (its waiters are cancelled).
    /// Whether a new session may open. At the cap, ends the session idle longest (its waiters
    /// are cancelled) — but never one active within the last 15 minutes of cluster time, the
    /// longest a signed write stays valid: a recorded write must never find its session gone
    /// while it could still be applied.
    fn make_room_for_a_session(&mut self) -> bool {
        if self.sessions.len() < MAX_SESSIONS {
            return true;
        }
        let now = self.space.now();
        match self.by_activity.first() {
            Some(&(last, id))
                if last.saturating_add(crate::identity::MAX_WRITE_VALIDITY_MS) <= now =>
            {
                self.by_activity.pop_first();
                self.end_session(id);
                true
            }
            _ => false,
        }
    }

    /// Forgets a session and cancels its waiters.
    fn end_session(&mut self, id: u64) {
        if let Some(session) = self.sessions.remove(&id) {
            for outcome in session.results.values() {
                if let Outcome::Waiting(w) = outcome {
                    self.waiter_owner.remove(w);
                    self.space.cancel(*w);
                }
            }
        }
    }

    /// Cancels the blocking `in` numbered `seq` of `session` if it still waits.
    fn cancel(
        &mut self,
        session: u64,
        seq: u64,
        user: &str,
        applied: &mut Applied,
    ) -> response::Result {
        let outcome = self
            .sessions
            .get(&session)
            .filter(|s| s.user == user)
            .and_then(|s| s.results.get(&seq));
        let w = match outcome {
            Some(Outcome::Waiting(w)) => *w,
            // Cancelled already (its client's connection closed, and the endpoint cancelled it
            // first): the answer is the same, it took nothing.
            Some(Outcome::Done(response::Result::Error(e))) if e.code == Code::Cancelled as i32 => {
                return response::Result::Count(1);
            }
            _ => return response::Result::Count(0),
        };
        self.space.cancel(w);
        self.waiter_owner.remove(&w);
        let result = error(Code::Cancelled, "the blocking in was cancelled");
        self.finish(session, seq, result.clone());
        applied.completions.push(Completion {
            session,
            seq,
            result,
        });
        response::Result::Count(1)
    }

    fn record(&mut self, session: u64, seq: u64, outcome: Outcome) {
        if let Some(entry) = self.sessions.get_mut(&session) {
            entry.bytes += outcome_bytes(&outcome);
            entry.results.insert(seq, outcome);
            Self::bound_results(entry);
        }
    }

    /// Drops the oldest finished results while the session holds too many (or too many bytes);
    /// never a waiting one (its waiter still owns it). Retries of dropped ones are refused.
    fn bound_results(entry: &mut Session) {
        while entry.results.len() > MAX_RESULTS_PER_SESSION
            || entry.bytes > MAX_SESSION_RESULT_BYTES
        {
            let oldest_done = entry
                .results
                .iter()
                .find(|(_, o)| matches!(o, Outcome::Done(_)))
                .map(|(&s, _)| s);
            let Some(s) = oldest_done else { break };
            if let Some(dropped) = entry.results.remove(&s) {
                entry.bytes = entry.bytes.saturating_sub(outcome_bytes(&dropped));
                entry.forgotten = entry.forgotten.max(s);
            }
        }
    }

    /// A waiting request got its answer.
    fn finish(&mut self, session: u64, seq: u64, result: response::Result) {
        if let Some(entry) = self.sessions.get_mut(&session) {
            let outcome = Outcome::Done(result);
            entry.bytes += outcome_bytes(&outcome);
            entry.results.insert(seq, outcome);
            Self::bound_results(entry);
        }
    }

    fn apply_op(
        &mut self,
        op: command::Op,
        me: (u64, u64),
        user: &str,
        applied: &mut Applied,
    ) -> Outcome {
        if let Err(result) = self.authorize(&op, user) {
            return Outcome::Done(result);
        }
        match self.try_apply_op(op, me, user, applied) {
            Ok(outcome) => outcome,
            Err(result) => Outcome::Done(result),
        }
    }

    fn try_apply_op(
        &mut self,
        op: command::Op,
        me: (u64, u64),
        user: &str,
        applied: &mut Applied,
    ) -> Result<Outcome, response::Result> {
        Ok(match op {
            command::Op::Out(out) => {
                let tuple = decode_tuple(&out.tuple)?;
                self.check_room(out.tuple.len())?;
                let id = self.out(tuple, ttl(out.ttl_ms), applied);
                Outcome::Done(response::Result::OutId(id))
            }
            command::Op::Cas(cas) => {
                let template = decode_template(&cas.template)?;
                let tuple = decode_tuple(&cas.tuple)?;
                let id = if self.space.rdp(&template, 0).is_some() {
                    0
                } else {
                    self.check_room(cas.tuple.len())?;
                    self.out(tuple, ttl(cas.ttl_ms), applied)
                };
                Outcome::Done(response::Result::CasId(id))
            }
            command::Op::In(take) => {
                let template = decode_template(&take.template)?;
                if !take.block {
                    return Ok(Outcome::Done(found(self.space.inp(&template))));
                }
                self.check_waiters(me.0)?;
                let timeout = take.timeout_ms.min(MAX_WAIT_MS);
                match self.space.in_or_wait(template, Some(timeout)) {
                    Wait::Ready(item) => Outcome::Done(found(Some(item))),
                    Wait::Waiting(w) => {
                        self.waiter_owner.insert(w, me);
                        Outcome::Waiting(w)
                    }
                }
            }
            command::Op::InAll(all) => {
                let template = decode_template(&all.template)?;
                let limit = if all.limit == 0 {
                    usize::MAX
                } else {
                    all.limit as usize
                };
                // As many as fit in a response (the same ones on every replica).
                let (fit, truncated) = fitting(self.space.rd_all(&template, &Query::limit(limit)));
                let items = self.space.in_all(&template, fit);
                Outcome::Done(response::Result::Tuples(TupleList {
                    items: items.iter().map(|(id, t)| id_tuple(*id, t)).collect(),
                    truncated,
                }))
            }
            command::Op::TakeId(take) => {
                let item = self.space.take_id(take.id).map(|t| (take.id, t));
                Outcome::Done(found(item))
            }
            command::Op::Register(r) => Outcome::Done(self.register(r, user, applied)?),
            command::Op::RotateKey(r) => Outcome::Done(self.rotate_key(r, user, applied)?),
            command::Op::ResetKey(r) => Outcome::Done(self.reset_key(r, user, applied)?),
            command::Op::SetPolicy(p) => Outcome::Done(self.set_policy(p, user)?),
            command::Op::Tick(_) | command::Op::Cancel(_) | command::Op::SetLimits(_) => {
                Outcome::Done(response::Result::Count(0))
            }
        })
    }

    /// Refuses a tuple of `len` encoded bytes that the space's caps have no room for.
    fn check_room(&self, len: usize) -> Result<(), response::Result> {
        let limits = self.limits();
        let (tuples, bytes) = (self.space.len() as u64, self.space.bytes());
        if tuples >= limits.max_tuples || bytes.saturating_add(len as u64) > limits.max_bytes {
            return Err(error(
                Code::Limit,
                format!(
                    "the space is full: {tuples} tuples, {bytes} bytes (the cluster's limits: \
                     {} tuples, {} bytes); take some out, or raise [limits] in the cluster file",
                    limits.max_tuples, limits.max_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a blocking `in` beyond the waiter caps.
    fn check_waiters(&self, session: u64) -> Result<(), response::Result> {
        let mine = self.sessions.get(&session).map_or(0, |s| {
            s.results
                .values()
                .filter(|o| matches!(o, Outcome::Waiting(_)))
                .count()
        });
        if mine >= MAX_WAITERS_PER_SESSION {
            return Err(error(
                Code::Limit,
                format!(
                    "this session already has {mine} blocking ins waiting (the limit is \
                     {MAX_WAITERS_PER_SESSION})"
                ),
            ));
        }
        if self.space.waiter_count() >= MAX_WAITERS {
            return Err(error(
                Code::Limit,
                format!("{MAX_WAITERS} blocking ins are waiting already (the cluster's limit)"),
            ));
        }
        Ok(())
    }

    /// `out`, handing the tuple to the oldest blocked `in` if one matches.
    fn out(&mut self, tuple: Tuple, ttl: Option<Millis>, applied: &mut Applied) -> TupleId {
        // A copy is needed only if a blocked `in` may take the tuple (its answer carries it) or
        // blocked `rd`s on this node want to see it.
        let keep = (applied.collect_outs || self.space.waiter_count() > 0).then(|| tuple.clone());
        let outcome = self.space.out(tuple, ttl);
        if let Some(waiter) = outcome.taken_by
            && let Some((session, seq)) = self.waiter_owner.remove(&waiter)
        {
            let result = found(keep.clone().map(|t| (outcome.id, t)));
            self.finish(session, seq, result.clone());
            applied.completions.push(Completion {
                session,
                seq,
                result,
            });
        }
        if applied.collect_outs
            && let Some(t) = keep
        {
            applied.outs.push((outcome.id, t));
        }
        outcome.id
    }

    /// The earliest log time at which a tuple or waiter expires: the leader proposes a tick then.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.space.next_deadline()
    }

    /// The clock.
    pub fn now(&self) -> Millis {
        self.space.now()
    }

    /// A linearizable copy-collect's answer, computed on the local state once it is current: at
    /// most [`MAX_RESPONSE_BYTES`] of tuples (`truncated` says it stopped there).
    pub fn rd_all(&self, template: &Template, query: &Query) -> TupleList {
        self.rd_any(std::slice::from_ref(template), query)
    }

    /// A linearizable union copy-collect's answer (tuples matching any of `templates`), like
    /// [`Machine::rd_all`]'s.
    pub fn rd_any(&self, templates: &[Template], query: &Query) -> TupleList {
        self.rd_join(templates, None, query).unwrap_or_default()
    }

    /// A linearizable union copy-collect of `templates` and those `join` yields, like
    /// [`Machine::rd_all`]'s; a join whose source matches too many tuples is refused.
    pub fn rd_join(
        &self,
        templates: &[Template],
        join: Option<&tuplespace::union::Join>,
        query: &Query,
    ) -> Result<TupleList, tuplespace::union::JoinError> {
        let found = match join {
            Some(join) => self.space.rd_join(templates, join, query)?,
            None => self.space.rd_any(templates, query),
        };
        let (fit, truncated) = fitting(found.iter().map(|(id, t)| (*id, *t)).collect());
        Ok(TupleList {
            items: found[..fit]
                .iter()
                .map(|(id, t)| id_tuple(*id, t))
                .collect(),
            truncated,
        })
    }

    /// The whole state as bytes, for a snapshot.
    pub fn encode(&self) -> Vec<u8> {
        self.view().encode()
    }

    /// A consistent view of the whole state, cheap to take (the space's pages are shared
    /// copy-on-write, the rest is small): encode it on another thread while the machine goes on.
    pub fn view(&self) -> MachineView {
        MachineView {
            state: self.state_without_space(),
            space: self.space.view(),
        }
    }

    /// Everything but the space, as the snapshot holds it.
    fn state_without_space(&self) -> MachineState {
        let mut sessions: Vec<SessionState> = self
            .sessions
            .iter()
            .map(|(&id, s)| SessionState {
                id,
                last_active_ms: s.last_active,
                acked: s.acked,
                forgotten: s.forgotten,
                user: s.user.clone(),
                results: s
                    .results
                    .iter()
                    .map(|(&seq, o)| SessionResult {
                        seq,
                        state: Some(match o {
                            Outcome::Done(r) => session_result::State::Done(proto::Response {
                                result: Some(r.clone()),
                                ..Default::default()
                            }),
                            Outcome::Waiting(w) => session_result::State::Waiting(*w),
                        }),
                    })
                    .collect(),
            })
            .collect();
        sessions.sort_by_key(|s| s.id);
        MachineState {
            applied_index: self.applied_index,
            applied_term: self.applied_term,
            space: Vec::new(),
            sessions,
            members: self.members.clone(),
            removed_ids: self.removed_ids.iter().copied().collect(),
            cluster_id: self.cluster_id,
            limits: self.limits,
            policy: self.policy.clone(),
        }
    }

    /// A machine from [`Machine::encode`]'s bytes (or those of the format before it); anything
    /// else is refused.
    pub fn decode(bytes: &[u8]) -> Result<Machine, String> {
        Machine::decode_from(&mut &bytes[..], bytes.len() as u64)
    }

    /// A machine from the bytes [`MachineView::encode_to`] wrote, read from `r` with the space
    /// streamed through a bounded window (see [`Space::decode_from`]); `max_bytes` bounds the
    /// input's length (a file's size, say), and `r` must end where the state does. Input that
    /// does not start with [`MACHINE_MAGIC`] is taken for the older format (a whole
    /// [`MachineState`] with the space inside) and read into memory, up to `max_bytes`.
    pub fn decode_from<R: Read + ?Sized>(r: &mut R, max_bytes: u64) -> Result<Machine, String> {
        let mut head = [0u8; MACHINE_MAGIC.len()];
        let got = read_up_to(r, &mut head)?;
        if got < head.len() || &head != MACHINE_MAGIC {
            return Machine::decode_whole(&head[..got], r, max_bytes);
        }
        let mut len = [0u8; 4];
        r.read_exact(&mut len)
            .map_err(|e| format!("reading the machine state's length: {e}"))?;
        let len = u64::from(u32::from_le_bytes(len));
        let header = (MACHINE_MAGIC.len() + 4) as u64;
        if len > max_bytes.saturating_sub(header) || len > MAX_STATE_BYTES {
            return Err(format!(
                "a machine state of {len} bytes in at most {max_bytes} (or over the {MAX_STATE_BYTES}-byte cap)"
            ));
        }
        // Grown as the bytes arrive: a length that lies costs no more than the input holds.
        let mut bytes = Vec::with_capacity(len.min(1 << 20) as usize);
        Read::take(&mut *r, len)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the machine state: {e}"))?;
        if bytes.len() as u64 != len {
            return Err(format!(
                "machine state truncated: {} of {len} bytes",
                bytes.len()
            ));
        }
        let state = MachineState::decode(&bytes[..])
            .map_err(|e| format!("undecodable machine state: {e}"))?;
        drop(bytes);
        if !state.space.is_empty() {
            return Err("a streamed machine state with a space inside".into());
        }
        let space = Space::decode_from(r, max_bytes.saturating_sub(header + len))
            .map_err(|e| format!("bad space: {e}"))?;
        Machine::from_parts(state, space)
    }

    /// The older format: a [`MachineState`] holding the space's encoding, `head` and then the
    /// rest of `r`.
    fn decode_whole<R: Read + ?Sized>(
        head: &[u8],
        r: &mut R,
        max_bytes: u64,
    ) -> Result<Machine, String> {
        let mut bytes = head.to_vec();
        let rest = max_bytes.saturating_sub(head.len() as u64);
        Read::take(&mut *r, rest.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the machine state: {e}"))?;
        if bytes.len() as u64 > max_bytes {
            return Err(format!("machine state longer than {max_bytes} bytes"));
        }
        let mut state = MachineState::decode(&bytes[..])
            .map_err(|e| format!("undecodable machine state: {e}"))?;
        drop(bytes);
        let space_bytes = std::mem::take(&mut state.space);
        let space = Space::decode(&space_bytes).map_err(|e| format!("bad space: {e}"))?;
        drop(space_bytes);
        Machine::from_parts(state, space)
    }

    /// A machine from its decoded parts: everything but the space, and the space.
    fn from_parts(state: MachineState, space: Space) -> Result<Machine, String> {
        let mut m = Machine {
            space,
            applied_index: state.applied_index,
            applied_term: state.applied_term,
            members: state.members,
            removed_ids: state.removed_ids.into_iter().collect(),
            cluster_id: state.cluster_id,
            limits: state.limits,
            policy: state.policy,
            ..Machine::default()
        };
        m.users = access::users_in(&m.space);
        for s in state.sessions {
            let mut session = Session {
                last_active: s.last_active_ms,
                acked: s.acked,
                results: BTreeMap::new(),
                bytes: 0,
                forgotten: s.forgotten,
                user: s.user,
            };
            for r in s.results {
                let outcome = match r.state {
                    Some(session_result::State::Done(resp)) => Outcome::Done(
                        resp.result
                            .ok_or("a finished session result without a response")?,
                    ),
                    Some(session_result::State::Waiting(w)) => {
                        if m.space.waiter(w).is_none() {
                            return Err(format!("session result waits on unknown waiter {w}"));
                        }
                        m.waiter_owner.insert(w, (s.id, r.seq));
                        Outcome::Waiting(w)
                    }
                    None => return Err("a session result without a state".into()),
                };
                session.bytes += outcome_bytes(&outcome);
                session.results.insert(r.seq, outcome);
            }
            m.by_activity.insert((session.last_active, s.id));
            if m.sessions.insert(s.id, session).is_some() {
                return Err(format!("session {} appears twice", s.id));
            }
        }
        Ok(m)
    }
}

/// The machine's state as it was when [`Machine::view`] took it.
#[derive(Clone, Debug)]
pub struct MachineView {
    state: MachineState,
    space: tuplespace::SpaceView,
}

impl MachineView {
    /// The index of the last entry the view includes.
    pub fn applied_index(&self) -> u64 {
        self.state.applied_index
    }

    /// The term of that entry.
    pub fn applied_term(&self) -> u64 {
        self.state.applied_term
    }

    /// The space as it was.
    pub fn space(&self) -> &tuplespace::SpaceView {
        &self.space
    }

    /// The bytes [`Machine::decode`] reads back (the space's part is most of the work: do it
    /// off the raft thread); what [`MachineView::encode_to`] writes.
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            MACHINE_MAGIC.len() + 4 + self.state.encoded_len() + 64 + self.space.len() * 64,
        );
        self.encode_to(&mut out)
            .expect("writing to a Vec does not fail");
        out
    }

    /// Writes the state to `w` as [`MACHINE_MAGIC`], the length of the rest of the state (u32,
    /// little-endian), the rest of the state (a [`MachineState`] with `space` empty), and then
    /// the space in its own encoding ([`tuplespace::SpaceView::encode_to`]), streamed a bounded
    /// chunk at a time: [`Machine::decode_from`] reads it back.
    pub fn encode_to<W: Write + ?Sized>(self, w: &mut W) -> std::io::Result<()> {
        debug_assert!(self.state.space.is_empty());
        let state = self.state.encode_to_vec();
        let len = u32::try_from(state.len())
            .ok()
            .filter(|&len| u64::from(len) <= MAX_STATE_BYTES)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the machine state without its space is {} bytes, over the {MAX_STATE_BYTES}-byte cap",
                        state.len()
                    ),
                )
            })?;
        w.write_all(MACHINE_MAGIC)?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(&state)?;
        drop(state);
        self.space.encode_to(w)
    }
}

/// Reads into `buf` until it is full or the input ends; how many bytes it read.
fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize, String> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n.min(buf.len() - got),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the machine state: {e}")),
        }
    }
    Ok(got)
}

enum Admit {
    Apply,
    Answer(Box<response::Result>),
    StillWaiting,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Cas, In, Out, TakeId, Tick};
    use tuplespace::tuple;

    struct Log {
        machine: Machine,
        index: u64,
    }

    impl Log {
        fn new() -> Self {
            // Anonymous writes: these tests are about the machine, not about who may write.
            let mut machine = Machine::new();
            machine.policy = Some(proto::Policy {
                anonymous_writes: true,
                ..crate::policy::default_policy()
            });
            Log { machine, index: 0 }
        }

        fn apply(&mut self, stamp: u64, session: u64, seq: u64, op: command::Op) -> Applied {
            self.index += 1;
            let cmd = Command {
                stamp_ms: stamp,
                session,
                seq,
                ack: seq.saturating_sub(1),
                op: Some(op),
                ..Default::default()
            };
            self.machine
                .apply(self.index, 1, &cmd.encode_to_vec(), true)
                .unwrap()
        }
    }

    fn out(t: Tuple) -> command::Op {
        command::Op::Out(Out {
            tuple: codec::tuple_to_bytes(&t),
            ttl_ms: 0,
        })
    }

    fn take(tpl: &str, block: bool, timeout_ms: u64) -> command::Op {
        command::Op::In(In {
            template: codec::template_to_bytes(&tpl.parse().unwrap()),
            block,
            timeout_ms,
        })
    }

    fn result(a: &Applied, session: u64, seq: u64) -> Option<&response::Result> {
        a.completions
            .iter()
            .find(|c| c.session == session && c.seq == seq)
            .map(|c| &c.result)
    }

    #[test]
    fn a_replayed_request_is_applied_once() {
        let mut log = Log::new();
        let first = log.apply(10, 7, 1, out(tuple!["x", 1]));
        let again = log.apply(11, 7, 1, out(tuple!["x", 1]));
        assert_eq!(result(&first, 7, 1), Some(&response::Result::OutId(1)));
        assert_eq!(result(&again, 7, 1), Some(&response::Result::OutId(1)));
        assert_eq!(log.machine.space().len(), 1);
        assert!(again.outs.is_empty(), "the duplicate wrote nothing");
    }

    #[test]
    fn an_unknown_session_past_its_first_request_is_refused() {
        let mut log = Log::new();
        let a = log.apply(10, 9, 5, out(tuple!["x"]));
        match result(&a, 9, 5) {
            Some(response::Result::Error(e)) => {
                assert_eq!(e.code, Code::SessionExpired as i32)
            }
            other => panic!("{other:?}"),
        }
        assert!(log.machine.space().is_empty());
    }

    #[test]
    fn sessions_expire_after_idle_log_time() {
        let mut log = Log::new();
        log.apply(0, 1, 1, out(tuple!["a"]));
        log.apply(SESSION_TTL_MS + 1, 2, 1, command::Op::Tick(Tick {}));
        assert_eq!(log.machine.session_count(), 0);
        let a = log.apply(SESSION_TTL_MS + 2, 1, 2, out(tuple!["b"]));
        assert!(matches!(result(&a, 1, 2), Some(response::Result::Error(_))));
        assert_eq!(log.machine.space().len(), 1);
    }

    #[test]
    fn a_blocked_in_is_answered_by_a_later_out_and_its_retry_gets_the_same_tuple() {
        let mut log = Log::new();
        let waiting = log.apply(10, 1, 1, take(r#"("job", ?int)"#, true, 1000));
        assert!(waiting.completions.is_empty());
        let retry_while_waiting = log.apply(20, 1, 1, take(r#"("job", ?int)"#, true, 1000));
        assert!(retry_while_waiting.completions.is_empty());
        let served = log.apply(30, 2, 1, out(tuple!["job", 5]));
        let expect = found(Some((1, tuple!["job", 5])));
        assert_eq!(result(&served, 1, 1), Some(&expect));
        assert_eq!(result(&served, 2, 1), Some(&response::Result::OutId(1)));
        assert!(log.machine.space().is_empty());
        let retry_after = log.apply(40, 1, 1, take(r#"("job", ?int)"#, true, 1000));
        assert_eq!(result(&retry_after, 1, 1), Some(&expect));
        assert!(log.machine.space().is_empty());
    }

    #[test]
    fn two_blocked_ins_one_tuple_one_winner_one_timeout() {
        let mut log = Log::new();
        log.apply(0, 1, 1, take(r#"("t")"#, true, 100));
        log.apply(0, 2, 1, take(r#"("t")"#, true, 100));
        let served = log.apply(10, 3, 1, out(tuple!["t"]));
        assert!(matches!(
            result(&served, 1, 1),
            Some(response::Result::Found(_))
        ));
        assert_eq!(result(&served, 2, 1), None);
        let tick = log.apply(100, 0, 0, command::Op::Tick(Tick {}));
        match result(&tick, 2, 1) {
            Some(response::Result::Error(e)) => assert_eq!(e.code, Code::TimedOut as i32),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_tuples_are_refused_identically() {
        let mut log = Log::new();
        let a = log.apply(
            0,
            1,
            1,
            command::Op::Out(Out {
                tuple: vec![0xff, 0xff],
                ttl_ms: 0,
            }),
        );
        match result(&a, 1, 1) {
            Some(response::Result::Error(e)) => assert_eq!(e.code, Code::Invalid as i32),
            other => panic!("{other:?}"),
        }
        assert!(log.machine.apply(99, 1, b"\xff\xff\xff", true).is_err());
    }

    #[test]
    fn cas_and_take_id() {
        let mut log = Log::new();
        let cas = |t: Tuple| {
            command::Op::Cas(Cas {
                template: codec::template_to_bytes(&r#"("lock", _)"#.parse().unwrap()),
                tuple: codec::tuple_to_bytes(&t),
                ttl_ms: 0,
            })
        };
        let a = log.apply(0, 1, 1, cas(tuple!["lock", "a"]));
        assert_eq!(result(&a, 1, 1), Some(&response::Result::CasId(1)));
        let b = log.apply(0, 1, 2, cas(tuple!["lock", "b"]));
        assert_eq!(result(&b, 1, 2), Some(&response::Result::CasId(0)));
        let c = log.apply(0, 1, 3, command::Op::TakeId(TakeId { id: 1 }));
        assert_eq!(
            result(&c, 1, 3),
            Some(&found(Some((1, tuple!["lock", "a"]))))
        );
    }

    fn code_of(r: Option<&response::Result>) -> Option<Code> {
        match r {
            Some(response::Result::Error(e)) => Code::try_from(e.code).ok(),
            _ => None,
        }
    }

    #[test]
    fn the_space_caps_refuse_outs_and_a_take_makes_room() {
        let mut log = Log::new();
        log.apply(
            0,
            0,
            0,
            command::Op::SetLimits(proto::SpaceLimits {
                max_tuples: 2,
                max_bytes: 1 << 20,
            }),
        );
        assert_eq!(log.machine.limits().max_tuples, 2);
        log.apply(0, 1, 1, out(tuple!["a"]));
        log.apply(0, 1, 2, out(tuple!["b"]));
        let full = log.apply(0, 1, 3, out(tuple!["c"]));
        assert_eq!(code_of(result(&full, 1, 3)), Some(Code::Limit));
        assert_eq!(log.machine.space().len(), 2);
        log.apply(0, 1, 4, take(r#"("a")"#, false, 0));
        let fits = log.apply(0, 1, 5, out(tuple!["c"]));
        assert!(matches!(
            result(&fits, 1, 5),
            Some(response::Result::OutId(_))
        ));
        // Bytes count too.
        log.apply(
            0,
            0,
            0,
            command::Op::SetLimits(proto::SpaceLimits {
                max_tuples: 100,
                max_bytes: 64,
            }),
        );
        let big = log.apply(0, 1, 6, out(tuple!["x".repeat(100)]));
        assert_eq!(code_of(result(&big, 1, 6)), Some(Code::Limit));
        // The caps travel in snapshots.
        let back = Machine::decode(&log.machine.encode()).unwrap();
        assert_eq!(back.limits().max_bytes, 64);
    }

    #[test]
    fn waiters_per_session_are_capped() {
        let mut log = Log::new();
        for seq in 1..=MAX_WAITERS_PER_SESSION as u64 {
            let w = log.apply(0, 1, seq, take(r#"("never")"#, true, 60_000));
            assert!(w.completions.is_empty(), "waiting");
        }
        let over = log.apply(0, 1, 99, take(r#"("never")"#, true, 60_000));
        assert_eq!(code_of(result(&over, 1, 99)), Some(Code::Limit));
        assert_eq!(log.machine.space().waiter_count(), MAX_WAITERS_PER_SESSION);
        // Another session is not held back by this one.
        let other = log.apply(0, 2, 1, take(r#"("never")"#, true, 60_000));
        assert!(other.completions.is_empty());
    }

    #[test]
    fn a_cancelled_in_takes_nothing() {
        let mut log = Log::new();
        log.apply(0, 1, 1, take(r#"("job", ?int)"#, true, 60_000));
        let cancel = log.apply(0, 1, 0, command::Op::Cancel(proto::Cancel { seq: 1 }));
        assert_eq!(code_of(result(&cancel, 1, 1)), Some(Code::Cancelled));
        assert_eq!(result(&cancel, 1, 0), Some(&response::Result::Count(1)));
        let served = log.apply(0, 2, 1, out(tuple!["job", 1]));
        assert_eq!(
            result(&served, 1, 1),
            None,
            "the cancelled waiter took nothing"
        );
        assert_eq!(log.machine.space().len(), 1);
        // A retry of the cancelled request answers what it came to; cancelling again (the
        // client's own cancel arriving after the endpoint's, when its connection closed) answers
        // that it was cancelled, and changes nothing.
        let again = log.apply(0, 1, 1, take(r#"("job", ?int)"#, true, 60_000));
        assert_eq!(code_of(result(&again, 1, 1)), Some(Code::Cancelled));
        let twice = log.apply(0, 1, 0, command::Op::Cancel(proto::Cancel { seq: 1 }));
        assert_eq!(result(&twice, 1, 0), Some(&response::Result::Count(1)));
        assert_eq!(log.machine.space().len(), 1);
        // A request that finished otherwise is not reported cancelled.
        log.apply(0, 1, 2, take(r#"("job", ?int)"#, false, 0));
        let late = log.apply(0, 1, 0, command::Op::Cancel(proto::Cancel { seq: 2 }));
        assert_eq!(result(&late, 1, 0), Some(&response::Result::Count(0)));
    }

    #[test]
    fn forgotten_results_are_refused_never_applied_again() {
        let mut log = Log::new();
        // A client that never acknowledges: its oldest results are dropped past the bound.
        for seq in 1..=(MAX_RESULTS_PER_SESSION as u64 + 5) {
            let cmd = Command {
                stamp_ms: 0,
                session: 9,
                seq,
                ack: 0,
                op: Some(out(tuple!["n", seq as i64])),
                ..Default::default()
            };
            log.index += 1;
            log.machine
                .apply(log.index, 1, &cmd.encode_to_vec(), false)
                .unwrap();
        }
        let before = log.machine.space().len();
        let cmd = Command {
            stamp_ms: 0,
            session: 9,
            seq: 1,
            ack: 0,
            op: Some(out(tuple!["n", 1])),
            ..Default::default()
        };
        log.index += 1;
        let retry = log
            .machine
            .apply(log.index, 1, &cmd.encode_to_vec(), false)
            .unwrap();
        assert_eq!(code_of(result(&retry, 9, 1)), Some(Code::SessionExpired));
        assert_eq!(log.machine.space().len(), before, "not applied again");
    }

    #[test]
    fn a_collect_stops_at_the_response_size_limit() {
        let mut log = Log::new();
        let payload = "p".repeat(100_000);
        for i in 0..60 {
            log.apply(0, 1, i + 1, out(tuple!["big", payload.clone()]));
        }
        let read = log
            .machine
            .rd_all(&r#"("big", _)"#.parse().unwrap(), &Query::default());
        assert!(read.truncated && !read.items.is_empty() && read.items.len() < 60);
        let all = log.apply(
            0,
            1,
            61,
            command::Op::InAll(proto::InAll {
                template: codec::template_to_bytes(&r#"("big", _)"#.parse().unwrap()),
                limit: 0,
            }),
        );
        let Some(response::Result::Tuples(list)) = result(&all, 1, 61) else {
            panic!("{:?}", all.completions)
        };
        assert!(list.truncated);
        let bytes: usize = list.items.iter().map(|i| i.tuple.len()).sum();
        assert!(bytes <= MAX_RESPONSE_BYTES, "{bytes}");
        assert_eq!(log.machine.space().len(), 60 - list.items.len());
    }

    #[test]
    fn state_round_trips_through_encode() {
        let mut log = Log::new();
        log.apply(5, 1, 1, out(tuple!["a", 1]));
        log.apply(6, 2, 1, take(r#"("b")"#, true, 500));
        let bytes = log.machine.encode();
        let mut back = Machine::decode(&bytes).unwrap();
        assert_eq!(back.encode(), bytes);
        // The restored waiter is still owned by its request.
        let cmd = Command {
            stamp_ms: 7,
            session: 3,
            seq: 1,
            ack: 0,
            op: Some(out(tuple!["b"])),
            ..Default::default()
        };
        let applied = back.apply(10, 1, &cmd.encode_to_vec(), false).unwrap();
        assert!(matches!(
            result(&applied, 2, 1),
            Some(response::Result::Found(_))
        ));
        assert!(Machine::decode(b"garbage").is_err());
    }

    /// A machine with tuples, a TTL, a waiting request and finished ones in two sessions.
    fn busy_log() -> Log {
        let mut log = Log::new();
        for i in 0..50 {
            log.apply(5 + i, 1, i + 1, out(tuple!["a", i as i64, "x".repeat(40)]));
        }
        log.apply(
            60,
            1,
            51,
            command::Op::Out(Out {
                tuple: codec::tuple_to_bytes(&tuple!["ttl"]),
                ttl_ms: 9_000,
            }),
        );
        log.apply(61, 2, 1, take(r#"("b")"#, true, 500));
        log.apply(62, 2, 2, take(r#"("a", 3, _)"#, false, 0));
        log
    }

    /// A reader that hands out one byte a call.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((&b, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            match buf.first_mut() {
                Some(slot) => *slot = b,
                None => return Ok(0),
            }
            self.0 = rest;
            Ok(1)
        }
    }

    fn same(a: &Machine, b: &Machine) {
        assert_eq!(a.state_without_space(), b.state_without_space());
        assert_eq!(a.space().digest(), b.space().digest());
        assert_eq!(a.space().len(), b.space().len());
        assert_eq!(a.space().waiter_count(), b.space().waiter_count());
        assert_eq!(a.encode(), b.encode());
    }

    #[test]
    fn the_streamed_format_round_trips() {
        let log = busy_log();
        let m = &log.machine;
        let bytes = m.encode();
        assert_eq!(&bytes[..8], MACHINE_MAGIC);
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let state = MachineState::decode(&bytes[12..12 + len]).unwrap();
        assert_eq!(state, m.state_without_space());
        assert!(state.space.is_empty());
        assert_eq!(&bytes[12 + len..], &m.space().encode()[..]);
        let mut written = Vec::new();
        m.view().encode_to(&mut written).unwrap();
        assert_eq!(written, bytes);
        same(m, &Machine::decode(&bytes).unwrap());
        let back = Machine::decode_from(&mut OneByte(&bytes), bytes.len() as u64).unwrap();
        same(m, &back);
        let back = Machine::decode_from(&mut &bytes[..], u64::MAX).unwrap();
        same(m, &back);
        // Through a `dyn Read`, as a file reader hands it over.
        let mut r: &mut dyn Read = &mut &bytes[..];
        same(
            m,
            &Machine::decode_from(&mut r, bytes.len() as u64).unwrap(),
        );
    }

    #[test]
    fn the_older_format_still_decodes() {
        let log = busy_log();
        let m = &log.machine;
        // What `MachineView::encode` wrote before the streamed format: the space inside.
        let mut state = m.state_without_space();
        state.space = m.space().encode();
        let old = state.encode_to_vec();
        assert_ne!(&old[..8], MACHINE_MAGIC);
        same(m, &Machine::decode(&old).unwrap());
        let back = Machine::decode_from(&mut OneByte(&old), u64::MAX).unwrap();
        same(m, &back);
        // It re-encodes in the new format.
        assert_eq!(&Machine::decode(&old).unwrap().encode()[..8], MACHINE_MAGIC);
        // Longer than the caller's bound: refused.
        assert!(Machine::decode_from(&mut &old[..], old.len() as u64 - 1).is_err());
        // Damage is still caught.
        let mut bad = old.clone();
        let at = bad.len() - 2;
        bad[at] ^= 1;
        assert!(Machine::decode(&bad).is_err());
    }

    #[test]
    fn damaged_streamed_states_are_refused() {
        let log = busy_log();
        let bytes = log.machine.encode();
        for cut in 0..bytes.len() {
            assert!(Machine::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            assert!(
                Machine::decode_from(&mut &bytes[..cut], bytes.len() as u64).is_err(),
                "cut at {cut}, streamed"
            );
        }
        // Trailing bytes.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Machine::decode(&longer).is_err());
        // A bound below the length.
        assert!(Machine::decode_from(&mut &bytes[..], bytes.len() as u64 - 1).is_err());
        // A state length past the input, or past the cap.
        for len in [u32::MAX, bytes.len() as u32, (MAX_STATE_BYTES as u32) + 1] {
            let mut forged = bytes.clone();
            forged[8..12].copy_from_slice(&len.to_le_bytes());
            assert!(Machine::decode(&forged).is_err(), "length {len}");
        }
        // A streamed state that holds a space of its own as well.
        let mut state = log.machine.state_without_space();
        state.space = log.machine.space().encode();
        let inner = state.encode_to_vec();
        let mut both = MACHINE_MAGIC.to_vec();
        both.extend_from_slice(&(inner.len() as u32).to_le_bytes());
        both.extend_from_slice(&inner);
        both.extend_from_slice(&log.machine.space().encode());
        assert!(Machine::decode(&both).unwrap_err().contains("space inside"));
        // Every byte of the space part flipped.
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        for i in 12 + len..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(Machine::decode(&bad).is_err(), "flip at {i}");
        }
    }
}
