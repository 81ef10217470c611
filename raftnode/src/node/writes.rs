//! Writes: proposing client commands, stamping them with cluster time, and the proposals a
//! leader makes on its own (a tick when a deadline is due, the space's caps from its cluster
//! file). A write is answered when this node applies it (`ready.rs` hands the result over), or
//! told to retry when the leader changes under it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::StateRole;
use slog::info;
use tokio::sync::oneshot;

use super::Node;
use crate::answer::{error, respond};
use crate::proto::{self, Command, error::Code};

/// The clients waiting on writes this node proposed, and the leader's own proposals in flight.
pub(super) struct Writes {
    /// Client writes proposed through this node, by (session, seq).
    pending: HashMap<(u64, u64), Vec<oneshot::Sender<proto::Response>>>,
    /// When this node (as leader) last proposed a tick, so it proposes one at a time.
    tick_proposed: Option<Instant>,
    /// The space's caps this node's cluster file gives.
    limits: proto::SpaceLimits,
    /// When this node (as leader) last proposed its caps, so it proposes one at a time.
    limits_proposed: Option<Instant>,
}

impl Writes {
    pub(super) fn new(limits: proto::SpaceLimits) -> Writes {
        Writes {
            pending: HashMap::new(),
            tick_proposed: None,
            limits,
            limits_proposed: None,
        }
    }

    /// The clients waiting for `(session, seq)`, if any wait here.
    pub(super) fn take_waiting(
        &mut self,
        session: u64,
        seq: u64,
    ) -> Option<Vec<oneshot::Sender<proto::Response>>> {
        self.pending.remove(&(session, seq))
    }

    /// Every client waiting here.
    pub(super) fn take_all(&mut self) -> Vec<oneshot::Sender<proto::Response>> {
        std::mem::take(&mut self.pending)
            .into_values()
            .flatten()
            .collect()
    }

    /// Forgets the clients that went away.
    pub(super) fn forget_departed(&mut self) {
        self.pending.retain(|_, replies| {
            replies.retain(|r| !r.is_closed());
            !replies.is_empty()
        });
    }
}

impl Node {
    /// The stamp for a proposal: cluster time if this node leads; a follower's proposal is
    /// restamped by the leader it reaches (`admission.rs`), so it carries none.
    fn stamp(&mut self) -> u64 {
        if self.raw.raft.state == StateRole::Leader {
            self.clock.stamp()
        } else {
            0
        }
    }

    /// Proposes a client's write; the client is answered when this node applies it.
    pub(super) fn propose(&mut self, mut cmd: Command, reply: oneshot::Sender<proto::Response>) {
        // An unsigned write where the policy wants users never reaches the log (the state
        // machine would refuse it anyway; this keeps anonymous senders from filling the log).
        // (The leader also drops unsigned proposals a follower forwards.) Unknown users and
        // keys are left to the machine: a node's registry may lag.
        if cmd.user.is_empty() && !self.machine.policy_ref().anonymous_writes {
            let why = "writes need a registered user: sign the request with the user's key \
                       (`microblog register`)";
            self.refuser
                .refuse(&self.logger, "client.unsigned_write", "a client", why);
            let _ = reply.send(self.with_hint(respond(error(Code::Unauthenticated, why))));
            return;
        }
        cmd.stamp_ms = self.stamp();
        let key = (cmd.session, cmd.seq);
        match self.raw.propose(vec![], cmd.encode_to_vec()) {
            Ok(()) => self.writes.pending.entry(key).or_default().push(reply),
            Err(e) => {
                let resp = self.with_hint(respond(error(
                    Code::Unavailable,
                    format!("cannot propose: {e} (no leader known yet?); retry"),
                )));
                let _ = reply.send(resp);
            }
        }
    }

    /// The leader changed: proposals this node forwarded to the old leader may be lost, so the
    /// clients waiting on them are told to retry now rather than after the commit timeout. A
    /// retry carries the same (session, seq), so one that did commit is not applied twice.
    pub(super) fn fail_pending_writes(&mut self) {
        let waiting = self.writes.take_all();
        if waiting.is_empty() {
            return;
        }
        let resp = self.with_hint(respond(error(
            Code::Unavailable,
            "the leader changed while this request was in flight; retry (it is applied once)",
        )));
        for reply in waiting {
            let _ = reply.send(resp.clone());
        }
    }

    /// A leader proposes a tick when a deadline (a TTL, a blocking take's timeout, a session's
    /// expiry) is due in cluster time, one at a time.
    pub(super) fn propose_tick_if_due(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let Some(deadline) = self.machine.next_deadline() else {
            return;
        };
        let due = self.clock.now() >= deadline;
        let in_flight = self
            .writes
            .tick_proposed
            .is_some_and(|at| now.duration_since(at) < Duration::from_millis(500));
        if due && !in_flight {
            let cmd = Command {
                stamp_ms: self.stamp(),
                op: Some(proto::command::Op::Tick(proto::Tick {})),
                ..Default::default()
            };
            if self.raw.propose(vec![], cmd.encode_to_vec()).is_ok() {
                self.writes.tick_proposed = Some(now);
            }
        }
    }

    /// A leader whose cluster file gives other caps than the log's puts its own in the log.
    pub(super) fn propose_limits_if_changed(&mut self, now: Instant) {
        let limits = self.writes.limits;
        if self.raw.raft.state != StateRole::Leader
            || self.machine.limits() == limits
            || self
                .writes
                .limits_proposed
                .is_some_and(|at| now.duration_since(at) < Duration::from_secs(2))
        {
            return;
        }
        let cmd = Command {
            stamp_ms: self.clock.stamp(),
            op: Some(proto::command::Op::SetLimits(limits)),
            ..Default::default()
        };
        if self.raw.propose(vec![], cmd.encode_to_vec()).is_ok() {
            info!(self.logger, "proposing the space's caps from the cluster file";
                "max_tuples" => limits.max_tuples, "max_bytes" => limits.max_bytes);
            self.writes.limits_proposed = Some(now);
        }
    }
}
