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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::eraftpb::{Entry, EntryType, Snapshot};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole, Storage as _};
use slog::{Logger, error, info, warn};
use tokio::sync::oneshot;
use tuplespace::{Query, Template, TupleId};

mod admission;
mod heavy;
mod membership;

use crate::clock::ClusterClock;
use crate::config::RaftSettings;
use crate::keys::ClusterId;
use crate::machine::{Applied, Completion, Machine, error};
use crate::proto::{self, Command, Found, IdTuple, error::Code, response};
use crate::refusals::{Refusals, Refuser};
use crate::snapshot::SnapshotStore;
use crate::storage::{RaftStorage, StorageError};
use crate::transport::{Delivery, Report, Transport};

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
    /// Raft messages from an authenticated peer, checked as far as the peer endpoint can.
    Raft(Delivery),
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
    /// The node's status (with a digest of the space if the flag is set).
    Status(oneshot::Sender<proto::Status>, bool),
    /// A membership change; only the leader proposes it.
    ConfChange {
        /// The changes, applied in one step.
        changes: Vec<proto::MemberChange>,
        /// Skip the checks an admin may override (caught-up learner, reachable quorum).
        force: bool,
        /// Where the answer goes.
        reply: oneshot::Sender<proto::Response>,
    },
    /// The snapshot writer finished (or failed) writing a snapshot file.
    SnapshotSaved {
        /// The snapshot, to hand to raft for lagging followers.
        snapshot: Box<Snapshot>,
        /// Why writing it failed, if it did.
        error: Option<String>,
    },
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
    /// A snapshot received from the leader could not be written to disk.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// Raft restored a snapshot whose state does not decode (the peer endpoint checks every
    /// snapshot before raft sees it, so this is a bug, not an attack).
    #[error("raft restored snapshot {index}, whose state does not decode: {detail}")]
    BadSnapshot {
        /// Its index.
        index: u64,
        /// Why.
        detail: String,
    },
}

/// Why the node's loop ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Asked to shut down.
    Shutdown,
    /// This node was removed from the cluster.
    Removed,
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

    /// Proposes a membership change (on the leader) and waits for it to be applied.
    pub async fn conf_change(
        &self,
        changes: Vec<proto::MemberChange>,
        force: bool,
        timeout: Duration,
    ) -> proto::Response {
        self.ask(
            |reply| NodeMsg::ConfChange {
                changes,
                force,
                reply,
            },
            timeout,
        )
        .await
    }

    /// The node's status (with the space's digest if asked), or `None` if it has stopped.
    pub async fn status(&self, digest: bool) -> Option<proto::Status> {
        let (tx, rx) = oneshot::channel();
        if !self.send(NodeMsg::Status(tx, digest)) {
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

/// Blocking `rd`s waiting on one node at once.
pub const MAX_LOCAL_READERS: usize = 10_000;

/// How long a batch of reads may wait for the leader to confirm its ReadIndex.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(3);

/// Most inbox messages handled before the node turns to `ready` (bounds latency under load).
const MAX_INBOX_BATCH: usize = 4096;

/// How long a membership change may wait to be applied before its client is told to retry.
const CONF_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a node starts from.
pub struct NodeSetup {
    /// This node's id.
    pub id: u64,
    /// This node's own addresses.
    pub me: Address,
    /// Raft settings.
    pub settings: RaftSettings,
    /// Known members' addresses (from the cluster file; empty for a joining node).
    pub addresses: HashMap<u64, Address>,
    /// The log storage.
    pub storage: RaftStorage,
    /// The state restored from the newest valid snapshot (or empty).
    pub machine: Machine,
    /// Snapshot files.
    pub snapshots: Arc<SnapshotStore>,
    /// Indexes of the snapshot files kept on disk, oldest first.
    pub kept_snapshots: Vec<u64>,
    /// The peer transport.
    pub transport: Transport,
    /// Peers this node has seen removed from the cluster (shared with the peer endpoint, which
    /// tells them so).
    pub removed_peers: Arc<Mutex<HashSet<u64>>>,
    /// The inbox, and a sender into it (for the snapshot writer's report).
    pub inbox: Receiver<NodeMsg>,
    /// A sender into the inbox.
    pub inbox_tx: Sender<NodeMsg>,
    /// What the node's parts refused, by kind (reported in the status).
    pub refusals: Arc<Refusals>,
    /// The cluster this node belongs to (from its key file).
    pub cluster: ClusterId,
    /// The space's caps this node's cluster file gives (it puts them in the log when it leads).
    pub limits: proto::SpaceLimits,
    /// The logger.
    pub logger: Logger,
}

/// The node: raft, the machine, the transport, and the clients waiting on them.
pub struct Node {
    id: u64,
    raw: RawNode<RaftStorage>,
    machine: Machine,
    transport: Transport,
    inbox: Receiver<NodeMsg>,
    inbox_tx: Sender<NodeMsg>,
    settings: RaftSettings,
    /// Every member's addresses, for leader hints and the status.
    addresses: HashMap<u64, Address>,
    /// Peers whose addresses came from this node's cluster file: never replaced by addresses
    /// learned at run time.
    pinned: HashSet<u64>,
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
    /// Cluster time as this node sees it (it stamps proposals when this node leads).
    clock: ClusterClock,
    /// When this node (as leader) last proposed a tick, so it proposes one at a time.
    tick_proposed: Option<Instant>,
    /// When this node (as leader) last proposed leaving a joint configuration.
    leave_proposed: Option<Instant>,
    /// The client waiting for the membership change this node proposed.
    pending_conf: Option<(Instant, oneshot::Sender<proto::Response>)>,
    /// Peers seen removed from the cluster, shared with the peer endpoint.
    removed_peers: Arc<Mutex<HashSet<u64>>>,
    /// Snapshot files.
    snapshots: Arc<SnapshotStore>,
    /// Indexes of snapshot files on disk, oldest first (the log is compacted behind the oldest).
    kept_snapshots: Vec<u64>,
    /// A snapshot is being written.
    snapshotting: bool,
    /// This node has been a member of the configuration (a joining node is not, until added).
    was_member: bool,
    /// The members of the configuration as last applied.
    last_members: BTreeSet<u64>,
    /// This node was removed from the cluster: stop after this turn.
    removed: bool,
    /// Leader and role as last logged.
    known_leader: u64,
    known_role: StateRole,
    /// Counts and logs the peer messages and requests this node refuses.
    refuser: Refuser,
    /// The cluster this node belongs to.
    cluster: ClusterId,
    /// A snapshot's state decoded by the peer endpoint, for the snapshot raft is restoring.
    received_snapshot: Option<Box<Machine>>,
    /// When each peer was last heard from (an admitted batch): who "answers now".
    last_heard: HashMap<u64, Instant>,
    /// The space's caps this node's cluster file gives.
    limits: proto::SpaceLimits,
    /// When this node (as leader) last proposed its caps, so it proposes one at a time.
    limits_proposed: Option<Instant>,
    /// The workers that digest the space and run scans the index cannot narrow.
    heavy: heavy::Heavy,
    logger: Logger,
}

impl Node {
    /// A node from its setup.
    pub fn new(setup: NodeSetup) -> Result<Node, NodeError> {
        let NodeSetup {
            id,
            me,
            settings,
            mut addresses,
            storage,
            machine,
            snapshots,
            kept_snapshots,
            mut transport,
            removed_peers,
            inbox,
            inbox_tx,
            refusals,
            cluster,
            limits,
            logger,
        } = setup;
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
        // How this node dials its peers: the addresses its own cluster file gives are kept (they
        // may be local routes: a proxy, a NAT); the log and snapshots supply everyone else's.
        let pinned: HashSet<u64> = addresses.keys().copied().collect();
        for m in machine.members() {
            if m.id != 0 && !m.raft_url.is_empty() && !pinned.contains(&m.id) {
                addresses.insert(
                    m.id,
                    Address {
                        raft: m.raft_url.clone(),
                        client: m.client_url.clone(),
                    },
                );
            }
        }
        addresses.insert(id, me.clone());
        transport.set_self_url(me.raft.clone());
        let raw = RawNode::new(&config, storage, &logger)?;
        let machine_now = machine.now();
        let mut node = Node {
            id,
            raw,
            machine,
            transport,
            inbox,
            inbox_tx,
            settings,
            addresses,
            pinned,
            pending_writes: HashMap::new(),
            unsent_reads: Vec::new(),
            reads_in_flight: HashMap::new(),
            confirmed_reads: Vec::new(),
            readers: Vec::new(),
            next_read_ctx: 1,
            clock: ClusterClock::new(machine_now),
            tick_proposed: None,
            leave_proposed: None,
            pending_conf: None,
            removed_peers,
            snapshots,
            kept_snapshots,
            snapshotting: false,
            was_member: false,
            last_members: BTreeSet::new(),
            removed: false,
            known_leader: 0,
            known_role: StateRole::Follower,
            refuser: Refuser::new(refusals),
            cluster,
            received_snapshot: None,
            last_heard: HashMap::new(),
            limits,
            limits_proposed: None,
            heavy: heavy::Heavy::start(),
            logger,
        };
        let members = node.members();
        node.was_member = members.contains(&id);
        node.last_members = members.clone();
        for peer in members {
            if let Some(addr) = node.addresses.get(&peer).cloned()
                && peer != id
            {
                node.transport.add_peer(peer, addr.raft);
            }
        }
        let hs = node.raw.store().hard_state();
        info!(node.logger, "node started";
            "id" => id, "term" => hs.term, "commit" => hs.commit,
            "applied" => node.machine.applied_index(),
            "voters" => ?node.raw.store().conf_state().voters,
            "learners" => ?node.raw.store().conf_state().learners);
        Ok(node)
    }

    /// Every member of the current configuration (voters, learners, outgoing voters).
    fn members(&self) -> BTreeSet<u64> {
        let cs = self.raw.raft.prs().conf().to_conf_state();
        cs.voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .copied()
            .collect()
    }

    /// Runs until shut down, removed from the cluster, or a storage failure.
    pub fn run(mut self) -> Result<Exit, NodeError> {
        let tick = Duration::from_millis(self.settings.tick_ms);
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(msg) => {
                    let mut go_on = self.handle(msg)?;
                    for _ in 0..MAX_INBOX_BATCH {
                        if !go_on {
                            break;
                        }
                        match self.inbox.try_recv() {
                            Ok(msg) => go_on = self.handle(msg)?,
                            Err(_) => break,
                        }
                    }
                    if !go_on {
                        return Ok(self.stop(Exit::Shutdown));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(self.stop(Exit::Shutdown)),
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.on_tick(now);
                next_tick = (next_tick + tick).max(now);
            }
            self.send_read_index();
            self.on_ready()?;
            if self.removed {
                return Ok(self.stop(Exit::Removed));
            }
        }
    }

    fn stop(self, why: Exit) -> Exit {
        match why {
            Exit::Removed => warn!(self.logger,
                "this node was removed from the cluster; stopping (wipe its data dir before reusing its id)";
                "id" => self.id),
            Exit::Shutdown => info!(self.logger, "node stopping"; "id" => self.id),
        }
        why
    }

    /// Handles one inbox message; false means stop.
    fn handle(&mut self, msg: NodeMsg) -> Result<bool, NodeError> {
        match msg {
            NodeMsg::Raft(delivery) => self.step_peer_messages(delivery),
            NodeMsg::Report(Report::Unreachable(peer)) => self.raw.report_unreachable(peer),
            NodeMsg::Report(Report::RemovedBy(peer)) => {
                if self.was_member && !self.removed {
                    warn!(self.logger, "a peer has removed this node from the cluster"; "peer" => peer);
                    self.removed = true;
                }
            }
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
            NodeMsg::Status(reply, digest) => {
                let status = self.status();
                if digest {
                    self.status_with_digest(status, reply);
                } else {
                    let _ = reply.send(status);
                }
            }
            NodeMsg::ConfChange {
                changes,
                force,
                reply,
            } => self.propose_conf_change(changes, force, reply),
            NodeMsg::SnapshotSaved { snapshot, error } => self.snapshot_saved(*snapshot, error)?,
            NodeMsg::Shutdown => return Ok(false),
        }
        Ok(true)
    }

    /// The stamp for a proposal: cluster time if this node leads; a follower's proposal is
    /// restamped by the leader it reaches (`node/admission.rs`), so it carries none.
    fn stamp(&mut self) -> u64 {
        if self.raw.raft.state == StateRole::Leader {
            self.clock.stamp()
        } else {
            0
        }
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
        // The leader keeps pending ReadIndex requests by context and ignores a context it already
        // holds, so contexts must be unique across the cluster: this node's id, then its counter.
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&self.id.to_le_bytes());
        bytes.extend_from_slice(&ctx.to_le_bytes());
        self.raw.read_index(bytes);
    }

    /// Timer work: leader ticks for deadlines, timeouts of reads and local readers, cleanup.
    fn on_tick(&mut self, now: Instant) {
        self.leave_joint_if_stuck(now);
        self.propose_limits_if_changed(now);
        if let Some((at, _)) = &self.pending_conf
            && now.duration_since(*at) > CONF_CHANGE_TIMEOUT
            && let Some((_, reply)) = self.pending_conf.take()
        {
            let resp = self.with_hint(response(error(
                Code::Unavailable,
                "the membership change was not applied in time (leader change?); check the \
                 status and retry",
            )));
            let _ = reply.send(resp);
        }
        if self.raw.raft.state == StateRole::Leader
            && let Some(deadline) = self.machine.next_deadline()
        {
            let due = self.clock.now() >= deadline;
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

    /// A leader whose cluster file gives other caps than the log's puts its own in the log.
    fn propose_limits_if_changed(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader
            || self.machine.limits() == self.limits
            || self
                .limits_proposed
                .is_some_and(|at| now.duration_since(at) < Duration::from_secs(2))
        {
            return;
        }
        let cmd = Command {
            stamp_ms: self.clock.stamp(),
            op: Some(proto::command::Op::SetLimits(self.limits)),
            ..Default::default()
        };
        if self.raw.propose(vec![], cmd.encode_to_vec()).is_ok() {
            info!(self.logger, "proposing the space's caps from the cluster file";
                "max_tuples" => self.limits.max_tuples, "max_bytes" => self.limits.max_bytes);
            self.limits_proposed = Some(now);
        }
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
        self.maybe_snapshot();
        Ok(())
    }

    fn log_role(&mut self, leader: u64, role: StateRole) {
        if role != self.known_role && role == StateRole::Leader {
            info!(self.logger, "became leader"; "id" => self.id, "term" => self.raw.raft.term);
        } else if leader != self.known_leader {
            info!(self.logger, "leader changed";
                "leader" => leader, "role" => ?role, "term" => self.raw.raft.term);
        }
        if leader != self.known_leader && self.known_leader != 0 {
            self.fail_pending_writes();
        }
        self.known_leader = leader;
        self.known_role = role;
    }

    /// Installs a snapshot from the leader: its file is written (and synced) first, then the log
    /// is replaced, then the machine.
    /// The leader changed: proposals this node forwarded to the old leader may be lost, so the
    /// clients waiting on them are told to retry now rather than after the commit timeout. A
    /// retry carries the same (session, seq), so one that did commit is not applied twice.
    fn fail_pending_writes(&mut self) {
        let pending = std::mem::take(&mut self.pending_writes);
        if pending.is_empty() {
            return;
        }
        let resp = self.with_hint(response(error(
            Code::Unavailable,
            "the leader changed while this request was in flight; retry (it is applied once)",
        )));
        for replies in pending.into_values() {
            for reply in replies {
                let _ = reply.send(resp.clone());
            }
        }
    }

    fn apply_snapshot(&mut self, snap: Snapshot) -> Result<(), NodeError> {
        let meta = snap.get_metadata().clone();
        // The peer endpoint decoded and checked the state before raft saw the snapshot; a
        // snapshot raft restored that was not checked there cannot be trusted.
        let machine = match self.received_snapshot.take() {
            Some(m) if m.applied_index() == meta.index && m.applied_term() == meta.term => *m,
            _ => Machine::decode(snap.get_data()).map_err(|e| NodeError::BadSnapshot {
                index: meta.index,
                detail: e,
            })?,
        };
        let started = Instant::now();
        let path = self.snapshots.save(
            meta.index,
            meta.term,
            meta.get_conf_state(),
            snap.get_data(),
        )?;
        self.raw.mut_store().apply_snapshot(&snap)?;
        self.machine = machine;
        self.machine.mark_applied(meta.index, meta.term);
        self.clock.observe(self.machine.now(), false);
        self.note_kept_snapshot(meta.index);
        self.adopt_members();
        info!(self.logger, "installed a snapshot from the leader";
            "index" => meta.index, "term" => meta.term, "bytes" => snap.get_data().len(),
            "tuples" => self.machine.space().len(), "file" => %path.display(),
            "ms" => started.elapsed().as_millis() as u64);
        Ok(())
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
                    let collect_outs = !self.readers.is_empty();
                    match self
                        .machine
                        .apply(entry.index, entry.term, &entry.data, collect_outs)
                    {
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
        let leader = self.raw.raft.state == StateRole::Leader;
        self.clock.observe(self.machine.now(), leader);
        Ok(())
    }

    /// After applying: write a snapshot every `snapshot_entries` applied entries, or at once when
    /// raft needs one for a follower that the newest snapshot does not cover.
    fn maybe_snapshot(&mut self) {
        let applied = self.machine.applied_index();
        let last = self.kept_snapshots.last().copied().unwrap_or(0);
        let wanted = self.raw.store().take_snapshot_wanted() && applied > last;
        // Encoding costs time in proportion to the state, so a large state is snapshotted less
        // often: after at least a quarter as many entries as it holds tuples. The encode cost per
        // applied entry stays bounded (about four tuples' worth), and so does the log.
        let interval = self
            .settings
            .snapshot_entries
            .max(self.machine.space().len() as u64 / 4);
        if self.snapshotting || (applied < last + interval && !wanted) {
            return;
        }
        self.snapshotting = true;
        // The view costs a page table; the encoding (most of the work) happens on the writer
        // thread, so the raft loop never stalls on a large state.
        let started = Instant::now();
        let view = self.machine.view();
        let conf_state = self.raw.raft.prs().conf().to_conf_state();
        info!(self.logger, "taking a snapshot"; "index" => applied,
            "tuples" => view.space().len(), "view_us" => started.elapsed().as_micros() as u64);
        let store = Arc::clone(&self.snapshots);
        let tx = self.inbox_tx.clone();
        let logger = self.logger.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                let started = Instant::now();
                let (index, term) = (view.applied_index(), view.applied_term());
                let data = view.encode();
                info!(logger, "snapshot encoded"; "index" => index, "bytes" => data.len(),
                    "encode_ms" => started.elapsed().as_millis() as u64);
                let mut snapshot = Snapshot::default();
                snapshot.set_data(data.into());
                let meta = snapshot.mut_metadata();
                meta.index = index;
                meta.term = term;
                meta.set_conf_state(conf_state);
                let meta = snapshot.get_metadata();
                let error = store
                    .save(
                        meta.index,
                        meta.term,
                        meta.get_conf_state(),
                        snapshot.get_data(),
                    )
                    .err()
                    .map(|e| e.to_string());
                let _ = tx.send(NodeMsg::SnapshotSaved {
                    snapshot: Box::new(snapshot),
                    error,
                });
            });
        if let Err(e) = spawned {
            error!(self.logger, "cannot start the snapshot writer"; "err" => %e);
            self.snapshotting = false;
        }
    }

    /// The snapshot file is on disk: raft may hand it to lagging followers, and the log may be
    /// compacted behind the older kept snapshot (keeping `log_tail` entries).
    fn snapshot_saved(
        &mut self,
        snapshot: Snapshot,
        failed: Option<String>,
    ) -> Result<(), NodeError> {
        self.snapshotting = false;
        let index = snapshot.get_metadata().index;
        if let Some(e) = failed {
            error!(self.logger, "writing a snapshot failed; will try again later";
                "index" => index, "err" => e);
            return Ok(());
        }
        if index <= self.raw.store().snapshot_metadata().index {
            return Ok(());
        }
        self.raw.mut_store().set_snapshot(snapshot)?;
        self.note_kept_snapshot(index);
        info!(self.logger, "snapshot written"; "index" => index);
        self.compact();
        Ok(())
    }

    fn note_kept_snapshot(&mut self, index: u64) {
        if self.kept_snapshots.last().is_none_or(|&last| last < index) {
            self.kept_snapshots.push(index);
        }
        let keep = self.snapshots.keep();
        if self.kept_snapshots.len() > keep {
            self.kept_snapshots
                .drain(..self.kept_snapshots.len() - keep);
        }
    }

    fn compact(&mut self) {
        let [older, .., newest] = self.kept_snapshots[..] else {
            return;
        };
        let up_to = (older + 1).min(newest.saturating_sub(self.settings.log_tail) + 1);
        let first = self.raw.store().first_index().unwrap_or(0);
        if up_to <= first {
            return;
        }
        match self.raw.mut_store().compact(up_to) {
            Ok(()) => info!(self.logger, "log compacted"; "first_index" => up_to,
                "engine_bytes" => self.raw.store().engine_used_bytes()),
            Err(e) => error!(self.logger, "log compaction failed"; "up_to" => up_to, "err" => %e),
        }
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
                // A request refused for a limit of the cluster's is counted and logged by the
                // node that holds the client's request (one node, not every replica).
                if let response::Result::Error(e) = &result
                    && e.code == Code::Limit as i32
                {
                    let source = format!("session {session:016x}");
                    self.refuser
                        .refuse(&self.logger, "client.over_limit", &source, &e.message);
                }
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
        let Ok(bytes) = <[u8; 16]>::try_from(ctx) else {
            return;
        };
        let (node, counter) = bytes.split_at(8);
        if node != self.id.to_le_bytes() {
            return;
        }
        let Ok(bytes) = <[u8; 8]>::try_from(counter) else {
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
        if heavy::is_heavy(&op) {
            return self.read_heavy(op, reply);
        }
        let space = self.machine.space();
        let result = match op {
            ReadOp::Rd {
                template,
                after,
                block,
                timeout,
            } => match space.rdp(&template, after) {
                Some((id, t)) => found_one(id, t),
                None if block && self.readers.len() >= MAX_LOCAL_READERS => {
                    let message = format!(
                        "{MAX_LOCAL_READERS} blocking rds wait on this node already (its limit); \
                         retry later or use another node"
                    );
                    self.refuser
                        .refuse(&self.logger, "client.over_limit", "a client", &message);
                    response::Result::Error(proto::Error {
                        code: Code::Limit as i32,
                        message,
                    })
                }
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
            ReadOp::RdAll { template, query } => {
                response::Result::Tuples(self.machine.rd_all(&template, &query))
            }
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
            digest: 0,
            refused: self.refuser.counts.snapshot(),
            cluster_id: self.cluster.0,
            cluster_time_ms: self.clock.now(),
            space_bytes: self.machine.space().bytes(),
            limits: Some(self.machine.limits()),
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
