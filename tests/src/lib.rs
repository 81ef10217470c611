//! The cluster harness: real `raftnode` processes on loopback, for integration and chaos tests.
//!
//! A [`Cluster`] is the dev-cluster kit's [`DevCluster`] (leased loopback ports, a key file, a
//! cluster file, temporary data dirs, one log per node; see [`raftnode::devcluster`]) with the
//! manners of a test: every failure panics, and when the test is failing, dropping the cluster
//! prints the tail of every node's log before it kills every process it started, by pid.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raftnode::client::{Client, ClientOptions};
use raftnode::config::{ClusterConfig, NodeConfig};
use raftnode::devcluster::{Agreement, DevCluster, Options};
use raftnode::proto;

pub mod chaos;
pub mod checker;
pub mod history;
pub mod microblog;
pub mod ops;
pub mod sim;

/// Cluster tests share two cores: they run one at a time. (An async mutex: each test holds it
/// across its awaits, on its own runtime.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the lock that keeps cluster tests from running at once.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A cluster of real processes (see the crate docs).
pub struct Cluster {
    /// The kit's cluster underneath.
    kit: DevCluster,
}

impl Cluster {
    /// Writes a cluster file for `n` nodes and starts them all.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {})
    }

    /// Like [`Cluster::start`], the options changed first (e.g. `|o| o.raft.snapshot_entries =
    /// 100`).
    pub fn start_with(n: usize, tune: impl FnOnce(&mut Options)) -> Cluster {
        let mut cluster = Cluster::configure_with(n, tune);
        for id in 1..=n as u64 {
            cluster.spawn(id);
        }
        cluster
    }

    /// Writes a cluster file for `n` nodes without starting them.
    pub fn configure(n: usize) -> Cluster {
        Cluster::configure_with(n, |_| {})
    }

    /// Like [`Cluster::configure`], the options changed first (the chaos runs choose their
    /// `raftnode` program this way).
    pub fn configure_with(n: usize, tune: impl FnOnce(&mut Options)) -> Cluster {
        let mut options = Options {
            dir_prefix: "raftnode-test-".into(),
            log_level: std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "info".into()),
            ..Options::default()
        };
        tune(&mut options);
        let kit = DevCluster::configure(n, options)
            .unwrap_or_else(|e| panic!("cannot make a {n}-node cluster: {e}"));
        // `microblog --admin` in this cluster's tests uses its admin's key.
        microblog::set_admin_key(raftnode::keys::Keys::admin_key_path(kit.key_file()));
        Cluster { kit }
    }

    /// The kit's cluster underneath.
    pub fn kit(&self) -> &DevCluster {
        &self.kit
    }

    /// The kit's cluster underneath, mutably.
    pub fn kit_mut(&mut self) -> &mut DevCluster {
        &mut self.kit
    }

    /// The cluster file's contents (for writing other cluster files alike).
    pub fn config(&self) -> &ClusterConfig {
        self.kit.config()
    }

    /// The cluster key file.
    pub fn key_file(&self) -> PathBuf {
        self.kit.key_file().to_path_buf()
    }

    /// The cluster file node `id` starts with: its own, or the shared one.
    pub fn node_config_path(&self, id: u64) -> &Path {
        self.kit.node_config_path(id)
    }

    /// Keeps the temporary directory (data dirs, logs, cluster files) after the cluster is
    /// dropped, for a post-mortem.
    pub fn keep_dir(&mut self) {
        self.kit.keep_dir();
    }

    /// Runs node `id`'s process (from its next start) with these extra environment variables.
    pub fn set_node_env(&mut self, id: u64, env: Vec<(String, String)>) {
        self.kit.set_node_env(id, env);
    }

    /// Whether node `id` is frozen (SIGSTOPped).
    pub fn is_frozen(&self, id: u64) -> bool {
        self.kit.is_frozen(id)
    }

    /// The ids of the nodes that have a process.
    pub fn running(&self) -> Vec<u64> {
        self.kit.running()
    }

    /// The cluster file.
    pub fn config_path(&self) -> &Path {
        self.kit.config_path()
    }

    /// The temporary directory holding the cluster file, data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.kit.dir()
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.kit.ids()
    }

    /// A node's endpoints and data dir.
    pub fn node(&self, id: u64) -> &NodeConfig {
        self.kit
            .node(id)
            .unwrap_or_else(|| panic!("node {id} is not in this cluster"))
    }

    /// Starts (or restarts, on its ports) node `id` with its data dir.
    pub fn spawn(&mut self, id: u64) {
        self.kit
            .spawn(id)
            .unwrap_or_else(|e| panic!("starting node {id}: {e}"));
    }

    /// Adds node `id` (fresh leased ports, its own data dir), not in the cluster file.
    pub fn new_node(&mut self, id: u64) -> NodeConfig {
        self.kit
            .new_node(id)
            .unwrap_or_else(|e| panic!("adding node {id}: {e}"))
    }

    /// Starts node `id` (from [`Cluster::new_node`]) with `raftnode run --join`.
    pub fn spawn_joining(&mut self, id: u64) {
        self.kit
            .spawn_joining(id)
            .unwrap_or_else(|e| panic!("starting node {id} to join: {e}"));
    }

    /// Deletes node `id`'s data dir (the node must not be running).
    pub fn wipe(&mut self, id: u64) {
        self.kit
            .wipe(id)
            .unwrap_or_else(|e| panic!("wiping node {id}: {e}"));
    }

    /// Forgets node `id` (after it was removed and has stopped) and frees its ports.
    pub fn forget(&mut self, id: u64) {
        self.kit.forget(id);
    }

    /// Waits for node `id`'s process to exit by itself; its exit code, or `None` on timeout.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<i32> {
        self.kit.wait_exit(id, timeout).await
    }

    /// Whether node `id` has a process.
    pub fn is_running(&self, id: u64) -> bool {
        self.kit.is_running(id)
    }

    /// The pid of node `id`'s process.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.kit.pid(id)
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        self.kit.kill(id);
    }

    /// SIGSTOPs node `id`.
    pub fn freeze(&mut self, id: u64) {
        self.kit.freeze(id);
    }

    /// SIGCONTs node `id`.
    pub fn thaw(&mut self, id: u64) {
        self.kit.thaw(id);
    }

    /// Every client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.kit.endpoints()
    }

    /// The client endpoints of the nodes that are running.
    pub fn running_endpoints(&self) -> Vec<String> {
        self.kit.running_endpoints()
    }

    /// The cluster's admin (the kit writes its key beside the cluster key).
    pub fn admin(&self) -> raftnode::identity::Identity {
        self.kit
            .admin()
            .unwrap_or_else(|e| panic!("the cluster's admin key: {e}"))
    }

    /// `request` signed by the admin, as a client sends it: valid for ten minutes of cluster
    /// time (as a running node says it now) unless it names its own expiry.
    pub async fn sign(&self, mut request: proto::Request) -> proto::Request {
        if request.not_after_ms == 0 {
            let mut now = 0;
            for id in self.running() {
                if let Some(status) = self.status(id).await {
                    now = now.max(status.cluster_time_ms);
                }
            }
            request.not_after_ms = now + 10 * 60 * 1000;
        }
        self.admin().seal(request, self.kit.cluster_id())
    }

    /// A client over every endpoint, signing as the admin.
    pub fn client(&self) -> Client {
        Client::new(self.endpoints()).with_identity(self.admin())
    }

    /// A client that talks to node `id` only while it answers (no switching to the leader).
    pub fn client_of(&self, id: u64) -> Client {
        let options = ClientOptions {
            follow_leader: false,
            ..ClientOptions::default()
        };
        Client::with_options([self.node(id).client.clone()], options).with_identity(self.admin())
    }

    /// The status of node `id`, if it answers within a second.
    pub async fn status(&self, id: u64) -> Option<proto::Status> {
        self.kit.status_with(id, &DevCluster::probe_options()).await
    }

    /// Waits until the running nodes that answer agree on one leader among them; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        self.kit
            .wait_leader(timeout, Agreement::Answering)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for id in self.running() {
            loop {
                if self.status(id).await.is_some_and(|s| s.applied >= index) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} did not apply index {index} within {timeout:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The last lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        self.kit.log_tail(id, lines)
    }

    /// Node `id`'s whole log.
    pub fn log(&self, id: u64) -> String {
        self.kit.log(id)
    }
}

impl Drop for Cluster {
    /// On a failing test, the tail of every node's log; the kit then kills every node.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for id in self.kit.ids() {
                eprintln!(
                    "----- node {id} log (tail) -----\n{}",
                    self.kit.log_tail(id, 40)
                );
            }
        }
    }
}

/// Sends one request on a fresh REQ socket and decodes the answer (panics on any failure).
pub async fn raw_call(endpoint: &str, request: &proto::Request) -> proto::Response {
    use zeromq::{Socket as _, SocketRecv as _, SocketSend as _};
    let mut socket = zeromq::ReqSocket::new();
    tokio::time::timeout(Duration::from_secs(2), socket.connect(endpoint))
        .await
        .expect("connect in time")
        .expect("connect");
    let msg = zeromq::ZmqMessage::from(bytes::Bytes::from(prost::Message::encode_to_vec(request)));
    socket.send(msg).await.expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(10), socket.recv())
        .await
        .expect("an answer in time")
        .expect("recv");
    let frames = reply.into_vec();
    <proto::Response as prost::Message>::decode(frames.last().expect("a frame").as_ref())
        .expect("decodes")
}

/// libfaketime (Debian's `faketime` package; `.ci/run` installs it), for giving one node process
/// a wall clock of its own.
pub fn libfaketime() -> PathBuf {
    const PLACES: [&str; 3] = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ];
    PLACES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is missing (looked in {PLACES:?}): install Debian's faketime \
                 package (`apt-get install faketime`; .ci/run does it)"
            )
        })
}

/// The environment that runs a process with its wall clock shifted by whatever
/// `offset_file` says (`+7200`, `-7200`: seconds; re-read about every second, so writing the
/// file steps the clock of a running process), and its monotonic clock untouched.
pub fn skewed_clock_env(offset_file: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), libfaketime().display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset_file.display().to_string(),
        ),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Runs `f` with a hard time limit; a test that overruns fails instead of hanging CI.
pub async fn bounded<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("test exceeded its time limit of {limit:?}"),
    }
}
