//! A 3-node cluster of real processes on loopback serving every tuple operation.
//!
//! Each scenario takes the harness's serial lock (two cores, one cluster at a time) and a hard
//! time limit.

use std::time::Duration;

use bytes::Bytes;
use raftnode::client::ClientError;
use raftnode::proto;
use tests::{Cluster, bounded, raw_call, serial};
use tuplespace::{Query, Template, codec, tuple};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

const LIMIT: Duration = Duration::from_secs(90);
const LEADER: Duration = Duration::from_secs(20);

fn tpl(text: &str) -> Template {
    text.parse().expect("a valid template")
}

/// out through one node, rd and in through the others, and every read op through every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_every_operation_through_every_node() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let mut ids = Vec::new();
        for node in cluster.ids() {
            let mut c = cluster.client_of(node);
            ids.push(c.out(&tuple!["item", node as i64]).await.expect("out"));
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
        for node in cluster.ids() {
            let mut c = cluster.client_of(node);
            assert_eq!(c.count(&tpl(r#"("item", ?int)"#)).await.unwrap(), 3);
            let all = c
                .rd_all(&tpl(r#"("item", _)"#), &Query::default())
                .await
                .unwrap();
            assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
            assert_eq!(
                c.read_id(ids[0]).await.unwrap(),
                Some(tuple!["item", 1]),
                "read_id through node {node}"
            );
            let (id, _) = c.rdp(&tpl(r#"("item", 2)"#), 0).await.unwrap().unwrap();
            assert_eq!(id, ids[1]);
            // Union copy-collect: each match once, newest first, limited.
            let union = [
                tpl(r#"("item", 1)"#),
                tpl(r#"("item", 3)"#),
                tpl(r#"("item", ?int)"#),
            ];
            let newest_two = Query {
                limit: 2,
                newest_first: true,
                ..Query::default()
            };
            let found = c.rd_any(&union, &newest_two).await.unwrap();
            assert_eq!(
                found.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                vec![ids[2], ids[1]]
            );
            assert!(c.rdp(&tpl(r#"("item", 2)"#), id).await.unwrap().is_none());
        }
        // Takes through three different nodes get three different tuples.
        let mut taken = Vec::new();
        for node in cluster.ids() {
            let mut c = cluster.client_of(node);
            let (id, _) = c
                .inp(&tpl(r#"("item", _)"#))
                .await
                .unwrap()
                .expect("a tuple");
            taken.push(id);
        }
        assert_eq!(taken, ids, "oldest first, each once");
        let mut c = cluster.client_of(2);
        assert!(c.inp(&tpl(r#"("item", _)"#)).await.unwrap().is_none());
        // cas, take_id, in_all, ttl.
        let lock = tpl(r#"("lock", _)"#);
        let first = c.cas(&lock, &tuple!["lock", "a"], None).await.unwrap();
        assert!(first.is_some());
        assert_eq!(
            c.cas(&lock, &tuple!["lock", "b"], None).await.unwrap(),
            None
        );
        let mut c3 = cluster.client_of(3);
        assert_eq!(
            c3.take_id(first.unwrap()).await.unwrap(),
            Some(tuple!["lock", "a"])
        );
        for i in 0..5 {
            c3.out(&tuple!["batch", i]).await.unwrap();
        }
        assert_eq!(c.in_all(&tpl(r#"("batch", _)"#), 3).await.unwrap().len(), 3);
        assert_eq!(c3.count(&tpl(r#"("batch", _)"#)).await.unwrap(), 2);
        c.out_with_ttl(&tuple!["brief"], Some(Duration::from_millis(300)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(c3.count(&tpl(r#"("brief")"#)).await.unwrap(), 0, "expired");
        // A join: the templates come from the tuples its source matches when the read runs.
        c3.out(&tuple!["likes", "x"]).await.unwrap();
        c3.out(&tuple!["likes", "z"]).await.unwrap();
        for name in ["x", "y", "z"] {
            c3.out(&tuple!["thing", name, 1]).await.unwrap();
        }
        let join = tuplespace::union::Join {
            source: tpl(r#"("likes", ?str)"#),
            source_field: 1,
            target: tpl(r#"("thing", _, ?int)"#),
            target_field: 1,
        };
        let liked = c.rd_join(&[], &join, &Query::default()).await.unwrap();
        let names: Vec<_> = liked.iter().map(|(_, t)| t.fields()[1].clone()).collect();
        assert_eq!(
            names,
            vec![tuplespace::Value::from("x"), tuplespace::Value::from("z")]
        );
        // A source matching more than 256 tuples is over a limit; a field outside is invalid.
        for i in 0..=tuplespace::union::MAX_TEMPLATES as i64 {
            c3.out(&tuple!["many", i]).await.unwrap();
        }
        let wide = tuplespace::union::Join {
            source: tpl(r#"("many", ?int)"#),
            ..join.clone()
        };
        let refused = c.rd_join(&[], &wide, &Query::default()).await;
        assert!(
            matches!(refused, Err(ClientError::OverLimit(_))),
            "{refused:?}"
        );
        let outside = tuplespace::union::Join {
            source_field: 5,
            ..join
        };
        let refused = c.rd_join(&[], &outside, &Query::default()).await;
        assert!(
            matches!(refused, Err(ClientError::Invalid(_))),
            "{refused:?}"
        );
        // A union of no templates, or of too many, is refused as invalid.
        for n in [0, tuplespace::union::MAX_TEMPLATES + 1] {
            let templates = vec![tpl(r#"("batch", _)"#); n];
            let refused = c3.rd_any(&templates, &Query::default()).await;
            assert!(
                matches!(&refused, Err(ClientError::Invalid(why)) if why.contains("1 to 256")),
                "{n} templates: {refused:?}"
            );
        }
        let status = c3.status().await.unwrap();
        assert_eq!(status.members.len(), 3);
        assert!(status.applied > 0 && status.commit >= status.applied);
    })
    .await;
}

/// A blocking in on node 1 is satisfied by an out through node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_in_is_satisfied_by_an_out_elsewhere() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let mut taker = cluster.client_of(1);
        let waiting = tokio::spawn(async move {
            taker
                .in_(&tpl(r#"("job", ?int)"#), Duration::from_secs(20))
                .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let id = cluster.client_of(2).out(&tuple!["job", 7]).await.unwrap();
        let got = waiting
            .await
            .unwrap()
            .expect("the blocked in gets the tuple");
        assert_eq!(got, (id, tuple!["job", 7]));
        let mut c = cluster.client_of(3);
        assert_eq!(c.count(&tpl(r#"("job", _)"#)).await.unwrap(), 0);
        // A blocking rd on one node sees an out through another, after a given id.
        let mut reader = cluster.client_of(3);
        let watching = tokio::spawn(async move {
            reader
                .rd(&tpl(r#"("feed", _)"#), 0, Duration::from_secs(20))
                .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fid = cluster.client_of(1).out(&tuple!["feed", 1]).await.unwrap();
        assert_eq!(watching.await.unwrap().unwrap().0, fid);
        assert_eq!(
            c.count(&tpl(r#"("feed", _)"#)).await.unwrap(),
            1,
            "rd leaves it"
        );
    })
    .await;
}

/// Two concurrent ins for one tuple: exactly one gets it, the other times out cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ins_one_tuple_one_winner() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let mut handles = Vec::new();
        for node in [1, 2] {
            let mut c = cluster.client_of(node);
            handles.push(tokio::spawn(async move {
                c.in_(&tpl(r#"("prize")"#), Duration::from_secs(3)).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.client_of(3).out(&tuple!["prize"]).await.unwrap();
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap());
        }
        let winners = results.iter().filter(|r| r.is_ok()).count();
        let timeouts = results
            .iter()
            .filter(|r| matches!(r, Err(ClientError::Timeout)))
            .count();
        assert_eq!((winners, timeouts), (1, 1), "{results:?}");
        let mut c = cluster.client();
        assert_eq!(c.count(&tpl(r#"("prize")"#)).await.unwrap(), 0);
    })
    .await;
}

/// SIGKILL the leader: a new one is elected and every acknowledged out is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_nothing_acknowledged() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3);
    bounded(LIMIT, async {
        let leader = cluster.wait_leader(LEADER).await;
        let mut c = cluster.client();
        let mut acked = Vec::new();
        for i in 0..50 {
            acked.push(c.out(&tuple!["acked", i]).await.unwrap());
        }
        cluster.kill(leader);
        let next = cluster.wait_leader(LEADER).await;
        assert_ne!(next, leader);
        for i in 50..60 {
            acked.push(c.out(&tuple!["acked", i]).await.unwrap());
        }
        for node in cluster.ids().into_iter().filter(|&n| n != leader) {
            let got = cluster
                .client_of(node)
                .rd_all(&tpl(r#"("acked", _)"#), &Query::default())
                .await
                .unwrap();
            assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), acked);
        }
        // The old leader comes back, catches up, and agrees.
        cluster.spawn(leader);
        let mut back = cluster.client_of(leader);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(n) = back.count(&tpl(r#"("acked", _)"#)).await
                && n == 60
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "old leader caught up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

/// SIGKILL all three and restart them: nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_every_node_loses_nothing_acknowledged() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let mut c = cluster.client();
        let mut acked = Vec::new();
        for i in 0..40 {
            acked.push(c.out(&tuple!["durable", i, "x".repeat(100)]).await.unwrap());
        }
        let (taken, _) = c.inp(&tpl(r#"("durable", 0, _)"#)).await.unwrap().unwrap();
        acked.retain(|&id| id != taken);
        for id in cluster.ids() {
            cluster.kill(id);
        }
        for id in cluster.ids() {
            cluster.spawn(id);
        }
        cluster.wait_leader(LEADER).await;
        for node in cluster.ids() {
            let got = cluster
                .client_of(node)
                .rd_all(&tpl(r#"("durable", _, _)"#), &Query::default())
                .await
                .unwrap();
            assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), acked);
        }
        let next = c.out(&tuple!["after"]).await.unwrap();
        assert!(next > *acked.last().unwrap(), "ids keep increasing");
    })
    .await;
}

/// A request replayed with the same session and sequence number is applied once, through the
/// same node or another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_is_applied_once() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let plain = proto::Request {
            session: 0xfeed,
            seq: 1,
            ack: 0,
            op: Some(proto::request::Op::Out(proto::Out {
                tuple: codec::tuple_to_bytes(&tuple!["once"]),
                ttl_ms: 0,
            })),
            ..Default::default()
        };
        // Signed once, replayed as it is: the same bytes, the same signature.
        let request = cluster.sign(plain.clone()).await;
        let mut ids = Vec::new();
        for node in [1, 1, 2, 3] {
            let resp = raw_call(&cluster.node(node).client, &request).await;
            match resp.result {
                Some(proto::response::Result::OutId(id)) => ids.push(id),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(ids.iter().all(|&id| id == ids[0]), "same answer: {ids:?}");
        assert_eq!(
            cluster.client().count(&tpl(r#"("once")"#)).await.unwrap(),
            1
        );
        // A later request of a session the cluster never saw is refused and not applied.
        let stray = cluster
            .sign(proto::Request {
                session: 0xbeef,
                seq: 5,
                ..plain.clone()
            })
            .await;
        let resp = raw_call(&cluster.node(2).client, &stray).await;
        match resp.result {
            Some(proto::response::Result::Error(e)) => {
                assert_eq!(e.code, proto::error::Code::SessionExpired as i32)
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            cluster.client().count(&tpl(r#"("once")"#)).await.unwrap(),
            1
        );
    })
    .await;
}

/// Random garbage frames sent to both endpoints of a node: it keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_do_not_stop_a_node() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let victim = cluster.node(1).clone();
        let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state
        };
        for round in 0..60 {
            let len = (next() % 300) as usize;
            let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for endpoint in [&victim.client, &victim.raft] {
                let mut socket = zeromq::ReqSocket::new();
                if tokio::time::timeout(Duration::from_secs(1), socket.connect(endpoint))
                    .await
                    .is_err()
                {
                    continue;
                }
                let msg = if round % 5 == 0 {
                    // Several frames where one is expected.
                    let mut m = ZmqMessage::from(Bytes::from(garbage.clone()));
                    m.push_back(Bytes::from_static(b"extra"));
                    m
                } else {
                    ZmqMessage::from(Bytes::from(garbage.clone()))
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(msg)).await;
                let _ = tokio::time::timeout(Duration::from_millis(300), socket.recv()).await;
            }
        }
        // Raw TCP junk that is not even ZMTP.
        for endpoint in [&victim.client, &victim.raft] {
            let addr = endpoint.trim_start_matches("tcp://");
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(&[0xff; 4096]).await;
            }
        }
        let mut c = cluster.client_of(1);
        let id = c
            .out(&tuple!["still", "here"])
            .await
            .expect("the node still serves");
        assert_eq!(c.read_id(id).await.unwrap(), Some(tuple!["still", "here"]));
        assert!(cluster.status(1).await.is_some());
    })
    .await;
}
