//! Chaos runs: a real cluster under a concurrent, recorded workload while a nemesis kills,
//! freezes, partitions and replaces nodes; then heal, check the history and compare replicas.
//!
//! # The network: per-link TCP proxies
//!
//! Partitions are real: every raft message crosses a TCP proxy run by the harness
//! ([`proxy::Net`], on its own tokio runtime). For every ordered pair of nodes `(i, j)` a proxy
//! listens on its own `127.0.0.1` port and forwards to node `j`'s real raft port. Node `i` runs
//! with its own cluster file (`cluster-node<i>.toml` in the run's directory) that gives its own
//! real raft endpoint and, for every other node `j`, the proxy `i -> j` as `j`'s raft endpoint; a
//! node pins the addresses of its own cluster file, so it never dials a peer around its proxy.
//! Because a node sends to a peer over its own connection and gets the acknowledgement back on
//! it, link `i -> j` carries exactly what `i` sends to `j`. Client endpoints are direct (clients
//! can still reach a cut-off node, which is the interesting case).
//!
//! Cutting link `i -> j` closes the proxy's live connections at once and makes it accept and
//! immediately close new ones; healing lets new connections through. A partition is a set of cut
//! links: isolating node `x` cuts `x -> *` and `* -> x`; a split `{a, b} | {c, d, e}` cuts every
//! link between the sides, both ways.
//!
//! # A run
//!
//! [`run`] starts the cluster ([`topology::ChaosCluster`]), the clients
//! ([`workload::Workload`], each operation recorded by a [`crate::history::Recorder`] into a JSON
//! Lines file), a leader watch, and the nemesis ([`nemesis::Nemesis`]) for the given duration.
//! Then it stops the faults, heals the network, thaws and restarts every node and restores one
//! voter per slot, stops the clients, waits until every replica has applied the same index with
//! the same digest of its space, reads every node's final state through that node, and runs the
//! checker. The [`report::RunReport`] ends with the line `anomalies: N`.

pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod topology;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use raftnode::config::RaftSettings;
use tuplespace::{Template, Tuple, TupleId};

use crate::checker;
use crate::history::{History, Recorder};
use nemesis::{LeaderWatch, Nemesis, NemesisOptions};
use report::{RunReport, longest_gap};
use topology::ChaosCluster;
use workload::{Workload, WorkloadOptions};

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Nodes.
    pub nodes: usize,
    /// How long the nemesis injects faults.
    pub duration: Duration,
    /// Seeds the nemesis and the clients' choices.
    pub seed: u64,
    /// The clients.
    pub workload: WorkloadOptions,
    /// The nemesis.
    pub nemesis: NemesisOptions,
    /// The `[raft]` settings of the cluster file.
    pub raft: RaftSettings,
    /// The `raftnode` binary (default: the one the kit finds, see
    /// [`raftnode::devcluster::raftnode_bin`]).
    pub raftnode: Option<PathBuf>,
    /// Where to write the history (default: `history.jsonl` in the cluster's directory).
    pub history: Option<PathBuf>,
    /// Keep the cluster's directory (it is kept anyway when anomalies are found).
    pub keep: bool,
    /// Print the nemesis's steps as they happen.
    pub verbose: bool,
}

impl ChaosOptions {
    /// Defaults for `nodes` nodes, `duration` of faults and `seed`.
    pub fn new(nodes: usize, duration: Duration, seed: u64) -> ChaosOptions {
        ChaosOptions {
            nodes,
            duration,
            seed,
            workload: WorkloadOptions {
                seed,
                ..WorkloadOptions::default()
            },
            nemesis: NemesisOptions {
                seed,
                ..NemesisOptions::default()
            },
            // Small snapshots, so that restarts and new nodes go through snapshots too.
            raft: RaftSettings {
                snapshot_entries: 2000,
                log_tail: 500,
                ..RaftSettings::default()
            },
            raftnode: None,
            history: None,
            keep: false,
            verbose: false,
        }
    }
}

/// The final state of every node: the workload's tuples (`("k", _, _)` and `("cas", _, _)`) as
/// that node serves them, oldest first.
pub type FinalStates = BTreeMap<u64, Vec<(TupleId, Tuple)>>;

/// Templates that cover every tuple the workload writes.
pub fn workload_templates() -> Vec<Template> {
    ["(\"k\", _, _)", "(\"cas\", _, _)"]
        .iter()
        .map(|t| t.parse().expect("a valid template"))
        .collect()
}

/// Reads every node's final state through that node.
pub async fn final_states(cc: &ChaosCluster) -> anyhow::Result<FinalStates> {
    let mut states = BTreeMap::new();
    for slot in 0..cc.size() {
        let mut all = Vec::new();
        for template in workload_templates() {
            all.extend(cc.read_all(slot, &template).await?);
        }
        all.sort_by_key(|(id, _)| *id);
        states.insert(cc.id(slot), all);
    }
    Ok(states)
}

/// Runs the checker on a history and the nodes' final states.
pub fn check(history: &History, finals: &FinalStates) -> checker::Report {
    let finals: Vec<checker::FinalState> = finals
        .iter()
        .map(|(&id, tuples)| (id, tuples.clone()))
        .collect();
    checker::check(&history.events, &finals)
}

/// One chaos run, start to report.
pub async fn run(options: ChaosOptions) -> anyhow::Result<RunReport> {
    let start = Instant::now();
    let clocks = options.nemesis.faults.contains(&nemesis::Fault::ClockStep);
    let mut cc = ChaosCluster::start(
        options.nodes,
        &options.raft,
        options.raftnode.clone(),
        clocks,
    )?;
    let history_path = options
        .history
        .clone()
        .unwrap_or_else(|| cc.cluster().dir().join("history.jsonl"));
    eprintln!(
        "chaos: {} nodes, {} clients, {:?} of faults, seed {}; cluster in {}; history in {}",
        options.nodes,
        options.workload.clients,
        options.duration,
        options.seed,
        cc.cluster().dir().display(),
        history_path.display()
    );
    cc.wait_leader(Duration::from_secs(30))
        .await
        .context("no leader elected at the start")?;
    let recorder = Recorder::to_file(&history_path)
        .with_context(|| format!("creating {}", history_path.display()))?;
    let watch = LeaderWatch::start(cc.members(), start, Duration::from_millis(250));
    let workload = Workload::start(options.workload.clone(), cc.members(), recorder.clone());
    let stats = workload.stats();
    let clients_from = Instant::now();
    let until = clients_from + options.duration;
    let mut nemesis_options = options.nemesis.clone();
    nemesis_options.verbose |= options.verbose;
    let nemesis_log = Nemesis::new(&mut cc, nemesis_options, start)
        .run(until)
        .await;
    let faults_end = Instant::now();
    let timeline_path = history_path.with_file_name("nemesis.txt");
    let timeline: String = nemesis_log
        .timeline
        .iter()
        .map(|(at, what)| format!("{:>8.1}s {what}\n", at.as_secs_f64()))
        .collect();
    if let Err(e) = std::fs::write(&timeline_path, timeline) {
        eprintln!("chaos: cannot write {}: {e}", timeline_path.display());
    }

    let mut report = RunReport {
        nodes: options.nodes,
        clients: options.workload.clients,
        seed: options.seed,
        fault_time: faults_end.duration_since(clients_from),
        history_path: history_path.clone(),
        timeline_path,
        nemesis: nemesis_log,
        ..RunReport::default()
    };
    eprintln!("chaos: faults stopped; healing");
    match cc.heal_everything(Duration::from_secs(120)).await {
        Ok(_) => report.recovery = Some(faults_end.elapsed()),
        Err(e) => report
            .run_anomalies
            .push(format!("the cluster did not recover: {e:#}")),
    }
    let clients_to = Instant::now();
    workload.stop(Duration::from_secs(30)).await;
    report.leaders = watch.stop().await;
    report.ops = stats.by_op();
    let acks: Vec<Instant> = stats.acked_writes().iter().map(|&(_, d)| d).collect();
    report.longest_gap = longest_gap(start, clients_from, clients_to, &acks);

    let mut finals = FinalStates::new();
    if report.run_anomalies.is_empty() {
        match cc.wait_converged(Duration::from_secs(60)).await {
            Ok(digests) => report.digests = digests,
            Err(e) => report.run_anomalies.push(format!("{e:#}")),
        }
        match final_states(&cc).await {
            Ok(states) => finals = states,
            Err(e) => report
                .run_anomalies
                .push(format!("could not read the final states: {e:#}")),
        }
    }
    report.final_tuples = finals.values().map(Vec::len).max().unwrap_or(0);
    let history = recorder.history();
    report.events = history.events.len();
    if let Some(e) = recorder.write_error() {
        report
            .run_anomalies
            .push(format!("writing the history failed: {e}"));
    }
    eprintln!("chaos: checking {} events", report.events);
    let checked = Instant::now();
    let verdict = check(&history, &finals);
    report.check_time = checked.elapsed();
    report.checker_anomalies = verdict.anomalies.len();
    report.checker_unknown = verdict.unknown.len();
    report.checker = verdict.to_string();
    if report.anomalies() > 0 || options.keep {
        cc.cluster_mut().keep_dir();
        report.kept_dir = Some(cc.cluster().dir().to_path_buf());
    }
    Ok(report)
}
