//! The receiving side of the peer transport: a guarded ROUTER ([`crate::guard`]) answering each
//! authentic batch with a sealed acknowledgement. What a frame goes through is in
//! [`Inbound`](super::Inbound).

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use slog::{Logger, debug, info, o};

use super::{Deliver, Inbound, MAX_PEER_CONNECTIONS, TransportError};
use crate::guard::{self, GuardConfig, Limits, Router, RouterHandle};
use crate::peer_auth::PeerAuth;
use crate::proto::{ChunkAck, SnapshotChunk, chunk_ack};
use crate::refusals::Refuser;
use crate::snapshot_stream::Receiver;

/// Everything the raft endpoint needs besides its address.
pub struct Endpoint {
    /// What the guard in front of it lets through ([`guard_config`]).
    pub guard: GuardConfig,
    /// This node's peer keys.
    pub auth: Arc<PeerAuth>,
    /// Where checked batches go.
    pub deliver: Deliver,
    /// Counts and logs refusals.
    pub refuser: Arc<Refuser>,
    /// Receives snapshot files (`None`: chunks are refused, and so are snapshot messages).
    pub receiver: Option<Receiver>,
}

/// The receiving side of the peer transport: a guarded ROUTER ([`crate::guard`]).
pub struct Server {
    router: Router,
    handle: RouterHandle,
    inbound: Inbound,
    deliver: Deliver,
    refuser: Arc<Refuser>,
    receiver: Option<Arc<Mutex<Receiver>>>,
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
        endpoint: Endpoint,
        logger: Logger,
    ) -> Result<Server, TransportError> {
        let Endpoint {
            guard: config,
            auth,
            deliver,
            refuser,
            receiver,
        } = endpoint;
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
            inbound: Inbound::new(auth),
            deliver,
            refuser,
            receiver: receiver.map(|r| Arc::new(Mutex::new(r))),
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
        let (header, batch) = match self.inbound.open(&payload) {
            Ok(opened) => opened,
            Err(refused) => {
                self.refuse(&identity, refused.kind, &refused.detail);
                return None;
            }
        };
        let mut batch = batch;
        let chunk = batch
            .chunk
            .take()
            .map(|chunk| self.offer(header.from, chunk));
        let chunk = match chunk {
            Some(answer) => Some(answer.await),
            None => None,
        };
        let (mut delivery, snapshot) =
            self.inbound
                .screen(&header, batch, &self.refuser, &self.logger);
        if let Some(pending) = snapshot {
            // The file arrived (and was checked and decoded) beforehand, in chunks.
            let checked = match &self.receiver {
                Some(receiver) => pending.check(&mut lock(receiver)),
                None => Err("this node receives no snapshots".to_string()),
            };
            Inbound::admit_snapshot(&mut delivery, pending, checked, &self.refuser, &self.logger);
        }
        let accepted = delivery.msgs.len();
        let removed = accepted > 0 && (self.deliver)(delivery);
        Some((
            identity,
            self.inbound.ack(&header, accepted, removed, chunk),
        ))
    }

    /// Hands a snapshot chunk to the receiver (on a blocking thread: it writes to disk), and
    /// starts the check of a file whose last byte arrived.
    async fn offer(&self, from: u64, chunk: SnapshotChunk) -> ChunkAck {
        let Some(receiver) = self.receiver.clone() else {
            return ChunkAck {
                state: chunk_ack::State::Failed as i32,
                next: 0,
                detail: "this node receives no snapshots".into(),
            };
        };
        let offered = tokio::task::spawn_blocking({
            let receiver = Arc::clone(&receiver);
            move || lock(&receiver).offer(from, &chunk)
        })
        .await;
        match offered {
            Ok((answer, job)) => {
                if let Some(job) = job {
                    tokio::task::spawn_blocking(move || {
                        let done = job.run();
                        lock(&receiver).checked(done);
                    });
                }
                answer
            }
            Err(e) => ChunkAck {
                state: chunk_ack::State::Failed as i32,
                next: 0,
                detail: format!("the chunk could not be written: {e}"),
            },
        }
    }
}

fn lock(receiver: &Mutex<Receiver>) -> std::sync::MutexGuard<'_, Receiver> {
    receiver.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds a guarded ROUTER on `bind_url` and hands every authenticated, checked batch of raft
/// messages to `deliver` until `shutdown` completes. Fails only if the endpoint cannot be bound.
pub async fn serve(
    bind_url: &str,
    endpoint: Endpoint,
    logger: Logger,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TransportError> {
    let server = Server::bind(bind_url, endpoint, logger).await?;
    server.run(shutdown).await;
    Ok(())
}
