//! Membership: planning a change on the leader, applying changes, and keeping the address book,
//! the transport and the machine's member list in line with the configuration.
//!
//! A change is checked on the leader before it is proposed (see [`plan`]): a new voter must be a
//! learner that has caught up, the new configuration must be able to reach quorum with the nodes
//! that answer now (both unless forced), at most [`MAX_CHANGES`] changes go in one request, and a
//! change may name addresses only for the nodes it adds. When applied, a change's context adds
//! addresses only for nodes it adds that were not members: it never rewrites a current member's
//! address. Transport tasks exist only for members.
//!
//! Every refusal carries a code a client can act on without reading the message:
//! `CHANGE_IN_PROGRESS`, `HANDING_OVER` and `CHANGE_TIMED_OUT` are transient (retried like
//! `UNAVAILABLE`); `NOT_CAUGHT_UP`, `NOT_MEMBER`, `REMOVED_ID`, `INVALID_ENDPOINT` and
//! `ONLY_VOTER` are definite; anything else malformed or unsafe is `INVALID`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as _;
use raft::StateRole;
use raft::eraftpb::{ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType};
use slog::{error, info, warn};
use tokio::sync::oneshot;

use super::{Node, NodeError};
use crate::answer::{error, respond};
use crate::proto::{self, error::Code, member_change::Kind, response};

/// The most changes one membership request may make.
pub const MAX_CHANGES: usize = 8;

/// How far (in entries) a learner may trail the leader's log and still be promoted.
pub const MAX_PROMOTE_LAG: u64 = 1000;

/// The voters after `changes` are applied to `voters`.
fn voters_after(voters: &[u64], changes: &[proto::MemberChange]) -> BTreeSet<u64> {
    let mut after: BTreeSet<u64> = voters.iter().copied().collect();
    for c in changes {
        match Kind::try_from(c.kind) {
            Ok(Kind::AddVoter) => {
                after.insert(c.id);
            }
            Ok(Kind::AddLearner | Kind::Remove) => {
                after.remove(&c.id);
            }
            Err(_) => {}
        }
    }
    after
}

/// Whether a majority of `voters` is among the nodes `answering`; the error explains.
fn quorum_reachable(voters: &BTreeSet<u64>, answering: &BTreeSet<u64>) -> Result<(), String> {
    if voters.is_empty() {
        return Err("the change would leave no voters".into());
    }
    let needed = voters.len() / 2 + 1;
    let up: Vec<u64> = voters.intersection(answering).copied().collect();
    if up.len() >= needed {
        return Ok(());
    }
    Err(format!(
        "the new configuration (voters {voters:?}) needs {needed} of them to answer, but only \
         {up:?} answer now: it could not commit anything; add nodes as learners first and wait \
         until they answer, or --force"
    ))
}

/// How long a membership change may wait to be applied before its client is told to retry.
const CONF_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// This node's view of the membership beyond raft's own: who it was, who it heard from, who it
/// saw removed, and the change it proposed.
pub(super) struct Members {
    /// The client waiting for the membership change this node proposed.
    pending_conf: Option<(Instant, oneshot::Sender<proto::Response>)>,
    /// When this node (as leader) last proposed leaving a joint configuration.
    leave_proposed: Option<Instant>,
    /// Peers seen removed from the cluster, shared with the peer endpoint.
    removed_peers: Arc<Mutex<HashSet<u64>>>,
    /// This node has been a member of the configuration (a joining node is not, until added).
    was_member: bool,
    /// The members of the configuration as last applied.
    last: BTreeSet<u64>,
    /// When each peer was last heard from (an admitted batch): who "answers now".
    last_heard: HashMap<u64, Instant>,
}

impl Members {
    pub(super) fn new(removed_peers: Arc<Mutex<HashSet<u64>>>) -> Members {
        Members {
            pending_conf: None,
            leave_proposed: None,
            removed_peers,
            was_member: false,
            last: BTreeSet::new(),
            last_heard: HashMap::new(),
        }
    }

    /// The configuration `members` this node (`me`) starts in.
    pub(super) fn start(&mut self, members: BTreeSet<u64>, me: u64) {
        self.was_member = members.contains(&me);
        self.last = members;
    }

    /// Whether this node has been a member (only then can it be removed).
    pub(super) fn was_member(&self) -> bool {
        self.was_member
    }

    /// Whether this node has seen `peer` removed from the cluster.
    pub(super) fn saw_removed(&self, peer: u64) -> bool {
        self.removed_peers
            .lock()
            .map(|removed| removed.contains(&peer))
            .unwrap_or(false)
    }

    /// `peer` was heard from `at`.
    pub(super) fn heard(&mut self, peer: u64, at: Instant) {
        self.last_heard.insert(peer, at);
    }
}

/// What a membership request comes to on the leader.
enum ConfPlan {
    /// Propose this change with this context (the added nodes' addresses).
    Propose(ConfChangeV2, Vec<u8>),
    /// The leader itself is being removed: hand leadership over first.
    HandOver,
}

impl Node {
    /// Takes the member addresses the machine holds (from a snapshot) into the address book and
    /// the transport.
    pub(super) fn adopt_members(&mut self) {
        for m in self.machine.members().to_vec() {
            self.book.log(&m);
            if m.id != self.id
                && let Some(addr) = self.book.get(m.id)
            {
                self.env.network.add_peer(m.id, addr.raft.clone());
            }
        }
    }

    pub(super) fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), NodeError> {
        let (cc, context) = if entry.get_entry_type() == EntryType::EntryConfChange {
            let mut cc = ConfChange::default();
            cc.merge_from_bytes(&entry.data)
                .map_err(raft::Error::CodecError)?;
            let context = cc.context.to_vec();
            // A v1 change is one single change; carry it as v2.
            let mut single = ConfChangeSingle::default();
            single.set_change_type(cc.get_change_type());
            single.node_id = cc.node_id;
            let mut v2 = ConfChangeV2::default();
            v2.set_changes(vec![single].into());
            (v2, context)
        } else {
            let mut cc = ConfChangeV2::default();
            cc.merge_from_bytes(&entry.data)
                .map_err(raft::Error::CodecError)?;
            let context = cc.context.to_vec();
            (cc, context)
        };
        // raft-rs puts `propose_conf_change`'s context on the entry; older changes may carry it
        // inside the change itself.
        let context = if entry.context.is_empty() {
            context
        } else {
            entry.context.to_vec()
        };
        if let Ok(context) = proto::Members::decode(context.as_slice()) {
            self.learn_added_addresses(&cc, context);
        }
        // Removed ids come from the entry itself, so every replica (and a replay) records them.
        self.machine.note_removed(
            cc.changes
                .iter()
                .filter(|c| c.get_change_type() == ConfChangeType::RemoveNode)
                .map(|c| c.node_id),
        );
        if entry.index <= self.raw.store().conf_index() {
            // Replaying the log after a restart: the stored conf state already holds this change.
            slog::debug!(self.logger, "membership change already applied"; "index" => entry.index);
            self.sync_members();
            return Ok(());
        }
        let outcome = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                info!(self.logger, "membership changed";
                    "index" => entry.index, "voters" => ?cs.voters, "learners" => ?cs.learners,
                    "outgoing" => ?cs.voters_outgoing, "joint" => !cs.voters_outgoing.is_empty());
                self.raw.mut_store().set_conf_state(&cs, entry.index)?;
                self.sync_members();
                None
            }
            Err(e) => {
                error!(self.logger, "membership change refused"; "index" => entry.index, "err" => %e);
                Some(e.to_string())
            }
        };
        // The empty change that leaves a joint state answers nobody; the change this node proposed
        // is the first conf entry applied after it.
        if !cc.changes.is_empty()
            && let Some((_, reply)) = self.members.pending_conf.take()
        {
            let resp = match outcome {
                None => respond(response::Result::Status(self.status())),
                Some(e) => respond(error(
                    Code::Invalid,
                    format!("raft refused the change: {e}"),
                )),
            };
            let _ = reply.send(self.with_hint(resp));
        }
        Ok(())
    }

    /// Takes the addresses a change's context names, only for nodes the change adds and only if
    /// the address book has none for them: ids are never reused, so an id's address is set once,
    /// and no change can move a member. The founding entries name the cluster.
    fn learn_added_addresses(&mut self, cc: &ConfChangeV2, context: proto::Members) {
        if context.cluster_id != 0 {
            self.machine.set_cluster_id(context.cluster_id);
            self.machine.found_admin(&context.admin_key);
        }
        let adds = |id: u64| {
            cc.changes.iter().any(|c| {
                c.node_id == id
                    && matches!(
                        c.get_change_type(),
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode
                    )
            })
        };
        for m in context.members {
            if m.id == 0 || m.raft_url.is_empty() || !adds(m.id) {
                continue;
            }
            if !self.book.log(&m) {
                slog::debug!(self.logger, "a membership change names a known node's address; kept the known one";
                    "node" => m.id);
            }
        }
    }

    /// Brings the transport, the address book and the machine's member list in line with the
    /// current configuration; notices when this node is no longer in it.
    pub(super) fn sync_members(&mut self) {
        let members = self.members_now();
        let mut list = Vec::new();
        for &id in &members {
            if id != self.id
                && let Some(addr) = self.book.get(id)
            {
                self.env.network.add_peer(id, addr.raft.clone());
            }
            if let Some(addr) = self.book.recorded(id).cloned() {
                list.push(proto::Member {
                    id,
                    raft_url: addr.raft,
                    client_url: addr.client,
                    ..Default::default()
                });
            }
        }
        // Removed: members of the previous configuration that are not in this one. (Peers this
        // node only learned of, such as the leader of a cluster it is joining, are left alone.)
        let gone: Vec<u64> = self.members.last.difference(&members).copied().collect();
        let mut removed = self
            .members
            .removed_peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for &peer in &gone {
            if peer != self.id {
                self.env.network.remove_peer(peer);
                if members.contains(&self.id) {
                    removed.insert(peer);
                }
            }
        }
        removed.retain(|id| !members.contains(id));
        drop(removed);
        self.members.last = members.clone();
        self.machine.set_members(list);
        // Only a node that was a member can be removed: a joining node replays configurations
        // from before it was added.
        if members.contains(&self.id) {
            self.members.was_member = true;
        } else if self.members.was_member {
            self.removed = true;
        }
    }

    /// The membership change this node proposed was not applied in time: its client is told to
    /// check and retry.
    pub(super) fn expire_conf_change(&mut self, now: Instant) {
        if let Some((at, _)) = &self.members.pending_conf
            && now.duration_since(*at) > CONF_CHANGE_TIMEOUT
            && let Some((_, reply)) = self.members.pending_conf.take()
        {
            let resp = self.with_hint(respond(error(
                Code::ChangeTimedOut,
                "the membership change was not applied in time (leader change?); check the \
                 status and retry",
            )));
            let _ = reply.send(resp);
        }
    }

    /// A leader whose configuration is still joint (its predecessor left it so) proposes leaving.
    pub(super) fn leave_joint_if_stuck(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader
            || self
                .raw
                .raft
                .prs()
                .conf()
                .to_conf_state()
                .voters_outgoing
                .is_empty()
            || self.raw.raft.has_pending_conf()
            || self
                .members
                .leave_proposed
                .is_some_and(|at| now.duration_since(at) < Duration::from_secs(2))
        {
            return;
        }
        info!(self.logger, "leaving the joint configuration");
        if let Err(e) = self
            .raw
            .propose_conf_change(vec![], ConfChangeV2::default())
        {
            warn!(self.logger, "could not propose leaving the joint configuration"; "err" => %e);
        }
        self.members.leave_proposed = Some(now);
    }

    /// Proposes a membership change from a client; only the leader does.
    pub(super) fn propose_conf_change(
        &mut self,
        changes: Vec<proto::MemberChange>,
        force: bool,
        reply: oneshot::Sender<proto::Response>,
    ) {
        if self.raw.raft.state == StateRole::Leader && self.already_in_effect(&changes) {
            // A retry of a change that was applied: answer, do not change anything.
            let status = respond(response::Result::Status(self.status()));
            let _ = reply.send(self.with_hint(status));
            return;
        }
        let (cc, context) = match self.plan_conf_change(&changes, force) {
            Ok(ConfPlan::Propose(cc, context)) => (cc, context),
            Ok(ConfPlan::HandOver) => return self.hand_over_leadership(reply, &changes),
            Err((code, msg)) => {
                self.refuser
                    .refuse(&self.logger, "admin.conf_change_refused", "a client", &msg);
                let _ = reply.send(self.with_hint(respond(error(code, msg))));
                return;
            }
        };
        match self.raw.propose_conf_change(context, cc) {
            Ok(()) => {
                info!(self.logger, "proposed a membership change"; "changes" => ?changes,
                    "force" => force);
                self.members.pending_conf = Some((self.env.clock.now(), reply));
            }
            Err(e) => {
                let resp = error(Code::Invalid, format!("raft refused the change: {e}"));
                let _ = reply.send(self.with_hint(respond(resp)));
            }
        }
    }

    /// Whether the configuration already is what `changes` ask for (and is not joint).
    fn already_in_effect(&self, changes: &[proto::MemberChange]) -> bool {
        let cs = self.raw.raft.prs().conf().to_conf_state();
        if !cs.voters_outgoing.is_empty() || changes.is_empty() {
            return false;
        }
        // Addresses that differ from the known ones are a request to move a member: not "in
        // effect", and refused by the plan.
        let same_address = |c: &proto::MemberChange| {
            (c.raft_url.is_empty() && c.client_url.is_empty())
                || self
                    .book
                    .get(c.id)
                    .is_some_and(|a| a.raft == c.raft_url && a.client == c.client_url)
        };
        changes.iter().all(|c| match Kind::try_from(c.kind) {
            Ok(Kind::AddLearner) => cs.learners.contains(&c.id) && same_address(c),
            Ok(Kind::AddVoter) => cs.voters.contains(&c.id) && same_address(c),
            Ok(Kind::Remove) => !cs.voters.contains(&c.id) && !cs.learners.contains(&c.id),
            Err(_) => false,
        })
    }

    /// The change to propose and its context, or why not; `HandOver` when the leader itself is
    /// being removed (it hands leadership over first).
    fn plan_conf_change(
        &self,
        changes: &[proto::MemberChange],
        force: bool,
    ) -> Result<ConfPlan, (Code, String)> {
        let invalid = |msg: String| (Code::Invalid, msg);
        if self.raw.raft.state != StateRole::Leader {
            return Err((Code::Unavailable, "not the leader; ask the leader".into()));
        }
        if changes.is_empty() || changes.len() > MAX_CHANGES {
            return Err(invalid(format!(
                "a membership request makes 1 to {MAX_CHANGES} changes, not {}",
                changes.len()
            )));
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        if self.members.pending_conf.is_some()
            || self.raw.raft.has_pending_conf()
            || !cs.voters_outgoing.is_empty()
        {
            return Err((
                Code::ChangeInProgress,
                "another membership change is in progress; retry when it is done".into(),
            ));
        }
        let mut singles = Vec::new();
        let mut added = Vec::new();
        let mut seen = BTreeSet::new();
        for c in changes {
            let kind = Kind::try_from(c.kind)
                .map_err(|_| invalid(format!("unknown change kind {}", c.kind)))?;
            if c.id == 0 || !seen.insert(c.id) {
                return Err(invalid(format!(
                    "node id {} is reserved or named twice in one request",
                    c.id
                )));
            }
            if kind == Kind::Remove && c.id == self.id {
                return Ok(ConfPlan::HandOver);
            }
            if kind != Kind::Remove {
                self.check_addition(c, kind, &cs, force, &mut added)?;
            }
            let mut single = ConfChangeSingle::default();
            single.set_change_type(match kind {
                Kind::AddLearner => ConfChangeType::AddLearnerNode,
                Kind::AddVoter => ConfChangeType::AddNode,
                Kind::Remove => ConfChangeType::RemoveNode,
            });
            single.node_id = c.id;
            singles.push(single);
        }
        if !force {
            let voters = voters_after(&cs.voters, changes);
            let answering = self.answering_now();
            quorum_reachable(&voters, &answering).map_err(invalid)?;
        }
        let mut cc = ConfChangeV2::default();
        cc.set_changes(singles.into());
        let context = proto::Members {
            members: added,
            cluster_id: 0,
            admin_key: Vec::new(),
        };
        Ok(ConfPlan::Propose(cc, context.encode_to_vec()))
    }

    /// Checks one addition (learner or voter): the id was never removed, addresses are given for
    /// a new node and never change a member's, and (unless forced) a new voter is a learner that
    /// has caught up. Collects the new node's addresses into `added`.
    fn check_addition(
        &self,
        c: &proto::MemberChange,
        kind: Kind,
        cs: &raft::eraftpb::ConfState,
        force: bool,
        added: &mut Vec<proto::Member>,
    ) -> Result<(), (Code, String)> {
        if self.machine.was_removed(c.id) {
            return Err((
                Code::RemovedId,
                format!(
                    "node id {} was removed from this cluster and ids are never reused (a node wiped \
                 and added again under its old id could vote twice in one term); start the node \
                 with a new id",
                    c.id
                ),
            ));
        }
        let member = cs.voters.contains(&c.id) || cs.learners.contains(&c.id);
        let given = !c.raft_url.is_empty() || !c.client_url.is_empty();
        match self.book.get(c.id) {
            Some(known)
                if member
                    && given
                    && (known.raft != c.raft_url || known.client != c.client_url) =>
            {
                return Err((
                    Code::Invalid,
                    format!(
                        "node {} is a member at {} (clients {}); a membership change cannot \
                         move it (remove it and add the machine under a new id)",
                        c.id, known.raft, known.client
                    ),
                ));
            }
            _ if member => {}
            _ if !given => {
                return Err((
                    Code::NotMember,
                    format!(
                        "node {} is not a member and the cluster does not know its endpoints: \
                         give its tcp://host:port raft and client endpoints",
                        c.id
                    ),
                ));
            }
            _ => {
                for url in [&c.raft_url, &c.client_url] {
                    crate::config::check_endpoint(url).map_err(|e| {
                        (
                            Code::InvalidEndpoint,
                            format!(
                                "node {} needs valid tcp://host:port raft and client endpoints \
                                 ({e})",
                                c.id
                            ),
                        )
                    })?;
                }
                added.push(proto::Member {
                    id: c.id,
                    raft_url: c.raft_url.clone(),
                    client_url: c.client_url.clone(),
                    ..Default::default()
                });
            }
        }
        if kind == Kind::AddVoter && !force && !cs.voters.contains(&c.id) {
            self.check_promotable(c.id, cs)?;
        }
        Ok(())
    }

    /// A new voter must be a learner that follows the log closely.
    fn check_promotable(
        &self,
        id: u64,
        cs: &raft::eraftpb::ConfState,
    ) -> Result<(), (Code, String)> {
        if !cs.learners.contains(&id) {
            return Err((
                Code::Invalid,
                format!(
                    "node {id} must first join as a learner and catch up before it votes \
                     (`microblog cluster add` does both); --force to skip this check"
                ),
            ));
        }
        let last = self.raw.raft.raft_log.last_index();
        let progress = self.raw.raft.prs().get(id);
        let matched = progress.map_or(0, |p| p.matched);
        if matched == 0 || last.saturating_sub(matched) > MAX_PROMOTE_LAG {
            return Err((
                Code::NotCaughtUp,
                format!(
                    "learner {id} has not caught up (replicated up to {matched} of {last}); wait \
                     for it (`microblog cluster status` shows its lag), or --force"
                ),
            ));
        }
        Ok(())
    }

    /// This node and the peers heard from within an election timeout.
    fn answering_now(&self) -> BTreeSet<u64> {
        let window =
            Duration::from_millis(self.settings.tick_ms * self.settings.election_ticks as u64);
        let now = self.env.clock.now();
        let mut answering: BTreeSet<u64> = self
            .members
            .last_heard
            .iter()
            .filter(|(_, at)| now.duration_since(**at) <= window)
            .map(|(id, _)| *id)
            .collect();
        answering.insert(self.id);
        answering
    }

    /// Removing the leader: hand leadership to the most caught-up other voter first; the client
    /// retries at the new leader.
    fn hand_over_leadership(
        &mut self,
        reply: oneshot::Sender<proto::Response>,
        changes: &[proto::MemberChange],
    ) {
        let removing: BTreeSet<u64> = changes
            .iter()
            .filter(|c| c.kind == Kind::Remove as i32)
            .map(|c| c.id)
            .collect();
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let target = cs
            .voters
            .iter()
            .filter(|id| !removing.contains(id) && **id != self.id)
            .max_by_key(|id| self.raw.raft.prs().get(**id).map_or(0, |p| p.matched))
            .copied();
        let (code, msg) = match target {
            Some(to) => {
                info!(self.logger, "handing leadership over before removing this node"; "to" => to);
                self.raw.transfer_leader(to);
                (
                    Code::HandingOver,
                    format!(
                        "this node is the leader; leadership is being handed to node {to}; retry"
                    ),
                )
            }
            None => (Code::OnlyVoter, "cannot remove the only voter".to_string()),
        };
        let _ = reply.send(self.with_hint(respond(error(code, msg))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: Kind, id: u64) -> proto::MemberChange {
        proto::MemberChange {
            kind: kind as i32,
            id,
            ..Default::default()
        }
    }

    #[test]
    fn voters_after_changes() {
        let after = voters_after(
            &[1, 2, 3],
            &[
                change(Kind::AddVoter, 4),
                change(Kind::Remove, 2),
                change(Kind::AddLearner, 3),
            ],
        );
        assert_eq!(after, BTreeSet::from([1, 4]));
    }

    #[test]
    fn phantom_voters_cannot_reach_quorum() {
        let answering = BTreeSet::from([1, 2, 3]);
        assert!(quorum_reachable(&BTreeSet::from([1, 2, 3]), &answering).is_ok());
        assert!(quorum_reachable(&BTreeSet::from([1, 2, 3, 4, 5]), &answering).is_ok());
        let err = quorum_reachable(&BTreeSet::from([1, 2, 3, 4, 5, 6, 7]), &answering).unwrap_err();
        assert!(err.contains("needs 4") && err.contains("--force"), "{err}");
        assert!(quorum_reachable(&BTreeSet::new(), &answering).is_err());
    }
}
