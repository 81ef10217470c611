//! Fair share and bounded state against real nodes: one client cannot take every request slot,
//! a blocking `in` whose client went away takes nothing, and the space's caps refuse an `out`
//! with a clear error.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use raftnode::client::ClientError;
use raftnode::proto;
use tests::{Cluster, bounded, serial};
use tuplespace::{Template, codec, tuple};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

const LIMIT: Duration = Duration::from_secs(120);
const LEADER: Duration = Duration::from_secs(20);

fn tpl(text: &str) -> Template {
    text.parse().expect("a valid template")
}

/// A raw request frame; a write (seq > 0) is signed by the admin.
async fn request(cluster: &Cluster, session: u64, seq: u64, op: proto::request::Op) -> ZmqMessage {
    let request = proto::Request {
        session,
        seq,
        ack: seq.saturating_sub(1),
        op: Some(op),
        ..Default::default()
    };
    let request = if seq > 0 {
        cluster.sign(request).await
    } else {
        request
    };
    ZmqMessage::from(Bytes::from(request.encode_to_vec()))
}

fn blocking_in(template: &str, timeout_ms: u64) -> proto::request::Op {
    proto::request::Op::In(proto::In {
        template: codec::template_to_bytes(&tpl(template)),
        block: true,
        timeout_ms,
    })
}

/// A blocking `in` whose client vanishes (its connection closes; or a Rust client dropped
/// mid-call) is cancelled: a matching tuple written afterwards stays in the space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_in_whose_client_went_away_takes_nothing() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        // A raw client: sends its blocking in, then closes its connection (Ctrl-C, a crash).
        {
            let mut socket = zeromq::ReqSocket::new();
            socket
                .connect(&cluster.node(2).client)
                .await
                .expect("connect");
            socket
                .send(request(&cluster, 0xabc, 1, blocking_in(r#"("job", "raw")"#, 30_000)).await)
                .await
                .expect("send");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // A Rust client whose call is abandoned (the future and the client dropped).
        let mut abandoned = cluster.client();
        let call = tokio::spawn(async move {
            let _ = abandoned
                .in_(&tpl(r#"("job", "rust")"#), Duration::from_secs(30))
                .await;
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        call.abort();
        let _ = call.await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;

        let mut c = cluster.client();
        let raw = c.out(&tuple!["job", "raw"]).await.expect("out");
        let rust = c.out(&tuple!["job", "rust"]).await.expect("out");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            c.read_id(raw).await.unwrap(),
            Some(tuple!["job", "raw"]),
            "taken by a gone client"
        );
        assert_eq!(
            c.read_id(rust).await.unwrap(),
            Some(tuple!["job", "rust"]),
            "taken by a dropped client"
        );
        let status = cluster.status(1).await.expect("status");
        assert_eq!(status.waiters, 0, "no waiter left behind: {status:?}");
    })
    .await;
}

/// One connection pipelining requests gets no more than its share: the node stops reading it
/// while 64 of its requests are unanswered, and serves everyone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_take_every_request_slot() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        let leader = cluster.wait_leader(LEADER).await;
        let endpoint = cluster.node(leader).client.clone();
        let mut dealer = zeromq::DealerSocket::new();
        dealer.connect(&endpoint).await.expect("connect");
        let rd = proto::request::Op::Rd(proto::Rd {
            template: codec::template_to_bytes(&tpl(r#"("never")"#)),
            block: true,
            timeout_ms: 3_000,
            after_id: 0,
        });
        let sent = Instant::now();
        for _ in 0..200 {
            dealer
                .send(request(&cluster, 0, 0, rd.clone()).await)
                .await
                .expect("send");
        }
        // Someone else is served while 64 blocking rds of that connection hold their slots.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let mut other = cluster.client_of(leader);
        other.out(&tuple!["fair"]).await.expect("served");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // The answers come in waves of at most 64 (each rd times out after 3 s; only then is the
        // next wave read), so after one wait exactly one wave has come back.
        let mut answered = 0;
        let until = sent + Duration::from_millis(4_500);
        while let Ok(Ok(reply)) = tokio::time::timeout_at(until.into(), dealer.recv()).await {
            let resp = proto::Response::decode(reply.into_vec().last().unwrap().as_ref()).unwrap();
            assert!(
                matches!(resp.result, Some(proto::response::Result::Error(_))),
                "{resp:?}"
            );
            answered += 1;
        }
        assert_eq!(answered, 64, "one wave of 64 answers in the first 4.5 s");
    })
    .await;
}

/// The `[limits]` of the cluster file cap the space: an `out` past them is refused with a clear
/// error, and a take makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_space_cap_refuses_outs_with_a_clear_error() {
    let _serial = serial().await;
    // Room for 5 tuples beside the one the founding entries write: the admin's registration.
    let cluster = Cluster::start_with(3, |o| o.limits.max_tuples = 6);
    bounded(LIMIT, async {
        let leader = cluster.wait_leader(LEADER).await;
        // The leader puts the caps in the log.
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster
            .status(leader)
            .await
            .and_then(|s| s.limits)
            .is_none_or(|l| l.max_tuples != 6)
        {
            assert!(Instant::now() < deadline, "the caps never reached the log");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut c = cluster.client();
        for i in 0..5 {
            c.out(&tuple!["cap", i]).await.expect("room");
        }
        match c.out(&tuple!["cap", 5]).await {
            Err(ClientError::OverLimit(m)) => assert!(m.contains("space is full"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(c.count(&tpl(r#"("cap", _)"#)).await.unwrap(), 5);
        let mut counted = 0;
        for id in cluster.ids() {
            if let Some(s) = cluster.status(id).await {
                counted += s.refused.get("client.over_limit").copied().unwrap_or(0);
            }
        }
        assert_eq!(counted, 1, "counted once, by the node that had the request");
        c.inp(&tpl(r#"("cap", _)"#))
            .await
            .unwrap()
            .expect("one to take");
        c.out(&tuple!["cap", 6]).await.expect("room again");
    })
    .await;
}

/// Ctrl-C during `microblog tuple in` cancels its waiter: the tuple written afterwards stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_a_blocking_tuple_in_cancels_it() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let endpoints = cluster.endpoints().join(",");
        let mut cmd = tests::microblog::command(
            &endpoints,
            &[
                "--admin",
                "--timeout",
                "60s",
                "tuple",
                "in",
                r#"("order", ?int)"#,
            ],
        );
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().expect("start microblog");
        let pid = child.id().expect("a pid") as i32;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
        let run = tests::microblog::finish_child(child).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains("cancelled"), "{run:?}");
        let mut c = cluster.client();
        let id = c.out(&tuple!["order", 7]).await.expect("out");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(c.read_id(id).await.unwrap(), Some(tuple!["order", 7]));
    })
    .await;
}
