//! One simulated node: the real [`Node`] on an in-memory disk, with a virtual clock, an
//! in-memory network endpoint and a queue of background jobs, started (and restarted) through
//! the same recovery the node process uses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use raftnode::config::RaftSettings;
use raftnode::disk::memory::MemDisk;
use raftnode::env::{Background, Env, Job, Network, Work};
use raftnode::keys::{KeyRing, Keys};
use raftnode::node::{Address, Node, NodeMsg, NodeSetup};
use raftnode::peer_auth::PeerAuth;
use raftnode::proto;
use raftnode::recovery::{Recovered, recover};
use raftnode::refusals::{Refusals, Refuser};
use raftnode::snapshot::SnapshotStore;
use raftnode::snapshot_stream::Receiver;
use raftnode::storage::RaftStorage;
use raftnode::transport::{Inbound, Report};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slog::Logger;
use tokio::sync::oneshot;

use super::clock::SimClock;
use super::queue::Nanos;

/// A node's raft endpoint in the simulation (never dialled: the simulated network routes by id).
pub fn raft_url(id: u64) -> String {
    format!("tcp://127.0.0.1:{}", 21_000 + id)
}

/// A node's client endpoint in the simulation.
pub fn client_url(id: u64) -> String {
    format!("tcp://127.0.0.1:{}", 22_000 + id)
}

/// The node a client endpoint names.
pub fn node_of(url: &str) -> Option<u64> {
    url.strip_prefix("tcp://127.0.0.1:")?
        .parse::<u64>()
        .ok()?
        .checked_sub(22_000)
}

/// The addresses of a node.
pub fn address(id: u64) -> Address {
    Address {
        raft: raft_url(id),
        client: client_url(id),
    }
}

/// The network endpoint a simulated node sends through: messages for known peers wait in its
/// outbox for the simulator to carry; those for unknown peers are reported back at once, as the
/// transport does.
struct SimNet {
    peers: BTreeMap<u64, String>,
    outbox: Arc<Mutex<Vec<Message>>>,
    inbox: Sender<NodeMsg>,
}

impl Network for SimNet {
    fn set_self_url(&mut self, _url: String) {}

    fn add_peer(&mut self, id: u64, raft_url: String) {
        self.peers.insert(id, raft_url);
    }

    fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    fn send(&mut self, msgs: Vec<Message>) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        for msg in msgs {
            if self.peers.contains_key(&msg.to) {
                outbox.push(msg);
                continue;
            }
            let to = msg.to;
            let _ = self.inbox.send(NodeMsg::Report(Report::Unreachable(to)));
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                let _ = self
                    .inbox
                    .send(NodeMsg::Report(Report::Snapshot { to, ok: false }));
            }
        }
    }
}

/// Background work waits here until the simulator runs it (at a time drawn from the seed).
#[derive(Clone, Default)]
pub struct Jobs(Arc<Mutex<Vec<(Work, Job)>>>);

impl Jobs {
    /// The jobs queued since the last call.
    pub fn take(&self) -> Vec<(Work, Job)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Background for Jobs {
    fn spawn(&self, work: Work, job: Job) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((work, job));
        Ok(())
    }
}

/// A client request the node holds, and when its endpoint stops waiting for the answer.
pub struct Held {
    /// The client (or the admin) that sent it.
    pub client: usize,
    /// The client's attempt.
    pub attempt: u64,
    /// The node's answer.
    pub rx: oneshot::Receiver<proto::Response>,
    /// Virtual time at which the endpoint answers `unanswered`.
    pub deadline: Nanos,
    /// How long it waited by then.
    pub wait: Duration,
}

/// A running incarnation of a node.
pub struct Live {
    /// The node.
    pub node: Node,
    /// Its inbox.
    pub inbox: Sender<NodeMsg>,
    /// Seals what it sends.
    pub auth: Arc<PeerAuth>,
    /// Opens what it receives.
    pub inbound: Inbound,
    /// Its snapshot files (what it sends to a lagging peer).
    pub snapshots: Arc<SnapshotStore>,
    /// Receives snapshot files from a leader.
    pub receiver: Receiver,
    /// What its parts refused.
    pub refusals: Arc<Refusals>,
    /// Counts and logs refusals at its peer endpoint.
    pub refuser: Refuser,
    /// Peers it saw removed (its peer endpoint tells them).
    pub removed_peers: Arc<Mutex<HashSet<u64>>>,
    /// Messages waiting to be carried.
    pub outbox: Arc<Mutex<Vec<Message>>>,
    /// Background jobs waiting to run.
    pub jobs: Jobs,
    /// Client requests it holds.
    pub held: Vec<Held>,
    /// When it next wakes for a tick.
    pub wake: Option<Nanos>,
    /// Cluster time as last seen, which must never go back within an incarnation.
    pub cluster_time: u64,
}

/// A simulated node across its incarnations.
pub struct SimNode {
    /// Its id.
    pub id: u64,
    /// Its disk, which outlives every incarnation.
    pub disk: MemDisk,
    /// Its monotonic clock.
    pub clock: Arc<SimClock>,
    /// The founding voters it bootstraps with (empty: it joins a running cluster).
    pub founders: Vec<u64>,
    /// The running incarnation, if any.
    pub live: Option<Live>,
    /// How many times it has started (the simulator's incarnation counter).
    pub starts: u64,
    /// Removed from the cluster: it stays down.
    pub retired: bool,
    /// Seeds its election timeouts.
    election_seed: u64,
}

/// What every node starts with.
pub struct Shared {
    /// The cluster's keys.
    pub keys: Keys,
    /// The admin, whose key the founding entries register; every simulated client signs as the
    /// admin (the policy's checks have their own tests).
    pub admin: raftnode::identity::Identity,
    /// Raft settings.
    pub settings: RaftSettings,
    /// The logger.
    pub logger: Logger,
}

impl SimNode {
    /// A node that has never run.
    pub fn new(id: u64, founders: Vec<u64>, clock: Arc<SimClock>, seed: u64) -> SimNode {
        SimNode {
            id,
            disk: MemDisk::new(&format!("node-{id}"), seed),
            clock,
            founders,
            live: None,
            starts: 0,
            retired: false,
            election_seed: seed ^ 0x5eed_e1ec_7000_0000,
        }
    }

    /// Starts a new incarnation from what its disk holds, as the node process does.
    pub fn start(&mut self, shared: &Shared, peers: &[u64]) -> Result<(), String> {
        self.disk.power_on();
        self.starts += 1;
        let logger = shared.logger.new(slog::o!("node" => self.id));
        let dir = format!("/sim/node-{}", self.id);
        let storage = RaftStorage::on_engine(
            self.disk.log_engine(),
            Path::new(&dir),
            &self.founders,
            logger.clone(),
        )
        .map_err(|e| format!("opening the log: {e}"))?;
        let snapshots = SnapshotStore::in_dir(self.disk.snapshot_dir(), logger.clone())
            .map_err(|e| format!("opening the snapshots: {e}"))?;
        let cluster = shared.keys.cluster;
        let founding = (cluster, shared.keys.admin);
        let Recovered {
            storage,
            machine,
            kept_snapshots,
            incarnation,
        } = recover(storage, &snapshots, &self.founders, founding, &logger)
            .map_err(|e| format!("recovering: {e:#}"))?;
        let auth = PeerAuth::new(KeyRing::new(shared.keys.clone()), self.id, incarnation);
        let snapshots = Arc::new(snapshots);
        let receiver = Receiver::new(Arc::clone(&snapshots), cluster, logger.clone());
        let refusals = Arc::new(Refusals::new());
        let (inbox_tx, inbox) = channel();
        let outbox = Arc::new(Mutex::new(Vec::new()));
        let jobs = Jobs::default();
        let removed_peers = Arc::new(Mutex::new(HashSet::new()));
        let mut rng = StdRng::seed_from_u64(self.election_seed ^ self.starts);
        let addresses: HashMap<u64, Address> = peers.iter().map(|&p| (p, address(p))).collect();
        let node = Node::new(NodeSetup {
            id: self.id,
            me: address(self.id),
            settings: shared.settings.clone(),
            addresses,
            storage,
            machine,
            snapshots: Arc::clone(&snapshots),
            kept_snapshots,
            env: Env {
                clock: self.clock.clone(),
                background: Arc::new(jobs.clone()),
                network: Box::new(SimNet {
                    peers: BTreeMap::new(),
                    outbox: outbox.clone(),
                    inbox: inbox_tx.clone(),
                }),
                election_draw: Some(Box::new(move |lo, hi| rng.gen_range(lo..hi))),
            },
            removed_peers: removed_peers.clone(),
            inbox,
            inbox_tx: inbox_tx.clone(),
            refusals: refusals.clone(),
            cluster,
            limits: proto::SpaceLimits {
                max_tuples: 1_000_000,
                max_bytes: 1 << 30,
            },
            logger,
        })
        .map_err(|e| format!("starting the node: {e}"))?;
        self.live = Some(Live {
            node,
            inbox: inbox_tx,
            inbound: Inbound::new(auth.clone()),
            snapshots,
            receiver,
            auth,
            refuser: Refuser::new(refusals.clone()),
            refusals,
            removed_peers,
            outbox,
            jobs,
            held: Vec::new(),
            wake: None,
            cluster_time: 0,
        });
        Ok(())
    }

    /// Stops the running incarnation as a crash does: whatever it held in memory is gone (its
    /// clients' requests go unanswered), and with `power`, so is what its disk had not synced.
    pub fn crash(&mut self, power: bool) {
        self.live = None;
        if power {
            self.disk.power_loss();
        }
    }
}
