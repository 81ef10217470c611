//! Checks on raft messages from peers, before raft-rs sees them.
//!
//! raft-rs trusts its peers: several message shapes it treats as impossible make it panic
//! (`fatal!`) or corrupt its log. A batch that passed authentication comes from a node holding
//! the cluster key, but a bug, a corrupted disk or a stolen key must still not stop a node. So
//! every message is checked twice before `RawNode::step`:
//!
//! 1. [`check_envelope`], in the peer endpoint, needing nothing but the message: it names the
//!    authenticated sender and this node, and is of a type peers send each other (never a local
//!    type such as `MsgHup` or `MsgBeat`).
//! 2. [`check_against`], on the node thread, against raft's current state ([`RaftView`]): every
//!    invariant raft-rs asserts on the paths a peer message takes (listed with each check).
//!
//! A snapshot message carries only a snapshot file's descriptor ([`check_snapshot`]); the file
//! was received, checked and decoded off the raft thread before the message is let through
//! ([`crate::snapshot_stream`]), so a snapshot that would not decode never replaces a
//! follower's log.

use raft::eraftpb::{EntryType, Message, MessageType};
use raft::{RawNode, StateRole, Storage};

use crate::snapshot::Descriptor;

/// Why a raft message was dropped before raft saw it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsgRefusal {
    /// The message's `from` is not the authenticated sender of its batch.
    #[error("message from {claimed} in a batch authenticated as from {sender}")]
    ForgedFrom {
        /// What the message says.
        claimed: u64,
        /// Who sent the batch.
        sender: u64,
    },
    /// The message is for another node.
    #[error("message for node {to} delivered to node {me}")]
    NotForMe {
        /// Its `to`.
        to: u64,
        /// This node.
        me: u64,
    },
    /// A type only the node itself generates.
    #[error("{0:?} is not a message peers send")]
    LocalType(MessageType),
    /// The sender is not a member of this node's configuration.
    #[error("node {0} is not a member of this cluster's configuration")]
    NotMember(u64),
    /// The message breaks an invariant raft-rs relies on.
    #[error("{kind:?} from {from}: {why}")]
    Invariant {
        /// The message type.
        kind: MessageType,
        /// The sender.
        from: u64,
        /// What is wrong.
        why: String,
    },
}

impl MsgRefusal {
    /// The refusal counter this counts under.
    pub fn kind(&self) -> &'static str {
        match self {
            MsgRefusal::ForgedFrom { .. } => "raft.forged_from",
            MsgRefusal::NotForMe { .. } => "raft.not_for_me",
            MsgRefusal::LocalType(_) => "raft.local_type",
            MsgRefusal::NotMember(_) => "raft.from_non_member",
            MsgRefusal::Invariant { .. } => "raft.invariant",
        }
    }
}

/// Whether peers send messages of this type to each other. `MsgPropose`, `MsgReadIndex` and
/// `MsgTransferLeader` are forwarded by followers to the leader.
pub fn is_peer_type(t: MessageType) -> bool {
    use MessageType::*;
    matches!(
        t,
        MsgAppend
            | MsgAppendResponse
            | MsgRequestVote
            | MsgRequestVoteResponse
            | MsgRequestPreVote
            | MsgRequestPreVoteResponse
            | MsgSnapshot
            | MsgHeartbeat
            | MsgHeartbeatResponse
            | MsgTimeoutNow
            | MsgPropose
            | MsgReadIndex
            | MsgReadIndexResp
            | MsgTransferLeader
    )
}

/// The first check: `msg` is from the batch's authenticated `sender`, for this node (`me`), and
/// of a type peers send.
pub fn check_envelope(msg: &Message, sender: u64, me: u64) -> Result<(), MsgRefusal> {
    if msg.from != sender {
        return Err(MsgRefusal::ForgedFrom {
            claimed: msg.from,
            sender,
        });
    }
    if msg.to != me {
        return Err(MsgRefusal::NotForMe { to: msg.to, me });
    }
    let kind = msg.get_msg_type();
    if !is_peer_type(kind) {
        return Err(MsgRefusal::LocalType(kind));
    }
    Ok(())
}

/// Terms, indexes and ids at or above this are refused: no real cluster reaches 2^62, and the
/// margin keeps every `+ 1` raft-rs does on them from overflowing.
pub const SANE: u64 = 1 << 62;

/// The most node ids a snapshot's configuration may list (restoring it costs time quadratic in
/// the number, and a buffer per id).
pub const MAX_CONF_IDS: usize = 1024;

/// What [`check_against`] needs of raft's state: cheap copies, taken before each message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftView {
    /// This node's id.
    pub id: u64,
    /// The current term.
    pub term: u64,
    /// This node's role.
    pub role: StateRole,
    /// The leader this node knows (0: none).
    pub leader_id: u64,
    /// The last index of its log, and that entry's term.
    pub last_index: u64,
    /// The term of the last entry.
    pub last_term: u64,
    /// Its commit index.
    pub committed: u64,
    /// The last index it has persisted.
    pub persisted: u64,
    /// Whether raft holds a snapshot not yet persisted.
    pub unstable_snapshot: bool,
    /// Whether this node is the only voter.
    pub singleton: bool,
    /// Its election priority.
    pub priority: i64,
}

impl RaftView {
    /// The view of `raw` now.
    pub fn of<S: Storage>(raw: &RawNode<S>) -> RaftView {
        let raft = &raw.raft;
        RaftView {
            id: raft.id,
            term: raft.term,
            role: raft.state,
            leader_id: raft.leader_id,
            last_index: raft.raft_log.last_index(),
            last_term: raft.raft_log.last_term(),
            committed: raft.raft_log.committed,
            persisted: raft.raft_log.persisted,
            unstable_snapshot: raft.raft_log.unstable_snapshot().is_some(),
            singleton: raft.prs().is_singleton(),
            priority: raft.priority,
        }
    }

    /// raft's "is a log ending at (index, term) at least as up to date as mine".
    fn is_up_to_date(&self, index: u64, term: u64) -> bool {
        term > self.last_term || (term == self.last_term && index >= self.last_index)
    }

    /// Everything this node has is on disk (raft-rs asserts it when it becomes leader).
    fn all_persisted(&self) -> bool {
        self.persisted == self.last_index && !self.unstable_snapshot
    }
}

fn invariant(msg: &Message, why: impl Into<String>) -> MsgRefusal {
    MsgRefusal::Invariant {
        kind: msg.get_msg_type(),
        from: msg.from,
        why: why.into(),
    }
}

fn require(msg: &Message, ok: bool, why: &str) -> Result<(), MsgRefusal> {
    if ok { Ok(()) } else { Err(invariant(msg, why)) }
}

/// The second check: `msg` breaks none of the invariants raft-rs asserts (with a panic) or
/// relies on, given raft's state in `view`. A heartbeat's commit index is clamped to this
/// node's last index (what a correct leader sends anyway) rather than refused.
///
/// Each rule names the raft-rs 0.7 failure it prevents.
pub fn check_against(msg: &mut Message, view: &RaftView) -> Result<(), MsgRefusal> {
    use MessageType::*;
    check_addressing(msg, view)?;
    match msg.get_msg_type() {
        MsgPropose => check_proposal(msg)?,
        // The leader reads `entries[0]` as the request's context.
        MsgReadIndex => require(msg, msg.entries.len() == 1, "a read request needs 1 entry")?,
        MsgAppend => check_append(msg, view)?,
        // `commit_to` is `fatal!` past the last index.
        MsgHeartbeat => msg.commit = msg.commit.min(view.last_index),
        MsgSnapshot => check_snapshot_metadata(msg, view)?,
        MsgAppendResponse if view.role == StateRole::Leader && msg.term == view.term => {
            check_append_response(msg, view)?
        }
        // raft-rs#511: a node at term 0 that rejects a pre-vote panics in `send`.
        MsgRequestPreVote if view.term == 0 => check_pre_vote_at_term_0(msg, view)?,
        // Becoming leader asserts that everything is persisted.
        MsgRequestVoteResponse if !msg.reject && view.role == StateRole::Candidate => require(
            msg,
            view.all_persisted(),
            "a vote while this node has unpersisted data",
        )?,
        MsgTimeoutNow => check_timeout_now(msg, view)?,
        // A follower forwarding it with a term set is `fatal!`.
        MsgTransferLeader => require(
            msg,
            view.role == StateRole::Leader && msg.term == view.term,
            "a transfer request to a node that is not the leader of its term",
        )?,
        MsgReadIndexResp => require(
            msg,
            view.role == StateRole::Follower
                && msg.term == view.term
                && msg.from == view.leader_id
                && msg.entries.len() == 1,
            "a read index answer not from the current leader",
        )?,
        _ => {}
    }
    Ok(())
}

/// Addressing, term, and one leader per term.
fn check_addressing(msg: &Message, view: &RaftView) -> Result<(), MsgRefusal> {
    use MessageType::*;
    let kind = msg.get_msg_type();
    // Addressing: raft-rs reads neither `to` nor whether `from` is this node; a response "from"
    // itself would corrupt the leader's own progress.
    require(
        msg,
        msg.to == view.id && msg.from != 0 && msg.from != view.id,
        "addressed from this node, from node 0, or to another node",
    )?;
    // Term: 0 means "local" to raft-rs and skips every term check; only forwarded proposals and
    // read requests travel without one (a set term makes the forward `fatal!`).
    match kind {
        MsgPropose | MsgReadIndex => {
            require(msg, msg.term == 0, "a forwarded request with a term")?
        }
        _ => require(
            msg,
            msg.term != 0 && msg.term < SANE,
            "term 0 or out of range",
        )?,
    }
    // Only one node leads a term: a message claiming to lead the term whose leader this node
    // knows, from another node, is forged (and would move raft's idea of the leader).
    if matches!(kind, MsgAppend | MsgHeartbeat | MsgSnapshot | MsgTimeoutNow)
        && msg.term == view.term
        && view.leader_id != 0
        && msg.from != view.leader_id
    {
        return Err(invariant(msg, "a second leader in one term"));
    }
    Ok(())
}

/// `fatal!("stepped empty MsgProp")`. Peers forward client writes only; membership changes are
/// proposed by the leader itself after its own checks.
fn check_proposal(msg: &Message) -> Result<(), MsgRefusal> {
    require(msg, !msg.entries.is_empty(), "a proposal without entries")?;
    let normal = msg
        .entries
        .iter()
        .all(|e| e.get_entry_type() == EntryType::EntryNormal);
    require(msg, normal, "a forwarded membership change")
}

/// A snapshot's index and term in range, and a configuration raft-rs can restore.
fn check_snapshot_metadata(msg: &Message, view: &RaftView) -> Result<(), MsgRefusal> {
    let meta = msg.get_snapshot().get_metadata();
    require(
        msg,
        meta.index != 0 && meta.index < SANE,
        "snapshot index out of range",
    )?;
    require(
        msg,
        meta.term != 0 && meta.term <= msg.term,
        "snapshot term 0 or after the message's term",
    )?;
    conf_state_ok(meta.get_conf_state(), view.id).map_err(|why| invariant(msg, why))
}

/// A leader's progress bookkeeping: hints and acknowledgements within its log.
fn check_append_response(msg: &Message, view: &RaftView) -> Result<(), MsgRefusal> {
    if msg.reject {
        require(msg, msg.reject_hint < SANE, "reject hint out of range")?;
        require(
            msg,
            msg.request_snapshot == 0 || msg.request_snapshot <= view.last_index,
            "a snapshot requested past the leader's log",
        )
    } else {
        require(
            msg,
            msg.index <= view.last_index,
            "acknowledges entries never sent",
        )
    }
}

/// A node at term 0 may only be asked for pre-votes it grants.
fn check_pre_vote_at_term_0(msg: &Message, view: &RaftView) -> Result<(), MsgRefusal> {
    let priority = if msg.priority != 0 {
        msg.priority
    } else {
        i64::try_from(msg.deprecated_priority).unwrap_or(i64::MAX)
    };
    let grant = view.is_up_to_date(msg.index, msg.log_term)
        && (msg.index > view.last_index || view.priority <= priority);
    require(msg, grant, "a pre-vote this node at term 0 would reject")
}

/// A leadership transfer comes from the current leader, to a node with nothing unpersisted.
fn check_timeout_now(msg: &Message, view: &RaftView) -> Result<(), MsgRefusal> {
    require(
        msg,
        view.role == StateRole::Follower && msg.term == view.term && msg.from == view.leader_id,
        "a leadership transfer not from the current leader",
    )?;
    require(
        msg,
        !view.singleton || view.all_persisted(),
        "a leadership transfer while this node has unpersisted data",
    )
}

/// `MsgAppend`: entries numbered right after `index`, with sane terms; a claimed match with term
/// 0 only within this node's log (raft-rs treats every index past the log as term 0).
fn check_append(msg: &Message, view: &RaftView) -> Result<(), MsgRefusal> {
    let count = msg.entries.len() as u64;
    require(
        msg,
        msg.index.checked_add(count).is_some_and(|end| end < SANE),
        "entries past the index range",
    )?;
    for (i, entry) in msg.entries.iter().enumerate() {
        require(
            msg,
            entry.index == msg.index + 1 + i as u64,
            "entries not numbered right after the index",
        )?;
        require(
            msg,
            entry.term != 0 && entry.term <= msg.term,
            "an entry with term 0 or after the message's term",
        )?;
    }
    require(
        msg,
        msg.log_term != 0 || msg.index <= view.last_index,
        "a match with term 0 past this node's log",
    )
}

/// A snapshot's configuration that raft-rs can restore without a `fatal!` (and that includes
/// this node, which it otherwise silently ignores).
fn conf_state_ok(cs: &raft::eraftpb::ConfState, me: u64) -> Result<(), String> {
    use std::collections::BTreeSet;
    let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
    let total = cs.voters.len() + cs.learners.len() + cs.voters_outgoing.len();
    if total + cs.learners_next.len() > MAX_CONF_IDS {
        return Err(format!("a configuration of {total} nodes"));
    }
    let (voters, learners) = (set(&cs.voters), set(&cs.learners));
    let (outgoing, next) = (set(&cs.voters_outgoing), set(&cs.learners_next));
    let ok = !voters.is_empty()
        && ![&voters, &learners, &outgoing, &next]
            .iter()
            .any(|s| s.contains(&0))
        && voters.is_disjoint(&learners)
        && outgoing.is_disjoint(&learners)
        && next.is_subset(&outgoing)
        && next.is_disjoint(&voters)
        && (!outgoing.is_empty() || (next.is_empty() && !cs.auto_leave));
    if !ok {
        return Err("a configuration raft cannot restore".into());
    }
    if !(voters.contains(&me) || learners.contains(&me) || outgoing.contains(&me)) {
        return Err("a configuration that leaves this node out".into());
    }
    Ok(())
}

/// Checks what a `MsgSnapshot` carries: the [`Descriptor`] of a snapshot file, never the state
/// itself. The file arrives beforehand in chunks and is checked and decoded there
/// ([`crate::snapshot_stream`], [`check_machine`](crate::snapshot_stream::check_machine)).
pub fn check_snapshot(msg: &Message) -> Result<Descriptor, String> {
    if msg.get_snapshot().get_metadata().index == 0 {
        return Err("a snapshot at index 0".into());
    }
    Descriptor::of(msg.get_snapshot())
}

/// Raft nodes in known states over raft-rs's `MemStorage`, for the tests here and for fuzzing
/// the peer path (a message that passes [`check_against`] is stepped into one of them).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fixtures {
    use raft::eraftpb::{ConfState, Message, MessageType};
    use raft::storage::MemStorage;
    use raft::{RawNode, StateRole};

    /// A message of `kind` from `from` to `to`.
    pub fn msg(kind: MessageType, from: u64, to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = from;
        m.to = to;
        m
    }

    /// Node `id` of a fresh 3-voter configuration (1, 2, 3), at term 0.
    pub fn raw_node(id: u64) -> RawNode<MemStorage> {
        let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        let config = raft::Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            ..Default::default()
        };
        RawNode::new(&config, storage, &crate::logging::discard()).expect("raw node")
    }

    /// Node 1 as a follower of node 2 in term 2.
    pub fn follower() -> RawNode<MemStorage> {
        let mut raw = raw_node(1);
        let mut hb = msg(MessageType::MsgHeartbeat, 2, 1);
        hb.term = 2;
        raw.step(hb).expect("heartbeat");
        assert_eq!((raw.raft.term, raw.raft.leader_id), (2, 2));
        raw
    }

    /// Persists what raft asks to (a snapshot, entries, the hard state) and advances, as the
    /// node's ready loop does.
    pub fn persist_ready(raw: &mut RawNode<MemStorage>) {
        if !raw.has_ready() {
            return;
        }
        let ready = raw.ready();
        let store = raw.store().clone();
        if !ready.snapshot().is_empty() {
            store
                .wl()
                .apply_snapshot(ready.snapshot().clone())
                .expect("apply the snapshot raft restored");
        }
        store.wl().append(ready.entries()).expect("append");
        if let Some(hs) = ready.hs() {
            store.wl().set_hardstate(hs.clone());
        }
        let _light = raw.advance(ready);
        raw.advance_apply();
    }

    /// Node 1 as the leader of term 1, with its first entry committed (so it serves reads).
    pub fn leader() -> RawNode<MemStorage> {
        let mut raw = raw_node(1);
        raw.campaign().expect("campaign");
        persist_ready(&mut raw);
        let mut vote = msg(MessageType::MsgRequestVoteResponse, 2, 1);
        vote.term = raw.raft.term;
        raw.step(vote).expect("vote");
        assert_eq!(raw.raft.state, StateRole::Leader);
        persist_ready(&mut raw);
        let mut ack = msg(MessageType::MsgAppendResponse, 2, 1);
        ack.term = raw.raft.term;
        ack.index = raw.raft.raft_log.last_index();
        raw.step(ack).expect("ack");
        persist_ready(&mut raw);
        assert_eq!(raw.raft.raft_log.committed, raw.raft.raft_log.last_index());
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::msg;
    use super::*;

    #[test]
    fn envelope() {
        assert!(check_envelope(&msg(MessageType::MsgAppend, 1, 2), 1, 2).is_ok());
        assert!(matches!(
            check_envelope(&msg(MessageType::MsgAppend, 3, 2), 1, 2),
            Err(MsgRefusal::ForgedFrom {
                claimed: 3,
                sender: 1
            })
        ));
        assert!(matches!(
            check_envelope(&msg(MessageType::MsgAppend, 1, 3), 1, 2),
            Err(MsgRefusal::NotForMe { to: 3, me: 2 })
        ));
        for local in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
        ] {
            assert!(matches!(
                check_envelope(&msg(local, 1, 2), 1, 2),
                Err(MsgRefusal::LocalType(_))
            ));
        }
    }

    use super::fixtures::{follower, leader, raw_node};
    use raft::eraftpb::Entry;
    use raft::storage::MemStorage;

    /// Steps `m` into `raw` unchecked: whether raft-rs panics.
    fn panics(mut raw: RawNode<MemStorage>, m: Message) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _ = raw.step(m);
        }))
        .is_err()
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    /// Each shape below makes raft-rs 0.7 panic when stepped as is; `check_against` refuses it
    /// (or, for a heartbeat, makes it harmless). If raft-rs stops panicking on one, the check
    /// stays (it costs nothing), but this test says so.
    #[test]
    fn every_raft_fatal_shape_is_caught_before_step() {
        type Make = fn() -> (RawNode<MemStorage>, Message);
        let cases: Vec<(&str, Make)> = vec![
            ("an empty proposal at the leader", || {
                (leader(), msg(MessageType::MsgPropose, 2, 1))
            }),
            ("a read index request without its context entry", || {
                (leader(), msg(MessageType::MsgReadIndex, 2, 1))
            }),
            ("a heartbeat committing past the log", || {
                let mut m = msg(MessageType::MsgHeartbeat, 2, 1);
                m.term = 3;
                m.commit = 1_000;
                (follower(), m)
            }),
            ("an append with entries numbered wrongly", || {
                let mut m = msg(MessageType::MsgAppend, 2, 1);
                m.term = 2;
                m.commit = 5;
                m.entries = vec![entry(3, 2), entry(1, 2)].into();
                (follower(), m)
            }),
            ("an append matching past the log with term 0", || {
                let mut m = msg(MessageType::MsgAppend, 2, 1);
                m.term = 2;
                m.index = 50;
                m.commit = 50;
                (follower(), m)
            }),
            ("a vote request with term 0", || {
                (raw_node(1), msg(MessageType::MsgRequestVote, 2, 1))
            }),
            ("a snapshot whose configuration has no voters", || {
                let mut m = msg(MessageType::MsgSnapshot, 2, 1);
                m.term = 2;
                let meta = m.mut_snapshot().mut_metadata();
                meta.index = 10;
                meta.term = 2;
                meta.mut_conf_state().learners = vec![1];
                (follower(), m)
            }),
            ("an acknowledgement of index u64::MAX at the leader", || {
                let raw = leader();
                let mut m = msg(MessageType::MsgAppendResponse, 2, 1);
                m.term = raw.raft.term;
                m.index = u64::MAX;
                (raw, m)
            }),
            (
                "a leadership transfer request with a term, at a follower",
                || {
                    let mut m = msg(MessageType::MsgTransferLeader, 3, 1);
                    m.term = 2;
                    (follower(), m)
                },
            ),
        ];
        for (name, make) in cases {
            let (raw, m) = make();
            assert!(panics(raw, m), "raft-rs no longer panics on {name}");
            let (mut raw, mut m) = make();
            let view = RaftView::of(&raw);
            match check_against(&mut m, &view) {
                Err(_) => {}
                // Made harmless: raft must now take it without panicking.
                Ok(()) => raw.step(m).map(|_| ()).unwrap_or(()),
            }
        }
    }

    #[test]
    fn legitimate_traffic_passes() {
        let raw = follower();
        let view = RaftView::of(&raw);
        let mut hb = msg(MessageType::MsgHeartbeat, 2, 1);
        hb.term = 2;
        assert!(check_against(&mut hb, &view).is_ok());
        let mut append = msg(MessageType::MsgAppend, 2, 1);
        append.term = 2;
        append.entries = vec![entry(1, 1), entry(2, 2)].into();
        assert!(check_against(&mut append, &view).is_ok());
        let mut propose = msg(MessageType::MsgPropose, 2, 1);
        propose.entries = vec![entry(0, 0)].into();
        assert!(check_against(&mut propose, &view).is_ok());
        let mut snap = msg(MessageType::MsgSnapshot, 2, 1);
        snap.term = 2;
        let meta = snap.mut_snapshot().mut_metadata();
        meta.index = 10;
        meta.term = 2;
        meta.mut_conf_state().voters = vec![1, 2, 3];
        assert!(check_against(&mut snap, &view).is_ok());
    }

    #[test]
    fn snapshots_that_do_not_decode_or_disagree_are_refused() {
        let mut m = msg(MessageType::MsgSnapshot, 1, 2);
        m.mut_snapshot().mut_metadata().index = 5;
        m.mut_snapshot().set_data(b"garbage".to_vec().into());
        assert!(check_snapshot(&m).is_err());
        use crate::keys::ClusterId;
        use crate::machine::Machine;
        // A whole state is not a descriptor either.
        let mut machine = Machine::new();
        machine.mark_applied(5, 2);
        machine.set_cluster_id(9);
        m.mut_snapshot().set_data(machine.encode().into());
        assert!(check_snapshot(&m).is_err());

        let desc = Descriptor {
            index: 5,
            term: 2,
            size: 4096,
            crc: 7,
        };
        m.mut_snapshot().set_data(desc.to_data().into());
        m.mut_snapshot().mut_metadata().term = 2;
        assert_eq!(check_snapshot(&m), Ok(desc));
        m.mut_snapshot().mut_metadata().index = 0;
        assert!(check_snapshot(&m).is_err());

        use crate::snapshot_stream::check_machine;
        assert!(check_machine(&machine, &desc, ClusterId(9)).is_ok());
        let err = check_machine(&machine, &desc, ClusterId(8)).unwrap_err();
        assert!(err.contains("cluster 0000000000000009"), "{err}");
        let other = Descriptor { index: 6, ..desc };
        assert!(check_machine(&machine, &other, ClusterId(9)).is_err());
    }
}
