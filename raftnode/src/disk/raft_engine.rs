//! The production log engine: a tikv raft-engine instance in `<data_dir>/raft`, holding one raft
//! group, with `<data_dir>/LOCK` locked for as long as it is open.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use fs2::FileExt;
use raft::eraftpb::Entry;
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode};
use slog::{Logger, warn};

use super::{EngineError, LogEngine, LogOp};
use crate::storage::{ENGINE_DIR, LOCK_FILE, StorageError};

/// The one raft group this node stores (raft-engine "region").
pub const REGION_ID: u64 = 1;

/// The raft-engine marker type for raft's `Entry`.
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Engine settings; tests shrink the files to exercise rotation and purging.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Log files rotate at this size.
    pub target_file_size: u64,
    /// Purging (dropping or rewriting old files) starts once the append queue is this big.
    pub purge_threshold: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            // Small files so that compaction frees disk space soon after a snapshot.
            target_file_size: 32 << 20,
            purge_threshold: 256 << 20,
        }
    }
}

/// raft-engine in a locked data dir.
pub struct RaftEngineLog {
    // Field order matters: the engine is dropped (and its files closed) before the lock is
    // released.
    engine: Engine,
    dir: PathBuf,
    _lock: File,
}

impl RaftEngineLog {
    /// Opens (creating it if needed) the engine in `<data_dir>/raft`, locking `<data_dir>/LOCK`
    /// first: a second open of the same dir, even in this process, fails with `Locked`. The
    /// engine recovers with `TolerateTailCorruption`: a torn batch at the end of the newest file
    /// is cut off, logged here with the bytes cut.
    pub fn open(data_dir: &Path, tuning: Tuning, logger: &Logger) -> Result<Self, StorageError> {
        ensure_dir(data_dir)?;
        let lock = lock(data_dir)?;
        let dir = data_dir.join(ENGINE_DIR);
        let dir_str = dir
            .to_str()
            .ok_or_else(|| StorageError::InvalidRequest {
                dir: data_dir.to_path_buf(),
                detail: "the data dir path is not valid UTF-8 (raft-engine needs a UTF-8 path)"
                    .into(),
            })?
            .to_owned();
        let before = log_file_sizes(&dir);
        let cfg = Config {
            dir: dir_str,
            recovery_mode: RecoveryMode::TolerateTailCorruption,
            target_file_size: ReadableSize(tuning.target_file_size),
            purge_threshold: ReadableSize(tuning.purge_threshold),
            ..Default::default()
        };
        let engine = Engine::open(cfg).map_err(|source| StorageError::Engine {
            dir: dir.clone(),
            op: "cannot open (recover) the log",
            source: source.into(),
        })?;
        let after = log_file_sizes(&dir);
        for (path, old) in &before {
            if let Some((_, new)) = after.iter().find(|(p, _)| p == path)
                && new < old
            {
                warn!(logger, "raft-engine truncated a broken tail of a log file on recovery";
                    "file" => %path.display(), "bytes_before" => old, "bytes_after" => new,
                    "bytes_cut" => old - new);
            }
        }
        Ok(RaftEngineLog {
            engine,
            dir,
            _lock: lock,
        })
    }
}

/// Creates the data dir if it does not exist; refuses a path that is not a directory.
fn ensure_dir(data_dir: &Path) -> Result<(), StorageError> {
    match fs::metadata(data_dir) {
        Ok(m) if !m.is_dir() => Err(StorageError::NotADirectory {
            path: data_dir.to_path_buf(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir).map_err(|source| StorageError::Io {
                op: "cannot create data dir",
                path: data_dir.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(StorageError::Io {
            op: "cannot access data dir",
            path: data_dir.to_path_buf(),
            source,
        }),
    }
}

/// Takes `<data_dir>/LOCK` exclusively (flock), for as long as the file stays open.
fn lock(data_dir: &Path) -> Result<File, StorageError> {
    let lock_path = data_dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| StorageError::Io {
            op: "cannot open lock file",
            path: lock_path.clone(),
            source,
        })?;
    if let Err(e) = lock.try_lock_exclusive() {
        let contended = e.kind() == io::ErrorKind::WouldBlock
            || e.raw_os_error() == fs2::lock_contended_error().raw_os_error();
        return Err(if contended {
            StorageError::Locked {
                dir: data_dir.to_path_buf(),
            }
        } else {
            StorageError::Io {
                op: "cannot lock",
                path: lock_path,
                source: e,
            }
        });
    }
    Ok(lock)
}

/// Sizes of raft-engine's log files, to notice the truncations it makes on open.
fn log_file_sizes(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_name()?.to_str()?;
            if name.ends_with(".raftlog") || name.ends_with(".rewrite") {
                Some((path.clone(), e.metadata().ok()?.len()))
            } else {
                None
            }
        })
        .collect()
}

impl LogEngine for RaftEngineLog {
    fn write(&mut self, ops: Vec<LogOp<'_>>, sync: bool) -> Result<(), EngineError> {
        let mut batch = LogBatch::default();
        for op in ops {
            match op {
                LogOp::Clean => batch.add_command(REGION_ID, Command::Clean),
                LogOp::Entries(entries) => batch.add_entries::<EntryExt>(REGION_ID, entries)?,
                LogOp::Put(key, value) => batch.put(REGION_ID, key.to_vec(), value)?,
                LogOp::Compact(index) => batch.add_command(REGION_ID, Command::Compact { index }),
            }
        }
        self.engine.write(&mut batch, sync)?;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.engine.get(REGION_ID, key))
    }

    fn first_index(&self) -> Option<u64> {
        self.engine.first_index(REGION_ID)
    }

    fn last_index(&self) -> Option<u64> {
        self.engine.last_index(REGION_ID)
    }

    fn fetch(
        &self,
        low: u64,
        high: u64,
        max_bytes: Option<usize>,
        out: &mut Vec<Entry>,
    ) -> Result<(), EngineError> {
        self.engine
            .fetch_entries_to::<EntryExt>(REGION_ID, low, high, max_bytes, out)?;
        Ok(())
    }

    fn entry(&self, index: u64) -> Result<Option<Entry>, EngineError> {
        Ok(self.engine.get_entry::<EntryExt>(REGION_ID, index)?)
    }

    fn used_bytes(&self) -> usize {
        self.engine.get_used_size()
    }

    fn purge(&mut self) -> Result<(), EngineError> {
        self.engine.purge_expired_files()?;
        Ok(())
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}
