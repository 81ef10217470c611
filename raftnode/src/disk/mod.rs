//! The node's disk, as two small traits: [`LogEngine`] (what the raft log storage writes its
//! batches to) and [`SnapshotDir`] (the directory snapshot files live in).
//!
//! | seam | production | simulation |
//! |---|---|---|
//! | [`LogEngine`] | [`RaftEngineLog`]: a tikv raft-engine instance in `<data_dir>/raft` | [`memory::MemDisk::log_engine`] |
//! | [`SnapshotDir`] | [`FsDir`]: `<data_dir>/snapshots` on the file system | [`memory::MemDisk::snapshot_dir`] |
//!
//! The raft log's bookkeeping ([`RaftStorage`](crate::storage::RaftStorage)) and the snapshot
//! files' format, atomic save and checked load ([`SnapshotStore`](crate::snapshot::SnapshotStore))
//! sit on top of these and are the same code in both worlds, so the simulator exercises them,
//! recovery included. The in-memory disk ([`memory`]) loses power as a real one does: what was
//! not synced is lost (or, for the log, a prefix of it survives), and a crash can be armed to
//! strike in the middle of the node's I/O.

use std::io::{self, Read, Write};
use std::path::Path;

use raft::eraftpb::Entry;

mod fs;
pub mod memory;
mod raft_engine;

pub use fs::FsDir;
pub use raft_engine::{RaftEngineLog, Tuning};

/// One operation of an atomic log write, applied in order.
#[derive(Debug)]
pub enum LogOp<'a> {
    /// Drops every entry and every key.
    Clean,
    /// Appends entries (consecutive); every stored entry from the first one's index on is
    /// replaced.
    Entries(&'a [Entry]),
    /// Sets a key.
    Put(&'static [u8], Vec<u8>),
    /// Drops every entry with an index below this one.
    Compact(u64),
}

/// Why the log engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// raft-engine failed.
    #[error(transparent)]
    RaftEngine(#[from] ::raft_engine::Error),
    /// An entry or value would not encode.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The (simulated) disk lost power: nothing more is written or read.
    #[error("the disk lost power")]
    PowerLost,
}

/// Where the raft log storage keeps its entries and keys: one raft group's worth.
pub trait LogEngine: Send {
    /// Applies `ops` atomically (all or nothing, also across a crash); durable when this
    /// returns if `sync`.
    fn write(&mut self, ops: Vec<LogOp<'_>>, sync: bool) -> Result<(), EngineError>;
    /// The value of `key`, if set.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
    /// The first stored entry's index, if any.
    fn first_index(&self) -> Option<u64>;
    /// The last stored entry's index, if any.
    fn last_index(&self) -> Option<u64>;
    /// Appends the entries `[low, high)` to `out`, at most `max_bytes` of them (at least one).
    fn fetch(
        &self,
        low: u64,
        high: u64,
        max_bytes: Option<usize>,
        out: &mut Vec<Entry>,
    ) -> Result<(), EngineError>;
    /// Entry `index`, if stored.
    fn entry(&self, index: u64) -> Result<Option<Entry>, EngineError>;
    /// Bytes of log the engine holds.
    fn used_bytes(&self) -> usize;
    /// Lets the engine reclaim space behind a compaction.
    fn purge(&mut self) -> Result<(), EngineError>;
    /// Where the engine lives, for messages.
    fn dir(&self) -> &Path;
}

/// A file being read, and its length.
pub type FileReader = (Box<dyn Read + Send>, u64);

/// A file being written (see [`SnapshotDir::create`]).
pub trait FileWriter: Write + Send {
    /// Flushes what is buffered and, if `sync`, makes the contents durable (the name only once
    /// the directory is synced). Dropping a writer without finishing it may lose what was written.
    fn finish(self: Box<Self>, sync: bool) -> io::Result<()>;
}

/// The directory snapshot files live in. Names are plain file names (no separators).
pub trait SnapshotDir: Send + Sync {
    /// The directory, for messages.
    fn path(&self) -> &Path;
    /// Every regular file and its size.
    fn list(&self) -> io::Result<Vec<(String, u64)>>;
    /// Opens a file for reading.
    fn open(&self, name: &str) -> io::Result<FileReader>;
    /// Creates (or truncates) a file and writes `parts`; its contents are durable when this
    /// returns if `sync` (its name only once the directory is synced).
    fn write(&self, name: &str, parts: &[&[u8]], sync: bool) -> io::Result<()>;
    /// Creates (or truncates) a file to be written piece by piece, through a bounded buffer.
    fn create(&self, name: &str) -> io::Result<Box<dyn FileWriter>>;
    /// Renames a file (replacing `to`).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes every rename, creation and removal so far durable.
    fn sync(&self) -> io::Result<()>;
    /// Whether a file exists.
    fn exists(&self, name: &str) -> bool;
}
