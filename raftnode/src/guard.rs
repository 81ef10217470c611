//! The frame guard: the project's own ZeroMQ listener, with every limit checked before anything
//! is allocated.
//!
//! zmq.rs reserves memory for whatever length a frame header announces, before the frame's bytes
//! arrive, so one header announcing an enormous length aborts the process; it also buffers any
//! number of frames of a multipart message, answers a handshake with no time limit, and lets a
//! peer pick the identity that replies are routed by (a second connection claiming an identity
//! takes over the first one's replies). So no zmq.rs socket listens on the network: each endpoint
//! is a [`Router`] of ours, speaking the server side of ZMTP 3.0 (NULL mechanism) to zmq.rs's REQ
//! and DEALER sockets, the way a ZeroMQ ROUTER does, and reading the stream a client sends with
//! [`Reader`]:
//!
//! - the greeting must be ZMTP 3 with the NULL mechanism, and the greeting and READY must arrive
//!   within [`HANDSHAKE_TIMEOUT`]; the READY must name an allowed socket type;
//! - every frame header is checked against the endpoint's frame limit, and every message against
//!   its size and frame-count limits, before a byte of the frame is buffered: a connection that
//!   announces too much is closed;
//! - the bytes announced for frames larger than [`FREE_FRAME_BYTES`] are reserved from a budget
//!   shared by all connections of the endpoint before the frame is buffered, and released when
//!   its message is complete; a frame must arrive at a minimum rate ([`frame_deadline`]), so the
//!   budget cannot be held by slow senders;
//! - every connection gets an identity of the router's choosing (`<source address>#<n>`): replies
//!   are routed by it, so no client can receive another's replies, and refusals name the source;
//! - at most `max_connections` connections are kept; a new one beyond that closes the one that
//!   has been idle longest (the node's peers and clients reconnect by themselves);
//! - commands after the handshake and reserved flag bits close the connection; a client that does
//!   not read its replies is closed after [`WRITE_TIMEOUT`].
//!
//! The server behind the router can close a connection by its identity ([`RouterHandle::close`]),
//! e.g. after a frame from it failed authentication.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use slog::{Logger, debug, info};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::AbortHandle;

use crate::refusals::Refuser;

/// The most bytes a READY command may have (ours are well under 100).
const MAX_COMMAND: usize = 1024;

/// Frames up to this size are not reserved from the shared budget: a connection holds at most
/// `max_frames_per_message` of them, covered by the connection cap.
pub const FREE_FRAME_BYTES: u64 = 16 * 1024;

/// How long a new connection may take to send its greeting and READY.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a connection may wait for room in the shared budget before it is closed.
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// How long writing one reply to a client may take before the connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Replies queued for one connection; beyond this a reply is dropped (a REQ has one request in
/// flight, a DEALER client a few).
const REPLY_QUEUE: usize = 64;

/// Complete messages from all connections waiting for the server (each connection waits when it
/// is full: TCP's own back-pressure then slows the senders).
const INCOMING_QUEUE: usize = 1024;

/// A frame of `bytes` must have fully arrived within this time of its header: 5 s plus one
/// second per MiB (1 MiB/s is far below any link a cluster runs on).
pub fn frame_deadline(bytes: u64) -> Duration {
    Duration::from_secs(5) + Duration::from_secs(bytes >> 20)
}

/// What one endpoint accepts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest frame.
    pub max_frame: u64,
    /// The largest message (all frames of a multipart message).
    pub max_message: u64,
    /// The most frames in one message.
    pub max_frames_per_message: u32,
    /// The ZMTP socket types a client may connect as (e.g. `REQ`).
    pub socket_types: &'static [&'static str],
}

/// Why the guard closed a connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The first 64 bytes are not a ZMTP 3 greeting with the NULL mechanism.
    #[error("bad greeting: {0}")]
    Greeting(&'static str),
    /// The handshake command is not an acceptable READY.
    #[error("bad handshake: {0}")]
    Handshake(String),
    /// A frame header announced more than the limit.
    #[error("frame of {announced} bytes announced; the limit is {limit}")]
    FrameTooLarge {
        /// What the header said.
        announced: u64,
        /// The endpoint's limit.
        limit: u64,
    },
    /// A multipart message grew past the limit.
    #[error("message of at least {announced} bytes; the limit is {limit}")]
    MessageTooLarge {
        /// What its frames announced so far.
        announced: u64,
        /// The endpoint's limit.
        limit: u64,
    },
    /// A multipart message has too many frames.
    #[error("message of more than {0} frames")]
    TooManyFrames(u32),
    /// A frame header with flag bits ZMTP reserves, or a command after the handshake.
    #[error("frame flags {0:#04x} are not allowed")]
    Flags(u8),
}

impl GuardError {
    /// The refusal counter this error counts under.
    pub fn kind(&self) -> &'static str {
        match self {
            GuardError::Greeting(_) | GuardError::Handshake(_) => "frame.bad_handshake",
            GuardError::FrameTooLarge { .. } | GuardError::MessageTooLarge { .. } => {
                "frame.too_large"
            }
            GuardError::TooManyFrames(_) => "frame.too_many_parts",
            GuardError::Flags(_) => "frame.bad_flags",
        }
    }
}

#[derive(Debug)]
enum State {
    Greeting,
    Ready,
    Header,
    /// A large frame's header has passed; its bytes wait for a reservation.
    Reserving {
        size: u64,
        more: bool,
    },
    Body {
        frame: BytesMut,
        remaining: u64,
        more: bool,
    },
}

/// What one call of [`Reader::feed`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input consumed.
    pub consumed: usize,
    /// A frame's header announced this many bytes: reserve them, then call
    /// [`Reader::reserved`] before feeding more.
    pub reserve: u64,
}

/// The guard's reading of one client's ZMTP stream: bytes in, complete messages out. Pure (no
/// I/O), so it is unit-tested and fuzzed on its own.
#[derive(Debug)]
pub struct Reader {
    limits: Limits,
    state: State,
    /// A greeting, command or frame header received in part (at most `MAX_COMMAND + 9` bytes).
    partial: Vec<u8>,
    /// The frames of the message being received.
    message: Vec<Bytes>,
    message_bytes: u64,
}

impl Reader {
    /// A reader for a new connection.
    pub fn new(limits: Limits) -> Reader {
        Reader {
            limits,
            state: State::Greeting,
            partial: Vec::with_capacity(64),
            message: Vec::new(),
            message_bytes: 0,
        }
    }

    /// Whether the greeting and READY have arrived.
    pub fn handshake_done(&self) -> bool {
        !matches!(self.state, State::Greeting | State::Ready)
    }

    /// The size of the frame being received, if its bytes are awaited (its deadline runs).
    pub fn in_frame(&self) -> Option<u64> {
        match &self.state {
            State::Body {
                frame, remaining, ..
            } => Some(frame.len() as u64 + remaining),
            State::Reserving { size, .. } => Some(*size),
            _ => None,
        }
    }

    /// The reservation [`Fed::reserve`] asked for is granted: the frame's bytes may be buffered.
    pub fn reserved(&mut self) {
        if let State::Reserving { size, more } = self.state {
            // `size` passed the frame limit, and the bytes are reserved from the shared budget.
            let frame = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
            self.state = State::Body {
                frame,
                remaining: size,
                more,
            };
        }
    }

    /// Consumes a prefix of `input` and appends the message it completes (at most one) to
    /// `out`. It stops right after a message, and right after a frame header that needs a
    /// reservation ([`Fed::reserve`]).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Vec<Bytes>>) -> Result<Fed, GuardError> {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match &mut self.state {
                State::Greeting => {
                    pos += self.fill(rest, 64);
                    if self.partial.len() == 64 {
                        check_greeting(&self.partial)?;
                        self.partial.clear();
                        self.state = State::Ready;
                    }
                }
                State::Ready => {
                    pos += self.fill(rest, 1);
                    let header = match self.partial[0] {
                        0x04 => 2,
                        0x06 => 9,
                        other => {
                            return Err(GuardError::Handshake(format!(
                                "expected the READY command, got a frame with flags {other:#04x}"
                            )));
                        }
                    };
                    pos += self.fill(&input[pos..], header);
                    if self.partial.len() < header {
                        continue;
                    }
                    let size = frame_size(&self.partial[..header]);
                    if size > MAX_COMMAND as u64 {
                        return Err(GuardError::Handshake(format!(
                            "a handshake command of {size} bytes"
                        )));
                    }
                    let total = header + size as usize;
                    pos += self.fill(&input[pos..], total);
                    if self.partial.len() == total {
                        self.check_ready(header)?;
                        self.partial.clear();
                        self.state = State::Header;
                    }
                }
                State::Header => {
                    pos += self.fill(rest, 1);
                    let flags = self.partial[0];
                    if flags & !0b11 != 0 {
                        return Err(GuardError::Flags(flags));
                    }
                    let header_len = if flags & 0b10 != 0 { 9 } else { 2 };
                    pos += self.fill(&input[pos..], header_len);
                    if self.partial.len() < header_len {
                        continue;
                    }
                    let size = frame_size(&self.partial[..header_len]);
                    let more = flags & 1 != 0;
                    self.partial.clear();
                    self.check_frame(size)?;
                    if size > FREE_FRAME_BYTES {
                        self.state = State::Reserving { size, more };
                        return Ok(Fed {
                            consumed: pos,
                            reserve: size,
                        });
                    }
                    self.state = State::Body {
                        frame: BytesMut::with_capacity(size as usize),
                        remaining: size,
                        more,
                    };
                    if size == 0 && self.end_frame(out) {
                        break;
                    }
                }
                State::Reserving { .. } => {
                    // The caller feeds on only after `reserved`.
                    return Ok(Fed {
                        consumed: pos,
                        reserve: 0,
                    });
                }
                State::Body {
                    frame, remaining, ..
                } => {
                    let take = rest
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    frame.extend_from_slice(&rest[..take]);
                    pos += take;
                    *remaining -= take as u64;
                    if *remaining == 0 && self.end_frame(out) {
                        // One message at a time: the caller decides whether to take the next.
                        break;
                    }
                }
            }
        }
        Ok(Fed {
            consumed: pos,
            reserve: 0,
        })
    }

    /// Moves bytes from `input` into `partial` until it holds `want`; returns how many it took.
    fn fill(&mut self, input: &[u8], want: usize) -> usize {
        let take = want.saturating_sub(self.partial.len()).min(input.len());
        self.partial.extend_from_slice(&input[..take]);
        take
    }

    /// Checks the buffered READY command: the first command, naming an allowed socket type.
    fn check_ready(&self, header: usize) -> Result<(), GuardError> {
        let body = &self.partial[header..];
        let bad = |why: &str| GuardError::Handshake(why.to_string());
        let (&name_len, rest) = body.split_first().ok_or_else(|| bad("empty command"))?;
        let name_len = name_len as usize;
        if rest.len() < name_len || &rest[..name_len] != b"READY" {
            return Err(bad("the first command is not READY"));
        }
        let mut props = &rest[name_len..];
        let mut socket_type: Option<&[u8]> = None;
        while !props.is_empty() {
            let (&len, rest) = props
                .split_first()
                .ok_or_else(|| bad("truncated property"))?;
            let len = len as usize;
            if rest.len() < len + 4 {
                return Err(bad("truncated property"));
            }
            let (name, rest) = rest.split_at(len);
            let value_len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let rest = &rest[4..];
            if rest.len() < value_len {
                return Err(bad("truncated property value"));
            }
            let (value, rest) = rest.split_at(value_len);
            if name.eq_ignore_ascii_case(b"Socket-Type") {
                socket_type = Some(value);
            }
            props = rest;
        }
        let socket_type = socket_type.ok_or_else(|| bad("READY without a Socket-Type"))?;
        if self
            .limits
            .socket_types
            .iter()
            .any(|allowed| allowed.as_bytes() == socket_type)
        {
            Ok(())
        } else {
            Err(GuardError::Handshake(format!(
                "socket type {:?} is not served here (allowed: {:?})",
                String::from_utf8_lossy(socket_type),
                self.limits.socket_types
            )))
        }
    }

    fn check_frame(&mut self, size: u64) -> Result<(), GuardError> {
        if size > self.limits.max_frame {
            return Err(GuardError::FrameTooLarge {
                announced: size,
                limit: self.limits.max_frame,
            });
        }
        if self.message.len() as u32 >= self.limits.max_frames_per_message {
            return Err(GuardError::TooManyFrames(
                self.limits.max_frames_per_message,
            ));
        }
        self.message_bytes = self.message_bytes.saturating_add(size);
        if self.message_bytes > self.limits.max_message {
            return Err(GuardError::MessageTooLarge {
                announced: self.message_bytes,
                limit: self.limits.max_message,
            });
        }
        Ok(())
    }

    /// The frame being received is complete: into the message, and the message out if it was
    /// the last frame (then true).
    fn end_frame(&mut self, out: &mut Vec<Vec<Bytes>>) -> bool {
        let state = std::mem::replace(&mut self.state, State::Header);
        if let State::Body { frame, more, .. } = state {
            self.message.push(frame.freeze());
            if !more {
                out.push(std::mem::take(&mut self.message));
                self.message_bytes = 0;
                return true;
            }
        }
        false
    }
}

/// The size a complete frame header (flags and 1 or 8 length bytes) announces.
fn frame_size(header: &[u8]) -> u64 {
    match header {
        [_, short] => u64::from(*short),
        [_, long @ ..] if long.len() == 8 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(long);
            u64::from_be_bytes(be)
        }
        _ => 0,
    }
}

fn check_greeting(g: &[u8]) -> Result<(), GuardError> {
    if g[0] != 0xff || g[9] != 0x7f {
        return Err(GuardError::Greeting("not a ZMTP signature"));
    }
    if g[10] != 3 {
        return Err(GuardError::Greeting("not ZMTP version 3"));
    }
    let mechanism = &g[12..32];
    if &mechanism[..4] != b"NULL" || mechanism[4..].iter().any(|&b| b != 0) {
        return Err(GuardError::Greeting("only the NULL mechanism is served"));
    }
    Ok(())
}

/// What the router says first: a ZMTP 3.0 greeting (NULL mechanism, as server) and its READY.
fn handshake() -> Vec<u8> {
    let mut out = vec![0u8; 64];
    out[0] = 0xff;
    out[9] = 0x7f;
    out[10] = 3;
    out[12..16].copy_from_slice(b"NULL");
    out[32] = 1;
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&6u32.to_be_bytes());
    body.extend_from_slice(b"ROUTER");
    out.push(0x04);
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    out
}

/// A message as ZMTP frames: each part with its flags (MORE on all but the last, LONG past 255
/// bytes) and length.
pub fn encode_message(parts: &[Bytes]) -> Vec<u8> {
    let total: usize = parts.iter().map(|p| p.len() + 9).sum();
    let mut out = Vec::with_capacity(total);
    for (i, part) in parts.iter().enumerate() {
        let more = u8::from(i + 1 < parts.len());
        if part.len() > 255 {
            out.push(0x02 | more);
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        } else {
            out.push(more);
            out.push(part.len() as u8);
        }
        out.extend_from_slice(part);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The router.

/// How one endpoint's router is set up.
#[derive(Clone, Debug)]
pub struct GuardConfig {
    /// Names the endpoint in logs and counters (`client`, `raft`).
    pub name: &'static str,
    /// What each connection may send.
    pub limits: Limits,
    /// Connections kept at once.
    pub max_connections: usize,
    /// Bytes of large frames in flight at once, over all connections (at least `max_message`).
    pub budget: u64,
    /// Messages of one connection the server may hold unanswered: past this the connection is
    /// not read until an answer goes out, so one client cannot crowd out the others (TCP's
    /// back-pressure slows it down).
    pub max_in_flight: usize,
}

/// One live connection, as the router's table holds it.
struct Conn {
    abort: AbortHandle,
    replies: mpsc::Sender<Vec<Bytes>>,
    /// Dropped with the connection: what [`RouterHandle::closed`] waits for.
    gone: tokio::sync::watch::Sender<()>,
    /// Its messages handed to the server and not answered yet.
    in_flight: Arc<AtomicUsize>,
    /// Milliseconds since the router started, at its last complete message (or its start).
    last_active: Arc<AtomicU64>,
}

/// Why a reply could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No connection has that identity (it closed).
    #[error("the connection is gone")]
    Gone,
    /// The connection has too many replies queued (it does not read them).
    #[error("the connection's reply queue is full")]
    Full,
    /// A reply needs an identity and at least one frame.
    #[error("a reply needs an identity frame and a message")]
    Empty,
}

/// Sends replies and closes connections; cheap to clone.
#[derive(Clone)]
pub struct RouterHandle {
    conns: Arc<Mutex<HashMap<Bytes, Conn>>>,
}

impl RouterHandle {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, Conn>> {
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a reply: `frames[0]` is the connection's identity, the rest the message (a REQ
    /// expects an empty delimiter before its payload).
    pub fn send(&self, mut frames: Vec<Bytes>) -> Result<(), SendError> {
        if frames.len() < 2 {
            return Err(SendError::Empty);
        }
        let identity = frames.remove(0);
        let table = self.table();
        let conn = table.get(&identity).ok_or(SendError::Gone)?;
        // Answered (or dropped): the connection may be read again.
        let _ = conn
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        conn.replies.try_send(frames).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Gone,
        })
    }

    /// Closes the connection whose identity is `identity` (if it is still open). Returns
    /// whether there was one.
    pub fn close(&self, identity: &[u8]) -> bool {
        match self.table().remove(identity) {
            Some(conn) => {
                conn.abort.abort();
                true
            }
            None => false,
        }
    }

    /// Resolves when the connection with this identity has closed (at once if it has).
    pub fn closed(&self, identity: &[u8]) -> impl std::future::Future<Output = ()> + use<> {
        let watch = self.table().get(identity).map(|c| c.gone.subscribe());
        async move {
            if let Some(mut watch) = watch {
                while watch.changed().await.is_ok() {}
            }
        }
    }

    /// How many connections are open.
    pub fn connections(&self) -> usize {
        self.table().len()
    }
}

/// The source address an identity names (for logs), or the identity itself.
pub fn source_of(identity: &[u8]) -> String {
    let text = String::from_utf8_lossy(identity);
    match text.rsplit_once('#') {
        Some((addr, _)) => addr.to_string(),
        None => text.into_owned(),
    }
}

/// The host (IP address, without the port) an identity names: what per-address limits count.
pub fn host_of(identity: &[u8]) -> String {
    let source = source_of(identity);
    match source.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_string(),
        _ => source,
    }
}

/// A guarded ROUTER endpoint: receive messages (`[identity, frames...]`, as a ZeroMQ ROUTER
/// gives them), answer through [`Router::handle`]. Dropping it stops accepting and closes every
/// connection.
pub struct Router {
    /// The `tcp://` endpoint actually bound (port resolved).
    pub endpoint: String,
    incoming: mpsc::Receiver<Vec<Bytes>>,
    handle: RouterHandle,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for Router {
    fn drop(&mut self) {
        self.accept_task.abort();
        for (_, conn) in self.handle.table().drain() {
            conn.abort.abort();
        }
    }
}

impl Router {
    /// Binds `endpoint` (`tcp://host:port`; port 0 picks one) and starts accepting.
    pub async fn bind(
        endpoint: &str,
        config: GuardConfig,
        refuser: Arc<Refuser>,
        logger: Logger,
    ) -> io::Result<Router> {
        let listener = bind_tcp(endpoint).await?;
        let bound = listener.local_addr()?;
        let host = endpoint
            .strip_prefix("tcp://")
            .and_then(|r| r.rsplit_once(':'))
            .map_or("127.0.0.1", |(h, _)| h);
        let endpoint = format!("tcp://{host}:{}", bound.port());
        let (tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let handle = RouterHandle {
            conns: Arc::new(Mutex::new(HashMap::new())),
        };
        let permits = usize::try_from(config.budget.max(config.limits.max_message))
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        info!(logger, "endpoint guarded"; "endpoint" => &endpoint, "name" => config.name,
            "max_frame" => config.limits.max_frame, "max_connections" => config.max_connections);
        let acceptor = Acceptor {
            listener,
            config,
            refuser,
            logger,
            handle: handle.clone(),
            budget: Arc::new(Semaphore::new(permits)),
            started: Instant::now(),
            incoming: tx,
        };
        let accept_task = tokio::spawn(acceptor.run());
        Ok(Router {
            endpoint,
            incoming,
            handle,
            accept_task,
        })
    }

    /// The next message from any connection: its identity, then its frames.
    pub async fn recv(&mut self) -> Option<Vec<Bytes>> {
        self.incoming.recv().await
    }

    /// For replying and closing connections.
    pub fn handle(&self) -> RouterHandle {
        self.handle.clone()
    }
}

/// Accepts connections and starts a task for each.
struct Acceptor {
    listener: TcpListener,
    config: GuardConfig,
    refuser: Arc<Refuser>,
    logger: Logger,
    handle: RouterHandle,
    budget: Arc<Semaphore>,
    started: Instant,
    incoming: mpsc::Sender<Vec<Bytes>>,
}

impl Acceptor {
    async fn run(self) {
        let mut number: u64 = 0;
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause so the loop cannot spin.
                    self.refuser.refuse(
                        &self.logger,
                        "conn.accept_failed",
                        self.config.name,
                        &e.to_string(),
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            number += 1;
            let identity = Bytes::from(format!("{peer}#{number}"));
            self.make_room(&peer);
            let last_active = Arc::new(AtomicU64::new(self.started.elapsed().as_millis() as u64));
            let in_flight = Arc::new(AtomicUsize::new(0));
            let (replies_tx, replies) = mpsc::channel(REPLY_QUEUE);
            let connection = Connection {
                identity: identity.clone(),
                peer,
                config: self.config.clone(),
                refuser: Arc::clone(&self.refuser),
                logger: self.logger.clone(),
                budget: Arc::clone(&self.budget),
                last_active: Arc::clone(&last_active),
                in_flight: Arc::clone(&in_flight),
                started: self.started,
                handle: self.handle.clone(),
                incoming: self.incoming.clone(),
            };
            // Registered before the task can run, so its own removal always finds it.
            let mut table = self.handle.table();
            let task = tokio::spawn(connection.run(stream, replies));
            table.insert(
                identity,
                Conn {
                    abort: task.abort_handle(),
                    replies: replies_tx,
                    gone: tokio::sync::watch::channel(()).0,
                    in_flight,
                    last_active,
                },
            );
        }
    }

    /// At the connection cap, closes the connection idle longest.
    fn make_room(&self, newcomer: &SocketAddr) {
        let mut conns = self.handle.table();
        if conns.len() < self.config.max_connections {
            return;
        }
        let idlest = conns
            .iter()
            .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed))
            .map(|(id, _)| id.clone());
        if let Some(id) = idlest
            && let Some(conn) = conns.remove(&id)
        {
            conn.abort.abort();
            drop(conns);
            let detail = format!(
                "{} connections open (the limit); closed the one idle longest, {}, for {newcomer}",
                self.config.max_connections,
                source_of(&id)
            );
            self.refuser
                .refuse(&self.logger, "conn.evicted", self.config.name, &detail);
        }
    }
}

/// One connection: the client's stream read through a [`Reader`], replies written back.
struct Connection {
    identity: Bytes,
    peer: SocketAddr,
    config: GuardConfig,
    refuser: Arc<Refuser>,
    logger: Logger,
    budget: Arc<Semaphore>,
    last_active: Arc<AtomicU64>,
    /// Its messages the server holds unanswered.
    in_flight: Arc<AtomicUsize>,
    started: Instant,
    handle: RouterHandle,
    incoming: mpsc::Sender<Vec<Bytes>>,
}

/// Why a connection ended, when it was not simply closed by either side.
enum Ended {
    Closed,
    Refused(&'static str, String),
}

impl Connection {
    async fn run(self, stream: TcpStream, replies: mpsc::Receiver<Vec<Bytes>>) {
        let _ = stream.set_nodelay(true);
        if let Ended::Refused(kind, detail) = self.serve(stream, replies).await {
            self.refuser
                .refuse(&self.logger, kind, &self.peer.to_string(), &detail);
        } else {
            debug!(self.logger, "connection closed"; "endpoint" => self.config.name,
                "from" => %self.peer);
        }
        self.handle.table().remove(&self.identity);
    }

    async fn serve(&self, stream: TcpStream, mut replies: mpsc::Receiver<Vec<Bytes>>) -> Ended {
        let (mut reader_half, mut writer) = stream.into_split();
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, writer.write_all(&handshake())).await {
            Ok(Ok(())) => {}
            _ => return Ended::Closed,
        }
        let mut reader = Reader::new(self.config.limits.clone());
        let mut buf = vec![0u8; 16 * 1024];
        // Bytes read but not fed yet (the server holds enough of this connection's messages).
        let mut pending = BytesMut::new();
        let mut messages = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        let opened = tokio::time::Instant::now();
        let mut frame_started: Option<tokio::time::Instant> = None;
        loop {
            let room = self.in_flight.load(Ordering::Relaxed) < self.config.max_in_flight;
            if room && !pending.is_empty() {
                let ended = self
                    .take_in(&mut reader, &mut pending, &mut messages, &mut held)
                    .await;
                if let Some(ended) = ended {
                    return ended;
                }
                frame_started = match (reader.in_frame(), frame_started) {
                    (Some(_), None) => Some(tokio::time::Instant::now()),
                    (Some(_), started) => started,
                    (None, _) => None,
                };
                continue;
            }
            let deadline = if !reader.handshake_done() {
                Some(opened + HANDSHAKE_TIMEOUT)
            } else {
                let size = reader.in_frame();
                frame_started
                    .zip(size)
                    .map(|(at, size)| at + frame_deadline(size))
            };
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = reader_half.read(&mut buf), if room && pending.is_empty() => {
                    match read {
                        Ok(0) | Err(_) => return Ended::Closed,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
                reply = replies.recv() => {
                    let Some(reply) = reply else { return Ended::Closed };
                    let bytes = encode_message(&reply);
                    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&bytes)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Ended::Closed,
                        Err(_) => {
                            return Ended::Refused(
                                "conn.not_reading",
                                "the client did not read its reply in time".into(),
                            );
                        }
                    }
                }
                () = sleep => {
                    let what = if reader.handshake_done() {
                        "a frame arrived too slowly"
                    } else {
                        "no handshake in time"
                    };
                    return Ended::Refused("frame.too_slow", what.into());
                }
            }
        }
    }

    /// Feeds what was read to the reader, reserving budget for large frames, and hands each
    /// complete message to the server while it holds fewer than `max_in_flight` of this
    /// connection's; what is left stays in `pending`. `Some` when the connection must end.
    async fn take_in(
        &self,
        reader: &mut Reader,
        pending: &mut BytesMut,
        messages: &mut Vec<Vec<Bytes>>,
        held: &mut Option<OwnedSemaphorePermit>,
    ) -> Option<Ended> {
        while !pending.is_empty()
            && self.in_flight.load(Ordering::Relaxed) < self.config.max_in_flight
        {
            let fed = match reader.feed(pending, messages) {
                Ok(fed) => fed,
                Err(e) => return Some(Ended::Refused(e.kind(), e.to_string())),
            };
            let _ = pending.split_to(fed.consumed);
            for message in messages.drain(..) {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                // The message is complete: what it reserved is the server's to bound now.
                *held = None;
                self.last_active
                    .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
                let mut frames = Vec::with_capacity(message.len() + 1);
                frames.push(self.identity.clone());
                frames.extend(message);
                if self.incoming.send(frames).await.is_err() {
                    return Some(Ended::Closed);
                }
            }
            if fed.reserve > 0 {
                let n = u32::try_from(fed.reserve).unwrap_or(u32::MAX);
                let wait = Arc::clone(&self.budget).acquire_many_owned(n);
                match tokio::time::timeout(BUDGET_WAIT, wait).await {
                    Ok(Ok(permit)) => match held.as_mut() {
                        Some(h) => h.merge(permit),
                        None => *held = Some(permit),
                    },
                    _ => {
                        return Some(Ended::Refused(
                            "frame.budget_exhausted",
                            format!(
                                "no room for a frame of {} bytes among the frames in flight",
                                fed.reserve
                            ),
                        ));
                    }
                }
                reader.reserved();
            }
        }
        None
    }
}

/// File descriptors a connection costs (its socket), with room for its share of the rest.
const FDS_PER_CONNECTION: u64 = 1;

/// File descriptors kept for everything else (log files, snapshots, peer sockets, the runtime).
const FDS_RESERVED: u64 = 256;

/// Raises this process's open-file limit to its hard limit and says how many connections fit in
/// it, so that accepting connections can never exhaust file descriptors (which would stop the
/// node from opening its log, snapshots or peer sockets). Connection caps are clamped to this.
pub fn connection_capacity() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    };
    usize::try_from(soft.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION)
        .unwrap_or(usize::MAX)
        .max(16)
}

/// Binds the public TCP endpoint `tcp://host:port`.
pub async fn bind_tcp(endpoint: &str) -> io::Result<TcpListener> {
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("endpoint {endpoint:?} {what}"),
        )
    };
    let rest = endpoint
        .strip_prefix("tcp://")
        .ok_or_else(|| invalid("must start with tcp://"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| invalid("has no :port"))?;
    let port: u16 = port.parse().map_err(|_| invalid("has an invalid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    TcpListener::bind((host, port)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_frame: 100_000,
            max_message: 150_000,
            max_frames_per_message: 3,
            socket_types: &["REQ"],
        }
    }

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
        for (n, v) in [
            (&b"Socket-Type"[..], socket_type.as_bytes()),
            (b"Identity", b"me"),
        ] {
            body.push(n.len() as u8);
            body.extend_from_slice(n);
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v);
        }
        let mut f = vec![0x04, body.len() as u8];
        f.extend(body);
        f
    }

    fn frame(more: bool, body: &[u8]) -> Vec<u8> {
        let mut f = encode_message(&[Bytes::copy_from_slice(body)]);
        f[0] |= u8::from(more);
        f
    }

    /// Feeds `bytes` in chunks of `chunk`, granting every reservation; returns the messages and
    /// the reservations asked for.
    fn run(bytes: &[u8], chunk: usize) -> Result<(Vec<Vec<Bytes>>, Vec<u64>), GuardError> {
        let mut reader = Reader::new(limits());
        let mut messages = Vec::new();
        let mut reserves = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut input = piece;
            while !input.is_empty() {
                let fed = reader.feed(input, &mut messages)?;
                input = &input[fed.consumed..];
                if fed.reserve > 0 {
                    reserves.push(fed.reserve);
                    reader.reserved();
                }
            }
        }
        Ok((messages, reserves))
    }

    #[test]
    fn a_good_stream_gives_its_messages() {
        let big = vec![7u8; 50_000];
        let mut stream = greeting();
        stream.extend(ready("REQ"));
        stream.extend(frame(true, b""));
        stream.extend(frame(false, b"hello"));
        stream.extend(frame(true, b""));
        stream.extend(frame(false, &big));
        for chunk in [1, 3, 64, 1000, 1 << 20] {
            let (messages, reserves) = run(&stream, chunk).unwrap();
            assert_eq!(
                messages,
                vec![
                    vec![Bytes::new(), Bytes::from_static(b"hello")],
                    vec![Bytes::new(), Bytes::from(big.clone())]
                ],
                "chunk {chunk}"
            );
            assert_eq!(reserves, vec![50_000]);
        }
    }

    #[test]
    fn encode_message_matches_the_reader() {
        let parts = vec![
            Bytes::new(),
            Bytes::from(vec![1u8; 300]),
            Bytes::from_static(b"x"),
        ];
        let mut stream = greeting();
        stream.extend(ready("REQ"));
        stream.extend(encode_message(&parts));
        let (messages, _) = run(&stream, 7).unwrap();
        assert_eq!(messages, vec![parts]);
    }

    #[test]
    fn a_long_ready_command_is_read_whole() {
        let mut stream = greeting();
        let mut body = vec![5];
        body.extend_from_slice(b"READY");
        for (n, v) in [
            (&b"Socket-Type"[..], &b"REQ"[..]),
            (b"X-Pad", &[b'p'; 300][..]),
        ] {
            body.push(n.len() as u8);
            body.extend_from_slice(n);
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v);
        }
        stream.push(0x06);
        stream.extend_from_slice(&(body.len() as u64).to_be_bytes());
        stream.extend(body);
        stream.extend(frame(false, b"x"));
        for chunk in [1, 5, 4096] {
            let (messages, _) = run(&stream, chunk).unwrap();
            assert_eq!(messages, vec![vec![Bytes::from_static(b"x")]]);
        }
    }

    #[test]
    fn hostile_streams_are_refused_from_the_header() {
        let mut base = greeting();
        base.extend(ready("REQ"));

        // An enormous announced length: refused from the header alone, nothing buffered.
        let mut huge = base.clone();
        huge.push(0x02);
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut reader = Reader::new(limits());
        let err = reader.feed(&huge, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, GuardError::FrameTooLarge { .. }), "{err}");

        let over = |bytes: u64| {
            let mut s = base.clone();
            s.push(0x02);
            s.extend_from_slice(&bytes.to_be_bytes());
            run(&s, 7).unwrap_err()
        };
        assert!(matches!(over(100_001), GuardError::FrameTooLarge { .. }));
        let mut exact = base.clone();
        exact.push(0x02);
        exact.extend_from_slice(&100_000u64.to_be_bytes());
        assert!(run(&exact, 7).is_ok());

        // Many parts, each small: the message limits still hold.
        let mut parts = base.clone();
        for _ in 0..4 {
            parts.extend(frame(true, b"a"));
        }
        assert_eq!(run(&parts, 10).unwrap_err(), GuardError::TooManyFrames(3));
        let mut heavy = base.clone();
        heavy.extend(frame(true, &vec![1u8; 90_000]));
        heavy.extend(frame(false, &vec![1u8; 90_000]));
        assert!(matches!(
            run(&heavy, 4096).unwrap_err(),
            GuardError::MessageTooLarge { .. }
        ));

        // Commands after the handshake, reserved flags.
        let mut cmd = base.clone();
        cmd.extend([0x04, 0x00]);
        assert_eq!(run(&cmd, 1).unwrap_err(), GuardError::Flags(0x04));
        let mut flags = base.clone();
        flags.extend([0x80, 0x00]);
        assert_eq!(run(&flags, 1).unwrap_err(), GuardError::Flags(0x80));

        // Handshakes: wrong signature, version, mechanism, socket type, command.
        let mut bad = greeting();
        bad[0] = 0;
        assert!(matches!(run(&bad, 64), Err(GuardError::Greeting(_))));
        let mut v2 = greeting();
        v2[10] = 2;
        assert!(matches!(run(&v2, 64), Err(GuardError::Greeting(_))));
        let mut curve = greeting();
        curve[12..17].copy_from_slice(b"CURVE");
        assert!(matches!(run(&curve, 64), Err(GuardError::Greeting(_))));
        let mut router = greeting();
        router.extend(ready("ROUTER"));
        assert!(matches!(run(&router, 5), Err(GuardError::Handshake(_))));
        let mut no_ready = greeting();
        no_ready.extend(frame(false, b"data"));
        assert!(matches!(run(&no_ready, 5), Err(GuardError::Handshake(_))));
        let mut big_cmd = greeting();
        big_cmd.push(0x06);
        big_cmd.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(run(&big_cmd, 3), Err(GuardError::Handshake(_))));
        let mut truncated = greeting();
        truncated.extend([0x04, 9, 5, b'R', b'E', b'A', b'D', b'Y', 11, b'S', b'o']);
        assert!(matches!(run(&truncated, 3), Err(GuardError::Handshake(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_reserve_past_the_limit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2_000 {
            let mut s = greeting();
            s.extend(ready("REQ"));
            let len = rng.gen_range(0..200);
            s.extend((0..len).map(|_| rng.r#gen::<u8>()));
            if let Ok((messages, reserves)) = run(&s, rng.gen_range(1..50)) {
                assert!(reserves.iter().all(|&r| r <= 100_000));
                let bytes: usize = messages.iter().flatten().map(Bytes::len).sum();
                assert!(bytes <= s.len());
            }
        }
    }

    /// zmq.rs's REQ speaks to the router: requests arrive with their identity, replies go back
    /// to the right socket, and a claimed identity changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zmq_req_sockets_talk_to_the_router() {
        use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};
        let config = GuardConfig {
            name: "test",
            limits: Limits {
                socket_types: &["REQ", "DEALER"],
                ..limits()
            },
            max_connections: 8,
            budget: 1 << 20,
            max_in_flight: 4,
        };
        let refuser = Arc::new(Refuser::default());
        let mut router = Router::bind(
            "tcp://127.0.0.1:0",
            config,
            refuser,
            crate::logging::discard(),
        )
        .await
        .expect("bind");
        let handle = router.handle();
        let endpoint = router.endpoint.clone();
        tokio::spawn(async move {
            while let Some(mut frames) = router.recv().await {
                let payload = frames.pop().unwrap_or_default();
                let mut reply = frames;
                reply.push(Bytes::from([&b"re: "[..], &payload].concat()));
                let _ = handle.send(reply);
            }
        });
        let mut sockets = Vec::new();
        for _ in 0..2 {
            let mut options = zeromq::SocketOptions::default();
            options.peer_identity(b"same".as_slice().try_into().unwrap());
            let mut req = zeromq::ReqSocket::with_options(options);
            req.connect(&endpoint).await.expect("connect");
            sockets.push(req);
        }
        for round in 0..3 {
            for (i, req) in sockets.iter_mut().enumerate() {
                let text = format!("{i}-{round}");
                req.send(ZmqMessage::from(text.clone()))
                    .await
                    .expect("send");
                let reply = tokio::time::timeout(Duration::from_secs(5), req.recv())
                    .await
                    .expect("in time")
                    .expect("reply");
                assert_eq!(
                    reply.get(0).unwrap().as_ref(),
                    format!("re: {text}").as_bytes()
                );
            }
        }
    }
}
