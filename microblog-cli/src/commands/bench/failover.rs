//! `bench failover`: a writer doing sequential `out`s; per trial, SIGKILL the leader, time until
//! the first write sent after the kill is acknowledged, restart the killed node with its data and
//! wait until it has caught up.
//!
//! The time counts from the moment the signal was sent to the acknowledgement of the first write
//! *sent after* it. (A write in flight at the kill is the writer's to retry; the one after it is
//! the first that cannot have been answered by the dead leader. That errs high by one write.)
//! Beside it, the time until a live node reports itself leader of a later term (polled every
//! 20 ms): the election alone, without the writer noticing the dead leader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftnode::client::{Client, ClientOptions};
use serde_json::json;
use tuplespace::tuple;

use super::local::LocalCluster;
use super::{Context, loadavg, loadavg_text, ms};
use crate::duration;
use crate::error::{Error, Result};

/// What the writer has done.
#[derive(Default)]
struct Writer {
    /// (sent, acknowledged) of each write since the log was last cleared.
    acks: Mutex<Vec<(Instant, Instant)>>,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    stop: AtomicBool,
}

async fn write_loop(mut client: Client, writer: Arc<Writer>) {
    let payload = super::load::payload_for("failover", 256);
    let mut seq = 0i64;
    while !writer.stop.load(Ordering::Relaxed) {
        seq += 1;
        let t = tuple!["failover", 0i64, seq, payload.as_str()];
        let sent = Instant::now();
        match client.out(&t).await {
            Ok(_) => {
                let acked = Instant::now();
                if let Ok(mut acks) = writer.acks.lock() {
                    acks.push((sent, acked));
                }
            }
            Err(e) => {
                writer.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = writer.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
    }
}

impl Writer {
    /// The first write sent at or after `t` and acknowledged: when it was acknowledged.
    fn first_sent_after(&self, t: Instant) -> Option<Instant> {
        let acks = self.acks.lock().ok()?;
        acks.iter()
            .find(|(sent, _)| *sent >= t)
            .map(|&(_, acked)| acked)
    }

    fn clear(&self) {
        if let Ok(mut acks) = self.acks.lock() {
            acks.clear();
        }
    }
}

/// One trial's figures.
struct Trial {
    killed: u64,
    new_leader: u64,
    failover: Duration,
    election: Option<Duration>,
    catch_up: Duration,
}

/// Runs `bench failover`.
pub async fn run(
    ctx: &mut Context,
    trials: u64,
    nodes: u64,
    request_timeout: Duration,
) -> Result<()> {
    eprintln!("bench failover: starting a {nodes}-node local cluster");
    let mut cluster = LocalCluster::start(nodes)?;
    eprintln!(
        "bench failover: cluster files and logs in {}",
        cluster.dir().display()
    );
    let result = trials_on(ctx, &mut cluster, trials, nodes, request_timeout).await;
    if result.is_err() {
        cluster.keep();
    }
    result
}

/// Waits until a live node reports itself leader of a term after `term`; when, and its id.
async fn wait_new_leader(
    cluster: &LocalCluster,
    term: u64,
    limit: Duration,
) -> Option<(Instant, u64)> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for (id, status) in cluster.statuses().await {
            if let Some(s) = status
                && s.role() == raftnode::proto::Role::Leader
                && s.term > term
            {
                return Some((Instant::now(), id));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn trials_on(
    ctx: &mut Context,
    cluster: &mut LocalCluster,
    trials: u64,
    nodes: u64,
    request_timeout: Duration,
) -> Result<()> {
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let endpoints = cluster.client_endpoints();
    let writer_options = ClientOptions {
        request_timeout,
        connect_timeout: request_timeout.min(Duration::from_millis(200)),
        retry_window: Duration::from_secs(60),
        follow_leader: true,
    };
    let admin_options = ClientOptions {
        request_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(200),
        retry_window: Duration::from_secs(30),
        follow_leader: true,
    };
    let admin_id = cluster.admin()?;
    let mut admin =
        Client::with_options(endpoints.clone(), admin_options).with_identity(admin_id.clone());
    let writer = Arc::new(Writer::default());
    let write_task = tokio::spawn(write_loop(
        Client::with_options(endpoints.clone(), writer_options).with_identity(admin_id),
        writer.clone(),
    ));
    let before = loadavg();
    let mut done: Vec<Trial> = Vec::new();
    let result = async {
        for trial in 1..=trials {
            cluster.check_alive()?;
            let status = admin.leader_status().await?;
            let (leader, term) = (status.id, status.term);
            // Writes must be flowing before the kill.
            let flowing = Instant::now();
            let patience = Instant::now() + Duration::from_secs(30);
            while writer.first_sent_after(flowing).is_none() {
                if Instant::now() > patience {
                    return Err(Error::failed(
                        "the writer made no progress for 30 s before a kill",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            writer.clear();
            let pid = cluster.pid(leader).unwrap_or(0);
            let killed_at = cluster.kill(leader)?;
            let (elected, acked) = tokio::join!(
                wait_new_leader(cluster, term, Duration::from_secs(30)),
                async {
                    let deadline = killed_at + Duration::from_secs(60);
                    loop {
                        if let Some(t) = writer.first_sent_after(killed_at) {
                            return Some(t);
                        }
                        if Instant::now() > deadline {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            );
            let Some(acked) = acked else {
                return Err(Error::failed(format!(
                    "trial {trial}: no write was acknowledged within 60 s of killing leader \
                     {leader} (last writer error: {})",
                    writer
                        .last_error
                        .lock()
                        .ok()
                        .and_then(|e| e.clone())
                        .unwrap_or_else(|| "none".into())
                )));
            };
            let failover = acked - killed_at;
            let election = elected.map(|(t, _)| t.saturating_duration_since(killed_at));
            let new_leader = match elected {
                Some((_, id)) => id,
                None => admin.leader_status().await?.id,
            };
            cluster.spawn(leader)?;
            let restarted = Instant::now();
            admin
                .wait_caught_up(leader, Duration::from_secs(60), 50)
                .await?;
            let catch_up = restarted.elapsed();
            eprintln!(
                "trial {trial}: killed leader {leader} (pid {pid}); write acknowledged after {:.1} ms \
                 (new leader {new_leader} seen after {}); node {leader} restarted and caught up \
                 in {:.0} ms",
                failover.as_secs_f64() * 1e3,
                election.map_or("-".into(), |e| format!("{:.0} ms", e.as_secs_f64() * 1e3)),
                catch_up.as_secs_f64() * 1e3
            );
            done.push(Trial {
                killed: leader,
                new_leader,
                failover,
                election,
                catch_up,
            });
            // Let the restarted node settle before the next kill.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }
    .await;
    writer.stop.store(true, Ordering::Relaxed);
    write_task.abort();
    let after = loadavg();
    result?;
    report(
        ctx,
        &done,
        nodes,
        request_timeout,
        writer.errors.load(Ordering::Relaxed),
        before,
        after,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(
    ctx: &mut Context,
    trials: &[Trial],
    nodes: u64,
    request_timeout: Duration,
    writer_errors: u64,
    before: Option<[f64; 3]>,
    after: Option<[f64; 3]>,
) -> Result<()> {
    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    let times: Vec<f64> = trials.iter().map(|t| millis(t.failover)).collect();
    let elections: Vec<f64> = trials
        .iter()
        .filter_map(|t| t.election.map(millis))
        .collect();
    let med = median(times.clone());
    let max = times.iter().copied().fold(0.0, f64::max);
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    if ctx.out.json {
        let j = json!({
            "bench": "failover",
            "nodes": nodes,
            "request_timeout_ms": request_timeout.as_millis() as u64,
            "trials": trials.iter().enumerate().map(|(i, t)| json!({
                "trial": i + 1,
                "killed": t.killed,
                "new_leader": t.new_leader,
                "failover_ms": ms(millis(t.failover)),
                "election_ms": t.election.map(|e| ms(millis(e))),
                "catch_up_ms": ms(millis(t.catch_up)),
            })).collect::<Vec<_>>(),
            "median_ms": ms(med),
            "max_ms": ms(max),
            "min_ms": ms(min),
            "election_median_ms": ms(median(elections)),
            "writer_errors": writer_errors,
            "loadavg_before": before,
            "loadavg_after": after,
        });
        ctx.out.json_line(&j)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = trials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            vec![
                (i + 1).to_string(),
                t.killed.to_string(),
                t.new_leader.to_string(),
                format!("{:.1}", millis(t.failover)),
                t.election
                    .map_or("-".into(), |e| format!("{:.0}", millis(e))),
                format!("{:.0}", millis(t.catch_up)),
            ]
        })
        .collect();
    ctx.out.table(
        &[
            "TRIAL",
            "KILLED",
            "NEW LEADER",
            "FAILOVER MS",
            "ELECTION MS",
            "CATCH-UP MS",
        ],
        &rows,
    )?;
    ctx.out.line(&format!(
        "failover ({nodes} nodes, {} trials, writer request timeout {}): median {med:.1} ms, \
         max {max:.1} ms, min {min:.1} ms; election median {:.0} ms; writer errors {writer_errors}",
        trials.len(),
        duration::show(request_timeout),
        median(elections)
    ))?;
    ctx.out
        .line(&format!("load avg {}", loadavg_text(before, after)))?;
    Ok(())
}
