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

    // The load.
    let prefix = "catchup";
    let plan = Arc::new(Plan {
        work: Work::Out { prefix },
        payload: load::payload_for(prefix, size),
        text: String::new(),
    });
    let tuple_bytes = load::encoded_size(prefix, &plan.payload);
    eprintln!(
        "bench catchup: loading {tuples} tuples of {tuple_bytes} bytes with {clients} clients"
    );
    let loaded = load::drive(
        &endpoints,
        &options,
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
    let load_secs = loaded.measured.as_secs_f64();
    eprintln!(
        "bench catchup: loaded {} tuples in {load_secs:.1} s ({:.0}/s, {} errors; p50 {:.2} ms, \
         p99 {:.2} ms)",
        loaded.ops,
        loaded.rate(),
        loaded.errors,
        loaded.all.quantile_ms(0.5),
        loaded.all.quantile_ms(0.99)
    );
    if loaded.ops == 0 {
        return Err(Error::failed("the load wrote nothing"));
    }
    let after_load = loadavg();

    // A snapshot, if one comes: the leader's log starts after index 1 once it has compacted.
    let mut admin = Client::with_options(
        endpoints.clone(),
        ClientOptions {
            retry_window: Duration::from_secs(60),
            ..options.clone()
        },
    );
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
    let expected = leader.tuples;

    // The new node.
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
    let start = Instant::now();
    admin
        .change_membership(&[MemberChange::AddLearner {
            id: NEW_ID,
            raft: spec.raft.clone(),
            client: spec.client.clone(),
        }])
        .await?;
    let added = start.elapsed();
    let watch = async {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        loop {
            tick.tick().await;
            let s = Client::status_of(&spec.client, &probe_options()).await;
            match s {
                Ok(s) => eprintln!(
                    "catchup: {:>5.1}s  node {NEW_ID}: applied {} tuples {} (leader commit {})",
                    start.elapsed().as_secs_f64(),
                    s.applied,
                    s.tuples,
                    leader.commit
                ),
                Err(_) => eprintln!(
                    "catchup: {:>5.1}s  node {NEW_ID}: busy (no answer)",
                    start.elapsed().as_secs_f64()
                ),
            }
        }
    };
    tokio::select! {
        caught = admin.wait_caught_up(NEW_ID, catch_up_timeout, max_lag) => caught?,
        () = watch => {}
    }
    let caught_up = start.elapsed();
    let target = admin.leader_status().await?;
    // Applied: the new node's machine holds every tuple.
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
    let applied = start.elapsed();
    let after = loadavg();
    let ok = status.tuples == expected;
    if ctx.out.json {
        ctx.out.json_line(&json!({
            "bench": "catchup",
            "tuples": tuples,
            "size": size,
            "tuple_bytes": tuple_bytes,
            "clients": clients,
            "load_secs": ms(load_secs),
            "load_ops_per_sec": (loaded.rate() * 10.0).round() / 10.0,
            "load_errors": loaded.errors,
            "load_p50_ms": ms(loaded.all.quantile_ms(0.5)),
            "load_p99_ms": ms(loaded.all.quantile_ms(0.99)),
            "snapshot": compacted,
            "leader_first_index": leader.first_index,
            "leader_commit": leader.commit,
            "add_secs": ms(added.as_secs_f64()),
            "catchup_secs": ms(caught_up.as_secs_f64()),
            "applied_secs": ms(applied.as_secs_f64()),
            "max_lag": max_lag,
            "expected_tuples": expected,
            "new_node_tuples": status.tuples,
            "new_node_applied": status.applied,
            "tuples_match": ok,
            "loadavg_before": before,
            "loadavg_after_load": after_load,
            "loadavg_after": after,
        }))?;
    } else {
        for line in [
            format!(
                "catchup: {} tuples of {tuple_bytes} bytes loaded by {clients} clients in \
                 {load_secs:.1} s ({:.0} tuples/s, {} errors)",
                loaded.ops,
                loaded.rate(),
                loaded.errors
            ),
            format!(
                "  snapshot   {}",
                if compacted {
                    format!("yes (the leader's log starts at {})", leader.first_index)
                } else {
                    "none yet (the new node replays the log)".into()
                }
            ),
            format!(
                "  add        {:.3} s (learner in the configuration)",
                added.as_secs_f64()
            ),
            format!(
                "  caught up  {:.3} s from add (replicated within {max_lag} entries of commit)",
                caught_up.as_secs_f64()
            ),
            format!(
                "  applied    {:.3} s from add ({} tuples, applied index {})",
                applied.as_secs_f64(),
                status.tuples,
                status.applied
            ),
            format!(
                "  verified   {}",
                if ok {
                    format!("the new node holds {expected} tuples, as the leader does")
                } else {
                    format!(
                        "MISMATCH: the new node holds {} tuples, the leader {expected}",
                        status.tuples
                    )
                }
            ),
            format!("  load avg   {}", loadavg_text(before, after)),
        ] {
            ctx.out.line(&line)?;
        }
    }
    if !ok {
        return Err(Error::failed(format!(
            "the new node holds {} tuples, the leader {expected}",
            status.tuples
        )));
    }
    Ok(())
}
