//! Cluster time that no node's wall clock can move.
//!
//! Real processes whose wall clocks are shifted with libfaketime (Debian's `faketime`; its
//! monotonic clock is left alone): one node two hours ahead, one two hours behind. Each of them
//! leads in turn and serves writes as a follower; no TTL changes, no session expires, an applied
//! request retried is answered from its session, and cluster time agrees across the nodes.

use std::time::{Duration, Instant};

use raftnode::proto;
use tests::{Cluster, bounded, raw_call, serial, skewed_clock_env};
use tuplespace::{Template, codec, tuple};

const LIMIT: Duration = Duration::from_secs(180);
const LEADER: Duration = Duration::from_secs(20);

fn tpl(text: &str) -> Template {
    text.parse().expect("a valid template")
}

/// Kills the leader until `want` leads (each killed node comes back at once).
async fn make_leader(cluster: &mut Cluster, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let leader = cluster.wait_leader(LEADER).await;
        if leader == want {
            return;
        }
        assert!(Instant::now() < deadline, "node {want} never became leader");
        cluster.kill(leader);
        let next = cluster.wait_leader(LEADER).await;
        cluster.spawn(leader);
        if next != want {
            // Give the restarted node time to rejoin before the next round.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The raw request a client would send: session `session`, number `seq`, an `out`, signed by
/// the admin.
async fn out_request(cluster: &Cluster, session: u64, seq: u64, what: &str) -> proto::Request {
    cluster
        .sign(proto::Request {
            session,
            seq,
            ack: seq - 1,
            op: Some(proto::request::Op::Out(proto::Out {
                tuple: codec::tuple_to_bytes(&tuple!["replayed", what]),
                ttl_ms: 0,
            })),
            ..Default::default()
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_wall_clock_moves_no_ttl_and_expires_no_session() {
    let _serial = serial().await;
    let mut cluster = Cluster::configure(3);
    for (id, offset) in [(2u64, "+7200"), (3, "-7200")] {
        let file = cluster.dir().join(format!("clock-node{id}"));
        std::fs::write(&file, offset).expect("write the clock offset");
        cluster.set_node_env(id, skewed_clock_env(&file));
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        // A long-lived session, and a tuple that must live ten minutes.
        let mut keeper = cluster.client();
        keeper
            .out_with_ttl(&tuple!["ttl", "10m"], Some(Duration::from_secs(600)))
            .await
            .expect("write");
        let phases = [
            (2u64, "leader"),
            (2, "follower"),
            (3, "leader"),
            (3, "follower"),
        ];
        for (phase, (skewed, role)) in phases.into_iter().enumerate() {
            // A request applied before the skewed node serves...
            let session = 0x5eed_0000 + phase as u64;
            let first = raw_call(
                &cluster.node(1).client,
                &out_request(&cluster, session, 1, "first").await,
            )
            .await;
            let Some(proto::response::Result::OutId(first_id)) = first.result else {
                panic!("{first:?}")
            };
            let leader = if role == "leader" {
                skewed
            } else if skewed == 2 {
                3
            } else {
                2
            };
            make_leader(&mut cluster, leader).await;
            // ...writes through the skewed node, as leader or as follower...
            let mut through = cluster.client_of(skewed);
            through
                .out_with_ttl(
                    &tuple!["short", skewed as i64],
                    Some(Duration::from_secs(2)),
                )
                .await
                .expect("write through the skewed node");
            for i in 0..5 {
                through.out(&tuple!["step", i]).await.expect("write");
            }
            // ...and the first request retried through it gets its recorded answer: its session
            // was not expired by the skew, and it is not applied again.
            let again = raw_call(
                &cluster.node(skewed).client,
                &out_request(&cluster, session, 1, "first").await,
            )
            .await;
            match again.result {
                Some(proto::response::Result::OutId(id)) => assert_eq!(id, first_id),
                other => panic!("node {skewed} as {role}: the session is gone: {other:?}"),
            }
            let next = raw_call(
                &cluster.node(skewed).client,
                &out_request(&cluster, session, 2, "next").await,
            )
            .await;
            assert!(
                matches!(next.result, Some(proto::response::Result::OutId(_))),
                "node {skewed} as {role}: {next:?}"
            );
            // The ten-minute tuple is still there; the two-second one goes after two seconds.
            let mut reader = cluster.client_of(1);
            let ten = reader.count(&tpl(r#"("ttl", "10m")"#)).await.unwrap();
            assert_eq!(ten, 1, "node {skewed} as {role} expired a ten-minute TTL");
            let short = tpl(&format!(r#"("short", {skewed})"#));
            assert_eq!(reader.count(&short).await.unwrap(), 1, "expired at once");
            tokio::time::sleep(Duration::from_millis(3_500)).await;
            assert_eq!(reader.count(&short).await.unwrap(), 0, "never expired");
            // Cluster time agrees across the nodes (within seconds, not hours).
            let mut times = Vec::new();
            for id in 1..=3 {
                if let Some(s) = cluster.status(id).await {
                    times.push(s.cluster_time_ms);
                }
            }
            let spread = times.iter().max().unwrap() - times.iter().min().unwrap();
            assert!(
                spread < 10_000,
                "cluster times {times:?} disagree by {spread} ms"
            );
            // The long-lived session still works.
            keeper
                .out(&tuple!["keeper", phase as i64])
                .await
                .expect("the long-lived session still works");
        }
        assert_eq!(
            keeper.count(&tpl(r#"("ttl", "10m")"#)).await.unwrap(),
            1,
            "the ten-minute tuple outlived every skewed leader"
        );
    })
    .await;
}
