//! The deterministic simulator: a whole cluster — N real [`Node`](raftnode::node::Node)s and M
//! clients following the real client's retry rules — in one thread, in virtual time, from one
//! seed.
//!
//! # What is real and what is simulated
//!
//! Real: the node (raft-rs, the ready loop, admission, reads, writes, snapshots, membership), the
//! state machine, the log storage's bookkeeping and recovery, the snapshot files' format and
//! checks, peer authentication and the receiving side's screening
//! ([`Inbound`](raftnode::transport::Inbound)), the client endpoint's request checks
//! ([`plan`](raftnode::server::plan)) and timeouts, the client's retry rules
//! ([`Call`](raftnode::client::retry::Call)), the history checker.
//!
//! Simulated, through the node's seams ([`raftnode::env`], [`raftnode::disk`]): the clock (each
//! node's runs at its own rate and jumps forward), the network (delay, loss, duplication,
//! reordering, partitions, including one-way cuts), the disk (an in-memory one that loses
//! unsynced writes on a power loss, and can crash in the middle of the node's I/O), background
//! work (run at a time drawn from the seed), and raft-rs's election timeouts (drawn from the
//! seed).
//!
//! # A run
//!
//! 1. From the seed: 3 or 5 nodes, 2 to 6 clients, a network, how often faults come.
//! 2. Clients run random tuple operations ([`crate::ops`]), every one recorded in a history;
//!    faults come every so often ([`faults::Fault`]): partitions, crashes of a process or of a
//!    machine, crashes in the middle of a write, clock skew and jumps, membership changes,
//!    attackers' frames.
//! 3. The faults end; every node that is down starts again; the run waits until every member
//!    has applied everything committed.
//! 4. Checks: the history (nothing lost, nothing taken twice, nothing invented, linearizable:
//!    [`crate::checker`]); the replicas (equal state machines, equal committed logs); and, all
//!    along, one leader per term, cluster time never going back on a node, every node start
//!    succeeding, no node panicking or stopping on an error, every hostile frame refused.
//!
//! The same seed gives the same run: [`Outcome::digest`] is a hash of the history, and
//! `scripts/sim --seed S` reproduces a run exactly.

use std::time::{Duration, Instant};

use raftnode::config::RaftSettings;
use raftnode::keys::Keys;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slog::Logger;

use crate::checker::{self, FinalState};
use crate::history::Event;

mod clock;
pub mod faults;
mod node;
pub mod queue;
mod world;

use node::Shared;
use queue::ns;
use world::World;

/// A run's shape, drawn from its seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Founding nodes.
    pub nodes: u64,
    /// Clients.
    pub clients: usize,
    /// Keys of the `("k", KEY, N)` tuples.
    pub keys: i64,
    /// Keys of the `("cas", KEY, V)` tuples.
    pub cas_keys: i64,
    /// How long clients run and faults come (virtual time).
    pub duration: Duration,
    /// How long the cluster may take to settle afterwards.
    pub settle: Duration,
    /// Faults come about this often.
    pub fault_every: Duration,
    /// Whether membership changes are among the faults.
    pub membership: bool,
    /// Applied entries between snapshots.
    pub snapshot_entries: u64,
}

impl Scenario {
    /// The scenario of `seed`, for runs of `duration`.
    pub fn draw(seed: u64, duration: Duration) -> Scenario {
        let mut rng = StdRng::seed_from_u64(seed);
        Scenario {
            nodes: if rng.gen_bool(0.6) { 3 } else { 5 },
            clients: rng.gen_range(2..=6),
            keys: rng.gen_range(1..=4),
            cas_keys: rng.gen_range(1..=2),
            duration,
            settle: Duration::from_secs(60),
            fault_every: Duration::from_millis(rng.gen_range(300..2_000)),
            membership: rng.gen_bool(0.7),
            snapshot_entries: rng.gen_range(20..300),
        }
    }
}

/// Counters of a run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Events handled.
    pub events: u64,
    /// Node turns.
    pub turns: u64,
    /// Node starts (first starts and restarts).
    pub starts: u64,
    /// Peer frames sent.
    pub frames: u64,
    /// Peer frames lost.
    pub frames_lost: u64,
    /// Client operations completed.
    pub ops: u64,
    /// ... with `ok`.
    pub ok: u64,
    /// ... with `fail`.
    pub fail: u64,
    /// ... with `info` (outcome unknown).
    pub info: u64,
    /// Faults injected.
    pub faults: u64,
    /// Crashes injected between events.
    pub crashes: u64,
    /// Crashes that struck in the middle of a node's I/O.
    pub crash_points: u64,
    /// Hostile frames delivered.
    pub hostile: u64,
    /// Membership changes asked for.
    pub membership_changes: u64,
    /// ... and applied.
    pub membership_done: u64,
}

/// Options of a run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed.
    pub seed: u64,
    /// How long clients run and faults come (virtual time).
    pub duration: Duration,
    /// Log what the nodes log (to stderr) instead of discarding it.
    pub verbose: bool,
}

impl Options {
    /// The default run of `seed`.
    pub fn seed(seed: u64) -> Options {
        Options {
            seed,
            duration: Duration::from_secs(20),
            verbose: false,
        }
    }
}

/// What a run came to.
#[derive(Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// The scenario it drew.
    pub scenario: Scenario,
    /// A hash of the history (the same seed always gives the same digest).
    pub digest: String,
    /// Virtual time simulated.
    pub simulated: Duration,
    /// Wall time it took.
    pub wall: Duration,
    /// Counters.
    pub stats: Stats,
    /// Everything that went wrong (empty: the run passed).
    pub failures: Vec<String>,
    /// The history.
    pub history: Vec<Event>,
}

impl Outcome {
    /// Whether the run passed every check.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Raft settings for simulated clusters: the defaults, with snapshots often enough that they
/// happen in every run.
fn settings(scenario: &Scenario) -> RaftSettings {
    RaftSettings {
        snapshot_entries: scenario.snapshot_entries,
        log_tail: scenario.snapshot_entries / 2,
        ..RaftSettings::default()
    }
}

fn logger(verbose: bool, now: queue::Now) -> Logger {
    if !verbose {
        return raftnode::logging::discard();
    }
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator)
        .use_custom_timestamp(move |w| write!(w, "{:>12.6}", now.get() as f64 / 1e9))
        .build()
        .fuse();
    Logger::root(drain, slog::o!())
}

/// Runs the simulation of `options.seed`.
pub fn run(options: &Options) -> Outcome {
    let started = Instant::now();
    let scenario = Scenario::draw(options.seed, options.duration);
    let shared_now = queue::Now::new();
    let shared = Shared {
        keys: keys_of(options.seed).0,
        admin: keys_of(options.seed).1,
        settings: settings(&scenario),
        logger: logger(options.verbose, shared_now.clone()),
    };
    let mut world = World::new(scenario.clone(), shared, options.seed, shared_now);
    world.trace = options.verbose;
    world.begin();
    while world.step() {}
    if world.settled {
        final_checks(&mut world);
    }
    let history = world.recorder.events();
    Outcome {
        seed: options.seed,
        digest: digest(&history),
        scenario,
        simulated: Duration::from_nanos(world.now.get()),
        wall: started.elapsed(),
        stats: world.stats.clone(),
        failures: world.failures.clone(),
        history,
    }
}

/// The cluster's keys and its admin, from the seed (so that even the bytes on the wire repeat).
fn keys_of(seed: u64) -> (Keys, raftnode::identity::Identity) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b65_7973);
    let key = raftnode::keys::ClusterKey::new(rng.r#gen());
    let admin = raftnode::identity::Identity::from_seed(raftnode::identity::ADMIN, rng.r#gen());
    let keys = Keys::new(
        raftnode::keys::ClusterId(rng.gen_range(1..u64::MAX)),
        vec![key],
    )
    .expect("a valid cluster id and one key")
    .with_admin(admin.public_key());
    (keys, admin)
}

/// A hash of the history's events.
pub fn digest(history: &[Event]) -> String {
    let mut hasher = blake3::Hasher::new();
    for event in history {
        hasher.update(event.to_json().as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex()[..16].to_string()
}

/// The checks on a settled cluster: the history against the members' final states, and the
/// replicas against each other.
fn final_checks(world: &mut World) {
    let members = world.members();
    let mut states: Vec<FinalState> = Vec::new();
    let mut machines: Vec<(u64, Vec<u8>)> = Vec::new();
    for &id in &members {
        let Some(live) = world.nodes.get(&id).and_then(|n| n.live.as_ref()) else {
            continue;
        };
        let space = live.node.machine().space();
        // The registry's tuples are the cluster's own (the founding entries register the
        // admin), not a client's writes: the history has no operation for them.
        let tuples = space
            .iter()
            .filter(|(_, t)| !is_registry(t))
            .map(|(id, t)| (id, t.clone()))
            .collect();
        states.push((id, tuples));
        machines.push((id, live.node.machine().encode()));
    }
    let history = world.recorder.events();
    let report = checker::check(&history, &states);
    if !report.is_valid() {
        world.fail(format!("the history does not check:\n{report}"));
    }
    if let Some((first, bytes)) = machines.first()
        && let Some((other, _)) = machines.iter().find(|(_, b)| b != bytes)
    {
        let other_bytes = &machines
            .iter()
            .find(|(id, _)| id == other)
            .expect("found")
            .1;
        world.fail(format!(
            "replicas diverged: node {first} and node {other} hold different states at the same \
             applied index ({})",
            what_differs(bytes, other_bytes)
        ));
    }
    compare_logs(world, &members);
}

/// Whether `t` is one of the users' registry tuples, written by the cluster itself.
fn is_registry(t: &tuplespace::Tuple) -> bool {
    matches!(t.fields().first(), Some(tuplespace::Value::Str(k)) if k.as_str() == "user" || k.as_str() == "pastkey")
}

/// Which parts of two encoded machine states differ, in words.
fn what_differs(a: &[u8], b: &[u8]) -> String {
    use prost::Message as _;
    use raftnode::proto::MachineState;
    // The machine's stream: magic, the state's length, the state (space apart), the space.
    let split = |bytes: &[u8]| -> Option<MachineState> {
        let rest = bytes.strip_prefix(raftnode::machine::MACHINE_MAGIC)?;
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let state = rest.get(4..4 + len)?;
        let mut state = MachineState::decode(state).ok()?;
        state.space = rest.get(4 + len..)?.to_vec();
        Some(state)
    };
    let (Some(a), Some(b)) = (split(a), split(b)) else {
        return "a state does not decode".into();
    };
    let mut parts = Vec::new();
    if (a.applied_index, a.applied_term) != (b.applied_index, b.applied_term) {
        parts.push("applied index".to_string());
    }
    if a.space != b.space {
        parts.push("tuples".to_string());
    }
    if a.sessions != b.sessions {
        parts.push("sessions".to_string());
    }
    if a.members != b.members {
        parts.push(format!("members {:?} against {:?}", a.members, b.members));
    }
    if a.removed_ids != b.removed_ids {
        parts.push("removed ids".to_string());
    }
    if (a.cluster_id, a.limits) != (b.cluster_id, b.limits) {
        parts.push("cluster id or limits".to_string());
    }
    parts.join("; ")
}

/// Every two members agree on every committed entry both still hold.
fn compare_logs(world: &mut World, members: &[u64]) {
    use raft::{GetEntriesContext, Storage};
    let mut logs = Vec::new();
    for &id in members {
        let Some(live) = world.nodes.get(&id).and_then(|n| n.live.as_ref()) else {
            continue;
        };
        let store = live.node.storage();
        let first = store.first_index().unwrap_or(1);
        let commit = store.hard_state().commit;
        let entries = if commit >= first {
            store
                .entries(first, commit + 1, None, GetEntriesContext::empty(false))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        logs.push((id, entries));
    }
    for (i, (a, ea)) in logs.iter().enumerate() {
        for (b, eb) in &logs[i + 1..] {
            for x in ea {
                if let Some(y) = eb.iter().find(|y| y.index == x.index)
                    && (x.term != y.term || x.data != y.data)
                {
                    world.fail(format!(
                        "nodes {a} and {b} committed different entries at index {}",
                        x.index
                    ));
                    return;
                }
            }
        }
    }
}

/// Seeds `first..first + count` run on `jobs` threads; `on_done` sees each outcome (in seed
/// order per thread, not overall).
pub fn run_many(
    first: u64,
    count: u64,
    jobs: usize,
    duration: Duration,
    on_done: &(dyn Fn(&Outcome) + Sync),
) -> Vec<Outcome> {
    let next = std::sync::atomic::AtomicU64::new(first);
    let end = first + count;
    let outcomes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    let mut options = Options::seed(seed);
                    options.duration = duration;
                    let outcome = run(&options);
                    on_done(&outcome);
                    let mut light = outcome;
                    light.history = Vec::new();
                    outcomes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(light);
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    outcomes.sort_by_key(|o| o.seed);
    outcomes
}

/// Virtual seconds per wall second over some outcomes.
pub fn speed(outcomes: &[Outcome]) -> f64 {
    let simulated: f64 = outcomes.iter().map(|o| o.simulated.as_secs_f64()).sum();
    let wall: f64 = outcomes.iter().map(|o| o.wall.as_secs_f64()).sum();
    if wall > 0.0 { simulated / wall } else { 0.0 }
}

/// Virtual nanoseconds of a duration (re-exported for the binary).
pub fn nanos(d: Duration) -> u64 {
    ns(d)
}
