//! [`DevCluster`]: a throwaway cluster of real node processes in a temporary directory.
//!
//! The directory holds the key file (`cluster.key`), the cluster file (`cluster.toml`), one data
//! dir (`node<ID>/`) and one log (`node<ID>.log`, appended across restarts) per node, and
//! whatever else the user puts there (per-node cluster files, clock files).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{DevClusterError, NodeProcess, Output, PortLease, lease_ports, raftnode_bin};
use crate::client::{Client, ClientOptions};
use crate::config::{ClusterConfig, NodeConfig, RaftSettings, SpaceLimitsConfig};
use crate::proto::{self, Role};

/// How a dev cluster is made.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `[raft]` section of its cluster file.
    pub raft: RaftSettings,
    /// The `[limits]` section.
    pub limits: SpaceLimitsConfig,
    /// The `raftnode` program to run (`None`: [`raftnode_bin`] finds it).
    pub program: Option<PathBuf>,
    /// The start of the temporary directory's name (under the system temp dir).
    pub dir_prefix: String,
    /// Every node's `--log-level`.
    pub log_level: String,
    /// Start nodes in process groups of their own (see [`NodeProcess::start`]): for a program
    /// that handles Ctrl-C itself and kills its nodes (a benchmark). Tests leave it off, so that
    /// a test runner that kills a test's process group takes its nodes along.
    pub own_process_group: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            raft: RaftSettings::default(),
            limits: SpaceLimitsConfig::default(),
            program: None,
            dir_prefix: "raftnode-dev-".into(),
            log_level: "info".into(),
            own_process_group: false,
        }
    }
}

/// What [`DevCluster::wait_leader`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreement {
    /// Every running, unfrozen node answers and names the same leader, which says it leads; a
    /// node that exits meanwhile ends the wait with its log.
    Everyone,
    /// The nodes that answer name the same leader, which is running and says it leads (nodes
    /// that do not answer, e.g. one that stopped by itself, are not waited for).
    Answering,
}

/// A cluster of `raftnode` processes on loopback (see the module docs). Dropping it kills every
/// node by pid, removes its directory unless [`DevCluster::keep_dir`] was called, and only then
/// releases its ports.
pub struct DevCluster {
    /// The node processes, by id. (First field: they die before anything else is dropped.)
    procs: BTreeMap<u64, NodeProcess>,
    /// The ports of every node ever configured and not forgotten, held for the cluster's life.
    leases: BTreeMap<u64, Vec<PortLease>>,
    /// Every node: the founding ones of the cluster file and those added by
    /// [`DevCluster::new_node`].
    nodes: BTreeMap<u64, NodeConfig>,
    /// The cluster file's contents.
    config: ClusterConfig,
    /// The cluster file.
    config_path: PathBuf,
    /// Nodes started with a cluster file of their own instead of the shared one.
    node_configs: BTreeMap<u64, PathBuf>,
    /// Extra environment of a node's process.
    node_env: BTreeMap<u64, Vec<(OsString, OsString)>>,
    /// The `raftnode` program.
    program: PathBuf,
    /// Every node's `--log-level`.
    log_level: String,
    /// See [`Options::own_process_group`].
    own_process_group: bool,
    /// The cluster's directory (last field: removed after the nodes are dead).
    dir: tempfile::TempDir,
}

impl DevCluster {
    /// Makes an `n`-node cluster (ids `1..=n`) in a new temporary directory: leases two ports per
    /// node, creates the key file and writes the cluster file. Starts nothing.
    pub fn configure(n: usize, options: Options) -> Result<DevCluster, DevClusterError> {
        let program = match options.program {
            Some(program) => program,
            None => raftnode_bin()?,
        };
        let dir = tempfile::Builder::new()
            .prefix(&options.dir_prefix)
            .tempdir()
            .map_err(|source| DevClusterError::Io {
                what: format!(
                    "cannot create a directory under {} (set TMPDIR to a writable one)",
                    std::env::temp_dir().display()
                ),
                source,
            })?;
        let key_file = dir.path().join("cluster.key");
        super::create_key_file(&key_file)?;
        let mut leases = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        let mut ports = lease_ports(2 * n)?.into_iter();
        for id in 1..=n as u64 {
            let pair: Vec<PortLease> = ports.by_ref().take(2).collect();
            nodes.insert(id, node_config(id, &pair, dir.path()));
            leases.insert(id, pair);
        }
        let config = ClusterConfig {
            key_file: Some(key_file),
            raft: options.raft,
            limits: options.limits,
            nodes: nodes.values().cloned().collect(),
        };
        let config_path = dir.path().join("cluster.toml");
        config.write(&config_path)?;
        Ok(DevCluster {
            procs: BTreeMap::new(),
            leases,
            nodes,
            config,
            config_path,
            node_configs: BTreeMap::new(),
            node_env: BTreeMap::new(),
            program,
            log_level: options.log_level,
            own_process_group: options.own_process_group,
            dir,
        })
    }

    /// [`DevCluster::configure`], then starts every node.
    pub fn start(n: usize, options: Options) -> Result<DevCluster, DevClusterError> {
        let mut cluster = DevCluster::configure(n, options)?;
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The cluster file's contents (for writing other cluster files alike).
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The cluster file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The cluster's id (from its key file; 0 if that cannot be read).
    pub fn cluster_id(&self) -> u64 {
        crate::keys::Keys::load(self.key_file()).map_or(0, |k| k.cluster.0)
    }

    /// The cluster's admin (its key is `admin.key` beside the key file).
    pub fn admin(&self) -> Result<crate::identity::Identity, crate::identity::KeyFileError> {
        crate::identity::Identity::load(&crate::keys::Keys::admin_key_path(self.key_file()))
    }

    /// The cluster key file.
    pub fn key_file(&self) -> &Path {
        self.config
            .key_file
            .as_deref()
            .expect("a dev cluster always has a key file")
    }

    /// The directory of the cluster file, key file, data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the directory when the cluster is dropped (for a post-mortem).
    pub fn keep_dir(&mut self) {
        self.dir.disable_cleanup(true);
    }

    /// The `raftnode` program the nodes run.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Every node's id (founding and added), ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Node `id`'s place: endpoints and data dir.
    pub fn node(&self, id: u64) -> Option<&NodeConfig> {
        self.nodes.get(&id)
    }

    fn known(&self, id: u64) -> Result<&NodeConfig, DevClusterError> {
        self.node(id).ok_or(DevClusterError::UnknownNode(id))
    }

    /// Every node's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.client.clone()).collect()
    }

    /// The client endpoints of the nodes that have a process.
    pub fn running_endpoints(&self) -> Vec<String> {
        self.procs
            .keys()
            .filter_map(|id| self.nodes.get(id))
            .map(|n| n.client.clone())
            .collect()
    }

    /// Adds node `id` with two freshly leased ports and a data dir, not in the cluster file (it
    /// joins with [`DevCluster::spawn_joining`]).
    pub fn new_node(&mut self, id: u64) -> Result<NodeConfig, DevClusterError> {
        if self.nodes.contains_key(&id) {
            return Err(DevClusterError::Exists(id));
        }
        let pair = lease_ports(2)?;
        let node = node_config(id, &pair, self.dir.path());
        self.nodes.insert(id, node.clone());
        self.leases.insert(id, pair);
        Ok(node)
    }

    /// Gives node `id` its own cluster file, from its next start (a node dials its peers at the
    /// addresses its own file gives).
    pub fn set_node_config(&mut self, id: u64, path: PathBuf) {
        self.node_configs.insert(id, path);
    }

    /// Writes `config` as node `id`'s own cluster file (`cluster-node<ID>.toml` in the
    /// directory) and uses it from the node's next start.
    pub fn write_node_config(
        &mut self,
        id: u64,
        config: &ClusterConfig,
    ) -> Result<PathBuf, DevClusterError> {
        let path = self.dir.path().join(format!("cluster-node{id}.toml"));
        config.write(&path)?;
        self.set_node_config(id, path.clone());
        Ok(path)
    }

    /// The cluster file node `id` starts with: its own, or the shared one.
    pub fn node_config_path(&self, id: u64) -> &Path {
        self.node_configs
            .get(&id)
            .map_or(self.config_path.as_path(), PathBuf::as_path)
    }

    /// Runs node `id`'s process (from its next start) with these extra environment variables.
    pub fn set_node_env<K, V>(&mut self, id: u64, env: impl IntoIterator<Item = (K, V)>)
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        self.node_env.insert(id, env);
    }

    /// Node `id`'s log file.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    /// Node `id`'s whole log (empty if it has none).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = self.log(id);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts (or restarts, with its data and on its ports) node `id`: `raftnode run` with its
    /// cluster file.
    pub fn spawn(&mut self, id: u64) -> Result<(), DevClusterError> {
        self.known(id)?;
        let mut args: Vec<OsString> = vec!["run".into(), "--cluster".into()];
        args.push(self.node_config_path(id).into());
        args.extend(["--id".into(), id.to_string().into()]);
        self.start_process(id, args)
    }

    /// Starts node `id` (see [`DevCluster::new_node`]) empty, with `raftnode run --join`: it
    /// waits to be added. It dials the nodes its cluster file names.
    pub fn spawn_joining(&mut self, id: u64) -> Result<(), DevClusterError> {
        let node = self.known(id)?.clone();
        let mut args: Vec<OsString> = vec!["run".into(), "--join".into()];
        args.extend(["--id".into(), id.to_string().into()]);
        args.extend(["--raft".into(), node.raft.into()]);
        args.extend(["--client".into(), node.client.into()]);
        args.extend(["--data-dir".into(), node.data_dir.into_os_string()]);
        args.push("--cluster".into());
        args.push(self.node_config_path(id).into());
        self.start_process(id, args)
    }

    fn start_process(&mut self, id: u64, args: Vec<OsString>) -> Result<(), DevClusterError> {
        if self.procs.contains_key(&id) {
            return Err(DevClusterError::Running(id));
        }
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .arg("--log-level")
            .arg(&self.log_level)
            .envs(self.node_env.get(&id).into_iter().flatten().cloned());
        let output = Output::AppendTo(self.log_path(id));
        let process =
            NodeProcess::start(command, &output, self.own_process_group).map_err(|source| {
                DevClusterError::Start {
                    id,
                    program: self.program.display().to_string(),
                    source,
                }
            })?;
        self.procs.insert(id, process);
        Ok(())
    }

    /// Whether node `id` has a process (also one that ended by itself and was not reaped yet).
    pub fn is_running(&self, id: u64) -> bool {
        self.procs.contains_key(&id)
    }

    /// The ids of the nodes that have a process.
    pub fn running(&self) -> Vec<u64> {
        self.procs.keys().copied().collect()
    }

    /// Whether node `id` is frozen (SIGSTOPped).
    pub fn is_frozen(&self, id: u64) -> bool {
        self.procs.get(&id).is_some_and(NodeProcess::is_frozen)
    }

    /// Node `id`'s pid.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs.get(&id).map(NodeProcess::pid)
    }

    /// SIGKILLs node `id` and reaps it; when the signal went out (`None`: it was not running, or
    /// had ended by itself).
    pub fn kill(&mut self, id: u64) -> Option<Instant> {
        self.procs.remove(&id).and_then(|mut p| p.kill())
    }

    /// SIGSTOPs node `id`.
    pub fn freeze(&mut self, id: u64) {
        if let Some(p) = self.procs.get_mut(&id) {
            p.freeze();
        }
    }

    /// SIGCONTs node `id`.
    pub fn thaw(&mut self, id: u64) {
        if let Some(p) = self.procs.get_mut(&id) {
            p.thaw();
        }
    }

    /// The first node (by id) whose process has ended by itself, and how.
    pub fn first_exited(&self) -> Option<(u64, std::process::ExitStatus)> {
        self.procs
            .iter()
            .find_map(|(&id, p)| p.exited().map(|status| (id, status)))
    }

    /// The error for node `id` having ended with `status`, with the end of its log.
    pub fn exited_error(&self, id: u64, status: std::process::ExitStatus) -> DevClusterError {
        DevClusterError::Exited {
            id,
            status: status.to_string(),
            log_tail: self.log_tail(id, 15),
        }
    }

    /// Waits up to `timeout` for node `id`'s process to end by itself and reaps it; its exit
    /// code (-1: killed by a signal), or `None` if it is not running or did not end in time.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.procs.get(&id)?.exited();
            if let Some(status) = status {
                self.procs.remove(&id);
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes node `id`'s data dir (the node must not be running).
    pub fn wipe(&mut self, id: u64) -> Result<(), DevClusterError> {
        if self.procs.contains_key(&id) {
            return Err(DevClusterError::Running(id));
        }
        let dir = self.known(id)?.data_dir.clone();
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DevClusterError::Io {
                what: format!("cannot wipe {}", dir.display()),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Forgets node `id` (killing it if it runs) and releases its ports.
    pub fn forget(&mut self, id: u64) {
        self.kill(id);
        self.nodes.remove(&id);
        self.node_configs.remove(&id);
        self.node_env.remove(&id);
        self.leases.remove(&id);
    }

    /// Options for asking one node about itself, quickly.
    pub fn probe_options() -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(300),
            retry_window: Duration::from_secs(1),
            follow_leader: false,
        }
    }

    /// Node `id`'s own status, if it answers within `options`' time.
    pub async fn status_with(&self, id: u64, options: &ClientOptions) -> Option<proto::Status> {
        let endpoint = &self.nodes.get(&id)?.client;
        Client::status_of(endpoint, options).await.ok()
    }

    /// Every running, unfrozen node's own status, asked at once (`None`: no answer), by id.
    pub async fn statuses_with(
        &self,
        options: &ClientOptions,
    ) -> Vec<(u64, Option<proto::Status>)> {
        let mut asks = tokio::task::JoinSet::new();
        for (&id, p) in &self.procs {
            if p.is_frozen() {
                continue;
            }
            let Some(node) = self.nodes.get(&id) else {
                continue;
            };
            let (endpoint, options) = (node.client.clone(), options.clone());
            asks.spawn(async move { (id, Client::status_of(&endpoint, &options).await.ok()) });
        }
        let mut answers = Vec::new();
        while let Some(joined) = asks.join_next().await {
            if let Ok(answer) = joined {
                answers.push(answer);
            }
        }
        answers.sort_by_key(|(id, _)| *id);
        answers
    }

    /// [`DevCluster::statuses_with`] [`DevCluster::probe_options`].
    pub async fn statuses(&self) -> Vec<(u64, Option<proto::Status>)> {
        self.statuses_with(&DevCluster::probe_options()).await
    }

    /// Waits up to `timeout` until the running nodes agree on a leader (see [`Agreement`]); its
    /// id.
    pub async fn wait_leader(
        &self,
        timeout: Duration,
        agreement: Agreement,
    ) -> Result<u64, DevClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            if agreement == Agreement::Everyone
                && let Some((id, status)) = self.first_exited()
            {
                return Err(self.exited_error(id, status));
            }
            let answers = self.statuses().await;
            if let Some(leader) = agreed_leader(&answers, agreement)
                && self.procs.contains_key(&leader)
            {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(DevClusterError::NoLeader {
                    timeout,
                    seen: describe(&answers),
                    dir: self.dir().display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        for p in self.procs.values_mut() {
            p.kill();
        }
    }
}

/// Node `id` on the two leased ports, its data dir in `dir`.
fn node_config(id: u64, pair: &[PortLease], dir: &Path) -> NodeConfig {
    NodeConfig {
        id,
        raft: pair[0].endpoint(),
        client: pair[1].endpoint(),
        data_dir: dir.join(format!("node{id}")),
    }
}

/// The leader the answers agree on, if they do (see [`Agreement`]).
fn agreed_leader(answers: &[(u64, Option<proto::Status>)], agreement: Agreement) -> Option<u64> {
    if agreement == Agreement::Everyone && answers.iter().any(|(_, s)| s.is_none()) {
        return None;
    }
    let said: Vec<&proto::Status> = answers.iter().filter_map(|(_, s)| s.as_ref()).collect();
    let leader = said.first()?.leader_id;
    let agreed = leader != 0
        && said.iter().all(|s| s.leader_id == leader)
        && said
            .iter()
            .any(|s| s.id == leader && s.role() == Role::Leader);
    agreed.then_some(leader)
}

/// What the nodes said, for an error: `1: follower of 2; 3: no answer`.
fn describe(answers: &[(u64, Option<proto::Status>)]) -> String {
    if answers.is_empty() {
        return "no node running".into();
    }
    let each: Vec<String> = answers
        .iter()
        .map(|(id, s)| match s {
            None => format!("{id}: no answer"),
            Some(s) if s.leader_id == 0 => format!("{id}: {} of no leader", s.role().name()),
            Some(s) => format!(
                "{id}: {} (leader {}, term {})",
                s.role().name(),
                s.leader_id,
                s.term
            ),
        })
        .collect();
    each.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, role: Role, leader: u64) -> Option<proto::Status> {
        Some(proto::Status {
            id,
            role: role as i32,
            leader_id: leader,
            ..proto::Status::default()
        })
    }

    #[test]
    fn agreement_on_a_leader() {
        let all = vec![
            (1, status(1, Role::Follower, 2)),
            (2, status(2, Role::Leader, 2)),
            (3, status(3, Role::Follower, 2)),
        ];
        assert_eq!(agreed_leader(&all, Agreement::Everyone), Some(2));
        let one_silent = vec![all[0].clone(), all[1].clone(), (3, None)];
        assert_eq!(agreed_leader(&one_silent, Agreement::Everyone), None);
        assert_eq!(agreed_leader(&one_silent, Agreement::Answering), Some(2));
        // The named leader must say so itself (it may have lost an election meanwhile).
        let stale = vec![all[0].clone(), (2, status(2, Role::Candidate, 0))];
        assert_eq!(agreed_leader(&stale, Agreement::Answering), None);
        let split = vec![
            all[0].clone(),
            all[1].clone(),
            (3, status(3, Role::Follower, 1)),
        ];
        assert_eq!(agreed_leader(&split, Agreement::Answering), None);
        assert_eq!(agreed_leader(&[], Agreement::Answering), None);
        assert_eq!(agreed_leader(&[(1, None)], Agreement::Answering), None);
        let text = describe(&one_silent);
        assert!(
            text.contains("2: leader (leader 2") && text.contains("3: no answer"),
            "{text}"
        );
    }
}
