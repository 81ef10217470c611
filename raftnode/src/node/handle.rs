//! [`NodeHandle`]: the async way into a node's inbox, used by the client endpoint. Every wait
//! is bounded, and what a client is told when the node does not answer in time is decided here
//! (the simulator's endpoint gives the same answers through [`unanswered`] and [`dropped`]).

use std::sync::mpsc::Sender;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{NodeMsg, ReadOp};
use crate::answer::{error, respond};
use crate::proto::{self, Command, error::Code};

/// A cloneable way into a node's inbox.
#[derive(Clone)]
pub struct NodeHandle {
    tx: Sender<NodeMsg>,
}

/// How long a write may wait to be committed and applied before the client is told to retry.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer when the node has stopped or dropped a request without answering.
pub fn dropped() -> proto::Response {
    respond(error(Code::Unavailable, "the node dropped the request"))
}

/// The answer when the node did not answer within `timeout`: the request may still be applied
/// later, which `UNAVAILABLE` tells the client.
pub fn unanswered(timeout: Duration) -> proto::Response {
    respond(error(
        Code::Unavailable,
        format!(
            "not applied within {} ms (no leader or no quorum?); retry",
            timeout.as_millis()
        ),
    ))
}

impl NodeHandle {
    /// A handle sending into `tx`.
    pub fn new(tx: Sender<NodeMsg>) -> Self {
        NodeHandle { tx }
    }

    /// Sends a message to the node; false if it has stopped.
    pub fn send(&self, msg: NodeMsg) -> bool {
        self.tx.send(msg).is_ok()
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<proto::Response>) -> NodeMsg,
        timeout: Duration,
    ) -> proto::Response {
        let (reply, rx) = oneshot::channel();
        if !self.send(make(reply)) {
            return respond(error(Code::Unavailable, "the node is shutting down"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => dropped(),
            Err(_) => unanswered(timeout),
        }
    }

    /// Proposes a write and waits for it to be applied here.
    pub async fn write(&self, cmd: Command, timeout: Duration) -> proto::Response {
        self.ask(|reply| NodeMsg::Write { cmd, reply }, timeout)
            .await
    }

    /// Runs a linearizable read.
    pub async fn read(&self, op: ReadOp, timeout: Duration) -> proto::Response {
        self.ask(|reply| NodeMsg::Read { op, reply }, timeout).await
    }

    /// Proposes a membership change (on the leader) and waits for it to be applied.
    pub async fn conf_change(
        &self,
        changes: Vec<proto::MemberChange>,
        force: bool,
        timeout: Duration,
    ) -> proto::Response {
        self.ask(
            |reply| NodeMsg::ConfChange {
                changes,
                force,
                reply,
            },
            timeout,
        )
        .await
    }

    /// Whether `user`, signing with `public_key`, is the admin (`None` inside: this node does not
    /// know the admin yet), and cluster time as this node sees it now; `None` if the node has
    /// stopped.
    pub async fn is_admin(&self, user: &str, public_key: &[u8]) -> Option<(Option<bool>, u64)> {
        let (reply, rx) = oneshot::channel();
        let msg = NodeMsg::IsAdmin {
            user: user.to_string(),
            public_key: public_key.to_vec(),
            reply,
        };
        if !self.send(msg) {
            return None;
        }
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .ok()?
            .ok()
    }

    /// The node's status (with the space's digest if asked), or `None` if it has stopped.
    pub async fn status(&self, digest: bool) -> Option<proto::Status> {
        let (tx, rx) = oneshot::channel();
        if !self.send(NodeMsg::Status(tx, digest)) {
            return None;
        }
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .ok()?
            .ok()
    }
}
