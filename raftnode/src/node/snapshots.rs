//! Snapshots: taking one every so many applied entries (encoded and written in the background),
//! installing one from the leader (its file written and synced before the log is replaced), and
//! compacting the log behind the older kept snapshot file.

use std::sync::Arc;
use std::time::Instant;

use raft::Storage as _;
use raft::eraftpb::Snapshot;
use slog::{error, info};

use super::{Node, NodeError, NodeMsg};
use crate::env::Work;
use crate::machine::Machine;
use crate::snapshot::{Descriptor, SnapshotStore};

/// The most entries between two snapshots that the state's size alone may ask for.
const MAX_AUTO_INTERVAL: u64 = 1_000_000;

/// Whether a snapshot is due at `applied` after the one at `last`, every `interval` entries. The
/// nodes keep out of step: node `id` snapshots when `applied` crosses a multiple of `interval`
/// shifted by a quarter interval per id (mod 4), and at least half an interval after its previous
/// snapshot. Replicas apply the same entries at nearly the same moment, so without the shift they
/// would all encode and write their whole state at once, and a leader and a follower slowed
/// together slow every commit.
fn snapshot_due(id: u64, last: u64, applied: u64, interval: u64) -> bool {
    let interval = interval.max(1);
    let phase = (id % 4) * (interval / 4);
    let crossed = (applied + phase) / interval > (last + phase) / interval;
    (crossed && applied >= last + interval / 2) || applied >= last + interval * 3 / 2
}

/// The snapshot files this node keeps, and the one being written.
pub(super) struct Snapshots {
    /// Snapshot files.
    store: Arc<SnapshotStore>,
    /// Indexes of snapshot files on disk, oldest first (the log is compacted behind the oldest).
    kept: Vec<u64>,
    /// A snapshot is being written.
    writing: bool,
    /// A snapshot's state decoded by the peer endpoint's receiver, for the snapshot raft is
    /// restoring.
    received: Option<Box<Machine>>,
}

impl Snapshots {
    pub(super) fn new(store: Arc<SnapshotStore>, kept: Vec<u64>) -> Snapshots {
        Snapshots {
            store,
            kept,
            writing: false,
            received: None,
        }
    }

    /// The state the peer endpoint decoded from the snapshot a leader sent.
    pub(super) fn received(&mut self, machine: Box<Machine>) {
        self.received = Some(machine);
    }

    fn note_kept(&mut self, index: u64) {
        if self.kept.last().is_none_or(|&last| last < index) {
            self.kept.push(index);
        }
        let keep = self.store.keep();
        if self.kept.len() > keep {
            self.kept.drain(..self.kept.len() - keep);
        }
    }
}

impl Node {
    /// Installs a snapshot from the leader: its file (received in chunks, synced and checked
    /// before raft saw the message) is put in place first, then the log is replaced, then the
    /// machine.
    pub(super) fn apply_snapshot(&mut self, snap: Snapshot) -> Result<(), NodeError> {
        let meta = snap.get_metadata().clone();
        let bad = |detail: String| NodeError::BadSnapshot {
            index: meta.index,
            detail,
        };
        let desc = Descriptor::of(&snap).map_err(bad)?;
        // The transport's receiver decoded and checked the state before raft saw the message; a
        // snapshot raft restored that was not checked there cannot be trusted.
        let machine = match self.snapshots.received.take() {
            Some(m) if m.applied_index() == meta.index && m.applied_term() == meta.term => *m,
            _ => return Err(bad("a snapshot whose state was not received".into())),
        };
        let started = Instant::now();
        let path = match self.snapshots.store.install_received(&desc) {
            Ok(path) => path,
            Err(e) => {
                // The part file is gone (another transfer started meanwhile): write the state
                // we hold instead.
                info!(self.logger, "writing the received state afresh"; "why" => %e);
                let view = machine.view();
                let store = &self.snapshots.store;
                store
                    .save_with(meta.index, meta.term, meta.get_conf_state(), |w| {
                        view.encode_to(w)
                    })?
                    .path
            }
        };
        self.raw.mut_store().apply_snapshot(&snap)?;
        self.machine = machine;
        self.machine.mark_applied(meta.index, meta.term);
        self.clock.observe(self.machine.now(), false);
        self.snapshots.note_kept(meta.index);
        // The snapshot's configuration replaces this node's: dial its members (a node that
        // joined knows only the leader that added it until now).
        self.adopt_members();
        self.sync_members();
        info!(self.logger, "installed a snapshot from the leader";
            "index" => meta.index, "term" => meta.term, "bytes" => desc.size,
            "tuples" => self.machine.space().len(), "file" => %path.display(),
            "ms" => started.elapsed().as_millis() as u64);
        Ok(())
    }

    /// After applying: write a snapshot every `snapshot_entries` applied entries, or at once when
    /// raft needs one for a follower that the newest snapshot does not cover.
    pub(super) fn maybe_snapshot(&mut self) {
        let applied = self.machine.applied_index();
        let last = self.snapshots.kept.last().copied().unwrap_or(0);
        let wanted = self.raw.store().take_snapshot_wanted() && applied > last;
        // Encoding costs time in proportion to the state, so a large state is snapshotted less
        // often: after at least a quarter as many entries as it holds tuples. The encode cost per
        // applied entry stays bounded (about four tuples' worth), and so does the log. But never
        // more than MAX_AUTO_INTERVAL entries apart (unless the cluster file asks for more): the
        // log tail a restart replays, and a new node receives after the snapshot, stays bounded.
        let interval = self
            .settings
            .snapshot_entries
            .max((self.machine.space().len() as u64 / 4).min(MAX_AUTO_INTERVAL));
        if self.snapshots.writing || (!wanted && !snapshot_due(self.id, last, applied, interval)) {
            return;
        }
        self.snapshots.writing = true;
        // The view costs a page table; the encoding (most of the work) happens in the
        // background, so the raft loop never stalls on a large state.
        let started = Instant::now();
        let view = self.machine.view();
        let conf_state = self.raw.raft.prs().conf().to_conf_state();
        info!(self.logger, "taking a snapshot"; "index" => applied,
            "tuples" => view.space().len(), "view_us" => started.elapsed().as_micros() as u64);
        let store = Arc::clone(&self.snapshots.store);
        let tx = self.inbox_tx.clone();
        let logger = self.logger.clone();
        let job = Box::new(move || {
            let started = Instant::now();
            let (index, term) = (view.applied_index(), view.applied_term());
            // Encoded straight into the file through a bounded buffer, whatever the state's
            // size.
            let saved = store.save_with(index, term, &conf_state, |w| view.encode_to(w));
            let (snapshot, error) = match saved {
                Ok(meta) => {
                    info!(logger, "snapshot encoded and written"; "index" => index,
                        "bytes" => meta.size, "ms" => started.elapsed().as_millis() as u64);
                    (meta.to_raft_snapshot(), None)
                }
                Err(e) => {
                    let mut snapshot = Snapshot::default();
                    snapshot.mut_metadata().index = index;
                    (snapshot, Some(e.to_string()))
                }
            };
            let _ = tx.send(NodeMsg::SnapshotSaved {
                snapshot: Box::new(snapshot),
                error,
            });
        });
        if let Err(e) = self.env.background.spawn(Work::Snapshot, job) {
            error!(self.logger, "cannot write a snapshot"; "err" => %e);
            self.snapshots.writing = false;
        }
    }

    /// The snapshot file is on disk: raft may hand it to lagging followers, and the log may be
    /// compacted behind the older kept snapshot (keeping `log_tail` entries).
    pub(super) fn snapshot_saved(
        &mut self,
        snapshot: Snapshot,
        failed: Option<String>,
    ) -> Result<(), NodeError> {
        self.snapshots.writing = false;
        let index = snapshot.get_metadata().index;
        if let Some(e) = failed {
            error!(self.logger, "writing a snapshot failed; will try again later";
                "index" => index, "err" => e);
            return Ok(());
        }
        if index <= self.raw.store().snapshot_metadata().index {
            return Ok(());
        }
        self.raw.mut_store().set_snapshot(snapshot)?;
        self.snapshots.note_kept(index);
        info!(self.logger, "snapshot written"; "index" => index);
        self.compact();
        Ok(())
    }

    fn compact(&mut self) {
        let [older, .., newest] = self.snapshots.kept[..] else {
            return;
        };
        let up_to = (older + 1).min(newest.saturating_sub(self.settings.log_tail) + 1);
        let first = self.raw.store().first_index().unwrap_or(0);
        if up_to <= first {
            return;
        }
        match self.raw.mut_store().compact(up_to) {
            Ok(()) => info!(self.logger, "log compacted"; "first_index" => up_to,
                "engine_bytes" => self.raw.store().engine_used_bytes()),
            Err(e) => error!(self.logger, "log compaction failed"; "up_to" => up_to, "err" => %e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn snapshots_come_every_interval_and_out_of_step() {
        let interval = 1000;
        let mut taken: Vec<Vec<u64>> = Vec::new();
        for id in 1..=3 {
            let mut last = 0;
            let mut at = Vec::new();
            for applied in 1..=10_000 {
                if snapshot_due(id, last, applied, interval) {
                    at.push(applied);
                    last = applied;
                }
            }
            // Once in step, exactly every interval.
            for w in at.windows(2).skip(1) {
                assert_eq!(w[1] - w[0], interval, "node {id}: {at:?}");
            }
            assert!(at.len() >= 9, "node {id}: {at:?}");
            taken.push(at);
        }
        // The three nodes never snapshot at the same index.
        for a in &taken[0] {
            assert!(!taken[1].contains(a) && !taken[2].contains(a), "{taken:?}");
        }
        // Never more than 1.5 intervals apart, never less than half of one.
        assert!(snapshot_due(1, 0, 1500, interval));
        assert!(!snapshot_due(1, 900, 1300, interval));
    }
}
