//! The ready loop, in raft-rs's documented order:
//!
//! 1. send the leader's `messages`;
//! 2. apply a snapshot;
//! 3. apply `committed_entries`;
//! 4. persist `entries` and the hard state in one synced raft-engine batch;
//! 5. send `persisted_messages`;
//! 6. `advance`, persist the commit index, send and apply what the light ready holds;
//! 7. `advance_apply`.
//!
//! Applying an entry hands its result to the clients waiting here and wakes blocking `rd`s.

use raft::StateRole;
use raft::eraftpb::{Entry, EntryType};
use slog::{error, info};

use super::{Node, NodeError};
use crate::answer::respond;
use crate::machine::{Applied, Completion};
use crate::proto::{error::Code, response};

impl Node {
    pub(super) fn on_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            self.log_role(ss.leader_id, ss.raft_state);
        }
        if !ready.messages().is_empty() {
            self.env.network.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            self.apply_snapshot(ready.snapshot().clone())?;
        }
        for rs in ready.take_read_states() {
            self.read_confirmed(rs.index, &rs.request_ctx);
        }
        self.apply_entries(ready.take_committed_entries())?;
        if !ready.entries().is_empty() || ready.hs().is_some() {
            self.raw.mut_store().persist(ready.entries(), ready.hs())?;
        }
        if !ready.persisted_messages().is_empty() {
            self.env.network.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        if !light.messages().is_empty() {
            self.env.network.send(light.take_messages());
        }
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.serve_confirmed_reads();
        self.maybe_snapshot();
        Ok(())
    }

    /// Logs leadership changes; a new leader means the writes forwarded to the old one may be
    /// lost, so their clients are told to retry.
    fn log_role(&mut self, leader: u64, role: StateRole) {
        if role != self.known_role && role == StateRole::Leader {
            info!(self.logger, "became leader"; "id" => self.id, "term" => self.raw.raft.term);
        } else if leader != self.known_leader {
            info!(self.logger, "leader changed";
                "leader" => leader, "role" => ?role, "term" => self.raw.raft.term);
        }
        if leader != self.known_leader && self.known_leader != 0 {
            self.fail_pending_writes();
        }
        self.known_leader = leader;
        self.known_role = role;
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        for entry in entries {
            if entry.index <= self.machine.applied_index() {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.machine.mark_applied(entry.index, entry.term);
                }
                EntryType::EntryNormal => {
                    let collect_outs = self.reads.has_readers();
                    match self
                        .machine
                        .apply(entry.index, entry.term, &entry.data, collect_outs)
                    {
                        Ok(applied) => self.deliver(applied),
                        Err(e) => error!(self.logger, "skipped an undecodable entry";
                            "index" => entry.index, "err" => e),
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry)?;
                    self.machine.mark_applied(entry.index, entry.term);
                }
            }
        }
        let leader = self.raw.raft.state == StateRole::Leader;
        self.clock.observe(self.machine.now(), leader);
        Ok(())
    }

    /// Hands applied results to the clients waiting here, and written tuples to blocking `rd`s.
    fn deliver(&mut self, applied: Applied) {
        for Completion {
            session,
            seq,
            result,
        } in applied.completions
        {
            let Some(replies) = self.writes.take_waiting(session, seq) else {
                continue;
            };
            // A request refused for a limit of the cluster's is counted and logged by the node
            // that holds the client's request (one node, not every replica).
            if let response::Result::Error(e) = &result
                && e.code == Code::Limit as i32
            {
                let source = format!("session {session:016x}");
                self.refuser
                    .refuse(&self.logger, "client.over_limit", &source, &e.message);
            }
            let resp = self.with_hint(respond(result));
            for reply in replies {
                let _ = reply.send(resp.clone());
            }
        }
        for (id, tuple) in &applied.outs {
            if !self.reads.has_readers() {
                break;
            }
            self.reads.wake(*id, tuple);
        }
    }
}
