//! The sending side of the peer transport: a task per peer, each with one long-lived REQ socket,
//! batching what was queued while its previous request was in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::{Message, MessageType};
use slog::{Logger, debug, error, info, o, warn};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zeromq::{ReqSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use super::{Report, ReportSink, TransportError};
use crate::peer_auth::{self, Header, PeerAuth};
use crate::proto::{ChunkAck, RaftAck, RaftBatch, SnapshotChunk};
use crate::snapshot::SnapshotStore;
use crate::snapshot_stream::{Step, Transfer};

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
/// A `RaftAck` is a few bytes after its authenticated header (and a chunk answer's reason);
/// anything larger is not one.
const MAX_ACK_FRAME: usize = peer_auth::HEADER_LEN + 64 + crate::snapshot_stream::MAX_DETAIL;
/// How often a sender asks a receiver that is checking a snapshot file whether it is done.
const CHECK_POLL: Duration = Duration::from_millis(20);
/// Room a snapshot chunk takes in a request beyond its bytes.
const CHUNK_OVERHEAD: usize = 128;

/// Where snapshot files are sent from, and how fast.
#[derive(Clone)]
struct SnapshotSource {
    store: Arc<SnapshotStore>,
    /// Bytes per second.
    rate: u64,
}

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
    snapshots: Option<SnapshotSource>,
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
            snapshots: None,
        }
    }

    /// Sends snapshot files from `store` to peers that need one, at most `rate` bytes per second
    /// per peer (see the [module docs](super)); without it, snapshot messages are dropped and
    /// reported failed. Applies to peers added from now on.
    pub fn send_snapshots_from(&mut self, store: Arc<SnapshotStore>, rate: u64) {
        self.snapshots = Some(SnapshotSource {
            store,
            rate: rate.max(1),
        });
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
            snapshots: self.snapshots.clone(),
            sending: None,
            ready: None,
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
pub(super) fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// The size of a frame before its messages: the authenticated header and the `RaftBatch`'s
/// `from_url` field (absent when empty, as proto3 omits defaults).
pub(super) fn header_len(from_url: &str) -> usize {
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
    snapshots: Option<SnapshotSource>,
    /// The snapshot file being streamed to the peer.
    sending: Option<Sending>,
    /// A snapshot message whose file the peer holds: it goes first in the next request.
    ready: Option<Outgoing>,
}

/// A snapshot file being streamed, and when its next chunk may go.
struct Sending {
    transfer: Transfer,
    due: tokio::time::Instant,
    started: std::time::Instant,
}

/// Encoded raft messages bound for one request.
#[derive(Default)]
struct Batch {
    messages: Vec<Vec<u8>>,
    snapshots: usize,
}

impl Batch {
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
            let first = match self.ready.take().or_else(|| carry.take()) {
                Some(first) => Some(first),
                None => match self.sending.as_ref().map(|s| s.due) {
                    // A snapshot is being streamed: a request goes when a message is queued or
                    // when the next chunk is due, whichever is first.
                    Some(due) => tokio::select! {
                        biased;
                        msg = self.rx.recv() => match msg {
                            Some(msg) => self.encode(msg),
                            None => return,
                        },
                        () = tokio::time::sleep_until(due) => None,
                    },
                    None => match self.rx.recv().await {
                        Some(msg) => match self.encode(msg) {
                            Some(first) => Some(first),
                            None => continue,
                        },
                        None => return,
                    },
                },
            };
            let chunk_due = self
                .sending
                .as_ref()
                .is_some_and(|s| s.due <= tokio::time::Instant::now());
            if first.is_none() && !chunk_due {
                continue;
            }
            let first_is_snapshot = first.as_ref().is_some_and(|f| f.snapshot);

            // Taken out so that any failure below drops it: zmq.rs never recovers a REQ that
            // failed or timed out mid-request.
            let mut live = match socket.take() {
                Some(live) => live,
                None => match connect(&self.url).await {
                    Ok(fresh) => fresh,
                    Err(err) => {
                        self.failed(usize::from(first_is_snapshot), &err, &mut reachable);
                        if chunk_due {
                            self.chunk_lost();
                        }
                        if !self.back_off(&mut backoff).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            // Filled after connecting, so what waited during the connect goes out now.
            let chunk = if chunk_due { self.next_chunk() } else { None };
            let reserve = chunk.as_ref().map_or(0, |c| c.data.len() + CHUNK_OVERHEAD);
            let batch;
            (batch, carry) = self.fill(first, reserve);
            if batch.messages.is_empty() && chunk.is_none() {
                socket = Some(live);
                continue;
            }
            let sent = batch.messages.len();
            let snapshots = batch.snapshots;
            let had_chunk = chunk.is_some();
            let sent_at = tokio::time::Instant::now();
            let chunk_len = chunk.as_ref().map_or(0, |c| c.data.len());
            let chunk_of = chunk.as_ref().map(|c| (c.index, c.term, c.size, c.crc));
            let payload = RaftBatch {
                messages: batch.messages,
                from_url: self.self_url.clone(),
                chunk,
            }
            .encode_to_vec();
            let (frame, header) = self.auth.seal_batch(self.peer, &payload);

            match exchange(&mut live, &self.url, frame, &header, &self.auth).await {
                Ok(RaftAck {
                    accepted,
                    sender_removed,
                    chunk: answer,
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
                    // The answer is for the transfer the chunk came from (filling the request may
                    // have started another).
                    let same = self.sending.as_ref().map(|s| {
                        let d = s.transfer.descriptor();
                        (d.index, d.term, d.size, d.crc)
                    }) == chunk_of;
                    if had_chunk && same {
                        self.chunk_answered(answer.as_ref(), sent_at, chunk_len);
                    }
                }
                Err(err) => {
                    drop(live);
                    self.failed(snapshots, &err, &mut reachable);
                    if had_chunk {
                        self.chunk_lost();
                    }
                    if !self.back_off(&mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// Starts streaming the file of a snapshot message to the peer (replacing, and reporting
    /// failed, a transfer of an older one).
    fn start_transfer(&mut self, msg: Message) {
        let Some(source) = &self.snapshots else {
            warn!(
                self.logger,
                "no snapshot files to send; dropping a snapshot message"
            );
            self.report_snapshots(1, false);
            return;
        };
        let transfer = match Transfer::new(msg) {
            Ok(transfer) => transfer,
            Err(why) => {
                error!(self.logger, "cannot send a snapshot: {why}");
                self.report_snapshots(1, false);
                return;
            }
        };
        let desc = transfer.descriptor();
        if let Some(old) = self.sending.take() {
            if old.transfer.descriptor() == desc {
                // raft asked again for the same file: go on where the transfer is (one report
                // goes back when it ends).
                self.sending = Some(old);
                return;
            }
            self.report_snapshots(1, false);
        }
        info!(self.logger, "sending a snapshot"; "index" => desc.index, "term" => desc.term,
            "bytes" => desc.size, "mib_per_s" => source.rate >> 20);
        self.sending = Some(Sending {
            transfer,
            due: tokio::time::Instant::now(),
            started: std::time::Instant::now(),
        });
    }

    /// The chunk to send now, or `None` (and the transfer given up) if the file cannot be read.
    fn next_chunk(&mut self) -> Option<SnapshotChunk> {
        let (Some(sending), Some(source)) = (self.sending.as_mut(), self.snapshots.as_ref()) else {
            return None;
        };
        // Room for the chunk beside a message or two in the frame.
        let max_len = self
            .max_frame
            .saturating_sub(header_len(&self.self_url) + CHUNK_OVERHEAD + 4096);
        match sending.transfer.chunk(&source.store, max_len) {
            Ok(chunk) => Some(chunk),
            Err(why) => {
                error!(self.logger, "cannot send a snapshot: {why}";
                    "index" => sending.transfer.descriptor().index);
                self.sending = None;
                self.report_snapshots(1, false);
                None
            }
        }
    }

    /// What the peer answered to a chunk.
    fn chunk_answered(
        &mut self,
        answer: Option<&ChunkAck>,
        sent_at: tokio::time::Instant,
        chunk_len: usize,
    ) {
        let (Some(sending), Some(source)) = (self.sending.as_mut(), self.snapshots.as_ref()) else {
            return;
        };
        match sending.transfer.answer(answer) {
            Step::Send => {
                let pace = Duration::from_secs_f64(chunk_len as f64 / source.rate as f64);
                sending.due = sent_at + pace;
            }
            Step::Wait => sending.due = tokio::time::Instant::now() + CHECK_POLL,
            Step::Ready(msg) => {
                let desc = sending.transfer.descriptor();
                let secs = sending.started.elapsed().as_secs_f64();
                info!(self.logger, "snapshot file delivered; sending the snapshot message";
                    "index" => desc.index, "bytes" => desc.size,
                    "sent_bytes" => sending.transfer.sent(), "ms" => (secs * 1e3) as u64,
                    "mib_per_s" => format!("{:.0}", desc.size as f64 / secs.max(1e-6) / 1048576.0));
                self.sending = None;
                match protobuf::Message::write_to_bytes(&msg) {
                    Ok(bytes) => {
                        self.ready = Some(Outgoing {
                            bytes,
                            snapshot: true,
                        })
                    }
                    Err(err) => {
                        error!(self.logger, "cannot encode a snapshot message"; "error" => %err);
                        self.report_snapshots(1, false);
                    }
                }
            }
            Step::Failed(why) => {
                warn!(self.logger, "snapshot transfer failed: {why}";
                    "index" => sending.transfer.descriptor().index);
                self.sending = None;
                self.report_snapshots(1, false);
            }
        }
    }

    /// A request with a chunk was lost: the transfer resumes where the peer is, or is given up
    /// after too many losses in a row.
    fn chunk_lost(&mut self) {
        let Some(sending) = self.sending.as_mut() else {
            return;
        };
        if sending.transfer.lost() {
            warn!(self.logger, "giving up a snapshot transfer after repeated failures";
                "index" => sending.transfer.descriptor().index,
                "sent_bytes" => sending.transfer.sent());
            self.sending = None;
            self.report_snapshots(1, false);
        } else {
            sending.due = tokio::time::Instant::now() + MIN_BACKOFF;
        }
    }

    /// Encodes a message, or drops and reports it if it can never fit in a frame. A snapshot
    /// message starts streaming its file instead (it is sent once the file is there).
    fn encode(&mut self, msg: Message) -> Option<Outgoing> {
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        if snapshot {
            self.start_transfer(msg);
            return None;
        }
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

    /// Adds what is queued to `first` while it fits in a frame (with `reserve` bytes left for a
    /// snapshot chunk); returns the batch and the first message that did not fit.
    fn fill(&mut self, first: Option<Outgoing>, reserve: usize) -> (Batch, Option<Outgoing>) {
        let mut size = header_len(&self.self_url) + reserve;
        let mut batch = Batch::default();
        if let Some(first) = first {
            size += field_len(first.bytes.len());
            batch.push(first);
        }
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
