//! raft-engine as raft's log storage: entries, hard state, conf state and snapshot metadata.
//!
//! # On disk
//!
//! ```text
//! <data_dir>/
//!   LOCK          exclusive lock (fs2 / flock) held for the lifetime of a RaftStorage;
//!                 a second open of the same dir, even in the same process, fails
//!   raft/         a tikv raft-engine instance (its own files: *.raftlog, *.rewrite, LOCK, ...)
//!   ...           (snapshot files are written next to it by another module)
//! ```
//!
//! The engine ([`crate::disk::LogEngine`]: raft-engine in production, an in-memory disk in the
//! simulator) holds one raft group (raft-engine region 1), with:
//!
//! | what | raft-engine | written by |
//! |---|---|---|
//! | log entries | entries of region 1 (memtable index + entry blocks) | [`RaftStorage::persist`] |
//! | `HardState` | key `hard_state` | `persist`, `set_commit`, `apply_snapshot`, `set_snapshot` (raises commit), first open |
//! | `ConfState` | key `conf_state` (absent = empty: a node waiting for a snapshot) | `set_conf_state`, `apply_snapshot`, first open |
//! | log boundary | key `log_boundary`: `SnapshotMetadata { index, term }` of the entry just before the first stored entry | `compact`, `apply_snapshot` |
//! | latest snapshot | key `snapshot_meta`: the `SnapshotMetadata` (index, term, conf state) of the newest snapshot this node knows | `set_snapshot`, `apply_snapshot` |
//! | identity | key `identity`: the cluster id this data dir belongs to and its incarnation (raised at every start) | [`RaftStorage::begin_incarnation`] |
//!
//! The log covers `(boundary.index, last_index]`: `first_index = boundary.index + 1` and
//! `term(boundary.index) = boundary.term`, exactly as `MemStorage` treats its snapshot metadata,
//! except that a compaction also moves the boundary, so `term(first_index - 1)` keeps working.
//! The boundary and the entry removal always go in one batch, so they are never out of step.
//!
//! Snapshot *data* is not stored here: the snapshot module writes it to files and hands the newest
//! one to [`RaftStorage::set_snapshot`], which keeps it in memory for `Storage::snapshot`.
//!
//! # Durability
//!
//! Every mutating call writes exactly one raft-engine `LogBatch` with `sync = true` (fdatasync
//! before returning), so each call is atomic and durable. `set_commit` is synced too: it costs one
//! small fsync, and a commit index that is lower on disk than a snapshot already taken from it
//! would make raft refuse to start (`applied > committed`).
//!
//! # Recovery
//!
//! The engine is opened with `RecoveryMode::TolerateTailCorruption`: a torn batch at the end of the
//! newest log file is cut off (we log a warning with the bytes cut, since raft-engine only reports it
//! through the `log` crate); a broken batch in any older file fails the open with an error naming
//! the directory. Note that raft-engine cannot tell a torn write from corruption *inside* the newest
//! file: both are truncated from the first bad batch on. On open every stored entry is read once
//! (checksums verified) to build the in-memory term index, so a corrupt entry block anywhere also
//! fails the open with a clear error rather than later inside raft.
//!
//! # Reads
//!
//! `first_index`/`last_index` come from the boundary and the engine memtable; `entries` reads through
//! `Engine::fetch_entries_to`; `term` uses an in-memory run-length index of the terms (a handful of
//! `(first index, term)` runs), so raft's very frequent `term` calls never touch the disk.

use std::io;
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};
use slog::{Logger, debug, error, info, warn};

use crate::disk::{EngineError, LogEngine, LogOp};

mod open;
mod terms;

use terms::TermRuns;

/// The name of the lock file inside the data dir.
pub const LOCK_FILE: &str = "LOCK";

/// The raft-engine directory inside the data dir.
pub const ENGINE_DIR: &str = "raft";

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_LOG_BOUNDARY: &[u8] = b"log_boundary";
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
/// The log index of the entry that last set the conf state (in a SnapshotMetadata's `index`), so
/// that a restart replaying the log does not apply a membership change twice.
const KEY_CONF_INDEX: &[u8] = b"conf_index";
/// The data dir's cluster id and incarnation: 16 bytes, two little-endian `u64`s.
const KEY_IDENTITY: &[u8] = b"identity";

/// Errors of the raft log storage. Every variant names the data dir (or file) it is about.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The log engine failed.
    #[error("raft log in {}: {op}: {source}", dir.display())]
    Engine {
        /// The engine directory (`<data_dir>/raft`).
        dir: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// A file system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("cannot create data dir", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The data dir path exists but is not a directory.
    #[error("data dir {} exists and is not a directory", path.display())]
    NotADirectory {
        /// The path given as data dir.
        path: PathBuf,
    },
    /// Stored data is malformed or inconsistent.
    #[error("corrupt raft storage in {}: {detail}", path.display())]
    Corrupt {
        /// The data dir (or file) holding the bad data.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Another `RaftStorage` (in this or another process) holds the data dir.
    #[error(
        "data dir {} is in use by another raftnode process (lock file {})",
        dir.display(),
        dir.join(LOCK_FILE).display()
    )]
    Locked {
        /// The data dir.
        dir: PathBuf,
    },
    /// A snapshot older than what the log already covers.
    #[error(
        "raft storage in {}: snapshot at index {index} is out of date (the log starts after index {boundary})",
        dir.display()
    )]
    SnapshotOutOfDate {
        /// The data dir.
        dir: PathBuf,
        /// The snapshot's index.
        index: u64,
        /// The index just before the first entry of the log.
        boundary: u64,
    },
    /// The data dir belongs to another cluster than the key file names.
    #[error(
        "data dir {} belongs to cluster {stored:016x}, but the key file is for cluster {given:016x}: \
         wrong key file or wrong data dir?",
        dir.display()
    )]
    WrongCluster {
        /// The data dir.
        dir: PathBuf,
        /// The cluster it recorded on its first start.
        stored: u64,
        /// The cluster of the key file given now.
        given: u64,
    },
    /// A call that would break raft's invariants (a hole in the log, compacting uncommitted
    /// entries, ...). Nothing was written.
    #[error("raft storage in {}: {detail}", dir.display())]
    InvalidRequest {
        /// The data dir.
        dir: PathBuf,
        /// What was asked and why it was refused.
        detail: String,
    },
}

/// raft's log storage on raft-engine: see the [module documentation](self).
///
/// Owned by the node's `RawNode`; the `&mut self` methods are the writes the ready loop makes.
pub struct RaftStorage {
    /// Where entries and keys are written (raft-engine, or a simulated disk).
    engine: Box<dyn LogEngine>,
    /// The data dir, for messages.
    data_dir: PathBuf,
    state: RaftState,
    /// Index and term of the entry just before the first stored one.
    boundary: SnapshotMetadata,
    /// The newest snapshot this node knows (index 0: none).
    snapshot_meta: SnapshotMetadata,
    /// The snapshot handed out to raft for lagging followers.
    snapshot: Option<Snapshot>,
    /// The index of the entry (or snapshot) that last set the conf state.
    conf_index: u64,
    /// Raft asked for a snapshot this storage does not have (none yet, or one that predates the
    /// follower's membership): the node should take one now.
    snapshot_wanted: std::cell::Cell<bool>,
    terms: TermRuns,
    logger: Logger,
}

impl std::fmt::Debug for RaftStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStorage")
            .field("data_dir", &self.data_dir)
            .field("first_index", &self.first())
            .field("last_index", &self.last())
            .field("hard_state", &self.state.hard_state)
            .field("conf_state", &self.state.conf_state)
            .field("snapshot_index", &self.snapshot_meta.index)
            .finish()
    }
}

fn boundary_meta(index: u64, term: u64) -> SnapshotMetadata {
    SnapshotMetadata {
        index,
        term,
        ..Default::default()
    }
}

fn voters_set(cs: &ConfState) -> Vec<u64> {
    let mut v = cs.voters.clone();
    v.sort_unstable();
    v.dedup();
    v
}

impl RaftStorage {
    /// A founding member's first log: one committed `AddNode` entry (term 1) per initial voter,
    /// identical on every founding member. The membership is then in the log itself, so a node
    /// that joins later and replays the log from the start sees the same configurations.
    ///
    /// Does nothing unless the storage is fresh (no term, no entries) and `voters` is non-empty.
    ///
    /// The entries name the cluster and the admin's public key (`admin`, registered as user
    /// `admin` when they are applied).
    pub fn bootstrap(
        &mut self,
        voters: &[u64],
        cluster_id: u64,
        admin: Option<[u8; 32]>,
    ) -> Result<(), StorageError> {
        if voters.is_empty() || self.state.hard_state.term != 0 || self.last() != 0 {
            return Ok(());
        }
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters.dedup();
        let mut entries = Vec::with_capacity(voters.len());
        for (i, &id) in voters.iter().enumerate() {
            let mut cc = raft::eraftpb::ConfChange::default();
            cc.set_change_type(raft::eraftpb::ConfChangeType::AddNode);
            cc.node_id = id;
            // The founding entries name the cluster, so the log itself says whose it is.
            cc.context = prost::Message::encode_to_vec(&crate::proto::Members {
                members: Vec::new(),
                cluster_id,
                admin_key: admin.map(|k| k.to_vec()).unwrap_or_default(),
            })
            .into();
            let data =
                protobuf::Message::write_to_bytes(&cc).map_err(|e| StorageError::Corrupt {
                    path: self.data_dir.clone(),
                    detail: format!("cannot encode the bootstrap membership: {e}"),
                })?;
            let mut entry = Entry::default();
            entry.set_entry_type(raft::eraftpb::EntryType::EntryConfChange);
            entry.term = 1;
            entry.index = i as u64 + 1;
            entry.data = data.into();
            entries.push(entry);
        }
        let last = entries.len() as u64;
        let hs = HardState {
            term: 1,
            vote: 0,
            commit: last,
            ..Default::default()
        };
        self.persist(&entries, Some(&hs))?;
        let cs = ConfState {
            voters,
            ..Default::default()
        };
        self.set_conf_state(&cs, last)?;
        Ok(())
    }

    /// Records on first start that this data dir belongs to `cluster`, refuses (`WrongCluster`)
    /// a data dir of another cluster, and raises the dir's incarnation: a number that grows at
    /// every start (synced), so the batches a node sends after a restart are numbered after
    /// every batch it sent before, and peers can refuse replayed ones.
    pub fn begin_incarnation(&mut self, cluster: u64) -> Result<u64, StorageError> {
        let stored = self
            .engine
            .get(KEY_IDENTITY)
            .map_err(|e| self.engine_err("cannot read the identity", e))?;
        let previous = match stored.as_deref() {
            None => 0,
            Some(bytes) if bytes.len() == 16 => {
                let mut le = [0u8; 8];
                le.copy_from_slice(&bytes[..8]);
                let stored = u64::from_le_bytes(le);
                if stored != cluster {
                    return Err(self.fail(StorageError::WrongCluster {
                        dir: self.data_dir.clone(),
                        stored,
                        given: cluster,
                    }));
                }
                le.copy_from_slice(&bytes[8..]);
                u64::from_le_bytes(le)
            }
            Some(bytes) => {
                return Err(self.invalid(format!(
                    "the stored identity is {} bytes, not 16",
                    bytes.len()
                )));
            }
        };
        let incarnation = previous + 1;
        let mut value = Vec::with_capacity(16);
        value.extend_from_slice(&cluster.to_le_bytes());
        value.extend_from_slice(&incarnation.to_le_bytes());
        let ops = vec![LogOp::Put(KEY_IDENTITY, value)];
        self.write(ops, "cannot record the identity")?;
        Ok(incarnation)
    }

    // ---- getters ----

    /// The current hard state (as last persisted).
    pub fn hard_state(&self) -> &HardState {
        &self.state.hard_state
    }

    /// The current conf state (as last persisted).
    pub fn conf_state(&self) -> &ConfState {
        &self.state.conf_state
    }

    /// The data dir this storage locks.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Bytes of log files raft-engine currently holds (append and rewrite queues).
    pub fn engine_used_bytes(&self) -> usize {
        self.engine.used_bytes()
    }

    /// Metadata (index, term, conf state) of the newest snapshot this node knows, persisted across
    /// restarts; index 0 when there is none.
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot_meta
    }

    /// The snapshot held for raft (set by [`set_snapshot`](Self::set_snapshot) or
    /// [`apply_snapshot`](Self::apply_snapshot) since this storage was opened).
    pub fn latest_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    fn first(&self) -> u64 {
        self.boundary.index + 1
    }

    fn last(&self) -> u64 {
        self.engine.last_index().unwrap_or(self.boundary.index)
    }

    // ---- writes ----

    /// Logs `e` and returns it.
    fn fail(&self, e: StorageError) -> StorageError {
        error!(self.logger, "raft storage error"; "error" => %e);
        e
    }

    fn invalid(&self, detail: String) -> StorageError {
        self.fail(StorageError::InvalidRequest {
            dir: self.data_dir.clone(),
            detail,
        })
    }

    fn engine_err(&self, op: &'static str, source: EngineError) -> StorageError {
        self.fail(StorageError::Engine {
            dir: self.engine.dir().to_path_buf(),
            op,
            source,
        })
    }

    fn put(
        &self,
        ops: &mut Vec<LogOp<'_>>,
        key: &'static [u8],
        m: &dyn protobuf::Message,
        op: &'static str,
    ) -> Result<(), StorageError> {
        let bytes = m
            .write_to_bytes()
            .map_err(|e| self.engine_err(op, EngineError::Encode(e.to_string())))?;
        ops.push(LogOp::Put(key, bytes));
        Ok(())
    }

    /// Writes `ops` in one atomic, synced engine write.
    fn write(&mut self, ops: Vec<LogOp<'_>>, op: &'static str) -> Result<(), StorageError> {
        self.engine
            .write(ops, true)
            .map_err(|e| self.engine_err(op, e))
    }

    /// Appends `entries` (which may overwrite a conflicting suffix of the log: every stored entry
    /// from `entries[0].index` on is replaced) and stores `hard_state`, in one synced batch.
    ///
    /// `entries` must be consecutive, must not start before `first_index` (compacted) nor after
    /// `last_index + 1` (a hole); otherwise nothing is written and `InvalidRequest` is returned.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        if let Some(first) = entries.first() {
            let (lo, hi) = (self.first(), self.last() + 1);
            if first.index < lo || first.index > hi {
                return Err(self.invalid(format!(
                    "cannot append entries from index {}: the log accepts entries from {lo} to {hi} (first index to last index + 1)",
                    first.index
                )));
            }
            for w in entries.windows(2) {
                if w[1].index != w[0].index + 1 {
                    return Err(self.invalid(format!(
                        "cannot append non-consecutive entries (index {} followed by {})",
                        w[0].index, w[1].index
                    )));
                }
            }
        }
        let mut ops = Vec::new();
        if !entries.is_empty() {
            ops.push(LogOp::Entries(entries));
        }
        if let Some(hs) = hard_state {
            self.put(&mut ops, KEY_HARD_STATE, hs, "cannot encode the hard state")?;
        }
        self.write(ops, "cannot persist entries and hard state")?;
        if let Some(first) = entries.first() {
            self.terms.truncate(first.index);
            for e in entries {
                self.terms.push(e.index, e.term);
            }
        }
        if let Some(hs) = hard_state {
            self.state.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Raises the stored commit index to `commit` (from a `LightReady`); a lower or equal value is
    /// ignored. Synced (see the module docs).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        if commit <= self.state.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.state.hard_state.clone();
        hs.commit = commit;
        let mut ops = Vec::new();
        self.put(
            &mut ops,
            KEY_HARD_STATE,
            &hs,
            "cannot encode the hard state",
        )?;
        self.write(ops, "cannot persist the commit index")?;
        self.state.hard_state = hs;
        Ok(())
    }

    /// Stores the conf state after a conf change was applied.
    pub fn set_conf_state(&mut self, cs: &ConfState, index: u64) -> Result<(), StorageError> {
        let mut ops = Vec::new();
        self.put(&mut ops, KEY_CONF_STATE, cs, "cannot encode the conf state")?;
        let at = SnapshotMetadata {
            index,
            ..Default::default()
        };
        self.put(
            &mut ops,
            KEY_CONF_INDEX,
            &at,
            "cannot encode the conf index",
        )?;
        self.write(ops, "cannot persist the conf state")?;
        self.state.conf_state = cs.clone();
        self.conf_index = index;
        Ok(())
    }

    /// Whether raft asked for a snapshot this storage could not give since the last call; clears
    /// the flag.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// The index of the log entry (or snapshot) that last set the conf state: membership changes
    /// at or before it are already in [`conf_state`](Self::conf_state).
    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    /// Installs a snapshot received from the leader: the whole log is dropped, the snapshot's
    /// (index, term) becomes the log boundary, its conf state the conf state, and the hard state's
    /// commit (and term) are raised to at least the snapshot's. Entries after it come later through
    /// [`persist`](Self::persist). The snapshot is also kept to serve other followers.
    ///
    /// A snapshot at or before the log boundary is refused with `SnapshotOutOfDate`.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        if meta.index < self.first() {
            return Err(self.fail(StorageError::SnapshotOutOfDate {
                dir: self.data_dir.clone(),
                index: meta.index,
                boundary: self.boundary.index,
            }));
        }
        let mut hs = self.state.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        let boundary = boundary_meta(meta.index, meta.term);
        let cs = meta.get_conf_state().clone();

        let mut ops = Vec::new();
        // Clean drops the whole raft group (entries and keys); everything is put back after it,
        // in the same batch.
        ops.push(LogOp::Clean);
        let identity = self
            .engine
            .get(KEY_IDENTITY)
            .map_err(|e| self.engine_err("cannot read the identity", e))?;
        if let Some(identity) = identity {
            ops.push(LogOp::Put(KEY_IDENTITY, identity));
        }
        self.put(
            &mut ops,
            KEY_HARD_STATE,
            &hs,
            "cannot encode the hard state",
        )?;
        self.put(
            &mut ops,
            KEY_CONF_STATE,
            &cs,
            "cannot encode the conf state",
        )?;
        self.put(
            &mut ops,
            KEY_LOG_BOUNDARY,
            &boundary,
            "cannot encode the log boundary",
        )?;
        self.put(
            &mut ops,
            KEY_SNAPSHOT_META,
            meta,
            "cannot encode snapshot metadata",
        )?;
        let at = SnapshotMetadata {
            index: meta.index,
            ..Default::default()
        };
        self.put(
            &mut ops,
            KEY_CONF_INDEX,
            &at,
            "cannot encode the conf index",
        )?;
        self.write(ops, "cannot persist an applied snapshot")?;
        self.conf_index = meta.index;

        self.state.hard_state = hs;
        self.state.conf_state = cs;
        self.boundary = boundary;
        self.snapshot_meta = meta.clone();
        self.snapshot = Some(snap.clone());
        self.terms.clear();
        info!(self.logger, "applied snapshot"; "index" => meta.index, "term" => meta.term,
            "voters" => ?self.state.conf_state.voters);
        Ok(())
    }

    /// Drops the entries with index `< up_to`; `term(up_to - 1)` stays answerable. A call at or
    /// before `first_index` does nothing.
    ///
    /// Refused (`InvalidRequest`, nothing written) if it would drop an entry past the commit
    /// index, past the last index, or past the newest snapshot this node knows
    /// ([`set_snapshot`](Self::set_snapshot)): a follower that falls behind the log must be able
    /// to catch up from that snapshot.
    ///
    /// Afterwards raft-engine's purge runs, which deletes (or rewrites) log files made obsolete.
    pub fn compact(&mut self, up_to: u64) -> Result<(), StorageError> {
        if up_to <= self.first() {
            return Ok(());
        }
        let last = self.last();
        let drop_to = up_to - 1;
        if drop_to > last {
            return Err(self.invalid(format!(
                "cannot compact to {up_to}: the last log index is {last}"
            )));
        }
        if drop_to > self.state.hard_state.commit {
            return Err(self.invalid(format!(
                "cannot compact to {up_to}: the commit index is {}",
                self.state.hard_state.commit
            )));
        }
        if drop_to > self.snapshot_meta.index {
            return Err(self.invalid(format!(
                "cannot compact to {up_to}: the newest snapshot is at index {} (compact at most to snapshot index + 1)",
                self.snapshot_meta.index
            )));
        }
        let Some(term) = self.term_in_log(drop_to)? else {
            return Err(self.invalid(format!("cannot compact to {up_to}: no term for {drop_to}")));
        };
        let boundary = boundary_meta(drop_to, term);
        let mut ops = Vec::new();
        ops.push(LogOp::Compact(up_to));
        self.put(
            &mut ops,
            KEY_LOG_BOUNDARY,
            &boundary,
            "cannot encode the log boundary",
        )?;
        self.write(ops, "cannot persist a compaction")?;
        self.boundary = boundary;
        self.terms.compact(up_to);
        debug!(self.logger, "compacted the log"; "first_index" => up_to, "last_index" => last,
            "boundary_term" => term);
        self.purge()
    }

    /// Runs raft-engine's purge: deletes log files holding only compacted data and rewrites live
    /// data out of old files once the log files exceed the purge threshold. Called by
    /// [`compact`](Self::compact).
    pub fn purge(&mut self) -> Result<(), StorageError> {
        let before = self.engine.used_bytes();
        self.engine
            .purge()
            .map_err(|e| self.engine_err("cannot purge old log files", e))?;
        let after = self.engine.used_bytes();
        if after != before {
            debug!(self.logger, "purged log files"; "bytes_before" => before,
                "bytes_after" => after);
        }
        Ok(())
    }

    /// Keeps `snap` (the newest snapshot, with its data) to hand to raft for lagging followers, and
    /// persists its metadata.
    ///
    /// A snapshot holds applied, hence committed, state: if its index is past the stored commit
    /// index (the machine may apply entries before the `Ready`'s hard state is persisted, and a
    /// crash can land in between), the stored commit is raised to it in the same batch, so that
    /// on restart raft never sees `applied > committed`.
    ///
    /// Refused (nothing written) if its index is 0, before the log boundary (a follower could not
    /// continue from it), past the last log index, or its term disagrees with the log.
    pub fn set_snapshot(&mut self, snap: Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        if meta.index == 0 {
            return Err(self.invalid("cannot keep a snapshot at index 0".into()));
        }
        if meta.index < self.boundary.index {
            return Err(self.fail(StorageError::SnapshotOutOfDate {
                dir: self.data_dir.clone(),
                index: meta.index,
                boundary: self.boundary.index,
            }));
        }
        match self.term_in_log(meta.index)? {
            None => {
                return Err(self.invalid(format!(
                    "cannot keep a snapshot at index {}: the last log index is {}",
                    meta.index,
                    self.last()
                )));
            }
            Some(term) if term != meta.term => {
                return Err(self.invalid(format!(
                    "snapshot at index {} has term {} but the log has term {term} there",
                    meta.index, meta.term
                )));
            }
            Some(_) => {}
        }
        let mut ops = Vec::new();
        self.put(
            &mut ops,
            KEY_SNAPSHOT_META,
            meta,
            "cannot encode snapshot metadata",
        )?;
        let raised = (meta.index > self.state.hard_state.commit).then(|| {
            let mut hs = self.state.hard_state.clone();
            hs.commit = meta.index;
            hs
        });
        if let Some(hs) = &raised {
            self.put(&mut ops, KEY_HARD_STATE, hs, "cannot encode the hard state")?;
        }
        self.write(ops, "cannot persist snapshot metadata")?;
        if let Some(hs) = raised {
            info!(self.logger, "raised the stored commit index to a snapshot's index";
                "from" => self.state.hard_state.commit, "to" => hs.commit);
            self.state.hard_state = hs;
        }
        self.snapshot_meta = meta.clone();
        debug!(self.logger, "keeping snapshot"; "index" => meta.index, "term" => meta.term,
            "bytes" => snap.data.len());
        self.snapshot = Some(snap);
        Ok(())
    }

    // ---- reads ----

    /// The term of `idx` if it is the boundary or in the log; `None` otherwise.
    fn term_in_log(&self, idx: u64) -> Result<Option<u64>, StorageError> {
        if idx == self.boundary.index {
            return Ok(Some(self.boundary.term));
        }
        if idx < self.first() || idx > self.last() {
            return Ok(None);
        }
        if let Some(t) = self.terms.get(idx) {
            return Ok(Some(t));
        }
        // Not reachable while the term index is maintained; read the entry as a fallback.
        warn!(self.logger, "term index has no entry; reading the log"; "index" => idx);
        match self.engine.entry(idx) {
            Ok(Some(e)) => Ok(Some(e.term)),
            Ok(None) => Ok(None),
            Err(e) => Err(self.engine_err("cannot read a log entry", e)),
        }
    }

    fn to_raft(e: StorageError) -> raft::Error {
        raft::Error::Store(RaftStorageError::Other(Box::new(e)))
    }
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(self.state.clone())
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        if low < self.first() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        let last = self.last();
        if high > last + 1 {
            error!(self.logger, "raft asked for entries past the last index";
                "low" => low, "high" => high, "last_index" => last);
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let mut ents = Vec::with_capacity(((high - low) as usize).min(1024));
        let limit = match max_size {
            None | Some(raft::NO_LIMIT) => None,
            Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        };
        if let Err(e) = self.engine.fetch(low, high, limit, &mut ents) {
            return Err(Self::to_raft(self.engine_err("cannot read log entries", e)));
        }
        if ents.is_empty() || ents[0].index != low {
            let e = StorageError::Corrupt {
                path: self.data_dir.clone(),
                detail: format!(
                    "reading entries [{low}, {high}) returned {} entries starting at {:?}",
                    ents.len(),
                    ents.first().map(|e| e.index)
                ),
            };
            return Err(Self::to_raft(self.fail(e)));
        }
        raft::util::limit_size(&mut ents, max_size);
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.boundary.index {
            return Ok(self.boundary.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        match self.term_in_log(idx) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(raft::Error::Store(RaftStorageError::Unavailable)),
            Err(e) => Err(Self::to_raft(e)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let includes = |s: &Snapshot| {
            let cs = s.get_metadata().get_conf_state();
            cs.voters
                .iter()
                .chain(&cs.learners)
                .chain(&cs.voters_outgoing)
                .chain(&cs.learners_next)
                .any(|&id| id == to)
        };
        match &self.snapshot {
            // A follower refuses a snapshot whose configuration leaves it out (a node added
            // after the snapshot was taken): such a node needs a newer one.
            Some(s) if s.get_metadata().index >= request_index && includes(s) => Ok(s.clone()),
            held => {
                self.snapshot_wanted.set(true);
                debug!(self.logger, "no snapshot to send yet"; "to" => to,
                    "request_index" => request_index,
                    "held_index" => held.as_ref().map(|s| s.get_metadata().index));
                Err(raft::Error::Store(
                    RaftStorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use protobuf::Message as _;
    use raft::storage::MemStorage;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::disk::Tuning;
    use slog::o;
    use std::fs::{self, OpenOptions};

    fn logger() -> Logger {
        Logger::root(slog::Discard, o!())
    }

    #[test]
    fn bootstrap_puts_the_founding_membership_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open(dir.path(), &[3, 1, 2], logger()).unwrap();
        s.bootstrap(&[3, 1, 2], 7, None).unwrap();
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.hard_state().commit, 3);
        assert_eq!(s.hard_state().term, 1);
        assert_eq!(s.conf_index(), 3);
        let entries = s
            .entries(1, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        let ids: Vec<u64> = entries
            .iter()
            .map(|e| {
                let mut cc = raft::eraftpb::ConfChange::default();
                protobuf::Message::merge_from_bytes(&mut cc, &e.data).unwrap();
                assert_eq!(cc.get_change_type(), raft::eraftpb::ConfChangeType::AddNode);
                cc.node_id
            })
            .collect();
        assert_eq!(
            ids,
            vec![1, 2, 3],
            "sorted, so every founder writes the same log"
        );
        // A second bootstrap (a restart) changes nothing.
        drop(s);
        let mut s = RaftStorage::open(dir.path(), &[1, 2, 3], logger()).unwrap();
        s.bootstrap(&[1, 2, 3], 7, None).unwrap();
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.conf_index(), 3);
    }

    #[test]
    fn identity_is_recorded_raised_and_kept_through_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open(dir.path(), &[1], logger()).unwrap();
        assert_eq!(s.begin_incarnation(0xabc).unwrap(), 1);
        drop(s);
        let mut s = RaftStorage::open(dir.path(), &[1], logger()).unwrap();
        assert_eq!(s.begin_incarnation(0xabc).unwrap(), 2);
        let err = s.begin_incarnation(0xdef).unwrap_err().to_string();
        assert!(
            err.contains("0000000000000abc") && err.contains("0000000000000def"),
            "{err}"
        );
        s.apply_snapshot(&snap(10, 2, vec![1], b"state")).unwrap();
        drop(s);
        let mut s = RaftStorage::open(dir.path(), &[1], logger()).unwrap();
        assert_eq!(s.begin_incarnation(0xabc).unwrap(), 3, "kept through Clean");
        assert!(s.begin_incarnation(0xdef).is_err());
    }

    /// A logger that keeps the messages, to check what an operator would see.
    struct Collect(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl slog::Drain for Collect {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, r: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {}", r.level(), r.msg()));
            Ok(())
        }
    }

    fn collecting_logger() -> (Logger, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let lines = std::sync::Arc::default();
        let logger = Logger::root(Collect(std::sync::Arc::clone(&lines)), o!());
        (logger, lines)
    }

    fn open(dir: &Path, voters: &[u64]) -> RaftStorage {
        RaftStorage::open(dir, voters, logger()).expect("open storage")
    }

    fn ent(index: u64, term: u64, len: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![(index % 251) as u8; len].into(),
            ..Default::default()
        }
    }

    fn ents(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| ent(i, term, 16)).collect()
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn snap(index: u64, term: u64, voters: Vec<u64>, data: &[u8]) -> Snapshot {
        let mut s = Snapshot {
            data: data.to_vec().into(),
            ..Default::default()
        };
        let m = s.mut_metadata();
        m.index = index;
        m.term = term;
        m.mut_conf_state().voters = voters;
        s
    }

    fn all(s: &RaftStorage) -> Vec<Entry> {
        let (f, l) = (s.first_index().unwrap(), s.last_index().unwrap());
        if l < f {
            return Vec::new();
        }
        s.entries(f, l + 1, None, ctx()).unwrap()
    }

    fn store_err(e: raft::StorageError) -> raft::Error {
        raft::Error::Store(e)
    }

    /// The term index agrees with the entries on disk.
    fn check_terms(s: &RaftStorage) {
        for e in all(s) {
            assert_eq!(
                s.terms.get(e.index),
                Some(e.term),
                "term index at {}",
                e.index
            );
            let on_disk = s.engine.entry(e.index).unwrap();
            assert_eq!(on_disk.map(|d| d.term), Some(e.term));
        }
    }

    #[test]
    fn storage_is_send() {
        fn send<T: Send>() {}
        send::<RaftStorage>();
    }

    #[test]
    fn fresh_node_initial_state() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &[1, 2, 3]);
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state, HardState::default());
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert!(st.initialized());
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        assert_eq!(s.term(1), Err(store_err(raft::StorageError::Unavailable)));
        assert_eq!(
            s.snapshot(0, 2),
            Err(store_err(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        assert_eq!(s.data_dir(), dir.path());
        assert!(dir.path().join("raft").is_dir());
        assert!(dir.path().join(LOCK_FILE).is_file());
    }

    #[test]
    fn joining_node_has_empty_conf_state_and_stored_membership_wins() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), &[]);
            assert!(!s.initial_state().unwrap().initialized());
            assert_eq!(s.conf_state(), &ConfState::default());
        }
        // A later open with voters does not override what is stored (nothing: it waits).
        let s = open(dir.path(), &[1, 2]);
        assert_eq!(s.conf_state(), &ConfState::default());
        drop(s);

        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path(), &[1, 2, 3]);
            let cs = ConfState {
                voters: vec![1, 2, 3, 4],
                ..Default::default()
            };
            s.set_conf_state(&cs, 0).unwrap();
        }
        let s = open(dir.path(), &[1, 2, 3]);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3, 4]);
    }

    #[test]
    fn append_and_read_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), &[1]);
        let written: Vec<Entry> = (1..=10)
            .map(|i| ent(i, 1 + i / 4, 10 * i as usize))
            .collect();
        s.persist(&written[..4], Some(&hs(1, 1, 0))).unwrap();
        s.persist(&written[4..], Some(&hs(3, 1, 7))).unwrap();
        assert_eq!(s.hard_state(), &hs(3, 1, 7));
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(all(&s), written);
        for e in &written {
            assert_eq!(s.term(e.index).unwrap(), e.term);
        }
        assert_eq!(s.term(0).unwrap(), 0);
        assert_eq!(s.term(11), Err(store_err(raft::StorageError::Unavailable)));
        assert_eq!(
            s.entries(0, 3, None, ctx()),
            Err(store_err(raft::StorageError::Compacted))
        );
        assert_eq!(
            s.entries(5, 12, None, ctx()),
            Err(store_err(raft::StorageError::Unavailable))
        );
        assert_eq!(s.entries(5, 5, None, ctx()).unwrap(), Vec::<Entry>::new());
        assert_eq!(
            s.entries(3, 6, None, ctx()).unwrap(),
            written[2..5].to_vec()
        );

        // max_size exactly like raft's limit_size: at least one entry, then while it fits.
        let size = |r: std::ops::Range<usize>| -> u64 {
            written[r].iter().map(|e| u64::from(e.compute_size())).sum()
        };
        let cases = [
            (0, 1),
            (size(3..4) - 1, 1),
            (size(3..5), 2),
            (size(3..6) - 1, 2),
            (size(3..6), 3),
            (size(3..10), 7),
            (u64::MAX, 7),
        ];
        for (max, want) in cases {
            let got = s.entries(4, 11, max, ctx()).unwrap();
            assert_eq!(got, written[3..3 + want].to_vec(), "max_size {max}");
            let mut reference = written[3..10].to_vec();
            raft::util::limit_size(&mut reference, Some(max));
            assert_eq!(got, reference, "max_size {max} vs limit_size");
        }
        check_terms(&s);
    }

    #[test]
    fn overwrite_of_a_conflicting_suffix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path(), &[1]);
            s.persist(&ents(1..=10, 1), Some(&hs(1, 1, 3))).unwrap();
            // A new leader overwrites 6.. with a shorter suffix of term 2.
            s.persist(&ents(6..=8, 2), Some(&hs(2, 2, 3))).unwrap();
            assert_eq!(s.last_index().unwrap(), 8);
            assert_eq!(s.term(5).unwrap(), 1);
            assert_eq!(s.term(6).unwrap(), 2);
            assert_eq!(s.term(9), Err(store_err(raft::StorageError::Unavailable)));
            let mut want = ents(1..=5, 1);
            want.extend(ents(6..=8, 2));
            assert_eq!(all(&s), want);
            // Overwriting from the very first entry, and a longer suffix.
            s.persist(&ents(1..=12, 3), None).unwrap();
            assert_eq!(all(&s), ents(1..=12, 3));
            s.persist(&ents(12..=12, 4), None).unwrap();
            check_terms(&s);
        }
        // Recovery replays the overwrites the same way.
        let s = open(dir.path(), &[1]);
        let mut want = ents(1..=11, 3);
        want.extend(ents(12..=12, 4));
        assert_eq!(all(&s), want);
        assert_eq!(s.hard_state(), &hs(2, 2, 3));
        check_terms(&s);
    }

    #[test]
    fn invalid_appends_are_refused_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), &[1]);
        s.persist(&ents(1..=5, 1), Some(&hs(1, 1, 5))).unwrap();
        // A hole.
        let e = s.persist(&ents(7..=8, 1), None).unwrap_err();
        assert!(matches!(e, StorageError::InvalidRequest { .. }), "{e}");
        // Not consecutive.
        let mut bad = ents(6..=7, 1);
        bad[1].index = 9;
        assert!(s.persist(&bad, None).is_err());
        // Before the first index (compacted).
        s.set_snapshot(snap(3, 1, vec![1], b"x")).unwrap();
        s.compact(4).unwrap();
        let e = s.persist(&ents(2..=6, 2), None).unwrap_err();
        assert!(e.to_string().contains("from 4 to 6"), "{e}");
        assert_eq!(all(&s), ents(4..=5, 1));
        drop(s);
        let s = open(dir.path(), &[1]);
        assert_eq!(all(&s), ents(4..=5, 1));
    }

    #[test]
    fn hard_state_conf_state_and_entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        };
        {
            let mut s = open(dir.path(), &[1, 2, 3]);
            s.persist(&ents(1..=20, 2), Some(&hs(2, 3, 10))).unwrap();
            s.set_commit(15).unwrap();
            s.set_commit(12).unwrap(); // lower: ignored
            s.set_conf_state(&cs, 0).unwrap();
        }
        // Dropping released the lock: the same dir opens again.
        let s = open(dir.path(), &[1, 2, 3]);
        assert_eq!(s.hard_state(), &hs(2, 3, 15));
        assert_eq!(s.conf_state(), &cs);
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state, hs(2, 3, 15));
        assert_eq!(st.conf_state, cs);
        assert_eq!(all(&s), ents(1..=20, 2));
        assert_eq!(s.term(20).unwrap(), 2);
        assert!(s.engine_used_bytes() > 0);
    }

    #[test]
    fn compact_then_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path(), &[1]);
            let mut e = ents(1..=5, 1);
            e.extend(ents(6..=10, 2));
            s.persist(&e, Some(&hs(2, 1, 8))).unwrap();

            // Guards: no snapshot yet, past the commit index, past the last index.
            let err = s.compact(5).unwrap_err();
            assert!(err.to_string().contains("newest snapshot"), "{err}");
            s.set_snapshot(snap(8, 2, vec![1], b"state@8")).unwrap();
            let err = s.compact(10).unwrap_err();
            assert!(err.to_string().contains("commit index is 8"), "{err}");
            let err = s.compact(12).unwrap_err();
            assert!(err.to_string().contains("last log index is 10"), "{err}");
            assert_eq!(s.first_index().unwrap(), 1);

            s.compact(7).unwrap();
            assert_eq!(s.first_index().unwrap(), 7);
            assert_eq!(s.term(6).unwrap(), 2);
            assert_eq!(s.term(5), Err(store_err(raft::StorageError::Compacted)));
            assert_eq!(s.entries(7, 11, None, ctx()).unwrap(), ents(7..=10, 2));
            assert_eq!(
                s.entries(6, 11, None, ctx()),
                Err(store_err(raft::StorageError::Compacted))
            );
            // At or before first_index: nothing to do.
            s.compact(3).unwrap();
            s.compact(7).unwrap();
            assert_eq!(s.first_index().unwrap(), 7);
            // Up to the snapshot + 1.
            s.compact(9).unwrap();
            assert_eq!(s.term(8).unwrap(), 2);
            check_terms(&s);
        }
        let mut s = open(dir.path(), &[1]);
        assert_eq!(s.first_index().unwrap(), 9);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(8).unwrap(), 2);
        assert_eq!(s.term(7), Err(store_err(raft::StorageError::Compacted)));
        assert_eq!(s.entries(9, 11, None, ctx()).unwrap(), ents(9..=10, 2));
        assert_eq!(s.snapshot_metadata().index, 8);
        // The snapshot data itself is not persisted here: raft must wait for set_snapshot.
        assert_eq!(
            s.snapshot(0, 2),
            Err(store_err(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        s.set_snapshot(snap(8, 2, vec![1], b"state@8")).unwrap();
        assert!(
            s.take_snapshot_wanted(),
            "raft asked for one it did not have"
        );
        assert_eq!(s.snapshot(0, 1).unwrap().data.as_ref(), b"state@8");
        assert_eq!(s.snapshot(8, 1).unwrap().get_metadata().index, 8);
        // Node 2 is not in the snapshot's configuration: it needs a newer snapshot.
        assert!(s.snapshot(8, 2).is_err());
        assert!(s.take_snapshot_wanted());
        assert!(!s.take_snapshot_wanted(), "taking the flag clears it");
        assert_eq!(
            s.snapshot(9, 2),
            Err(store_err(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        );

        // Compacting the whole log: empty, first = last + 1, boundary term kept.
        s.set_commit(10).unwrap();
        s.set_snapshot(snap(10, 2, vec![1], b"state@10")).unwrap();
        s.compact(11).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (11, 10)
        );
        assert_eq!(s.term(10).unwrap(), 2);
        drop(s);
        let mut s = open(dir.path(), &[1]);
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (11, 10)
        );
        assert_eq!(s.term(10).unwrap(), 2);
        s.persist(&ents(11..=12, 3), None).unwrap();
        assert_eq!(all(&s), ents(11..=12, 3));
    }

    #[test]
    fn set_snapshot_validation() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), &[1]);
        s.persist(&ents(1..=10, 3), Some(&hs(3, 1, 6))).unwrap();
        assert!(s.set_snapshot(snap(0, 0, vec![1], b"")).is_err());
        let e = s.set_snapshot(snap(11, 3, vec![1], b"")).unwrap_err();
        assert!(e.to_string().contains("last log index is 10"), "{e}");
        let e = s.set_snapshot(snap(5, 2, vec![1], b"")).unwrap_err();
        assert!(e.to_string().contains("term"), "{e}");
        assert_eq!(s.snapshot_metadata().index, 0);
        s.set_snapshot(snap(6, 3, vec![1], b"six")).unwrap();
        assert_eq!(s.hard_state().commit, 6);
        s.compact(7).unwrap();
        let e = s.set_snapshot(snap(5, 3, vec![1], b"")).unwrap_err();
        assert!(matches!(
            e,
            StorageError::SnapshotOutOfDate {
                index: 5,
                boundary: 6,
                ..
            }
        ));
        assert_eq!(s.latest_snapshot().unwrap().data.as_ref(), b"six");
        // A snapshot past the stored commit (applied before the hard state was persisted) raises
        // the commit index, durably.
        s.set_snapshot(snap(8, 3, vec![1], b"eight")).unwrap();
        assert_eq!(s.hard_state().commit, 8);
        drop(s);
        let s = open(dir.path(), &[1]);
        assert_eq!(s.hard_state(), &hs(3, 1, 8));
        assert_eq!(s.snapshot_metadata().index, 8);
    }

    #[test]
    fn apply_snapshot_then_entries_and_term() {
        let dir = tempfile::tempdir().unwrap();
        let cs_voters = vec![1, 2, 3];
        {
            let mut s = open(dir.path(), &[]);
            // A lagging follower with a stale, conflicting tail.
            s.persist(&ents(1..=30, 1), Some(&hs(1, 2, 4))).unwrap();
            let sn = snap(20, 4, cs_voters.clone(), b"machine state");
            s.apply_snapshot(&sn).unwrap();
            assert_eq!(s.first_index().unwrap(), 21);
            assert_eq!(s.last_index().unwrap(), 20);
            assert_eq!(s.term(20).unwrap(), 4);
            assert_eq!(s.term(19), Err(store_err(raft::StorageError::Compacted)));
            assert_eq!(s.term(21), Err(store_err(raft::StorageError::Unavailable)));
            assert_eq!(s.hard_state(), &hs(4, 2, 20));
            assert_eq!(s.conf_state().voters, cs_voters);
            assert_eq!(s.snapshot(0, 3).unwrap(), sn);
            assert_eq!(s.snapshot_metadata(), sn.get_metadata());
            // Out of date.
            let e = s.apply_snapshot(&snap(20, 4, vec![1], b"")).unwrap_err();
            assert!(matches!(e, StorageError::SnapshotOutOfDate { .. }), "{e}");
            // The leader continues from 21.
            s.persist(&ents(21..=25, 4), Some(&hs(4, 2, 23))).unwrap();
            assert_eq!(s.entries(21, 26, None, ctx()).unwrap(), ents(21..=25, 4));
            check_terms(&s);
        }
        let mut s = open(dir.path(), &[]);
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 25);
        assert_eq!(s.term(20).unwrap(), 4);
        assert_eq!(s.hard_state(), &hs(4, 2, 23));
        assert_eq!(s.conf_state().voters, cs_voters);
        assert_eq!(s.snapshot_metadata().index, 20);
        assert_eq!(all(&s), ents(21..=25, 4));
        // A second snapshot past the end of the log.
        s.apply_snapshot(&snap(40, 5, vec![1, 2], b"")).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (41, 40)
        );
        drop(s);
        let s = open(dir.path(), &[]);
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (41, 40)
        );
        assert_eq!(s.term(40).unwrap(), 5);
        assert_eq!(s.conf_state().voters, vec![1, 2]);
    }

    #[test]
    fn lock_refuses_a_second_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &[1]);
        let err = RaftStorage::open(dir.path(), &[1], logger()).unwrap_err();
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
        let msg = err.to_string();
        let d = dir.path().display().to_string();
        assert_eq!(
            msg,
            format!(
                "data dir {d} is in use by another raftnode process (lock file {})",
                dir.path().join("LOCK").display()
            )
        );
        drop(s);
        open(dir.path(), &[1]);
    }

    #[test]
    fn a_regular_file_as_data_dir_fails_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"hello").unwrap();
        let err = RaftStorage::open(&file, &[1], logger()).unwrap_err();
        assert!(matches!(err, StorageError::NotADirectory { .. }), "{err}");
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        // And a data dir below a regular file cannot be created.
        let below = file.join("sub");
        let err = RaftStorage::open(&below, &[1], logger()).unwrap_err();
        assert!(
            err.to_string().contains(&below.display().to_string()),
            "{err}"
        );
    }

    fn newest_raftlog(dir: &Path) -> PathBuf {
        let mut files: Vec<PathBuf> = fs::read_dir(dir.join(ENGINE_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".raftlog"))
            .collect();
        files.sort();
        files.pop().expect("a .raftlog file")
    }

    fn chop(path: &Path, bytes: u64) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - bytes).unwrap();
        f.sync_all().unwrap();
    }

    #[test]
    fn torn_tail_is_truncated_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let written: Vec<Entry> = (1..=50).map(|i| ent(i, 1, 100)).collect();
        {
            let mut s = open(dir.path(), &[1]);
            for e in &written {
                s.persist(std::slice::from_ref(e), Some(&hs(1, 1, e.index - 1)))
                    .unwrap();
            }
        }
        let file = newest_raftlog(dir.path());
        let before = fs::metadata(&file).unwrap().len();

        // A few bytes off the last batch: exactly that batch is lost.
        chop(&file, 7);
        let last = {
            let (log, lines) = collecting_logger();
            let s = RaftStorage::open(dir.path(), &[1], log).unwrap();
            let lines = lines.lock().unwrap().clone();
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("WARN") && l.contains("truncated a broken tail")),
                "{lines:?}"
            );
            let last = s.last_index().unwrap();
            assert_eq!(last, 49);
            assert_eq!(all(&s), written[..49].to_vec());
            assert_eq!(s.hard_state().commit, 48);
            assert!(fs::metadata(&file).unwrap().len() < before - 7);
            last
        };

        // A third of the file: still opens, with a prefix of what was written.
        let len = fs::metadata(&file).unwrap().len();
        chop(&file, len / 3);
        let mut s = open(dir.path(), &[1]);
        let last2 = s.last_index().unwrap();
        assert!(last2 >= 1 && last2 < last, "last {last2}");
        assert_eq!(all(&s), written[..last2 as usize].to_vec());
        assert_eq!(s.hard_state().commit, last2 - 1);
        check_terms(&s);
        // And it keeps working after the truncation.
        s.persist(&ents(last2 + 1..=last2 + 3, 2), Some(&hs(2, 1, last2)))
            .unwrap();
        drop(s);
        let s = open(dir.path(), &[1]);
        assert_eq!(s.last_index().unwrap(), last2 + 3);
        assert_eq!(s.term(last2 + 3).unwrap(), 2);
    }

    fn small_files() -> Tuning {
        Tuning {
            target_file_size: 4096,
            purge_threshold: 16 << 10,
        }
    }

    #[test]
    fn corruption_in_an_older_file_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RaftStorage::open_tuned(dir.path(), &[1], logger(), small_files()).unwrap();
            for i in 1..=40 {
                s.persist(&[ent(i, 1, 1000)], None).unwrap();
            }
        }
        let mut files: Vec<PathBuf> = fs::read_dir(dir.path().join(ENGINE_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".raftlog"))
            .collect();
        files.sort();
        assert!(files.len() >= 3, "{files:?}");
        let first = &files[0];
        let mut bytes = fs::read(first).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(first, &bytes).unwrap();

        let err = RaftStorage::open_tuned(dir.path(), &[1], logger(), small_files()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(
            matches!(
                err,
                StorageError::Corrupt { .. } | StorageError::Engine { .. }
            ),
            "{msg}"
        );
        // The lock was released by the failed open.
        drop(RaftStorage::open_tuned(dir.path(), &[1], logger(), small_files()).unwrap_err());
    }

    #[test]
    fn compaction_purges_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open_tuned(dir.path(), &[1], logger(), small_files()).unwrap();
        for i in 1..=200 {
            s.persist(&[ent(i, 1 + i / 50, 500)], Some(&hs(1 + i / 50, 1, i)))
                .unwrap();
        }
        let before = s.engine_used_bytes();
        s.set_snapshot(snap(190, s.term(190).unwrap(), vec![1], b""))
            .unwrap();
        s.compact(191).unwrap();
        let after = s.engine_used_bytes();
        assert!(after < before / 2, "before {before} after {after}");
        s.persist(&[ent(201, 5, 500)], Some(&hs(5, 1, 201)))
            .unwrap();
        let want: Vec<Entry> = (191..=201).map(|i| ent(i, 1 + i / 50, 500)).collect();
        assert_eq!(all(&s)[..10], want[..10]);
        drop(s);
        let s = RaftStorage::open_tuned(dir.path(), &[1], logger(), small_files()).unwrap();
        assert_eq!(s.first_index().unwrap(), 191);
        assert_eq!(s.last_index().unwrap(), 201);
        assert_eq!(s.term(190).unwrap(), 4);
        assert_eq!(s.hard_state().commit, 201);
        check_terms(&s);
    }

    /// The same random operations on MemStorage and on RaftStorage (with reopens) give the same
    /// answers; the one intended difference: after a compaction RaftStorage still knows
    /// `term(first_index - 1)`, where MemStorage says Compacted.
    #[test]
    fn randomized_against_mem_storage() {
        for seed in 0..6u64 {
            let dir = tempfile::tempdir().unwrap();
            randomized_run(seed, 250, &mut || open(dir.path(), &[1]));
        }
    }

    /// The same on the simulator's in-memory disk, whose every reopen follows a power loss:
    /// every write the storage makes is synced, so nothing may be lost.
    #[test]
    fn randomized_on_a_disk_that_loses_power() {
        for seed in 0..6u64 {
            let disk = crate::disk::memory::MemDisk::new("n1", seed);
            randomized_run(seed, 250, &mut || {
                disk.power_loss();
                disk.power_on();
                RaftStorage::on_engine(disk.log_engine(), Path::new("/sim/n1"), &[1], logger())
                    .unwrap()
            });
        }
    }

    fn randomized_run(seed: u64, steps: usize, reopen: &mut dyn FnMut() -> RaftStorage) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mem = MemStorage::new_with_conf_state(ConfState::from((vec![1u64], vec![])));
        let mut s = Some(reopen());
        let mut compacted_boundary: Option<(u64, u64)> = None;

        for step in 0..steps {
            let st = s.as_mut().unwrap();
            let first = st.first_index().unwrap();
            let last = st.last_index().unwrap();
            let commit = st.hard_state().commit;
            let top_term = st.term(last).unwrap();
            let what = format!("seed {seed} step {step}");
            match rng.gen_range(0..100) {
                0..=49 => {
                    let lo = first.max(commit + 1);
                    let start = rng.gen_range(lo..=last + 1);
                    let n = rng.gen_range(1..=4u64);
                    let term = top_term + rng.gen_range(0..=1);
                    let new: Vec<Entry> = (start..start + n)
                        .map(|i| ent(i, term, rng.gen_range(0..300)))
                        .collect();
                    let mut h = st.hard_state().clone();
                    h.term = h.term.max(term);
                    st.persist(&new, Some(&h)).unwrap();
                    mem.wl().append(&new).unwrap();
                    mem.wl().set_hardstate(h);
                }
                50..=64 if last >= first => {
                    st.set_commit(last).unwrap();
                    mem.wl().mut_hard_state().commit = last;
                    let t = st.term(last).unwrap();
                    st.set_snapshot(snap(last, t, vec![1], b"")).unwrap();
                    let up_to = rng.gen_range(first..=last);
                    if up_to > first {
                        let bt = mem.term(up_to - 1).unwrap();
                        st.compact(up_to).unwrap();
                        mem.wl().compact(up_to).unwrap();
                        compacted_boundary = Some((up_to - 1, bt));
                    }
                }
                65..=74 => {
                    let lo = first.max(commit).max(1);
                    let index = rng.gen_range(lo..=last + 3);
                    let term = top_term + rng.gen_range(0..=1);
                    let voters: Vec<u64> = (1..=5).filter(|_| rng.gen_bool(0.5)).collect();
                    let sn = snap(index, term, voters, b"");
                    st.apply_snapshot(&sn).unwrap();
                    mem.wl().apply_snapshot(sn).unwrap();
                    compacted_boundary = None;
                }
                75..=84 => {
                    drop(s.take());
                    s = Some(reopen());
                }
                85..=92 => {
                    let cs = ConfState {
                        voters: (1..=5).filter(|_| rng.gen_bool(0.5)).collect(),
                        learners: vec![rng.gen_range(6..9)],
                        ..Default::default()
                    };
                    st.set_conf_state(&cs, 0).unwrap();
                    mem.wl().set_conf_state(cs);
                }
                _ => {
                    let mut h = st.hard_state().clone();
                    h.term += 1;
                    h.vote = rng.gen_range(0..4);
                    st.persist(&[], Some(&h)).unwrap();
                    mem.wl().set_hardstate(h);
                }
            }
            let st = s.as_ref().unwrap();
            compare(st, &mem, compacted_boundary, &mut rng, &what);
        }
        check_terms(s.as_ref().unwrap());
    }

    fn compare(
        st: &RaftStorage,
        mem: &MemStorage,
        compacted_boundary: Option<(u64, u64)>,
        rng: &mut StdRng,
        what: &str,
    ) {
        let first = mem.first_index().unwrap();
        let last = mem.last_index().unwrap();
        assert_eq!(st.first_index().unwrap(), first, "first_index, {what}");
        assert_eq!(st.last_index().unwrap(), last, "last_index, {what}");
        let (a, b) = (st.initial_state().unwrap(), mem.initial_state().unwrap());
        assert_eq!(a.hard_state, b.hard_state, "hard state, {what}");
        assert_eq!(a.conf_state, b.conf_state, "conf state, {what}");
        for idx in first.saturating_sub(1)..=last + 2 {
            let (ours, theirs) = (st.term(idx), mem.term(idx));
            if idx + 1 == first && theirs == Err(store_err(raft::StorageError::Compacted)) {
                let (bi, bt) = compacted_boundary.expect("a compaction boundary");
                assert_eq!((idx, ours), (bi, Ok(bt)), "boundary term, {what}");
            } else {
                assert_eq!(ours, theirs, "term({idx}), {what}");
            }
        }
        if first >= 2 {
            assert_eq!(
                st.term(first - 2),
                Err(store_err(raft::StorageError::Compacted)),
                "{what}"
            );
        }
        if first > 1 {
            assert_eq!(
                st.entries(first - 1, last + 1, None, ctx()),
                Err(store_err(raft::StorageError::Compacted)),
                "{what}"
            );
        }
        if last >= first {
            for _ in 0..4 {
                let lo = rng.gen_range(first..=last);
                let hi = rng.gen_range(lo + 1..=last + 1);
                let max: Option<u64> = match rng.gen_range(0..3) {
                    0 => None,
                    1 => Some(0),
                    _ => Some(rng.gen_range(0..1500)),
                };
                assert_eq!(
                    st.entries(lo, hi, max, ctx()),
                    mem.entries(lo, hi, max, ctx()),
                    "entries({lo}, {hi}, {max:?}), {what}"
                );
            }
        }
    }

    /// raft's RawNode runs on this storage: a one-node cluster elects itself, commits proposals,
    /// and restarts with its state.
    #[test]
    fn raw_node_round_trip() {
        use raft::RawNode;

        fn drive(node: &mut RawNode<RaftStorage>, applied: &mut Vec<Vec<u8>>) {
            while node.has_ready() {
                let mut rd = node.ready();
                if !rd.snapshot().is_empty() {
                    let sn = rd.snapshot().clone();
                    node.mut_store().apply_snapshot(&sn).unwrap();
                }
                let committed = rd.take_committed_entries();
                applied.extend(
                    committed
                        .iter()
                        .filter(|e| !e.data.is_empty())
                        .map(|e| e.data.to_vec()),
                );
                let entries = rd.entries().clone();
                let hs = rd.hs().cloned();
                node.mut_store().persist(&entries, hs.as_ref()).unwrap();
                let mut light = node.advance(rd);
                if let Some(c) = light.commit_index() {
                    node.mut_store().set_commit(c).unwrap();
                }
                let committed = light.take_committed_entries();
                applied.extend(
                    committed
                        .iter()
                        .filter(|e| !e.data.is_empty())
                        .map(|e| e.data.to_vec()),
                );
                node.advance_apply();
            }
        }

        let dir = tempfile::tempdir().unwrap();
        let cfg = raft::Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 3,
            ..Default::default()
        };
        let mut applied = Vec::new();
        let commit = {
            let storage = open(dir.path(), &[1]);
            let mut node = RawNode::new(&cfg, storage, &logger()).unwrap();
            node.campaign().unwrap();
            drive(&mut node, &mut applied);
            for i in 0..5u8 {
                node.propose(vec![], vec![b'a' + i]).unwrap();
                drive(&mut node, &mut applied);
            }
            assert_eq!(
                applied,
                (0..5u8).map(|i| vec![b'a' + i]).collect::<Vec<_>>()
            );
            node.store().hard_state().commit
        };
        assert!(commit >= 6);
        let storage = open(dir.path(), &[1]);
        assert_eq!(storage.hard_state().commit, commit);
        assert_eq!(storage.last_index().unwrap(), commit);
        let cfg = raft::Config {
            applied: commit,
            ..cfg
        };
        let mut node = RawNode::new(&cfg, storage, &logger()).unwrap();
        node.campaign().unwrap();
        let mut applied = Vec::new();
        drive(&mut node, &mut applied);
        node.propose(vec![], b"after restart".to_vec()).unwrap();
        drive(&mut node, &mut applied);
        assert_eq!(applied, vec![b"after restart".to_vec()]);
    }
}
