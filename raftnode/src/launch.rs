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

use crate::config::ClusterConfig;
use crate::node::{Address, Node, NodeHandle, NodeMsg};
use crate::storage::RaftStorage;
use crate::transport::{self, Report, Transport};

/// Resolves when `rx` turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Runs node `id` of `cluster` until `shutdown` resolves or the node fails.
pub async fn run_node(
    cluster: &ClusterConfig,
    cluster_path: &Path,
    id: u64,
    logger: Logger,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let me = cluster.node(id, cluster_path)?.clone();
    let logger = logger.new(slog::o!("node" => id));
    let addresses: HashMap<u64, Address> = cluster
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
    let voters: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let storage = RaftStorage::open(&me.data_dir, &voters, logger.clone())
        .with_context(|| format!("opening data dir {}", me.data_dir.display()))?;

    let (tx, rx) = std::sync::mpsc::channel();
    let reports_tx = tx.clone();
    let reports: Arc<dyn Fn(Report) + Send + Sync> = Arc::new(move |r| {
        let _ = reports_tx.send(NodeMsg::Report(r));
    });
    let transport = Transport::new(
        id,
        tokio::runtime::Handle::current(),
        reports,
        crate::MAX_PEER_FRAME,
        logger.clone(),
    );
    let node = Node::new(
        id,
        storage,
        cluster.raft.clone(),
        addresses,
        transport,
        rx,
        logger.clone(),
    )?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("raft-node-{id}"))
        .spawn(move || {
            let _ = done_tx.send(node.run());
        })
        .context("spawning the node thread")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let deliver_tx = tx.clone();
    let deliver: Arc<dyn Fn(u64, Vec<raft::eraftpb::Message>) + Send + Sync> =
        Arc::new(move |_from, msgs| {
            let _ = deliver_tx.send(NodeMsg::Raft(msgs));
        });
    let peers = tokio::spawn({
        let (raft_url, logger, stop) = (me.raft.clone(), logger.clone(), stop_rx.clone());
        async move {
            transport::serve(
                &raft_url,
                crate::MAX_PEER_FRAME,
                deliver,
                logger,
                stopped(stop),
            )
            .await
        }
    });
    let clients = tokio::spawn({
        let (client_url, logger, stop) = (me.client.clone(), logger.clone(), stop_rx.clone());
        let handle = NodeHandle::new(tx.clone());
        async move { crate::server::serve(&client_url, handle, logger, stopped(stop)).await }
    });
    info!(logger, "node running"; "raft" => &me.raft, "client" => &me.client,
        "data_dir" => %me.data_dir.display());

    tokio::pin!(shutdown);
    let outcome: anyhow::Result<()> = tokio::select! {
        _ = &mut shutdown => Ok(()),
        r = peers => match r {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(anyhow::anyhow!("the peer endpoint stopped")),
        },
        r = clients => match r {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(anyhow::anyhow!("the client endpoint stopped")),
        },
        r = done_rx => match r {
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the node stopped")),
            _ => Err(anyhow::anyhow!("the node thread stopped")),
        },
    };
    let _ = stop_tx.send(true);
    let _ = tx.send(NodeMsg::Shutdown);
    if let Err(e) = &outcome {
        error!(logger, "node failed"; "err" => format!("{e:#}"));
    } else {
        info!(logger, "node shut down");
    }
    // Let the async log drain flush before the process exits.
    tokio::time::sleep(Duration::from_millis(50)).await;
    outcome
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
    let watch_children = async {
        loop {
            for (id, child) in children.iter_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return (*id, status);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let early = tokio::select! {
        _ = termination() => None,
        exit = watch_children => Some(exit),
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
    if let Some((id, status)) = early {
        bail!("node {id} exited ({status}); stopped the others");
    }
    println!("cluster stopped");
    Ok(())
}
