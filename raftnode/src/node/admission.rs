//! Admission of peer raft messages: only members speak raft to this node, and only messages
//! that break none of raft-rs's invariants reach `RawNode::step`.
//!
//! The peer endpoint has already authenticated the batch and run the stateless checks
//! ([`raft_check::check_envelope`]); here, on the node thread, each message is checked against
//! the sender's membership and raft's current state ([`raft_check::check_against`]). A node that
//! is not yet a member of any configuration (started with `--join`, waiting to be added) accepts
//! authenticated peers and dials the sender back at the address it names; a member dials only
//! members, at the addresses its cluster file, the log and snapshots give.
//!
//! One exception lets a member that is behind catch up: it may not yet have applied the change
//! that added today's leader, so it would refuse the only node that can bring it forward. A
//! member with no leader admits a non-member's leader messages when they show committed entries
//! it lacks (see [`Node::may_be_new_leader`]). A node with a live leader never lets an outsider
//! take over, and a node the log removed is never admitted.
//!
//! The leader restamps the proposals followers forward with cluster time: no follower's clock
//! reaches the log.

use prost::Message as _;
use raft::StateRole;
use raft::eraftpb::{EntryType, Message, MessageType};
use slog::info;

use super::Node;
use crate::proto::Command;
use crate::raft_check::{self, MsgRefusal, RaftView};
use crate::transport::Delivery;

impl Node {
    /// Steps the messages of one authenticated batch that pass admission.
    pub(super) fn step_peer_messages(&mut self, delivery: Delivery) {
        let Delivery {
            from,
            from_url,
            msgs,
            snapshot,
        } = delivery;
        let members = self.members_now();
        if members.is_empty() {
            // Waiting to be added: whoever holds the cluster key may be the leader adding us.
            self.learn_peer(from, from_url);
        } else if !members.contains(&from) && !self.may_be_new_leader(from, &from_url, &msgs) {
            let refusal = MsgRefusal::NotMember(from);
            let detail = format!("{refusal} ({} messages dropped)", msgs.len());
            self.refuser.refuse(
                &self.logger,
                refusal.kind(),
                &format!("node {from}"),
                &detail,
            );
            return;
        }
        let now = self.env.clock.now();
        self.members.heard(from, now);
        if let Some(machine) = snapshot {
            self.snapshots.received(machine);
        }
        for mut msg in msgs {
            let view = RaftView::of(&self.raw);
            if let Err(refusal) = raft_check::check_against(&mut msg, &view) {
                self.refuser.refuse(
                    &self.logger,
                    refusal.kind(),
                    &format!("node {from}"),
                    &refusal.to_string(),
                );
                continue;
            }
            if msg.get_msg_type() == MessageType::MsgPropose
                && self.raw.raft.state == StateRole::Leader
                && !self.restamp(&mut msg, from)
            {
                continue;
            }
            if let Err(e) = self.raw.step(msg) {
                // Stale terms, responses from peers raft no longer tracks: raft says why.
                slog::debug!(self.logger, "raft refused a message"; "err" => %e);
            }
        }
    }

    /// Whether a non-member's batch may come from a leader this node does not know yet because
    /// it is behind on the log. A leader unknown to this node was added by an entry this node
    /// has not committed, so the leader's own commit is past this node's: the batch must show
    /// that (an append whose commit, or a snapshot whose index, is beyond this node's commit) to
    /// win a node with no leader; after that, the leader's heartbeats are admitted while the node
    /// follows it. Never a sender the log removed, never while another leader is followed, never
    /// an older term. The sender is dialled back at the address it names so that answers reach
    /// it, until the log records its own.
    fn may_be_new_leader(&mut self, from: u64, from_url: &str, msgs: &[Message]) -> bool {
        let raft = &self.raw.raft;
        let follows = raft.leader_id == from;
        if msgs.is_empty()
            || !(follows || raft.leader_id == raft::INVALID_ID)
            || self.members.saw_removed(from)
            || self.machine.was_removed(from)
        {
            return false;
        }
        let commit = raft.raft_log.committed;
        let shows_progress = |m: &Message| match m.get_msg_type() {
            MessageType::MsgAppend => m.commit > commit,
            MessageType::MsgSnapshot => m.get_snapshot().get_metadata().index > commit,
            _ => false,
        };
        let from_a_leader = msgs.iter().all(|m| {
            m.term >= raft.term
                && matches!(
                    m.get_msg_type(),
                    MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
                )
        });
        if !from_a_leader || !(follows || msgs.iter().any(shows_progress)) {
            return false;
        }
        if !follows {
            info!(self.logger, "admitting a leader this node does not know as a member yet (it is behind)";
                "peer" => from, "term" => msgs[0].term, "commit" => commit);
        }
        self.learn_peer(from, from_url.to_string());
        true
    }

    /// A follower's proposal carries no time the cluster may trust: the leader stamps it on
    /// arrival with cluster time (`crate::clock`), as it stamps its own.
    ///
    /// Unsigned commands are dropped here when the policy wants users (as the receiving node
    /// refuses them when it leads): anonymous senders cannot fill the log through a follower.
    /// Returns whether any entry is left to step (an empty proposal must never reach raft).
    fn restamp(&mut self, msg: &mut Message, from: u64) -> bool {
        let anonymous_ok = self.machine.policy_ref().anonymous_writes;
        let mut kept = Vec::with_capacity(msg.entries.len());
        let mut dropped = 0;
        for mut entry in msg.take_entries().into_iter() {
            if entry.get_entry_type() == EntryType::EntryNormal
                && !entry.data.is_empty()
                // An undecodable command is skipped identically by every replica when applied.
                && let Ok(mut cmd) = Command::decode(entry.data.as_ref())
            {
                if cmd.user.is_empty() && !anonymous_ok && cmd.op.is_some() {
                    dropped += 1;
                    continue;
                }
                cmd.stamp_ms = self.clock.stamp();
                entry.data = cmd.encode_to_vec().into();
            }
            kept.push(entry);
        }
        if dropped > 0 {
            self.refuser.refuse(
                &self.logger,
                "client.unsigned_write",
                &format!("node {from}"),
                &format!("{dropped} unsigned writes forwarded: the policy wants users"),
            );
        }
        let any = !kept.is_empty();
        msg.set_entries(kept.into());
        any
    }

    /// A node waiting to be added has no members to answer: it dials the sender at the address
    /// its cluster file gives, or else at the one the sender named. Peers this node has removed
    /// are not dialled again.
    fn learn_peer(&mut self, from: u64, from_url: String) {
        if from == 0 || from == self.id {
            return;
        }
        if self.members.saw_removed(from) {
            return;
        }
        if self.book.get(from).is_none() {
            if from_url.is_empty() || crate::config::check_endpoint(&from_url).is_err() {
                return;
            }
            info!(self.logger, "learned a peer's address"; "peer" => from, "raft" => &from_url);
            self.book.learn(from, from_url);
        }
        let Some(raft) = self.book.get(from).map(|a| a.raft.clone()) else {
            return;
        };
        // Does nothing when the transport already sends to it at that address.
        self.env.network.add_peer(from, raft);
    }
}
