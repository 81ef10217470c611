//! The peer batch path, end to end: frame authentication (MAC, cluster, receiver, replay), the
//! batch's decoding, the checks on each raft message, and then raft itself — every message that
//! passes the checks is stepped into a real raft-rs node (fresh, follower or leader) whose ready
//! loop runs after it. A raft-rs panic here is a check we are missing.
//!
//! Half the inputs are sealed with the cluster key first, so the fuzzer explores what lies
//! behind a valid MAC (what a key holder could send), not only the MAC check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use raft::eraftpb::{Message, MessageType};
use raftnode::keys::{ClusterId, ClusterKey, KeyRing, Keys};
use raftnode::peer_auth::{PeerAuth, ReplayGuard};
use raftnode::proto::RaftBatch;
use raftnode::raft_check::{RaftView, check_against, check_envelope, check_snapshot, fixtures};

fn keys() -> Keys {
    Keys::new(ClusterId(7), vec![ClusterKey::new([9; 32])]).expect("keys")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let receiver = PeerAuth::new(KeyRing::new(keys()), 1, 1);
    let frame = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        PeerAuth::new(KeyRing::new(keys()), 2, 1)
            .seal_batch(1, rest)
            .0
    };
    let Ok((header, body)) = receiver.open_batch(&frame) else {
        return;
    };
    if ReplayGuard::new().admit(&header).is_err() {
        return;
    }
    let Ok(batch) = RaftBatch::decode(body) else {
        return;
    };
    let mut raw = match (mode >> 1) % 3 {
        0 => fixtures::raw_node(1),
        1 => fixtures::follower(),
        _ => fixtures::leader(),
    };
    for bytes in &batch.messages {
        let Ok(mut msg) = <Message as protobuf::Message>::parse_from_bytes(bytes) else {
            continue;
        };
        if check_envelope(&msg, header.from, 1).is_err() {
            continue;
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot
            && check_snapshot(&msg).is_err()
        {
            continue;
        }
        if check_against(&mut msg, &RaftView::of(&raw)).is_err() {
            continue;
        }
        let _ = raw.step(msg);
        fixtures::persist_ready(&mut raw);
    }
});
