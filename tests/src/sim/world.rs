//! The simulated world: nodes, clients, the network between them and the faults, driven one
//! event at a time in virtual time, everything random drawn from the run's seed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prost::Message as _;
use raft::StateRole;
use raft::eraftpb::{Message, MessageType};
use raftnode::client::retry::{Attempt, Call, Next, Route};
use raftnode::client::{self, ClientError};
use raftnode::env::{Job, Work};
use raftnode::node::handle::{dropped, unanswered};
use raftnode::node::{Exit, NodeError, NodeMsg};
use raftnode::proto::{self, request, response};
use raftnode::server::{Plan, plan};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot::error::TryRecvError;
use tuplespace::codec;

use super::clock::SimClock;

use super::faults::{Fault, Hostile, NetParams};
use super::node::{Held, Shared, SimNode, client_url, node_of, raft_url};
use super::queue::{Nanos, Now, Queue, ms, ns};
use super::{Scenario, Stats};
use crate::history::{PendingOp, Recorder, Value};
use crate::ops::{Op, Planner, is_definite};

/// How long a client waits for one answer (a blocking operation adds its own timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client takes to find that a node's port is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a client keeps retrying one operation.
const RETRY_WINDOW: Duration = Duration::from_secs(5);
/// How long a peer's transport waits for an acknowledgement before reporting the peer
/// unreachable.
const ACK_TIMEOUT: Nanos = ms(2_000);

/// What happens next.
pub(super) enum Ev {
    /// A node's tick is due.
    Wake { node: u64, start: u64 },
    /// A sealed peer frame arrives.
    Frame {
        from: u64,
        start: u64,
        to: u64,
        frame: Vec<u8>,
        sent: usize,
        snapshots: usize,
    },
    /// A frame from an attacker arrives.
    Hostile {
        to: u64,
        frame: Vec<u8>,
        expect_refusal: bool,
    },
    /// A frame's acknowledgement reaches its sender.
    Ack {
        to: u64,
        start: u64,
        peer: u64,
        snapshots: usize,
        whole: bool,
        removed: bool,
    },
    /// A sender's transport gives up on a frame.
    Lost {
        to: u64,
        start: u64,
        peer: u64,
        snapshots: usize,
    },
    /// A sender's transport sends the same raft messages again in a new batch.
    Resend {
        from: u64,
        start: u64,
        to: u64,
        msgs: Vec<Message>,
    },
    /// A node's background job runs.
    Job { node: u64, start: u64, job: Job },
    /// A client request reaches a node.
    Request {
        node: u64,
        client: usize,
        attempt: u64,
        req: proto::Request,
    },
    /// A node's answer reaches a client.
    Response {
        client: usize,
        attempt: u64,
        resp: Box<proto::Response>,
    },
    /// A client's attempt failed without an answer.
    NoAnswer {
        client: usize,
        attempt: u64,
        sent: bool,
        what: &'static str,
    },
    /// A client sends its operation again after a pause.
    Resume { client: usize, attempt: u64 },
    /// A client starts its next operation.
    Next { client: usize },
    /// The next fault.
    Fault,
    /// A partition heals.
    Heal { generation: u64 },
    /// A crashed node starts again.
    Restart { node: u64 },
    /// The admin's next membership step.
    Admin,
    /// The workload and the faults end; the cluster settles.
    Finish,
    /// Has the cluster settled?
    Settle,
}

/// What a client is doing.
enum Task {
    /// A recorded operation.
    Work {
        op: Op,
        key: Option<i64>,
        pending: PendingOp,
    },
    /// A membership change (the admin's).
    Admin(AdminStep),
}

/// The admin's membership steps.
#[derive(Clone, Copy, Debug)]
pub(super) enum AdminStep {
    AddLearner(u64),
    Promote(u64),
    Remove(u64),
}

struct Running {
    task: Task,
    call: Call,
    op: request::Op,
    is_write: bool,
    wait: Duration,
}

pub(super) struct Client {
    process: u64,
    session: u64,
    seq: u64,
    route: Route,
    planner: Planner,
    rng: StdRng,
    running: Option<Running>,
    attempt: u64,
    awaiting: Option<u64>,
    admin: bool,
}

/// The world.
pub(super) struct World {
    pub(super) now: Now,
    pub(super) queue: Queue<Ev>,
    pub(super) nodes: BTreeMap<u64, SimNode>,
    pub(super) shared: Shared,
    clients: Vec<Client>,
    pub(super) recorder: Recorder,
    pub(super) net: NetParams,
    /// Directed links that are cut.
    cut: BTreeSet<(u64, u64)>,
    cut_generation: u64,
    rng: StdRng,
    pub(super) scenario: Scenario,
    /// Anything that went wrong, in order.
    pub(super) failures: Vec<String>,
    /// The leader of each term seen.
    leaders: BTreeMap<u64, u64>,
    /// Recent frames, for attackers to replay and flip.
    captured: Vec<Vec<u8>>,
    pub(super) finishing: bool,
    pub(super) settled: bool,
    next_node_id: u64,
    admin_busy: bool,
    /// A learner the admin added, to promote next.
    pending_promote: Option<u64>,
    pub(super) stats: Stats,
    seed: u64,
    /// Print every frame (with `--verbose`).
    pub(super) trace: bool,
}

fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl World {
    pub(super) fn new(scenario: Scenario, shared: Shared, seed: u64, now: Now) -> World {
        let clock = now.clone();
        let recorder = Recorder::with_time_source(Box::new(move || clock.get()));
        let mut rng = StdRng::seed_from_u64(mix(seed, 1));
        let founders: Vec<u64> = (1..=scenario.nodes).collect();
        let mut nodes = BTreeMap::new();
        for &id in &founders {
            let clock = SimClock::new(now.clone(), 1_000_000);
            nodes.insert(
                id,
                SimNode::new(id, founders.clone(), clock, mix(seed, 100 + id)),
            );
        }
        let next_value = Arc::new(AtomicI64::new(1));
        let mut clients: Vec<Client> = (0..scenario.clients)
            .map(|i| Client {
                process: i as u64,
                session: 0,
                seq: 0,
                route: Route::new(Vec::new(), 0),
                planner: Planner::new(
                    scenario.keys,
                    scenario.cas_keys,
                    crate::ops::Mix::Full,
                    next_value.clone(),
                ),
                rng: StdRng::seed_from_u64(mix(seed, 1000 + i as u64)),
                running: None,
                attempt: 0,
                awaiting: None,
                admin: false,
            })
            .collect();
        clients.push(Client {
            process: u64::MAX,
            session: 0,
            seq: 0,
            route: Route::new(Vec::new(), 0),
            planner: Planner::new(1, 1, crate::ops::Mix::Full, next_value),
            rng: StdRng::seed_from_u64(mix(seed, 999)),
            running: None,
            attempt: 0,
            awaiting: None,
            admin: true,
        });
        let net = NetParams::draw(&mut rng);
        World {
            queue: Queue::new(now.clone()),
            now,
            nodes,
            shared,
            clients,
            recorder,
            net,
            cut: BTreeSet::new(),
            cut_generation: 0,
            rng,
            next_node_id: scenario.nodes + 1,
            scenario,
            failures: Vec::new(),
            leaders: BTreeMap::new(),
            captured: Vec::new(),
            finishing: false,
            settled: false,
            admin_busy: false,
            pending_promote: None,
            stats: Stats::default(),
            seed,
            trace: false,
        }
    }

    pub(super) fn fail(&mut self, what: String) {
        let at = self.now.get() as f64 / 1e9;
        self.failures.push(format!("at {at:.3} s: {what}"));
    }

    /// Starts every founding node, the clients and the faults.
    pub(super) fn begin(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.start_node(id);
        }
        for c in 0..self.clients.len() {
            if !self.clients[c].admin {
                let delay = self.clients[c].rng.gen_range(0..ms(50));
                self.queue.after(delay, Ev::Next { client: c });
            }
        }
        self.queue.after(ms(500), Ev::Fault);
        self.queue.after(ns(self.scenario.duration), Ev::Finish);
    }

    /// Handles one event; false when the run is over.
    pub(super) fn step(&mut self) -> bool {
        let Some(ev) = self.queue.pop() else {
            return false;
        };
        self.stats.events += 1;
        match ev {
            Ev::Wake { node, start } => {
                if self.is_current(node, start) {
                    if let Some(live) = self.live_mut(node) {
                        live.wake = None;
                    }
                    self.turn(node);
                }
            }
            Ev::Frame {
                from,
                start,
                to,
                frame,
                sent,
                snapshots,
            } => self.receive(from, start, to, &frame, sent, snapshots),
            Ev::Hostile {
                to,
                frame,
                expect_refusal,
            } => self.receive_hostile(to, &frame, expect_refusal),
            Ev::Ack {
                to,
                start,
                peer,
                snapshots,
                whole,
                removed,
            } => {
                if self.is_current(to, start) {
                    let mut msgs = Vec::new();
                    if removed {
                        msgs.push(NodeMsg::Report(raftnode::transport::Report::RemovedBy(
                            peer,
                        )));
                    }
                    for _ in 0..snapshots {
                        msgs.push(NodeMsg::Report(raftnode::transport::Report::Snapshot {
                            to: peer,
                            ok: whole,
                        }));
                    }
                    self.mail(to, msgs);
                }
            }
            Ev::Lost {
                to,
                start,
                peer,
                snapshots,
            } => {
                if self.is_current(to, start) {
                    let mut msgs = vec![NodeMsg::Report(raftnode::transport::Report::Unreachable(
                        peer,
                    ))];
                    for _ in 0..snapshots {
                        msgs.push(NodeMsg::Report(raftnode::transport::Report::Snapshot {
                            to: peer,
                            ok: false,
                        }));
                    }
                    self.mail(to, msgs);
                }
            }
            Ev::Resend {
                from,
                start,
                to,
                msgs,
            } => {
                if self.is_current(from, start) {
                    self.send_batch(from, to, msgs, false);
                }
            }
            Ev::Job { node, start, job } => {
                if self.is_current(node, start) {
                    job();
                    self.after_io(node);
                    self.turn(node);
                }
            }
            Ev::Request {
                node,
                client,
                attempt,
                req,
            } => self.serve(node, client, attempt, req),
            Ev::Response {
                client,
                attempt,
                resp,
            } => {
                if self.clients[client].awaiting == Some(attempt) {
                    self.clients[client].awaiting = None;
                    self.judge(client, Attempt::Answer(resp));
                }
            }
            Ev::NoAnswer {
                client,
                attempt,
                sent,
                what,
            } => {
                if self.clients[client].awaiting == Some(attempt) {
                    self.clients[client].awaiting = None;
                    let what = what.to_string();
                    self.judge(client, Attempt::Failed { what, sent });
                }
            }
            Ev::Resume { client, attempt } => {
                if self.clients[client].attempt == attempt && self.clients[client].running.is_some()
                {
                    self.send_attempt(client);
                }
            }
            Ev::Next { client } => self.next_op(client),
            Ev::Fault => self.fault(),
            Ev::Heal { generation } => {
                if generation == self.cut_generation {
                    self.cut.clear();
                }
            }
            Ev::Restart { node } => {
                if self
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.live.is_none() && !n.retired)
                {
                    self.start_node(node);
                }
            }
            Ev::Admin => self.admin_next(),
            Ev::Finish => self.finish(),
            Ev::Settle => {
                if self.check_settled() {
                    self.settled = true;
                    return false;
                }
                if self.now.get() > ns(self.scenario.duration + self.scenario.settle) {
                    let why = self.unsettled_reason();
                    self.fail(format!(
                        "the cluster did not settle after the faults: {why}"
                    ));
                    return false;
                }
                self.queue.after(ms(250), Ev::Settle);
            }
        }
        true
    }

    // ---- nodes ------------------------------------------------------------------------------

    fn is_current(&self, node: u64, start: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| n.live.is_some() && n.starts == start)
    }

    fn live_mut(&mut self, node: u64) -> Option<&mut super::node::Live> {
        self.nodes.get_mut(&node).and_then(|n| n.live.as_mut())
    }

    fn start_node(&mut self, id: u64) {
        let peers: Vec<u64> = self.nodes.keys().copied().collect();
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        match node.start(&self.shared, &peers) {
            Ok(()) => {
                self.stats.starts += 1;
                self.turn(id);
            }
            Err(e) => self.fail(format!("node {id} cannot start: {e}")),
        }
    }

    /// Delivers inbox messages to a running node and lets it take a turn.
    fn mail(&mut self, node: u64, msgs: Vec<NodeMsg>) {
        let Some(live) = self.live_mut(node) else {
            return;
        };
        for msg in msgs {
            let _ = live.inbox.send(msg);
        }
        self.turn(node);
    }

    /// A node takes a turn; then what it sent travels, its jobs are queued, the answers it gave
    /// go out, and its next tick is scheduled.
    fn turn(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(live) = node.live.as_mut() else {
            return;
        };
        let turned =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| live.node.turn(None)));
        self.stats.turns += 1;
        match turned {
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.fail(format!("node {id} panicked: {what}"));
                self.crash(id, false);
                return;
            }
            Ok(Err(e)) => {
                self.node_error(id, e);
                return;
            }
            Ok(Ok(Some(Exit::Removed))) => {
                self.carry(id);
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.live = None;
                    node.retired = true;
                }
                return;
            }
            Ok(Ok(Some(Exit::Shutdown))) => {
                self.fail(format!("node {id} shut down on its own"));
                self.crash(id, false);
                return;
            }
            Ok(Ok(None)) => {}
        }
        if self.after_io(id) {
            return;
        }
        self.observe(id);
        self.carry(id);
    }

    /// A crash armed on the node's disk struck during its I/O: it is down now.
    fn after_io(&mut self, id: u64) -> bool {
        let dead = self.nodes.get(&id).is_some_and(|n| n.disk.is_dead());
        if dead {
            self.stats.crash_points += 1;
            self.crash(id, true);
            self.schedule_restart(id);
        }
        dead
    }

    fn node_error(&mut self, id: u64, e: NodeError) {
        let dead = self.nodes.get(&id).is_some_and(|n| n.disk.is_dead());
        if !dead {
            self.fail(format!("node {id} stopped with an error: {e}"));
        }
        self.stats.crash_points += u64::from(dead);
        self.crash(id, true);
        self.schedule_restart(id);
    }

    fn crash(&mut self, id: u64, power: bool) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.crash(power);
        }
    }

    fn schedule_restart(&mut self, id: u64) {
        let delay = self.rng.gen_range(ms(100)..ms(3_000));
        self.queue.after(delay, Ev::Restart { node: id });
    }

    /// Checks what must always hold of a node that took a turn: one leader per term, cluster
    /// time never going back.
    fn observe(&mut self, id: u64) {
        let Some(live) = self.nodes.get_mut(&id).and_then(|n| n.live.as_mut()) else {
            return;
        };
        let (role, term, _) = live.node.role();
        let time = live.node.machine().now();
        let went_back = time < live.cluster_time;
        let before = live.cluster_time;
        live.cluster_time = live.cluster_time.max(time);
        if went_back {
            self.fail(format!(
                "node {id}: cluster time went back from {before} to {time}"
            ));
        }
        if role == StateRole::Leader {
            let first = *self.leaders.entry(term).or_insert(id);
            if first != id {
                self.fail(format!(
                    "two leaders in term {term}: nodes {first} and {id}"
                ));
            }
        }
    }

    /// Carries what a node produced: peer messages, background jobs, answers to clients, and
    /// its next wake.
    fn carry(&mut self, id: u64) {
        let now = self.now.get();
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let start = node.starts;
        let wake_at = node
            .live
            .as_ref()
            .map(|l| node.clock.when(l.node.next_tick()));
        let Some(live) = node.live.as_mut() else {
            return;
        };
        let outbox = std::mem::take(&mut *live.outbox.lock().unwrap_or_else(|e| e.into_inner()));
        let jobs = live.jobs.take();
        let mut answers = Vec::new();
        live.held.retain_mut(|held| match held.rx.try_recv() {
            Ok(resp) => {
                answers.push((held.client, held.attempt, resp));
                false
            }
            Err(TryRecvError::Empty) if now >= held.deadline => {
                answers.push((held.client, held.attempt, unanswered(held.wait)));
                false
            }
            Err(TryRecvError::Empty) => true,
            Err(TryRecvError::Closed) => {
                answers.push((held.client, held.attempt, dropped()));
                false
            }
        });
        // The earliest of its tick and its held requests' deadlines.
        let deadline = live.held.iter().map(|h| h.deadline).min();
        let wake = match (wake_at, deadline) {
            (Some(w), Some(d)) => Some(w.min(d)),
            (w, d) => w.or(d),
        };
        let reschedule = match (wake, live.wake) {
            (Some(w), Some(old)) => w < old,
            (Some(_), None) => true,
            _ => false,
        };
        if reschedule {
            live.wake = wake;
        }
        if let (true, Some(w)) = (reschedule, wake) {
            self.queue.at(w, Ev::Wake { node: id, start });
        }
        for (work, job) in jobs {
            let delay = match work {
                Work::Snapshot => self.rng.gen_range(ms(1)..ms(60)),
                Work::HeavyRead => self.rng.gen_range(0..ms(3)),
            };
            self.queue.after(
                delay,
                Ev::Job {
                    node: id,
                    start,
                    job,
                },
            );
        }
        for (client, attempt, resp) in answers {
            self.answer(id, client, attempt, resp);
        }
        let mut by_peer: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
        for msg in outbox {
            by_peer.entry(msg.to).or_default().push(msg);
        }
        for (to, msgs) in by_peer {
            self.send_batch(id, to, msgs, true);
        }
    }

    // ---- the peer network -------------------------------------------------------------------

    fn delay(&mut self) -> Nanos {
        let mut d = self.net.base + self.rng.gen_range(0..=self.net.jitter);
        if self.rng.gen_bool(self.net.slow) {
            d += self.rng.gen_range(0..ms(600));
        }
        d
    }

    /// Seals `msgs` from `from` to `to` into one frame and puts it on the wire.
    fn send_batch(&mut self, from: u64, to: u64, msgs: Vec<Message>, may_resend: bool) {
        let Some(node) = self.nodes.get(&from) else {
            return;
        };
        let Some(live) = node.live.as_ref() else {
            return;
        };
        let start = node.starts;
        let snapshots = msgs
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .count();
        let batch = proto::RaftBatch {
            messages: msgs
                .iter()
                .map(|m| protobuf::Message::write_to_bytes(m).unwrap_or_default())
                .collect(),
            from_url: raft_url(from),
            chunk: None,
        };
        let (frame, _) = live.auth.seal_batch(to, &batch.encode_to_vec());
        self.stats.frames += 1;
        if self.captured.len() < 32 {
            self.captured.push(frame.clone());
        } else {
            let i = self.rng.gen_range(0..self.captured.len());
            self.captured[i] = frame.clone();
        }
        let sent = msgs.len();
        if self.trace {
            let kinds: Vec<String> = msgs
                .iter()
                .map(|m| {
                    format!(
                        "{:?}(t{} i{} c{})",
                        m.get_msg_type(),
                        m.term,
                        m.index,
                        m.commit
                    )
                })
                .collect();
            eprintln!(
                "{:>12.6} FRAME {from} -> {to}: {}{}",
                self.now.get() as f64 / 1e9,
                kinds.join(" "),
                if self.cut.contains(&(from, to)) {
                    " [cut]"
                } else {
                    ""
                }
            );
        }
        if may_resend && self.rng.gen_bool(self.net.resend) {
            let later = self.rng.gen_range(ms(1)..ms(1_500));
            self.queue.after(
                later,
                Ev::Resend {
                    from,
                    start,
                    to,
                    msgs: msgs.clone(),
                },
            );
        }
        let lost = self.cut.contains(&(from, to)) || self.rng.gen_bool(self.net.loss);
        if lost {
            self.stats.frames_lost += 1;
            self.queue.after(
                ACK_TIMEOUT,
                Ev::Lost {
                    to: from,
                    start,
                    peer: to,
                    snapshots,
                },
            );
            return;
        }
        if self.rng.gen_bool(self.net.duplicate) {
            let d = self.delay();
            self.queue.after(
                d,
                Ev::Frame {
                    from,
                    start,
                    to,
                    frame: frame.clone(),
                    sent,
                    snapshots,
                },
            );
        }
        let d = self.delay();
        self.queue.after(
            d,
            Ev::Frame {
                from,
                start,
                to,
                frame,
                sent,
                snapshots,
            },
        );
    }

    /// A frame arrives at `to`'s peer endpoint: checked exactly as a real endpoint checks it,
    /// then handed to the node; the acknowledgement travels back.
    fn receive(
        &mut self,
        from: u64,
        start: u64,
        to: u64,
        frame: &[u8],
        sent: usize,
        snapshots: usize,
    ) {
        let logger = self.shared.logger.clone();
        // The sender's snapshot files, should the batch hold a snapshot message (its disk
        // outlives a crash).
        let from_store = self
            .nodes
            .get(&from)
            .and_then(|n| n.live.as_ref())
            .map(|l| Arc::clone(&l.snapshots));
        let Some(live) = self.live_mut(to) else {
            // Nobody listens: the sender's connect fails.
            self.queue.after(
                ms(300),
                Ev::Lost {
                    to: from,
                    start,
                    peer: to,
                    snapshots,
                },
            );
            return;
        };
        let (header, batch) = match live.inbound.open(frame) {
            Ok(opened) => opened,
            Err(refused) => {
                live.refuser.refuse(
                    &logger,
                    refused.kind,
                    &format!("node {from}"),
                    &refused.detail,
                );
                // No answer: the sender's transport times out.
                self.queue.after(
                    ACK_TIMEOUT,
                    Ev::Lost {
                        to: from,
                        start,
                        peer: to,
                        snapshots,
                    },
                );
                return;
            }
        };
        let (mut delivery, pending) = live.inbound.screen(&header, batch, &live.refuser, &logger);
        if let Some(pending) = pending {
            // The real transport streams the file in chunks before the message goes out; here
            // the same sender and receiver code move it at once.
            let moved = match &from_store {
                Some(store) => raftnode::snapshot_stream::transfer_now(
                    pending.msg(),
                    store,
                    &mut live.receiver,
                ),
                None => Err("the sender is down".to_string()),
            };
            let checked = moved.and_then(|()| pending.check(&mut live.receiver));
            raftnode::transport::Inbound::admit_snapshot(
                &mut delivery,
                pending,
                checked,
                &live.refuser,
                &logger,
            );
        }
        let accepted = delivery.msgs.len();
        let removed = accepted > 0
            && live
                .removed_peers
                .lock()
                .map(|r| r.contains(&from))
                .unwrap_or(false);
        if accepted > 0 && !removed {
            let _ = live.inbox.send(NodeMsg::Raft(delivery));
        }
        // The acknowledgement goes back on the reverse link.
        let back_lost = self.cut.contains(&(to, from)) || self.rng.gen_bool(self.net.loss);
        if back_lost {
            self.queue.after(
                ACK_TIMEOUT,
                Ev::Lost {
                    to: from,
                    start,
                    peer: to,
                    snapshots,
                },
            );
        } else {
            let d = self.delay();
            self.queue.after(
                d,
                Ev::Ack {
                    to: from,
                    start,
                    peer: to,
                    snapshots,
                    whole: accepted >= sent,
                    removed,
                },
            );
        }
        if accepted > 0 && !removed {
            self.turn(to);
        }
    }

    fn refusals_at(&self, node: u64) -> u64 {
        self.nodes
            .get(&node)
            .and_then(|n| n.live.as_ref())
            .map_or(0, |l| l.refusals.snapshot().values().sum())
    }

    /// An attacker's frame arrives: it must be refused, and the node must go on.
    fn receive_hostile(&mut self, to: u64, frame: &[u8], expect_refusal: bool) {
        if self.live_mut(to).is_none() {
            return;
        }
        let before = self.refusals_at(to);
        self.stats.hostile += 1;
        let logger = self.shared.logger.clone();
        let live = self.live_mut(to).expect("checked above");
        match live.inbound.open(frame) {
            Err(refused) => {
                live.refuser
                    .refuse(&logger, refused.kind, "an attacker", &refused.detail);
            }
            Ok((header, batch)) => {
                let (mut delivery, pending) =
                    live.inbound.screen(&header, batch, &live.refuser, &logger);
                if let Some(pending) = pending {
                    let checked = pending.check(&mut live.receiver);
                    raftnode::transport::Inbound::admit_snapshot(
                        &mut delivery,
                        pending,
                        checked,
                        &live.refuser,
                        &logger,
                    );
                }
                if !delivery.msgs.is_empty() {
                    let _ = live.inbox.send(NodeMsg::Raft(delivery));
                }
                self.turn(to);
            }
        }
        if expect_refusal && self.live_mut(to).is_some() && self.refusals_at(to) <= before {
            self.fail(format!("node {to} did not refuse a hostile frame"));
        }
    }

    // ---- clients ----------------------------------------------------------------------------

    fn endpoints(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| !n.retired)
            .map(|n| client_url(n.id))
            .collect()
    }

    fn fresh_session(&mut self, client: usize) {
        let c = &mut self.clients[client];
        c.session = c.rng.gen_range(1..u64::MAX);
        c.seq = 0;
        let first = c.rng.gen_range(0..16);
        let endpoints = self.endpoints();
        self.clients[client].route = Route::new(endpoints, first);
    }

    fn next_op(&mut self, client: usize) {
        if self.finishing || self.clients[client].running.is_some() {
            return;
        }
        if self.clients[client].session == 0 {
            self.fresh_session(client);
        }
        let c = &mut self.clients[client];
        let (op, key) = c.planner.plan(&mut c.rng);
        let pending = self.recorder.invoke(c.process, op.f(), op.value());
        let (wire, is_write, wait) = to_request(&op);
        self.start_call(
            client,
            Task::Work { op, key, pending },
            wire,
            is_write,
            wait,
        );
    }

    fn start_call(
        &mut self,
        client: usize,
        task: Task,
        op: request::Op,
        is_write: bool,
        wait: Duration,
    ) {
        let now = self.now.instant();
        let c = &mut self.clients[client];
        if is_write {
            c.seq += 1;
        }
        c.running = Some(Running {
            task,
            call: Call::new(is_write, false, true, now, RETRY_WINDOW + wait),
            op,
            is_write,
            wait,
        });
        self.send_attempt(client);
    }

    fn send_attempt(&mut self, client: usize) {
        let c = &mut self.clients[client];
        let Some(running) = c.running.as_mut() else {
            return;
        };
        let Some(endpoint) = c.route.current().map(str::to_string) else {
            return;
        };
        running.call.trying(&endpoint);
        c.attempt += 1;
        c.awaiting = Some(c.attempt);
        let attempt = c.attempt;
        let plain = proto::Request {
            session: if running.is_write { c.session } else { 0 },
            seq: if running.is_write { c.seq } else { 0 },
            ack: if running.is_write { c.seq - 1 } else { 0 },
            op: Some(running.op.clone()),
            ..Default::default()
        };
        // Writes and membership changes are signed, as the Rust client signs them; a
        // session-less one carries a nonce and an expiry in the cluster's (simulated) time.
        let session_less = matches!(plain.op, Some(request::Op::ConfChange(_)));
        let req = if running.is_write || session_less {
            let mut plain = plain;
            if session_less {
                // (The simulated endpoint checks who signs, not the replay cache: `Gate` has
                // its own tests.)
                plain.session = self.rng.r#gen();
            }
            // Valid for ten minutes of cluster time, as the client would say from a status.
            let cluster_now = self
                .nodes
                .values()
                .filter_map(|n| n.live.as_ref())
                .map(|l| l.node.machine().now())
                .max()
                .unwrap_or(0);
            plain.not_after_ms = cluster_now + 10 * 60 * 1000;
            self.shared.admin.seal(plain, self.shared.keys.cluster.0)
        } else {
            plain
        };
        let timeout = ns(REQUEST_TIMEOUT + running.wait);
        let node = node_of(&endpoint);
        let up = node.is_some_and(|n| self.nodes.get(&n).is_some_and(|n| n.live.is_some()));
        if !up {
            self.queue.after(
                ns(CONNECT_TIMEOUT),
                Ev::NoAnswer {
                    client,
                    attempt,
                    sent: false,
                    what: "connect failed",
                },
            );
            return;
        }
        let node = node.unwrap_or_default();
        if !self.rng.gen_bool(self.net.client_loss) {
            let d = self.delay();
            self.queue.after(
                d,
                Ev::Request {
                    node,
                    client,
                    attempt,
                    req,
                },
            );
        }
        self.queue.after(
            timeout,
            Ev::NoAnswer {
                client,
                attempt,
                sent: true,
                what: "no answer in time",
            },
        );
    }

    /// A request reaches a node's client endpoint, which checks it and hands it to the node.
    fn serve(&mut self, node: u64, client: usize, attempt: u64, req: proto::Request) {
        let now = self.now.get();
        if self.live_mut(node).is_none() {
            return;
        }
        let cluster = self.shared.keys.cluster.0;
        let opened = match raftnode::identity::open(req, cluster) {
            Ok(opened) => opened,
            Err((code, why)) => {
                let resp = raftnode::answer::respond(raftnode::answer::error(code, why));
                self.answer(node, client, attempt, resp);
                return;
            }
        };
        let Some(live) = self.live_mut(node) else {
            return;
        };
        let mut planned = plan(opened.request, opened.signer.as_ref());
        // The endpoint's admin check (`server::admin_only`): a node that does not know the admin
        // yet sends the client elsewhere.
        if matches!(planned, Ok(Plan::ConfChange(..))) {
            let machine = live.node.machine();
            let admin = opened
                .signer
                .as_ref()
                .is_some_and(|s| machine.is_admin(&s.user, &s.public_key));
            if machine.user_key(raftnode::identity::ADMIN).is_none() {
                planned = Err(raftnode::answer::error(
                    proto::error::Code::Unavailable,
                    "this node does not know the admin yet",
                ));
            } else if !admin {
                planned = Err(raftnode::answer::error(
                    proto::error::Code::PermissionDenied,
                    "only the admin changes the membership",
                ));
            }
        }
        let wait = planned.as_ref().map_or(Duration::ZERO, Plan::wait);
        let (reply, rx) = oneshot_pair();
        let msg = match planned {
            Err(result) => {
                let resp = raftnode::answer::respond(result);
                self.answer(node, client, attempt, resp);
                return;
            }
            Ok(Plan::Write(cmd, _)) => NodeMsg::Write { cmd, reply },
            Ok(Plan::Read(op, _)) => NodeMsg::Read { op, reply },
            Ok(Plan::ConfChange(changes, force)) => NodeMsg::ConfChange {
                changes,
                force,
                reply,
            },
            Ok(Plan::Status(_)) => {
                let status = live.node.status();
                let resp = raftnode::answer::respond(response::Result::Status(status));
                self.answer(node, client, attempt, resp);
                return;
            }
        };
        let _ = live.inbox.send(msg);
        live.held.push(Held {
            client,
            attempt,
            rx,
            deadline: now + ns(wait),
            wait,
        });
        self.turn(node);
    }

    /// A node's answer travels back to its client (or is lost on the way).
    fn answer(&mut self, _node: u64, client: usize, attempt: u64, resp: proto::Response) {
        if self.rng.gen_bool(self.net.client_loss) {
            return;
        }
        let d = self.delay();
        self.queue.after(
            d,
            Ev::Response {
                client,
                attempt,
                resp: Box::new(resp),
            },
        );
    }

    fn judge(&mut self, client: usize, attempt: Attempt) {
        let now = self.now.instant();
        let c = &mut self.clients[client];
        let Some(running) = c.running.as_mut() else {
            return;
        };
        match running.call.judge(&mut c.route, attempt, now) {
            Next::Done(result) => self.complete(client, result),
            Next::RenewSession => {
                let c = &mut self.clients[client];
                c.session = c.rng.gen_range(1..u64::MAX);
                c.seq = 1;
                self.send_attempt(client);
            }
            Next::Retry(pause) => {
                let attempt = self.clients[client].attempt;
                self.queue.after(ns(pause), Ev::Resume { client, attempt });
            }
        }
    }

    fn complete(&mut self, client: usize, result: Result<response::Result, ClientError>) {
        let Some(running) = self.clients[client].running.take() else {
            return;
        };
        match running.task {
            Task::Admin(step) => self.admin_done(step, result),
            Task::Work { op, key, pending } => {
                self.stats.ops += 1;
                match outcome(&op, result) {
                    Ok((value, ids)) => {
                        self.stats.ok += 1;
                        self.recorder.ok(pending, value);
                        if let Some(key) = key {
                            self.clients[client].planner.saw(key, ids);
                        }
                    }
                    Err(e) if is_definite(&e) => {
                        self.stats.fail += 1;
                        self.recorder.fail(pending, Value::error(&e));
                    }
                    Err(e) => {
                        self.stats.info += 1;
                        self.recorder.info(pending, Value::error(&e));
                        // It may still be pending: go on as a new process with a new session.
                        let clients = self.scenario.clients as u64;
                        self.clients[client].process += clients;
                        self.fresh_session(client);
                    }
                }
                let think = self.clients[client].rng.gen_range(0..ms(20));
                self.queue.after(think, Ev::Next { client });
            }
        }
    }

    // ---- membership -------------------------------------------------------------------------

    fn admin(&self) -> usize {
        self.clients.len() - 1
    }

    /// Starts a membership change, if the admin is free.
    fn membership_fault(&mut self) {
        if self.admin_busy || self.finishing {
            return;
        }
        let voters = self.voters();
        let grow = voters.len() < 5 && (voters.len() <= 3 || self.rng.gen_bool(0.5));
        let step = if grow {
            let id = self.next_node_id;
            self.next_node_id += 1;
            let clock = SimClock::new(self.now.clone(), 1_000_000);
            let seed = mix(self.seed, 100 + id);
            self.nodes
                .insert(id, SimNode::new(id, Vec::new(), clock, seed));
            self.start_node(id);
            AdminStep::AddLearner(id)
        } else {
            let candidates: Vec<u64> = voters.into_iter().collect();
            let id = candidates[self.rng.gen_range(0..candidates.len())];
            AdminStep::Remove(id)
        };
        self.admin_busy = true;
        self.admin_call(step);
    }

    fn admin_call(&mut self, step: AdminStep) {
        let change = |kind: proto::member_change::Kind, id: u64, urls: bool| proto::MemberChange {
            kind: kind as i32,
            id,
            raft_url: if urls { raft_url(id) } else { String::new() },
            client_url: if urls { client_url(id) } else { String::new() },
        };
        use proto::member_change::Kind;
        let changes = match step {
            AdminStep::AddLearner(id) => vec![change(Kind::AddLearner, id, true)],
            AdminStep::Promote(id) => vec![change(Kind::AddVoter, id, false)],
            AdminStep::Remove(id) => vec![change(Kind::Remove, id, false)],
        };
        let admin = self.admin();
        let endpoints = self.endpoints();
        let first = self.rng.gen_range(0..16);
        self.clients[admin].route = Route::new(endpoints, first);
        let op = request::Op::ConfChange(proto::ConfChangeRequest {
            changes,
            force: false,
        });
        self.stats.membership_changes += 1;
        self.start_call(admin, Task::Admin(step), op, false, Duration::ZERO);
    }

    fn admin_done(&mut self, step: AdminStep, result: Result<response::Result, ClientError>) {
        let ok = matches!(result, Ok(response::Result::Status(_)));
        match (step, ok) {
            (AdminStep::AddLearner(id), true) => {
                self.stats.membership_done += 1;
                self.queue
                    .after(self.rng.gen_range(ms(500)..ms(3_000)), Ev::Admin);
                self.pending_promote = Some(id);
                return;
            }
            (AdminStep::Promote(_) | AdminStep::Remove(_), true) => {
                self.stats.membership_done += 1;
            }
            _ => {}
        }
        self.admin_busy = false;
    }

    fn admin_next(&mut self) {
        match self.pending_promote.take() {
            Some(id) if !self.finishing => self.admin_call(AdminStep::Promote(id)),
            _ => self.admin_busy = false,
        }
    }

    /// The voters as the most advanced node sees them.
    fn voters(&self) -> BTreeSet<u64> {
        self.config().0
    }

    /// (voters, learners) of the configuration the node with the highest applied index holds.
    pub(super) fn config(&self) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let best = self
            .nodes
            .values()
            .filter_map(|n| n.live.as_ref())
            .max_by_key(|l| l.node.machine().applied_index());
        let Some(live) = best else {
            return (BTreeSet::new(), BTreeSet::new());
        };
        let cs = live.node.storage().conf_state();
        (
            cs.voters
                .iter()
                .chain(&cs.voters_outgoing)
                .copied()
                .collect(),
            cs.learners
                .iter()
                .chain(&cs.learners_next)
                .copied()
                .collect(),
        )
    }

    // ---- faults -----------------------------------------------------------------------------

    fn fault(&mut self) {
        if self.finishing {
            return;
        }
        let fault = Fault::draw(&mut self.rng, &self.scenario);
        self.stats.faults += 1;
        match fault {
            Fault::Partition => self.partition(),
            Fault::Heal => self.cut.clear(),
            Fault::Crash { power } => {
                if let Some(id) = self.pick_live() {
                    self.stats.crashes += 1;
                    self.crash(id, power);
                    self.schedule_restart(id);
                }
            }
            Fault::CrashAtWrite(n) => {
                if let Some(id) = self.pick_live()
                    && let Some(node) = self.nodes.get(&id)
                {
                    node.disk.crash_at_write(n);
                }
            }
            Fault::ClockRate(ppm) => {
                if let Some(id) = self.pick_live()
                    && let Some(node) = self.nodes.get(&id)
                {
                    node.clock.set_rate(ppm);
                }
            }
            Fault::ClockJump(by) => {
                if let Some(id) = self.pick_live()
                    && let Some(node) = self.nodes.get(&id)
                {
                    node.clock.jump(by);
                }
            }
            Fault::Membership => self.membership_fault(),
            Fault::Hostile(kind) => self.hostile(kind),
            Fault::Network => self.net = NetParams::draw(&mut self.rng),
        }
        let next = self
            .rng
            .gen_range(ms(200)..ns(self.scenario.fault_every * 2));
        self.queue.after(next, Ev::Fault);
    }

    fn pick_live(&mut self) -> Option<u64> {
        let live: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.live.is_some())
            .map(|n| n.id)
            .collect();
        (!live.is_empty()).then(|| live[self.rng.gen_range(0..live.len())])
    }

    fn partition(&mut self) {
        let ids: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| !n.retired)
            .map(|n| n.id)
            .collect();
        if ids.len() < 2 {
            return;
        }
        self.cut.clear();
        match self.rng.gen_range(0..3) {
            // One node alone.
            0 => {
                let alone = ids[self.rng.gen_range(0..ids.len())];
                for &other in &ids {
                    if other != alone {
                        self.cut.insert((alone, other));
                        self.cut.insert((other, alone));
                    }
                }
            }
            // Two random sides.
            1 => {
                let side: BTreeSet<u64> = ids
                    .iter()
                    .copied()
                    .filter(|_| self.rng.gen_bool(0.5))
                    .collect();
                for &a in &ids {
                    for &b in &ids {
                        if side.contains(&a) != side.contains(&b) {
                            self.cut.insert((a, b));
                        }
                    }
                }
            }
            // Some links cut one way only.
            _ => {
                for &a in &ids {
                    for &b in &ids {
                        if a != b && self.rng.gen_bool(0.25) {
                            self.cut.insert((a, b));
                        }
                    }
                }
            }
        }
        self.cut_generation += 1;
        let heal = self.rng.gen_range(ms(300)..ms(5_000));
        self.queue.after(
            heal,
            Ev::Heal {
                generation: self.cut_generation,
            },
        );
    }

    fn hostile(&mut self, kind: Hostile) {
        let Some(to) = self.pick_live() else {
            return;
        };
        let members_known = self
            .nodes
            .get(&to)
            .and_then(|n| n.live.as_ref())
            .is_some_and(|l| !l.node.storage().conf_state().voters.is_empty());
        let frame = match kind {
            Hostile::Garbage => {
                let len = self.rng.gen_range(0..300);
                (0..len).map(|_| self.rng.r#gen::<u8>()).collect()
            }
            Hostile::BitFlip | Hostile::Replay => {
                if self.captured.is_empty() {
                    return;
                }
                let mut frame = self.captured[self.rng.gen_range(0..self.captured.len())].clone();
                if matches!(kind, Hostile::BitFlip) && !frame.is_empty() {
                    let bit = self.rng.gen_range(0..frame.len() * 8);
                    frame[bit / 8] ^= 1 << (bit % 8);
                }
                frame
            }
            Hostile::ForeignCluster => {
                let key = raftnode::keys::ClusterKey::new(self.rng.r#gen());
                let cluster = raftnode::keys::ClusterId(self.rng.gen_range(1..u64::MAX));
                let Ok(keys) = raftnode::keys::Keys::new(cluster, vec![key]) else {
                    return;
                };
                let auth =
                    raftnode::peer_auth::PeerAuth::new(raftnode::keys::KeyRing::new(keys), 1, 1);
                let msg = super::faults::heartbeat(1, to, 1);
                seal(&auth, to, vec![msg])
            }
            Hostile::Stranger => {
                if !members_known {
                    return;
                }
                let from = 1_000 + self.rng.gen_range(0..1_000);
                let auth = raftnode::peer_auth::PeerAuth::new(
                    raftnode::keys::KeyRing::new(self.shared.keys.clone()),
                    from,
                    1,
                );
                let term = self.rng.gen_range(1..1_000);
                seal(&auth, to, vec![super::faults::heartbeat(from, to, term)])
            }
            Hostile::Malformed => {
                // A member's transport (a bug in it, say) sends messages no peer may send.
                let Some(from) = self.pick_live().filter(|&f| f != to) else {
                    return;
                };
                let auth = self.nodes[&from]
                    .live
                    .as_ref()
                    .map(|l| l.auth.clone())
                    .expect("picked live");
                let msg = super::faults::malformed(&mut self.rng, from, to);
                seal(&auth, to, vec![msg])
            }
        };
        let expect_refusal = !matches!(kind, Hostile::Replay);
        let d = self.delay();
        self.queue.after(
            d,
            Ev::Hostile {
                to,
                frame,
                expect_refusal,
            },
        );
    }

    // ---- the end ----------------------------------------------------------------------------

    fn finish(&mut self) {
        self.finishing = true;
        self.cut.clear();
        self.net = NetParams::calm();
        let down: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.live.is_none() && !n.retired)
            .map(|n| n.id)
            .collect();
        for id in down {
            self.start_node(id);
        }
        self.queue.after(ms(250), Ev::Settle);
    }

    /// Every member runs and has applied everything the leader committed; no client waits.
    fn check_settled(&self) -> bool {
        self.unsettled_reason().is_empty()
    }

    pub(super) fn unsettled_reason(&self) -> String {
        if let Some(c) = self.clients.iter().position(|c| c.running.is_some()) {
            return format!("client {c} still has an operation running");
        }
        let leader = self
            .nodes
            .values()
            .filter_map(|n| n.live.as_ref())
            .find(|l| {
                let (role, _, _) = l.node.role();
                role == StateRole::Leader
            });
        let Some(leader) = leader else {
            return "no leader".into();
        };
        let status = leader.node.status();
        if status.applied != status.commit || status.commit != status.last_index {
            return format!(
                "the leader has applied {} of {} (last index {})",
                status.applied, status.commit, status.last_index
            );
        }
        let (voters, learners) = self.config();
        for id in voters.iter().chain(&learners) {
            let Some(live) = self.nodes.get(id).and_then(|n| n.live.as_ref()) else {
                return format!("member {id} is down");
            };
            let applied = live.node.machine().applied_index();
            if applied != status.applied {
                return format!(
                    "member {id} has applied {applied} of {}; {}",
                    status.applied,
                    self.describe()
                );
            }
        }
        String::new()
    }

    /// Every node's state, in one line each (for failure reports).
    pub(super) fn describe(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.values() {
            let Some(live) = n.live.as_ref() else {
                out.push_str(&format!(
                    "\n    node {}: down (retired: {})",
                    n.id, n.retired
                ));
                continue;
            };
            let s = live.node.status();
            let members: Vec<String> = s
                .members
                .iter()
                .map(|m| format!("{}:{}@{}", m.id, m.role().name(), m.matched))
                .collect();
            out.push_str(&format!(
                "\n    node {}: {} term {} leader {} commit {} applied {} log {}..{} members [{}]",
                n.id,
                s.role().name(),
                s.term,
                s.leader_id,
                s.commit,
                s.applied,
                s.first_index,
                s.last_index,
                members.join(" ")
            ));
        }
        out
    }

    /// The members (as the settled cluster holds them) that run.
    pub(super) fn members(&self) -> Vec<u64> {
        let (voters, learners) = self.config();
        voters
            .iter()
            .chain(&learners)
            .copied()
            .filter(|id| self.nodes.get(id).is_some_and(|n| n.live.is_some()))
            .collect()
    }
}

/// A sender and receiver of one answer.
fn oneshot_pair() -> (
    tokio::sync::oneshot::Sender<proto::Response>,
    tokio::sync::oneshot::Receiver<proto::Response>,
) {
    tokio::sync::oneshot::channel()
}

/// Seals `msgs` as a batch from `auth`'s node to `to`.
fn seal(auth: &raftnode::peer_auth::PeerAuth, to: u64, msgs: Vec<Message>) -> Vec<u8> {
    let batch = proto::RaftBatch {
        chunk: None,
        messages: msgs
            .iter()
            .map(|m| protobuf::Message::write_to_bytes(m).unwrap_or_default())
            .collect(),
        from_url: raft_url(auth.me()),
    };
    auth.seal_batch(to, &batch.encode_to_vec()).0
}

/// The wire operation of a planned one, whether it is a write, and how long it may block.
fn to_request(op: &Op) -> (request::Op, bool, Duration) {
    let template = |t: &tuplespace::Template| codec::template_to_bytes(t);
    match op {
        Op::Out(t) => (
            request::Op::Out(proto::Out {
                tuple: codec::tuple_to_bytes(t),
                ttl_ms: 0,
            }),
            true,
            Duration::ZERO,
        ),
        Op::In(p, timeout) => (
            request::Op::In(proto::In {
                template: template(p),
                block: true,
                timeout_ms: timeout.as_millis() as u64,
            }),
            true,
            *timeout,
        ),
        Op::Inp(p) => (
            request::Op::In(proto::In {
                template: template(p),
                block: false,
                timeout_ms: 0,
            }),
            true,
            Duration::ZERO,
        ),
        Op::Rd(p, after, timeout) => (
            request::Op::Rd(proto::Rd {
                template: template(p),
                block: true,
                timeout_ms: timeout.as_millis() as u64,
                after_id: *after,
            }),
            false,
            *timeout,
        ),
        Op::Rdp(p, after) => (
            request::Op::Rd(proto::Rd {
                template: template(p),
                block: false,
                timeout_ms: 0,
                after_id: *after,
            }),
            false,
            Duration::ZERO,
        ),
        Op::RdAll(p) => (
            request::Op::RdAll(proto::RdAll {
                template: template(p),
                limit: 0,
                after_id: 0,
                before_id: 0,
                newest_first: false,
            }),
            false,
            Duration::ZERO,
        ),
        Op::Cas(p, t) => (
            request::Op::Cas(proto::Cas {
                template: template(p),
                tuple: codec::tuple_to_bytes(t),
                ttl_ms: 0,
            }),
            true,
            Duration::ZERO,
        ),
    }
}

/// What a finished call comes to in the history: the completion value and the ids it saw, or
/// the error (a blocking operation whose timeout passed found nothing: the server's definite
/// answer).
fn outcome(
    op: &Op,
    result: Result<response::Result, ClientError>,
) -> Result<(Value, Vec<tuplespace::TupleId>), ClientError> {
    let blocking = matches!(op, Op::In(..) | Op::Rd(..));
    let result = match result {
        Err(ClientError::Timeout) if blocking => return Ok((Value::none(), vec![])),
        other => other?,
    };
    let found = |r: response::Result| -> Result<(Value, Vec<u64>), ClientError> {
        Ok(match client::found(r)? {
            Some((id, t)) => (Value::found(Some((id, &t))), vec![id]),
            None => (Value::none(), vec![]),
        })
    };
    match (op, result) {
        (Op::Out(_), response::Result::OutId(id)) => Ok((Value::id(Some(id)), vec![id])),
        (Op::Cas(..), response::Result::CasId(id)) => {
            Ok((Value::id((id != 0).then_some(id)), vec![]))
        }
        (Op::RdAll(_), r) => {
            let (items, truncated) = client::tuples(r)?;
            if truncated {
                return Err(ClientError::Protocol("a truncated rd_all".into()));
            }
            let ids = items.iter().map(|(id, _)| *id).collect();
            Ok((Value::items(items.iter().map(|(id, t)| (*id, t))), ids))
        }
        (Op::In(..) | Op::Inp(_) | Op::Rd(..) | Op::Rdp(..), r) => found(r),
        (_, r) => Err(client::unexpected(r)),
    }
}
