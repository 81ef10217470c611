//! The node: the one thread that owns raft's `RawNode`.
//!
//! Everything else talks to it through its inbox ([`NodeMsg`]): the peer transport delivers raft
//! messages and failure reports, the client server hands in writes and reads. The thread ticks
//! raft on a timer, drains its inbox (so many proposals share one ready, one fsync), and runs the
//! ready loop in raft-rs's documented order:
//!
//! 1. send the leader's `messages`;
//! 2. apply a snapshot;
//! 3. apply `committed_entries`;
//! 4. persist `entries` and the hard state in one synced raft-engine batch;
//! 5. send `persisted_messages`;
//! 6. `advance`, persist the commit index, send and apply what the light ready holds;
//! 7. `advance_apply`.
//!
//! Writes are proposed with the client's `(session, seq)` and answered when this node applies the
//! entry (a follower's proposal travels to the leader inside raft). Reads go through ReadIndex:
//! they are batched per loop turn under one context, and answered from the local state once it has
//! applied up to the index the leader confirmed. A blocking `rd` that finds nothing waits here,
//! on this node, for the next matching `out` it applies.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole, Storage as _};
use slog::{Logger, error, info, warn};
use tokio::sync::oneshot;
use tuplespace::{Query, Template, TupleId};

use crate::config::RaftSettings;
use crate::machine::{Applied, Completion, Machine, error};
use crate::proto::{self, Command, Found, IdTuple, TupleList, error::Code, response};
use crate::storage::{RaftStorage, StorageError};
use crate::transport::{Report, Transport};

/// Where a node's peers and clients reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// The peer ROUTER endpoint.
    pub raft: String,
    /// The client ROUTER endpoint.
    pub client: String,
}

/// A linearizable read.
#[derive(Clone, Debug)]
pub enum ReadOp {
    /// `rd`/`rdp`: the oldest match with id > `after`; `block` waits up to `timeout`.
    Rd {
        /// What to match.
        template: Template,
        /// Only ids greater than this.
        after: TupleId,
        /// Wait for a match if none exists.
        block: bool,
        /// How long to wait.
        timeout: Duration,
    },
    /// Copy-collect.
    RdAll {
        /// What to match.
        template: Template,
        /// Bounds, order and limit.
        query: Query,
    },
    /// One tuple by id.
    ReadId(TupleId),
    /// How many match.
    Count(Template),
}

/// What the node's inbox carries.
pub enum NodeMsg {
    /// Raft messages from a peer.
    Raft(Vec<Message>),
    /// A failed (or finished snapshot) send, from the transport.
    Report(Report),
    /// A client write to propose; answered when this node applies it.
    Write {
        /// The command, stamped by the node when it proposes it.
        cmd: Command,
        /// Where the answer goes.
        reply: oneshot::Sender<proto::Response>,
    },
    /// A client read, answered after ReadIndex.
    Read {
        /// What to read.
        op: ReadOp,
        /// Where the answer goes.
        reply: oneshot::Sender<proto::Response>,
    },
    /// The node's status.
    Status(oneshot::Sender<proto::Status>),
    /// Stop the loop.
    Shutdown,
}

/// Why the node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The log storage failed; the node cannot go on safely.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Raft refused a configuration or an operation it should not have.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// A cloneable way into a node's inbox.
#[derive(Clone)]
pub struct NodeHandle {
    tx: Sender<NodeMsg>,
}

/// How long a write may wait to be committed and applied before the client is told to retry.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

impl NodeHandle {
    /// A handle sending into `tx`.
    pub fn new(tx: Sender<NodeMsg>) -> Self {
        NodeHandle { tx }
    }

    /// Sends a message to the node; false if it has stopped.
    pub fn send(&self, msg: NodeMsg) -> bool {
        self.tx.send(msg).is_ok()
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<proto::Response>) -> NodeMsg,
        timeout: Duration,
    ) -> proto::Response {
        let (reply, rx) = oneshot::channel();
        if !self.send(make(reply)) {
            return response(error(Code::Unavailable, "the node is shutting down"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => response(error(Code::Unavailable, "the node dropped the request")),
            Err(_) => response(error(
                Code::Unavailable,
                format!(
                    "not applied within {} ms (no leader or no quorum?); retry",
                    timeout.as_millis()
                ),
            )),
        }
    }

    /// Proposes a write and waits for it to be applied here.
    pub async fn write(&self, cmd: Command, timeout: Duration) -> proto::Response {
        self.ask(|reply| NodeMsg::Write { cmd, reply }, timeout)
            .await
    }

    /// Runs a linearizable read.
    pub async fn read(&self, op: ReadOp, timeout: Duration) -> proto::Response {
        self.ask(|reply| NodeMsg::Read { op, reply }, timeout).await
    }

    /// The node's status, or `None` if it has stopped.
    pub async fn status(&self) -> Option<proto::Status> {
        let (tx, rx) = oneshot::channel();
        if !self.send(NodeMsg::Status(tx)) {
            return None;
        }
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .ok()?
            .ok()
    }
}

fn response(result: response::Result) -> proto::Response {
    proto::Response {
        result: Some(result),
        ..Default::default()
    }
}

/// Reads waiting on one ReadIndex, each with where its answer goes.
type ReadBatch = Vec<(ReadOp, oneshot::Sender<proto::Response>)>;

/// Reads confirmed by ReadIndex at `index`, waiting for the machine to apply that far.
struct ConfirmedReads {
    index: u64,
    reads: ReadBatch,
}

/// A blocking `rd` waiting on this node for a matching `out`.
struct LocalReader {
    template: Template,
    after: TupleId,
    deadline: Instant,
    reply: oneshot::Sender<proto::Response>,
}

/// How long a batch of reads may wait for the leader to confirm its ReadIndex.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(3);

/// Most inbox messages handled before the node turns to `ready` (bounds latency under load).
const MAX_INBOX_BATCH: usize = 4096;

/// The node: raft, the machine, the transport, and the clients waiting on them.
pub struct Node {
    id: u64,
    raw: RawNode<RaftStorage>,
    machine: Machine,
    transport: Transport,
    inbox: Receiver<NodeMsg>,
    settings: RaftSettings,
    /// Every member's addresses, for leader hints and the status.
    addresses: HashMap<u64, Address>,
    /// Client writes proposed through this node, by (session, seq).
    pending_writes: HashMap<(u64, u64), Vec<oneshot::Sender<proto::Response>>>,
    /// Reads collected this turn; one ReadIndex covers them all.
    unsent_reads: ReadBatch,
    /// ReadIndex requests in flight, by context.
    reads_in_flight: HashMap<u64, (Instant, ReadBatch)>,
    /// Reads whose index is known, waiting for the machine to catch up.
    confirmed_reads: Vec<ConfirmedReads>,
    /// Blocking `rd`s waiting for an `out`.
    readers: Vec<LocalReader>,
    next_read_ctx: u64,
    /// The last stamp this node gave a command: stamps never go backwards.
    last_stamp: u64,
    /// When this node (as leader) last proposed a tick, so it proposes one at a time.
    tick_proposed: Option<Instant>,
    /// Leader and role as last logged.
    known_leader: u64,
    known_role: StateRole,
    logger: Logger,
}

impl Node {
    /// A node over opened storage. `addresses` holds every initial member, this one included.
    pub fn new(
        id: u64,
        storage: RaftStorage,
        settings: RaftSettings,
        addresses: HashMap<u64, Address>,
        transport: Transport,
        inbox: Receiver<NodeMsg>,
        logger: Logger,
    ) -> Result<Node, NodeError> {
        let machine = Machine::new();
        let config = raft::Config {
            id,
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            max_size_per_msg: settings.max_msg_bytes,
            max_inflight_msgs: settings.max_inflight_msgs,
            pre_vote: true,
            check_quorum: true,
            read_only_option: ReadOnlyOption::Safe,
            applied: machine.applied_index(),
            ..Default::default()
        };
        config.validate()?;
        let raw = RawNode::new(&config, storage, &logger)?;
        let mut node = Node {
            id,
            raw,
            machine,
            transport,
            inbox,
            settings,
            addresses,
            pending_writes: HashMap::new(),
            unsent_reads: Vec::new(),
            reads_in_flight: HashMap::new(),
            confirmed_reads: Vec::new(),
            readers: Vec::new(),
            next_read_ctx: 1,
            last_stamp: 0,
            tick_proposed: None,
            known_leader: 0,
            known_role: StateRole::Follower,
            logger,
        };
        for (&peer, addr) in &node.addresses {
            if peer != id {
                node.transport.add_peer(peer, addr.raft.clone());
            }
        }
        let hs = node.raw.store().hard_state();
        info!(node.logger, "node started";
            "id" => id, "term" => hs.term, "commit" => hs.commit,
            "voters" => ?node.raw.store().conf_state().voters);
        Ok(node)
    }

    /// Runs until shut down or a storage failure.
    pub fn run(mut self) -> Result<(), NodeError> {
        let tick = Duration::from_millis(self.settings.tick_ms);
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(msg) => {
                    if !self.handle(msg) {
                        break;
                    }
                    for _ in 0..MAX_INBOX_BATCH {
                        match self.inbox.try_recv() {
                            Ok(msg) => {
                                if !self.handle(msg) {
                                    return self.stop();
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.on_tick(now);
                next_tick = (next_tick + tick).max(now);
            }
            self.send_read_index();
            self.on_ready()?;
        }
        self.stop()
    }

    fn stop(self) -> Result<(), NodeError> {
        info!(self.logger, "node stopping"; "id" => self.id);
        Ok(())
    }

    /// Handles one inbox message; false means stop.
    fn handle(&mut self, msg: NodeMsg) -> bool {
        match msg {
            NodeMsg::Raft(msgs) => {
                for m in msgs {
                    if let Err(e) = self.raw.step(m) {
                        // Messages from removed or unknown peers, stale terms: raft says why.
                        slog::debug!(self.logger, "raft refused a message"; "err" => %e);
                    }
                }
            }
            NodeMsg::Report(Report::Unreachable(peer)) => self.raw.report_unreachable(peer),
            NodeMsg::Report(Report::Snapshot { to, ok }) => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            NodeMsg::Write { cmd, reply } => self.propose(cmd, reply),
            NodeMsg::Read { op, reply } => self.unsent_reads.push((op, reply)),
            NodeMsg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            NodeMsg::Shutdown => return false,
        }
        true
    }

    fn stamp(&mut self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_stamp = self.last_stamp.max(wall);
        self.last_stamp
    }

    fn propose(&mut self, mut cmd: Command, reply: oneshot::Sender<proto::Response>) {
        cmd.stamp_ms = self.stamp();
        let key = (cmd.session, cmd.seq);
        match self.raw.propose(vec![], cmd.encode_to_vec()) {
            Ok(()) => self.pending_writes.entry(key).or_default().push(reply),
            Err(e) => {
                let resp = self.with_hint(response(error(
                    Code::Unavailable,
                    format!("cannot propose: {e} (no leader known yet?); retry"),
                )));
                let _ = reply.send(resp);
            }
        }
    }

    fn send_read_index(&mut self) {
        if self.unsent_reads.is_empty() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let reads = std::mem::take(&mut self.unsent_reads);
        self.reads_in_flight.insert(ctx, (Instant::now(), reads));
        self.raw.read_index(ctx.to_le_bytes().to_vec());
    }

    /// Timer work: leader ticks for deadlines, timeouts of reads and local readers, cleanup.
    fn on_tick(&mut self, now: Instant) {
        if self.raw.raft.state == StateRole::Leader
            && let Some(deadline) = self.machine.next_deadline()
        {
            let due = self.stamp() >= deadline;
            let in_flight = self
                .tick_proposed
                .is_some_and(|at| now.duration_since(at) < Duration::from_millis(500));
            if due && !in_flight {
                let cmd = Command {
                    stamp_ms: self.stamp(),
                    op: Some(proto::command::Op::Tick(proto::Tick {})),
                    ..Default::default()
                };
                if self.raw.propose(vec![], cmd.encode_to_vec()).is_ok() {
                    self.tick_proposed = Some(now);
                }
            }
        }
        let stale: Vec<u64> = self
            .reads_in_flight
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) > READ_INDEX_TIMEOUT)
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in stale {
            if let Some((_, reads)) = self.reads_in_flight.remove(&ctx) {
                for (_, reply) in reads {
                    let resp = self.with_hint(response(error(
                        Code::Unavailable,
                        "the leader did not confirm the read (no leader or no quorum?); retry",
                    )));
                    let _ = reply.send(resp);
                }
            }
        }
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.readers)
            .into_iter()
            .partition(|r| r.deadline <= now || r.reply.is_closed());
        self.readers = waiting;
        for r in expired {
            let _ = r.reply.send(response(error(
                Code::TimedOut,
                "no matching tuple before the timeout",
            )));
        }
        self.pending_writes.retain(|_, replies| {
            replies.retain(|r| !r.is_closed());
            !replies.is_empty()
        });
    }

    fn on_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            self.log_role(ss.leader_id, ss.raft_state);
        }
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            self.apply_snapshot(ready.snapshot().clone())?;
        }
        for rs in ready.take_read_states() {
            self.read_confirmed(rs.index, &rs.request_ctx);
        }
        self.apply_entries(ready.take_committed_entries())?;
        if !ready.entries().is_empty() || ready.hs().is_some() {
            self.raw.mut_store().persist(ready.entries(), ready.hs())?;
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.serve_confirmed_reads();
        Ok(())
    }

    fn log_role(&mut self, leader: u64, role: StateRole) {
        if role != self.known_role && role == StateRole::Leader {
            info!(self.logger, "became leader"; "id" => self.id, "term" => self.raw.raft.term);
        } else if leader != self.known_leader {
            info!(self.logger, "leader changed";
                "leader" => leader, "role" => ?role, "term" => self.raw.raft.term);
        }
        self.known_leader = leader;
        self.known_role = role;
    }

    fn apply_snapshot(&mut self, snap: raft::eraftpb::Snapshot) -> Result<(), NodeError> {
        let meta = snap.get_metadata();
        match Machine::decode(snap.get_data()) {
            Ok(machine) => {
                info!(self.logger, "installing snapshot from the leader";
                    "index" => meta.index, "term" => meta.term, "bytes" => snap.get_data().len());
                self.raw.mut_store().apply_snapshot(&snap)?;
                self.machine = machine;
                self.machine.mark_applied(meta.index, meta.term);
                Ok(())
            }
            Err(e) => {
                // A snapshot that does not decode is refused; raft will send another.
                error!(self.logger, "refusing a snapshot that does not decode";
                    "index" => meta.index, "err" => e);
                Ok(())
            }
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        for entry in entries {
            if entry.index <= self.machine.applied_index() {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.machine.mark_applied(entry.index, entry.term);
                }
                EntryType::EntryNormal => {
                    match self.machine.apply(entry.index, entry.term, &entry.data) {
                        Ok(applied) => self.deliver(applied),
                        Err(e) => error!(self.logger, "skipped an undecodable entry";
                            "index" => entry.index, "err" => e),
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry)?;
                    self.machine.mark_applied(entry.index, entry.term);
                }
            }
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), NodeError> {
        let result = if entry.get_entry_type() == EntryType::EntryConfChange {
            let mut cc = ConfChange::default();
            cc.merge_from_bytes(&entry.data)
                .map_err(raft::Error::CodecError)?;
            self.raw.apply_conf_change(&cc)
        } else {
            let mut cc = ConfChangeV2::default();
            cc.merge_from_bytes(&entry.data)
                .map_err(raft::Error::CodecError)?;
            self.raw.apply_conf_change(&cc)
        };
        match result {
            Ok(cs) => {
                info!(self.logger, "membership changed";
                    "index" => entry.index, "voters" => ?cs.voters, "learners" => ?cs.learners,
                    "outgoing" => ?cs.voters_outgoing);
                self.raw.mut_store().set_conf_state(&cs)?;
            }
            Err(e) => {
                error!(self.logger, "membership change refused"; "index" => entry.index, "err" => %e)
            }
        }
        Ok(())
    }

    /// Hands applied results to the clients waiting here.
    fn deliver(&mut self, applied: Applied) {
        for Completion {
            session,
            seq,
            result,
        } in applied.completions
        {
            if let Some(replies) = self.pending_writes.remove(&(session, seq)) {
                let resp = self.with_hint(response(result));
                for reply in replies {
                    let _ = reply.send(resp.clone());
                }
            }
        }
        if self.readers.is_empty() {
            return;
        }
        for (id, tuple) in &applied.outs {
            let (hits, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.readers)
                .into_iter()
                .partition(|r| *id > r.after && r.template.matches(tuple));
            self.readers = rest;
            for r in hits {
                let _ = r.reply.send(response(found_one(*id, tuple)));
            }
        }
    }

    fn read_confirmed(&mut self, index: u64, ctx: &[u8]) {
        let Ok(bytes) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        if let Some((_, reads)) = self.reads_in_flight.remove(&u64::from_le_bytes(bytes)) {
            self.confirmed_reads.push(ConfirmedReads { index, reads });
        }
    }

    fn serve_confirmed_reads(&mut self) {
        let applied = self.machine.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed_reads)
            .into_iter()
            .partition(|c| c.index <= applied);
        self.confirmed_reads = waiting;
        for batch in ready {
            for (op, reply) in batch.reads {
                self.read(op, reply);
            }
        }
    }

    fn read(&mut self, op: ReadOp, reply: oneshot::Sender<proto::Response>) {
        let space = self.machine.space();
        let result = match op {
            ReadOp::Rd {
                template,
                after,
                block,
                timeout,
            } => match space.rdp(&template, after) {
                Some((id, t)) => found_one(id, t),
                None if block => {
                    self.readers.push(LocalReader {
                        template,
                        after,
                        deadline: Instant::now() + timeout,
                        reply,
                    });
                    return;
                }
                None => response::Result::Found(Found { item: None }),
            },
            ReadOp::RdAll { template, query } => response::Result::Tuples(TupleList {
                items: self.machine.rd_all(&template, &query),
            }),
            ReadOp::ReadId(id) => match space.read_id(id) {
                Some(t) => found_one(id, t),
                None => response::Result::Found(Found { item: None }),
            },
            ReadOp::Count(template) => response::Result::Count(space.count(&template) as u64),
        };
        let resp = self.with_hint(response(result));
        let _ = reply.send(resp);
    }

    fn with_hint(&self, mut resp: proto::Response) -> proto::Response {
        let leader = self.raw.raft.leader_id;
        resp.leader_id = leader;
        if let Some(addr) = self.addresses.get(&leader) {
            resp.leader_client_url = addr.client.clone();
        }
        resp
    }

    fn status(&self) -> proto::Status {
        let raft = &self.raw.raft;
        let cs = raft.prs().conf().to_conf_state();
        let is_leader = raft.state == StateRole::Leader;
        let mut members = Vec::new();
        let roles = cs
            .voters
            .iter()
            .map(|&id| (id, "voter"))
            .chain(cs.learners.iter().map(|&id| (id, "learner")))
            .chain(
                cs.voters_outgoing
                    .iter()
                    .filter(|id| !cs.voters.contains(id))
                    .map(|&id| (id, "outgoing voter")),
            );
        for (id, role) in roles {
            let addr = self.addresses.get(&id);
            members.push(proto::Member {
                id,
                raft_url: addr.map(|a| a.raft.clone()).unwrap_or_default(),
                client_url: addr.map(|a| a.client.clone()).unwrap_or_default(),
                role: role.to_string(),
                matched: if is_leader {
                    raft.prs().get(id).map_or(0, |p| p.matched)
                } else {
                    0
                },
            });
        }
        let store = self.raw.store();
        proto::Status {
            id: self.id,
            role: role_name(raft.state).to_string(),
            leader_id: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.machine.applied_index(),
            members,
            tuples: self.machine.space().len() as u64,
            waiters: self.machine.space().waiter_count() as u64,
            sessions: self.machine.session_count() as u64,
            first_index: store.first_index().unwrap_or(0),
            last_index: store.last_index().unwrap_or(0),
        }
    }
}

fn found_one(id: TupleId, t: &tuplespace::Tuple) -> response::Result {
    response::Result::Found(Found {
        item: Some(IdTuple {
            id,
            tuple: tuplespace::codec::tuple_to_bytes(t),
        }),
    })
}

/// The name a role has in the status.
pub fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}

/// Logs (at warn) that a node survived an error, for callers outside the loop.
pub fn survived(logger: &Logger, what: &str, err: &dyn std::fmt::Display) {
    warn!(logger, "survived an error"; "what" => what, "err" => %err);
}
