//! `bench catchup`: load N tuples into a 3-node cluster (default raft settings) with many
//! clients, wait for a snapshot, start a new empty node (`raftnode run --join`), and time it from
//! `add` (as a learner) until it has caught up (`wait_caught_up`), then until it has applied
//! everything; check its tuple count against the leader's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftnode::client::{Client, ClientOptions, MemberChange};
use serde_json::json;

use super::load::{self, Plan, Stop, Work};
use super::local::{LocalCluster, probe_options};
use super::{Context, loadavg, loadavg_text, ms};
use crate::connect;
use crate::error::{Error, Result};

/// The new node's id.
const NEW_ID: u64 = 4;

/// Runs `bench catchup`.
pub async fn run(
    ctx: &mut Context,
    tuples: u64,
    size: u64,
    clients: u64,
    max_lag: u64,
    catch_up_timeout: Duration,
) -> Result<()> {
    eprintln!("bench catchup: starting a 3-node local cluster (default raft settings)");
    let mut cluster = LocalCluster::start(3)?;
    eprintln!(
        "bench catchup: cluster files and logs in {}",
        cluster.dir().display()
    );
    let result = catchup_on(
        ctx,
        &mut cluster,
        tuples,
        size as usize,
        clients,
        max_lag,
        catch_up_timeout,
    )
    .await;
    if result.is_err() {
        cluster.keep();
    }
    result
}

/// What `bench catchup` measured.
struct Measured {
    tuple_bytes: usize,
    loaded: load::Outcome,
    load_secs: f64,
    /// The leader after the load (and its snapshot, if one came).
    leader: raftnode::proto::Status,
    compacted: bool,
    added: Duration,
    caught_up: Duration,
    applied: Duration,
    /// The new node once it applied everything.
    status: raftnode::proto::Status,
}

async fn catchup_on(
    ctx: &mut Context,
    cluster: &mut LocalCluster,
    tuples: u64,
    size: usize,
    clients: u64,
    max_lag: u64,
    catch_up_timeout: Duration,
) -> Result<()> {
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let endpoints = cluster.client_endpoints();
    let options = connect::client_options(ctx.timeout, endpoints.len());
    let before = loadavg();
    let admin_id = cluster.admin()?;
    let (tuple_bytes, loaded) =
        load_tuples(&endpoints, &options, &admin_id, (tuples, size), clients).await?;
    let load_secs = loaded.measured.as_secs_f64();
    let after_load = loadavg();
    let mut admin = Client::with_options(
        endpoints.clone(),
        ClientOptions {
            retry_window: Duration::from_secs(60),
            ..options.clone()
        },
    )
    .with_identity(admin_id);
    let (leader, compacted) = wait_for_snapshot(&mut admin).await?;
    let spec = start_new_node(cluster).await?;
    let timed = add_and_catch_up(&mut admin, &spec, &leader, max_lag, catch_up_timeout).await?;
    let after = loadavg();
    let m = Measured {
        tuple_bytes,
        loaded,
        load_secs,
        leader,
        compacted,
        added: timed.0,
        caught_up: timed.1,
        applied: timed.2,
        status: timed.3,
    };
    let expected = m.leader.tuples;
    let ok = m.status.tuples == expected;
    if ctx.out.json {
        ctx.out.json_line(&json!({
            "bench": "catchup",
            "tuples": tuples,
            "size": size,
            "tuple_bytes": m.tuple_bytes,
            "clients": clients,
            "load_secs": ms(m.load_secs),
            "load_ops_per_sec": (m.loaded.rate() * 10.0).round() / 10.0,
            "load_errors": m.loaded.errors,
            "load_p50_ms": ms(m.loaded.all.quantile_ms(0.5)),
            "load_p99_ms": ms(m.loaded.all.quantile_ms(0.99)),
            "snapshot": m.compacted,
            "leader_first_index": m.leader.first_index,
            "leader_commit": m.leader.commit,
            "add_secs": ms(m.added.as_secs_f64()),
            "catchup_secs": ms(m.caught_up.as_secs_f64()),
            "applied_secs": ms(m.applied.as_secs_f64()),
            "max_lag": max_lag,
            "expected_tuples": expected,
            "new_node_tuples": m.status.tuples,
            "new_node_applied": m.status.applied,
            "tuples_match": ok,
            "loadavg_before": before,
            "loadavg_after_load": after_load,
            "loadavg_after": after,
        }))?;
    } else {
        for line in report_lines(&m, clients, max_lag) {
            ctx.out.line(&line)?;
        }
        ctx.out
            .line(&format!("  load avg   {}", loadavg_text(before, after)))?;
    }
    if !ok {
        return Err(Error::failed(format!(
            "the new node holds {} tuples, the leader {expected}",
            m.status.tuples
        )));
    }
    Ok(())
}

/// Loads `tuples` tuples of the bench's shape with `clients` clients; the encoded tuple size and
/// the load's outcome.
async fn load_tuples(
    endpoints: &[String],
    options: &ClientOptions,
    admin: &raftnode::identity::Identity,
    (tuples, size): (u64, usize),
    clients: u64,
) -> Result<(usize, load::Outcome)> {
    let prefix = "catchup";
    let plan = Arc::new(Plan {
        work: Work::Out { prefix },
        payload: load::payload_for(prefix, size),
        text: String::new(),
        signers: Arc::new(vec![admin.clone()]),
    });
    let tuple_bytes = load::encoded_size(prefix, &plan.payload);
    eprintln!(
        "bench catchup: loading {tuples} tuples of {tuple_bytes} bytes with {clients} clients"
    );
    let loaded = load::drive(
        endpoints,
        options,
        plan,
        clients,
        Stop::Ops(tuples),
        Duration::ZERO,
        "load",
    )
    .await;
    for e in &loaded.first_errors {
        eprintln!("bench catchup: load error: {e}");
    }
    eprintln!(
        "bench catchup: loaded {} tuples in {:.1} s ({:.0}/s, {} errors; p50 {:.2} ms, \
         p99 {:.2} ms)",
        loaded.ops,
        loaded.measured.as_secs_f64(),
        loaded.rate(),
        loaded.errors,
        loaded.all.quantile_ms(0.5),
        loaded.all.quantile_ms(0.99)
    );
    if loaded.ops == 0 {
        return Err(Error::failed("the load wrote nothing"));
    }
    Ok((tuple_bytes, loaded))
}

/// Waits up to 30 s for a snapshot (the leader's log starts after index 1 once it has
/// compacted); the leader's status and whether it compacted.
async fn wait_for_snapshot(admin: &mut Client) -> Result<(raftnode::proto::Status, bool)> {
    let snapshot_wait = Instant::now();
    let mut leader = admin.leader_status().await?;
    while leader.first_index <= 1 && snapshot_wait.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        leader = admin.leader_status().await?;
    }
    let compacted = leader.first_index > 1;
    eprintln!(
        "bench catchup: leader {} holds {} tuples, commit {}, log from index {}{}",
        leader.id,
        leader.tuples,
        leader.commit,
        leader.first_index,
        if compacted {
            " (snapshotted and compacted)"
        } else {
            " (no snapshot yet)"
        }
    );
    Ok((leader, compacted))
}

/// Starts the new, empty node and waits (up to 30 s) until it answers.
async fn start_new_node(cluster: &mut LocalCluster) -> Result<raftnode::config::NodeConfig> {
    let spec = cluster.spawn_joining(NEW_ID)?;
    let up_by = Instant::now() + Duration::from_secs(30);
    while Client::status_of(&spec.client, &probe_options())
        .await
        .is_err()
    {
        cluster.check_alive()?;
        if Instant::now() > up_by {
            return Err(Error::failed(format!(
                "the new node did not answer at {} within 30 s:\n{}",
                spec.client,
                cluster.log_tail(NEW_ID, 15)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "bench catchup: node {NEW_ID} is up (empty, waiting to be added); adding it as a learner"
    );
    Ok(spec)
}

/// Adds the new node as a learner and times it: added, caught up (replicated within `max_lag`
/// of commit), applied every tuple the leader holds; and its final status.
async fn add_and_catch_up(
    admin: &mut Client,
    spec: &raftnode::config::NodeConfig,
    leader: &raftnode::proto::Status,
    max_lag: u64,
    catch_up_timeout: Duration,
) -> Result<(Duration, Duration, Duration, raftnode::proto::Status)> {
    let start = Instant::now();
    admin
        .change_membership(&[MemberChange::AddLearner {
            id: NEW_ID,
            raft: spec.raft.clone(),
            client: spec.client.clone(),
        }])
        .await?;
    let added = start.elapsed();
    tokio::select! {
        caught = admin.wait_caught_up(NEW_ID, catch_up_timeout, max_lag) => caught?,
        () = watch_progress(&spec.client, start, leader.commit) => {}
    }
    let caught_up = start.elapsed();
    let target = admin.leader_status().await?;
    let expected = leader.tuples;
    let applied_by = Instant::now() + catch_up_timeout;
    let status = loop {
        let s = Client::status_of(&spec.client, &probe_options()).await;
        if let Ok(s) = &s
            && s.applied >= target.commit.saturating_sub(max_lag)
            && s.tuples >= expected
        {
            break s.clone();
        }
        if Instant::now() > applied_by {
            return Err(Error::failed(format!(
                "node {NEW_ID} was caught up but did not apply {expected} tuples within {:?} \
                 (last status: {:?})",
                catch_up_timeout,
                s.map(|s| (s.applied, s.tuples))
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok((added, caught_up, start.elapsed(), status))
}

/// Prints the new node's progress every second (never returns).
async fn watch_progress(client: &str, start: Instant, leader_commit: u64) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tick.tick().await;
        match Client::status_of(client, &probe_options()).await {
            Ok(s) => eprintln!(
                "catchup: {:>5.1}s  node {NEW_ID}: applied {} tuples {} (leader commit \
                 {leader_commit})",
                start.elapsed().as_secs_f64(),
                s.applied,
                s.tuples,
            ),
            Err(_) => eprintln!(
                "catchup: {:>5.1}s  node {NEW_ID}: busy (no answer)",
                start.elapsed().as_secs_f64()
            ),
        }
    }
}

/// The human-readable report.
fn report_lines(m: &Measured, clients: u64, max_lag: u64) -> Vec<String> {
    let expected = m.leader.tuples;
    vec![
        format!(
            "catchup: {} tuples of {} bytes loaded by {clients} clients in {:.1} s ({:.0} \
             tuples/s, {} errors)",
            m.loaded.ops,
            m.tuple_bytes,
            m.load_secs,
            m.loaded.rate(),
            m.loaded.errors
        ),
        format!(
            "  snapshot   {}",
            if m.compacted {
                format!("yes (the leader's log starts at {})", m.leader.first_index)
            } else {
                "none yet (the new node replays the log)".into()
            }
        ),
        format!(
            "  add        {:.3} s (learner in the configuration)",
            m.added.as_secs_f64()
        ),
        format!(
            "  caught up  {:.3} s from add (replicated within {max_lag} entries of commit)",
            m.caught_up.as_secs_f64()
        ),
        format!(
            "  applied    {:.3} s from add ({} tuples, applied index {})",
            m.applied.as_secs_f64(),
            m.status.tuples,
            m.status.applied
        ),
        format!(
            "  verified   {}",
            if m.status.tuples == expected {
                format!("the new node holds {expected} tuples, as the leader does")
            } else {
                format!(
                    "MISMATCH: the new node holds {} tuples, the leader {expected}",
                    m.status.tuples
                )
            }
        ),
    ]
}
