//! A cluster of real `raftnode` processes whose every raft link runs through a proxy, and the
//! operations the nemesis performs on it.
//!
//! Nodes sit in *slots* `0..n`. The proxies are per ordered pair of slots (see
//! [`super::proxy`]); a slot's node can change (a replacement node with a new id and fresh
//! ports), and the links into its slot are then pointed at the new node. Every node has its own
//! cluster file (`cluster-node<ID>.toml` in the cluster's directory) naming itself with its real
//! raft endpoint and every other node with the proxy it dials that node through; client endpoints
//! are direct. A node pins the addresses its own file gives, so addresses learned from the log or
//! from membership changes never bypass the proxies (a replacement node is not in the others'
//! files until they restart: [`ChaosCluster::replace`] restarts them one by one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use prost::Message as _;
use raftnode::client::{Client, ClientOptions, MemberChange};
use raftnode::config::RaftSettings;
use raftnode::proto;
use tokio::task::JoinSet;
use tuplespace::{Query, Template, Tuple, TupleId};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use super::proxy::{Net, socket_addr};
use crate::Cluster;

/// The current members' ids and client endpoints, shared with the clients and the leader watch.
#[derive(Clone, Default)]
pub struct SharedMembers(Arc<MembersInner>);

#[derive(Default)]
struct MembersInner {
    list: RwLock<Vec<(u64, String)>>,
    version: AtomicU64,
    /// The cluster's admin: every chaos client signs as the admin.
    admin: std::sync::OnceLock<raftnode::identity::Identity>,
}

impl SharedMembers {
    /// (id, client endpoint) of every slot's node.
    pub fn members(&self) -> Vec<(u64, String)> {
        self.0
            .list
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every slot's client endpoint.
    pub fn client_endpoints(&self) -> Vec<String> {
        self.members().into_iter().map(|(_, e)| e).collect()
    }

    /// The cluster's admin, whom the clients sign as.
    pub fn admin(&self) -> Option<raftnode::identity::Identity> {
        self.0.admin.get().cloned()
    }

    /// Bumped whenever the list changes.
    pub fn version(&self) -> u64 {
        self.0.version.load(Ordering::Acquire)
    }

    fn set(&self, list: Vec<(u64, String)>) {
        *self.0.list.write().unwrap_or_else(|p| p.into_inner()) = list;
        self.0.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// One slot's node.
#[derive(Clone, Debug)]
struct Slot {
    id: u64,
    /// Started with `--join` (restart it the same way: it is no founding member).
    joined: bool,
    /// Its data is gone or it was removed: it must be removed, wiped and added back before it
    /// runs again (a wiped voter must never come back under the same id by itself).
    needs_rejoin: bool,
}

/// What one node said about itself.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Slot.
    pub slot: usize,
    /// Node id.
    pub id: u64,
    /// Its status, if it answered.
    pub status: Option<proto::Status>,
}

/// The cluster, its proxies and its slots. Dropping it kills every node and stops the proxies.
pub struct ChaosCluster {
    cluster: Cluster,
    net: Net,
    slots: Vec<Slot>,
    next_id: u64,
    members: SharedMembers,
    /// Per slot, the file libfaketime reads the node's wall-clock offset from (when the run
    /// steps clocks).
    clocks: Option<Vec<PathBuf>>,
}

/// How long a node may take to answer a status request.
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a membership step may take.
const MEMBERSHIP_WINDOW: Duration = Duration::from_secs(15);
/// How long a new node may take to catch up before it is promoted.
const CATCH_UP: Duration = Duration::from_secs(30);

impl ChaosCluster {
    /// Configures `n` nodes with their proxies and per-node cluster files, and starts them; with
    /// `clocks`, every node runs under libfaketime so [`ChaosCluster::step_clock`] can step its
    /// wall clock.
    pub fn start(
        n: usize,
        raft: &RaftSettings,
        program: Option<PathBuf>,
        clocks: bool,
    ) -> anyhow::Result<Self> {
        let cluster = Cluster::configure_with(n, |options| {
            options.raft = raft.clone();
            options.program = program;
        });
        let slots: Vec<Slot> = cluster
            .ids()
            .into_iter()
            .map(|id| Slot {
                id,
                joined: false,
                needs_rejoin: false,
            })
            .collect();
        let targets = slots
            .iter()
            .enumerate()
            .map(|(s, slot)| (s, socket_addr(&cluster.node(slot.id).raft)))
            .collect();
        let net = Net::start(&targets).context("starting the link proxies")?;
        let mut me = ChaosCluster {
            next_id: n as u64 + 1,
            cluster,
            net,
            slots,
            members: SharedMembers::default(),
            clocks: None,
        };
        let _ = me.members.0.admin.set(me.cluster.admin());
        if clocks {
            let files: Vec<PathBuf> = (0..n)
                .map(|s| me.cluster.dir().join(format!("clock-slot{s}")))
                .collect();
            for file in &files {
                std::fs::write(file, "+0").context("writing a clock offset file")?;
            }
            me.clocks = Some(files);
        }
        me.write_configs()?;
        for s in 0..n {
            let id = me.slots[s].id;
            me.set_clock_env(s);
            me.cluster.spawn(id);
        }
        me.publish_members();
        Ok(me)
    }

    /// The harness underneath.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The harness underneath, mutably (for post-mortem helpers such as `keep_dir`).
    pub fn cluster_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }

    /// The proxies.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The current members, shared.
    pub fn members(&self) -> SharedMembers {
        self.members.clone()
    }

    /// How many slots.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// The node id in `slot`.
    pub fn id(&self, slot: usize) -> u64 {
        self.slots[slot].id
    }

    /// The slot of node `id`.
    pub fn slot_of(&self, id: u64) -> Option<usize> {
        self.slots.iter().position(|s| s.id == id)
    }

    /// How many nodes may be down or cut off at once without losing the majority.
    pub fn minority(&self) -> usize {
        (self.slots.len() - 1) / 2
    }

    /// Whether the node in `slot` has a process.
    pub fn is_running(&self, slot: usize) -> bool {
        self.cluster.is_running(self.slots[slot].id)
    }

    /// Whether the node in `slot` is frozen.
    pub fn is_frozen(&self, slot: usize) -> bool {
        self.cluster.is_frozen(self.slots[slot].id)
    }

    fn publish_members(&self) {
        let list = self
            .slots
            .iter()
            .map(|s| (s.id, self.cluster.node(s.id).client.clone()))
            .collect();
        self.members.set(list);
    }

    /// Writes every node's own cluster file: the shared one, but with every other node at the
    /// proxy of the link to it.
    fn write_configs(&mut self) -> anyhow::Result<()> {
        for from in 0..self.slots.len() {
            let id = self.slots[from].id;
            let mut config = self.cluster.config().clone();
            config.nodes = (self.slots.iter().enumerate())
                .map(|(to, slot)| {
                    let mut node = self.cluster.node(slot.id).clone();
                    if to != from {
                        node.raft = self.net.endpoint(from, to);
                    }
                    node
                })
                .collect();
            self.cluster
                .kit_mut()
                .write_node_config(id, &config)
                .with_context(|| format!("writing node {id}'s cluster file"))?;
        }
        Ok(())
    }

    /// Runs the node in `slot` under libfaketime reading its slot's offset file (when clocks
    /// are stepped in this run).
    fn set_clock_env(&mut self, slot: usize) {
        if let Some(files) = &self.clocks {
            let env = crate::skewed_clock_env(&files[slot]);
            self.cluster.set_node_env(self.slots[slot].id, env);
        }
    }

    /// Steps the wall clock of the node in `slot` to `offset` seconds from true time (it takes
    /// effect within about a second). False when this run does not step clocks.
    pub fn step_clock(&mut self, slot: usize, offset: i64) -> bool {
        let Some(files) = &self.clocks else {
            return false;
        };
        std::fs::write(&files[slot], format!("{offset:+}")).is_ok()
    }

    /// SIGKILLs the node in `slot`.
    pub fn kill(&mut self, slot: usize) {
        self.cluster.kill(self.slots[slot].id);
    }

    /// SIGSTOPs the node in `slot`.
    pub fn freeze(&mut self, slot: usize) {
        self.cluster.freeze(self.slots[slot].id);
    }

    /// SIGCONTs the node in `slot`.
    pub fn thaw(&mut self, slot: usize) {
        self.cluster.thaw(self.slots[slot].id);
    }

    /// Thaws every frozen node.
    pub fn thaw_all(&mut self) {
        for s in 0..self.slots.len() {
            if self.is_frozen(s) {
                self.thaw(s);
            }
        }
    }

    /// Reaps nodes whose process exited by itself (a crash, or a node that believes it was
    /// removed); returns their ids and exit codes. They count as down: restart them.
    pub async fn reap_exited(&mut self) -> Vec<(u64, i32)> {
        let mut exited = Vec::new();
        for s in 0..self.slots.len() {
            let id = self.slots[s].id;
            if self.cluster.is_running(id)
                && let Some(code) = self.cluster.wait_exit(id, Duration::ZERO).await
            {
                exited.push((id, code));
            }
        }
        exited
    }

    /// Restarts the node in `slot` with its data (as it was first started: founding member or
    /// `--join`). A node whose data was wiped is not restarted here: see
    /// [`ChaosCluster::ensure_membership`].
    pub fn restart(&mut self, slot: usize) -> bool {
        let s = self.slots[slot].clone();
        if self.cluster.is_running(s.id) || s.needs_rejoin {
            return false;
        }
        if s.joined {
            self.cluster.spawn_joining(s.id);
        } else {
            self.cluster.spawn(s.id);
        }
        true
    }

    /// Cuts every link between different groups (both directions); other links are healed.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        self.net.heal_all();
        let group_of = |slot: usize| groups.iter().position(|g| g.contains(&slot));
        for a in 0..self.slots.len() {
            for b in 0..self.slots.len() {
                if a != b && group_of(a) != group_of(b) {
                    self.net.cut(a, b);
                }
            }
        }
    }

    /// Cuts `slot` off from every other node, both directions.
    pub fn isolate(&self, slot: usize) {
        let rest: Vec<usize> = (0..self.slots.len()).filter(|&s| s != slot).collect();
        self.partition(&[vec![slot], rest]);
    }

    /// Heals every link.
    pub fn heal(&self) {
        self.net.heal_all();
    }

    fn status_options() -> ClientOptions {
        ClientOptions {
            request_timeout: STATUS_TIMEOUT,
            connect_timeout: Duration::from_millis(300),
            retry_window: STATUS_TIMEOUT,
            follow_leader: false,
        }
    }

    /// Every slot's node's status, asked at once (a frozen or dead node: `None`).
    pub async fn statuses(&self) -> Vec<NodeView> {
        statuses_of(&self.members.members()).await
    }

    /// The node that says it leads with the highest term, if any.
    pub async fn leader(&self) -> Option<u64> {
        leader_of(&self.statuses().await).map(|(id, _)| id)
    }

    /// Waits for a leader; `None` after `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader().await {
                return Some(id);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client for membership changes over every member.
    pub fn admin(&self) -> Client {
        Client::with_options(
            self.members.client_endpoints(),
            ClientOptions {
                request_timeout: Duration::from_secs(3),
                connect_timeout: Duration::from_millis(300),
                retry_window: MEMBERSHIP_WINDOW,
                follow_leader: true,
            },
        )
        .with_identity(self.cluster.admin())
    }

    /// Removes the node in `slot` from the cluster while it runs (it stops by itself), wipes its
    /// data, starts it again with `--join` and adds it back (learner, catch up, voter).
    pub async fn remove_and_readd(&mut self, slot: usize) -> anyhow::Result<()> {
        let id = self.slots[slot].id;
        self.slots[slot].needs_rejoin = true;
        let mut admin = self.admin();
        admin
            .change_membership(&[MemberChange::Remove { id }])
            .await
            .with_context(|| format!("removing node {id}"))?;
        if self
            .cluster
            .wait_exit(id, Duration::from_secs(10))
            .await
            .is_none()
        {
            self.cluster.kill(id);
        }
        self.rejoin(slot).await.map(|_| ())
    }

    /// Wipes the (stopped, removed) node in `slot` and adds the machine back under a fresh id.
    /// Ids are never reused: a wiped node under its old id could vote a second time in a term
    /// (the cluster refuses such an add).
    async fn rejoin(&mut self, slot: usize) -> anyhow::Result<u64> {
        let old = self.slots[slot].id;
        self.cluster.kill(old);
        self.cluster.wipe(old);
        self.readd_fresh(slot, old).await
    }

    /// Starts the (empty) node in `slot` with `--join` and its own cluster file (it dials its
    /// peers through its proxies from the start) and adds it to the cluster: learner, catch up,
    /// voter.
    async fn join(&mut self, slot: usize) -> anyhow::Result<()> {
        let id = self.slots[slot].id;
        let spec = self.cluster.node(id).clone();
        self.cluster.spawn_joining(id);
        let mut admin = self.admin();
        let add = admin.add_node(id, &spec.raft, &spec.client, CATCH_UP, 10);
        tokio::pin!(add);
        // A joining node that stops by itself will never catch up: fail at once.
        loop {
            tokio::select! {
                result = &mut add => {
                    result.with_context(|| format!("adding node {id}"))?;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(code) = self.cluster.wait_exit(id, Duration::ZERO).await {
                        bail!(
                            "node {id} stopped by itself (exit code {code}) while catching up; \
                             its log says: {}",
                            last_warning(&self.cluster.log_tail(id, 20))
                        );
                    }
                }
            }
        }
        self.slots[slot].needs_rejoin = false;
        Ok(())
    }

    /// Replaces the node in `slot` after a disk loss: SIGKILL it and wipe its data, remove it
    /// from the cluster, and add a fresh node with a new id and fresh ports in its place; then
    /// restart the other nodes one at a time so that they dial the newcomer through their
    /// proxies. Returns the new id.
    pub async fn replace(&mut self, slot: usize) -> anyhow::Result<u64> {
        let old = self.slots[slot].id;
        self.cluster.kill(old);
        self.cluster.wipe(old);
        self.slots[slot].needs_rejoin = true;
        let mut admin = self.admin();
        admin
            .change_membership(&[MemberChange::Remove { id: old }])
            .await
            .with_context(|| format!("removing dead node {old}"))?;
        self.readd_fresh(slot, old).await
    }

    /// Puts a fresh, empty node with a new id and fresh ports in `slot` (whose old node `old`
    /// is gone from the cluster) and adds it; then restarts the other nodes one at a time so that
    /// they dial the newcomer through their proxies. Returns the new id.
    async fn readd_fresh(&mut self, slot: usize, old: u64) -> anyhow::Result<u64> {
        let new = self.next_id;
        self.next_id += 1;
        self.cluster.forget(old);
        let spec = self.cluster.new_node(new);
        self.slots[slot] = Slot {
            id: new,
            joined: true,
            needs_rejoin: true,
        };
        self.set_clock_env(slot);
        self.net.retarget(slot, socket_addr(&spec.raft));
        self.write_configs()?;
        self.publish_members();
        self.join(slot)
            .await
            .with_context(|| format!("node {new} in place of {old}"))?;
        // The others learned the newcomer's direct address from the membership change: restart
        // them so that they read their rewritten cluster files and dial it through the proxies.
        for other in 0..self.slots.len() {
            if other == slot || !self.is_running(other) {
                continue;
            }
            self.kill(other);
            self.restart(other);
            if self.wait_leader(Duration::from_secs(15)).await.is_none() {
                bail!("no leader after restarting node {}", self.id(other));
            }
        }
        Ok(new)
    }

    /// Heals the network, thaws and restarts every node, and brings the membership back to one
    /// voter per slot (removing strays, re-adding wiped or removed nodes). Retries until
    /// `timeout`.
    pub async fn heal_everything(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        self.heal();
        self.thaw_all();
        let mut last_error = anyhow!("not tried");
        while Instant::now() < deadline {
            for (id, code) in self.reap_exited().await {
                eprintln!(
                    "chaos: node {id} had exited by itself (exit code {code}); restarting it"
                );
            }
            for s in 0..self.slots.len() {
                self.restart(s);
            }
            match self.ensure_membership().await {
                Ok(leader) => return Ok(leader),
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last_error.context(format!("the cluster did not recover within {timeout:?}")))
    }

    /// One pass of bringing the membership to one voter per slot; the leader's id once it is.
    async fn ensure_membership(&mut self) -> anyhow::Result<u64> {
        let wanted: BTreeSet<u64> = self.slots.iter().map(|s| s.id).collect();
        let mut admin = self.admin();
        let status = admin.leader_status().await.context("no leader")?;
        for m in &status.members {
            if !wanted.contains(&m.id) {
                admin
                    .change_membership(&[MemberChange::Remove { id: m.id }])
                    .await
                    .with_context(|| format!("removing stray member {}", m.id))?;
            }
        }
        for s in 0..self.slots.len() {
            let id = self.slots[s].id;
            let member = status.members.iter().find(|m| m.id == id);
            let is_voter = member.is_some_and(|m| m.role() == proto::Role::Voter);
            if self.slots[s].needs_rejoin || member.is_none() {
                if member.is_some() {
                    admin
                        .change_membership(&[MemberChange::Remove { id }])
                        .await
                        .with_context(|| format!("removing node {id} before re-adding it"))?;
                }
                self.slots[s].needs_rejoin = true;
                let new = self.rejoin(s).await?;
                // The slot's id changed and the others were restarted: the caller checks again.
                bail!("re-added slot {s} as node {new}; checking the membership again");
            } else if !is_voter {
                let spec = self.cluster.node(id).clone();
                admin
                    .add_node(id, &spec.raft, &spec.client, CATCH_UP, 10)
                    .await
                    .with_context(|| format!("promoting node {id}"))?;
            }
        }
        let status = admin.leader_status().await.context("no leader")?;
        let voters: BTreeSet<u64> = status
            .members
            .iter()
            .filter(|m| m.role() == proto::Role::Voter)
            .map(|m| m.id)
            .collect();
        if voters != wanted || status.members.len() != wanted.len() {
            bail!("membership is {:?}, want voters {wanted:?}", status.members);
        }
        Ok(status.id)
    }

    /// Waits until every node has applied the leader's commit index and they all report the
    /// same applied index and space digest; returns the digests by node id. On timeout the
    /// last digests seen are returned in the error.
    pub async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<BTreeMap<u64, u32>> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("nothing asked yet");
        let admin = self.cluster.admin();
        let cluster_id = self.cluster.kit().cluster_id();
        loop {
            let mut views = BTreeMap::new();
            for (id, endpoint) in self.members.members() {
                match status_with_digest(&endpoint, &admin, cluster_id).await {
                    Ok(s) => {
                        views.insert(id, s);
                    }
                    Err(e) => last = format!("node {id}: {e}"),
                }
            }
            if views.len() == self.slots.len() {
                let leader = views.values().find(|s| s.role() == proto::Role::Leader);
                if let Some(leader) = leader {
                    let commit = leader.commit;
                    let applied: BTreeSet<u64> = views.values().map(|s| s.applied).collect();
                    let digests: BTreeMap<u64, u32> =
                        views.iter().map(|(&id, s)| (id, s.digest)).collect();
                    let distinct: BTreeSet<u32> = digests.values().copied().collect();
                    if applied.len() == 1 && applied.iter().all(|&a| a >= commit) {
                        if distinct.len() == 1 {
                            return Ok(digests);
                        }
                        last = format!("same applied index {applied:?}, digests {digests:?}");
                    } else {
                        last = format!("leader commit {commit}, applied {:?}", {
                            views
                                .iter()
                                .map(|(&id, s)| (id, s.applied))
                                .collect::<BTreeMap<_, _>>()
                        });
                    }
                } else {
                    last = "no leader".into();
                }
            }
            if Instant::now() >= deadline {
                bail!("the replicas did not converge within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Everything matching `template` as the node in `slot` serves it (linearizable reads
    /// through that node, paged).
    pub async fn read_all(
        &self,
        slot: usize,
        template: &Template,
    ) -> anyhow::Result<Vec<(TupleId, Tuple)>> {
        let id = self.slots[slot].id;
        let options = ClientOptions {
            follow_leader: false,
            retry_window: Duration::from_secs(10),
            ..ClientOptions::default()
        };
        let endpoint = self.cluster.node(id).client.clone();
        let mut client = Client::with_options([endpoint], options);
        let mut all = Vec::new();
        // (Reads: unsigned.)
        let mut after = 0;
        loop {
            let page = client
                .rd_all(
                    template,
                    &Query {
                        limit: 5000,
                        after,
                        ..Query::default()
                    },
                )
                .await
                .with_context(|| format!("reading {template} from node {id}"))?;
            let done = page.len() < 5000;
            if let Some(&(last, _)) = page.last() {
                after = last;
            }
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }
}

/// The last warning or error line of a log excerpt (or its last line).
fn last_warning(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains(" WARN ") || l.contains(" ERRO ") || l.contains(" CRIT "))
        .or_else(|| log.lines().last())
        .unwrap_or("(empty)")
        .to_string()
}

/// Every node's status, asked at once.
pub async fn statuses_of(members: &[(u64, String)]) -> Vec<NodeView> {
    let mut set = JoinSet::new();
    for (slot, (id, endpoint)) in members.iter().cloned().enumerate() {
        set.spawn(async move {
            let options = ChaosCluster::status_options();
            let status =
                tokio::time::timeout(STATUS_TIMEOUT * 2, Client::status_of(&endpoint, &options))
                    .await
                    .ok()
                    .and_then(Result::ok);
            NodeView { slot, id, status }
        });
    }
    let mut views = Vec::new();
    while let Some(v) = set.join_next().await {
        if let Ok(v) = v {
            views.push(v);
        }
    }
    views.sort_by_key(|v| v.slot);
    views
}

/// The (id, term) of the node that says it leads with the highest term.
pub fn leader_of(views: &[NodeView]) -> Option<(u64, u64)> {
    views
        .iter()
        .filter_map(|v| v.status.as_ref())
        .filter(|s| s.role() == proto::Role::Leader)
        .max_by_key(|s| s.term)
        .map(|s| (s.id, s.term))
}

/// A node's status with the digest of its space (one request to that node only), asked by
/// the admin.
pub async fn status_with_digest(
    endpoint: &str,
    admin: &raftnode::identity::Identity,
    cluster_id: u64,
) -> Result<proto::Status, String> {
    // Cluster time from the node itself: the digest request expires a minute after it.
    let plain = proto::Request {
        op: Some(proto::request::Op::Status(proto::StatusRequest {
            digest: false,
        })),
        ..Default::default()
    };
    let now = raw_status(endpoint, &plain).await?.cluster_time_ms;
    let request = proto::Request {
        op: Some(proto::request::Op::Status(proto::StatusRequest {
            digest: true,
        })),
        session: rand::random(),
        not_after_ms: now + 60_000,
        ..Default::default()
    };
    let request = admin.seal(request, cluster_id);
    raw_status(endpoint, &request).await
}

/// One request to `endpoint` only, answered by a status.
async fn raw_status(endpoint: &str, request: &proto::Request) -> Result<proto::Status, String> {
    let exchange = async {
        let mut options = zeromq::SocketOptions::default();
        options.connect_timeout(Duration::from_millis(500));
        let mut socket = zeromq::ReqSocket::with_options(options);
        socket
            .connect(endpoint)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        socket
            .send(ZmqMessage::from(Bytes::from(request.encode_to_vec())))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let reply = socket.recv().await.map_err(|e| format!("receive: {e}"))?;
        let frames = reply.into_vec();
        let payload = frames.last().ok_or("an empty answer")?;
        let response =
            proto::Response::decode(payload.as_ref()).map_err(|e| format!("undecodable: {e}"))?;
        match response.result {
            Some(proto::response::Result::Status(s)) => Ok(s),
            other => Err(format!("unexpected answer {other:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .map_err(|_| format!("{endpoint}: no answer in time"))?
}
