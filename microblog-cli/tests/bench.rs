//! `microblog bench` smoke test: a short throughput run and one failover trial, each against a
//! cluster the program starts itself on loopback (the `raftnode` next to `microblog`). Bounded in
//! time; the program kills every node it started and removes its temp dir, which is checked.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// One cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A run's hard limit.
const LIMIT: Duration = Duration::from_secs(120);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn drain(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = from.read_to_string(&mut text);
        text
    })
}

/// Runs `microblog ARGS` to its end, or stops it (SIGTERM, so it stops its nodes; SIGKILL
/// after 10 s) once it has run for [`LIMIT`].
fn microblog(args: &[&str]) -> Run {
    // Fail early and clearly when `raftnode` is missing (microblog looks for it the same way).
    if let Err(e) = raftnode::devcluster::raftnode_bin() {
        panic!("{e}");
    }
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_microblog"))
        .args(args)
        .env_remove("MICROBLOG_ENDPOINTS")
        .env_remove("MICROBLOG_BENCH_KEEP")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run microblog");
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let started = Instant::now();
    let mut signalled: Option<Instant> = None;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        match signalled {
            None if started.elapsed() > LIMIT => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                signalled = Some(Instant::now());
            }
            Some(t) if t.elapsed() > Duration::from_secs(10) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(
        signalled.is_none(),
        "microblog {args:?} ran over {LIMIT:?}; stderr:\n{}",
        run.stderr
    );
    run
}

/// The one JSON object on stdout, after checking the run succeeded and cleaned up.
fn result(run: &Run) -> Json {
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let dir = run
        .stderr
        .lines()
        .find_map(|l| {
            l.split_once("cluster files and logs in ")
                .map(|(_, d)| d.trim())
        })
        .unwrap_or_else(|| panic!("no temp dir named on stderr:\n{}", run.stderr));
    assert!(
        !Path::new(dir).exists(),
        "{dir} is still there after a successful run"
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object: {}", run.stdout);
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {}", lines[0]))
}

#[test]
fn a_short_out_run_reports_throughput_and_no_errors() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = microblog(&[
        "bench",
        "--start-cluster",
        "--clients",
        "4",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--op",
        "out",
        "--json",
    ]);
    let j = result(&run);
    assert!(j["ops_per_sec"].as_f64().unwrap() > 0.0, "{j}");
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(
        (j["op"].as_str(), j["clients"].as_u64()),
        (Some("out"), Some(4))
    );
    for key in ["p50_ms", "p99_ms", "p999_ms", "duration_s", "size"] {
        assert!(j[key].as_f64().is_some(), "{key} in {j}");
    }
    assert!(j["p50_ms"].as_f64() <= j["p999_ms"].as_f64(), "{j}");
    assert!(
        run.stderr.contains("ops/s"),
        "no progress line:\n{}",
        run.stderr
    );
}

#[test]
fn one_failover_trial() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = microblog(&["bench", "failover", "--trials", "1", "--json"]);
    let j = result(&run);
    let trials = j["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 1, "{j}");
    assert!(j["median_ms"].as_f64().unwrap() > 0.0, "{j}");
    assert_ne!(trials[0]["killed"], trials[0]["new_leader"], "{j}");
}
