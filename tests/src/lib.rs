//! The cluster harness: real `raftnode` processes on loopback, for integration and chaos tests.
//!
//! A [`Cluster`] writes a cluster file with free loopback ports and temporary data dirs, starts
//! one `raftnode run` process per node, and can kill (SIGKILL), freeze (SIGSTOP), thaw (SIGCONT)
//! and restart them. Dropping it kills every process it started, by pid, and when the test is
//! failing it prints the tail of every node's log.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use raftnode::client::{Client, ClientOptions};
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

/// The `raftnode` binary: `RAFTNODE_BIN`, or the one cargo built beside this test.
pub fn raftnode_bin() -> PathBuf {
    sibling_bin("raftnode", "RAFTNODE_BIN", "cargo build -p raftnode")
}

/// A workspace binary: the path in `env_var`, or `target/<profile>/<name>` beside this test.
pub fn sibling_bin(name: &str, env_var: &str, build: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: `cargo test --workspace` builds it (or run `{build}`)",
        bin.display()
    );
    bin
}

/// `n` distinct free TCP ports on 127.0.0.1.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// The kernel's ephemeral port range (where `connect` picks local ports).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// `n` distinct free TCP ports on 127.0.0.1 *outside* the kernel's ephemeral range, never the
/// same port twice in this process. A node that is down for a while gets its ports back when it
/// restarts: no outgoing connection (a client's, a proxy's) can have taken one meanwhile, as
/// `connect` only picks ephemeral ports.
pub fn quiet_ports(n: usize) -> Vec<u16> {
    use rand::Rng as _;
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let (low, high) = ephemeral_ports();
    let range = if low > 12_000 {
        10_000..low
    } else {
        high.saturating_add(1).max(1024)..u16::MAX
    };
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = rand::thread_rng();
    let mut ports = Vec::with_capacity(n);
    for _ in 0..200_000 {
        if ports.len() == n {
            break;
        }
        let port = rng.gen_range(range.clone());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "not enough free ports in {range:?}");
    ports
}

struct Proc {
    child: Child,
    frozen: bool,
}

/// One node's place in the cluster.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Raft id.
    pub id: u64,
    /// Peer endpoint.
    pub raft: String,
    /// Client endpoint.
    pub client: String,
    /// Data dir.
    pub data_dir: PathBuf,
}

/// A cluster of real processes.
pub struct Cluster {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    nodes: BTreeMap<u64, NodeSpec>,
    procs: BTreeMap<u64, Proc>,
    bin: PathBuf,
    /// The start of every cluster file: the key file and the `[raft]` section.
    config_header: String,
    /// Nodes started with their own cluster file instead of the shared one (chaos tests: each
    /// node dials its peers through its own proxies).
    node_configs: BTreeMap<u64, PathBuf>,
    /// New nodes get [`quiet_ports`] too.
    quiet: bool,
    /// Extra environment for a node's process (e.g. libfaketime for a skewed wall clock).
    node_env: BTreeMap<u64, Vec<(String, String)>>,
}

impl Cluster {
    /// Writes a cluster file for `n` nodes and starts them all.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, "")
    }

    /// Like [`Cluster::start`] with extra `[raft]` settings (e.g. `snapshot_entries = 100`).
    pub fn start_with(n: usize, raft_settings: &str) -> Cluster {
        let mut cluster = Cluster::configure(n, raft_settings);
        for id in 1..=n as u64 {
            cluster.spawn(id);
        }
        cluster
    }

    /// Writes a cluster file for `n` nodes (with extra `[raft]` settings) without starting them.
    pub fn configure(n: usize, raft_settings: &str) -> Cluster {
        Cluster::configure_on(n, raft_settings, raftnode_bin(), free_ports(2 * n))
    }

    /// Like [`Cluster::configure`], running the given `raftnode` binary (the chaos binary finds
    /// its own beside itself), with every node on [`quiet_ports`] (also the nodes
    /// [`Cluster::new_node`] adds later): for clusters whose nodes go down and come back often.
    pub fn configure_with_bin(n: usize, raft_settings: &str, bin: PathBuf) -> Cluster {
        let mut cluster = Cluster::configure_on(n, raft_settings, bin, quiet_ports(2 * n));
        cluster.quiet = true;
        cluster
    }

    fn configure_on(n: usize, raft_settings: &str, bin: PathBuf, ports: Vec<u16>) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("raftnode-test-")
            .tempdir()
            .expect("a temp dir");
        let mut nodes = BTreeMap::new();
        let key_file = dir.path().join("cluster.key");
        raftnode::keys::Keys::generate()
            .create(&key_file)
            .expect("write the cluster key file");
        let config_header = format!(
            "key_file = \"{}\"\n\n[raft]\ntick_ms = 50\nelection_ticks = 10\nheartbeat_ticks = 2\n{raft_settings}\n",
            key_file.display()
        );
        let mut text = config_header.clone();
        for i in 0..n {
            let id = i as u64 + 1;
            let spec = NodeSpec {
                id,
                raft: format!("tcp://127.0.0.1:{}", ports[2 * i]),
                client: format!("tcp://127.0.0.1:{}", ports[2 * i + 1]),
                data_dir: dir.path().join(format!("node{id}")),
            };
            text.push_str(&format!(
                "\n[[node]]\nid = {id}\nraft = \"{}\"\nclient = \"{}\"\ndata_dir = \"{}\"\n",
                spec.raft,
                spec.client,
                spec.data_dir.display()
            ));
            nodes.insert(id, spec);
        }
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, text).expect("write the cluster file");
        Cluster {
            dir,
            config_path,
            nodes,
            procs: BTreeMap::new(),
            bin,
            config_header,
            node_configs: BTreeMap::new(),
            quiet: false,
            node_env: BTreeMap::new(),
        }
    }

    /// The start of the cluster file, its key file and `[raft]` section (for writing other
    /// cluster files alike).
    pub fn config_header(&self) -> &str {
        &self.config_header
    }

    /// The cluster key file.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("cluster.key")
    }

    /// Gives node `id` its own cluster file: from its next start it runs with `path` instead of
    /// the shared file (a node dials its peers at the addresses its own file gives).
    pub fn set_node_config(&mut self, id: u64, path: PathBuf) {
        self.node_configs.insert(id, path);
    }

    /// The cluster file node `id` starts with: its own, or the shared one.
    pub fn node_config_path(&self, id: u64) -> &Path {
        self.node_configs
            .get(&id)
            .map_or(self.config_path.as_path(), PathBuf::as_path)
    }

    /// Keeps the temporary directory (data dirs, logs, cluster files) after the cluster is
    /// dropped, for a post-mortem.
    pub fn keep_dir(&mut self) {
        self.dir.disable_cleanup(true);
    }

    /// Runs node `id`'s process (from its next start) with these extra environment variables.
    pub fn set_node_env(&mut self, id: u64, env: Vec<(String, String)>) {
        self.node_env.insert(id, env);
    }

    /// Whether node `id` is frozen (SIGSTOPped).
    pub fn is_frozen(&self, id: u64) -> bool {
        self.procs.get(&id).is_some_and(|p| p.frozen)
    }

    /// The ids of the nodes that have a process.
    pub fn running(&self) -> Vec<u64> {
        self.procs.keys().copied().collect()
    }

    /// The cluster file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temporary directory holding the cluster file, data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// A node's spec.
    pub fn node(&self, id: u64) -> &NodeSpec {
        &self.nodes[&id]
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    /// Starts (or restarts) node `id` with its data dir.
    pub fn spawn(&mut self, id: u64) {
        assert!(
            !self.procs.contains_key(&id),
            "node {id} is already running"
        );
        let args = vec![
            "run".into(),
            "--cluster".into(),
            self.node_config_path(id).as_os_str().to_owned(),
            "--id".into(),
            id.to_string().into(),
        ];
        self.start_process(id, args);
    }

    /// Starts `raftnode <args> --log-level L` for node `id`, its output appended to the node's log.
    fn start_process(&mut self, id: u64, args: Vec<std::ffi::OsString>) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("open the node log");
        let env = self.node_env.get(&id).cloned().unwrap_or_default();
        let child = Command::new(&self.bin)
            .envs(env)
            .args(args)
            .arg("--log-level")
            .arg(std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.procs.insert(
            id,
            Proc {
                child,
                frozen: false,
            },
        );
    }

    /// Adds a spec for a new node `id` (fresh ports, its own data dir), not in the cluster file.
    pub fn new_node(&mut self, id: u64) -> NodeSpec {
        let ports = if self.quiet {
            quiet_ports(2)
        } else {
            free_ports(2)
        };
        let spec = NodeSpec {
            id,
            raft: format!("tcp://127.0.0.1:{}", ports[0]),
            client: format!("tcp://127.0.0.1:{}", ports[1]),
            data_dir: self.dir.path().join(format!("node{id}")),
        };
        self.nodes.insert(id, spec.clone());
        spec
    }

    /// Starts node `id` (from [`Cluster::new_node`]) with `raftnode run --join`.
    pub fn spawn_joining(&mut self, id: u64) {
        assert!(
            !self.procs.contains_key(&id),
            "node {id} is already running"
        );
        let spec = self.nodes[&id].clone();
        let args = vec![
            "run".into(),
            "--join".into(),
            "--id".into(),
            id.to_string().into(),
            "--raft".into(),
            spec.raft.into(),
            "--client".into(),
            spec.client.into(),
            "--data-dir".into(),
            spec.data_dir.into_os_string(),
            "--cluster".into(),
            self.node_config_path(id).as_os_str().to_owned(),
        ];
        self.start_process(id, args);
    }

    /// Deletes node `id`'s data dir (the node must not be running).
    pub fn wipe(&mut self, id: u64) {
        assert!(
            !self.procs.contains_key(&id),
            "stop node {id} before wiping it"
        );
        let _ = std::fs::remove_dir_all(&self.nodes[&id].data_dir);
    }

    /// Forgets node `id` (after it was removed and has stopped).
    pub fn forget(&mut self, id: u64) {
        self.kill(id);
        self.nodes.remove(&id);
        self.node_configs.remove(&id);
    }

    /// Waits for node `id`'s process to exit by itself; its exit code, or `None` on timeout.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.procs.get_mut(&id)?;
            if let Ok(Some(status)) = p.child.try_wait() {
                self.procs.remove(&id);
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether node `id` has a process.
    pub fn is_running(&self, id: u64) -> bool {
        self.procs.contains_key(&id)
    }

    /// The pid of node `id`'s process.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs.get(&id).map(|p| p.child.id())
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut p) = self.procs.remove(&id) {
            let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGKILL);
            let _ = p.child.wait();
        }
    }

    /// SIGSTOPs node `id`.
    pub fn freeze(&mut self, id: u64) {
        if let Some(p) = self.procs.get_mut(&id) {
            let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGSTOP);
            p.frozen = true;
        }
    }

    /// SIGCONTs node `id`.
    pub fn thaw(&mut self, id: u64) {
        if let Some(p) = self.procs.get_mut(&id) {
            let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGCONT);
            p.frozen = false;
        }
    }

    /// Every client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.client.clone()).collect()
    }

    /// The client endpoints of the nodes that are running.
    pub fn running_endpoints(&self) -> Vec<String> {
        self.procs
            .keys()
            .map(|id| self.nodes[id].client.clone())
            .collect()
    }

    /// A client over every endpoint.
    pub fn client(&self) -> Client {
        Client::new(self.endpoints())
    }

    /// A client that talks to node `id` only while it answers (no switching to the leader).
    pub fn client_of(&self, id: u64) -> Client {
        let options = ClientOptions {
            follow_leader: false,
            ..ClientOptions::default()
        };
        Client::with_options([self.nodes[&id].client.clone()], options)
    }

    /// The status of node `id`, if it answers within a second.
    pub async fn status(&self, id: u64) -> Option<proto::Status> {
        let options = ClientOptions {
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(300),
            retry_window: Duration::from_secs(1),
            follow_leader: false,
        };
        Client::status_of(&self.nodes[&id].client, &options)
            .await
            .ok()
    }

    /// Waits until the running nodes agree on one leader among them; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for &id in self.procs.keys() {
                if self.procs[&id].frozen {
                    continue;
                }
                if let Some(s) = self.status(id).await {
                    leaders.push((id, s.leader_id, s.role()));
                }
            }
            if let Some(&(_, leader, _)) = leaders.first()
                && leader != 0
                && self.procs.contains_key(&leader)
                && leaders.iter().all(|(_, l, _)| *l == leader)
                && leaders
                    .iter()
                    .any(|(id, _, role)| *id == leader && *role == proto::Role::Leader)
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for &id in self.procs.keys() {
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
        let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Node `id`'s whole log.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.thaw(id);
            self.kill(id);
        }
        if std::thread::panicking() {
            for &id in self.nodes.keys() {
                eprintln!(
                    "----- node {id} log (tail) -----\n{}",
                    self.log_tail(id, 40)
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
