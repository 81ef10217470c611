//! Opening the log storage: reading what the engine holds back into a [`RaftStorage`], checking
//! that it is consistent, and initialising a fresh one.

use std::path::{Path, PathBuf};

use raft::RaftState;
use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};
use slog::{Logger, error, info, o};

use super::terms::TermRuns;
use super::{
    KEY_CONF_INDEX, KEY_CONF_STATE, KEY_HARD_STATE, KEY_LOG_BOUNDARY, KEY_SNAPSHOT_META,
    RaftStorage, StorageError, voters_set,
};
use crate::disk::{LogEngine, LogOp, RaftEngineLog, Tuning};

/// Entries read per call while scanning the log on open.
const SCAN_CHUNK: u64 = 1024;

/// The keys the storage keeps, as read on open.
struct Stored {
    hard_state: Option<HardState>,
    conf_state: Option<ConfState>,
    boundary: Option<SnapshotMetadata>,
    snapshot_meta: Option<SnapshotMetadata>,
    conf_index: Option<SnapshotMetadata>,
}

impl RaftStorage {
    /// Opens (creating if needed) the storage in `data_dir` on raft-engine, locking
    /// `<data_dir>/LOCK`.
    ///
    /// A fresh dir is initialised with a default `HardState` and, if `initial_voters` is not empty,
    /// `ConfState { voters: initial_voters }` (an empty list is a node that joins later and waits
    /// for a snapshot). An existing dir keeps its stored state; a disagreeing `initial_voters` is
    /// only logged.
    pub fn open(
        data_dir: &Path,
        initial_voters: &[u64],
        logger: Logger,
    ) -> Result<RaftStorage, StorageError> {
        Self::open_tuned(data_dir, initial_voters, logger, Tuning::default())
    }

    pub(super) fn open_tuned(
        data_dir: &Path,
        initial_voters: &[u64],
        logger: Logger,
        tuning: Tuning,
    ) -> Result<RaftStorage, StorageError> {
        let logger = logger.new(o!("dir" => data_dir.display().to_string()));
        let engine = RaftEngineLog::open(data_dir, tuning, &logger).inspect_err(|e| {
            error!(logger, "cannot open raft storage"; "error" => %e);
        })?;
        Self::on_engine(Box::new(engine), data_dir, initial_voters, logger)
    }

    /// The storage kept in `engine` (raft-engine, or a simulated disk), named `data_dir` in
    /// messages; initialised as [`open`](Self::open) describes.
    pub fn on_engine(
        mut engine: Box<dyn LogEngine>,
        data_dir: &Path,
        initial_voters: &[u64],
        logger: Logger,
    ) -> Result<RaftStorage, StorageError> {
        let data_dir = data_dir.to_path_buf();
        let opened = (|| {
            let stored = read_stored(engine.as_ref(), &data_dir)?;
            let engine_last = engine.last_index();
            let fresh = stored.hard_state.is_none();
            let state = match stored.hard_state.clone() {
                Some(hs) => stored_state(hs, stored.conf_state.clone(), initial_voters, &logger),
                None => {
                    if engine_last.is_some()
                        || stored.boundary.is_some()
                        || stored.snapshot_meta.is_some()
                    {
                        return Err(corrupt(
                            &data_dir,
                            "the log holds entries or snapshot metadata but no hard state".into(),
                        ));
                    }
                    init_fresh(engine.as_mut(), initial_voters)?
                }
            };
            let boundary = stored.boundary.clone().unwrap_or_default();
            let last = check_bounds(engine.as_ref(), &data_dir, &boundary, &state.hard_state)?;
            let terms = scan_terms(engine.as_ref(), &data_dir, boundary.index, last)?;
            Ok((stored, state, boundary, terms, fresh))
        })();
        let (stored, state, boundary, terms, fresh) = opened.inspect_err(|e| {
            error!(logger, "cannot open raft storage"; "error" => %e);
        })?;
        let storage = RaftStorage {
            engine,
            data_dir,
            state,
            boundary,
            snapshot_meta: stored.snapshot_meta.unwrap_or_default(),
            snapshot: None,
            conf_index: stored.conf_index.map_or(0, |m| m.index),
            snapshot_wanted: std::cell::Cell::new(false),
            terms,
            logger,
        };
        storage.log_opened(fresh);
        Ok(storage)
    }

    fn log_opened(&self, fresh: bool) {
        let hs = &self.state.hard_state;
        let cs = &self.state.conf_state;
        info!(self.logger, "raft storage open";
            "fresh" => fresh,
            "first_index" => self.first(), "last_index" => self.last(),
            "term" => hs.term, "vote" => hs.vote, "commit" => hs.commit,
            "voters" => ?cs.voters, "learners" => ?cs.learners,
            "voters_outgoing" => ?cs.voters_outgoing, "learners_next" => ?cs.learners_next,
            "snapshot_index" => self.snapshot_meta.index,
            "snapshot_term" => self.snapshot_meta.term,
            "engine_bytes" => self.engine_used_bytes());
    }
}

fn corrupt(data_dir: &Path, detail: String) -> StorageError {
    StorageError::Corrupt {
        path: data_dir.to_path_buf(),
        detail,
    }
}

/// Reads a protobuf message stored under `key`; `None` if absent.
fn load<M: protobuf::Message>(
    engine: &dyn LogEngine,
    data_dir: &Path,
    key: &'static [u8],
) -> Result<Option<M>, StorageError> {
    let bytes = engine.get(key).map_err(|source| StorageError::Engine {
        dir: engine.dir().to_path_buf(),
        op: "cannot read a key",
        source,
    })?;
    match bytes {
        None => Ok(None),
        Some(bytes) => M::parse_from_bytes(&bytes).map(Some).map_err(|e| {
            corrupt(
                data_dir,
                format!(
                    "stored {} does not decode: {e}",
                    String::from_utf8_lossy(key)
                ),
            )
        }),
    }
}

fn read_stored(engine: &dyn LogEngine, data_dir: &Path) -> Result<Stored, StorageError> {
    Ok(Stored {
        hard_state: load(engine, data_dir, KEY_HARD_STATE)?,
        conf_state: load(engine, data_dir, KEY_CONF_STATE)?,
        boundary: load(engine, data_dir, KEY_LOG_BOUNDARY)?,
        snapshot_meta: load(engine, data_dir, KEY_SNAPSHOT_META)?,
        conf_index: load(engine, data_dir, KEY_CONF_INDEX)?,
    })
}

/// The state of a storage that has one: the stored membership wins over `initial_voters`.
fn stored_state(
    hs: HardState,
    cs: Option<ConfState>,
    initial_voters: &[u64],
    logger: &Logger,
) -> RaftState {
    let cs = cs.unwrap_or_default();
    if !initial_voters.is_empty() {
        let mut wanted = initial_voters.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted != voters_set(&cs) {
            info!(logger, "stored membership differs from the configured initial voters; using the stored one";
                "stored_voters" => ?cs.voters, "stored_learners" => ?cs.learners,
                "initial_voters" => ?initial_voters);
        }
    }
    RaftState::new(hs, cs)
}

/// Writes the initial state of a fresh storage: a default hard state and the initial voters.
fn init_fresh(
    engine: &mut dyn LogEngine,
    initial_voters: &[u64],
) -> Result<RaftState, StorageError> {
    let hs = HardState::default();
    let cs = ConfState {
        voters: initial_voters.to_vec(),
        ..Default::default()
    };
    let dir: PathBuf = engine.dir().to_path_buf();
    let encode = |m: &dyn protobuf::Message| {
        m.write_to_bytes().map_err(|e| StorageError::Engine {
            dir: dir.clone(),
            op: "cannot encode the initial state",
            source: crate::disk::EngineError::Encode(e.to_string()),
        })
    };
    let mut ops = vec![LogOp::Put(KEY_HARD_STATE, encode(&hs)?)];
    if !initial_voters.is_empty() {
        ops.push(LogOp::Put(KEY_CONF_STATE, encode(&cs)?));
    }
    engine
        .write(ops, true)
        .map_err(|source| StorageError::Engine {
            dir: dir.clone(),
            op: "cannot write the initial state",
            source,
        })?;
    let cs = if initial_voters.is_empty() {
        ConfState::default()
    } else {
        cs
    };
    Ok(RaftState::new(hs, cs))
}

/// Checks that the stored log starts right after the boundary and that the commit index lies
/// within it; returns the last index.
fn check_bounds(
    engine: &dyn LogEngine,
    data_dir: &Path,
    boundary: &SnapshotMetadata,
    hs: &HardState,
) -> Result<u64, StorageError> {
    let last = match (engine.first_index(), engine.last_index()) {
        (Some(first), Some(last)) => {
            if first != boundary.index + 1 {
                return Err(corrupt(
                    data_dir,
                    format!(
                        "the log starts at index {first} but the stored boundary is index {} \
                         (expected the log to start at {})",
                        boundary.index,
                        boundary.index + 1
                    ),
                ));
            }
            last
        }
        _ => boundary.index,
    };
    if hs.commit > last {
        return Err(corrupt(
            data_dir,
            format!(
                "the hard state's commit index {} is past the last log index {last}",
                hs.commit
            ),
        ));
    }
    if hs.commit < boundary.index {
        return Err(corrupt(
            data_dir,
            format!(
                "the hard state's commit index {} is before the log boundary {}",
                hs.commit, boundary.index
            ),
        ));
    }
    Ok(last)
}

/// Reads every entry after `boundary` up to `last` once: checks the indexes (and, on
/// raft-engine, the entry blocks' checksums), and builds the term index.
fn scan_terms(
    engine: &dyn LogEngine,
    data_dir: &Path,
    boundary: u64,
    last: u64,
) -> Result<TermRuns, StorageError> {
    let mut terms = TermRuns::default();
    let mut next = boundary + 1;
    let mut buf = Vec::new();
    while next <= last {
        let end = (next + SCAN_CHUNK).min(last + 1);
        buf.clear();
        engine.fetch(next, end, None, &mut buf).map_err(|e| {
            corrupt(
                data_dir,
                format!("cannot read log entries [{next}, {end}): {e}"),
            )
        })?;
        for (i, e) in buf.iter().enumerate() {
            let want = next + i as u64;
            if e.index != want {
                return Err(corrupt(
                    data_dir,
                    format!("log entry at position {want} says index {}", e.index),
                ));
            }
            terms.push(e.index, e.term);
        }
        if buf.len() as u64 != end - next {
            return Err(corrupt(
                data_dir,
                format!(
                    "log entries [{next}, {end}) came back as {} entries",
                    buf.len()
                ),
            ));
        }
        next = end;
    }
    Ok(terms)
}
