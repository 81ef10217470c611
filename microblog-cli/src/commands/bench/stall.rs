//! `bench stall`: do heavy reads stall the raft loop? Load N tuples, then for a while run
//! writers alongside clients that ask, as fast as they are answered, for digests of the whole
//! space and for scans the index cannot narrow; report acknowledged writes per second, the
//! longest window with none, and the leader changes seen.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftnode::client::Client;
use serde_json::json;
use tuplespace::{Field, Kind, Template, tuple};

use super::load::{self, Plan, Stop, Work};
use super::local::{LocalCluster, probe_options};
use super::{Context, loadavg, loadavg_text, ms};
use crate::connect;
use crate::error::{Error, Result};

/// What `bench stall` runs.
pub struct StallArgs {
    /// Tuples loaded before the measurement.
    pub tuples: u64,
    /// Concurrent writers during it.
    pub writers: u64,
    /// Clients asking for digests, and as many asking for scans.
    pub heavy: u64,
    /// How long it lasts.
    pub duration: Duration,
}

/// Acknowledged writes, by when.
#[derive(Default)]
struct Acks {
    times: Vec<Instant>,
}

/// Runs `bench stall`: against --endpoints when given (e.g. a cluster of another build), else
/// on a local cluster it starts.
pub async fn run(ctx: &mut Context, args: StallArgs) -> Result<()> {
    if !ctx.endpoints.is_empty() || ctx.cluster.is_some() {
        let endpoints = ctx.endpoints()?;
        let admin = ctx.admin_identity()?;
        return measure(ctx, endpoints, &args, admin).await;
    }
    eprintln!("bench stall: starting a 3-node local cluster (default raft settings)");
    let mut cluster = LocalCluster::start(3)?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let admin = cluster.admin()?;
    let result = measure(ctx, cluster.client_endpoints(), &args, admin).await;
    if result.is_err() {
        cluster.keep();
    }
    result
}

/// The load, the writers and the scans all sign as the admin (the digest is the admin's).
async fn measure(
    ctx: &mut Context,
    endpoints: Vec<String>,
    args: &StallArgs,
    admin: raftnode::identity::Identity,
) -> Result<()> {
    let options = connect::client_options(ctx.timeout, endpoints.len());
    let prefix = "stall";
    let plan = Arc::new(Plan {
        work: Work::Out { prefix },
        payload: load::payload_for(prefix, 64),
        text: String::new(),
        signers: Arc::new(vec![admin.clone()]),
        progress: None,
    });
    eprintln!("bench stall: loading {} tuples", args.tuples);
    let loaded = load::drive(
        &endpoints,
        &options,
        plan,
        32,
        Stop::Ops(args.tuples),
        Duration::ZERO,
        "load",
    )
    .await;
    if loaded.ops < args.tuples {
        return Err(Error::failed(format!(
            "the load wrote {} of {} tuples",
            loaded.ops, args.tuples
        )));
    }
    let before = loadavg();
    let start = Instant::now();
    let end = start + args.duration;
    let acks = Arc::new(Mutex::new(Acks::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.writers {
        let (endpoints, options, acks) = (endpoints.clone(), options.clone(), Arc::clone(&acks));
        let admin = admin.clone();
        tasks.spawn(async move {
            let mut client = Client::with_options(endpoints, options).with_identity(admin);
            let mut n = 0i64;
            while Instant::now() < end {
                n += 1;
                if client.out(&tuple!["stall-w", w as i64, n]).await.is_ok() {
                    acks.lock().map(|mut a| a.times.push(Instant::now())).ok();
                }
            }
            (0u64, Vec::new())
        });
    }
    // An unindexed template: a variable first field, so the whole arity is scanned.
    let scan = Template::new(vec![
        Field::Formal(Kind::Str),
        Field::Formal(Kind::Int),
        Field::Formal(Kind::Int),
        Field::Formal(Kind::Str),
    ]);
    for h in 0..args.heavy * 2 {
        let (endpoints, options, scan) = (endpoints.clone(), options.clone(), scan.clone());
        let admin = admin.clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            let mut latencies = Vec::new();
            let mut client = Client::with_options(endpoints.clone(), options.clone());
            while Instant::now() < end {
                let t = Instant::now();
                let ok = if h % 2 == 0 {
                    let endpoint = &endpoints[(done as usize + h as usize) % endpoints.len()];
                    Client::digest_of(endpoint, &options, &admin).await.is_ok()
                } else {
                    client.count(&scan).await.is_ok()
                };
                if ok {
                    done += 1;
                    latencies.push(t.elapsed());
                }
            }
            (h % 2 + 1, latencies)
        });
    }
    let leaders = watch_leaders(&endpoints, end).await;
    let mut digests = Vec::new();
    let mut scans = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((1, l)) => digests.extend(l),
            Ok((2, l)) => scans.extend(l),
            _ => {}
        }
    }
    let times = std::mem::take(&mut acks.lock().map_err(|_| Error::failed("poisoned"))?.times);
    report(ctx, args, &times, start, leaders, &digests, &scans, before)
}

/// Polls every node's status until `end`; returns how many times the leader changed.
async fn watch_leaders(endpoints: &[String], end: Instant) -> u64 {
    let probe = probe_options();
    let mut last: Option<(u64, u64)> = None;
    let mut changes = 0;
    while Instant::now() < end {
        for endpoint in endpoints {
            if let Ok(s) = Client::status_of(endpoint, &probe).await
                && s.role() == raftnode::proto::Role::Leader
            {
                let now = (s.id, s.term);
                if last.is_some_and(|l| l != now) {
                    changes += 1;
                }
                last = Some(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    changes
}

fn millis(d: Duration) -> f64 {
    ms(d.as_secs_f64() * 1000.0)
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |d| millis(*d))
}

#[allow(clippy::too_many_arguments)]
fn report(
    ctx: &mut Context,
    args: &StallArgs,
    times: &[Instant],
    start: Instant,
    leader_changes: u64,
    digests: &[Duration],
    scans: &[Duration],
    before: Option<[f64; 3]>,
) -> Result<()> {
    let secs = args.duration.as_secs().max(1) as usize;
    let mut per_second = vec![0u64; secs];
    let mut sorted: Vec<Instant> = times.to_vec();
    sorted.sort_unstable();
    for t in &sorted {
        let s = t.duration_since(start).as_secs() as usize;
        if s < secs {
            per_second[s] += 1;
        }
    }
    let mut gap = Duration::ZERO;
    let mut prev = start;
    for &t in &sorted {
        gap = gap.max(t.duration_since(prev));
        prev = t;
    }
    let mean = sorted.len() as f64 / args.duration.as_secs_f64();
    let min = per_second.iter().copied().min().unwrap_or(0);
    let zero_seconds = per_second.iter().filter(|&&n| n == 0).count();
    let (digest_p50, scan_p50) = (median(&mut digests.to_vec()), median(&mut scans.to_vec()));
    if ctx.out.json {
        return Ok(ctx.out.json_line(&json!({
            "bench": "stall",
            "tuples": args.tuples,
            "writers": args.writers,
            "duration_s": args.duration.as_secs_f64(),
            "writes": sorted.len(),
            "writes_per_sec_mean": mean,
            "writes_min_second": min,
            "seconds_with_no_write": zero_seconds,
            "longest_gap_ms": millis(gap),
            "leader_changes": leader_changes,
            "digests": digests.len(),
            "digest_p50_ms": digest_p50,
            "scans": scans.len(),
            "scan_p50_ms": scan_p50,
            "per_second": per_second,
            "load_before": before,
        }))?);
    }
    ctx.out.line(&format!(
        "bench stall: {} tuples resident, {} writers, {} digest and {} scan clients, {:?}",
        args.tuples, args.writers, args.heavy, args.heavy, args.duration
    ))?;
    ctx.out.line(&format!(
        "writes: {} acknowledged, {mean:.0}/s mean, slowest second {min}, seconds with none {zero_seconds}, longest gap {:.1} ms",
        sorted.len(),
        millis(gap)
    ))?;
    ctx.out.line(&format!(
        "heavy reads: {} digests (p50 {digest_p50:.1} ms), {} unindexed counts (p50 {scan_p50:.1} ms)",
        digests.len(),
        scans.len()
    ))?;
    ctx.out.line(&format!("leader changes: {leader_changes}"))?;
    ctx.out
        .line(&format!("writes per second: {per_second:?}"))?;
    ctx.out
        .line(&format!("load: {}", loadavg_text(before, loadavg())))?;
    Ok(())
}
