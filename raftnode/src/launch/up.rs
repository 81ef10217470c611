//! `raftnode up`: every node of a cluster file as a child process of this one, until Ctrl-C or
//! SIGTERM. The processes and the key file are the dev-cluster kit's ([`crate::devcluster`]); the
//! ports and data dirs are the file's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use super::termination;
use crate::config::ClusterConfig;
use crate::devcluster::{NodeProcess, Output, ensure_key_file};

/// How long the nodes get to stop after SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(5);

/// Starts every node of `cluster` as a child process running `exe [prefix...] run`, prints the
/// endpoints, and stops them all on Ctrl-C or SIGTERM. (`prefix`: `["node"]` when `exe` is
/// `microblog`, whose `node` command is `raftnode`'s command line.)
pub async fn up(
    exe: PathBuf,
    prefix: &[&str],
    cluster: &ClusterConfig,
    cluster_path: &Path,
    log_level: &str,
) -> anyhow::Result<()> {
    let key_file = cluster.require_key_file(cluster_path)?;
    // Created here if missing, and a bad one refused here, once, rather than in every node.
    if let Some(keys) = ensure_key_file(key_file)? {
        println!(
            "created the cluster key file {} (cluster {}; mode 0600: keep it secret)",
            key_file.display(),
            keys.cluster
        );
    }
    let mut nodes = Vec::new();
    for n in &cluster.nodes {
        let mut command = Command::new(&exe);
        command
            .args(prefix)
            .arg("run")
            .arg("--cluster")
            .arg(cluster_path)
            .arg("--id")
            .arg(n.id.to_string())
            .arg("--log-level")
            .arg(log_level);
        // A node that fails to start stops the ones started before it (dropping them kills them).
        let process = NodeProcess::start(command, &Output::Inherit, false)
            .with_context(|| format!("starting node {}", n.id))?;
        println!(
            "node {}  pid {}  raft {}  client {}  data {}",
            n.id,
            process.pid(),
            n.raft,
            n.client,
            n.data_dir.display()
        );
        nodes.push((n.id, process));
    }
    println!(
        "cluster up: MICROBLOG_ENDPOINTS={}",
        cluster.client_endpoints().join(",")
    );
    println!("Ctrl-C or SIGTERM stops every node.");
    // A node that dies is reported; the others keep running (that is what a replicated cluster
    // is for). `up` ends on Ctrl-C or SIGTERM, or when every node has exited.
    let watch_nodes = async {
        let mut reported = vec![false; nodes.len()];
        loop {
            for (i, (id, node)) in nodes.iter().enumerate() {
                if !reported[i]
                    && let Some(status) = node.exited()
                {
                    reported[i] = true;
                    eprintln!("node {id} exited ({status}); the other nodes keep running");
                }
            }
            if reported.iter().all(|&r| r) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let all_exited = tokio::select! {
        _ = termination() => false,
        _ = watch_nodes => true,
    };
    stop_all(&mut nodes).await;
    if all_exited {
        bail!("every node exited");
    }
    println!("cluster stopped");
    Ok(())
}

/// SIGTERM to every node at once, then SIGKILL to those still running after [`GRACE`].
async fn stop_all(nodes: &mut [(u64, NodeProcess)]) {
    for (_, node) in nodes.iter() {
        node.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    for (id, node) in nodes.iter_mut() {
        while node.exited().is_none() {
            if Instant::now() >= deadline {
                eprintln!("node {id} did not stop within {GRACE:?}; killing it");
                node.kill();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
