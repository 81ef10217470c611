//! Wiring a node process together, and `raftnode up`: a whole local cluster as child processes.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use slog::{Logger, error, info};
use tokio::sync::watch;

use raft::Storage as _;
use slog::warn;

use crate::config::{ClusterConfig, RaftSettings};
use crate::keys::{KeyRing, Keys};
use crate::machine::Machine;
use crate::node::{Address, Exit, Node, NodeHandle, NodeMsg, NodeSetup};
use crate::peer_auth::PeerAuth;
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

/// Loads the newest valid snapshot file into a machine and lines the log storage up with it.
///
/// A corrupt snapshot file is refused (by the store) and an older one used; the log is compacted
/// only behind the older kept snapshot, so its entries after that snapshot are still there.
fn restore(
    snapshots: &SnapshotStore,
    storage: &mut RaftStorage,
    logger: &Logger,
) -> anyhow::Result<(Machine, Vec<u64>)> {
    let first = storage.first_index().unwrap_or(1);
    let last = storage.last_index().unwrap_or(0);
    let kept: Vec<u64> = snapshots.list()?.iter().map(|s| s.index).collect();
    let Some(loaded) = snapshots.load_newest()? else {
        if first > 1 {
            bail!(
                "no valid snapshot file in {} but the log starts at index {first}: this node \
                 cannot rebuild its state locally; remove it from the cluster, wipe its data \
                 dir and add it back (it then receives a snapshot from the leader)",
                snapshots.dir().display()
            );
        }
        return Ok((Machine::new(), kept));
    };
    let machine = Machine::decode(&loaded.data).map_err(|e| {
        anyhow::anyhow!(
            "snapshot {} passes its checksum but does not decode: {e}",
            loaded.path.display()
        )
    })?;
    let index = loaded.index;
    let snapshot = crate::snapshot::to_raft_snapshot(&loaded);
    if index > last {
        // Written when it arrived from the leader, but the node died before installing it.
        storage.apply_snapshot(&snapshot)?;
    } else if index + 1 < first {
        bail!(
            "the newest valid snapshot (index {index}) is older than the compacted log (first \
             index {first}): this node cannot rebuild its state locally; remove it from the \
             cluster, wipe its data dir and add it back"
        );
    } else if index >= storage.snapshot_metadata().index
        && let Err(e) = storage.set_snapshot(snapshot)
    {
        warn!(logger, "the restored snapshot cannot be offered to followers"; "err" => %e);
    }
    info!(logger, "restored state from snapshot";
        "index" => index, "term" => loaded.term, "tuples" => machine.space().len(),
        "file" => %loaded.path.display(), "log_first" => first, "log_last" => last);
    let kept = kept.into_iter().filter(|&i| i <= index).collect();
    Ok((machine, kept))
}

/// Runs one node until `shutdown` resolves, it is removed from the cluster, or it fails.
pub async fn run_node(
    launch: NodeLaunch,
    logger: Logger,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Exit> {
    let NodeLaunch {
        id,
        me,
        data_dir,
        settings,
        peers,
        voters,
        key_file,
        limits,
    } = launch;
    let logger = logger.new(slog::o!("node" => id));
    let keys = Keys::load(&key_file)?;
    let cluster = keys.cluster;
    let mut storage = RaftStorage::open(&data_dir, &voters, logger.clone())
        .with_context(|| format!("opening data dir {}", data_dir.display()))?;
    let incarnation = storage.begin_incarnation(cluster.0)?;
    // A founding member writes the initial membership as the log's first entries.
    storage.bootstrap(&voters, cluster.0)?;
    let snapshots = SnapshotStore::open(&data_dir, logger.clone())?;
    let (machine, kept_snapshots) = restore(&snapshots, &mut storage, &logger)?;
    if machine.cluster_id() != 0 && machine.cluster_id() != cluster.0 {
        bail!(
            "the snapshot in {} is of cluster {:016x}, but the key file {} is for cluster \
             {cluster}",
            data_dir.display(),
            machine.cluster_id(),
            key_file.display()
        );
    }
    info!(logger, "cluster identity"; "cluster" => %cluster, "incarnation" => incarnation,
        "signing_key" => keys.signing().fingerprint(), "keys" => keys.all().len());
    let auth = PeerAuth::new(KeyRing::new(keys), id, incarnation);
    let refusals = Arc::new(Refusals::new());

    let (tx, rx) = std::sync::mpsc::channel();
    let reports_tx = tx.clone();
    let reports: Arc<dyn Fn(Report) + Send + Sync> = Arc::new(move |r| {
        let _ = reports_tx.send(NodeMsg::Report(r));
    });
    let transport = Transport::new(
        Arc::clone(&auth),
        tokio::runtime::Handle::current(),
        reports,
        crate::MAX_PEER_FRAME,
        logger.clone(),
    );
    let removed_peers = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let node = Node::new(NodeSetup {
        id,
        me: me.clone(),
        settings,
        addresses: peers,
        storage,
        machine,
        snapshots: Arc::new(snapshots),
        kept_snapshots,
        env: crate::env::Env {
            clock: Arc::new(crate::env::SystemClock),
            background: crate::env::Threads::start(),
            network: Box::new(transport),
            election_draw: None,
        },
        removed_peers: removed_peers.clone(),
        inbox: rx,
        inbox_tx: tx.clone(),
        refusals: Arc::clone(&refusals),
        cluster,
        limits: crate::proto::SpaceLimits {
            max_tuples: limits.max_tuples,
            max_bytes: limits.max_bytes,
        },
        logger: logger.clone(),
    })?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("raft-node-{id}"))
        .spawn(move || {
            let _ = done_tx.send(node.run());
        })
        .context("spawning the node thread")?;

    // File descriptors bound the connections both endpoints may keep.
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let deliver_tx = tx.clone();
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
    let peer_server = tokio::spawn({
        let (raft_url, logger, stop) = (me.raft.clone(), logger.clone(), stop_rx.clone());
        let refuser = Arc::new(Refuser::new(Arc::clone(&refusals)));
        let auth = Arc::clone(&auth);
        async move {
            transport::serve(
                &raft_url,
                peer_guard,
                auth,
                deliver,
                refuser,
                logger,
                stopped(stop),
            )
            .await
        }
    });
    let clients = tokio::spawn({
        let (client_url, logger, stop) = (me.client.clone(), logger.clone(), stop_rx.clone());
        let handle = NodeHandle::new(tx.clone());
        let refuser = Arc::new(Refuser::new(Arc::clone(&refusals)));
        async move {
            crate::server::serve(
                &client_url,
                client_guard,
                handle,
                refuser,
                logger,
                stopped(stop),
            )
            .await
        }
    });
    let reload = tokio::spawn(reload_keys_on_hangup(
        key_file.clone(),
        Arc::clone(&auth),
        logger.clone(),
    ));
    info!(logger, "node running"; "raft" => &me.raft, "client" => &me.client,
        "data_dir" => %data_dir.display());

    tokio::pin!(shutdown);
    let outcome: anyhow::Result<Exit> = tokio::select! {
        _ = &mut shutdown => Ok(Exit::Shutdown),
        r = peer_server => match r {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(anyhow::anyhow!("the peer endpoint stopped")),
        },
        r = clients => match r {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(anyhow::anyhow!("the client endpoint stopped")),
        },
        r = done_rx => match r {
            Ok(Ok(exit)) => Ok(exit),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the node stopped")),
            Err(_) => Err(anyhow::anyhow!("the node thread stopped")),
        },
    };
    let _ = stop_tx.send(true);
    reload.abort();
    let _ = tx.send(NodeMsg::Shutdown);
    match &outcome {
        Err(e) => error!(logger, "node failed"; "err" => format!("{e:#}")),
        Ok(Exit::Removed) => info!(logger, "node stopped: removed from the cluster"),
        Ok(Exit::Shutdown) => info!(logger, "node shut down"),
    }
    // Let the async log drain flush before the process exits.
    tokio::time::sleep(Duration::from_millis(50)).await;
    outcome
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

/// Starts every node of `cluster` as a child process running `exe run`, prints the endpoints,
/// and stops them all on Ctrl-C or SIGTERM.
pub async fn up(
    exe: PathBuf,
    cluster: &ClusterConfig,
    cluster_path: &Path,
    log_level: &str,
) -> anyhow::Result<()> {
    let key_file = cluster.require_key_file(cluster_path)?;
    if !key_file.exists() {
        let keys = Keys::generate();
        keys.create(key_file)?;
        println!(
            "created the cluster key file {} (cluster {}; mode 0600: keep it secret)",
            key_file.display(),
            keys.cluster
        );
    }
    // Refuse a bad key file here, once, rather than in every node.
    Keys::load(key_file)?;
    let mut children = Vec::new();
    for n in &cluster.nodes {
        let child = tokio::process::Command::new(&exe)
            .arg("run")
            .arg("--cluster")
            .arg(cluster_path)
            .arg("--id")
            .arg(n.id.to_string())
            .arg("--log-level")
            .arg(log_level)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {}", n.id))?;
        println!(
            "node {}  pid {}  raft {}  client {}  data {}",
            n.id,
            child.id().unwrap_or(0),
            n.raft,
            n.client,
            n.data_dir.display()
        );
        children.push((n.id, child));
    }
    println!(
        "cluster up: MICROBLOG_ENDPOINTS={}",
        cluster.client_endpoints().join(",")
    );
    println!("Ctrl-C or SIGTERM stops every node.");
    // A node that dies is reported; the others keep running (that is what a replicated cluster
    // is for). `up` ends on Ctrl-C or SIGTERM, or when every node has exited.
    let watch_children = async {
        let mut exited = vec![false; children.len()];
        loop {
            for (i, (id, child)) in children.iter_mut().enumerate() {
                if !exited[i]
                    && let Ok(Some(status)) = child.try_wait()
                {
                    exited[i] = true;
                    eprintln!("node {id} exited ({status}); the other nodes keep running");
                }
            }
            if exited.iter().all(|&e| e) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let all_exited = tokio::select! {
        _ = termination() => false,
        _ = watch_children => true,
    };
    for (_, child) in children.iter_mut() {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for (id, child) in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            eprintln!("node {id} did not stop within 5 s; killing it");
            let _ = child.kill().await;
        }
    }
    if all_exited {
        bail!("every node exited");
    }
    println!("cluster stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::ConfState;

    fn logger() -> Logger {
        crate::logging::discard()
    }

    /// A node that died after writing a snapshot from the leader to disk but before installing
    /// it in its log comes back with the snapshot installed, and restarts cleanly again.
    #[test]
    fn a_crash_between_saving_and_installing_a_snapshot_recovers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut storage = RaftStorage::open(dir.path(), &[1, 2, 3], logger()).unwrap();
            storage.bootstrap(&[1, 2, 3], 7).unwrap();
            let snapshots = SnapshotStore::open(dir.path(), logger()).unwrap();
            let mut machine = Machine::new();
            machine.set_cluster_id(7);
            machine.mark_applied(40, 2);
            let cs = ConfState::from((vec![1, 2, 3], vec![]));
            snapshots.save(40, 2, &cs, &machine.encode()).unwrap();
            // The crash: nothing after the save ran.
        }
        for _ in 0..2 {
            let mut storage = RaftStorage::open(dir.path(), &[1, 2, 3], logger()).unwrap();
            let snapshots = SnapshotStore::open(dir.path(), logger()).unwrap();
            let (machine, kept) = restore(&snapshots, &mut storage, &logger()).unwrap();
            assert_eq!(machine.applied_index(), 40);
            assert_eq!(machine.cluster_id(), 7);
            assert_eq!(kept, vec![40]);
            assert_eq!(storage.first_index().unwrap(), 41);
            assert_eq!(storage.last_index().unwrap(), 40);
            assert!(storage.hard_state().commit >= 40);
            assert_eq!(storage.snapshot_metadata().index, 40);
        }
    }
}
