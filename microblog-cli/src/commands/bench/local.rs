//! A throwaway local cluster for the benchmarks: `raftnode run` processes on loopback with free
//! ports, a generated cluster file and data dirs in a temp dir, each node's log in a file there.
//! Every process is killed by pid when the cluster is dropped (at the end, on an error, on
//! Ctrl-C); the temp dir is removed unless it was kept to look at the logs.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftnode::client::{Client, ClientOptions};
use raftnode::proto;

use crate::error::{Error, Result};

/// Set (to anything but `0`) to keep the temp dir with the nodes' logs after a successful run
/// too.
pub const KEEP_ENV: &str = "MICROBLOG_BENCH_KEEP";

/// One node's place in the cluster.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Peer endpoint.
    pub raft: String,
    /// Client endpoint.
    pub client: String,
    /// Data dir.
    pub data_dir: PathBuf,
}

/// Nodes started by this process.
pub struct LocalCluster {
    dir: PathBuf,
    config: PathBuf,
    bin: PathBuf,
    nodes: BTreeMap<u64, NodeSpec>,
    procs: BTreeMap<u64, Child>,
    keep: bool,
}

/// The `raftnode` program: `RAFTNODE_BIN`, else beside this program, else on PATH.
pub fn raftnode_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("RAFTNODE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let name = format!("raftnode{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)));
    beside
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(&name))
                    .find(|p| p.is_file())
            })
        })
        .ok_or_else(|| {
            Error::failed("the raftnode program is neither next to microblog nor on PATH").hint(
                "build both: cargo build --release -p microblog-cli -p raftnode (or set \
                 RAFTNODE_BIN)",
            )
        })
}

/// `n` distinct free TCP ports on 127.0.0.1 (held together while chosen, so all differ).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
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

impl LocalCluster {
    /// Writes a cluster file for `n` nodes (default raft settings plus `raft_settings`, TOML
    /// lines of the `[raft]` section) in a new temp dir and starts every node.
    pub fn start(n: u64, raft_settings: &str) -> Result<LocalCluster> {
        let bin = raftnode_bin()?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "microblog-bench-{}-{}",
            std::process::id(),
            stamp % 1_000_000_000
        ));
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::failed(format!("cannot create {}: {e}", dir.display()))
                .hint("set TMPDIR to a writable directory")
        })?;
        let mut cluster = LocalCluster {
            config: dir.join("cluster.toml"),
            dir,
            bin,
            nodes: BTreeMap::new(),
            procs: BTreeMap::new(),
            keep: std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0"),
        };
        let ports = free_ports(2 * n as usize)?;
        let key_file = cluster.dir.join("cluster.key");
        raftnode::keys::Keys::generate()
            .create(&key_file)
            .map_err(|e| Error::failed(e.to_string()))?;
        let mut text = format!(
            "key_file = \"{}\"\n\n[raft]\n{raft_settings}\n",
            key_file.display()
        );
        for i in 0..n {
            let id = i + 1;
            let spec = NodeSpec {
                raft: format!("tcp://127.0.0.1:{}", ports[2 * i as usize]),
                client: format!("tcp://127.0.0.1:{}", ports[2 * i as usize + 1]),
                data_dir: cluster.dir.join(format!("node{id}")),
            };
            text.push_str(&format!(
                "\n[[node]]\nid = {id}\nraft = \"{}\"\nclient = \"{}\"\ndata_dir = \"{}\"\n",
                spec.raft,
                spec.client,
                spec.data_dir.display()
            ));
            cluster.nodes.insert(id, spec);
        }
        std::fs::write(&cluster.config, text)?;
        for id in 1..=n {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The temp dir (cluster file, data dirs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the temp dir (and so the logs) when the cluster is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Every node's client endpoint.
    pub fn client_endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.client.clone()).collect()
    }

    /// The process id of a running node.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs.get(&id).map(Child::id)
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.log"))
    }

    fn launch(&mut self, id: u64, command: &mut Command) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        command
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        #[cfg(unix)]
        {
            // Its own process group: a Ctrl-C at the terminal reaches only microblog, which then
            // kills every node itself.
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let child = command
            .spawn()
            .map_err(|e| Error::failed(format!("cannot start {}: {e}", self.bin.display())))?;
        self.procs.insert(id, child);
        Ok(())
    }

    /// Starts (or restarts, with its data) node `id` of the cluster file.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let mut command = Command::new(&self.bin);
        command
            .arg("run")
            .arg("--cluster")
            .arg(&self.config)
            .arg("--id")
            .arg(id.to_string());
        self.launch(id, &mut command)
    }

    /// Starts a new empty node `id` with `raftnode run --join` (fresh ports, its own data dir):
    /// it waits to be added.
    pub fn spawn_joining(&mut self, id: u64) -> Result<NodeSpec> {
        let ports = free_ports(2)?;
        let spec = NodeSpec {
            raft: format!("tcp://127.0.0.1:{}", ports[0]),
            client: format!("tcp://127.0.0.1:{}", ports[1]),
            data_dir: self.dir.join(format!("node{id}")),
        };
        let mut command = Command::new(&self.bin);
        command
            .args(["run", "--join", "--id", &id.to_string()])
            .args(["--raft", &spec.raft, "--client", &spec.client])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--cluster")
            .arg(&self.config);
        self.nodes.insert(id, spec.clone());
        self.launch(id, &mut command)?;
        Ok(spec)
    }

    /// SIGKILLs node `id` (by pid) and reaps it; when the signal was sent.
    pub fn kill(&mut self, id: u64) -> Result<Instant> {
        let Some(mut child) = self.procs.remove(&id) else {
            return Err(Error::failed(format!("node {id} is not running")));
        };
        child.kill()?;
        let sent = Instant::now();
        child.wait()?;
        Ok(sent)
    }

    /// Whether every node started is still running; the first that exited otherwise.
    pub fn check_alive(&mut self) -> Result<()> {
        for (id, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                let id = *id;
                self.keep = true;
                return Err(Error::failed(format!(
                    "node {id} exited ({status}); last lines of its log:\n{}",
                    self.log_tail(id, 15)
                )));
            }
        }
        Ok(())
    }

    /// The last lines of a node's log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Every running node's own status (`None`: no answer).
    pub async fn statuses(&self) -> Vec<(u64, Option<proto::Status>)> {
        let options = probe_options();
        let mut asks = tokio::task::JoinSet::new();
        for id in self.procs.keys() {
            let endpoint = self.nodes[id].client.clone();
            let (id, options) = (*id, options.clone());
            asks.spawn(async move { (id, Client::status_of(&endpoint, &options).await.ok()) });
        }
        let mut out = Vec::new();
        while let Some(Ok(answer)) = asks.join_next().await {
            out.push(answer);
        }
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Waits until every running node answers and all agree on one leader; its id.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let answers = self.statuses().await;
            let leaders: Vec<u64> = answers
                .iter()
                .filter_map(|(_, s)| s.as_ref())
                .filter(|s| s.role() == proto::Role::Leader)
                .map(|s| s.id)
                .collect();
            if let [leader] = leaders[..]
                && answers.len() == self.procs.len()
                && answers
                    .iter()
                    .all(|(_, s)| s.as_ref().is_some_and(|s| s.leader_id == leader))
            {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                self.keep = true;
                return Err(Error::failed(format!(
                    "the local cluster had no leader within {timeout:?}; logs in {}",
                    self.dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.procs.values_mut() {
            let _ = child.kill();
        }
        for child in self.procs.values_mut() {
            let _ = child.wait();
        }
        if self.keep {
            eprintln!(
                "microblog bench: the local cluster's files and logs are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
