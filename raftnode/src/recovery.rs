//! Recovering a node's state from its disk: the log storage's identity and incarnation, the
//! founding membership of a fresh node, and the newest valid snapshot file lined up with the log.
//! The node process and the simulator start (and restart) nodes through [`recover`].

use anyhow::bail;
use raft::Storage as _;
use slog::{Logger, info, warn};

use crate::keys::ClusterId;
use crate::machine::Machine;
use crate::snapshot::SnapshotStore;
use crate::storage::RaftStorage;

/// A node's state as its disk holds it.
pub struct Recovered {
    /// The log storage, lined up with the snapshot.
    pub storage: RaftStorage,
    /// The state of the newest valid snapshot (or empty).
    pub machine: Machine,
    /// Indexes of the snapshot files kept, oldest first.
    pub kept_snapshots: Vec<u64>,
    /// This start's incarnation (peers refuse batches numbered before it).
    pub incarnation: u64,
}

/// Starts a new incarnation of the node whose disk `storage` and `snapshots` are: refuses a disk
/// of another cluster, writes the founding membership if the log is fresh and `voters` are given,
/// and restores the newest valid snapshot. The founding entries name the cluster and `admin`,
/// the admin's public key.
pub fn recover(
    mut storage: RaftStorage,
    snapshots: &SnapshotStore,
    voters: &[u64],
    (cluster, admin): (ClusterId, Option<[u8; 32]>),
    logger: &Logger,
) -> anyhow::Result<Recovered> {
    let fresh =
        storage.hard_state().term == 0 && raft::Storage::last_index(&storage).unwrap_or(0) == 0;
    if fresh && !voters.is_empty() && admin.is_none() {
        bail!(
            "the key file names no admin_key: a cluster founded without an admin could never \
             change its membership, and its name `admin` would be free for anyone to take; make \
             the key file with `raftnode key init FILE` (it creates admin.key beside it)"
        );
    }
    let incarnation = storage.begin_incarnation(cluster.0)?;
    // A founding member writes the initial membership as the log's first entries.
    storage.bootstrap(voters, cluster.0, admin)?;
    let (machine, kept_snapshots) = restore(snapshots, &mut storage, logger)?;
    if machine.cluster_id() != 0 && machine.cluster_id() != cluster.0 {
        bail!(
            "the snapshot in {} is of cluster {:016x}, but the key file is for cluster {cluster}",
            snapshots.dir().display(),
            machine.cluster_id(),
        );
    }
    Ok(Recovered {
        storage,
        machine,
        kept_snapshots,
        incarnation,
    })
}

/// Loads the newest valid snapshot file into a machine and lines the log storage up with it.
///
/// A corrupt snapshot file is refused (by the store) and an older one used; the log is compacted
/// only behind the older kept snapshot, so its entries after that snapshot are still there.
fn restore(
    snapshots: &SnapshotStore,
    storage: &mut RaftStorage,
    logger: &Logger,
) -> anyhow::Result<(Machine, Vec<u64>)> {
    let first = storage.first_index().unwrap_or(1);
    let last = storage.last_index().unwrap_or(0);
    let kept: Vec<u64> = snapshots.list()?.iter().map(|s| s.index).collect();
    // Decoded as it is read, with a bounded buffer; a file whose state does not decode is
    // refused like a corrupt one and the next older file tried.
    let started = std::time::Instant::now();
    let loaded = snapshots.load_newest_with(|r, max| Machine::decode_from(r, max))?;
    let Some((meta, machine)) = loaded else {
        if first > 1 {
            bail!(
                "no valid snapshot file in {} but the log starts at index {first}: this node \
                 cannot rebuild its state locally; remove it from the cluster, wipe its data \
                 dir and add it back (it then receives a snapshot from the leader)",
                snapshots.dir().display()
            );
        }
        return Ok((Machine::new(), kept));
    };
    if machine.applied_index() != meta.index {
        bail!(
            "snapshot {} says index {} but its state is at index {}",
            meta.path.display(),
            meta.index,
            machine.applied_index()
        );
    }
    let index = meta.index;
    let snapshot = meta.to_raft_snapshot();
    // Written when it arrived from the leader, but the node died before installing it: beyond
    // the log, or over a log that disagrees with it there (a tail of an old term, which was
    // never committed: every entry after it is on that branch too). A snapshot past the stored
    // commit but agreeing with the log is kept by `set_snapshot`, which raises the commit.
    let disagrees = || storage.term(index).ok() != Some(meta.term);
    if index > last || (index + 1 >= first && disagrees()) {
        storage.apply_snapshot(&snapshot)?;
    } else if index + 1 < first {
        bail!(
            "the newest valid snapshot (index {index}) is older than the compacted log (first \
             index {first}): this node cannot rebuild its state locally; remove it from the \
             cluster, wipe its data dir and add it back"
        );
    } else if index >= storage.snapshot_metadata().index
        && let Err(e) = storage.set_snapshot(snapshot)
    {
        warn!(logger, "the restored snapshot cannot be offered to followers"; "err" => %e);
    }
    info!(logger, "restored state from snapshot";
        "index" => index, "term" => meta.term, "tuples" => machine.space().len(),
        "bytes" => meta.size, "ms" => started.elapsed().as_millis() as u64,
        "file" => %meta.path.display(), "log_first" => first, "log_last" => last);
    let kept = kept.into_iter().filter(|&i| i <= index).collect();
    Ok((machine, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::ConfState;

    fn logger() -> Logger {
        crate::logging::discard()
    }

    /// A node that died after writing a snapshot from the leader to disk but before installing
    /// it in its log comes back with the snapshot installed, and restarts cleanly again.
    #[test]
    fn a_crash_between_saving_and_installing_a_snapshot_recovers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut storage = RaftStorage::open(dir.path(), &[1, 2, 3], logger()).unwrap();
            storage.bootstrap(&[1, 2, 3], 7, None).unwrap();
            let snapshots = SnapshotStore::open(dir.path(), logger()).unwrap();
            let mut machine = Machine::new();
            machine.set_cluster_id(7);
            machine.mark_applied(40, 2);
            let cs = ConfState::from((vec![1, 2, 3], vec![]));
            snapshots.save(40, 2, &cs, &machine.encode()).unwrap();
            // The crash: nothing after the save ran.
        }
        for _ in 0..2 {
            let mut storage = RaftStorage::open(dir.path(), &[1, 2, 3], logger()).unwrap();
            let snapshots = SnapshotStore::open(dir.path(), logger()).unwrap();
            let (machine, kept) = restore(&snapshots, &mut storage, &logger()).unwrap();
            assert_eq!(machine.applied_index(), 40);
            assert_eq!(machine.cluster_id(), 7);
            assert_eq!(kept, vec![40]);
            assert_eq!(storage.first_index().unwrap(), 41);
            assert_eq!(storage.last_index().unwrap(), 40);
            assert!(storage.hard_state().commit >= 40);
            assert_eq!(storage.snapshot_metadata().index, 40);
        }
    }
}
