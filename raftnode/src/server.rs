//! The client endpoint: a ZeroMQ ROUTER speaking [`proto::Request`] / [`proto::Response`].
//!
//! One task receives frames; each request runs in its own task, so a blocking `in` never holds up
//! anybody else, and answers go back through the ROUTER's send half by the client's identity.
//! Every frame is size-checked and decoded defensively: a malformed request gets an `INVALID`
//! answer, an oversized one `TOO_LARGE`, and neither ever stops the node. At most
//! [`MAX_IN_FLIGHT`] requests run at once; beyond that clients are told `OVERLOADED`.

// The error side of these results is the answer sent to the client, built once and moved along;
// boxing it would only add an allocation to the error path.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use slog::{Logger, debug, info, warn};
use tokio::sync::Semaphore;
use tuplespace::{Query, TupleId};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::machine::{MAX_WAIT_MS, decode_template, decode_tuple, error};
use crate::node::{COMMIT_TIMEOUT, NodeHandle, ReadOp};
use crate::proto::{self, Command, command, error::Code, request::Op, response};

/// Requests served at once by one node.
pub const MAX_IN_FLIGHT: usize = 4096;

/// The most tuples one copy-collect or collect returns.
pub const MAX_LIST: usize = 10_000;

/// How long a read may wait for ReadIndex and the local apply.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long sending an answer to one client may take before it is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the client endpoint {endpoint}: {source}")]
pub struct BindError {
    /// The endpoint.
    pub endpoint: String,
    /// What zmq said.
    pub source: zeromq::ZmqError,
}

/// Serves clients on `endpoint` until `shutdown` resolves.
pub async fn serve(
    endpoint: &str,
    node: NodeHandle,
    logger: Logger,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BindError> {
    let mut socket = zeromq::RouterSocket::new();
    socket.bind(endpoint).await.map_err(|source| BindError {
        endpoint: endpoint.to_string(),
        source,
    })?;
    info!(logger, "serving clients"; "endpoint" => endpoint);
    let (send, mut recv) = socket.split();
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let garbage = Arc::new(AtomicU64::new(0));
    tokio::pin!(shutdown);
    loop {
        let frames = tokio::select! {
            _ = &mut shutdown => break,
            msg = recv.recv() => match msg {
                Ok(msg) => msg.into_vec(),
                Err(e) => {
                    warn!(logger, "client endpoint receive failed; continuing"; "err" => %e);
                    continue;
                }
            },
        };
        // [identity, (empty delimiter,) payload]: everything before the payload is the envelope
        // the answer must carry back.
        if frames.len() < 2 {
            log_garbage(&logger, &garbage, "a frame without an envelope");
            continue;
        }
        let mut envelope = frames;
        let payload = envelope.pop().unwrap_or_default();
        let mut reply_to = Replier {
            send: send.clone(),
            envelope,
            logger: logger.clone(),
        };
        if payload.len() > crate::MAX_CLIENT_FRAME {
            log_garbage(&logger, &garbage, "an oversized frame");
            let msg = format!(
                "frame of {} bytes exceeds the limit of {} bytes",
                payload.len(),
                crate::MAX_CLIENT_FRAME
            );
            tokio::spawn(async move { reply_to.send(answer(error(Code::TooLarge, msg))).await });
            continue;
        }
        let request = match proto::Request::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                log_garbage(&logger, &garbage, "an undecodable request");
                let msg = format!("undecodable request: {e}");
                tokio::spawn(async move { reply_to.send(answer(error(Code::Invalid, msg))).await });
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                reply_to
                    .send(answer(error(
                        Code::Overloaded,
                        "too many requests in flight; back off and retry",
                    )))
                    .await
            });
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let resp = execute(&node, request).await;
            reply_to.send(resp).await;
            drop(permit);
        });
    }
    info!(logger, "client endpoint stopped"; "endpoint" => endpoint);
    Ok(())
}

fn log_garbage(logger: &Logger, count: &AtomicU64, what: &str) {
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    // The first few at warn, then every thousandth, so a flood cannot flood the log.
    if n <= 10 || n.is_multiple_of(1000) {
        warn!(logger, "refused a malformed client frame"; "what" => what, "total" => n);
    } else {
        debug!(logger, "refused a malformed client frame"; "what" => what, "total" => n);
    }
}

struct Replier {
    send: zeromq::RouterSendHalf,
    envelope: Vec<Bytes>,
    logger: Logger,
}

impl Replier {
    async fn send(&mut self, resp: proto::Response) {
        let mut frames = std::mem::take(&mut self.envelope);
        frames.push(Bytes::from(resp.encode_to_vec()));
        let Ok(msg) = ZmqMessage::try_from(frames) else {
            return;
        };
        match tokio::time::timeout(SEND_TIMEOUT, self.send.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(self.logger, "could not answer a client"; "err" => %e),
            Err(_) => debug!(self.logger, "answering a client timed out"),
        }
    }
}

fn answer(result: response::Result) -> proto::Response {
    proto::Response {
        result: Some(result),
        ..Default::default()
    }
}

fn limit(n: u32) -> usize {
    if n == 0 {
        MAX_LIST
    } else {
        (n as usize).min(MAX_LIST)
    }
}

fn wait_ms(ms: u64) -> u64 {
    ms.min(MAX_WAIT_MS)
}

/// Validates a request and runs it on the node.
pub async fn execute(node: &NodeHandle, req: proto::Request) -> proto::Response {
    match plan(req) {
        Ok(Plan::Write(cmd, extra)) => node.write(cmd, COMMIT_TIMEOUT + extra).await,
        Ok(Plan::Read(op, extra)) => node.read(op, READ_TIMEOUT + extra).await,
        Ok(Plan::ConfChange(changes)) => node.conf_change(changes, CONF_CHANGE_WAIT).await,
        Ok(Plan::Status(digest)) => match node.status(digest).await {
            Some(status) => answer(response::Result::Status(status)),
            None => answer(error(Code::Unavailable, "the node is shutting down")),
        },
        Err(result) => answer(result),
    }
}

enum Plan {
    Write(Command, Duration),
    Read(ReadOp, Duration),
    ConfChange(Vec<proto::MemberChange>),
    Status(bool),
}

/// How long a membership change may take to be applied.
const CONF_CHANGE_WAIT: Duration = Duration::from_secs(15);

fn plan(req: proto::Request) -> Result<Plan, response::Result> {
    let Some(op) = req.op else {
        return Err(error(Code::Invalid, "the request has no operation"));
    };
    let write = |op: command::Op, extra_ms: u64| {
        if req.session == 0 || req.seq == 0 {
            return Err(error(
                Code::Invalid,
                "writes need a session id and a sequence number from 1",
            ));
        }
        Ok(Plan::Write(
            Command {
                stamp_ms: 0,
                session: req.session,
                seq: req.seq,
                ack: req.ack,
                op: Some(op),
            },
            Duration::from_millis(extra_ms),
        ))
    };
    match op {
        Op::Out(out) => {
            decode_tuple(&out.tuple)?;
            write(command::Op::Out(out), 0)
        }
        Op::In(mut take) => {
            decode_template(&take.template)?;
            take.timeout_ms = wait_ms(take.timeout_ms);
            let extra = if take.block { take.timeout_ms } else { 0 };
            write(command::Op::In(take), extra)
        }
        Op::InAll(all) => {
            decode_template(&all.template)?;
            write(
                command::Op::InAll(proto::InAll {
                    template: all.template,
                    limit: limit(all.limit) as u32,
                }),
                0,
            )
        }
        Op::TakeId(take) => write(command::Op::TakeId(take), 0),
        Op::Cas(cas) => {
            decode_template(&cas.template)?;
            decode_tuple(&cas.tuple)?;
            write(command::Op::Cas(cas), 0)
        }
        Op::Rd(rd) => {
            let timeout = wait_ms(rd.timeout_ms);
            Ok(Plan::Read(
                ReadOp::Rd {
                    template: decode_template(&rd.template)?,
                    after: rd.after_id,
                    block: rd.block,
                    timeout: Duration::from_millis(timeout),
                },
                Duration::from_millis(if rd.block { timeout } else { 0 }),
            ))
        }
        Op::RdAll(all) => Ok(Plan::Read(
            ReadOp::RdAll {
                template: decode_template(&all.template)?,
                query: Query {
                    limit: limit(all.limit),
                    after: all.after_id,
                    before: if all.before_id == 0 {
                        TupleId::MAX
                    } else {
                        all.before_id
                    },
                    newest_first: all.newest_first,
                },
            },
            Duration::ZERO,
        )),
        Op::ReadId(r) => Ok(Plan::Read(ReadOp::ReadId(r.id), Duration::ZERO)),
        Op::Count(c) => Ok(Plan::Read(
            ReadOp::Count(decode_template(&c.template)?),
            Duration::ZERO,
        )),
        Op::Status(s) => Ok(Plan::Status(s.digest)),
        Op::ConfChange(cc) => Ok(Plan::ConfChange(cc.changes)),
    }
}
