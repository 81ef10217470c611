//! Cluster files: which nodes exist, where they listen, and the raft settings they share.
//!
//! ```toml
//! key_file = "data/cluster.key"
//!
//! [raft]
//! tick_ms = 50
//! election_ticks = 10
//! heartbeat_ticks = 2
//!
//! [[node]]
//! id = 1
//! raft = "tcp://127.0.0.1:7101"
//! client = "tcp://127.0.0.1:7201"
//! data_dir = "data/node1"
//! ```
//!
//! `configs/example.toml` annotates every setting. Relative data dirs resolve against the working
//! directory of the process that loads the file.
//!
//! Programs that make cluster files (the dev-cluster kit, tests) build a [`ClusterConfig`] and
//! [`ClusterConfig::write`] it: the text is this same format, and it parses back to an equal
//! value, so no cluster file is ever written by hand-formatting TOML.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a cluster file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or lacks a field.
    #[error("cluster file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said (it names the field and line).
        message: String,
    },
    /// The file parses but describes an impossible cluster.
    #[error("cluster file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file could not be written (or a path in it is not UTF-8, which TOML cannot hold).
    #[error("cannot write cluster file {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// No node with this id is in the file.
    #[error("node id {id} is not in cluster file {path} (its ids are {known:?})")]
    UnknownNode {
        /// The id asked for.
        id: u64,
        /// The file.
        path: PathBuf,
        /// The ids it has.
        known: Vec<u64>,
    },
}

/// Raft settings every node of a cluster shares.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RaftSettings {
    /// Milliseconds per raft tick.
    #[serde(default = "defaults::tick_ms")]
    pub tick_ms: u64,
    /// Ticks without a heartbeat before a follower campaigns (randomised up to twice this).
    #[serde(default = "defaults::election_ticks")]
    pub election_ticks: usize,
    /// Ticks between the leader's heartbeats.
    #[serde(default = "defaults::heartbeat_ticks")]
    pub heartbeat_ticks: usize,
    /// Largest append message raft builds, in bytes.
    #[serde(default = "defaults::max_msg_bytes")]
    pub max_msg_bytes: u64,
    /// Append messages in flight to one follower before the leader waits for acks.
    #[serde(default = "defaults::max_inflight_msgs")]
    pub max_inflight_msgs: usize,
    /// Take a snapshot of the machine every this many applied entries.
    #[serde(default = "defaults::snapshot_entries")]
    pub snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot, for followers that are a little behind.
    #[serde(default = "defaults::log_tail")]
    pub log_tail: u64,
    /// The pace at which a snapshot file is streamed to a follower, in MiB per second (so that
    /// a large transfer cannot starve normal replication).
    #[serde(default = "defaults::snapshot_send_mib_per_s")]
    pub snapshot_send_mib_per_s: u64,
}

mod defaults {
    pub fn tick_ms() -> u64 {
        50
    }
    pub fn election_ticks() -> usize {
        10
    }
    pub fn heartbeat_ticks() -> usize {
        2
    }
    pub fn max_msg_bytes() -> u64 {
        1 << 20
    }
    pub fn max_inflight_msgs() -> usize {
        256
    }
    pub fn snapshot_entries() -> u64 {
        10_000
    }
    pub fn log_tail() -> u64 {
        5_000
    }
    pub fn snapshot_send_mib_per_s() -> u64 {
        256
    }
    pub fn max_tuples() -> u64 {
        crate::machine::DEFAULT_LIMITS.max_tuples
    }
    pub fn max_bytes() -> u64 {
        crate::machine::DEFAULT_LIMITS.max_bytes
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: defaults::tick_ms(),
            election_ticks: defaults::election_ticks(),
            heartbeat_ticks: defaults::heartbeat_ticks(),
            max_msg_bytes: defaults::max_msg_bytes(),
            max_inflight_msgs: defaults::max_inflight_msgs(),
            snapshot_entries: defaults::snapshot_entries(),
            log_tail: defaults::log_tail(),
            snapshot_send_mib_per_s: defaults::snapshot_send_mib_per_s(),
        }
    }
}

/// The `[limits]` section: caps on the space. An `out` beyond them is refused with a clear error
/// (never an out-of-memory). The leader writes them into the log, so every replica applies the
/// same caps; a node whose file says otherwise changes them when it leads.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SpaceLimitsConfig {
    /// Resident tuples at most.
    #[serde(default = "defaults::max_tuples")]
    pub max_tuples: u64,
    /// Encoded bytes of the resident tuples at most.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: u64,
}

impl Default for SpaceLimitsConfig {
    fn default() -> Self {
        SpaceLimitsConfig {
            max_tuples: defaults::max_tuples(),
            max_bytes: defaults::max_bytes(),
        }
    }
}

/// One node of the cluster.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The raft id: unique, non-zero.
    pub id: u64,
    /// The ZeroMQ endpoint its peer ROUTER binds, `tcp://host:port`.
    pub raft: String,
    /// The ZeroMQ endpoint its client ROUTER binds, `tcp://host:port`.
    pub client: String,
    /// Where it keeps its log and snapshots.
    pub data_dir: PathBuf,
}

/// A whole cluster file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster key file: the cluster id and the keys that authenticate peer batches
    /// ([`crate::keys`]). Every node needs it; clients reading the file for its endpoints do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Shared raft settings.
    #[serde(default)]
    pub raft: RaftSettings,
    /// Caps on the space (the leader puts them in the log; give every node the same).
    #[serde(default)]
    pub limits: SpaceLimitsConfig,
    /// The nodes.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
}

impl ClusterConfig {
    /// Reads and validates a cluster file; relative data dirs resolve against the working dir.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = ClusterConfig::parse(&text, path)?;
        let cwd = std::env::current_dir().map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        for node in &mut config.nodes {
            if node.data_dir.is_relative() {
                node.data_dir = cwd.join(&node.data_dir);
            }
        }
        if let Some(key_file) = config.key_file.as_mut()
            && key_file.is_relative()
        {
            *key_file = cwd.join(&*key_file);
        }
        Ok(config)
    }

    /// Parses and validates cluster-file text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ClusterConfig, ConfigError> {
        let config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// The cluster file's text: the format [`ClusterConfig::parse`] reads (`key_file`, then
    /// `[raft]`, `[limits]` and one `[[node]]` table per node), every setting spelled out.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Checks the config as [`ClusterConfig::load`] would, then writes it to `path` (replacing
    /// any file there).
    pub fn write(&self, path: &Path) -> Result<(), ConfigError> {
        let failed = |message: String| ConfigError::Write {
            path: path.to_owned(),
            message,
        };
        self.validate().map_err(&failed)?;
        let text = self.to_toml().map_err(|e| failed(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| failed(e.to_string()))
    }

    fn validate(&self) -> Result<(), String> {
        let r = &self.raft;
        if r.tick_ms == 0 || r.tick_ms > 10_000 {
            return Err(format!("raft.tick_ms must be 1..=10000, not {}", r.tick_ms));
        }
        if r.heartbeat_ticks == 0 || r.election_ticks <= r.heartbeat_ticks {
            return Err(format!(
                "raft.election_ticks ({}) must exceed raft.heartbeat_ticks ({}), which must be > 0",
                r.election_ticks, r.heartbeat_ticks
            ));
        }
        if r.max_msg_bytes < 1024 {
            return Err("raft.max_msg_bytes must be at least 1024".into());
        }
        if r.max_inflight_msgs == 0 {
            return Err("raft.max_inflight_msgs must be at least 1".into());
        }
        if r.snapshot_send_mib_per_s == 0 || r.snapshot_send_mib_per_s > 1 << 20 {
            return Err("raft.snapshot_send_mib_per_s must be between 1 and 1048576".into());
        }
        if r.snapshot_entries == 0 {
            return Err("raft.snapshot_entries must be at least 1".into());
        }
        if self.nodes.is_empty() {
            return Err("no [[node]] entries".into());
        }
        if self
            .key_file
            .as_ref()
            .is_some_and(|k| k.as_os_str().is_empty())
        {
            return Err("key_file is empty".into());
        }
        let mut ids = HashSet::new();
        let mut endpoints = HashSet::new();
        let mut dirs = HashSet::new();
        for n in &self.nodes {
            if n.id == 0 {
                return Err("node id 0 is reserved; ids start at 1".into());
            }
            if !ids.insert(n.id) {
                return Err(format!("duplicate node id {}", n.id));
            }
            for endpoint in [&n.raft, &n.client] {
                check_endpoint(endpoint).map_err(|e| format!("node {}: {e}", n.id))?;
                if !endpoints.insert(endpoint.clone()) {
                    return Err(format!("node {}: duplicate endpoint {endpoint}", n.id));
                }
            }
            if n.data_dir.as_os_str().is_empty() {
                return Err(format!("node {}: empty data_dir", n.id));
            }
            if !dirs.insert(n.data_dir.clone()) {
                return Err(format!(
                    "node {}: data_dir {} is used by another node",
                    n.id,
                    n.data_dir.display()
                ));
            }
        }
        Ok(())
    }

    /// The node with this id.
    pub fn node(&self, id: u64, path: &Path) -> Result<&NodeConfig, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ConfigError::UnknownNode {
                id,
                path: path.to_owned(),
                known: self.nodes.iter().map(|n| n.id).collect(),
            })
    }

    /// The key file the nodes of this cluster need, or an error naming the file that lacks it.
    pub fn require_key_file(&self, path: &Path) -> Result<&Path, ConfigError> {
        self.key_file
            .as_deref()
            .ok_or_else(|| ConfigError::Invalid {
                path: path.to_owned(),
                message: "no key_file: every node needs the cluster's key file (e.g. key_file = \
                          \"data/cluster.key\"; `raftnode key init FILE` creates one)"
                    .into(),
            })
    }

    /// Every node's client endpoint.
    pub fn client_endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client.clone()).collect()
    }
}

/// Checks that an endpoint is `tcp://host:port` with a port in 1..=65535.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("endpoint {endpoint:?} must start with tcp://"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("endpoint {endpoint:?} has no :port"))?;
    if host.is_empty() {
        return Err(format!("endpoint {endpoint:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("endpoint {endpoint:?} has an invalid port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        key_file = "data/k.key"
        [raft]
        tick_ms = 20
        [[node]]
        id = 1
        raft = "tcp://127.0.0.1:7101"
        client = "tcp://127.0.0.1:7201"
        data_dir = "data/n1"
        [[node]]
        id = 2
        raft = "tcp://127.0.0.1:7102"
        client = "tcp://127.0.0.1:7202"
        data_dir = "data/n2"
    "#;

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn parses_and_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.raft.tick_ms, 20);
        assert_eq!(c.raft.election_ticks, 10);
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(
            c.node(2, Path::new("x")).unwrap().client,
            "tcp://127.0.0.1:7202"
        );
        let err = c.node(9, Path::new("x")).unwrap_err().to_string();
        assert!(err.contains("node id 9") && err.contains("[1, 2]"), "{err}");
    }

    #[test]
    fn refusals_name_the_problem() {
        let cases = [
            (GOOD.replace("id = 2", "id = 1"), "duplicate node id 1"),
            (GOOD.replace("7202", "7201"), "duplicate endpoint"),
            (GOOD.replace("data/n2", "data/n1"), "used by another node"),
            (GOOD.replace("id = 2", "id = 0"), "reserved"),
            (
                GOOD.replace("tcp://127.0.0.1:7102", "127.0.0.1:7102"),
                "tcp://",
            ),
            (GOOD.replace(":7102", ":99999"), "invalid port"),
            (
                GOOD.replace("client = \"tcp://127.0.0.1:7202\"\n", ""),
                "client",
            ),
            (
                GOOD.replace("tick_ms = 20", "tick_ms = 20\nbogus = 1"),
                "bogus",
            ),
            (
                GOOD.replace("tick_ms = 20", "election_ticks = 2"),
                "election_ticks",
            ),
            ("key_file = \"k\"\n[raft]\n".to_string(), "node"),
            (
                GOOD.replace("key_file = \"data/k.key\"", "key_file = \"\""),
                "key_file",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn a_written_config_reads_back_equal() {
        let mut c = parse(GOOD).unwrap();
        c.raft.snapshot_entries = 123;
        c.limits.max_tuples = 5;
        let text = c.to_toml().unwrap();
        assert_eq!(parse(&text).unwrap(), c, "{text}");
        assert!(
            text.contains("[[node]]") && text.contains("[raft]"),
            "{text}"
        );

        // Without a key file, and with a path that needs quoting.
        c.key_file = None;
        c.nodes[0].data_dir = PathBuf::from("/tmp/with \"quotes\" and \\ back/n1");
        let text = c.to_toml().unwrap();
        assert_eq!(parse(&text).unwrap(), c, "{text}");
        assert!(!text.contains("key_file"), "{text}");

        // Every shipped file survives the trip too.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for name in ["local-3.toml", "local-5.toml", "example.toml"] {
            let shipped = parse(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap();
            assert_eq!(
                parse(&shipped.to_toml().unwrap()).unwrap(),
                shipped,
                "{name}"
            );
        }
    }

    #[test]
    fn write_refuses_what_load_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let mut c = parse(GOOD).unwrap();
        // Absolute paths: `load` resolves relative ones against the working directory.
        c.key_file = Some(dir.path().join("k.key"));
        for n in &mut c.nodes {
            n.data_dir = dir.path().join(format!("n{}", n.id));
        }
        c.write(&path).unwrap();
        assert_eq!(ClusterConfig::load(&path).unwrap(), c);
        c.nodes[1].id = 1;
        let err = c.write(&path).unwrap_err().to_string();
        assert!(
            err.contains("duplicate node id 1") && err.contains("c.toml"),
            "{err}"
        );
    }

    #[test]
    fn shipped_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for name in ["local-3.toml", "local-5.toml", "example.toml"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
