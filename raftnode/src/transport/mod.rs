//! The peer transport: raft messages between nodes over ZeroMQ.
//!
//! # Protocol
//!
//! Every node listens for raft traffic with a guarded ROUTER ([`crate::guard`]: frame limits
//! checked before allocation) ([`serve`] / [`Server`]). Every node keeps, per peer, one
//! long-lived zmq.rs REQ socket connected to that peer's ROUTER ([`Transport`]). A request is one
//! frame: an authenticated header ([`crate::peer_auth`]: cluster id, sender, receiver,
//! incarnation, sequence number, MAC) followed by a prost [`RaftBatch`], a list of raft messages
//! each encoded with raft-rs's own (rust-protobuf) codec. The reply is one frame, a sealed
//! [`RaftAck`] saying how many of the batch's messages passed the checks and were handed to raft.
//!
//! On the wire, the REQ pushes an empty delimiter frame in front of the payload and the ROUTER
//! gives the server the connection's identity in front of that, so the server receives
//! `[identity, "", frame]` and replies `[identity, "", ack]`; the REQ strips the delimiter and
//! hands back `[ack]`.
//!
//! A batch holds whatever was queued for the peer while the previous request was in flight, up to
//! `max_frame` bytes, so a busy leader sends few large requests rather than one round trip per
//! message, and the messages of one peer stay in order.
//!
//! # Failures
//!
//! Raft tolerates message loss and retransmits by itself, so the transport never retries: a batch
//! whose send, acknowledgement, or connect fails or times out is dropped, and raft is told
//! ([`Report::Unreachable`] once per failed attempt, [`Report::Snapshot`] with `ok: false` for
//! each snapshot in it) so that it probes the follower again instead of waiting for answers that
//! will not come.
//!
//! zmq.rs 0.7 never reconnects a REQ socket, a REQ whose request timed out cannot send again, and
//! a frozen (SIGSTOPped) peer accepts TCP connections and requests but never answers. Therefore
//! every await on a socket has a timeout, a failed socket is dropped and a fresh one is connected
//! (with a short connect timeout) before the next batch, and while a peer stays unreachable its
//! task backs off between connect attempts and drops what is queued meanwhile: memory stays
//! bounded and nothing else waits on that peer.
//!
//! # What the server refuses
//!
//! Everything that does not authenticate (another cluster, an unknown key, a bad MAC, another
//! receiver, a replayed number) is refused before the payload is decoded, counted, logged with
//! its source, and its connection closed, with no answer. In an authentic batch, each message must
//! pass [`raft_check::check_envelope`] (its `from` is the sender, its `to` this node, its type one
//! peers send); a snapshot message passes only if the file it names was received in chunks and
//! checked beforehand ([`crate::snapshot_stream`]). The node then checks the rest against raft's
//! state.
//!
//! # Snapshots
//!
//! A snapshot message carries a descriptor of the leader's snapshot file, not the state. The
//! sending task streams the file first: each request carries at most one chunk
//! ([`crate::snapshot_stream::CHUNK`] bytes) beside the raft messages queued at that moment,
//! paced at `raft.snapshot_send_mib_per_s`, and the acknowledgement says which offset the
//! receiver wants next, so a lost request or connection resumes where it stopped. The snapshot
//! message goes out once the receiver says the file is durable and checked.
//!
//! # Files
//!
//! - `send.rs`: [`Transport`], the sending side (a task and a REQ socket per peer).
//! - `serve.rs`: [`Server`], the receiving side (a guarded ROUTER).
//! - `inbound.rs`: [`Inbound`], what the receiving side does with a frame, without I/O (the
//!   simulator delivers frames through it too).

use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::Message;

use crate::machine::Machine;

mod inbound;
mod send;
mod serve;
#[cfg(test)]
mod tests;

pub use inbound::{Inbound, PendingSnapshot, Refused};
pub use send::Transport;
pub use serve::{Endpoint, Server, guard_config, serve};

/// Connections the raft endpoint keeps (a handful of peers; the rest are strays or attackers,
/// the idlest of which make room).
pub const MAX_PEER_CONNECTIONS: usize = 64;

/// What the transport tells raft about messages it could not deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// A batch to this peer was lost: call `RawNode::report_unreachable(id)`.
    Unreachable(u64),
    /// This peer has removed this node from the cluster.
    RemovedBy(u64),
    /// A snapshot message to `to` was acknowledged (`ok`) or lost: call
    /// `RawNode::report_snapshot(to, Finish | Failure)`.
    Snapshot {
        /// The peer the snapshot was for.
        to: u64,
        /// Whether the peer acknowledged it.
        ok: bool,
    },
}

/// Receives [`Report`]s. Called from transport tasks on the tokio runtime: it must not block
/// (forward into the node's inbox).
pub type ReportSink = Arc<dyn Fn(Report) + Send + Sync>;

/// The checked raft messages of one authenticated batch.
pub struct Delivery {
    /// The authenticated sender.
    pub from: u64,
    /// The sender's raft endpoint as it says (empty if it did not).
    pub from_url: String,
    /// The messages, each checked by [`raft_check::check_envelope`].
    pub msgs: Vec<Message>,
    /// The decoded state of a `MsgSnapshot` among them (checked by
    /// the snapshot receiver when its file arrived), so the node need not decode it again.
    pub snapshot: Option<Box<Machine>>,
}

/// Receives each [`Delivery`] and answers whether its sender has been removed from the cluster
/// (the acknowledgement tells it). Called from the server loop: it must not block (forward into
/// the node's inbox).
pub type Deliver = Arc<dyn Fn(Delivery) -> bool + Send + Sync>;

/// Why the transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The raft endpoint could not be bound (malformed URL, address in use, no permission).
    #[error("cannot bind the raft endpoint {endpoint}: {reason}")]
    Bind {
        /// The endpoint asked for.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// A peer's endpoint could not be connected.
    #[error("cannot connect to peer endpoint {endpoint}: {source}")]
    Connect {
        /// The peer's endpoint.
        endpoint: String,
        /// What zmq.rs said.
        source: zeromq::ZmqError,
    },
    /// Sending to or receiving from a peer failed.
    #[error("{what} on {endpoint} failed: {source}")]
    Socket {
        /// The peer's endpoint.
        endpoint: String,
        /// Which step failed.
        what: &'static str,
        /// What zmq.rs said.
        source: zeromq::ZmqError,
    },
    /// A step on a peer's socket did not finish in time.
    #[error("{what} on {endpoint} timed out after {after:?}")]
    Timeout {
        /// The peer's endpoint.
        endpoint: String,
        /// Which step timed out.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The peer replied with something that is not a `RaftAck`.
    #[error("peer {endpoint} sent a malformed acknowledgement: {reason}")]
    BadAck {
        /// The peer's endpoint.
        endpoint: String,
        /// What was wrong with it.
        reason: String,
    },
}
