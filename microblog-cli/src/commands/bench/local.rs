//! A throwaway local cluster for the benchmarks: the dev-cluster kit's
//! [`DevCluster`](raftnode::devcluster::DevCluster) (`raftnode run` processes on leased loopback
//! ports, a generated key and cluster file, data dirs and one log per node in a temp dir), with
//! the bench's errors. Every process is killed by pid when the cluster is dropped (at the end, on
//! an error, on Ctrl-C: the nodes run in process groups of their own, so a Ctrl-C reaches only
//! microblog); the temp dir is removed unless it was kept to look at the logs.

use std::path::Path;
use std::time::{Duration, Instant};

use raftnode::client::ClientOptions;
use raftnode::config::NodeConfig;
use raftnode::devcluster::{Agreement, DevCluster, DevClusterError, Options};
use raftnode::proto;

use crate::error::{Error, Result};

/// Set (to anything but `0`) to keep the temp dir with the nodes' logs after a successful run
/// too.
pub const KEEP_ENV: &str = "MICROBLOG_BENCH_KEEP";

/// Nodes started by this process.
pub struct LocalCluster {
    /// The kit's cluster.
    kit: DevCluster,
    /// Keep the temp dir when dropped (asked for, or something failed).
    keep: bool,
}

/// Options for asking one node about itself, quickly.
pub fn probe_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(200),
        retry_window: Duration::from_millis(500),
        follow_leader: false,
    }
}

/// The bench's error for what the kit refused.
fn failed(e: DevClusterError) -> Error {
    let hint = match &e {
        DevClusterError::Program(_) => {
            "build both: cargo build --release -p microblog-cli -p raftnode (or set RAFTNODE_BIN)"
        }
        DevClusterError::Io { .. } => "set TMPDIR to a writable directory",
        _ => "",
    };
    let error = Error::failed(e.to_string());
    if hint.is_empty() {
        error
    } else {
        error.hint(hint)
    }
}

impl LocalCluster {
    /// Makes an `n`-node cluster with the default settings in a new temp dir and starts every
    /// node.
    pub fn start(n: u64) -> Result<LocalCluster> {
        let options = Options {
            dir_prefix: "microblog-bench-".into(),
            own_process_group: true,
            ..Options::default()
        };
        let kit = DevCluster::start(n as usize, options).map_err(failed)?;
        Ok(LocalCluster {
            kit,
            keep: std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0"),
        })
    }

    /// The cluster's admin.
    pub fn admin(&self) -> Result<raftnode::identity::Identity> {
        self.kit
            .admin()
            .map_err(|e| Error::failed(format!("the local cluster's admin key: {e}")))
    }

    /// The temp dir (cluster file, data dirs, logs).
    pub fn dir(&self) -> &Path {
        self.kit.dir()
    }

    /// Keeps the temp dir (and so the logs) when the cluster is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Every node's client endpoint.
    pub fn client_endpoints(&self) -> Vec<String> {
        self.kit.endpoints()
    }

    /// Node `id`'s configuration (its endpoints and data dir).
    pub fn node(&self, id: u64) -> Option<NodeConfig> {
        let mut node = self.kit.node(id)?.clone();
        if node.data_dir.is_relative()
            && let Some(base) = self.kit.config_path().parent()
        {
            node.data_dir = base.join(&node.data_dir);
        }
        Some(node)
    }

    /// The process id of a running node.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.kit.pid(id)
    }

    /// Starts (or restarts, with its data and on its ports) node `id` of the cluster file.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        self.kit.spawn(id).map_err(failed)
    }

    /// Starts a new empty node `id` with `raftnode run --join` (fresh ports, its own data dir):
    /// it waits to be added.
    pub fn spawn_joining(&mut self, id: u64) -> Result<NodeConfig> {
        let node = self.kit.new_node(id).map_err(failed)?;
        self.kit.spawn_joining(id).map_err(failed)?;
        Ok(node)
    }

    /// SIGKILLs node `id` (by pid) and reaps it; when the signal was sent.
    pub fn kill(&mut self, id: u64) -> Result<Instant> {
        self.kit
            .kill(id)
            .ok_or_else(|| failed(DevClusterError::NotRunning(id)))
    }

    /// Whether every node started is still running; the first that exited otherwise.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.kit.first_exited() {
            None => Ok(()),
            Some((id, status)) => {
                self.keep = true;
                Err(failed(self.kit.exited_error(id, status)))
            }
        }
    }

    /// The last lines of a node's log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        self.kit.log_tail(id, lines)
    }

    /// Every running node's own status (`None`: no answer).
    pub async fn statuses(&self) -> Vec<(u64, Option<proto::Status>)> {
        self.kit.statuses_with(&probe_options()).await
    }

    /// Waits until every running node answers and all agree on one leader; its id.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<u64> {
        let ready = self.kit.wait_leader(timeout, Agreement::Everyone).await;
        ready.map_err(|e| {
            self.keep = true;
            failed(e)
        })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.keep {
            self.kit.keep_dir();
            eprintln!(
                "microblog bench: the local cluster's files and logs are kept in {}",
                self.kit.dir().display()
            );
        }
    }
}
