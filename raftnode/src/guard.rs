//! The frame guard: the project's own gate in front of every ZeroMQ listener.
//!
//! zmq.rs reserves memory for whatever length a frame header announces, before the frame's bytes
//! arrive, so one header announcing an enormous length aborts the process; it also buffers any
//! number of frames of a multipart message, answers a handshake with no time limit, and lets a
//! peer pick the identity that replies are routed by (a second connection claiming an identity
//! takes over the first one's replies). So no socket of zmq.rs listens on the network. Each
//! endpoint is a TCP listener of ours; every connection it accepts is relayed to the node's
//! zmq.rs ROUTER over a Unix socket in a private directory (mode 0700), and on the way the guard
//! reads the ZMTP stream the client sends:
//!
//! - the greeting must be ZMTP 3 with the NULL mechanism, and the handshake must finish within
//!   [`HANDSHAKE_TIMEOUT`];
//! - the READY command must name an allowed socket type; the guard rewrites its `Identity` to a
//!   tag of its own (`<source address>#<connection number>`), so a client cannot take over
//!   another connection's replies, and the server learns each frame's source address from it;
//! - every frame header is checked against the endpoint's frame limit, and every message against
//!   its size and frame-count limits, *before* the header is passed on: a connection that
//!   announces too much is closed and nothing is allocated for it;
//! - the bytes announced for frames larger than [`FREE_FRAME_BYTES`] are reserved from a budget
//!   shared by all connections of the endpoint before their header is passed on, and released
//!   when the message is complete; a frame must arrive at a minimum rate, or its connection is
//!   closed ([`frame_deadline`]), so the budget cannot be held by slow senders;
//! - at most `max_connections` connections are kept; a new one beyond that evicts the one that
//!   has been idle longest (the node's peers and clients reconnect by themselves);
//! - commands after the handshake and reserved flag bits close the connection.
//!
//! The server behind the guard can close a connection by its identity tag
//! ([`GuardHandle::close`]), e.g. after a frame from it failed authentication.
//!
//! The inspection itself is [`Inspector`], a pure state machine over the bytes (unit-tested and
//! fuzzed); [`Guard`] is the async relay around it. Replies (server to client) pass unchanged.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slog::{Logger, debug, info};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Greeting,
    Ready,
    Header,
    Body { remaining: u64, more: bool },
}

/// What one call of [`Inspector::feed`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input consumed.
    pub consumed: usize,
    /// Bytes to reserve from the budget before passing `out` on (a large frame's header ends
    /// `out`).
    pub reserve: u64,
    /// Messages completed by the bytes in `out`: their reservations may be released once `out`
    /// is passed on.
    pub completed: u32,
}

/// The guard's reading of one client's ZMTP stream. Pure: bytes in, bytes to pass on out.
#[derive(Debug)]
pub struct Inspector {
    limits: Limits,
    identity: Vec<u8>,
    state: State,
    /// A greeting, command or frame header received in part (at most `MAX_COMMAND + 9` bytes).
    partial: Vec<u8>,
    message_bytes: u64,
    message_frames: u32,
}

impl Inspector {
    /// An inspector for a new connection whose READY identity becomes `identity` (1 to 255
    /// bytes, not starting with a zero byte, as ZMTP requires).
    pub fn new(limits: Limits, identity: Vec<u8>) -> Inspector {
        Inspector {
            limits,
            identity,
            state: State::Greeting,
            partial: Vec::with_capacity(64),
            message_bytes: 0,
            message_frames: 0,
        }
    }

    /// Whether the greeting and READY have passed.
    pub fn handshake_done(&self) -> bool {
        !matches!(self.state, State::Greeting | State::Ready)
    }

    /// Whether a frame's body is being received (its deadline runs).
    pub fn in_frame(&self) -> Option<u64> {
        match self.state {
            State::Body { remaining, .. } => Some(remaining),
            _ => None,
        }
    }

    /// Consumes a prefix of `input`, appending the bytes to pass on to `out`. It stops right
    /// after a frame header that needs a reservation ([`Fed::reserve`]): the caller reserves,
    /// passes `out` on, and feeds the rest.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Fed, GuardError> {
        let mut fed = Fed::default();
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match self.state {
                State::Greeting => {
                    pos += self.fill(rest, 64);
                    if self.partial.len() == 64 {
                        check_greeting(&self.partial)?;
                        out.extend_from_slice(&self.partial);
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
                        let ready = self.rewrite_ready()?;
                        out.extend_from_slice(&ready);
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
                    self.check_frame(size)?;
                    out.extend_from_slice(&self.partial);
                    self.partial.clear();
                    if size == 0 {
                        self.state = State::Header;
                        if !more {
                            self.end_message(&mut fed);
                        }
                    } else {
                        self.state = State::Body {
                            remaining: size,
                            more,
                        };
                    }
                    if size > FREE_FRAME_BYTES {
                        fed.reserve = size;
                        break;
                    }
                }
                State::Body { remaining, more } => {
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        self.state = State::Header;
                        if !more {
                            self.end_message(&mut fed);
                        }
                    } else {
                        self.state = State::Body { remaining, more };
                    }
                }
            }
        }
        fed.consumed = pos;
        Ok(fed)
    }

    /// Moves bytes from `input` into `partial` until it holds `want`; returns how many it took.
    fn fill(&mut self, input: &[u8], want: usize) -> usize {
        let take = want.saturating_sub(self.partial.len()).min(input.len());
        self.partial.extend_from_slice(&input[..take]);
        take
    }

    /// Parses the buffered READY command and returns it with our identity in place of the
    /// client's.
    fn rewrite_ready(&self) -> Result<Vec<u8>, GuardError> {
        let header = if self.partial[0] == 0x06 { 9 } else { 2 };
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
        if !self
            .limits
            .socket_types
            .iter()
            .any(|allowed| allowed.as_bytes() == socket_type)
        {
            return Err(GuardError::Handshake(format!(
                "socket type {:?} is not served here (allowed: {:?})",
                String::from_utf8_lossy(socket_type),
                self.limits.socket_types
            )));
        }
        Ok(encode_ready(socket_type, &self.identity))
    }

    fn check_frame(&mut self, size: u64) -> Result<(), GuardError> {
        if size > self.limits.max_frame {
            return Err(GuardError::FrameTooLarge {
                announced: size,
                limit: self.limits.max_frame,
            });
        }
        self.message_frames += 1;
        if self.message_frames > self.limits.max_frames_per_message {
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

    fn end_message(&mut self, fed: &mut Fed) {
        self.message_bytes = 0;
        self.message_frames = 0;
        fed.completed += 1;
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

/// A READY command frame with these two properties.
fn encode_ready(socket_type: &[u8], identity: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + socket_type.len() + identity.len());
    body.push(5);
    body.extend_from_slice(b"READY");
    for (name, value) in [(&b"Socket-Type"[..], socket_type), (b"Identity", identity)] {
        body.push(name.len() as u8);
        body.extend_from_slice(name);
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut frame = Vec::with_capacity(body.len() + 9);
    if body.len() > 255 {
        frame.push(0x06);
        frame.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        frame.push(0x04);
        frame.push(body.len() as u8);
    }
    frame.extend_from_slice(&body);
    frame
}

// ---------------------------------------------------------------------------------------------
// The relay.

/// How one endpoint's guard is set up.
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
}

/// One live connection, as the guard's table holds it.
struct Conn {
    abort: AbortHandle,
    /// Milliseconds since the guard started, at its last complete message (or its start).
    last_active: Arc<AtomicU64>,
}

/// What the server behind the guard may ask of it.
#[derive(Clone)]
pub struct GuardHandle {
    conns: Arc<Mutex<HashMap<Vec<u8>, Conn>>>,
}

impl GuardHandle {
    /// Closes the connection whose identity tag is `identity` (if it is still open). Returns
    /// whether there was one.
    pub fn close(&self, identity: &[u8]) -> bool {
        let conn = self
            .conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(identity);
        match conn {
            Some(conn) => {
                conn.abort.abort();
                true
            }
            None => false,
        }
    }

    /// How many connections are open.
    pub fn connections(&self) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// The source address a guard identity tag names (for logs), or the tag itself.
pub fn source_of(identity: &[u8]) -> String {
    let text = String::from_utf8_lossy(identity);
    match text.rsplit_once('#') {
        Some((addr, _)) => addr.to_string(),
        None => text.into_owned(),
    }
}

/// A bound guard: the public TCP listener and the private Unix socket behind it.
pub struct Guard {
    listener: TcpListener,
    backend: PathBuf,
    config: GuardConfig,
    refuser: Arc<Refuser>,
    logger: Logger,
    handle: GuardHandle,
    budget: Arc<Semaphore>,
    started: Instant,
}

impl Guard {
    /// A guard relaying connections accepted on `listener` to the Unix socket at `backend`.
    pub fn new(
        listener: TcpListener,
        backend: PathBuf,
        config: GuardConfig,
        refuser: Arc<Refuser>,
        logger: Logger,
    ) -> Guard {
        let permits = usize::try_from(config.budget.max(config.limits.max_message))
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Guard {
            listener,
            backend,
            refuser,
            logger,
            handle: GuardHandle {
                conns: Arc::new(Mutex::new(HashMap::new())),
            },
            budget: Arc::new(Semaphore::new(permits)),
            started: Instant::now(),
            config,
        }
    }

    /// A handle for closing connections.
    pub fn handle(&self) -> GuardHandle {
        self.handle.clone()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts and relays connections until the task is dropped.
    pub async fn run(self) {
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
            let identity = format!("{peer}#{number}").into_bytes();
            self.make_room(&peer);
            let last_active = Arc::new(AtomicU64::new(self.now_ms()));
            let relay = Relay {
                identity: identity.clone(),
                peer,
                backend: self.backend.clone(),
                config: self.config.clone(),
                refuser: Arc::clone(&self.refuser),
                logger: self.logger.clone(),
                budget: Arc::clone(&self.budget),
                last_active: Arc::clone(&last_active),
                started: self.started,
                conns: self.handle.clone(),
            };
            let task = tokio::spawn(relay.run(stream));
            self.handle
                .conns
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(
                    identity,
                    Conn {
                        abort: task.abort_handle(),
                        last_active,
                    },
                );
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// At the connection cap, closes the connection idle longest.
    fn make_room(&self, newcomer: &SocketAddr) {
        let mut conns = self
            .handle
            .conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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

/// One connection: client bytes through the inspector to the server, server bytes straight back.
struct Relay {
    identity: Vec<u8>,
    peer: SocketAddr,
    backend: PathBuf,
    config: GuardConfig,
    refuser: Arc<Refuser>,
    logger: Logger,
    budget: Arc<Semaphore>,
    last_active: Arc<AtomicU64>,
    started: Instant,
    conns: GuardHandle,
}

/// Why a relay ended, when it was not simply closed by one side.
enum Ended {
    Closed,
    Refused(&'static str, String),
}

impl Relay {
    async fn run(self, client: TcpStream) {
        let _ = client.set_nodelay(true);
        let ended = match UnixStream::connect(&self.backend).await {
            Ok(server) => self.relay(client, server).await,
            Err(e) => Ended::Refused("conn.backend_unreachable", e.to_string()),
        };
        if let Ended::Refused(kind, detail) = ended {
            self.refuser
                .refuse(&self.logger, kind, &self.peer.to_string(), &detail);
        } else {
            debug!(self.logger, "connection closed"; "endpoint" => self.config.name,
                "from" => %self.peer);
        }
        self.conns
            .conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.identity);
    }

    async fn relay(&self, client: TcpStream, server: UnixStream) -> Ended {
        let (client_read, mut client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let back = async move {
            let mut server_read = server_read;
            let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            Ended::Closed
        };
        let forth = self.inspect(client_read, server_write);
        tokio::select! {
            ended = back => ended,
            ended = forth => ended,
        }
    }

    /// Reads the client, checks what it sends, and passes it to the server.
    async fn inspect(
        &self,
        mut client: tokio::net::tcp::OwnedReadHalf,
        mut server: tokio::net::unix::OwnedWriteHalf,
    ) -> Ended {
        let mut inspector = Inspector::new(self.config.limits.clone(), self.identity.clone());
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::with_capacity(16 * 1024);
        let mut held: Option<OwnedSemaphorePermit> = None;
        let opened = tokio::time::Instant::now();
        let mut frame_started: Option<(tokio::time::Instant, u64)> = None;
        loop {
            let deadline = if !inspector.handshake_done() {
                Some(opened + HANDSHAKE_TIMEOUT)
            } else {
                frame_started.map(|(at, bytes)| at + frame_deadline(bytes))
            };
            let read = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
                        Ok(read) => read,
                        Err(_) => {
                            let what = if inspector.handshake_done() {
                                "a frame arrived too slowly"
                            } else {
                                "no handshake in time"
                            };
                            return Ended::Refused("frame.too_slow", what.into());
                        }
                    }
                }
                None => client.read(&mut buf).await,
            };
            let n = match read {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(n) => n,
            };
            let mut input = &buf[..n];
            while !input.is_empty() {
                out.clear();
                let fed = match inspector.feed(input, &mut out) {
                    Ok(fed) => fed,
                    Err(e) => return Ended::Refused(e.kind(), e.to_string()),
                };
                input = &input[fed.consumed..];
                if fed.completed > 0 {
                    held = None;
                    frame_started = None;
                    self.last_active
                        .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                if fed.reserve > 0 {
                    let n = u32::try_from(fed.reserve).unwrap_or(u32::MAX);
                    let wait = Arc::clone(&self.budget).acquire_many_owned(n);
                    match tokio::time::timeout(BUDGET_WAIT, wait).await {
                        Ok(Ok(permit)) => match held.as_mut() {
                            Some(h) => h.merge(permit),
                            None => held = Some(permit),
                        },
                        _ => {
                            return Ended::Refused(
                                "frame.budget_exhausted",
                                format!(
                                    "no room for a frame of {} bytes among the frames in flight",
                                    fed.reserve
                                ),
                            );
                        }
                    }
                }
                if inspector.in_frame().is_some() && frame_started.is_none() {
                    let size = inspector.in_frame().unwrap_or(0).max(fed.reserve);
                    frame_started = Some((tokio::time::Instant::now(), size));
                } else if inspector.in_frame().is_none() {
                    frame_started = None;
                }
                if server.write_all(&out).await.is_err() {
                    return Ended::Closed;
                }
            }
        }
    }
}

/// File descriptors a guarded connection costs: the client's TCP socket, and both ends of the
/// Unix socket to the ROUTER.
const FDS_PER_CONNECTION: u64 = 3;

/// File descriptors kept for everything else (log files, snapshots, peer sockets, the runtime).
const FDS_RESERVED: u64 = 256;

/// Raises this process's open-file limit to its hard limit and says how many guarded
/// connections fit in it, so that accepting connections can never exhaust file descriptors
/// (which would stop the node from opening its log, snapshots or peer sockets). Connection caps
/// are clamped to this.
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

/// Binds the public TCP endpoint `tcp://host:port` for a guard.
pub async fn bind_tcp(endpoint: &str) -> io::Result<TcpListener> {
    let rest = endpoint.strip_prefix("tcp://").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("endpoint {endpoint:?} must start with tcp://"),
        )
    })?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("endpoint {endpoint:?} has no :port"),
        )
    })?;
    let port: u16 = port.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("endpoint {endpoint:?} has an invalid port"),
        )
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    TcpListener::bind((host, port)).await
}

/// A guarded ZeroMQ endpoint: the public listener, the private socket behind it, and the ROUTER
/// bound to that socket. Dropping it stops the guard and removes the private directory.
pub struct Guarded {
    /// The `tcp://` endpoint actually bound (port resolved).
    pub endpoint: String,
    /// For closing connections.
    pub handle: GuardHandle,
    guard_task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.guard_task.abort();
    }
}

/// Binds `endpoint` (tcp) behind a guard and `router` to the private Unix socket behind it.
pub async fn bind_guarded(
    router: &mut zeromq::RouterSocket,
    endpoint: &str,
    config: GuardConfig,
    refuser: Arc<Refuser>,
    logger: Logger,
) -> Result<Guarded, String> {
    use zeromq::Socket as _;
    let listener = bind_tcp(endpoint).await.map_err(|e| e.to_string())?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let host = endpoint
        .strip_prefix("tcp://")
        .and_then(|r| r.rsplit_once(':'))
        .map_or("127.0.0.1", |(h, _)| h);
    let endpoint = format!("tcp://{host}:{}", bound.port());
    // tempfile creates the directory with mode 0700: only this user can reach the socket.
    let dir = tempfile::Builder::new()
        .prefix("raftnode-")
        .tempdir()
        .map_err(|e| format!("cannot create a private socket directory: {e}"))?;
    let path = dir.path().join(config.name);
    let unix = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    router
        .bind_listener(unix)
        .await
        .map_err(|e| format!("cannot serve {}: {e}", path.display()))?;
    let guard = Guard::new(listener, path, config.clone(), refuser, logger.clone());
    let handle = guard.handle();
    info!(logger, "endpoint guarded"; "endpoint" => &endpoint, "name" => config.name,
        "max_frame" => config.limits.max_frame, "max_connections" => config.max_connections);
    let guard_task = tokio::spawn(guard.run());
    Ok(Guarded {
        endpoint,
        handle,
        guard_task,
        _dir: dir,
    })
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

    fn ready(socket_type: &str, identity: Option<&[u8]>) -> Vec<u8> {
        let mut props: Vec<(&[u8], &[u8])> = vec![(b"Socket-Type", socket_type.as_bytes())];
        if let Some(id) = identity {
            props.push((b"Identity", id));
        }
        let mut body = vec![5];
        body.extend_from_slice(b"READY");
        for (n, v) in props {
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
        let mut f = Vec::new();
        let more = u8::from(more);
        if body.len() > 255 {
            f.push(0x02 | more);
            f.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            f.push(more);
            f.push(body.len() as u8);
        }
        f.extend_from_slice(body);
        f
    }

    /// Feeds `bytes` in chunks of `chunk`, as the relay would; returns what passes and the
    /// reservations asked for.
    fn run(bytes: &[u8], chunk: usize) -> Result<(Vec<u8>, Vec<u64>, u32), GuardError> {
        let mut inspector = Inspector::new(limits(), b"10.0.0.1:5#1".to_vec());
        let mut passed = Vec::new();
        let mut reserves = Vec::new();
        let mut completed = 0;
        for piece in bytes.chunks(chunk) {
            let mut input = piece;
            while !input.is_empty() {
                let mut out = Vec::new();
                let fed = inspector.feed(input, &mut out)?;
                input = &input[fed.consumed..];
                if fed.reserve > 0 {
                    reserves.push(fed.reserve);
                }
                completed += fed.completed;
                passed.extend(out);
            }
        }
        Ok((passed, reserves, completed))
    }

    #[test]
    fn a_good_stream_passes_with_the_identity_rewritten() {
        let big = vec![7u8; 50_000];
        let mut stream = greeting();
        stream.extend(ready("REQ", Some(b"victim")));
        stream.extend(frame(true, b""));
        stream.extend(frame(false, b"hello"));
        stream.extend(frame(true, b""));
        stream.extend(frame(false, &big));
        for chunk in [1, 3, 64, 1000, 1 << 20] {
            let (passed, reserves, completed) = run(&stream, chunk).unwrap();
            let mut expect = greeting();
            expect.extend(encode_ready(b"REQ", b"10.0.0.1:5#1"));
            expect.extend(frame(true, b""));
            expect.extend(frame(false, b"hello"));
            expect.extend(frame(true, b""));
            expect.extend(frame(false, &big));
            assert_eq!(passed, expect, "chunk {chunk}");
            assert_eq!(reserves, vec![50_000]);
            assert_eq!(completed, 2);
        }
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
            let (passed, _, completed) = run(&stream, chunk).unwrap();
            assert!(passed.ends_with(&frame(false, b"x")));
            assert_eq!(completed, 1);
        }
    }

    #[test]
    fn hostile_streams_are_refused_before_passing_the_header() {
        let mut base = greeting();
        base.extend(ready("REQ", None));

        // An enormous announced length: refused from the header alone.
        let mut huge = base.clone();
        huge.push(0x02);
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut inspector = Inspector::new(limits(), b"t".to_vec());
        let mut out = Vec::new();
        let err = inspector.feed(&huge, &mut out).unwrap_err();
        assert!(matches!(err, GuardError::FrameTooLarge { .. }), "{err}");
        assert_eq!(
            out.len(),
            64 + encode_ready(b"REQ", b"t").len(),
            "header not passed"
        );

        let over = |bytes: u64| {
            let mut s = base.clone();
            s.push(0x02);
            s.extend_from_slice(&bytes.to_be_bytes());
            run(&s, 7).unwrap_err()
        };
        assert!(matches!(over(100_001), GuardError::FrameTooLarge { .. }));
        assert!(
            run(
                &{
                    let mut s = base.clone();
                    s.push(0x02);
                    s.extend_from_slice(&100_000u64.to_be_bytes());
                    s
                },
                7
            )
            .is_ok()
        );

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
        router.extend(ready("ROUTER", None));
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
    fn arbitrary_bytes_never_panic_and_never_pass_a_large_header() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2_000 {
            let mut s = greeting();
            s.extend(ready("REQ", None));
            let len = rng.gen_range(0..200);
            s.extend((0..len).map(|_| rng.r#gen::<u8>()));
            if let Ok((passed, reserves, _)) = run(&s, rng.gen_range(1..50)) {
                assert!(reserves.iter().all(|&r| r <= 100_000));
                assert!(passed.len() <= s.len() + 64);
            }
        }
    }
}
