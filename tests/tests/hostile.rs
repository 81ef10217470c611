//! Hostile input against real nodes: nothing that reaches a port stops a node, and only members
//! of the cluster speak raft to it.
//!
//! Each scenario attacks a 3-node cluster of real processes on loopback — through zmq.rs sockets
//! and through raw TCP — then checks that every node still runs, that the cluster still commits
//! and reads, and that the node counted (in its status) what it refused.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use raftnode::client::{ClientError, MemberChange};
use raftnode::keys::{ClusterKey, KeyRing, Keys};
use raftnode::peer_auth::PeerAuth;
use raftnode::proto::{self, RaftBatch};
use tests::{Cluster, bounded, serial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tuplespace::tuple;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

const LIMIT: Duration = Duration::from_secs(120);
const LEADER: Duration = Duration::from_secs(20);

/// What node `id` has refused so far, by kind.
async fn refused(cluster: &Cluster, id: u64) -> BTreeMap<String, u64> {
    cluster
        .status(id)
        .await
        .unwrap_or_else(|| panic!("node {id} does not answer"))
        .refused
}

/// Every node answers, and the cluster commits a write through each node and reads it back.
async fn still_serving(cluster: &Cluster, mark: &str) {
    for id in cluster.running() {
        let mut c = cluster.client_of(id);
        let written = c.out(&tuple![mark, id as i64]).await;
        let written = written.unwrap_or_else(|e| panic!("node {id} no longer serves: {e}"));
        assert_eq!(
            c.read_id(written).await.expect("read"),
            Some(tuple![mark, id as i64])
        );
    }
}

/// Sends one frame to a ROUTER endpoint on a fresh REQ socket; the answer, if one comes within
/// a second (refused frames get none: their connection is closed).
async fn send_frame(endpoint: &str, frame: Vec<u8>) -> Option<ZmqMessage> {
    let mut socket = zeromq::ReqSocket::new();
    tokio::time::timeout(Duration::from_secs(2), socket.connect(endpoint))
        .await
        .ok()?
        .ok()?;
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(ZmqMessage::from(Bytes::from(frame))),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(1), socket.recv())
        .await
        .ok()?
        .ok()
}

fn raft_msg(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

fn batch(msgs: &[Message]) -> Vec<u8> {
    RaftBatch {
        messages: msgs
            .iter()
            .map(|m| protobuf::Message::write_to_bytes(m).expect("encode"))
            .collect(),
        from_url: String::new(),
        chunk: None,
    }
    .encode_to_vec()
}

// ---- raw ZMTP over TCP ----------------------------------------------------------------------

fn greeting() -> Vec<u8> {
    let mut g = vec![0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[12..16].copy_from_slice(b"NULL");
    g
}

fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut frame = vec![0x04, body.len() as u8];
    frame.extend(body);
    frame
}

/// A TCP connection that has done the ZMTP handshake as a REQ.
async fn zmtp(endpoint: &str) -> TcpStream {
    let addr = endpoint.trim_start_matches("tcp://");
    let mut s = TcpStream::connect(addr).await.expect("tcp connect");
    s.write_all(&greeting()).await.expect("greeting");
    s.write_all(&ready("REQ")).await.expect("ready");
    s
}

/// Whether the other side closes the connection within `limit` (reading and discarding what it
/// sent meanwhile, such as its own greeting).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Unauthenticated batches, batches of another cluster, a forged key, a forged `from`, raw TCP
/// junk: all refused before raft sees them, counted, and the nodes keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_foreign_batches_are_refused() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let keys = Keys::load(&cluster.key_file()).expect("the cluster key");
        let victim = cluster.node(1).raft.clone();

        // Plain raft messages with no MAC, as the old protocol sent them: a heartbeat that would
        // make raft-rs panic (commit past the log), and an election.
        let mut hb = raft_msg(MessageType::MsgHeartbeat, 2, 1, 99);
        hb.commit = 1_000_000;
        let vote = raft_msg(MessageType::MsgRequestVote, 2, 1, 100);
        assert!(send_frame(&victim, batch(&[hb, vote])).await.is_none());
        for round in 0..20u8 {
            let garbage: Vec<u8> = (0..(round as usize * 13))
                .map(|i| i as u8 ^ round)
                .collect();
            assert!(send_frame(&victim, garbage).await.is_none());
        }

        // A node of another cluster, by name in the log.
        let other = Keys::generate();
        let stranger = PeerAuth::new(KeyRing::new(other.clone()), 2, 1);
        let (frame, _) =
            stranger.seal_batch(1, &batch(&[raft_msg(MessageType::MsgHeartbeat, 2, 1, 1)]));
        assert!(send_frame(&victim, frame).await.is_none());
        // An attacker who knows the cluster id but not the key.
        let forger = Keys::new(keys.cluster, vec![ClusterKey::random()]).unwrap();
        let forger = PeerAuth::new(KeyRing::new(forger), 2, 1);
        let (frame, _) =
            forger.seal_batch(1, &batch(&[raft_msg(MessageType::MsgHeartbeat, 2, 1, 1)]));
        assert!(send_frame(&victim, frame).await.is_none());

        // Raw TCP junk on both endpoints.
        for endpoint in [&cluster.node(1).client, &victim] {
            let mut s = TcpStream::connect(endpoint.trim_start_matches("tcp://"))
                .await
                .expect("connect");
            let _ = s.write_all(&[0x5a; 4096]).await;
            assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        }

        let counts = refused(&cluster, 1).await;
        for kind in [
            "peer.not_a_peer_frame",
            "peer.wrong_cluster",
            "peer.unknown_key",
        ] {
            assert!(
                counts.get(kind).copied().unwrap_or(0) >= 1,
                "{kind}: {counts:?}"
            );
        }
        let log = cluster.log(1);
        let named = format!(
            "batch from cluster {}, this is cluster {}",
            other.cluster, keys.cluster
        );
        assert!(log.contains(&named), "the log names both clusters");
        still_serving(&cluster, "after-forgeries").await;
        assert!(cluster.ids().iter().all(|&id| cluster.is_running(id)));
    })
    .await;
}

/// A key holder speaking as a member (node 3, stopped meanwhile) sends every message shape that
/// makes raft-rs panic, messages of local types, a forged `from`, a snapshot that does not
/// decode; and a key holder that is not a member sends ordinary traffic. Node 1 refuses them
/// all and keeps serving; after the attack the whole cluster works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_fatal_shapes_from_a_key_holder_are_refused() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        cluster
            .client()
            .out(&tuple!["before"])
            .await
            .expect("write");
        cluster.kill(3);
        let leader = cluster.wait_leader(LEADER).await;
        let keys = Keys::load(&cluster.key_file()).expect("the cluster key");
        // A follower: it knows the leader of its term.
        let victim = if leader == 1 { 2 } else { 1 };
        let status = cluster.status(victim).await.expect("status");
        let term = status.term;
        // Numbered after anything the real node 3 sent.
        let as_member = PeerAuth::new(KeyRing::new(keys.clone()), 3, u64::MAX / 2);
        let entry = |index, term| Entry {
            index,
            term,
            ..Default::default()
        };
        let mut shapes = Vec::new();
        shapes.push(raft_msg(MessageType::MsgPropose, 3, victim, 0));
        shapes.push(raft_msg(MessageType::MsgReadIndex, 3, victim, 0));
        let mut m = raft_msg(MessageType::MsgHeartbeat, 3, victim, term);
        m.commit = status.last_index + 1_000_000;
        shapes.push(m);
        let mut m = raft_msg(MessageType::MsgAppend, 3, victim, term);
        m.index = status.last_index;
        m.entries = vec![entry(status.last_index + 3, term), entry(1, term)].into();
        shapes.push(m);
        let mut m = raft_msg(MessageType::MsgAppend, 3, victim, term);
        m.index = status.last_index + 50;
        m.commit = status.last_index + 50;
        shapes.push(m);
        shapes.push(raft_msg(MessageType::MsgRequestVote, 3, victim, 0));
        let mut m = raft_msg(MessageType::MsgSnapshot, 3, victim, term);
        m.mut_snapshot().mut_metadata().index = status.last_index + 10;
        m.mut_snapshot().mut_metadata().term = term;
        m.mut_snapshot().mut_metadata().mut_conf_state().learners = vec![victim];
        shapes.push(m);
        let mut m = raft_msg(MessageType::MsgSnapshot, 3, victim, term);
        m.mut_snapshot().mut_metadata().index = status.last_index + 10;
        m.mut_snapshot().mut_metadata().term = term;
        m.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        m.mut_snapshot()
            .set_data(b"not a machine state".to_vec().into());
        shapes.push(m);
        let mut m = raft_msg(MessageType::MsgAppendResponse, 3, victim, term);
        m.index = u64::MAX;
        shapes.push(m);
        shapes.push(raft_msg(MessageType::MsgTransferLeader, 3, victim, term));
        shapes.push(raft_msg(MessageType::MsgTimeoutNow, 3, victim, term));
        shapes.push(raft_msg(MessageType::MsgHup, 3, victim, term));
        shapes.push(raft_msg(MessageType::MsgHeartbeat, 2, victim, term));
        for shape in shapes {
            let (frame, _) = as_member.seal_batch(victim, &batch(&[shape]));
            send_frame(&cluster.node(victim).raft, frame).await;
        }
        // A key holder that is not a member.
        let outsider = PeerAuth::new(KeyRing::new(keys), 99, 1);
        let (frame, _) = outsider.seal_batch(
            victim,
            &batch(&[raft_msg(MessageType::MsgHeartbeat, 99, victim, term)]),
        );
        send_frame(&cluster.node(victim).raft, frame).await;

        let counts = refused(&cluster, victim).await;
        for kind in [
            "raft.invariant",
            "raft.bad_snapshot",
            "raft.local_type",
            "raft.forged_from",
            "raft.from_non_member",
        ] {
            assert!(
                counts.get(kind).copied().unwrap_or(0) >= 1,
                "{kind}: {counts:?}"
            );
        }
        assert!(
            counts["raft.invariant"] >= 8,
            "every fatal shape is counted: {counts:?}"
        );
        assert_eq!(
            cluster.wait_leader(LEADER).await,
            leader,
            "no election was forced"
        );
        still_serving(&cluster, "during").await;

        // Node 1 forgets the forged numbering when it restarts; then node 3 comes back.
        cluster.kill(victim);
        cluster.spawn(victim);
        cluster.spawn(3);
        cluster.wait_leader(LEADER).await;
        still_serving(&cluster, "after").await;
        let before = cluster
            .client()
            .count(&"(\"before\")".parse().unwrap())
            .await;
        assert_eq!(before.expect("count"), 1);
    })
    .await;
}

/// Frame headers announcing enormous lengths, too many parts, and floods of half-open
/// connections, on both endpoints, through raw TCP: each offending connection is closed before
/// anything is allocated for it, and the nodes keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_half_open_connections() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let node = cluster.node(1).clone();
        for endpoint in [&node.client, &node.raft] {
            for announced in [u64::MAX, 1 << 62, 300 << 20] {
                let mut s = zmtp(endpoint).await;
                let mut header = vec![0x02];
                header.extend_from_slice(&announced.to_be_bytes());
                s.write_all(&header).await.expect("header");
                assert!(
                    closed_within(&mut s, Duration::from_secs(5)).await,
                    "{endpoint}: a header announcing {announced} bytes did not close the connection"
                );
            }
            // Thousands of empty parts of one message.
            let mut s = zmtp(endpoint).await;
            let _ = s.write_all(&[0x01, 0x00].repeat(5_000)).await;
            assert!(closed_within(&mut s, Duration::from_secs(5)).await);
            // A greeting of another protocol version and mechanism.
            let addr = endpoint.trim_start_matches("tcp://");
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut curve = greeting();
            curve[12..17].copy_from_slice(b"CURVE");
            let _ = s.write_all(&curve).await;
            assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        }
        let counts = refused(&cluster, 1).await;
        assert!(
            counts.get("frame.too_large").copied().unwrap_or(0) >= 6,
            "{counts:?}"
        );
        assert!(counts.contains_key("frame.too_many_parts"), "{counts:?}");
        assert!(counts.contains_key("frame.bad_handshake"), "{counts:?}");

        // Half-open connections: more than either endpoint keeps, sending nothing.
        let mut idle = Vec::new();
        for endpoint in [&node.raft, &node.client] {
            for _ in 0..1_100 {
                if let Ok(s) = TcpStream::connect(endpoint.trim_start_matches("tcp://")).await {
                    idle.push(s);
                }
            }
        }
        still_serving(&cluster, "during-flood").await;
        let counts = refused(&cluster, 1).await;
        assert!(counts.contains_key("conn.evicted"), "{counts:?}");
        // The handshake deadline closes the rest.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let counts = refused(&cluster, 1).await;
        assert!(counts.contains_key("frame.too_slow"), "{counts:?}");
        drop(idle);
        still_serving(&cluster, "after-flood").await;
    })
    .await;
}

/// Two clients claiming one ZMTP identity each get their own answers: the guard gives every
/// connection its own identity, so replies cannot be hijacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_identity_cannot_take_over_replies() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        let leader = cluster.wait_leader(LEADER).await;
        let endpoint = cluster.node(leader).client.clone();
        let socket = |id: &str| {
            let mut options = zeromq::SocketOptions::default();
            options.peer_identity(id.as_bytes().try_into().expect("identity"));
            zeromq::ReqSocket::with_options(options)
        };
        let request = |op| {
            ZmqMessage::from(Bytes::from(
                proto::Request {
                    op: Some(op),
                    ..Default::default()
                }
                .encode_to_vec(),
            ))
        };
        let template = tuplespace::codec::template_to_bytes(&"(\"never\")".parse().unwrap());
        let mut victim = socket("shared");
        victim.connect(&endpoint).await.expect("connect");
        victim
            .send(request(proto::request::Op::Rd(proto::Rd {
                template: template.clone(),
                block: true,
                timeout_ms: 1_500,
                after_id: 0,
            })))
            .await
            .expect("send");
        let mut thief = socket("shared");
        thief.connect(&endpoint).await.expect("connect");
        thief
            .send(request(proto::request::Op::Count(proto::Count {
                template,
            })))
            .await
            .expect("send");
        let decode = |m: ZmqMessage| {
            proto::Response::decode(m.into_vec().last().expect("frame").as_ref()).expect("decode")
        };
        let mine = tokio::time::timeout(Duration::from_secs(5), thief.recv()).await;
        let mine = decode(mine.expect("in time").expect("recv"));
        assert!(
            matches!(mine.result, Some(proto::response::Result::Count(0))),
            "{mine:?}"
        );
        let theirs = tokio::time::timeout(Duration::from_secs(5), victim.recv()).await;
        let theirs = decode(theirs.expect("in time").expect("recv"));
        match theirs.result {
            Some(proto::response::Result::Error(e)) => {
                assert_eq!(e.code, proto::error::Code::TimedOut as i32)
            }
            other => panic!("the victim got {other:?}"),
        }
    })
    .await;
}

/// Membership requests that would silently cost the cluster its fault tolerance are refused:
/// phantom voters, voters that are not caught-up learners, moving a member, too many changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phantom_voters_and_unsafe_changes_are_refused() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let mut admin = cluster.client();
        let phantom = |id: u64| MemberChange::AddVoter {
            id,
            raft: format!("tcp://127.0.0.1:{}", 9 + id),
            client: format!("tcp://127.0.0.1:{}", 19 + id),
        };
        let refused_with = |r: Result<proto::Status, ClientError>, needle: &str| match r {
            Err(ClientError::Invalid(m)) => assert!(m.contains(needle), "{needle:?} not in {m:?}"),
            other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
        };
        refused_with(admin.change_membership(&[phantom(7)]).await, "learner");
        refused_with(
            admin.change_membership(&[phantom(7), phantom(8)]).await,
            "learner",
        );
        // As a learner it is harmless; it still cannot vote before it has caught up.
        admin
            .change_membership(&[MemberChange::AddLearner {
                id: 7,
                raft: "tcp://127.0.0.1:16".into(),
                client: "tcp://127.0.0.1:26".into(),
            }])
            .await
            .expect("a learner");
        match admin
            .change_membership(&[MemberChange::AddVoter {
                id: 7,
                raft: String::new(),
                client: String::new(),
            }])
            .await
        {
            Err(ClientError::NotCaughtUp(m)) => assert!(m.contains("has not caught up"), "{m}"),
            other => panic!("expected a learner that has not caught up, got {other:?}"),
        }
        // A member cannot be moved by a membership change.
        let moved = MemberChange::AddLearner {
            id: 7,
            raft: "tcp://127.0.0.1:17".into(),
            client: "tcp://127.0.0.1:27".into(),
        };
        refused_with(admin.change_membership(&[moved]).await, "cannot move");
        let many: Vec<MemberChange> = (10..19)
            .map(|id| MemberChange::AddLearner {
                id,
                raft: format!("tcp://127.0.0.1:{}", 100 + id),
                client: format!("tcp://127.0.0.1:{}", 200 + id),
            })
            .collect();
        refused_with(admin.change_membership(&many).await, "1 to 8 changes");
        admin
            .change_membership(&[MemberChange::Remove { id: 7 }])
            .await
            .expect("remove the learner");
        let status = admin.leader_status().await.expect("status");
        let mut voters: Vec<u64> = status
            .members
            .iter()
            .filter(|m| m.role() == proto::Role::Voter)
            .map(|m| m.id)
            .collect();
        voters.sort_unstable();
        assert_eq!(voters, vec![1, 2, 3]);
        assert!(
            status.refused.contains_key("admin.conf_change_refused"),
            "{status:?}"
        );
        still_serving(&cluster, "after-membership").await;
    })
    .await;
}

/// The cluster key is rotated without downtime, each step put in force node by node with
/// SIGHUP (so nodes with different key sets talk meanwhile): add a key, promote it, retire the
/// old one. Writes succeed at every step, and afterwards the old key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_key_rotates_without_downtime() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let file = cluster.key_file();
        let old = Keys::load(&file).expect("the key");
        type Step = fn(&Keys) -> Keys;
        let steps: [(&str, Step); 3] = [
            ("add", |k| k.with_new_key().expect("room for a key")),
            ("promote", Keys::promote_newest),
            ("retire", Keys::retire_others),
        ];
        let mut client = cluster.client();
        for (step, change) in steps {
            let keys = change(&Keys::load(&file).expect("the key"));
            keys.replace(&file).expect("write the key file");
            for id in cluster.ids() {
                let pid = cluster.pid(id).expect("running") as i32;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGHUP,
                )
                .expect("SIGHUP");
                // Between two nodes' reloads their key sets differ: the cluster keeps working.
                client
                    .out(&tuple!["rotation", step, id as i64])
                    .await
                    .unwrap_or_else(|e| panic!("a write during step {step}: {e}"));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        still_serving(&cluster, "after-rotation").await;
        let log = cluster.log(1);
        assert_eq!(
            log.matches("reloaded the cluster key file").count(),
            3,
            "three reloads"
        );
        // The old key is gone: a batch signed with it is refused.
        let sender = PeerAuth::new(KeyRing::new(old), 2, u64::MAX / 2);
        let (frame, _) =
            sender.seal_batch(1, &batch(&[raft_msg(MessageType::MsgHeartbeat, 2, 1, 1)]));
        assert!(send_frame(&cluster.node(1).raft, frame).await.is_none());
        let counts = refused(&cluster, 1).await;
        assert!(counts.contains_key("peer.unknown_key"), "{counts:?}");
    })
    .await;
}
