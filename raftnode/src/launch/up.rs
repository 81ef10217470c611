//! `raftnode up`: every node of a cluster file as a child process of this one, until Ctrl-C or
//! SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use super::termination;
use crate::config::ClusterConfig;
use crate::keys::Keys;

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
