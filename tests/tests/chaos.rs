//! Chaos tests: real clusters under a recorded concurrent workload while a nemesis kills,
//! freezes, partitions (through per-link TCP proxies) and replaces nodes; then the history is
//! checked and the replicas compared. Each run prints its seed and its report; set `CHAOS_SEED`
//! to run another seed, `CHAOS_FAULTS` to choose the faults (e.g. `crash,partition,replace`).
//!
//! Each scenario takes the harness's serial lock and a hard time limit.

use std::time::{Duration, Instant};

use raftnode::config::RaftSettings;
use tests::chaos::nemesis::{Fault, parse_faults};
use tests::chaos::topology::ChaosCluster;
use tests::chaos::workload::{Mix, Workload, WorkloadOptions};
use tests::chaos::{ChaosOptions, check, final_states, run};
use tests::history::Recorder;
use tests::{bounded, serial};

/// The fixed seed of the CI runs (override with `CHAOS_SEED`).
const SEED: u64 = 20_261_121;

/// The faults of the CI runs: `CHAOS_FAULTS` (e.g. `crash,partition,replace`), default all.
fn faults() -> Vec<Fault> {
    match std::env::var("CHAOS_FAULTS") {
        Ok(text) => parse_faults(&text).unwrap_or_else(|e| panic!("CHAOS_FAULTS: {e}")),
        Err(_) => Fault::ALL.to_vec(),
    }
}

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED)
}

async fn chaos_run(nodes: usize, fault_time: Duration, limit: Duration) {
    let seed = seed();
    eprintln!(
        "chaos: {nodes} nodes, {fault_time:?} of faults, seed {seed} (CHAOS_SEED={seed} reruns it)"
    );
    let mut options = ChaosOptions::new(nodes, fault_time, seed);
    options.nemesis.faults = faults();
    options.verbose = true;
    let report = bounded(limit, run(options)).await.expect("the chaos run");
    eprintln!("{report}");
    assert_eq!(report.anomalies(), 0, "seed {seed}:\n{report}");
    let [invoked, ok, _, _] = report.totals();
    assert!(
        ok * 2 > invoked,
        "most operations succeed despite the faults:\n{report}"
    );
    let faults: u64 = report.nemesis.counts.values().sum();
    assert!(faults >= 8, "the nemesis was busy:\n{report}");
}

/// A bounded run for CI: 3 nodes, 75 s of every kind of fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_under_every_fault_lose_nothing() {
    let _serial = serial().await;
    chaos_run(3, Duration::from_secs(75), Duration::from_secs(240)).await;
}

/// 5 nodes, 60 s: splits 2 | 3 and two nodes down at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_under_every_fault_lose_nothing() {
    let _serial = serial().await;
    chaos_run(5, Duration::from_secs(60), Duration::from_secs(240)).await;
}

/// Acknowledgements that can still arrive after a cut for writes committed just before it.
const GRACE: Duration = Duration::from_millis(500);

/// Cut a majority off (3 of 5 nodes, the leader among them, each alone): no write is
/// acknowledged while no side has a majority; after healing, writes resume; the history checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_is_acknowledged_without_a_majority() {
    let _serial = serial().await;
    let seed = seed();
    let cc = ChaosCluster::start(5, &RaftSettings::default(), None, false).expect("a cluster");
    bounded(Duration::from_secs(150), async {
        let leader = cc
            .wait_leader(Duration::from_secs(20))
            .await
            .expect("a leader");
        let recorder = Recorder::new();
        let options = WorkloadOptions {
            clients: 6,
            mix: Mix::Writes,
            retry_window: Duration::from_secs(3),
            think: Duration::from_millis(10),
            seed,
            ..WorkloadOptions::default()
        };
        let workload = Workload::start(options, cc.members(), recorder.clone());
        let stats = workload.stats();
        let acked_after = |t: Instant| {
            stats
                .acked_writes()
                .into_iter()
                .filter(|&(invoked, _)| invoked > t)
                .count()
        };
        let started = Instant::now();
        while acked_after(started) < 50 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "writes flow before the cut"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The leader and two more nodes each alone; the other two together: no side has 3 of 5.
        let leader_slot = cc.slot_of(leader).expect("the leader's slot");
        let mut others: Vec<usize> = (0..5).filter(|&s| s != leader_slot).collect();
        let pair = others.split_off(2);
        let mut groups = vec![vec![leader_slot], vec![others[0]], vec![others[1]]];
        groups.push(pair);
        let cut_at = Instant::now();
        cc.partition(&groups);
        eprintln!("cut: {groups:?} (slots; the leader, node {leader}, alone)");
        tokio::time::sleep(Duration::from_secs(8)).await;
        let heal_at = Instant::now();
        let invoked_during = {
            let [invoked, ..] = stats.totals();
            invoked
        };
        let views = cc.statuses().await;
        cc.heal();
        let acked = stats.acked_writes();
        let acked_in_cut: Vec<_> = acked
            .iter()
            .filter(|&&(_, done)| done > cut_at + GRACE && done < heal_at)
            .collect();
        let started_in_cut: Vec<_> = acked
            .iter()
            .filter(|&&(invoked, done)| invoked > cut_at && done < heal_at)
            .collect();
        assert!(
            acked_in_cut.is_empty() && started_in_cut.is_empty(),
            "writes were acknowledged without a majority: {} acknowledged during the cut, {} \
             invoked after it; statuses at the end of the cut: {views:?}",
            acked_in_cut.len(),
            started_in_cut.len()
        );

        // Writes resume after healing.
        let resumed = Instant::now();
        while acked_after(heal_at) < 20 {
            assert!(
                resumed.elapsed() < Duration::from_secs(30),
                "writes resume after healing"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let resume_time = stats
            .acked_writes()
            .iter()
            .filter(|&&(invoked, _)| invoked > heal_at)
            .map(|&(_, done)| done.duration_since(heal_at))
            .min()
            .unwrap_or_default();
        let stats = workload.stop(Duration::from_secs(15)).await;
        let [invoked, ok, fail, info] = stats.totals();
        eprintln!(
            "unavailability: {invoked} writes invoked ({invoked_during} by the heal), ok {ok}, \
             fail {fail}, info {info}; none acknowledged during the {:?} cut; the first write \
             invoked after healing was acknowledged {resume_time:?} after it",
            heal_at.duration_since(cut_at)
        );
        assert!(
            info > 0,
            "writes were attempted and timed out during the cut"
        );

        cc.wait_converged(Duration::from_secs(30))
            .await
            .expect("the replicas converge");
        let finals = final_states(&cc).await.expect("final states");
        let verdict = check(&recorder.history(), &finals);
        eprintln!("{verdict}anomalies: {}", verdict.anomalies.len());
        assert!(verdict.anomalies.is_empty(), "{verdict}");
    })
    .await;
}
