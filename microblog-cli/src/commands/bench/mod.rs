//! `microblog bench`: measure a cluster.
//!
//! - (no subcommand) throughput and latency: C concurrent clients, each its own
//!   [`raftnode::client::Client`] over every endpoint, doing `out`, `in`, `rd`, `rdp` or the
//!   microblog mix for a duration or an operation count, after a warmup; every latency goes into
//!   a log-bucketed [`histogram::Histogram`]. Against a running cluster, or a local one it starts
//!   (`--start-cluster`).
//! - `failover`: SIGKILL the leader under a sequential writer; time until the next acknowledged
//!   write; restart it and wait until it has caught up; repeat.
//! - `catchup`: load N tuples, then time a new empty node from `add` (learner) until it has
//!   caught up, and check its tuple count.
//! - `flood`: a well-behaved client's latencies alone and while one connection floods the
//!   leader with pipelined blocking `rd`s and `out`s.
//! - `stall`: load N tuples, then run writers beside clients asking for digests and unindexed
//!   scans; report writes per second, the longest window without one, and leader changes.
//!
//! Progress goes to stderr once a second; the result to stdout as text, or with `--json` as one
//! JSON object. Clusters the bench starts ([`local::LocalCluster`]) are killed by pid when it
//! ends, on an error, and on Ctrl-C or SIGTERM.

mod catchup;
mod failover;
mod flood;
mod histogram;
mod load;
mod local;
mod scale;
mod stall;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::Context;
use crate::blog::Blog;
use crate::cli::{BenchArgs, BenchCommand, BenchLoad, BenchOp};
use crate::connect;
use crate::duration;
use crate::error::{Error, Result};
use crate::model::MAX_POST_BYTES;
use raftnode::identity::Identity;

use histogram::Histogram;
use load::{Outcome, Plan, Stop, Work};
use local::LocalCluster;

/// `bench --help`'s examples.
pub const HELP: &str = "\
Examples:
  microblog bench --start-cluster --clients 1 --duration 10s --op out
  microblog bench --start-cluster --clients 64 --op rd --json        # one JSON object on stdout
  microblog bench --start-cluster --op in --ops 50000 --size 1024
  microblog bench --op mix --endpoints tcp://127.0.0.1:7201,tcp://127.0.0.1:7202
  microblog bench failover --trials 10
  microblog bench catchup --tuples 1000000

Without --start-cluster the load goes to the cluster named by --endpoints / --cluster /
MICROBLOG_ENDPOINTS (and leaves its tuples there). --start-cluster, failover and catchup start
raftnode processes (the one next to microblog, else on PATH) on loopback with a cluster file,
data dirs and logs in a temp dir, and kill them at the end, also on an error or Ctrl-C. The temp
dir is removed, unless the run failed or MICROBLOG_BENCH_KEEP=1 is set.

Progress goes to stderr every second; the summary to stdout: ops, ops/s, latency p50/p99/p99.9,
errors. With --json, one JSON object with at least ops_per_sec, p50_ms, p99_ms, p999_ms, errors,
op, clients, size and duration_s.";

/// `--warmup`: a duration, or 0 for none.
pub fn parse_warmup(text: &str) -> std::result::Result<Duration, String> {
    if text.trim().trim_end_matches(['s', 'm']).trim() == "0" {
        return Ok(Duration::ZERO);
    }
    duration::parse(text)
}

/// Runs `bench`.
pub async fn run(ctx: &mut Context, args: BenchArgs) -> Result<()> {
    let work = async {
        match args.command {
            None => throughput(ctx, args.load).await,
            Some(BenchCommand::Failover {
                trials,
                nodes,
                request_timeout,
            }) => failover::run(ctx, trials, nodes, request_timeout).await,
            Some(BenchCommand::Catchup {
                tuples,
                size,
                clients,
                max_lag,
                catch_up_timeout,
            }) => catchup::run(ctx, tuples, size, clients, max_lag, catch_up_timeout).await,
            Some(BenchCommand::Flood { duration }) => flood::run(ctx, duration).await,
            Some(BenchCommand::Stall {
                tuples,
                writers,
                heavy,
                duration,
            }) => {
                let args = stall::StallArgs {
                    tuples,
                    writers,
                    heavy,
                    duration,
                };
                stall::run(ctx, args).await
            }
        }
    };
    tokio::select! {
        result = work => result,
        what = interrupted() => Err(Error::failed(format!(
            "bench interrupted ({what}); every node it started was stopped"
        ))),
    }
}

/// Resolves on Ctrl-C (or SIGTERM); never if the handlers cannot be installed.
async fn interrupted() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = async {
            match signal(SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = ctrl_c => "Ctrl-C",
            () = term => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c.await;
        "Ctrl-C"
    }
}

/// The 1, 5 and 15 minute load averages (Linux), to put beside every figure.
pub(crate) fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn loadavg_text(before: Option<[f64; 3]>, after: Option<[f64; 3]>) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!(
            "{:.2} {:.2} {:.2} before, {:.2} {:.2} {:.2} after (1/5/15 min)",
            b[0], b[1], b[2], a[0], a[1], a[2]
        ),
        _ => "unknown".into(),
    }
}

/// Milliseconds, rounded to microseconds for JSON.
fn ms(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A number with thousands separators.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn latency_json(h: &Histogram) -> Json {
    json!({
        "ops": h.count(),
        "p50_ms": ms(h.quantile_ms(0.5)),
        "p90_ms": ms(h.quantile_ms(0.9)),
        "p99_ms": ms(h.quantile_ms(0.99)),
        "p999_ms": ms(h.quantile_ms(0.999)),
        "max_ms": ms(h.max_ms()),
        "mean_ms": ms(h.mean_ms()),
    })
}

fn latency_text(h: &Histogram) -> String {
    format!(
        "p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  mean {:.3} ms",
        h.quantile_ms(0.5),
        h.quantile_ms(0.99),
        h.quantile_ms(0.999),
        h.max_ms(),
        h.mean_ms()
    )
}

fn op_name(op: BenchOp) -> &'static str {
    match op {
        BenchOp::Out => "out",
        BenchOp::In => "in",
        BenchOp::Rd => "rd",
        BenchOp::Rdp => "rdp",
        BenchOp::Mix => "mix",
    }
}

/// The throughput and latency run.
async fn throughput(ctx: &mut Context, load: BenchLoad) -> Result<()> {
    if load.op == BenchOp::Mix && load.size as usize > MAX_POST_BYTES {
        return Err(Error::usage(format!(
            "--size {} is over a post's limit of {MAX_POST_BYTES} bytes (mix posts --size bytes \
             of text)",
            load.size
        )));
    }
    if load.start_cluster && (!ctx.endpoints.is_empty() || ctx.cluster.is_some()) {
        return Err(Error::usage(
            "--start-cluster starts its own cluster: it takes no --endpoints or --cluster",
        )
        .hint("drop --start-cluster to load a running cluster"));
    }
    if !load.start_cluster {
        let endpoints = ctx.endpoints()?;
        let admin = if ctx.admin || load.no_auth {
            Some(ctx.admin_identity()?)
        } else {
            None
        };
        return throughput_on(ctx, &load, &endpoints, (None, admin)).await;
    }
    eprintln!("bench: starting a {}-node local cluster", load.nodes);
    let mut cluster = LocalCluster::start(load.nodes)?;
    eprintln!(
        "bench: cluster files and logs in {}",
        cluster.dir().display()
    );
    let result = async {
        cluster.wait_ready(Duration::from_secs(30)).await?;
        let endpoints = cluster.client_endpoints();
        let admin = cluster.admin()?;
        throughput_on(ctx, &load, &endpoints, (Some(load.nodes), Some(admin))).await
    }
    .await;
    if result.is_err() {
        cluster.keep();
    }
    result
}

/// Writes `n` tuples `(prefix, client, seq, payload)` (or for a duration) with `clients`
/// clients; the ids written.
async fn preload(
    endpoints: &[String],
    options: &raftnode::client::ClientOptions,
    signers: &Signers,
    prefix: &'static str,
    size: usize,
    clients: u64,
    stop: Stop,
) -> Result<Outcome> {
    let plan = Arc::new(Plan {
        work: Work::Out { prefix },
        payload: load::payload_for(prefix, size),
        text: String::new(),
        signers: signers.clone(),
        progress: None,
    });
    let what = match stop {
        Stop::Ops(n) => format!("{n} tuples"),
        Stop::For(d) => format!("tuples for {}", duration::show(d)),
    };
    eprintln!("bench: preloading {what} ({prefix:?}, {size} bytes)");
    let outcome = load::drive(
        endpoints,
        options,
        plan,
        clients,
        stop,
        Duration::ZERO,
        "preload",
    )
    .await;
    if outcome.ops == 0 {
        return Err(Error::failed(format!(
            "the preload wrote nothing: {}",
            outcome.first_errors.join("; ")
        )));
    }
    eprintln!(
        "bench: preloaded {} tuples in {:.1} s ({:.0}/s, {} errors)",
        outcome.ops,
        outcome.measured.as_secs_f64(),
        outcome.rate(),
        outcome.errors
    );
    Ok(outcome)
}

/// The mix's users: each posts once (which registers them and the topic), then follows the
/// next four.
async fn mix_users(
    endpoints: &[String],
    options: &raftnode::client::ClientOptions,
    signers: &Signers,
    clients: u64,
) -> Result<Vec<String>> {
    let users: Vec<String> = match signers.is_empty() {
        true => (0..clients.clamp(2, 256))
            .map(|i| format!("bench{i}"))
            .collect(),
        false => signers.iter().map(|s| s.user().to_string()).collect(),
    };
    eprintln!(
        "bench: registering {} users, each following up to 4 others",
        users.len()
    );
    for phase in 0..2 {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, me) in users.iter().enumerate() {
            let mut client =
                raftnode::client::Client::with_options(endpoints.to_vec(), options.clone());
            if let Some(signer) = signers.get(i) {
                client.set_identity(Some(signer.clone()));
            }
            let mut blog = Blog::new(client);
            let me = me.clone();
            let others: Vec<String> = (1..=4.min(users.len() - 1))
                .map(|k| users[(i + k) % users.len()].clone())
                .collect();
            tasks.spawn(async move {
                if phase == 0 {
                    let text = format!("hello from {me}");
                    blog.post(&me, &text, Some("bench"), None, 0).await?;
                } else {
                    for other in others {
                        blog.follow(&me, &other).await?;
                    }
                }
                Ok::<(), Error>(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| Error::failed(format!("a setup task failed: {e}")))??;
        }
    }
    Ok(users)
}

async fn throughput_on(
    ctx: &mut Context,
    load: &BenchLoad,
    endpoints: &[String],
    (local_nodes, admin): (Option<u64>, Option<Identity>),
) -> Result<()> {
    let options = connect::client_options(ctx.timeout, endpoints.len());
    let measure = load.duration.unwrap_or(Duration::from_secs(10));
    let stop = match load.ops {
        Some(n) => Stop::Ops(n),
        None => Stop::For(measure),
    };
    let size = load.size as usize;
    let clients = load.clients;
    let signers = bench_signers(load, endpoints, &options, admin).await?;
    let (work, prefix) = prepare_work(load, endpoints, &options, &signers, measure).await?;
    let plan = Arc::new(Plan {
        work,
        payload: load::payload_for(prefix, size),
        text: "m".repeat(size),
        signers,
        progress: None,
    });
    let tuple_bytes = match load.op {
        BenchOp::Mix => size,
        _ => load::encoded_size(prefix, &plan.payload),
    };
    let run = Run {
        name: op_name(load.op),
        tuple_bytes,
        where_: match local_nodes {
            Some(n) => format!("a {n}-node local cluster"),
            None => endpoints.join(","),
        },
        shape: if load.op == BenchOp::Mix {
            "posts"
        } else {
            "tuples"
        },
    };
    eprintln!(
        "bench: {} with {clients} clients, {tuple_bytes}-byte {}, against {}",
        run.name, run.shape, run.where_
    );
    let before = loadavg();
    let outcome = load::drive(
        endpoints,
        &options,
        plan,
        clients,
        stop,
        load.warmup,
        run.name,
    )
    .await;
    let after = loadavg();
    for e in &outcome.first_errors {
        eprintln!("bench: error: {e}");
    }
    if outcome.exhausted {
        eprintln!(
            "bench: the preloaded tuples ran out after {} measured ops (a client's `in` waited \
             {} for one); give --preload N for more",
            outcome.ops,
            duration::show(load::BLOCK)
        );
    }
    let loadavg = (before, after);
    if ctx.out.json {
        let j = throughput_json(load, &run, &outcome, endpoints, local_nodes, loadavg);
        ctx.out.json_line(&j)?;
    } else {
        print_throughput(ctx, load, &run, &outcome, local_nodes.is_some(), loadavg)?;
    }
    if outcome.ops == 0 {
        return Err(Error::failed(format!(
            "no operation succeeded: {}",
            outcome.first_errors.join("; ")
        )));
    }
    Ok(())
}

/// Who a bench's clients sign as (see [`Plan::signers`]).
pub type Signers = Arc<Vec<Identity>>;

/// The bench's users: with authentication (the default), one registered user per client (up to
/// 256, `benchXXXX-0`, `benchXXXX-1`, ... with XXXX random per run; client `i` signs as user `i % n`), each with a new key. With
/// `--no-auth`, the admin sets the policy to allow anonymous writes and the clients sign nothing.
async fn bench_signers(
    load: &BenchLoad,
    endpoints: &[String],
    options: &raftnode::client::ClientOptions,
    admin: Option<Identity>,
) -> Result<Signers> {
    if load.no_auth {
        let admin = admin.ok_or_else(|| {
            Error::not_allowed("--no-auth changes the cluster's policy: it needs --admin")
        })?;
        let mut client =
            raftnode::client::Client::with_options(endpoints.to_vec(), options.clone())
                .with_identity(admin);
        let mut policy = client.policy().await?;
        policy.anonymous_writes = true;
        client.set_policy(policy).await?;
        eprintln!("bench: authentication off (the policy now allows anonymous writes)");
        return Ok(Arc::new(Vec::new()));
    }
    let n = load.clients.clamp(2, 256) as usize;
    // Names of this run's own (a new key cannot take over a name an earlier run registered).
    let run = format!("bench{:04x}-", rand::random::<u16>());
    let signers: Vec<Identity> = (0..n)
        .map(|i| Identity::generate(&format!("{run}{i}")))
        .collect();
    eprintln!(
        "bench: registering {n} users {run}0..{run}{}, one key each (authentication on)",
        n - 1
    );
    let mut tasks = tokio::task::JoinSet::new();
    for signer in &signers {
        let mut client =
            raftnode::client::Client::with_options(endpoints.to_vec(), options.clone())
                .with_identity(signer.clone());
        tasks.spawn(async move { client.register().await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| Error::failed(format!("a registration task failed: {e}")))??;
    }
    Ok(Arc::new(signers))
}

/// What a throughput run is called in its report.
struct Run {
    name: &'static str,
    tuple_bytes: usize,
    where_: String,
    shape: &'static str,
}

/// The work each client does for `load.op`, after whatever preload it needs; and the prefix of
/// the tuples it works on.
async fn prepare_work(
    load: &BenchLoad,
    endpoints: &[String],
    options: &raftnode::client::ClientOptions,
    signers: &Signers,
    measure: Duration,
) -> Result<(Work, &'static str)> {
    let (size, clients) = (load.size as usize, load.clients);
    Ok(match load.op {
        BenchOp::Out => (Work::Out { prefix: "bench" }, "bench"),
        BenchOp::In => {
            let prefix = "bench-in";
            preload_for_in(load, endpoints, options, signers, prefix, measure).await?;
            let template = load::template_for(prefix);
            (Work::In { template }, prefix)
        }
        BenchOp::Rd | BenchOp::Rdp => {
            let prefix = "bench-rd";
            let n = load.preload.unwrap_or(10_000).max(1);
            let loaded = preload(
                endpoints,
                options,
                signers,
                prefix,
                size,
                clients,
                Stop::Ops(n),
            )
            .await?;
            let (first, last) = loaded
                .ids
                .ok_or_else(|| Error::failed("the preload reported no tuple ids"))?;
            let work = Work::Rd {
                template: load::template_for(prefix),
                first,
                last,
                blocking: load.op == BenchOp::Rd,
            };
            (work, prefix)
        }
        BenchOp::Mix => {
            let users = mix_users(endpoints, options, signers, clients).await?;
            preload_posts(load, endpoints, options, signers, &users).await?;
            (Work::Mix { users }, "post")
        }
    })
}

/// Tuples for `bench in` to take: `--preload N`, or enough for the run (writing takes about as
/// long as taking, so write for longer than the run lasts, plus the count asked for, if any).
async fn preload_for_in(
    load: &BenchLoad,
    endpoints: &[String],
    options: &raftnode::client::ClientOptions,
    signers: &Signers,
    prefix: &'static str,
    measure: Duration,
) -> Result<()> {
    let (size, clients) = (load.size as usize, load.clients);
    if let Some(n) = load.preload.or(load.ops) {
        let stop = Stop::Ops(n);
        preload(endpoints, options, signers, prefix, size, clients, stop).await?;
    }
    if load.preload.is_some() {
        return Ok(());
    }
    let span = if load.ops.is_some() {
        load.warmup
    } else {
        load.warmup + measure
    };
    if !span.is_zero() {
        let stop = Stop::For(span.mul_f64(1.25));
        preload(endpoints, options, signers, prefix, size, clients, stop).await?;
    }
    Ok(())
}

/// Posts for the mix to read (`--preload N`, default 2,000).
async fn preload_posts(
    load: &BenchLoad,
    endpoints: &[String],
    options: &raftnode::client::ClientOptions,
    signers: &Signers,
    users: &[String],
) -> Result<()> {
    let n = load.preload.unwrap_or(2_000);
    if n == 0 {
        return Ok(());
    }
    let plan = Arc::new(Plan {
        work: Work::Posts {
            users: users.to_vec(),
        },
        payload: String::new(),
        text: "p".repeat(load.size as usize),
        signers: signers.clone(),
        progress: None,
    });
    eprintln!("bench: preloading {n} posts");
    let posted = load::drive(
        endpoints,
        options,
        plan,
        load.clients,
        Stop::Ops(n),
        Duration::ZERO,
        "preload",
    )
    .await;
    if posted.ops == 0 {
        return Err(Error::failed(format!(
            "the preload posted nothing: {}",
            posted.first_errors.join("; ")
        )));
    }
    Ok(())
}

/// The throughput run as one JSON object.
fn throughput_json(
    load: &BenchLoad,
    run: &Run,
    outcome: &load::Outcome,
    endpoints: &[String],
    local_nodes: Option<u64>,
    (before, after): (Option<[f64; 3]>, Option<[f64; 3]>),
) -> Json {
    let mut j = latency_json(&outcome.all);
    let extra = json!({
        "bench": "throughput",
        "op": run.name,
        "clients": load.clients,
        "size": load.size,
        "tuple_bytes": run.tuple_bytes,
        "duration_s": ms(outcome.measured.as_secs_f64()),
        "warmup_s": load.warmup.as_secs_f64(),
        "ops_per_sec": (outcome.rate() * 10.0).round() / 10.0,
        "errors": outcome.errors,
        "warmup_errors": outcome.warm_errors,
        "exhausted": outcome.exhausted,
        "nodes": local_nodes,
        "started_cluster": local_nodes.is_some(),
        "endpoints": endpoints,
        "loadavg_before": before,
        "loadavg_after": after,
        "first_errors": outcome.first_errors,
    });
    if let (Some(map), Json::Object(more)) = (j.as_object_mut(), extra) {
        map.extend(more);
        if outcome.kinds.len() > 1 {
            let kinds: serde_json::Map<String, Json> = outcome
                .kinds
                .iter()
                .map(|(k, h)| (k.to_string(), latency_json(h)))
                .collect();
            map.insert("kinds".into(), Json::Object(kinds));
        }
    }
    j
}

/// The throughput run for people.
fn print_throughput(
    ctx: &mut Context,
    load: &BenchLoad,
    run: &Run,
    outcome: &load::Outcome,
    local: bool,
    (before, after): (Option<[f64; 3]>, Option<[f64; 3]>),
) -> Result<()> {
    let lines = [
        format!(
            "bench {}: {} clients, {}-byte {}, {}{}",
            run.name,
            load.clients,
            run.tuple_bytes,
            run.shape,
            run.where_,
            if local { " (fsync on)" } else { "" }
        ),
        format!(
            "  measured  {:.2} s after a {} warmup",
            outcome.measured.as_secs_f64(),
            duration::show(load.warmup)
        ),
        format!(
            "  ops       {} ({:.0} ops/s)",
            thousands(outcome.ops),
            outcome.rate()
        ),
        format!("  latency   {}", latency_text(&outcome.all)),
    ];
    for line in lines {
        ctx.out.line(&line)?;
    }
    if outcome.kinds.len() > 1 {
        for (kind, h) in &outcome.kinds {
            ctx.out.line(&format!(
                "    {kind:<9} {:>8} ops  {}",
                thousands(h.count()),
                latency_text(h)
            ))?;
        }
    }
    ctx.out.line(&format!(
        "  errors    {} (and {} during the warmup)",
        outcome.errors, outcome.warm_errors
    ))?;
    ctx.out
        .line(&format!("  load avg  {}", loadavg_text(before, after)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_zero_and_thousands() {
        assert_eq!(parse_warmup("0"), Ok(Duration::ZERO));
        assert_eq!(parse_warmup("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_warmup("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_warmup("soon").is_err());
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }

    #[test]
    fn the_command_line_parses_bench() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "microblog",
            "bench",
            "--start-cluster",
            "--clients",
            "4",
            "--duration",
            "2s",
            "--op",
            "rdp",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        match cli.command {
            Command::Bench(BenchArgs {
                command: None,
                load,
            }) => {
                assert!(load.start_cluster);
                assert_eq!(
                    (load.clients, load.nodes, load.op, load.size),
                    (4, 3, BenchOp::Rdp, 256)
                );
                assert_eq!(load.duration, Some(Duration::from_secs(2)));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["microblog", "bench", "failover", "--trials", "1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Bench(BenchArgs {
                command: Some(BenchCommand::Failover {
                    trials: 1,
                    nodes: 3,
                    ..
                }),
                ..
            })
        ));
        for bad in [
            vec!["microblog", "bench", "--duration", "1s", "--ops", "5"],
            vec!["microblog", "bench", "--nodes", "5"],
            vec!["microblog", "bench", "--op", "take"],
            vec!["microblog", "bench", "failover", "--nodes", "2"],
            vec!["microblog", "bench", "--clients", "0"],
        ] {
            let e = Cli::try_parse_from(&bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
