//! The transport's tests: real sockets on loopback.

use std::time::Instant;

use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::MessageType;
use slog::Logger;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use zeromq::{ReqSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::send::*;
use super::*;
use crate::keys::{KeyRing, Keys};
use crate::peer_auth::{self, Header, PeerAuth};
use crate::proto::{RaftAck, RaftBatch};
use crate::refusals::{Refusals, Refuser};
use crate::snapshot::SnapshotStore;

const MAX: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(30);

/// One cluster key for every test here.
fn keys() -> Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(Keys::generate).clone()
}

fn auth(id: u64) -> Arc<PeerAuth> {
    PeerAuth::new(KeyRing::new(keys()), id, 1)
}

/// Node 1's transport, in a later incarnation than `auth(1)` (whose batches tests send by
/// hand), as after a restart.
fn transport(sink: ReportSink, max_frame: usize) -> Transport {
    Transport::new(
        PeerAuth::new(KeyRing::new(keys()), 1, 2),
        tokio::runtime::Handle::current(),
        sink,
        max_frame,
        logger(),
    )
}

fn logger() -> Logger {
    if std::env::var_os("TEST_LOG").is_some() {
        return crate::logging::stderr_logger(slog::Level::Debug);
    }
    crate::logging::discard()
}

fn msg(to: u64, index: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = 1;
    m.to = to;
    m.term = 3;
    m.index = index;
    m
}

/// Node 1's snapshot files, holding a snapshot at index 42 term 3 of a machine with `tuples`
/// tuples of about 100 bytes, and the snapshot message naming it.
fn leader_snapshot(to: u64, tuples: usize) -> (tempfile::TempDir, Arc<SnapshotStore>, Message) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SnapshotStore::open(dir.path(), logger()).expect("store"));
    let mut machine = Machine::new();
    machine.fill_for_tests(tuples);
    machine.mark_applied(42, 3);
    let conf = raft::eraftpb::ConfState::from((vec![1, 2], vec![]));
    let view = machine.view();
    let meta = store
        .save_with(42, 3, &conf, |w| view.encode_to(w))
        .expect("save");
    let mut m = msg(to, 0);
    m.set_msg_type(MessageType::MsgSnapshot);
    m.set_snapshot(meta.to_raft_snapshot());
    (dir, store, m)
}

/// A snapshot message whose data is no descriptor (it cannot be sent).
fn snapshot_msg(to: u64, data: usize) -> Message {
    let mut m = msg(to, 0);
    m.set_msg_type(MessageType::MsgSnapshot);
    let mut snap = raft::eraftpb::Snapshot::default();
    snap.set_data(vec![7u8; data].into());
    snap.mut_metadata().index = 42;
    m.set_snapshot(snap);
    m
}

fn reports() -> (ReportSink, UnboundedReceiver<Report>) {
    let (tx, rx) = unbounded_channel();
    let sink: ReportSink = Arc::new(move |r| {
        let _ = tx.send(r);
    });
    (sink, rx)
}

type Delivered = UnboundedReceiver<(u64, Vec<Message>)>;

fn deliverer() -> (Deliver, Delivered) {
    let (tx, rx) = unbounded_channel();
    let deliver: Deliver = Arc::new(move |d: Delivery| {
        let _ = tx.send((d.from, d.msgs));
        false
    });
    (deliver, rx)
}

/// Node 2's server on a fresh port, running until the returned sender is dropped or fired.
async fn start_server(max_frame: usize) -> (String, Delivered, tokio::sync::oneshot::Sender<()>) {
    let (url, delivered, stop, _) = start_counting_server(max_frame).await;
    (url, delivered, stop)
}

/// [`start_server`], also returning what it refused.
async fn start_counting_server(
    max_frame: usize,
) -> (
    String,
    Delivered,
    tokio::sync::oneshot::Sender<()>,
    Arc<Refusals>,
) {
    let (deliver, delivered) = deliverer();
    let refusals = Arc::new(Refusals::new());
    let refuser = Arc::new(Refuser::new(Arc::clone(&refusals)));
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SnapshotStore::open(dir.path(), logger()).expect("store"));
    let receiver = crate::snapshot_stream::Receiver::new(store, keys().cluster, logger());
    let endpoint = Endpoint {
        guard: guard_config(max_frame),
        auth: auth(2),
        deliver,
        refuser,
        receiver: Some(receiver),
    };
    let server = Server::bind("tcp://127.0.0.1:0", endpoint, logger())
        .await
        .expect("bind");
    let url = server.endpoint().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        // The receiver's files live as long as the server.
        let _dir = dir;
        server
            .run(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (url, delivered, stop, refusals)
}

fn free_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe");
    let port = listener.local_addr().expect("addr").port();
    format!("tcp://127.0.0.1:{port}")
}

async fn collect(delivered: &mut Delivered, want: usize) -> Vec<(u64, Vec<Message>)> {
    let mut batches = Vec::new();
    let mut count = 0;
    while count < want {
        let batch = delivered.recv().await.expect("server alive");
        count += batch.1.len();
        batches.push(batch);
    }
    batches
}

/// Sends one request and returns its reply, or `None` if the server answered nothing within
/// a second (it closes the connection of whatever it refuses).
async fn raw_request(url: &str, frames: Vec<Bytes>) -> Option<ZmqMessage> {
    let mut req = ReqSocket::new();
    req.connect(url).await.expect("connect");
    req.send(ZmqMessage::try_from(frames).expect("frames"))
        .await
        .expect("send");
    tokio::time::timeout(Duration::from_secs(1), req.recv())
        .await
        .ok()?
        .ok()
}

/// A batch from `from` to node 2, sealed with `sealer`'s keys.
fn sealed(sealer: &PeerAuth, messages: Vec<Message>) -> (Bytes, Header) {
    let payload = RaftBatch {
        messages: messages
            .iter()
            .map(|m| protobuf::Message::write_to_bytes(m).unwrap())
            .collect(),
        from_url: String::new(),
        chunk: None,
    }
    .encode_to_vec();
    let (frame, header) = sealer.seal_batch(2, &payload);
    (Bytes::from(frame), header)
}

fn ack_of(sealer: &PeerAuth, request: &Header, reply: &ZmqMessage) -> u32 {
    assert_eq!(reply.len(), 1);
    let body = sealer
        .open_ack(request, reply.get(0).expect("frame").as_ref())
        .expect("an authentic ack");
    RaftAck::decode(body).expect("ack").accepted
}

#[test]
fn batch_size_accounting_matches_prost() {
    let messages: Vec<Vec<u8>> = [0usize, 1, 127, 128, 70_000]
        .iter()
        .map(|n| vec![1u8; *n])
        .collect();
    for from_url in ["", "tcp://127.0.0.1:7101"] {
        let want =
            header_len(from_url) + messages.iter().map(|m| field_len(m.len())).sum::<usize>();
        let batch = RaftBatch {
            messages: messages.clone(),
            from_url: from_url.to_string(),
            chunk: None,
        };
        assert_eq!(batch.encoded_len() + peer_auth::HEADER_LEN, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_in_order_and_batched() {
    tokio::time::timeout(LIMIT, async {
        let (url, mut delivered, _stop) = start_server(MAX).await;
        let (sink, mut reports) = reports();
        let mut transport = transport(sink, MAX);
        transport.add_peer(2, url.clone());
        assert_eq!(transport.peers(), vec![(2, url.clone())]);
        let url_again = url;

        transport.send((1..=500).map(|i| msg(2, i)).collect());
        let batches = collect(&mut delivered, 500).await;
        let indexes: Vec<u64> = batches
            .iter()
            .flat_map(|(_, b)| b.iter().map(|m| m.index))
            .collect();
        assert_eq!(indexes, (1..=500).collect::<Vec<_>>());
        assert!(batches.iter().all(|(from, _)| *from == 1));
        assert!(
            batches.len() < 500,
            "{} batches for 500 messages",
            batches.len()
        );

        // A snapshot: its file (several chunks) is streamed first, then the message arrives,
        // and is reported as such.
        let (_dir, store, snapshot) = leader_snapshot(2, 40_000);
        let size = crate::snapshot::Descriptor::of(snapshot.get_snapshot())
            .unwrap()
            .size;
        assert!(
            size > 3 * crate::snapshot_stream::CHUNK as u64,
            "{size} bytes"
        );
        transport.send_snapshots_from(store, 1 << 30);
        transport.remove_peer(2);
        transport.add_peer(2, url_again);
        transport.send(vec![snapshot, msg(2, 501)]);
        let batches = collect(&mut delivered, 2).await;
        let got: Vec<MessageType> = batches
            .iter()
            .flat_map(|(_, b)| b.iter().map(|m| m.get_msg_type()))
            .collect();
        // The append does not wait for the snapshot's file.
        assert_eq!(got, [MessageType::MsgAppend, MessageType::MsgSnapshot]);
        let report = tokio::time::timeout(Duration::from_secs(5), reports.recv())
            .await
            .expect("report");
        assert_eq!(report, Some(Report::Snapshot { to: 2, ok: true }));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_max_frame_and_oversize_is_dropped() {
    tokio::time::timeout(LIMIT, async {
        let max_frame = 4096;
        let (url, mut delivered, _stop) = start_server(max_frame).await;
        let (sink, mut reports) = reports();
        let mut transport = transport(sink, max_frame);
        transport.add_peer(2, url);

        let mut msgs = Vec::new();
        for i in 1..=60 {
            let mut m = msg(2, i);
            m.context = vec![9u8; 300].into();
            msgs.push(m);
            if i == 30 {
                // Too large for any frame: dropped and reported, the rest still flows.
                msgs.push(snapshot_msg(2, 2 * max_frame));
                let mut big = msg(2, 1000);
                big.context = vec![1u8; 2 * max_frame].into();
                msgs.push(big);
            }
        }
        transport.send(msgs);
        let batches = collect(&mut delivered, 60).await;
        let indexes: Vec<u64> = batches
            .iter()
            .flat_map(|(_, b)| b.iter().map(|m| m.index))
            .collect();
        assert_eq!(indexes, (1..=60).collect::<Vec<_>>());
        assert!(
            batches.len() >= 5,
            "4 KiB frames cannot hold 60 x 300 bytes in {} batches",
            batches.len()
        );
        for (_, batch) in &batches {
            let size = peer_auth::HEADER_LEN
                + RaftBatch {
                    messages: batch
                        .iter()
                        .map(|m| protobuf::Message::write_to_bytes(m).unwrap())
                        .collect(),
                    from_url: String::new(),
                    chunk: None,
                }
                .encoded_len();
            assert!(size <= max_frame);
        }
        let mut got = vec![reports.recv().await.unwrap(), reports.recv().await.unwrap()];
        got.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            got,
            vec![
                Report::Snapshot { to: 2, ok: false },
                Report::Unreachable(2)
            ]
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_peer_is_reported() {
    let (sink, mut reports) = reports();
    let mut transport = transport(sink, MAX);
    transport.send(vec![msg(9, 1), msg(9, 2), snapshot_msg(9, 10)]);
    assert_eq!(reports.try_recv(), Ok(Report::Unreachable(9)));
    assert_eq!(
        reports.try_recv(),
        Ok(Report::Snapshot { to: 9, ok: false })
    );
    assert!(reports.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_started_late_gets_messages() {
    tokio::time::timeout(LIMIT, async {
        let url = free_port_url();
        let (sink, mut reports) = reports();
        let mut transport = transport(sink, MAX);
        transport.add_peer(2, url.clone());

        transport.send(vec![msg(2, 1)]);
        let report = reports.recv().await;
        assert_eq!(report, Some(Report::Unreachable(2)));

        let (deliver, mut delivered) = deliverer();
        let server_url = url.clone();
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let refuser = Arc::new(Refuser::default());
            let endpoint = Endpoint {
                guard: guard_config(MAX),
                auth: auth(2),
                deliver,
                refuser,
                receiver: None,
            };
            serve(&server_url, endpoint, logger(), async move {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });

        // Like raft, keep sending; once the peer is up a message gets through.
        let mut index = 1;
        let got = loop {
            index += 1;
            transport.send(vec![msg(2, index)]);
            if let Ok(Some(got)) =
                tokio::time::timeout(Duration::from_millis(100), delivered.recv()).await
            {
                break got;
            }
        };
        assert_eq!(got.0, 1);
        assert!(got.1[0].index >= 2);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authentic_batches_are_delivered() {
    tokio::time::timeout(LIMIT, async {
        let max_frame = 4096;
        let (url, mut delivered, _stop, refused) = start_counting_server(max_frame).await;

        // Garbage, a wrong envelope, an oversized frame: no answer, nothing delivered.
        let garbage = raw_request(&url, vec![Bytes::from_static(&[0xff; 64])]).await;
        assert!(garbage.is_none());
        let two = raw_request(
            &url,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        );
        assert!(two.await.is_none());
        let oversize = raw_request(&url, vec![Bytes::from(vec![0u8; max_frame + 1])]).await;
        assert!(oversize.is_none());

        // A batch signed with a key of another cluster, one with a forged key of ours,
        // and one for another node.
        let stranger = PeerAuth::new(KeyRing::new(Keys::generate()), 1, 1);
        let (frame, _) = sealed(&stranger, vec![msg(2, 1)]);
        assert!(raw_request(&url, vec![frame]).await.is_none());
        let forger = Keys::new(keys().cluster, vec![crate::keys::ClusterKey::random()]);
        let forger = PeerAuth::new(KeyRing::new(forger.unwrap()), 1, 1);
        let (frame, _) = sealed(&forger, vec![msg(2, 1)]);
        assert!(raw_request(&url, vec![frame]).await.is_none());
        let sender = auth(1);
        let payload = RaftBatch::default().encode_to_vec();
        let (misaddressed, _) = sender.seal_batch(3, &payload);
        assert!(raw_request(&url, vec![misaddressed.into()]).await.is_none());

        // An authentic batch: the good message is delivered, a forged `from`, a local type
        // and an undecodable one are not.
        let mut forged_from = msg(2, 8);
        forged_from.from = 3;
        let mut local = msg(2, 9);
        local.set_msg_type(MessageType::MsgHup);
        let (frame, header) = sealed(&sender, vec![msg(2, 7), forged_from, local]);
        let reply = raw_request(&url, vec![frame.clone()])
            .await
            .expect("answered");
        assert_eq!(ack_of(&sender, &header, &reply), 1);
        let (from, msgs) = delivered.recv().await.expect("delivered");
        assert_eq!((from, msgs.len(), msgs[0].index), (1, 1, 7));

        // The same batch again is a replay.
        assert!(raw_request(&url, vec![frame]).await.is_none());

        for kind in [
            "peer.not_a_peer_frame",
            "frame.too_many_parts",
            "peer.wrong_cluster",
            "peer.unknown_key",
            "peer.misaddressed",
            "peer.replay",
            "raft.forged_from",
            "raft.local_type",
            "frame.too_large",
        ] {
            assert!(
                refused.get(kind) >= 1,
                "{kind} not counted: {:?}",
                refused.snapshot()
            );
        }
        assert!(delivered.try_recv().is_err(), "nothing else was delivered");

        // And the transport still gets through.
        let (sink, _reports) = reports();
        let mut transport = transport(sink, max_frame);
        transport.add_peer(2, url);
        transport.send(vec![msg(2, 10), msg(2, 11)]);
        let batches = collect(&mut delivered, 2).await;
        let indexes: Vec<u64> = batches
            .iter()
            .flat_map(|(_, b)| b.iter().map(|m| m.index))
            .collect();
        assert_eq!(indexes, vec![10, 11]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_peer_is_reported_and_never_blocks() {
    tokio::time::timeout(LIMIT, async {
        // Receives requests and never answers, like a SIGSTOPped node whose kernel still
        // accepts connections.
        let mut frozen = zeromq::RouterSocket::new();
        let url = frozen
            .bind("tcp://127.0.0.1:0")
            .await
            .expect("bind")
            .to_string();
        let (seen_tx, mut seen) = unbounded_channel();
        let hold = tokio::spawn(async move {
            while let Ok(request) = frozen.recv().await {
                let _ = seen_tx.send(request.into_vec());
            }
        });

        let (sink, mut reports) = reports();
        let mut transport = transport(sink, MAX);
        transport.add_peer(2, url);
        let started = Instant::now();
        transport.send(vec![msg(2, 1), snapshot_msg(2, 100)]);
        // The request reached the frozen peer as [identity, "", batch].
        let frames = seen.recv().await.expect("request");
        assert_eq!(frames.len(), 3);
        assert!(!frames[0].is_empty() && frames[1].is_empty());
        let (header, body) = auth(2).open_batch(frames[2].as_ref()).expect("authentic");
        let batch = RaftBatch::decode(body).expect("batch");
        // Both messages, unless this thread was preempted between queueing them long enough
        // for the peer's task to connect (a loaded machine): then the snapshot waits in the
        // queue and is reported lost with the rest below.
        assert_eq!(header.from, 1);
        assert!(
            matches!(batch.messages.len(), 1 | 2),
            "{}",
            batch.messages.len()
        );

        // While the peer hangs, queueing never waits on it. (A send that waited on the
        // frozen peer would take at least the 1 s send timeout per batch; the bound is loose
        // so that a loaded machine does not fail it.)
        let queued = Instant::now();
        for i in 0..2_000 {
            transport.send(vec![msg(2, i)]);
        }
        assert!(
            queued.elapsed() < Duration::from_secs(5),
            "send blocked for {:?}",
            queued.elapsed()
        );

        let mut got = Vec::new();
        while got.len() < 2 {
            let report = tokio::time::timeout(Duration::from_secs(6), reports.recv())
                .await
                .expect("reported within a few seconds");
            got.push(report.expect("report"));
        }
        assert!(got.contains(&Report::Unreachable(2)));
        assert!(got.contains(&Report::Snapshot { to: 2, ok: false }));
        assert!(started.elapsed() < Duration::from_secs(6));

        // Later traffic keeps failing fast (reports keep coming) rather than hanging. Like
        // raft's heartbeats, keep sending: what lands in a backoff window is dropped unreported.
        tokio::time::timeout(Duration::from_secs(8), async {
            loop {
                transport.send(vec![msg(2, 99_999)]);
                let wait = tokio::time::timeout(Duration::from_millis(200), reports.recv());
                if let Ok(Some(Report::Unreachable(2))) = wait.await {
                    break;
                }
            }
        })
        .await
        .expect("reported again");

        transport.remove_peer(2);
        assert!(transport.peers().is_empty());
        hold.abort();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_listener_times_out_the_connect() {
    tokio::time::timeout(LIMIT, async {
        // The kernel completes the TCP handshake from the backlog but nobody speaks ZMTP:
        // what a SIGSTOPped node looks like to a fresh connect.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("tcp://{}", silent.local_addr().expect("addr"));
        let (sink, mut reports) = reports();
        let mut transport = transport(sink, MAX);
        transport.add_peer(2, url);
        let started = Instant::now();
        transport.send(vec![msg(2, 10)]);
        let first = reports.recv().await;
        assert_eq!(first, Some(Report::Unreachable(2)));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        drop(silent);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readding_a_peer_with_a_new_url_moves_it() {
    tokio::time::timeout(LIMIT, async {
        let (url_a, mut delivered_a, _stop_a) = start_server(MAX).await;
        let (url_b, mut delivered_b, _stop_b) = start_server(MAX).await;
        let (sink, _reports) = reports();
        let mut transport = transport(sink, MAX);
        transport.add_peer(2, url_a);
        transport.send(vec![msg(2, 1)]);
        assert_eq!(collect(&mut delivered_a, 1).await[0].1[0].index, 1);
        transport.add_peer(2, url_b.clone());
        assert_eq!(transport.peers(), vec![(2, url_b)]);
        transport.send(vec![msg(2, 2)]);
        assert_eq!(collect(&mut delivered_b, 1).await[0].1[0].index, 2);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_error_names_the_endpoint() {
    let (url, _delivered, _stop) = start_server(MAX).await;
    let (deliver, _rx) = deliverer();
    let refuser = Arc::new(Refuser::default());
    let endpoint = Endpoint {
        guard: guard_config(MAX),
        auth: auth(2),
        deliver,
        refuser,
        receiver: None,
    };
    let err = serve(&url, endpoint, logger(), std::future::pending())
        .await
        .expect_err("address in use");
    assert!(matches!(err, TransportError::Bind { .. }));
    assert!(err.to_string().contains(&url), "{err}");
}
