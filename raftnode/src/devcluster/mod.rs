//! The dev-cluster kit: real `raftnode` processes on loopback for tests, benchmarks and people.
//!
//! Everything that starts nodes as child processes goes through here: the integration tests'
//! harness and the chaos runs (crate `tests`), `microblog bench`, `microblog cluster up` and
//! `raftnode up`.
//!
//! - [`program`]: where the `raftnode` program is ([`raftnode_bin`]): `RAFTNODE_BIN`, beside
//!   the running program, above a test binary, on `PATH`.
//! - [`ports`]: loopback ports leased for a cluster's whole life ([`lease_ports`]), so that a
//!   restarted node comes back on its ports and no two clusters, in one process or several, are
//!   ever handed the same one.
//! - [`process`]: one node process by its own pid ([`NodeProcess`]): start, SIGKILL, SIGSTOP and
//!   SIGCONT, SIGTERM with a grace period, killed on drop.
//! - [`DevCluster`]: a throwaway cluster in a temporary directory: a key file, a cluster file
//!   written from a [`ClusterConfig`] (never hand-formatted), data dirs and one log per node;
//!   nodes started, killed, frozen, restarted on their ports, wiped, joined and forgotten; status
//!   probes and a wait for an agreed leader. Dropping it kills every node it started and removes
//!   the directory (unless kept for a post-mortem), then releases its ports.
//!
//! [`ClusterConfig`]: crate::config::ClusterConfig

mod cluster;
pub mod ports;
pub mod process;
pub mod program;

use std::path::Path;
use std::time::Duration;

pub use cluster::{Agreement, DevCluster, Options};
pub use ports::{PortError, PortLease, lease_port, lease_ports};
pub use process::{NodeProcess, Output};
pub use program::{Program, ProgramNotFound, raftnode_bin};

use crate::config::ConfigError;
use crate::keys::{KeyError, Keys};

/// Why a dev cluster could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DevClusterError {
    /// No `raftnode` program.
    #[error(transparent)]
    Program(#[from] ProgramNotFound),
    /// No ports.
    #[error(transparent)]
    Ports(#[from] PortError),
    /// The key file.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The cluster file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or directory of the cluster.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A node process could not be started.
    #[error("cannot start {program} for node {id}: {source}")]
    Start {
        /// The node.
        id: u64,
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// No node with this id.
    #[error("node {0} is not in this cluster")]
    UnknownNode(u64),
    /// A node with this id exists already.
    #[error("node {0} is in this cluster already")]
    Exists(u64),
    /// The node has a process already (or still: wiping needs it stopped).
    #[error("node {0} is running")]
    Running(u64),
    /// The node has no process.
    #[error("node {0} is not running")]
    NotRunning(u64),
    /// A node ended while the cluster was expected to run.
    #[error("node {id} exited ({status}); the end of its log:\n{log_tail}")]
    Exited {
        /// The node.
        id: u64,
        /// How it ended.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// No leader that the nodes agree on.
    #[error("no agreed leader within {timeout:?} ({seen}); node logs in {dir}")]
    NoLeader {
        /// How long it waited.
        timeout: Duration,
        /// What the nodes said last.
        seen: String,
        /// The cluster's directory.
        dir: String,
    },
}

/// Creates a new cluster key file at `path` (mode 0600; never over an existing file), with a
/// new admin whose private key goes to `admin.key` beside it ([`Keys::admin_key_path`]).
pub fn create_key_file(path: &Path) -> Result<Keys, KeyError> {
    let admin_path = Keys::admin_key_path(path);
    let invalid = |e: crate::identity::KeyFileError| KeyError::Invalid {
        path: admin_path.clone(),
        detail: e.to_string(),
    };
    // An admin key already there (another cluster's in the same directory) is used again.
    let admin = if admin_path.exists() {
        crate::identity::Identity::load(&admin_path).map_err(invalid)?
    } else {
        let admin = crate::identity::Identity::generate(crate::identity::ADMIN);
        admin.save(&admin_path).map_err(invalid)?;
        admin
    };
    let keys = Keys::generate().with_admin(admin.public_key());
    keys.create(path)?;
    Ok(keys)
}

/// Makes sure `path` holds a usable key file: creates one if there is none (returning its keys,
/// so the caller can say so), then loads it, which refuses a file others may read or that does
/// not parse.
pub fn ensure_key_file(path: &Path) -> Result<Option<Keys>, KeyError> {
    let created = if path.exists() {
        None
    } else {
        Some(create_key_file(path)?)
    };
    Keys::load(path)?;
    Ok(created)
}
