//! `sim`: the deterministic simulator of a whole cluster (see `tests::sim`).
//!
//! ```text
//! sim --seed 42                 one run, told in full; exit 1 if it failed
//! sim --seed 42 --verbose       ... with every node's log on stderr
//! sim --seeds 1000 [--from 7]   many runs (on every core); a summary, and each failing seed
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tests::history::HistoryWriter;
use tests::sim::{self, Options, Outcome};

#[derive(Parser)]
#[command(about = "Deterministic simulation of a whole cluster, from a seed")]
struct Cli {
    /// Run this one seed and tell everything about it.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first of `--seeds`.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Seconds of virtual time each run's clients and faults last.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Threads for `--seeds` (default: every core).
    #[arg(long)]
    jobs: Option<usize>,
    /// With `--seed`: the nodes' logs on stderr.
    #[arg(long)]
    verbose: bool,
    /// With `--seed`: write the history here (JSON Lines).
    #[arg(long)]
    history: Option<PathBuf>,
    /// With `--seeds`: stop at the first failing seed.
    #[arg(long)]
    stop_on_failure: bool,
}

fn summary(o: &Outcome) -> String {
    format!(
        "seed {} digest {} {} nodes {} clients: {:.1} s simulated in {:.2} s ({:.0}x); {} ops ({} ok, {} fail, {} info), {} faults ({} crashes, {} mid-write), {} hostile frames, {}/{} membership changes",
        o.seed,
        o.digest,
        o.scenario.nodes,
        o.scenario.clients,
        o.simulated.as_secs_f64(),
        o.wall.as_secs_f64(),
        o.simulated.as_secs_f64() / o.wall.as_secs_f64().max(1e-9),
        o.stats.ops,
        o.stats.ok,
        o.stats.fail,
        o.stats.info,
        o.stats.faults,
        o.stats.crashes,
        o.stats.crash_points,
        o.stats.hostile,
        o.stats.membership_done,
        o.stats.membership_changes,
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let duration = Duration::from_secs(cli.seconds);
    if let Some(seed) = cli.seed {
        let mut options = Options::seed(seed);
        options.duration = duration;
        options.verbose = cli.verbose;
        let outcome = sim::run(&options);
        println!("{}", summary(&outcome));
        if let Some(path) = &cli.history {
            match HistoryWriter::create(path).and_then(|mut w| w.write_all(&outcome.history)) {
                Ok(()) => println!("history written to {}", path.display()),
                Err(e) => eprintln!("cannot write the history: {e}"),
            }
        }
        for failure in &outcome.failures {
            println!("FAILED: {failure}");
        }
        return if outcome.passed() {
            ExitCode::SUCCESS
        } else {
            println!(
                "reproduce: scripts/sim --seed {seed} --seconds {}",
                cli.seconds
            );
            ExitCode::FAILURE
        };
    }
    let count = cli.seeds.unwrap_or(100);
    let jobs = cli.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let started = Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop_on_failure = cli.stop_on_failure;
    let outcomes = sim::run_many(cli.from, count, jobs, duration, &|o| {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if !o.passed() {
            println!("FAILED {}", summary(o));
            for failure in &o.failures {
                println!("    {failure}");
            }
            println!(
                "    reproduce: scripts/sim --seed {} --seconds {}",
                o.seed,
                o.simulated.as_secs().min(duration.as_secs())
            );
            if stop_on_failure {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _ = std::io::stdout().flush();
    });
    let failed: Vec<u64> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.seed)
        .collect();
    let simulated: f64 = outcomes.iter().map(|o| o.simulated.as_secs_f64()).sum();
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{} seeds ({}..{}) on {jobs} threads: {} failed; {:.0} s simulated in {:.1} s wall ({:.0} simulated s per wall s overall, {:.0} per thread)",
        outcomes.len(),
        cli.from,
        cli.from + count,
        failed.len(),
        simulated,
        wall,
        simulated / wall.max(1e-9),
        sim::speed(&outcomes),
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failing seeds: {failed:?}");
        ExitCode::FAILURE
    }
}
