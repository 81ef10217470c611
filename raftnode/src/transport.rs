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
//! peers send); a snapshot's state is decoded and checked on a blocking thread
//! ([`raft_check::check_snapshot`]). The node then checks the rest against raft's state.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::{Message, MessageType};
use slog::{Logger, debug, error, info, o, warn};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zeromq::{ReqSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::guard::{self, GuardConfig, Limits, Router, RouterHandle};
use crate::machine::Machine;
use crate::peer_auth::{self, Header, PeerAuth, ReplayGuard};
use crate::proto::{RaftAck, RaftBatch};
use crate::raft_check;
use crate::refusals::Refuser;

/// How long zmq.rs may spend connecting (TCP and ZMTP handshake). A frozen peer completes the
/// TCP handshake through the kernel but never the ZMTP one; the default of 30 s would stall the
/// peer's queue for that long.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Our own bound around `connect`, in case zmq.rs's timeout does not cover every await.
const CONNECT_GUARD: Duration = Duration::from_millis(1000);
/// Base time allowed to hand a batch to the socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Base time allowed for the acknowledgement; well above a healthy round trip, well below an
/// election timeout's worth of silence.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time per MiB of batch, so a large snapshot on a slow link is not mistaken for a dead
/// peer.
const TIMEOUT_PER_MIB: Duration = Duration::from_secs(1);
/// First pause after a failure; doubled on each consecutive failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A `RaftAck` is a few bytes after its authenticated header; anything larger is not one.
const MAX_ACK_FRAME: usize = peer_auth::HEADER_LEN + 64;
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
    /// [`raft_check::check_snapshot`]), so the node need not decode it again.
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

// ---------------------------------------------------------------------------------------------
// Sending side.

struct PeerHandle {
    url: String,
    queue: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
}

/// The sending side of the peer transport, owned by the node thread.
///
/// Every method is synchronous and returns at once: messages go into an unbounded per-peer queue
/// drained by that peer's task on the tokio runtime, so a slow or frozen peer never blocks the
/// raft loop. Dropping the transport stops every peer task.
pub struct Transport {
    self_id: u64,
    /// Seals every batch.
    auth: Arc<PeerAuth>,
    /// This node's own raft endpoint, sent in every batch so new nodes can answer.
    self_url: String,
    runtime: tokio::runtime::Handle,
    reports: ReportSink,
    max_frame: usize,
    logger: Logger,
    peers: HashMap<u64, PeerHandle>,
}

impl Transport {
    /// A transport for the node `auth` speaks for, with no peers yet. Batches are kept within
    /// `max_frame` bytes (the receiving [`Server`] must accept at least that much).
    pub fn new(
        auth: Arc<PeerAuth>,
        runtime: tokio::runtime::Handle,
        reports: ReportSink,
        max_frame: usize,
        logger: Logger,
    ) -> Self {
        Transport {
            self_id: auth.me(),
            auth,
            self_url: String::new(),
            runtime,
            reports,
            max_frame,
            logger,
            peers: HashMap::new(),
        }
    }

    /// Names this node's own raft endpoint in every batch it sends from now on (peers added
    /// later carry it).
    pub fn set_self_url(&mut self, url: String) {
        self.self_url = url;
    }

    /// Starts sending to peer `id` at `raft_url`. Re-adding a known peer with a new URL replaces
    /// its task (what was queued for the old address is dropped); with the same URL it does
    /// nothing.
    pub fn add_peer(&mut self, id: u64, raft_url: String) {
        if id == self.self_id {
            warn!(self.logger, "not adding this node as its own peer"; "peer" => id);
            return;
        }
        if let Some(existing) = self.peers.get(&id) {
            if existing.url == raft_url {
                return;
            }
            info!(self.logger, "peer address changed";
                "peer" => id, "old" => &existing.url, "new" => &raft_url);
            self.remove_peer(id);
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let task = PeerTask {
            auth: Arc::clone(&self.auth),
            self_url: self.self_url.clone(),
            peer: id,
            url: raft_url.clone(),
            max_frame: self.max_frame,
            reports: Arc::clone(&self.reports),
            logger: self.logger.new(o!("peer" => id, "url" => raft_url.clone())),
            rx,
        };
        let task = self.runtime.spawn(task.run());
        self.peers.insert(
            id,
            PeerHandle {
                url: raft_url,
                queue,
                task,
            },
        );
    }

    /// Stops sending to peer `id`; what is queued for it is dropped without reports.
    pub fn remove_peer(&mut self, id: u64) {
        if let Some(peer) = self.peers.remove(&id) {
            // Aborting rather than closing the queue: the task may be inside a multi-second
            // timeout on a frozen peer, and its socket should go now.
            peer.task.abort();
        }
    }

    /// Queues each message for the peer named by its `to`. Never blocks. A message for an
    /// unknown peer is dropped and reported (once per peer per call).
    pub fn send(&mut self, msgs: Vec<Message>) {
        let mut reported: Vec<u64> = Vec::new();
        for msg in msgs {
            let to = msg.to;
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let queued = match self.peers.get(&to) {
                Some(peer) => peer.queue.send(msg).is_ok(),
                None => false,
            };
            if queued {
                continue;
            }
            if !reported.contains(&to) {
                reported.push(to);
                debug!(self.logger, "dropping a raft message for an unknown or stopped peer";
                    "to" => to);
                (self.reports)(Report::Unreachable(to));
            }
            if snapshot {
                (self.reports)(Report::Snapshot { to, ok: false });
            }
        }
    }

    /// The peers and their raft URLs, by id.
    pub fn peers(&self) -> Vec<(u64, String)> {
        let mut peers: Vec<_> = self
            .peers
            .iter()
            .map(|(id, peer)| (*id, peer.url.clone()))
            .collect();
        peers.sort_unstable();
        peers
    }
}

impl crate::env::Network for Transport {
    fn set_self_url(&mut self, url: String) {
        Transport::set_self_url(self, url);
    }

    fn add_peer(&mut self, id: u64, raft_url: String) {
        Transport::add_peer(self, id, raft_url);
    }

    fn remove_peer(&mut self, id: u64) {
        Transport::remove_peer(self, id);
    }

    fn send(&mut self, msgs: Vec<Message>) {
        Transport::send(self, msgs);
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        for peer in self.peers.values() {
            peer.task.abort();
        }
    }
}

/// A raft message encoded for the wire.
struct Outgoing {
    bytes: Vec<u8>,
    snapshot: bool,
}

/// The encoded size of one length-delimited field: tag, length, body.
fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// The size of a frame before its messages: the authenticated header and the `RaftBatch`'s
/// `from_url` field (absent when empty, as proto3 omits defaults).
fn header_len(from_url: &str) -> usize {
    let url = if from_url.is_empty() {
        0
    } else {
        field_len(from_url.len())
    };
    peer_auth::HEADER_LEN + url
}

/// Timeouts grow with the batch so that a large snapshot is not taken for a dead peer.
fn scaled(base: Duration, bytes: usize) -> Duration {
    base + TIMEOUT_PER_MIB * u32::try_from(bytes >> 20).unwrap_or(u32::MAX)
}

struct PeerTask {
    auth: Arc<PeerAuth>,
    self_url: String,
    peer: u64,
    url: String,
    max_frame: usize,
    reports: ReportSink,
    logger: Logger,
    rx: mpsc::UnboundedReceiver<Message>,
}

/// Encoded raft messages bound for one request.
struct Batch {
    messages: Vec<Vec<u8>>,
    snapshots: usize,
}

impl Batch {
    fn of(first: Outgoing) -> Self {
        Batch {
            snapshots: usize::from(first.snapshot),
            messages: vec![first.bytes],
        }
    }

    fn push(&mut self, next: Outgoing) {
        self.snapshots += usize::from(next.snapshot);
        self.messages.push(next.bytes);
    }
}

impl PeerTask {
    async fn run(mut self) {
        let mut socket: Option<ReqSocket> = None;
        let mut backoff = MIN_BACKOFF;
        // A message that did not fit in the previous batch; it goes first in the next one.
        let mut carry: Option<Outgoing> = None;
        // Logged at warning level only on the transition, so a long outage does not flood.
        let mut reachable = true;
        loop {
            let first = match carry.take() {
                Some(first) => first,
                None => match self.rx.recv().await {
                    Some(msg) => match self.encode(msg) {
                        Some(first) => first,
                        None => continue,
                    },
                    None => return,
                },
            };

            // Taken out so that any failure below drops it: zmq.rs never recovers a REQ that
            // failed or timed out mid-request.
            let mut live = match socket.take() {
                Some(live) => live,
                None => match connect(&self.url).await {
                    Ok(fresh) => fresh,
                    Err(err) => {
                        self.failed(usize::from(first.snapshot), &err, &mut reachable);
                        if !self.back_off(&mut backoff).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            // Filled after connecting, so what waited during the connect goes out now.
            let batch;
            (batch, carry) = self.fill(first);
            let sent = batch.messages.len();
            let snapshots = batch.snapshots;
            let payload = RaftBatch {
                messages: batch.messages,
                from_url: self.self_url.clone(),
            }
            .encode_to_vec();
            let (frame, header) = self.auth.seal_batch(self.peer, &payload);

            match exchange(&mut live, &self.url, frame, &header, &self.auth).await {
                Ok(RaftAck {
                    accepted,
                    sender_removed,
                }) => {
                    if sender_removed {
                        (self.reports)(Report::RemovedBy(self.peer));
                    }
                    socket = Some(live);
                    backoff = MIN_BACKOFF;
                    if !reachable {
                        info!(self.logger, "peer reachable again");
                        reachable = true;
                    }
                    // A batch the peer only partly took may have lost its snapshot: say so, and
                    // raft sends it again.
                    let whole = accepted as usize >= sent;
                    if !whole {
                        warn!(self.logger, "peer refused part of a batch";
                            "sent" => sent, "accepted" => accepted);
                    }
                    self.report_snapshots(snapshots, whole);
                }
                Err(err) => {
                    drop(live);
                    self.failed(snapshots, &err, &mut reachable);
                    if !self.back_off(&mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// Encodes a message, or drops and reports it if it can never fit in a frame.
    fn encode(&self, msg: Message) -> Option<Outgoing> {
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let bytes = match protobuf::Message::write_to_bytes(&msg) {
            Ok(bytes) => bytes,
            Err(err) => {
                error!(self.logger, "cannot encode a raft message; dropping it";
                    "type" => ?msg.get_msg_type(), "error" => %err);
                self.report_dropped(snapshot);
                return None;
            }
        };
        if header_len(&self.self_url) + field_len(bytes.len()) > self.max_frame {
            error!(self.logger, "raft message larger than the frame limit; dropping it";
                "type" => ?msg.get_msg_type(), "bytes" => bytes.len(), "max_frame" => self.max_frame);
            self.report_dropped(snapshot);
            return None;
        }
        Some(Outgoing { bytes, snapshot })
    }

    fn report_dropped(&self, snapshot: bool) {
        if snapshot {
            self.report_snapshots(1, false);
        } else {
            (self.reports)(Report::Unreachable(self.peer));
        }
    }

    fn report_snapshots(&self, count: usize, ok: bool) {
        for _ in 0..count {
            (self.reports)(Report::Snapshot { to: self.peer, ok });
        }
    }

    /// Adds what is queued to `first` while it fits in a frame; returns the batch and the first
    /// message that did not fit.
    fn fill(&mut self, first: Outgoing) -> (Batch, Option<Outgoing>) {
        let mut size = header_len(&self.self_url) + field_len(first.bytes.len());
        let mut batch = Batch::of(first);
        while let Ok(msg) = self.rx.try_recv() {
            let Some(next) = self.encode(msg) else {
                continue;
            };
            let grown = size + field_len(next.bytes.len());
            if grown > self.max_frame {
                return (batch, Some(next));
            }
            size = grown;
            batch.push(next);
        }
        (batch, None)
    }

    /// Reports a lost attempt: the peer once, and every snapshot that was in it.
    fn failed(&self, snapshots: usize, err: &TransportError, reachable: &mut bool) {
        if *reachable {
            warn!(self.logger, "peer unreachable; dropping its messages until it answers";
                "error" => %err);
            *reachable = false;
        } else {
            debug!(self.logger, "peer still unreachable"; "error" => %err);
        }
        (self.reports)(Report::Unreachable(self.peer));
        self.report_snapshots(snapshots, false);
    }

    /// Waits before the next connect attempt, dropping what is queued meanwhile: raft already
    /// knows the peer is unreachable and will resend, and holding the messages would only grow
    /// memory and send stale traffic later. Returns false when the transport dropped the queue.
    async fn back_off(&mut self, backoff: &mut Duration) -> bool {
        let deadline = tokio::time::Instant::now() + *backoff;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        let mut dropped = 0usize;
        let open = loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break true,
                msg = self.rx.recv() => match msg {
                    Some(msg) => {
                        dropped += 1;
                        // Raft waits for a verdict on every snapshot it sends.
                        if msg.get_msg_type() == MessageType::MsgSnapshot {
                            self.report_snapshots(1, false);
                        }
                    }
                    None => break false,
                },
            }
        };
        if dropped > 0 {
            debug!(self.logger, "dropped messages queued while backing off"; "count" => dropped);
        }
        open
    }
}

async fn connect(url: &str) -> Result<ReqSocket, TransportError> {
    let mut options = SocketOptions::default();
    options.connect_timeout(CONNECT_TIMEOUT);
    let mut socket = ReqSocket::with_options(options);
    match tokio::time::timeout(CONNECT_GUARD, socket.connect(url)).await {
        Ok(Ok(())) => Ok(socket),
        Ok(Err(source)) => Err(TransportError::Connect {
            endpoint: url.to_owned(),
            source,
        }),
        Err(_) => Err(TransportError::Timeout {
            endpoint: url.to_owned(),
            what: "connect",
            after: CONNECT_GUARD,
        }),
    }
}

/// One request and its acknowledgement (which must authenticate as the answer to `request`).
async fn exchange(
    socket: &mut ReqSocket,
    url: &str,
    payload: Vec<u8>,
    request: &Header,
    auth: &PeerAuth,
) -> Result<RaftAck, TransportError> {
    let len = payload.len();
    let send_timeout = scaled(SEND_TIMEOUT, len);
    match tokio::time::timeout(send_timeout, socket.send(ZmqMessage::from(payload))).await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(TransportError::Socket {
                endpoint: url.to_owned(),
                what: "send",
                source,
            });
        }
        Err(_) => {
            return Err(TransportError::Timeout {
                endpoint: url.to_owned(),
                what: "send",
                after: send_timeout,
            });
        }
    }
    let recv_timeout = scaled(RECV_TIMEOUT, len);
    let reply = match tokio::time::timeout(recv_timeout, socket.recv()).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(source)) => {
            return Err(TransportError::Socket {
                endpoint: url.to_owned(),
                what: "receive acknowledgement",
                source,
            });
        }
        Err(_) => {
            return Err(TransportError::Timeout {
                endpoint: url.to_owned(),
                what: "receive acknowledgement",
                after: recv_timeout,
            });
        }
    };
    let bad = |reason: String| TransportError::BadAck {
        endpoint: url.to_owned(),
        reason,
    };
    if reply.len() != 1 {
        return Err(bad(format!("{} frames, expected 1", reply.len())));
    }
    let frame = reply.get(0).map(Bytes::as_ref).unwrap_or_default();
    if frame.len() > MAX_ACK_FRAME {
        return Err(bad(format!("{} bytes", frame.len())));
    }
    let ack = auth
        .open_ack(request, frame)
        .map_err(|err| bad(err.to_string()))?;
    RaftAck::decode(ack).map_err(|err| bad(err.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Receiving side.

/// The receiving side of the peer transport: a guarded ROUTER ([`crate::guard`]).
pub struct Server {
    router: Router,
    handle: RouterHandle,
    auth: Arc<PeerAuth>,
    replays: ReplayGuard,
    deliver: Deliver,
    refuser: Arc<Refuser>,
    logger: Logger,
}

/// What the guard in front of the raft endpoint lets through (at most
/// [`MAX_PEER_CONNECTIONS`] connections; [`GuardConfig::max_connections`] may be lowered).
pub fn guard_config(max_frame: usize) -> GuardConfig {
    let max_frame = max_frame as u64;
    GuardConfig {
        name: "raft",
        limits: Limits {
            max_frame,
            // A REQ sends an empty delimiter and one payload frame.
            max_message: max_frame,
            max_frames_per_message: 2,
            socket_types: &["REQ"],
        },
        max_connections: MAX_PEER_CONNECTIONS,
        // A REQ has one request in flight.
        max_in_flight: 2,
        // One frame of the largest size and some room for the others.
        budget: max_frame + (32 << 20),
    }
}

impl Server {
    /// Binds `bind_url` behind a frame guard set up by `config` (see [`guard_config`]: frames
    /// larger than its limit close their connection before anything is allocated for them).
    /// Authenticated batches go to `deliver`; everything else is refused, counted and logged.
    pub async fn bind(
        bind_url: &str,
        config: GuardConfig,
        auth: Arc<PeerAuth>,
        deliver: Deliver,
        refuser: Arc<Refuser>,
        logger: Logger,
    ) -> Result<Server, TransportError> {
        let router = Router::bind(bind_url, config, Arc::clone(&refuser), logger.clone())
            .await
            .map_err(|e| TransportError::Bind {
                endpoint: bind_url.to_owned(),
                reason: e.to_string(),
            })?;
        let logger = logger.new(o!("raft_endpoint" => router.endpoint.clone()));
        Ok(Server {
            handle: router.handle(),
            router,
            auth,
            replays: ReplayGuard::new(),
            deliver,
            refuser,
            logger,
        })
    }

    /// The endpoint actually bound (with the port resolved when asked for port 0).
    pub fn endpoint(&self) -> &str {
        &self.router.endpoint
    }

    /// Serves until `shutdown` completes, then unbinds.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        info!(self.logger, "serving raft peers");
        loop {
            let received = tokio::select! {
                biased;
                () = &mut shutdown => break,
                received = self.router.recv() => received,
            };
            let Some(request) = received else {
                break;
            };
            let Some((identity, ack)) = self.handle(request).await else {
                continue;
            };
            if let Err(err) = self
                .handle
                .send(vec![identity, Bytes::new(), Bytes::from(ack)])
            {
                // The sender gave up or went away; its next request comes on a new connection.
                debug!(self.logger, "cannot reply to a raft peer"; "error" => %err);
            }
        }
        info!(self.logger, "raft endpoint shutting down");
    }

    /// Counts, logs and refuses what came from `identity`, and closes its connection: a peer
    /// that sends something unauthenticated is not a peer.
    fn refuse(&self, identity: &[u8], kind: &'static str, detail: &str) {
        self.refuser
            .refuse(&self.logger, kind, &guard::source_of(identity), detail);
        self.handle.close(identity);
    }

    /// Authenticates, decodes and checks one request; returns whom to answer and the sealed
    /// acknowledgement, or `None` when nothing may be answered (the connection is then closed).
    async fn handle(&mut self, request: Vec<Bytes>) -> Option<(Bytes, Vec<u8>)> {
        let mut frames = std::collections::VecDeque::from(request);
        let identity = frames.pop_front()?;
        let delimiter = frames.pop_front();
        let payload = frames.pop_front();
        let (Some(delimiter), Some(payload), None) = (delimiter, payload, frames.pop_front())
        else {
            self.refuse(&identity, "peer.bad_envelope", "not [delimiter, batch]");
            return None;
        };
        if !delimiter.is_empty() {
            self.refuse(&identity, "peer.bad_envelope", "no empty REQ delimiter");
            return None;
        }
        let (header, body) = match self.auth.open_batch(&payload) {
            Ok(opened) => opened,
            Err(refusal) => {
                self.refuse(&identity, refusal.kind(), &refusal.to_string());
                return None;
            }
        };
        if let Err(refusal) = self.replays.admit(&header) {
            self.refuse(&identity, refusal.kind(), &refusal.to_string());
            return None;
        }
        let batch = match RaftBatch::decode(body) {
            Ok(batch) => batch,
            Err(err) => {
                let detail = format!("undecodable RaftBatch from node {}: {err}", header.from);
                self.refuse(&identity, "peer.bad_batch", &detail);
                return None;
            }
        };
        let delivery = self.check(&header, batch).await;
        let accepted = u32::try_from(delivery.msgs.len()).unwrap_or(u32::MAX);
        let removed = !delivery.msgs.is_empty() && (self.deliver)(delivery);
        let ack = RaftAck {
            accepted,
            sender_removed: removed,
        }
        .encode_to_vec();
        Some((identity, self.auth.seal_ack(&header, &ack)))
    }

    /// Decodes every message of an authenticated batch and keeps those that pass the checks
    /// that need no raft state; a snapshot's data is decoded and checked on a blocking thread.
    async fn check(&self, header: &Header, batch: RaftBatch) -> Delivery {
        let from = header.from;
        let source = format!("node {from}");
        let mut msgs = Vec::with_capacity(batch.messages.len());
        let mut snapshot = None;
        for bytes in &batch.messages {
            let msg = match <Message as protobuf::Message>::parse_from_bytes(bytes) {
                Ok(msg) => msg,
                Err(err) => {
                    self.refuser.refuse(
                        &self.logger,
                        "raft.undecodable",
                        &source,
                        &err.to_string(),
                    );
                    continue;
                }
            };
            if let Err(refusal) = raft_check::check_envelope(&msg, from, self.auth.me()) {
                self.refuser
                    .refuse(&self.logger, refusal.kind(), &source, &refusal.to_string());
                continue;
            }
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                if snapshot.is_some() {
                    self.refuser.refuse(
                        &self.logger,
                        "raft.invariant",
                        &source,
                        "a second snapshot in one batch",
                    );
                    continue;
                }
                let cluster = self.auth.keys().cluster;
                let (checked, msg) = tokio::task::spawn_blocking(move || {
                    (raft_check::check_snapshot(&msg, cluster), msg)
                })
                .await
                .unwrap_or_else(|e| {
                    (
                        Err(format!("snapshot check failed: {e}")),
                        Message::default(),
                    )
                });
                match checked {
                    Ok(machine) => {
                        snapshot = Some(Box::new(machine));
                        msgs.push(msg);
                    }
                    Err(why) => {
                        self.refuser
                            .refuse(&self.logger, "raft.bad_snapshot", &source, &why);
                    }
                }
                continue;
            }
            msgs.push(msg);
        }
        Delivery {
            from,
            from_url: batch.from_url,
            msgs,
            snapshot,
        }
    }
}

/// Binds a guarded ROUTER on `bind_url` and hands every authenticated, checked batch of raft
/// messages to `deliver` until `shutdown` completes. Fails only if the endpoint cannot be bound.
pub async fn serve(
    bind_url: &str,
    config: GuardConfig,
    auth: Arc<PeerAuth>,
    deliver: Deliver,
    refuser: Arc<Refuser>,
    logger: Logger,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TransportError> {
    let server = Server::bind(bind_url, config, auth, deliver, refuser, logger).await?;
    server.run(shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyRing, Keys};
    use crate::refusals::Refusals;
    use std::time::Instant;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

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

    /// A snapshot whose state decodes (the receiver checks it).
    fn valid_snapshot_msg(to: u64) -> Message {
        let mut m = snapshot_msg(to, 0);
        let mut machine = Machine::new();
        machine.mark_applied(42, 3);
        m.mut_snapshot().set_data(machine.encode().into());
        m.mut_snapshot().mut_metadata().term = 3;
        m
    }

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
    async fn start_server(
        max_frame: usize,
    ) -> (String, Delivered, tokio::sync::oneshot::Sender<()>) {
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
        let server = Server::bind(
            "tcp://127.0.0.1:0",
            guard_config(max_frame),
            auth(2),
            deliver,
            refuser,
            logger(),
        )
        .await
        .expect("bind");
        let url = server.endpoint().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
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
            assert_eq!(transport.peers(), vec![(2, url)]);

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

            // A snapshot that arrives is reported as such.
            transport.send(vec![valid_snapshot_msg(2)]);
            let batch = collect(&mut delivered, 1).await;
            assert_eq!(batch[0].1[0].get_snapshot().get_metadata().index, 42);
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
                serve(
                    &server_url,
                    guard_config(MAX),
                    auth(2),
                    deliver,
                    refuser,
                    logger(),
                    async move {
                        let _ = stopped.await;
                    },
                )
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
            transport.send(vec![snapshot_msg(2, 10)]);
            let first = reports.recv().await;
            let second = reports.recv().await;
            assert_eq!(first, Some(Report::Unreachable(2)));
            assert_eq!(second, Some(Report::Snapshot { to: 2, ok: false }));
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
        let err = serve(
            &url,
            guard_config(MAX),
            auth(2),
            deliver,
            refuser,
            logger(),
            std::future::pending(),
        )
        .await
        .expect_err("address in use");
        assert!(matches!(err, TransportError::Bind { .. }));
        assert!(err.to_string().contains(&url), "{err}");
    }
}
