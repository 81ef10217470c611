//! The node: the one thread that owns raft's `RawNode`, and the rooms it is built of.
//!
//! Everything else talks to the node through its inbox ([`NodeMsg`]): the peer endpoint delivers
//! raft messages and the transport its failure reports, the client endpoint hands in writes,
//! reads, status requests and membership changes. The node does one [`turn`](Node::turn) at a
//! time: it drains its inbox (so many proposals share one ready and one fsync), ticks raft when a
//! tick is due, asks for one ReadIndex for the reads collected, and runs the ready loop. The
//! production [`run`](Node::run) loop waits for mail or the next tick between turns; the
//! simulator calls `turn` itself, in virtual time.
//!
//! The node reads the clock, sends to peers and runs background work only through its
//! [`Env`](crate::env::Env), and touches the disk only through its storage and snapshot store
//! (whose own seams are in [`crate::disk`]), so one thread can run a whole cluster of them.
//!
//! # Rooms
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the inbox, the turn, the timers, startup and shutdown |
//! | [`handle`] | [`NodeHandle`]: the async way into the inbox, with its timeouts |
//! | `ready.rs` | the ready loop in raft-rs's order, applying entries, handing results to clients |
//! | `writes.rs` | proposing client writes, stamping them, the leader's ticks and caps |
//! | `reads.rs` | ReadIndex batching, confirmed reads, blocking `rd`s waiting on this node |
//! | `heavy.rs` | digests and unindexed scans, off the raft thread |
//! | `snapshots.rs` | taking, installing and keeping snapshots; compacting the log |
//! | `membership.rs` | planning, applying and handing over membership changes |
//! | `admission.rs` | which peer messages reach raft |
//! | `status.rs` | the status, the address book, leader hints |

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::Snapshot;
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use slog::{Logger, info, warn};
use tokio::sync::oneshot;
use tuplespace::{Query, Template, TupleId};

mod admission;
pub mod handle;
mod heavy;
mod membership;
mod reads;
mod ready;
mod snapshots;
mod status;
mod writes;

pub use handle::{COMMIT_TIMEOUT, NodeHandle};
pub use status::role_name;

use crate::clock::ClusterClock;
use crate::config::RaftSettings;
use crate::env::Env;
use crate::keys::ClusterId;
use crate::machine::Machine;
use crate::proto::{self, Command};
use crate::refusals::{Refusals, Refuser};
use crate::snapshot::SnapshotStore;
use crate::storage::{RaftStorage, StorageError};
use crate::transport::{Delivery, Report};

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
    /// Copy-collect, of one template or the union of several.
    RdAll {
        /// What to match: a tuple matching any of these.
        templates: Vec<Template>,
        /// And any of the templates this join yields when the read runs.
        join: Option<tuplespace::union::Join>,
        /// Bounds, order and limit.
        query: Query,
    },
    /// One tuple by id.
    ReadId(TupleId),
    /// How many match.
    Count(Template),
    /// The access policy in force.
    Policy,
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
    /// Whether this user, signing with this key, is the admin (as this node's state says).
    IsAdmin {
        /// The user the request names.
        user: String,
        /// The key that signed it.
        public_key: Vec<u8>,
        /// Where the answer goes, with cluster time now: `None` when this node does not know
        /// the admin yet (it has not applied the founding entries: it is catching up).
        reply: oneshot::Sender<(Option<bool>, u64)>,
    },
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

/// Most inbox messages handled before the node turns to `ready` (bounds latency under load).
const MAX_INBOX_BATCH: usize = 4096;

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
    /// The clock, the network and background work.
    pub env: Env,
    /// Peers this node has seen removed from the cluster (shared with the peer endpoint, which
    /// tells them so).
    pub removed_peers: Arc<Mutex<HashSet<u64>>>,
    /// The inbox.
    pub inbox: Receiver<NodeMsg>,
    /// A sender into the inbox (for the snapshot writer's report).
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

/// The node: raft, the machine, the environment, and the clients waiting on them. Each room
/// keeps its own part of the state (see the [module docs](self)).
pub struct Node {
    id: u64,
    raw: RawNode<RaftStorage>,
    machine: Machine,
    env: Env,
    inbox: Receiver<NodeMsg>,
    inbox_tx: Sender<NodeMsg>,
    settings: RaftSettings,
    /// When raft ticks next (on this node's clock).
    next_tick: Instant,
    /// Cluster time as this node sees it (it stamps proposals when this node leads).
    clock: ClusterClock,
    writes: writes::Writes,
    reads: reads::Reads,
    snapshots: snapshots::Snapshots,
    members: membership::Members,
    book: status::AddressBook,
    /// Leader and role as last logged.
    known_leader: u64,
    known_role: StateRole,
    /// This node was removed from the cluster: stop after this turn.
    removed: bool,
    /// Counts and logs the peer messages and requests this node refuses.
    refuser: Refuser,
    /// The cluster this node belongs to.
    cluster: ClusterId,
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
            addresses,
            storage,
            machine,
            snapshots,
            kept_snapshots,
            mut env,
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
        let book = status::AddressBook::new(id, me.clone(), addresses, machine.members());
        env.network.set_self_url(me.raft.clone());
        let raw = RawNode::new(&config, storage, &logger)?;
        let now = env.clock.now();
        let clock = ClusterClock::new(machine.now(), Arc::clone(&env.clock));
        let mut node = Node {
            id,
            raw,
            machine,
            env,
            inbox,
            inbox_tx,
            next_tick: now + Duration::from_millis(settings.tick_ms),
            settings,
            clock,
            writes: writes::Writes::new(limits),
            reads: reads::Reads::default(),
            snapshots: snapshots::Snapshots::new(snapshots, kept_snapshots),
            members: membership::Members::new(removed_peers),
            book,
            known_leader: 0,
            known_role: StateRole::Follower,
            removed: false,
            refuser: Refuser::new(refusals),
            cluster,
            heavy: heavy::Heavy::default(),
            logger,
        };
        node.draw_election_timeout();
        node.members.start(node.members_now(), id);
        for peer in node.members_now() {
            if let Some(addr) = node.book.get(peer)
                && peer != id
            {
                let url = addr.raft.clone();
                node.env.network.add_peer(peer, url);
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
    fn members_now(&self) -> BTreeSet<u64> {
        let cs = self.raw.raft.prs().conf().to_conf_state();
        cs.voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .copied()
            .collect()
    }

    /// Runs until shut down, removed from the cluster, or a storage failure: waits for mail or
    /// the next tick, then takes a turn.
    pub fn run(mut self) -> Result<Exit, NodeError> {
        loop {
            let wait = self
                .next_tick
                .saturating_duration_since(self.env.clock.now());
            let first = match self.inbox.recv_timeout(wait) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(self.stop(Exit::Shutdown)),
            };
            if let Some(exit) = self.turn(first)? {
                return Ok(self.stop(exit));
            }
        }
    }

    /// One turn: handles `first` and whatever else waits in the inbox (up to a bound), ticks raft
    /// if a tick is due, asks for a ReadIndex for the reads collected, and runs the ready loop.
    /// `Some` when the node must stop (asked to, or removed from the cluster).
    pub fn turn(&mut self, first: Option<NodeMsg>) -> Result<Option<Exit>, NodeError> {
        let mut go_on = match first {
            Some(msg) => self.handle(msg)?,
            None => true,
        };
        for _ in 0..MAX_INBOX_BATCH {
            if !go_on {
                return Ok(Some(Exit::Shutdown));
            }
            match self.inbox.try_recv() {
                Ok(msg) => go_on = self.handle(msg)?,
                Err(_) => break,
            }
        }
        if !go_on {
            return Ok(Some(Exit::Shutdown));
        }
        self.draw_election_timeout();
        let now = self.env.clock.now();
        if now >= self.next_tick {
            self.raw.tick();
            self.on_tick(now);
            self.next_tick =
                (self.next_tick + Duration::from_millis(self.settings.tick_ms)).max(now);
        }
        self.send_read_index();
        self.on_ready()?;
        self.draw_election_timeout();
        Ok(self.removed.then_some(Exit::Removed))
    }

    /// When raft ticks next, on this node's clock (the run loop sleeps until then).
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// raft-rs draws a new election timeout whenever it resets its election timer; with a seeded
    /// draw (a simulation) the node redraws it from the seed after every reset, before the next
    /// tick can read it, so runs repeat exactly.
    fn draw_election_timeout(&mut self) {
        let Some(draw) = self.env.election_draw.as_mut() else {
            return;
        };
        if self.raw.raft.election_elapsed == 0 {
            let min = self.settings.election_ticks;
            self.raw
                .raft
                .set_randomized_election_timeout(draw(min, 2 * min));
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
                if self.members.was_member() && !self.removed {
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
            NodeMsg::Read { op, reply } => self.reads.collect(op, reply),
            NodeMsg::Status(reply, digest) => {
                let status = self.status();
                if digest {
                    self.status_with_digest(status, reply);
                } else {
                    let _ = reply.send(status);
                }
            }
            NodeMsg::IsAdmin {
                user,
                public_key,
                reply,
            } => {
                let now = self.clock.now();
                let known = self.machine.user_key(crate::identity::ADMIN).is_some();
                let admin = known.then(|| self.machine.is_admin(&user, &public_key));
                let _ = reply.send((admin, now));
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

    /// Timer work, once per tick: each room's deadlines.
    fn on_tick(&mut self, now: Instant) {
        self.leave_joint_if_stuck(now);
        self.expire_conf_change(now);
        self.propose_limits_if_changed(now);
        self.propose_tick_if_due(now);
        self.expire_reads(now);
        self.writes.forget_departed();
    }

    /// The state machine (the simulator compares replicas through it).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The log storage.
    pub fn storage(&self) -> &RaftStorage {
        self.raw.store()
    }

    /// This node's role and term, and the leader it knows.
    pub fn role(&self) -> (StateRole, u64, u64) {
        (
            self.raw.raft.state,
            self.raw.raft.term,
            self.raw.raft.leader_id,
        )
    }
}

/// Logs (at warn) that a node survived an error, for callers outside the loop.
pub fn survived(logger: &Logger, what: &str, err: &dyn std::fmt::Display) {
    warn!(logger, "survived an error"; "what" => what, "err" => %err);
}
