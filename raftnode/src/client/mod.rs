//! The async Rust API: every tuple operation against a cluster.
//!
//! ```no_run
//! use std::time::Duration;
//! use raftnode::client::Client;
//! use tuplespace::{Template, tuple};
//!
//! # async fn demo() -> Result<(), raftnode::client::ClientError> {
//! let mut client = Client::new(["tcp://127.0.0.1:7201", "tcp://127.0.0.1:7202"]);
//! let id = client.out(&tuple!["job", 1]).await?;
//! let template: Template = r#"("job", ?int)"#.parse().expect("a valid template");
//! let (taken, job) = client.in_(&template, Duration::from_secs(5)).await?;
//! assert_eq!(taken, id);
//! # Ok(()) }
//! ```
//!
//! A [`Client`] holds one REQ socket and sends one request at a time; use one client per
//! concurrent task. Every write carries the client's session id and a sequence number, and a
//! retry (after a timeout, a dead node or a leader change) resends the same pair, so the cluster
//! applies it exactly once. The client rotates through its endpoints, and follows the leader
//! hints in answers so it talks to the leader when it can.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use tuplespace::{Query, Template, Tuple, TupleId, codec};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::identity::Identity;
use crate::proto::{self, error::Code, request::Op, response};

pub mod retry;

use retry::{Attempt, Call, Next, Route};

/// What can go wrong, each with a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No node answered with a result before the retry window closed.
    #[error("no leader reachable (tried {tried:?}; last error: {last}); is the cluster up?")]
    NoLeader {
        /// The endpoints tried.
        tried: Vec<String>,
        /// The last failure seen.
        last: String,
    },
    /// A blocking operation's timeout passed with no matching tuple.
    #[error("timed out: no matching tuple")]
    Timeout,
    /// The session is unknown or expired and could not be renewed.
    #[error("session expired: {0}")]
    SessionExpired(String),
    /// A malformed tuple, template or request.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A tuple, template or frame over the size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The node was removed from the cluster.
    #[error("node removed: {0}")]
    Removed(String),
    /// The cluster's storage failed.
    #[error("storage failure on the cluster: {0}")]
    Storage(String),
    /// A node answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Refused: over one of the cluster's limits (the space is full, too many waiters, ...); the
    /// message names it. Nothing was applied.
    #[error("over a limit: {0}")]
    OverLimit(String),
    /// The blocking `in` was cancelled (by this client, or by the node when it went away).
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A write may or may not have been applied, and asking again cannot tell: an earlier
    /// attempt's outcome was never known and its session is gone. The write was not resent as a
    /// new request (that could apply it twice); read the state to find out.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Membership: another change was in progress (or the configuration was still joint) until
    /// the retry window closed. Nothing was proposed; retry when it is done.
    #[error("membership change in progress: {0}")]
    ChangeInProgress(String),
    /// Membership: the leader was being removed and was handing leadership over, and no new
    /// leader took the change before the retry window closed. Nothing was proposed.
    #[error("leadership being handed over: {0}")]
    HandingOver(String),
    /// Membership: the change was proposed but not applied in time (a leader change?), and the
    /// retry window closed meanwhile. It may still be applied: check the status, then retry (a
    /// change already in effect is not made twice).
    #[error("membership change not applied in time: {0}")]
    ChangeTimedOut(String),
    /// Membership: the leader refused to make a learner a voter, since it has not caught up
    /// with the log (wait for it, or force).
    #[error("not caught up: {0}")]
    NotCaughtUp(String),
    /// [`Client::wait_caught_up`] gave up: member `id` had replicated the log up to `matched`
    /// while the leader's commit index was `commit`.
    #[error("node {id} did not catch up within {waited:?} (replicated {matched}, commit {commit})")]
    CatchUpTimedOut {
        /// The member waited for.
        id: u64,
        /// The highest index the leader knew replicated on it (0: nothing yet).
        matched: u64,
        /// The leader's commit index.
        commit: u64,
        /// How long the call waited.
        waited: Duration,
    },
    /// Membership: the node named is not a member of the cluster (a change that adds it needs
    /// its endpoints; [`Client::wait_caught_up`] found it gone).
    #[error("not a member: {0}")]
    NotMember(String),
    /// Membership: the id was removed from the cluster once, and ids are never reused (a node
    /// wiped and added again under its old id could vote twice in one term).
    #[error("removed id: {0}")]
    RemovedId(String),
    /// Membership: an endpoint of a node to add is missing or not a valid `tcp://host:port`.
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),
    /// Membership: the change would remove the cluster's only voter.
    #[error("only voter: {0}")]
    OnlyVoter(String),
    /// Membership: the change was applied, but the cluster had not left its joint
    /// configuration when the wait ended (the leader finishes it by itself).
    #[error("still joint: {0}")]
    StillJoint(String),
    /// Identity: the request was not signed, its signature or key is not the user's, it names
    /// another cluster, or it expired. Nothing was applied.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Identity: the user may not do this (another user's tuple or session, an admin's
    /// operation, a name that is taken). Nothing was applied.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

/// A tuple with its id.
pub type Entry = (TupleId, Tuple);

/// One change to the cluster's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a node as a learner (it receives the log but does not vote).
    AddLearner {
        /// Its id.
        id: u64,
        /// Its raft endpoint.
        raft: String,
        /// Its client endpoint.
        client: String,
    },
    /// Make a learner (or a new node, with its endpoints) a voter.
    AddVoter {
        /// Its id.
        id: u64,
        /// Its raft endpoint (empty if the cluster knows it).
        raft: String,
        /// Its client endpoint (empty if the cluster knows it).
        client: String,
    },
    /// Remove a node (a leader hands leadership over first).
    Remove {
        /// Its id.
        id: u64,
    },
}

impl MemberChange {
    fn to_proto(&self) -> proto::MemberChange {
        use proto::member_change::Kind;
        match self {
            MemberChange::AddLearner { id, raft, client } => proto::MemberChange {
                kind: Kind::AddLearner as i32,
                id: *id,
                raft_url: raft.clone(),
                client_url: client.clone(),
            },
            MemberChange::AddVoter { id, raft, client } => proto::MemberChange {
                kind: Kind::AddVoter as i32,
                id: *id,
                raft_url: raft.clone(),
                client_url: client.clone(),
            },
            MemberChange::Remove { id } => proto::MemberChange {
                kind: Kind::Remove as i32,
                id: *id,
                ..Default::default()
            },
        }
    }
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long to wait for one answer (a blocking operation adds its own timeout).
    pub request_timeout: Duration,
    /// How long to wait for a TCP connection to one endpoint.
    pub connect_timeout: Duration,
    /// How long to keep retrying one operation across endpoints before giving up.
    pub retry_window: Duration,
    /// Switch to the leader's endpoint when an answer names it (fewer hops); off, the client
    /// stays on its endpoint while that endpoint answers.
    pub follow_leader: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(250),
            retry_window: Duration::from_secs(30),
            follow_leader: true,
        }
    }
}

/// A connection to a cluster.
pub struct Client {
    /// Where the cluster's client endpoints are (leader hints may add more), and which one the
    /// socket talks to.
    route: Route,
    /// The REQ socket, recreated after every failure (zmq.rs never reconnects one).
    socket: Option<zeromq::ReqSocket>,
    /// This client's exactly-once session.
    session: u64,
    /// The number of the last write sent.
    seq: u64,
    options: ClientOptions,
    /// The number of a blocking `in` under way (cancelled if the client is dropped meanwhile).
    pending_take: Option<u64>,
    /// Who signs this client's requests (`None`: unsigned, for reads and anonymous writes).
    identity: Option<Arc<Identity>>,
    /// The cluster the signatures name (asked once, from a node's status).
    cluster_id: Option<u64>,
    /// Cluster time as that status gave it, and when it came (session-less requests expire in
    /// cluster time).
    cluster_time: Option<(u64, Instant)>,
}

impl Drop for Client {
    /// A client dropped while its blocking `in` may still wait in the cluster (its future was
    /// dropped: a timeout around it, Ctrl-C) cancels it, best effort, on a task of its own.
    fn drop(&mut self) {
        let (Some(seq), Ok(runtime)) = (self.pending_take, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let mut canceller = Client::with_options(Vec::<String>::new(), self.options.clone());
        canceller.session = self.session;
        canceller.route = self.route.clone();
        canceller.identity = self.identity.clone();
        canceller.cluster_id = self.cluster_id;
        canceller.cluster_time = self.cluster_time;
        runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), canceller.cancel(seq)).await;
        });
    }
}

fn random_session() -> u64 {
    loop {
        let s: u64 = rand::random();
        if s != 0 {
            return s;
        }
    }
}

impl Client {
    /// A client for the given client endpoints (`tcp://host:port`). Nothing is sent until the
    /// first operation.
    pub fn new<I, S>(endpoints: I) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client::with_options(endpoints, ClientOptions::default())
    }

    /// A client with explicit options.
    pub fn with_options<I, S>(endpoints: I, options: ClientOptions) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        Client {
            route: Route::new(endpoints, rand::random::<u32>() as usize),
            socket: None,
            session: random_session(),
            seq: 0,
            options,
            pending_take: None,
            identity: None,
            cluster_id: None,
            cluster_time: None,
        }
    }

    /// This client, signing every request as `identity`'s user.
    pub fn with_identity(mut self, identity: Identity) -> Client {
        self.set_identity(Some(identity));
        self
    }

    /// Signs every request from now on as `identity`'s user (`None`: unsigned). A new identity
    /// starts a new session (a session belongs to one user).
    pub fn set_identity(&mut self, identity: Option<Identity>) {
        self.identity = identity.map(Arc::new);
        self.session = random_session();
        self.seq = 0;
    }

    /// The identity that signs this client's requests.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }

    /// The id of the cluster the client talks to (asked once, then remembered).
    pub async fn cluster_id(&mut self) -> Result<u64, ClientError> {
        if let Some(id) = self.cluster_id {
            return Ok(id);
        }
        // Boxed: `status` goes through `call`, which may ask for the cluster id.
        let status = Box::pin(self.status()).await?;
        let id = status.cluster_id;
        self.cluster_time = Some((status.cluster_time_ms, Instant::now()));
        if id == 0 {
            return Err(ClientError::Protocol(
                "the node does not know its cluster's id yet".into(),
            ));
        }
        self.cluster_id = Some(id);
        Ok(id)
    }

    /// `request` signed by this client's identity, if it has one, valid for `valid_for` of
    /// cluster time (as a node's status said it lately, plus the time since): a write for as
    /// long as its retries may take, a request outside a session (membership changes, a status
    /// with the digest) for a minute, with a random nonce so that each attempt is a new signature.
    /// None can be applied again once it expires.
    fn seal(&self, mut request: proto::Request, valid_for: Duration) -> proto::Request {
        let (Some(identity), Some(cluster_id)) = (&self.identity, self.cluster_id) else {
            return request;
        };
        let session_less = matches!(
            request.op,
            Some(Op::ConfChange(_)) | Some(Op::Status(proto::StatusRequest { digest: true }))
        );
        let (then, at) = self.cluster_time.unwrap_or((0, Instant::now()));
        let now = then + at.elapsed().as_millis() as u64;
        let valid_for = if session_less {
            request.session = random_session();
            60_000
        } else {
            (valid_for.as_millis() as u64).min(crate::identity::MAX_WRITE_VALIDITY_MS - 120_000)
        };
        request.not_after_ms = now + valid_for;
        identity.seal(request, cluster_id)
    }

    /// Asks a node for cluster time again when this client's estimate is over a minute old (its
    /// signatures' expiries are counted from it).
    async fn refresh_cluster_time(&mut self) -> Result<(), ClientError> {
        let stale = self
            .cluster_time
            .is_none_or(|(_, at)| at.elapsed() > Duration::from_secs(60));
        if self.cluster_id.is_none() || stale {
            self.cluster_id = None;
            self.cluster_id().await?;
        }
        Ok(())
    }

    /// The endpoints this client knows.
    pub fn endpoints(&self) -> &[String] {
        self.route.endpoints()
    }

    /// The session id writes carry.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// `out`: adds a tuple; returns its id.
    pub async fn out(&mut self, tuple: &Tuple) -> Result<TupleId, ClientError> {
        self.out_with_ttl(tuple, None).await
    }

    /// `out` with a time to live.
    pub async fn out_with_ttl(
        &mut self,
        tuple: &Tuple,
        ttl: Option<Duration>,
    ) -> Result<TupleId, ClientError> {
        let op = Op::Out(proto::Out {
            tuple: codec::tuple_to_bytes(tuple),
            ttl_ms: ttl.map_or(0, |d| d.as_millis().max(1) as u64),
        });
        match self.write(op, Duration::ZERO).await? {
            response::Result::OutId(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// Blocking `in`: removes and returns the oldest match, waiting up to `timeout`.
    pub async fn in_(
        &mut self,
        template: &Template,
        timeout: Duration,
    ) -> Result<Entry, ClientError> {
        let op = Op::In(proto::In {
            template: codec::template_to_bytes(template),
            block: true,
            timeout_ms: timeout.as_millis() as u64,
        });
        // Until this call returns, its waiter may be waiting in the cluster: dropping the client
        // (or this future) cancels it; so does giving up here.
        self.pending_take = Some(self.seq + 1);
        let result = self.write(op, timeout).await;
        let taken = self.pending_take.take();
        if let (Err(e), Some(seq)) = (&result, taken)
            && !matches!(e, ClientError::Timeout | ClientError::Cancelled(_))
        {
            let _ = self.cancel(seq).await;
        }
        found(result?)?.ok_or(ClientError::Timeout)
    }

    /// Cancels this client's blocking `in` numbered `seq` if it still waits in the cluster (it
    /// then takes nothing and answers [`ClientError::Cancelled`]). Returns whether it is
    /// cancelled (also when the node cancelled it first because this client's connection
    /// closed); false means it had finished otherwise (it may have taken a tuple). Sent once, with a short timeout: the node also cancels the waiters of a client
    /// that went away, and a waiter's own deadline ends it in any case.
    pub async fn cancel(&mut self, seq: u64) -> Result<bool, ClientError> {
        // The socket may still await the blocking request's answer (a REQ sends nothing else
        // meanwhile): a fresh one carries the cancel.
        self.socket = None;
        let request = self.seal(
            proto::Request {
                session: self.session,
                seq: 0,
                ack: 0,
                op: Some(Op::Cancel(proto::Cancel { seq })),
                ..Default::default()
            },
            Duration::from_secs(60),
        );
        match self.exchange(&request, Duration::ZERO).await {
            Ok(proto::Response {
                result: Some(response::Result::Count(n)),
                ..
            }) => Ok(n > 0),
            Ok(other) => Err(ClientError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
            Err(failure) => Err(ClientError::NoLeader {
                tried: self
                    .route
                    .current()
                    .map(str::to_string)
                    .into_iter()
                    .collect(),
                last: failure.what,
            }),
        }
    }

    /// The sequence number of a blocking `in` this client is waiting on, if any (the CLI cancels
    /// it on Ctrl-C).
    pub fn pending_take(&self) -> Option<u64> {
        self.pending_take
    }

    /// `inp`: removes and returns the oldest match, if any, without waiting.
    pub async fn inp(&mut self, template: &Template) -> Result<Option<Entry>, ClientError> {
        let op = Op::In(proto::In {
            template: codec::template_to_bytes(template),
            block: false,
            timeout_ms: 0,
        });
        found(self.write(op, Duration::ZERO).await?)
    }

    /// Blocking `rd`: the oldest match with an id greater than `after` (0: any), waiting up to
    /// `timeout`.
    pub async fn rd(
        &mut self,
        template: &Template,
        after: TupleId,
        timeout: Duration,
    ) -> Result<Entry, ClientError> {
        let op = Op::Rd(proto::Rd {
            template: codec::template_to_bytes(template),
            block: true,
            timeout_ms: timeout.as_millis() as u64,
            after_id: after,
        });
        found(self.read(op, timeout).await?)?.ok_or(ClientError::Timeout)
    }

    /// `rdp`: the oldest match with an id greater than `after`, if any, without waiting.
    pub async fn rdp(
        &mut self,
        template: &Template,
        after: TupleId,
    ) -> Result<Option<Entry>, ClientError> {
        let op = Op::Rd(proto::Rd {
            template: codec::template_to_bytes(template),
            block: false,
            timeout_ms: 0,
            after_id: after,
        });
        found(self.read(op, Duration::ZERO).await?)
    }

    /// Copy-collect: matches within the query's bounds, oldest or newest first (the server caps
    /// one answer at 10,000 tuples).
    pub async fn rd_all(
        &mut self,
        template: &Template,
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError> {
        let template = codec::template_to_bytes(template);
        self.collect(query, |q| {
            Op::RdAll(proto::RdAll {
                template: template.clone(),
                limit: q.limit.min(u32::MAX as usize) as u32,
                after_id: q.after,
                before_id: wire_before(q.before),
                newest_first: q.newest_first,
            })
        })
        .await
    }

    /// Union copy-collect: the tuples matching any of `templates` (1 to
    /// [`tuplespace::union::MAX_TEMPLATES`]), each once, in one request per answer page, like
    /// [`Client::rd_all`].
    pub async fn rd_any(
        &mut self,
        templates: &[Template],
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError> {
        let templates: Vec<Vec<u8>> = templates.iter().map(codec::template_to_bytes).collect();
        self.collect(query, |q| {
            Op::RdAny(proto::RdAny {
                templates: templates.clone(),
                limit: q.limit.min(u32::MAX as usize) as u32,
                after_id: q.after,
                before_id: wire_before(q.before),
                newest_first: q.newest_first,
                join: None,
            })
        })
        .await
    }

    /// Union copy-collect of `templates` and of the templates `join` yields from the tuples its
    /// source matches when the read runs, all in one consistent read (a source matching more
    /// than [`tuplespace::union::MAX_TEMPLATES`] tuples is [`ClientError::OverLimit`]).
    pub async fn rd_join(
        &mut self,
        templates: &[Template],
        join: &tuplespace::union::Join,
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError> {
        let templates: Vec<Vec<u8>> = templates.iter().map(codec::template_to_bytes).collect();
        let join = proto::Join {
            source: codec::template_to_bytes(&join.source),
            source_field: join.source_field as u32,
            target: codec::template_to_bytes(&join.target),
            target_field: join.target_field as u32,
        };
        self.collect(query, |q| {
            Op::RdAny(proto::RdAny {
                templates: templates.clone(),
                limit: q.limit.min(u32::MAX as usize) as u32,
                after_id: q.after,
                before_id: wire_before(q.before),
                newest_first: q.newest_first,
                join: Some(join.clone()),
            })
        })
        .await
    }

    /// Pages of a copy-collect until the query's limit or the matches run out: a page cut short
    /// by the answer's size limit goes on from its last id.
    async fn collect(
        &mut self,
        query: &Query,
        op: impl Fn(&Query) -> Op,
    ) -> Result<Vec<Entry>, ClientError> {
        let mut all = Vec::new();
        let mut query = *query;
        loop {
            let (page, truncated) = tuples(self.read(op(&query), Duration::ZERO).await?)?;
            let last = page.last().map(|(id, _)| *id);
            query.limit = query.limit.saturating_sub(page.len());
            all.extend(page);
            match last {
                Some(last) if truncated && query.limit > 0 => {
                    if query.newest_first {
                        query.before = last;
                    } else {
                        query.after = last;
                    }
                }
                _ => return Ok(all),
            }
        }
    }

    /// Collect: removes and returns up to `limit` matches, oldest first.
    pub async fn in_all(
        &mut self,
        template: &Template,
        limit: usize,
    ) -> Result<Vec<Entry>, ClientError> {
        let op = Op::InAll(proto::InAll {
            template: codec::template_to_bytes(template),
            limit: limit.min(u32::MAX as usize) as u32,
        });
        Ok(tuples(self.write(op, Duration::ZERO).await?)?.0)
    }

    /// The tuple with this id, if it is in the space.
    pub async fn read_id(&mut self, id: TupleId) -> Result<Option<Tuple>, ClientError> {
        let r = self
            .read(Op::ReadId(proto::ReadId { id }), Duration::ZERO)
            .await?;
        Ok(found(r)?.map(|(_, t)| t))
    }

    /// Removes the tuple with this id, if it is in the space.
    pub async fn take_id(&mut self, id: TupleId) -> Result<Option<Tuple>, ClientError> {
        let r = self
            .write(Op::TakeId(proto::TakeId { id }), Duration::ZERO)
            .await?;
        Ok(found(r)?.map(|(_, t)| t))
    }

    /// Compare-and-set: adds `tuple` only if nothing matches `template`; its id if it did.
    pub async fn cas(
        &mut self,
        template: &Template,
        tuple: &Tuple,
        ttl: Option<Duration>,
    ) -> Result<Option<TupleId>, ClientError> {
        let op = Op::Cas(proto::Cas {
            template: codec::template_to_bytes(template),
            tuple: codec::tuple_to_bytes(tuple),
            ttl_ms: ttl.map_or(0, |d| d.as_millis().max(1) as u64),
        });
        match self.write(op, Duration::ZERO).await? {
            response::Result::CasId(0) => Ok(None),
            response::Result::CasId(id) => Ok(Some(id)),
            other => Err(unexpected(other)),
        }
    }

    /// How many tuples match.
    pub async fn count(&mut self, template: &Template) -> Result<u64, ClientError> {
        let op = Op::Count(proto::Count {
            template: codec::template_to_bytes(template),
        });
        match self.read(op, Duration::ZERO).await? {
            response::Result::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// The status of whichever node answers.
    pub async fn status(&mut self) -> Result<proto::Status, ClientError> {
        self.ask_status(false, false).await
    }

    /// A status (with the digest or not), from this client's node only when `pinned`.
    async fn ask_status(
        &mut self,
        digest: bool,
        pinned: bool,
    ) -> Result<proto::Status, ClientError> {
        let op = Op::Status(proto::StatusRequest { digest });
        match self.call(op, false, Duration::ZERO, pinned).await? {
            response::Result::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Node `endpoint`'s status with a digest of its space (a checksum of everything it holds:
    /// replicas that applied the same log agree). The node computes it off its raft thread.
    /// Only the admin may ask (`admin` signs the request).
    pub async fn digest_of(
        endpoint: &str,
        options: &ClientOptions,
        admin: &Identity,
    ) -> Result<proto::Status, ClientError> {
        let mut one = Client::with_options([endpoint], options.clone());
        one.options.retry_window = options.request_timeout;
        one.identity = Some(Arc::new(admin.clone()));
        one.ask_status(true, true).await
    }

    /// Registers this client's identity: binds its user name to its public key in the cluster
    /// (first come, first served). Registering the same key again is answered like the first
    /// time; a name taken by another key is [`ClientError::PermissionDenied`].
    pub async fn register(&mut self) -> Result<TupleId, ClientError> {
        let identity = self.signer("register")?;
        let op = Op::Register(proto::Register {
            name: identity.user().to_string(),
            public_key: identity.public_key().to_vec(),
        });
        self.expect_id(op).await
    }

    /// The admin registers user `name` with `public_key` (needed when registration is closed).
    pub async fn register_user(
        &mut self,
        name: &str,
        public_key: [u8; 32],
    ) -> Result<TupleId, ClientError> {
        let op = Op::Register(proto::Register {
            name: name.to_string(),
            public_key: public_key.to_vec(),
        });
        self.expect_id(op).await
    }

    /// Replaces this user's key with `new`'s (signed by the current key); the client signs
    /// with `new` afterwards.
    pub async fn rotate_key(&mut self, new: Identity) -> Result<TupleId, ClientError> {
        self.signer("rotate a key")?;
        let op = Op::RotateKey(proto::RotateKey {
            public_key: new.public_key().to_vec(),
        });
        let id = self.expect_id(op).await?;
        self.set_identity(Some(new));
        Ok(id)
    }

    /// The admin replaces user `name`'s key (a lost key).
    pub async fn reset_key(
        &mut self,
        name: &str,
        public_key: [u8; 32],
    ) -> Result<TupleId, ClientError> {
        let op = Op::ResetKey(proto::ResetKey {
            name: name.to_string(),
            public_key: public_key.to_vec(),
        });
        self.expect_id(op).await
    }

    /// The access policy in force.
    pub async fn policy(&mut self) -> Result<proto::Policy, ClientError> {
        let op = Op::GetPolicy(proto::GetPolicy {});
        match self.read(op, Duration::ZERO).await? {
            response::Result::Policy(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// The admin replaces the access policy.
    pub async fn set_policy(&mut self, policy: proto::Policy) -> Result<(), ClientError> {
        let op = Op::SetPolicy(proto::SetPolicy {
            policy: Some(policy),
        });
        match self.write(op, Duration::ZERO).await? {
            response::Result::Count(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn signer(&self, what: &str) -> Result<Arc<Identity>, ClientError> {
        self.identity.clone().ok_or_else(|| {
            ClientError::Unauthenticated(format!("to {what}, the client needs an identity"))
        })
    }

    async fn expect_id(&mut self, op: Op) -> Result<TupleId, ClientError> {
        match self.write(op, Duration::ZERO).await? {
            response::Result::OutId(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// The status of one particular node (no retries elsewhere).
    pub async fn status_of(
        endpoint: &str,
        options: &ClientOptions,
    ) -> Result<proto::Status, ClientError> {
        let mut one = Client::with_options([endpoint], options.clone());
        one.options.retry_window = options.request_timeout;
        one.ask_status(false, true).await
    }

    /// Applies membership changes in one step (several go through joint consensus) and waits
    /// until the cluster has left any joint state. Safe to retry: a change already in effect is
    /// answered without changing anything. Returns the leader's status afterwards.
    ///
    /// While another change is in progress, the leader hands leadership over or a change is not
    /// applied in time, the call retries (like a leader change) until the retry window closes,
    /// then fails with [`ClientError::ChangeInProgress`], [`ClientError::HandingOver`] or
    /// [`ClientError::ChangeTimedOut`]. A refusal is [`ClientError::NotCaughtUp`],
    /// [`ClientError::NotMember`], [`ClientError::RemovedId`],
    /// [`ClientError::InvalidEndpoint`], [`ClientError::OnlyVoter`] or, for anything else
    /// malformed or unsafe, [`ClientError::Invalid`]. A change applied whose joint state the
    /// cluster has not left by the end of the window is [`ClientError::StillJoint`].
    pub async fn change_membership(
        &mut self,
        changes: &[MemberChange],
    ) -> Result<proto::Status, ClientError> {
        self.change_membership_with(changes, false).await
    }

    /// [`Client::change_membership`], optionally skipping the checks the leader makes for the
    /// cluster's safety (`force`): that a new voter is a learner that has caught up, and that the
    /// new configuration can reach quorum with the nodes that answer now. Forcing can leave the
    /// cluster unable to commit anything; it is for an admin who knows why.
    pub async fn change_membership_with(
        &mut self,
        changes: &[MemberChange],
        force: bool,
    ) -> Result<proto::Status, ClientError> {
        let op = Op::ConfChange(proto::ConfChangeRequest {
            changes: changes.iter().map(MemberChange::to_proto).collect(),
            force,
        });
        let status = match self.call(op, false, Duration::ZERO, false).await? {
            response::Result::Status(s) => s,
            other => return Err(unexpected(other)),
        };
        self.wait_not_joint(status).await
    }

    async fn wait_not_joint(
        &mut self,
        mut status: proto::Status,
    ) -> Result<proto::Status, ClientError> {
        let deadline = Instant::now() + self.options.retry_window;
        while status
            .members
            .iter()
            .any(|m| m.role() == proto::Role::OutgoingVoter)
        {
            if Instant::now() >= deadline {
                return Err(ClientError::StillJoint(
                    "the cluster did not leave its joint configuration in time".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = self.leader_status().await?;
        }
        Ok(status)
    }

    /// The status as the leader sees it (with each member's replicated index).
    pub async fn leader_status(&mut self) -> Result<proto::Status, ClientError> {
        let deadline = Instant::now() + self.options.retry_window;
        loop {
            let status = self.status().await?;
            if status.role() == proto::Role::Leader {
                return Ok(status);
            }
            let hint = status
                .members
                .iter()
                .find(|m| m.id == status.leader_id)
                .map(|m| m.client_url.clone())
                .unwrap_or_default();
            if !self.route.follow_hint(&hint) {
                self.route.rotate();
            }
            self.socket = None;
            if Instant::now() >= deadline {
                return Err(ClientError::NoLeader {
                    tried: self.route.endpoints().to_vec(),
                    last: "no node reports being the leader".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Adds a node as a learner, waits until it has caught up with the leader (its replicated
    /// index within `max_lag` entries of the leader's commit index), then promotes it to voter.
    pub async fn add_node(
        &mut self,
        id: u64,
        raft: &str,
        client: &str,
        catch_up: Duration,
        max_lag: u64,
    ) -> Result<proto::Status, ClientError> {
        self.change_membership(&[MemberChange::AddLearner {
            id,
            raft: raft.to_string(),
            client: client.to_string(),
        }])
        .await?;
        self.wait_caught_up(id, catch_up, max_lag).await?;
        self.change_membership(&[MemberChange::AddVoter {
            id,
            raft: String::new(),
            client: String::new(),
        }])
        .await
    }

    /// Waits until member `id` has replicated the log to within `max_lag` entries of the
    /// leader's commit index: [`ClientError::CatchUpTimedOut`] (with how far it got) if
    /// `timeout` passes first, [`ClientError::NotMember`] if `id` is not (or no longer) a
    /// member.
    pub async fn wait_caught_up(
        &mut self,
        id: u64,
        timeout: Duration,
        max_lag: u64,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.leader_status().await?;
            let matched = status
                .members
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.matched);
            match matched {
                Some(m) if m + max_lag >= status.commit && m > 0 => return Ok(()),
                None => {
                    return Err(ClientError::NotMember(format!(
                        "node {id} is not a member of the cluster"
                    )));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(ClientError::CatchUpTimedOut {
                    id,
                    matched: matched.unwrap_or(0),
                    commit: status.commit,
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn write(&mut self, op: Op, wait: Duration) -> Result<response::Result, ClientError> {
        self.seq += 1;
        self.call(op, true, wait, false).await
    }

    /// Cluster time now, as this client estimates it (a node's status, refreshed each minute,
    /// plus the time since): what the expiry of a write signed elsewhere counts from.
    pub async fn cluster_now_ms(&mut self) -> Result<u64, ClientError> {
        self.refresh_cluster_time().await?;
        let (then, at) = self.cluster_time.unwrap_or((0, Instant::now()));
        Ok(then + at.elapsed().as_millis() as u64)
    }

    /// Sends a write that someone else signed (a browser holding its user's key: the web app
    /// relays it), retried like any write on this client's route, never changed or signed
    /// again. Its session and number are the signer's, so a retry is applied once. If the
    /// session has expired the write is certainly not applied, and the answer is
    /// [`ClientError::SessionExpired`]: it must be signed again, in a new session.
    pub async fn relay(&mut self, sealed: proto::Request) -> Result<response::Result, ClientError> {
        let mut call = Call::new(
            true,
            false,
            self.options.follow_leader,
            Instant::now(),
            self.options.retry_window,
        );
        loop {
            match self.attempt(&mut call, &sealed, Duration::ZERO).await {
                Next::Done(result) => return result,
                Next::RenewSession => {
                    return Err(ClientError::SessionExpired(
                        "the signer's session expired before the write was applied (nothing \
                         was applied): sign it again in a new session"
                            .into(),
                    ));
                }
                Next::Retry(pause) => tokio::time::sleep(pause).await,
            }
        }
    }

    async fn read(&mut self, op: Op, wait: Duration) -> Result<response::Result, ClientError> {
        self.call(op, false, wait, false).await
    }

    /// Sends one operation until some node gives a definite answer or the retry window closes
    /// (the rules are in [`retry`]).
    async fn call(
        &mut self,
        op: Op,
        is_write: bool,
        wait: Duration,
        pinned: bool,
    ) -> Result<response::Result, ClientError> {
        if self.route.current().is_none() {
            return Err(ClientError::NoLeader {
                tried: vec![],
                last: "no endpoints given".into(),
            });
        }
        let window = self.options.retry_window + wait;
        let mut call = Call::new(
            is_write,
            pinned,
            self.options.follow_leader,
            Instant::now(),
            window,
        );
        let signs = self.identity.is_some()
            && (is_write
                || matches!(
                    op,
                    Op::ConfChange(_) | Op::Status(proto::StatusRequest { digest: true })
                ));
        if signs {
            self.refresh_cluster_time().await?;
        }
        let valid_for = self.options.retry_window + wait + Duration::from_secs(60);
        let mut refreshed = false;
        loop {
            let plain = proto::Request {
                session: if is_write { self.session } else { 0 },
                seq: if is_write { self.seq } else { 0 },
                ack: if is_write { self.seq - 1 } else { 0 },
                op: Some(op.clone()),
                ..Default::default()
            };
            let request = if signs {
                self.seal(plain, valid_for)
            } else {
                plain
            };
            match self.attempt(&mut call, &request, wait).await {
                // Refused as expired: this client's idea of cluster time was behind (it asked a
                // node that was itself behind). Nothing was applied, so the same request, with an
                // expiry from a fresh look at cluster time, is sent again, once.
                Next::Done(Err(ClientError::Unauthenticated(why)))
                    if signs && !refreshed && why.contains("expired") =>
                {
                    refreshed = true;
                    self.cluster_time = None;
                    self.refresh_cluster_time().await?;
                }
                Next::Done(result) => return result,
                Next::RenewSession => {
                    self.session = random_session();
                    self.seq = 1;
                }
                Next::Retry(pause) => tokio::time::sleep(pause).await,
            }
        }
    }

    /// One attempt of `call`: `request` to the current endpoint, and what to do next.
    async fn attempt(&mut self, call: &mut Call, request: &proto::Request, wait: Duration) -> Next {
        let before = self.route.current().unwrap_or_default().to_string();
        call.trying(&before);
        let attempt = match self.exchange(request, wait).await {
            Ok(resp) => Attempt::Answer(Box::new(resp)),
            Err(Failure { what, sent }) => {
                // zmq.rs never reconnects a REQ socket: a fresh one next time.
                self.socket = None;
                Attempt::Failed { what, sent }
            }
        };
        let next = call.judge(&mut self.route, attempt, Instant::now());
        if self.route.current() != Some(before.as_str()) {
            self.socket = None;
        }
        next
    }

    /// One request and its answer on the current endpoint, every wait bounded.
    async fn exchange(
        &mut self,
        request: &proto::Request,
        wait: Duration,
    ) -> Result<proto::Response, Failure> {
        let unsent = |what: String| Failure { what, sent: false };
        let sent = |what: String| Failure { what, sent: true };
        if self.socket.is_none() {
            let mut options = zeromq::SocketOptions::default();
            options.connect_timeout(self.options.connect_timeout);
            let mut socket = zeromq::ReqSocket::with_options(options);
            let endpoint = self.route.current().unwrap_or_default();
            match tokio::time::timeout(self.options.connect_timeout, socket.connect(endpoint)).await
            {
                Ok(Ok(())) => self.socket = Some(socket),
                Ok(Err(e)) => return Err(unsent(format!("connect failed: {e}"))),
                Err(_) => return Err(unsent("connect timed out".into())),
            }
        }
        let socket = self
            .socket
            .as_mut()
            .ok_or_else(|| unsent("no socket".into()))?;
        let msg = ZmqMessage::from(Bytes::from(request.encode_to_vec()));
        // From here on the request may have reached the node.
        match tokio::time::timeout(self.options.request_timeout, socket.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(sent(format!("send failed: {e}"))),
            Err(_) => return Err(sent("send timed out".into())),
        }
        let reply =
            match tokio::time::timeout(self.options.request_timeout + wait, socket.recv()).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(sent(format!("receive failed: {e}"))),
                Err(_) => return Err(sent("no answer in time".into())),
            };
        let frames = reply.into_vec();
        let payload = frames
            .last()
            .ok_or_else(|| sent("an empty message".into()))?;
        proto::Response::decode(payload.as_ref())
            .map_err(|e| sent(format!("undecodable answer: {e}")))
    }
}

/// Why one exchange failed, and whether the request may have reached the node.
struct Failure {
    what: String,
    sent: bool,
}

pub(crate) fn error_of(code: Code, message: String) -> ClientError {
    match code {
        Code::ChangeInProgress => ClientError::ChangeInProgress(message),
        Code::HandingOver => ClientError::HandingOver(message),
        Code::ChangeTimedOut => ClientError::ChangeTimedOut(message),
        Code::NotCaughtUp => ClientError::NotCaughtUp(message),
        Code::NotMember => ClientError::NotMember(message),
        Code::RemovedId => ClientError::RemovedId(message),
        Code::InvalidEndpoint => ClientError::InvalidEndpoint(message),
        Code::OnlyVoter => ClientError::OnlyVoter(message),
        Code::Invalid => ClientError::Invalid(message),
        Code::TooLarge => ClientError::TooLarge(message),
        Code::SessionExpired => ClientError::SessionExpired(message),
        Code::Removed => ClientError::Removed(message),
        Code::Storage => ClientError::Storage(message),
        Code::TimedOut => ClientError::Timeout,
        Code::Limit => ClientError::OverLimit(message),
        Code::Cancelled => ClientError::Cancelled(message),
        Code::Unauthenticated => ClientError::Unauthenticated(message),
        Code::PermissionDenied => ClientError::PermissionDenied(message),
        Code::Unavailable | Code::Overloaded | Code::Internal => ClientError::Protocol(message),
    }
}

/// The error for an answer of the wrong kind.
pub fn unexpected(r: response::Result) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {r:?}"))
}

fn decode_entry(item: proto::IdTuple) -> Result<Entry, ClientError> {
    let tuple = codec::decode_tuple(&item.tuple)
        .map_err(|e| ClientError::Protocol(format!("undecodable tuple from the node: {e}")))?;
    Ok((item.id, tuple))
}

/// The tuple a read or take answer carries (if it found one).
pub fn found(r: response::Result) -> Result<Option<Entry>, ClientError> {
    match r {
        response::Result::Found(f) => f.item.map(decode_entry).transpose(),
        other => Err(unexpected(other)),
    }
}

/// The entries of a list answer, and whether the node cut it short at its size limit.
pub fn tuples(r: response::Result) -> Result<(Vec<Entry>, bool), ClientError> {
    match r {
        response::Result::Tuples(list) => {
            let entries = list
                .items
                .into_iter()
                .map(decode_entry)
                .collect::<Result<_, _>>()?;
            Ok((entries, list.truncated))
        }
        other => Err(unexpected(other)),
    }
}

/// A query's upper bound on the wire (0: none).
fn wire_before(before: TupleId) -> TupleId {
    if before == TupleId::MAX { 0 } else { before }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::error as error_result;
    use crate::guard::{Router, RouterHandle};
    use std::sync::Arc;
    use tuplespace::tuple;

    /// A fake node: answers each request with what `answer` says (`None`: no answer at all).
    async fn fake_node(
        answer: impl Fn(&proto::Request, usize) -> Option<proto::Response> + Send + 'static,
    ) -> (String, Arc<std::sync::Mutex<Vec<proto::Request>>>) {
        let config = crate::server::guard_config();
        let refuser = Arc::new(crate::refusals::Refuser::default());
        let mut router = Router::bind(
            "tcp://127.0.0.1:0",
            config,
            refuser,
            crate::logging::discard(),
        )
        .await
        .expect("bind");
        let endpoint = router.endpoint.clone();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let handle: RouterHandle = router.handle();
        tokio::spawn(async move {
            while let Some(mut frames) = router.recv().await {
                let payload = frames.pop().unwrap_or_default();
                let Ok(request) = proto::Request::decode(payload.as_ref()) else {
                    continue;
                };
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(request.clone());
                    log.len()
                };
                if let Some(resp) = answer(&request, n) {
                    frames.push(Bytes::from(resp.encode_to_vec()));
                    let _ = handle.send(frames);
                }
            }
        });
        (endpoint, seen)
    }

    fn quick() -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(300),
            retry_window: Duration::from_secs(5),
            follow_leader: false,
        }
    }

    /// The first attempt's outcome is unknown (no answer); the retry finds the session gone. The
    /// write may have been applied: it is reported as unknown, never sent as a new request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_outcome_is_never_resent_as_a_new_request() {
        let (endpoint, seen) = fake_node(|_, n| {
            (n > 1).then(|| {
                crate::answer::respond(error_result(
                    Code::SessionExpired,
                    "session unknown; nothing applied",
                ))
            })
        })
        .await;
        let mut client = Client::with_options([endpoint], quick());
        let session = client.session();
        let err = client.out(&tuple!["x"]).await.unwrap_err();
        assert!(matches!(err, ClientError::OutcomeUnknown(_)), "{err:?}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "one attempt and one retry: {seen:?}");
        assert!(seen.iter().all(|r| r.session == session && r.seq == 1));
    }

    /// A session that is gone when a request is first sent: nothing can have been applied, so a
    /// fresh session sends it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_certainly_unapplied_write_is_resent_in_a_new_session() {
        let (endpoint, seen) = fake_node(|_, n| {
            Some(if n == 1 {
                crate::answer::respond(error_result(Code::SessionExpired, "session unknown"))
            } else {
                crate::answer::respond(response::Result::OutId(7))
            })
        })
        .await;
        let mut client = Client::with_options([endpoint], quick());
        assert_eq!(client.out(&tuple!["x"]).await, Ok(7));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_ne!(seen[0].session, seen[1].session, "a new session");
        assert_eq!(seen[1].seq, 1);
    }

    /// A leader's status: node 1 leads at commit 100; member 4 has the given role and has
    /// replicated up to `matched`.
    fn leader_status(role_of_4: proto::Role, matched: u64) -> proto::Response {
        let member = |id: u64, role: proto::Role, matched: u64| proto::Member {
            id,
            role: role as i32,
            matched,
            ..Default::default()
        };
        crate::answer::respond(response::Result::Status(proto::Status {
            id: 1,
            role: proto::Role::Leader as i32,
            leader_id: 1,
            commit: 100,
            members: vec![
                member(1, proto::Role::Voter, 100),
                member(4, role_of_4, matched),
            ],
            ..Default::default()
        }))
    }

    fn short_window() -> ClientOptions {
        ClientOptions {
            retry_window: Duration::from_millis(400),
            ..quick()
        }
    }

    /// A change that stays "in progress" is retried until the window closes, and then reads as
    /// what the node said, not as an unreachable cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_still_in_progress_when_the_window_closes_says_so() {
        let (endpoint, seen) = fake_node(|_, _| {
            Some(crate::answer::respond(error_result(
                Code::ChangeInProgress,
                "another membership change is in progress; retry when it is done",
            )))
        })
        .await;
        let mut client = Client::with_options([endpoint], short_window());
        let err = client
            .change_membership(&[MemberChange::Remove { id: 4 }])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::ChangeInProgress(m) if m.contains("in progress")),
            "{err:?}"
        );
        assert!(seen.lock().unwrap().len() > 1, "it was retried");
    }

    /// A change applied whose joint configuration is not left within the window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_configuration_that_stays_joint_is_reported_as_such() {
        let (endpoint, _) =
            fake_node(|_, _| Some(leader_status(proto::Role::OutgoingVoter, 100))).await;
        let mut client = Client::with_options([endpoint], short_window());
        let err = client
            .change_membership(&[MemberChange::Remove { id: 4 }])
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::StillJoint(_)), "{err:?}");
    }

    /// Waiting for a learner: how far it got when the wait ends, or that it is not a member.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_for_a_learner_ends_with_how_far_it_got() {
        let (endpoint, _) = fake_node(|_, _| Some(leader_status(proto::Role::Learner, 5))).await;
        let mut client = Client::with_options([endpoint], short_window());
        let err = client
            .wait_caught_up(4, Duration::from_millis(300), 10)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ClientError::CatchUpTimedOut {
                id: 4,
                matched: 5,
                commit: 100,
                waited: Duration::from_millis(300),
            }
        );
        let err = client
            .wait_caught_up(9, Duration::from_millis(300), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::NotMember(_)), "{err:?}");
        client
            .wait_caught_up(4, Duration::from_millis(300), 95)
            .await
            .expect("within 95 entries of the commit index");
    }
}
