//! The address book (where each member is reached), the leader hint every answer carries, and
//! the node's status.

use std::collections::{HashMap, HashSet};

use raft::StateRole;

use super::{Address, Node};
use crate::proto::{self, Role};

/// Every member's addresses, for dialling peers, leader hints and the status.
///
/// An address comes from one of three places: this node's cluster file (pinned: never replaced,
/// it may be a local route such as a proxy or a NAT), the log and snapshots (the replicated
/// record, set once per id: ids are never reused, so no change can move a member), or a peer
/// that named itself (learned: dialled until the log says otherwise, never recorded in the
/// machine, so every replica's member list stays the same).
pub(super) struct AddressBook {
    addresses: HashMap<u64, Address>,
    pinned: HashSet<u64>,
    /// Addresses the log and snapshots gave.
    logged: HashMap<u64, Address>,
    /// Peers whose address in `addresses` is only what they named themselves.
    learned: HashSet<u64>,
}

impl AddressBook {
    /// The book of node `me` at `own`: the cluster file's `addresses` (pinned), then the
    /// addresses the log and snapshots gave `members`.
    pub(super) fn new(
        me: u64,
        own: Address,
        mut addresses: HashMap<u64, Address>,
        members: &[proto::Member],
    ) -> AddressBook {
        let pinned: HashSet<u64> = addresses.keys().copied().chain([me]).collect();
        addresses.insert(me, own);
        let mut book = AddressBook {
            addresses,
            pinned,
            logged: HashMap::new(),
            learned: HashSet::new(),
        };
        for m in members {
            book.log(m);
        }
        book
    }

    /// Where `id` is reached, if known.
    pub(super) fn get(&self, id: u64) -> Option<&Address> {
        self.addresses.get(&id)
    }

    /// Records the address the log or a snapshot gives `m`, unless one was recorded already:
    /// it replaces a learned address, never a pinned one. Returns whether it was new.
    pub(super) fn log(&mut self, m: &proto::Member) -> bool {
        if m.id == 0 || m.raft_url.is_empty() || self.logged.contains_key(&m.id) {
            return false;
        }
        let address = Address {
            raft: m.raft_url.clone(),
            client: m.client_url.clone(),
        };
        self.logged.insert(m.id, address.clone());
        if !self.pinned.contains(&m.id) {
            self.addresses.insert(m.id, address);
            self.learned.remove(&m.id);
        }
        true
    }

    /// Records the address a peer named for itself, if the book has none for it.
    pub(super) fn learn(&mut self, id: u64, raft: String) {
        if self.addresses.contains_key(&id) {
            return;
        }
        self.learned.insert(id);
        let client = String::new();
        self.addresses.insert(id, Address { raft, client });
    }

    /// The address the machine's member list records for `id`: the logged one, else the
    /// cluster file's (founding members are named by the cluster file only), never a learned
    /// one.
    pub(super) fn recorded(&self, id: u64) -> Option<&Address> {
        self.logged.get(&id).or_else(|| {
            self.addresses
                .get(&id)
                .filter(|_| !self.learned.contains(&id))
        })
    }
}

impl Node {
    /// `resp` with the leader this node knows, and where clients reach it.
    pub(super) fn with_hint(&self, mut resp: proto::Response) -> proto::Response {
        let leader = self.raw.raft.leader_id;
        resp.leader_id = leader;
        if let Some(addr) = self.book.get(leader) {
            resp.leader_client_url = addr.client.clone();
        }
        resp
    }

    /// The node's status (without the space's digest, which takes a worker).
    pub fn status(&self) -> proto::Status {
        let raft = &self.raw.raft;
        let cs = raft.prs().conf().to_conf_state();
        let is_leader = raft.state == StateRole::Leader;
        let mut members = Vec::new();
        let roles = cs
            .voters
            .iter()
            .map(|&id| (id, Role::Voter))
            .chain(cs.learners.iter().map(|&id| (id, Role::Learner)))
            .chain(
                cs.voters_outgoing
                    .iter()
                    .filter(|id| !cs.voters.contains(id))
                    .map(|&id| (id, Role::OutgoingVoter)),
            );
        for (id, role) in roles {
            let addr = self.book.get(id);
            members.push(proto::Member {
                id,
                raft_url: addr.map(|a| a.raft.clone()).unwrap_or_default(),
                client_url: addr.map(|a| a.client.clone()).unwrap_or_default(),
                role: role as i32,
                matched: if is_leader {
                    raft.prs().get(id).map_or(0, |p| p.matched)
                } else {
                    0
                },
            });
        }
        let store = self.raw.store();
        proto::Status {
            id: self.id,
            role: Role::from(raft.state) as i32,
            leader_id: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.machine.applied_index(),
            members,
            tuples: self.machine.space().len() as u64,
            waiters: self.machine.space().waiter_count() as u64,
            sessions: self.machine.session_count() as u64,
            first_index: raft::Storage::first_index(store).unwrap_or(0),
            last_index: raft::Storage::last_index(store).unwrap_or(0),
            digest: 0,
            refused: self.refuser.counts.snapshot(),
            cluster_id: self.cluster.0,
            cluster_time_ms: self.clock.now(),
            space_bytes: self.machine.space().bytes(),
            limits: Some(self.machine.limits()),
        }
    }
}

/// The name a raft role has in the status (what [`Role::name`] gives).
pub fn role_name(role: StateRole) -> &'static str {
    Role::from(role).name()
}

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Role {
        match role {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
        }
    }
}

impl Role {
    /// The role's name as people read it (`cluster status`, logs): "leader", "follower",
    /// "candidate", "pre-candidate", "voter", "learner", "outgoing voter"; "unknown" when unset.
    pub fn name(self) -> &'static str {
        match self {
            Role::Unspecified => "unknown",
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Voter => "voter",
            Role::Learner => "learner",
            Role::OutgoingVoter => "outgoing voter",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_its_own_name() {
        let all = [
            Role::Unspecified,
            Role::Leader,
            Role::Follower,
            Role::Candidate,
            Role::PreCandidate,
            Role::Voter,
            Role::Learner,
            Role::OutgoingVoter,
        ];
        let names: HashSet<&str> = all.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), all.len(), "{names:?}");
        assert_eq!(role_name(StateRole::PreCandidate), "pre-candidate");
        assert_eq!(Role::from(StateRole::Leader), Role::Leader);
    }
}
