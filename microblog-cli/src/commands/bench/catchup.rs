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
use super::scale;
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
    /// Acknowledged writes per second during the load.
    timeline: scale::Timeline,
    /// After the load: the leader's resident memory growth, each founding node's data dir,
    /// the leader's newest snapshot file.
    leader_rss_growth: Option<u64>,
    disk: Vec<(u64, u64)>,
    snapshot_bytes: Option<u64>,
    /// The new node's resident memory growth from empty to holding the state.
    new_rss_growth: Option<u64>,
    /// A restarted follower: from its start until it answered, and until it had applied what
    /// was committed when it was killed.
    restart: Option<(u64, Duration, Duration)>,
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
    let rss_of = |cluster: &LocalCluster, id: u64| cluster.pid(id).and_then(scale::rss);
    let rss_before: Vec<Option<u64>> = (1..=3).map(|id| rss_of(cluster, id)).collect();
    let (tuple_bytes, loaded, timeline) =
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
    let leader_rss_growth = rss_of(cluster, leader.id)
        .zip(rss_before.get(leader.id as usize - 1).copied().flatten())
        .map(|(after, before)| after.saturating_sub(before));
    let disk: Vec<(u64, u64)> = (1..=3)
        .filter_map(|id| Some((id, scale::du(&cluster.node(id)?.data_dir))))
        .collect();
    let snapshot_bytes = cluster
        .node(leader.id)
        .and_then(|n| scale::newest_snapshot(&n.data_dir));
    let spec = start_new_node(cluster).await?;
    let new_rss_empty = rss_of(cluster, NEW_ID);
    let timed = add_and_catch_up(&mut admin, &spec, &leader, max_lag, catch_up_timeout).await?;
    let new_rss_growth = rss_of(cluster, NEW_ID)
        .zip(new_rss_empty)
        .map(|(after, before)| after.saturating_sub(before));
    let restart = restart_follower(cluster, &mut admin, leader.id).await?;
    let after = loadavg();
    let m = Measured {
        tuple_bytes,
        loaded,
        load_secs,
        timeline,
        leader_rss_growth,
        disk,
        snapshot_bytes,
        new_rss_growth,
        restart,
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
            "load_per_second": m.timeline.per_second,
            "load_second_mean": (m.timeline.mean() * 10.0).round() / 10.0,
            "load_second_min": m.timeline.min(),
            "load_seconds_below_half_mean": m.timeline.below_half_mean(),
            "load_longest_gap_ms": m.timeline.longest_gap.as_millis() as u64,
            "leader_rss_growth_bytes": m.leader_rss_growth,
            "leader_rss_per_tuple": m.leader_rss_growth.map(|b| per_tuple(b, expected)),
            "new_node_rss_growth_bytes": m.new_rss_growth,
            "new_node_rss_per_tuple": m.new_rss_growth.map(|b| per_tuple(b, expected)),
            "disk_bytes": m.disk.iter().map(|(id, b)| json!({"node": id, "bytes": b})).collect::<Vec<_>>(),
            "snapshot_bytes": m.snapshot_bytes,
            "restart_node": m.restart.map(|r| r.0),
            "restart_answer_secs": m.restart.map(|r| ms(r.1.as_secs_f64())),
            "restart_ready_secs": m.restart.map(|r| ms(r.2.as_secs_f64())),
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

/// Loads `tuples` tuples of the bench's shape with `clients` clients; the encoded tuple size,
/// the load's outcome and its timeline.
async fn load_tuples(
    endpoints: &[String],
    options: &ClientOptions,
    admin: &raftnode::identity::Identity,
    (tuples, size): (u64, usize),
    clients: u64,
) -> Result<(usize, load::Outcome, scale::Timeline)> {
    let prefix = "catchup";
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = tokio::spawn(scale::watch(Arc::clone(&acked), Arc::clone(&done)));
    let plan = Arc::new(Plan {
        work: Work::Out { prefix },
        payload: load::payload_for(prefix, size),
        text: String::new(),
        signers: Arc::new(vec![admin.clone()]),
        progress: Some(acked),
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
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let timeline = watcher.await.unwrap_or_default();
    for e in &loaded.first_errors {
        eprintln!("bench catchup: load error: {e}");
    }
    eprintln!(
        "bench catchup: acknowledged per second: mean {:.0}, slowest {}, {} second(s) below half \
         the mean; longest gap with no acknowledgement {} ms",
        timeline.mean(),
        timeline.min(),
        timeline.below_half_mean(),
        timeline.longest_gap.as_millis()
    );
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
    Ok((tuple_bytes, loaded, timeline))
}

fn per_tuple(bytes: u64, tuples: u64) -> f64 {
    (bytes as f64 / tuples.max(1) as f64 * 10.0).round() / 10.0
}

/// Kills a follower of the founding three and restarts it on its data: the time from its start
/// until it answers, and until it has applied everything committed when it was killed.
async fn restart_follower(
    cluster: &mut LocalCluster,
    admin: &mut Client,
    leader: u64,
) -> Result<Option<(u64, Duration, Duration)>> {
    let Some(id) = (1..=3).find(|&id| id != leader) else {
        return Ok(None);
    };
    let Some(node) = cluster.node(id) else {
        return Ok(None);
    };
    let commit = admin.leader_status().await?.commit;
    cluster.kill(id)?;
    eprintln!("bench catchup: node {id} killed; restarting it on its data (commit {commit})");
    let start = Instant::now();
    cluster.spawn(id)?;
    let mut answered = None;
    let deadline = start + Duration::from_secs(120);
    loop {
        if let Ok(s) = Client::status_of(&node.client, &probe_options()).await {
            let at = *answered.get_or_insert_with(|| start.elapsed());
            if s.applied >= commit {
                let ready = start.elapsed();
                eprintln!(
                    "bench catchup: node {id} answered after {:.3} s and had applied index \
                     {commit} after {:.3} s ({} tuples)",
                    at.as_secs_f64(),
                    ready.as_secs_f64(),
                    s.tuples
                );
                return Ok(Some((id, at, ready)));
            }
        }
        cluster.check_alive()?;
        if Instant::now() > deadline {
            return Err(Error::failed(format!(
                "node {id} was not ready within 120 s of its restart:\n{}",
                cluster.log_tail(id, 15)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

fn mib_text(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn per_tuple_text(bytes: Option<u64>, tuples: u64) -> String {
    bytes.map_or("?".into(), |b| format!("{} B/tuple", per_tuple(b, tuples)))
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
            "  load/s     mean {:.0} per second, slowest second {}, {} second(s) below half the \
             mean; longest gap with no acknowledgement {} ms",
            m.timeline.mean(),
            m.timeline.min(),
            m.timeline.below_half_mean(),
            m.timeline.longest_gap.as_millis()
        ),
        format!(
            "  memory     leader +{} ({}); new node +{} ({})",
            mib_text(m.leader_rss_growth),
            per_tuple_text(m.leader_rss_growth, expected),
            mib_text(m.new_rss_growth),
            per_tuple_text(m.new_rss_growth, expected)
        ),
        format!(
            "  disk       {}; newest snapshot {}",
            m.disk
                .iter()
                .map(|(id, b)| format!("node {id} {:.1} MiB", *b as f64 / 1048576.0))
                .collect::<Vec<_>>()
                .join(", "),
            mib_text(m.snapshot_bytes)
        ),
        match m.restart {
            Some((id, answered, ready)) => format!(
                "  restart    node {id}: answering {:.3} s, caught up with the commit {:.3} s \
                 after its start",
                answered.as_secs_f64(),
                ready.as_secs_f64()
            ),
            None => "  restart    not measured".into(),
        },
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
