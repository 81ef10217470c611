//! `bench flood`: is a well-behaved client served fairly while another floods the node? A
//! sequential client writes and reads alone for a while, then again while a flooder pipelines
//! blocking `rd`s and `out`s on one connection as fast as it can send them; the report compares
//! the well-behaved client's latencies (p50, p99) in the two phases.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use raftnode::client::Client;
use raftnode::proto;
use serde_json::json;
use tuplespace::{Template, codec, tuple};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use super::histogram::Histogram;
use super::local::LocalCluster;
use super::{Context, loadavg, loadavg_text};
use crate::connect;
use crate::error::{Error, Result};

/// Runs `bench flood` on a local cluster it starts.
pub async fn run(ctx: &mut Context, duration: Duration) -> Result<()> {
    eprintln!("bench flood: starting a 3-node local cluster (default raft settings)");
    let mut cluster = LocalCluster::start(3)?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let admin = cluster.admin()?;
    let result = measure(ctx, cluster.client_endpoints(), duration, admin).await;
    if result.is_err() {
        cluster.keep();
    }
    result
}

/// The well-behaved client: one `out` then one `rdp` of it, again and again, until `end`.
async fn behave(client: &mut Client, end: Instant) -> Histogram {
    let mut latencies = Histogram::new();
    let template: Template = r#"("good", ?int)"#.parse().expect("a template");
    let mut n = 0i64;
    while Instant::now() < end {
        n += 1;
        let t = Instant::now();
        if client.out(&tuple!["good", n]).await.is_ok() {
            latencies.record(t.elapsed());
        }
        let t = Instant::now();
        if client.rdp(&template, 0).await.is_ok() {
            latencies.record(t.elapsed());
        }
    }
    latencies
}

/// The flooder: one DEALER connection that sends blocking `rd`s (that never match) and `out`s
/// without waiting for answers, as fast as the socket takes them, reading answers on the side.
async fn flood(endpoint: String, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> Result<()> {
    let mut dealer = zeromq::DealerSocket::new();
    dealer
        .connect(&endpoint)
        .await
        .map_err(|e| Error::failed(format!("flooder: {e}")))?;
    let (mut tx, mut rx) = dealer.split();
    let reader = tokio::spawn(async move { while rx.recv().await.is_ok() {} });
    let rd = proto::request::Op::Rd(proto::Rd {
        template: codec::template_to_bytes(&r#"("never", ?int)"#.parse().expect("a template")),
        block: true,
        timeout_ms: 1_000,
        after_id: 0,
    });
    let session = 0xf100d;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let op = if seq.is_multiple_of(2) {
            rd.clone()
        } else {
            proto::request::Op::Out(proto::Out {
                tuple: codec::tuple_to_bytes(&tuple!["flood", seq as i64]),
                ttl_ms: 60_000,
            })
        };
        let writes = matches!(op, proto::request::Op::Out(_));
        let request = proto::Request {
            session: if writes { session } else { 0 },
            seq: if writes { seq } else { 0 },
            ack: if writes { seq - 1 } else { 0 },
            op: Some(op),
            ..Default::default()
        };
        let frame = ZmqMessage::from(Bytes::from(request.encode_to_vec()));
        match tokio::time::timeout(Duration::from_secs(1), tx.send(frame)).await {
            Ok(Ok(())) => {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            _ => break,
        }
    }
    reader.abort();
    Ok(())
}

/// The well-behaved client signs (as the admin); the flooder sends unsigned writes, which the
/// node refuses before proposing them.
async fn measure(
    ctx: &mut Context,
    endpoints: Vec<String>,
    duration: Duration,
    admin: raftnode::identity::Identity,
) -> Result<()> {
    let options = connect::client_options(ctx.timeout, endpoints.len());
    let mut good = Client::with_options(endpoints.clone(), options).with_identity(admin);
    // Warm up (and find the leader), then the unloaded phase.
    behave(&mut good, Instant::now() + Duration::from_secs(2)).await;
    let before = loadavg();
    eprintln!("bench flood: the well-behaved client alone for {duration:?}");
    let alone = behave(&mut good, Instant::now() + duration).await;
    eprintln!("bench flood: again, while one connection floods the leader");
    let leader = good
        .leader_status()
        .await
        .map_err(|e| Error::failed(format!("no leader: {e}")))?;
    let leader_endpoint = leader
        .members
        .iter()
        .find(|m| m.id == leader.id)
        .map(|m| m.client_url.clone())
        .unwrap_or_else(|| endpoints[0].clone());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = tokio::spawn(flood(leader_endpoint, Arc::clone(&stop), Arc::clone(&sent)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = behave(&mut good, Instant::now() + duration).await;
    stop.store(true, Ordering::Relaxed);
    let _ = flooder.await;
    let sent = sent.load(Ordering::Relaxed);
    let (p99_alone, p99_flooded) = (alone.quantile_ms(0.99), flooded.quantile_ms(0.99));
    let ratio = p99_flooded / p99_alone.max(1e-9);
    if ctx.out.json {
        return Ok(ctx.out.json_line(&json!({
            "bench": "flood",
            "duration_s": duration.as_secs_f64(),
            "alone_ops": alone.count(),
            "alone_p50_ms": alone.quantile_ms(0.5),
            "alone_p99_ms": p99_alone,
            "flooded_ops": flooded.count(),
            "flooded_p50_ms": flooded.quantile_ms(0.5),
            "flooded_p99_ms": p99_flooded,
            "p99_ratio": ratio,
            "flood_requests_sent": sent,
            "load_before": before,
        }))?);
    }
    ctx.out.line(&format!(
        "alone:   {} ops, p50 {:.3} ms, p99 {p99_alone:.3} ms",
        alone.count(),
        alone.quantile_ms(0.5)
    ))?;
    ctx.out.line(&format!(
        "flooded: {} ops, p50 {:.3} ms, p99 {p99_flooded:.3} ms ({sent} flood requests sent \
         over {duration:?})",
        flooded.count(),
        flooded.quantile_ms(0.5)
    ))?;
    ctx.out
        .line(&format!("p99 flooded / alone: {ratio:.2} (target <= 2)"))?;
    ctx.out
        .line(&format!("load: {}", loadavg_text(before, loadavg())))?;
    Ok(())
}
