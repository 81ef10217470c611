//! The client endpoint: a ZeroMQ ROUTER speaking [`proto::Request`] / [`proto::Response`].
//!
//! One task receives frames; each request runs in its own task, so a blocking `in` never holds up
//! anybody else, and answers go back through the ROUTER's send half by the client's identity.
//! The ROUTER listens behind the frame guard ([`crate::guard`]): a frame over
//! [`crate::MAX_CLIENT_FRAME`] closes its connection before anything is allocated for it, and
//! the identity a reply is routed by is the guard's tag for the connection, never the client's
//! choice. Every frame is decoded defensively: a malformed request gets an `INVALID` answer and
//! never stops the node. At most [`MAX_IN_FLIGHT`] requests run at once; beyond that clients are
//! told `OVERLOADED`.

// The error side of these results is the answer sent to the client, built once and moved along;
// boxing it would only add an allocation to the error path.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use slog::{Logger, debug, info};

use crate::guard::{self, GuardConfig, Limits, Router, RouterHandle};
use crate::refusals::Refuser;
use tokio::sync::Semaphore;
use tuplespace::union::MAX_TEMPLATES;
use tuplespace::{Query, TupleId};

use crate::answer::{error, respond};
use crate::gate::Gate;
use crate::identity::{Opened, Signer};
use crate::machine::{MAX_WAIT_MS, decode_template, decode_tuple};
use crate::node::{COMMIT_TIMEOUT, NodeHandle, ReadOp};
use crate::proto::{self, Command, command, error::Code, request::Op, response};

/// Requests served at once by one node.
pub const MAX_IN_FLIGHT: usize = 4096;

/// The most tuples one copy-collect or collect returns.
pub const MAX_LIST: usize = 10_000;

/// How long a read may wait for ReadIndex and the local apply.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Client connections one node keeps (beyond it, the idlest is closed).
pub const MAX_CLIENT_CONNECTIONS: usize = 1024;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the client endpoint {endpoint}: {reason}")]
pub struct BindError {
    /// The endpoint.
    pub endpoint: String,
    /// Why.
    pub reason: String,
}

/// What the guard in front of the client endpoint lets through (at most
/// [`MAX_CLIENT_CONNECTIONS`] connections; [`GuardConfig::max_connections`] may be lowered).
pub fn guard_config() -> GuardConfig {
    let max_frame = crate::MAX_CLIENT_FRAME as u64;
    GuardConfig {
        name: "client",
        limits: Limits {
            max_frame,
            // [empty delimiter, request] from a REQ; a DEALER may add its own delimiters.
            max_message: max_frame + 1024,
            max_frames_per_message: 4,
            socket_types: &["REQ", "DEALER"],
        },
        max_connections: MAX_CLIENT_CONNECTIONS,
        max_in_flight: crate::quota::MAX_IN_FLIGHT_PER_CONNECTION,
        // Sixteen largest frames at once; small requests need none of it.
        budget: 16 * max_frame,
    }
}

/// Serves clients on `endpoint` until `shutdown` resolves.
pub async fn serve(
    endpoint: &str,
    config: GuardConfig,
    node: NodeHandle,
    gate: Arc<Gate>,
    refuser: Arc<Refuser>,
    logger: Logger,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BindError> {
    let mut router = Router::bind(endpoint, config, Arc::clone(&refuser), logger.clone())
        .await
        .map_err(|e| BindError {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
    info!(logger, "serving clients"; "endpoint" => &router.endpoint);
    let door = Door {
        send: router.handle(),
        permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        quotas: crate::quota::Quotas::default(),
        refuser,
        logger: logger.clone(),
    };
    tokio::pin!(shutdown);
    loop {
        let frames = tokio::select! {
            _ = &mut shutdown => break,
            msg = router.recv() => match msg {
                Some(frames) => frames,
                None => break,
            },
        };
        let Some(Admitted {
            request,
            mut reply_to,
            identity,
            held,
        }) = door.admit(frames)
        else {
            continue;
        };
        let (node, gate) = (node.clone(), Arc::clone(&gate));
        let gone = door.send.closed(&identity);
        let in_flight = MAX_IN_FLIGHT - door.permits.available_permits();
        tokio::spawn(async move {
            if let Some(resp) = execute_for(&node, &gate, request, in_flight, gone).await {
                reply_to.send(resp);
            }
            drop(held);
        });
    }
    info!(logger, "client endpoint stopped"; "endpoint" => &router.endpoint);
    Ok(())
}

/// What every request passes before it reaches the node: an envelope, the frame limit, a
/// request that decodes, the client's fair share and a free request slot.
struct Door {
    send: RouterHandle,
    permits: Arc<Semaphore>,
    quotas: crate::quota::Quotas,
    refuser: Arc<Refuser>,
    logger: Logger,
}

/// A request let in, with where its answer goes and the share and slot it holds until answered.
struct Admitted {
    request: proto::Request,
    reply_to: Replier,
    identity: Bytes,
    held: (tokio::sync::OwnedSemaphorePermit, crate::quota::Share),
}

impl Door {
    /// Lets a message in, or refuses it (answering the client when it can be answered).
    fn admit(&self, frames: Vec<Bytes>) -> Option<Admitted> {
        // [identity, (empty delimiter,) payload]: everything before the payload is the envelope
        // the answer must carry back.
        if frames.len() < 2 {
            let source = frames
                .first()
                .map_or_else(String::new, |id| guard::source_of(id));
            self.refuse("client.no_envelope", &source, "a frame without an envelope");
            return None;
        }
        let identity = frames[0].clone();
        let source = guard::source_of(&identity);
        let mut envelope = frames;
        let payload = envelope.pop().unwrap_or_default();
        let mut reply_to = Replier {
            send: self.send.clone(),
            envelope,
            logger: self.logger.clone(),
        };
        let mut refuse = |kind: &'static str, code: Code, why: String| {
            self.refuse(kind, &source, &why);
            reply_to.send(respond(error(code, why)));
        };
        if payload.len() > crate::MAX_CLIENT_FRAME {
            let why = format!(
                "frame of {} bytes exceeds the limit of {} bytes",
                payload.len(),
                crate::MAX_CLIENT_FRAME
            );
            refuse("client.too_large", Code::TooLarge, why);
            return None;
        }
        let request = match proto::Request::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("undecodable request: {e}");
                refuse("client.undecodable", Code::Invalid, why);
                return None;
            }
        };
        let share = match self.quotas.acquire(&guard::host_of(&identity)) {
            Ok(share) => share,
            Err(why) => {
                refuse("client.over_quota", Code::Overloaded, why);
                return None;
            }
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let why = "too many requests in flight; back off and retry".to_string();
            refuse("client.overloaded", Code::Overloaded, why);
            return None;
        };
        Some(Admitted {
            request,
            reply_to,
            identity,
            held: (permit, share),
        })
    }

    fn refuse(&self, kind: &'static str, source: &str, why: &str) {
        self.refuser.refuse(&self.logger, kind, source, why);
    }
}

struct Replier {
    send: RouterHandle,
    envelope: Vec<Bytes>,
    logger: Logger,
}

impl Replier {
    /// Queues the answer on the client's connection (written by the connection's own task,
    /// within [`guard::WRITE_TIMEOUT`]); a client that has gone or does not read loses it.
    fn send(&mut self, resp: proto::Response) {
        let mut frames = std::mem::take(&mut self.envelope);
        frames.push(Bytes::from(resp.encode_to_vec()));
        if let Err(e) = self.send.send(frames) {
            debug!(self.logger, "could not answer a client"; "err" => %e);
        }
    }
}

fn limit(n: u32) -> usize {
    if n == 0 {
        MAX_LIST
    } else {
        (n as usize).min(MAX_LIST)
    }
}

/// A copy-collect's bounds from the wire (`before_id` 0: no upper bound).
fn query(limit_: u32, after: TupleId, before: TupleId, newest_first: bool) -> Query {
    Query {
        limit: limit(limit_),
        after,
        before: if before == 0 { TupleId::MAX } else { before },
        newest_first,
    }
}

fn wait_ms(ms: u64) -> u64 {
    ms.min(MAX_WAIT_MS)
}

/// Runs a request for a client that may go away meanwhile (`gone` resolves when its connection
/// closes): a blocking `in` whose client has gone is cancelled rather than left to take a tuple
/// nobody will receive. `None` when there is nobody to answer.
async fn execute_for(
    node: &NodeHandle,
    gate: &Gate,
    req: proto::Request,
    in_flight: usize,
    gone: impl Future<Output = ()>,
) -> Option<proto::Response> {
    let opened = match gate.open(req, in_flight).await {
        Ok(opened) => opened,
        Err(result) => return Some(respond(result)),
    };
    let req = &opened.request;
    let blocking_in = matches!(&req.op, Some(Op::In(take)) if take.block);
    if !blocking_in {
        return Some(run(node, gate, opened).await);
    }
    let (session, seq) = (req.session, req.seq);
    let (user, public_key) = opened
        .signer
        .as_ref()
        .map_or_else(Default::default, |s| (s.user.clone(), s.public_key.clone()));
    tokio::select! {
        resp = run(node, gate, opened) => Some(resp),
        () = gone => {
            // On the client's behalf: the same user, so the session's owner check passes.
            let cancel = Command {
                session,
                op: Some(command::Op::Cancel(proto::Cancel { seq })),
                user,
                public_key,
                ..Default::default()
            };
            let _ = node.write(cancel, CANCEL_WAIT).await;
            None
        }
    }
}

/// How long the node waits for the cancel of a departed client's blocking `in` to apply.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Verifies a request's signature, validates it and runs it on the node.
pub async fn execute(node: &NodeHandle, gate: &Gate, req: proto::Request) -> proto::Response {
    match gate.open(req, 1).await {
        Ok(opened) => run(node, gate, opened).await,
        Err(result) => respond(result),
    }
}

/// Runs a request whose signature checked out.
async fn run(node: &NodeHandle, gate: &Gate, opened: Opened) -> proto::Response {
    let Opened { request, signer } = opened;
    let plan = plan(request, signer.as_ref());
    let wait = plan.as_ref().map_or(Duration::ZERO, Plan::wait);
    let needs_admin = matches!(plan, Ok(Plan::ConfChange(..) | Plan::Status(true)));
    if needs_admin && let Err(result) = admin_only(node, gate, signer.as_ref()).await {
        return respond(result);
    }
    match plan {
        Ok(Plan::Write(cmd, _)) => node.write(cmd, wait).await,
        Ok(Plan::Read(op, _)) => node.read(op, wait).await,
        Ok(Plan::ConfChange(changes, force)) => node.conf_change(changes, force, wait).await,
        Ok(Plan::Status(digest)) => match node.status(digest).await {
            Some(status) => respond(response::Result::Status(status)),
            None => respond(error(Code::Unavailable, "the node is shutting down")),
        },
        Err(result) => respond(result),
    }
}

/// Membership changes and the space's digest are the admin's: a fresh (never seen) request
/// signed by the key the replicated registry holds for `admin`.
async fn admin_only(
    node: &NodeHandle,
    gate: &Gate,
    signer: Option<&Signer>,
) -> Result<(), response::Result> {
    let Some(signer) = signer else {
        return gate.once(None, 0);
    };
    match node.is_admin(&signer.user, &signer.public_key).await {
        Some((Some(true), cluster_now)) => gate.once(Some(signer), cluster_now),
        Some((None, _)) => Err(error(
            Code::Unavailable,
            "this node has not applied the cluster's founding entries yet (it is catching up), \
             so it cannot tell who the admin is; retry at another node",
        )),
        Some((Some(false), _)) => Err(error(
            Code::PermissionDenied,
            format!(
                "only the admin may change the membership or read the digest, not user {:?}",
                signer.user
            ),
        )),
        None => Err(error(Code::Unavailable, "the node is shutting down")),
    }
}

/// What a checked client request comes to.
#[derive(Debug)]
pub enum Plan {
    /// A write to propose, and how much longer than usual it may wait (a blocking `in`).
    Write(Command, Duration),
    /// A read, and how much longer than usual it may wait (a blocking `rd`).
    Read(ReadOp, Duration),
    /// A membership change (forced or not).
    ConfChange(Vec<proto::MemberChange>, bool),
    /// A status request (with the space's digest or not).
    Status(bool),
}

/// How long a membership change may take to be applied.
const CONF_CHANGE_WAIT: Duration = Duration::from_secs(15);

impl Plan {
    /// How long the endpoint waits for the node's answer before telling the client the outcome
    /// is not known yet ([`crate::node::handle::unanswered`]).
    pub fn wait(&self) -> Duration {
        match self {
            Plan::Write(_, extra) => COMMIT_TIMEOUT + *extra,
            Plan::Read(_, extra) => READ_TIMEOUT + *extra,
            Plan::ConfChange(..) => CONF_CHANGE_WAIT,
            Plan::Status(_) => Duration::from_secs(2),
        }
    }
}

/// Checks a decoded request (every tuple and template in it decodes and is within its limits,
/// writes carry a session) and says what the node will do with it; the error is the answer to
/// send back.
///
/// `signer` is who signed the request (its signature already checked): writes carry their
/// user and key into the log, where the state machine checks them.
pub fn plan(req: proto::Request, signer: Option<&Signer>) -> Result<Plan, response::Result> {
    let Some(op) = req.op else {
        return Err(error(Code::Invalid, "the request has no operation"));
    };
    let (user, public_key, not_after_ms) = signer.map_or((String::new(), Vec::new(), 0), |s| {
        (s.user.clone(), s.public_key.clone(), s.not_after_ms)
    });
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
                user: user.clone(),
                public_key: public_key.clone(),
                not_after_ms,
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
                templates: vec![decode_template(&all.template)?],
                join: None,
                query: query(all.limit, all.after_id, all.before_id, all.newest_first),
            },
            Duration::ZERO,
        )),
        Op::RdAny(any) => {
            if (any.templates.is_empty() && any.join.is_none())
                || any.templates.len() > MAX_TEMPLATES
            {
                return Err(error(
                    Code::Invalid,
                    format!(
                        "a union copy-collect names 1 to {MAX_TEMPLATES} templates, not {}",
                        any.templates.len()
                    ),
                ));
            }
            let templates = any
                .templates
                .iter()
                .map(|t| decode_template(t))
                .collect::<Result<Vec<_>, _>>()?;
            let join = match any.join {
                None => None,
                Some(j) => {
                    let join = tuplespace::union::Join {
                        source: decode_template(&j.source)?,
                        source_field: j.source_field as usize,
                        target: decode_template(&j.target)?,
                        target_field: j.target_field as usize,
                    };
                    join.check()
                        .map_err(|e| error(Code::Invalid, e.to_string()))?;
                    Some(join)
                }
            };
            Ok(Plan::Read(
                ReadOp::RdAll {
                    templates,
                    join,
                    query: query(any.limit, any.after_id, any.before_id, any.newest_first),
                },
                Duration::ZERO,
            ))
        }
        Op::ReadId(r) => Ok(Plan::Read(ReadOp::ReadId(r.id), Duration::ZERO)),
        Op::Count(c) => Ok(Plan::Read(
            ReadOp::Count(decode_template(&c.template)?),
            Duration::ZERO,
        )),
        Op::Cancel(cancel) => {
            if req.session == 0 {
                return Err(error(
                    Code::Invalid,
                    "a cancel names the session of the request it cancels",
                ));
            }
            // A cancel takes no sequence number of its own: it is seq 0 of its session.
            Ok(Plan::Write(
                Command {
                    stamp_ms: 0,
                    session: req.session,
                    seq: 0,
                    ack: 0,
                    op: Some(command::Op::Cancel(cancel)),
                    user,
                    public_key,
                    not_after_ms,
                },
                Duration::ZERO,
            ))
        }
        Op::Status(s) => Ok(Plan::Status(s.digest)),
        Op::ConfChange(cc) => Ok(Plan::ConfChange(cc.changes, cc.force)),
        Op::Register(r) => write(command::Op::Register(r), 0),
        Op::RotateKey(r) => write(command::Op::RotateKey(r), 0),
        Op::ResetKey(r) => write(command::Op::ResetKey(r), 0),
        Op::SetPolicy(p) => write(command::Op::SetPolicy(p), 0),
        Op::GetPolicy(_) => Ok(Plan::Read(ReadOp::Policy, Duration::ZERO)),
    }
}
