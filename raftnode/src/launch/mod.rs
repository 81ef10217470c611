//! Wiring a node process together: its key file, disk, endpoints and the node thread, until
//! it is told to stop. `raftnode up` (a whole local cluster as child processes) is in [`up`].

mod up;

pub use up::up;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use slog::{Logger, error, info};
use tokio::sync::watch;

use slog::warn;

use crate::config::{ClusterConfig, RaftSettings};
use crate::keys::{KeyRing, Keys};
use crate::node::{Address, Exit, Node, NodeHandle, NodeMsg, NodeSetup};
use crate::peer_auth::PeerAuth;
use crate::recovery::{Recovered, recover};
use crate::refusals::{Refusals, Refuser};
use crate::snapshot::SnapshotStore;
use crate::storage::RaftStorage;
use crate::transport::{self, Report, Transport};

/// Resolves when `rx` turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// What one node process starts from.
#[derive(Clone, Debug)]
pub struct NodeLaunch {
    /// This node's id.
    pub id: u64,
    /// Its endpoints.
    pub me: Address,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Raft settings.
    pub settings: RaftSettings,
    /// The addresses this node dials its peers at (from its cluster file).
    pub peers: HashMap<u64, Address>,
    /// The founding members, whose membership a fresh node writes as its first log entries
    /// (empty for a node that joins a running cluster).
    pub voters: Vec<u64>,
    /// The cluster key file (re-read on SIGHUP).
    pub key_file: PathBuf,
    /// Caps on the space (the leader puts them in the log).
    pub limits: crate::config::SpaceLimitsConfig,
}

impl NodeLaunch {
    /// Node `id` of a cluster file: the file's nodes are the initial members.
    pub fn from_cluster(
        cluster: &ClusterConfig,
        cluster_path: &Path,
        id: u64,
    ) -> Result<NodeLaunch, crate::config::ConfigError> {
        let me = cluster.node(id, cluster_path)?;
        let peers = cluster
            .nodes
            .iter()
            .map(|n| {
                (
                    n.id,
                    Address {
                        raft: n.raft.clone(),
                        client: n.client.clone(),
                    },
                )
            })
            .collect();
        let mut voters: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
        voters.sort_unstable();
        Ok(NodeLaunch {
            id,
            me: Address {
                raft: me.raft.clone(),
                client: me.client.clone(),
            },
            data_dir: me.data_dir.clone(),
            settings: cluster.raft.clone(),
            peers,
            voters,
            key_file: cluster.require_key_file(cluster_path)?.to_owned(),
            limits: cluster.limits,
        })
    }

    /// A new, empty node that waits to be added to a running cluster (`raftnode run --join`).
    /// `peers` are addresses to dial known nodes at (e.g. from a cluster file), if any; the
    /// others it learns from the leader.
    pub fn joining(
        id: u64,
        me: Address,
        data_dir: PathBuf,
        settings: RaftSettings,
        peers: HashMap<u64, Address>,
        key_file: PathBuf,
        limits: crate::config::SpaceLimitsConfig,
    ) -> NodeLaunch {
        NodeLaunch {
            id,
            me,
            data_dir,
            settings,
            peers,
            voters: Vec::new(),
            key_file,
            limits,
        }
    }
}

/// Runs one node until `shutdown` resolves, it is removed from the cluster, or it fails.
pub async fn run_node(
    launch: NodeLaunch,
    logger: Logger,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Exit> {
    let logger = logger.new(slog::o!("node" => launch.id));
    let (disk, auth) = open_disk(&launch, &logger)?;
    let (wires, inbox) = Wires::new(auth, disk.cluster, Arc::clone(&disk.snapshots));
    let node_done = start_node_thread(&launch, disk, inbox, &wires, &logger)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let endpoints = spawn_endpoints(&launch, &wires, stop_rx, &logger);
    info!(logger, "node running"; "raft" => &launch.me.raft, "client" => &launch.me.client,
        "data_dir" => %launch.data_dir.display());
    let outcome = first_to_stop(shutdown, endpoints.peer, endpoints.clients, node_done).await;
    let _ = stop_tx.send(true);
    endpoints.reload.abort();
    let _ = wires.inbox_tx.send(NodeMsg::Shutdown);
    match &outcome {
        Err(e) => error!(logger, "node failed"; "err" => format!("{e:#}")),
        Ok(Exit::Removed) => info!(logger, "node stopped: removed from the cluster"),
        Ok(Exit::Shutdown) => info!(logger, "node shut down"),
    }
    // Let the async log drain flush before the process exits.
    tokio::time::sleep(Duration::from_millis(50)).await;
    outcome
}

/// What the node recovered from its disk, and the cluster it belongs to.
struct Disk {
    recovered: Recovered,
    snapshots: Arc<SnapshotStore>,
    cluster: crate::keys::ClusterId,
}

/// Loads the key file, opens the log and the snapshots, and recovers the node's state; the
/// peer authentication speaks for this incarnation.
fn open_disk(launch: &NodeLaunch, logger: &Logger) -> anyhow::Result<(Disk, Arc<PeerAuth>)> {
    let data_dir = &launch.data_dir;
    let keys = Keys::load(&launch.key_file)?;
    let cluster = keys.cluster;
    let storage = RaftStorage::open(data_dir, &launch.voters, logger.clone())
        .with_context(|| format!("opening data dir {}", data_dir.display()))?;
    let snapshots = SnapshotStore::open(data_dir, logger.clone())?;
    let founding = (cluster, keys.admin);
    let recovered = recover(storage, &snapshots, &launch.voters, founding, logger)
        .with_context(|| format!("recovering data dir {}", data_dir.display()))?;
    info!(logger, "cluster identity"; "cluster" => %cluster, "incarnation" => recovered.incarnation,
        "signing_key" => keys.signing().fingerprint(), "keys" => keys.all().len());
    let auth = PeerAuth::new(KeyRing::new(keys), launch.id, recovered.incarnation);
    let disk = Disk {
        recovered,
        snapshots: Arc::new(snapshots),
        cluster,
    };
    Ok((disk, auth))
}

/// What the node thread and the endpoints share: the node's inbox, the refusal counters, the
/// peers seen removed, and the peer authentication.
struct Wires {
    inbox_tx: std::sync::mpsc::Sender<NodeMsg>,
    refusals: Arc<Refusals>,
    removed_peers: Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
    auth: Arc<PeerAuth>,
    cluster: crate::keys::ClusterId,
    /// The snapshot files: sent to lagging peers, received from the leader.
    snapshots: Arc<SnapshotStore>,
}

impl Wires {
    /// The wires, and the inbox the node thread reads.
    fn new(
        auth: Arc<PeerAuth>,
        cluster: crate::keys::ClusterId,
        snapshots: Arc<SnapshotStore>,
    ) -> (Wires, std::sync::mpsc::Receiver<NodeMsg>) {
        let (inbox_tx, inbox) = std::sync::mpsc::channel();
        let wires = Wires {
            inbox_tx,
            refusals: Arc::new(Refusals::new()),
            removed_peers: Arc::default(),
            auth,
            cluster,
            snapshots,
        };
        (wires, inbox)
    }
}

/// How the node thread ended.
type NodeDone = tokio::sync::oneshot::Receiver<Result<Exit, crate::node::NodeError>>;

/// Builds the node on the real clock, threads and ZeroMQ transport, and runs it on a thread of
/// its own.
fn start_node_thread(
    launch: &NodeLaunch,
    disk: Disk,
    inbox: std::sync::mpsc::Receiver<NodeMsg>,
    wires: &Wires,
    logger: &Logger,
) -> anyhow::Result<NodeDone> {
    let Disk {
        recovered,
        snapshots,
        cluster,
    } = disk;
    let reports_tx = wires.inbox_tx.clone();
    let reports: Arc<dyn Fn(Report) + Send + Sync> = Arc::new(move |r| {
        let _ = reports_tx.send(NodeMsg::Report(r));
    });
    let mut transport = Transport::new(
        Arc::clone(&wires.auth),
        tokio::runtime::Handle::current(),
        reports,
        crate::MAX_PEER_FRAME,
        logger.clone(),
    );
    transport.send_snapshots_from(
        Arc::clone(&snapshots),
        launch.settings.snapshot_send_mib_per_s << 20,
    );
    let node = Node::new(NodeSetup {
        id: launch.id,
        me: launch.me.clone(),
        settings: launch.settings.clone(),
        addresses: launch.peers.clone(),
        storage: recovered.storage,
        machine: recovered.machine,
        snapshots,
        kept_snapshots: recovered.kept_snapshots,
        env: crate::env::Env {
            clock: Arc::new(crate::env::SystemClock),
            background: crate::env::Threads::start(),
            network: Box::new(transport),
            election_draw: None,
        },
        removed_peers: Arc::clone(&wires.removed_peers),
        inbox,
        inbox_tx: wires.inbox_tx.clone(),
        refusals: Arc::clone(&wires.refusals),
        cluster,
        limits: crate::proto::SpaceLimits {
            max_tuples: launch.limits.max_tuples,
            max_bytes: launch.limits.max_bytes,
        },
        logger: logger.clone(),
    })?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("raft-node-{}", launch.id))
        .spawn(move || {
            let _ = done_tx.send(node.run());
        })
        .context("spawning the node thread")?;
    Ok(done_rx)
}

/// The tasks serving the node's two endpoints, and the key reloader.
struct Endpoints {
    peer: tokio::task::JoinHandle<Result<(), transport::TransportError>>,
    clients: tokio::task::JoinHandle<Result<(), crate::server::BindError>>,
    reload: tokio::task::JoinHandle<()>,
}

/// Connection caps for the peer and client endpoints: file descriptors bound what both may keep.
fn guard_configs(logger: &Logger) -> (crate::guard::GuardConfig, crate::guard::GuardConfig) {
    let capacity = crate::guard::connection_capacity();
    let mut peer_guard = transport::guard_config(crate::MAX_PEER_FRAME);
    peer_guard.max_connections = peer_guard.max_connections.min(capacity / 8).max(8);
    let mut client_guard = crate::server::guard_config();
    client_guard.max_connections = client_guard
        .max_connections
        .min(capacity.saturating_sub(peer_guard.max_connections))
        .max(8);
    info!(logger, "connection limits"; "client" => client_guard.max_connections,
        "raft" => peer_guard.max_connections);
    (peer_guard, client_guard)
}

/// Serves the peer and client endpoints until `stop` turns true, and reloads the key file on
/// SIGHUP. Batches from peers this node saw removed are not delivered.
fn spawn_endpoints(
    launch: &NodeLaunch,
    wires: &Wires,
    stop: watch::Receiver<bool>,
    logger: &Logger,
) -> Endpoints {
    let (peer_guard, client_guard) = guard_configs(logger);
    let deliver_tx = wires.inbox_tx.clone();
    let removed_peers = Arc::clone(&wires.removed_peers);
    let deliver: crate::transport::Deliver = Arc::new(move |delivery| {
        let removed = removed_peers
            .lock()
            .map(|set| set.contains(&delivery.from))
            .unwrap_or(false);
        if !removed {
            let _ = deliver_tx.send(NodeMsg::Raft(delivery));
        }
        removed
    });
    let peer = tokio::spawn({
        let (url, auth) = (launch.me.raft.clone(), Arc::clone(&wires.auth));
        let refuser = Arc::new(Refuser::new(Arc::clone(&wires.refusals)));
        let receiver = crate::snapshot_stream::Receiver::new(
            Arc::clone(&wires.snapshots),
            wires.cluster,
            logger.new(slog::o!("part" => "snapshot receiver")),
        );
        let (logger, stop) = (logger.clone(), stopped(stop.clone()));
        async move {
            let endpoint = transport::Endpoint {
                guard: peer_guard,
                auth,
                deliver,
                refuser,
                receiver: Some(receiver),
            };
            transport::serve(&url, endpoint, logger, stop).await
        }
    });
    let clients = tokio::spawn({
        let (url, handle) = (
            launch.me.client.clone(),
            NodeHandle::new(wires.inbox_tx.clone()),
        );
        let verifier = crate::verifier::Verifier::start(logger);
        let gate = Arc::new(crate::gate::Gate::new(wires.cluster.0, verifier));
        let refuser = Arc::new(Refuser::new(Arc::clone(&wires.refusals)));
        let (logger, stop) = (logger.clone(), stopped(stop));
        async move {
            crate::server::serve(&url, client_guard, handle, gate, refuser, logger, stop).await
        }
    });
    let reload = tokio::spawn(reload_keys_on_hangup(
        launch.key_file.clone(),
        Arc::clone(&wires.auth),
        logger.clone(),
    ));
    Endpoints {
        peer,
        clients,
        reload,
    }
}

/// Waits for the first of: `shutdown`, an endpoint failing, the node thread ending.
async fn first_to_stop(
    shutdown: impl Future<Output = ()>,
    peer: tokio::task::JoinHandle<Result<(), transport::TransportError>>,
    clients: tokio::task::JoinHandle<Result<(), crate::server::BindError>>,
    node_done: NodeDone,
) -> anyhow::Result<Exit> {
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => Ok(Exit::Shutdown),
        r = peer => match r {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(anyhow::anyhow!("the peer endpoint stopped")),
        },
        r = clients => match r {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(anyhow::anyhow!("the client endpoint stopped")),
        },
        r = node_done => match r {
            Ok(Ok(exit)) => Ok(exit),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the node stopped")),
            Err(_) => Err(anyhow::anyhow!("the node thread stopped")),
        },
    }
}

/// Re-reads the key file on every SIGHUP and puts its keys in force (a key rotation without a
/// restart); a file that does not load, or names another cluster, is refused and the keys in
/// force stay.
async fn reload_keys_on_hangup(key_file: PathBuf, auth: Arc<PeerAuth>, logger: Logger) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        warn!(
            logger,
            "cannot listen for SIGHUP; key changes need a restart"
        );
        return;
    };
    while hangups.recv().await.is_some() {
        let loaded = Keys::load(&key_file)
            .map_err(|e| e.to_string())
            .and_then(|keys| {
                let summary = (keys.signing().fingerprint(), keys.all().len());
                auth.key_ring().replace(keys).map(|()| summary)
            });
        match loaded {
            Ok((signing, count)) => info!(logger, "reloaded the cluster key file";
                "file" => %key_file.display(), "signing_key" => signing, "keys" => count),
            Err(e) => error!(logger, "kept the keys in force: cannot reload the key file";
                "file" => %key_file.display(), "err" => e),
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn termination() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
