//! `chaos`: a chaos run against a local cluster of real `raftnode` processes.
//!
//! ```text
//! chaos --duration 10m --nodes 5 --seed 7
//! ```
//!
//! Prints the nemesis's steps while it runs (with `--verbose`) and the report at the end; the
//! last line is `anomalies: N`, and the exit code is 0 only when N is 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use raftnode::devcluster::raftnode_bin;
use tests::chaos::nemesis::{Fault, parse_faults};
use tests::chaos::{ChaosOptions, run};

/// Run a replicated tuplespace cluster under a recorded workload while a nemesis kills, freezes,
/// partitions and replaces nodes; then heal, check the history and compare the replicas.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// How long to inject faults: `90s`, `10m`, `1h`, or plain seconds.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Nodes in the cluster (3 or more).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(3..=9))]
    nodes: u64,
    /// Seed of the nemesis and the clients (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Faults to pick from, comma-separated: kill, kill-leader, freeze, restart, isolate-leader,
    /// split, remove-readd, replace, clock-step (needs libfaketime: Debian's faketime), or the
    /// groups crash, partition, membership, clock, all.
    #[arg(long, default_value = "all", value_parser = fault_list)]
    faults: FaultList,
    /// Where to write the history (JSON Lines). Default: history.jsonl in a new directory
    /// under the system's temp dir, printed at the start and in the report.
    #[arg(long)]
    history: Option<PathBuf>,
    /// The raftnode binary. Default: `RAFTNODE_BIN`, else the `raftnode` beside this binary,
    /// else the one on PATH.
    #[arg(long)]
    raftnode: Option<PathBuf>,
    /// Keep the cluster's directory (node logs, data dirs, cluster files) after the run; it is
    /// kept anyway when anomalies are found.
    #[arg(long)]
    keep: bool,
    /// Print each fault as it is injected.
    #[arg(long, short)]
    verbose: bool,
}

/// The `--faults` list (a newtype: clap reads a `Vec` field as a repeated option).
#[derive(Clone, Debug)]
struct FaultList(Vec<Fault>);

fn fault_list(text: &str) -> Result<FaultList, String> {
    parse_faults(text).map(FaultList)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 10m or 1h"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(n * scale))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() % 1_000_000)
            .unwrap_or(1)
    });
    let raftnode = match args.raftnode.clone() {
        Some(bin) if bin.is_file() => bin,
        Some(bin) => {
            eprintln!(
                "chaos: --raftnode {} is no file; build it with `cargo build --release -p \
                 raftnode`",
                bin.display()
            );
            return ExitCode::from(2);
        }
        None => match raftnode_bin() {
            Ok(bin) => bin,
            Err(e) => {
                eprintln!("chaos: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let history = match args.history.clone() {
        Some(path) => path,
        None => {
            let stamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!("chaos-{stamp}-seed{seed}"));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("chaos: cannot create {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            dir.join("history.jsonl")
        }
    };
    let mut options = ChaosOptions::new(args.nodes as usize, args.duration, seed);
    options.workload.clients = args.clients;
    options.nemesis.faults = args.faults.0.clone();
    options.raftnode = Some(raftnode);
    options.history = Some(history);
    options.keep = args.keep;
    options.verbose = args.verbose;
    eprintln!("chaos: seed {seed}");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(report) => {
            println!("{report}");
            if report.anomalies() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("chaos: the run failed: {e:#}");
            ExitCode::from(3)
        }
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
