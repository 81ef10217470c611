//! An in-memory disk for the simulator: a log engine and a snapshot directory that lose power
//! the way a real disk does.
//!
//! # What a power loss keeps
//!
//! - **Log**: every write made with `sync` is durable, and so is everything written before it.
//!   Of the writes made since the last synced one, a random prefix survives (each write whole:
//!   raft-engine checksums every batch and cuts a torn tail on recovery).
//! - **Files**: a file written with `sync` has durable contents; one written without it keeps a
//!   random prefix of its bytes (a torn file). Creations, renames and removals are durable once
//!   the directory is synced; of those since, a random prefix survives, in order.
//!
//! # When power is lost
//!
//! [`MemDisk::power_loss`] cuts it now (the simulator's crash of a node's machine). A crash can
//! also be armed ([`MemDisk::crash_at_write`]) to strike at the n-th mutating operation from now,
//! in the middle of whatever the node was doing: the operation takes effect or not (a coin from
//! the seed), the power goes, and that operation and every later one fail with
//! [`EngineError::PowerLost`] or an I/O error. [`MemDisk::is_dead`] tells the simulator the node
//! must be treated as crashed; [`MemDisk::power_on`] brings the disk back for the next start.
//!
//! Everything random comes from the seed the disk was made with.

use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use raft::eraftpb::Entry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{EngineError, FileReader, FileWriter, LogEngine, LogOp, SnapshotDir};

/// One node's disk: its log and its snapshot directory, which lose power together.
#[derive(Clone)]
pub struct MemDisk {
    inner: Arc<Mutex<Disk>>,
    log_dir: PathBuf,
    snapshot_dir: PathBuf,
}

struct Disk {
    log: Log,
    files: Files,
    powered: bool,
    /// Mutating operations left before an armed crash strikes (0: the next one).
    crash_in: Option<u64>,
    /// Mutating operations so far.
    writes: u64,
    rng: StdRng,
}

impl MemDisk {
    /// An empty disk named `name` (for messages), whose power losses draw from `seed`.
    pub fn new(name: &str, seed: u64) -> MemDisk {
        let root = PathBuf::from(format!("/sim/{name}"));
        MemDisk {
            inner: Arc::new(Mutex::new(Disk {
                log: Log::default(),
                files: Files::default(),
                powered: true,
                crash_in: None,
                writes: 0,
                rng: StdRng::seed_from_u64(seed),
            })),
            log_dir: root.join(crate::storage::ENGINE_DIR),
            snapshot_dir: root.join(crate::snapshot::SNAPSHOT_DIR),
        }
    }

    /// The log engine on this disk (one at a time, as the data dir's lock would ensure).
    pub fn log_engine(&self) -> Box<dyn LogEngine> {
        Box::new(MemLog { disk: self.clone() })
    }

    /// The snapshot directory on this disk.
    pub fn snapshot_dir(&self) -> Box<dyn SnapshotDir> {
        Box::new(MemDir { disk: self.clone() })
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the power now: what was not synced is lost (see the [module docs](self)).
    pub fn power_loss(&self) {
        self.lock().lose_power();
    }

    /// Arms a crash at the `n`-th mutating operation from now (0: the next one).
    pub fn crash_at_write(&self, n: u64) {
        self.lock().crash_in = Some(n);
    }

    /// Whether the power is off (the node using the disk must be treated as crashed).
    pub fn is_dead(&self) -> bool {
        !self.lock().powered
    }

    /// Brings the power back (after a loss) for the node's next start; disarms any crash.
    pub fn power_on(&self) {
        let mut disk = self.lock();
        disk.powered = true;
        disk.crash_in = None;
    }

    /// Mutating operations this disk has seen.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }
}

impl Disk {
    fn lose_power(&mut self) {
        if !self.powered {
            return;
        }
        self.powered = false;
        let keep = self.rng.gen_range(0..=self.log.pending.len());
        self.log.lose(keep);
        let keep = self.rng.gen_range(0..=self.files.unsynced.len());
        self.files.lose(keep, &mut self.rng);
    }

    /// Checks the power before an operation.
    fn powered(&self) -> Result<(), EngineError> {
        if self.powered {
            Ok(())
        } else {
            Err(EngineError::PowerLost)
        }
    }

    /// Before a mutating operation: `Ok(true)` when it goes ahead, `Ok(false)` when the armed
    /// crash strikes it but it takes effect first (the caller applies it, then calls
    /// [`Disk::lose_power`]), `Err` when the power is (now) off.
    fn begin_write(&mut self) -> Result<bool, EngineError> {
        self.powered()?;
        self.writes += 1;
        match self.crash_in {
            Some(0) => {
                self.crash_in = None;
                if self.rng.gen_bool(0.5) {
                    Ok(false)
                } else {
                    self.lose_power();
                    Err(EngineError::PowerLost)
                }
            }
            Some(n) => {
                self.crash_in = Some(n - 1);
                Ok(true)
            }
            None => Ok(true),
        }
    }
}

fn power_lost() -> io::Error {
    io::Error::other("the disk lost power")
}

// ---------------------------------------------------------------------------------------------
// The log.

#[derive(Clone, Debug, Default)]
struct LogState {
    entries: BTreeMap<u64, Entry>,
    keys: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug)]
enum OwnedOp {
    Clean,
    Entries(Vec<Entry>),
    Put(Vec<u8>, Vec<u8>),
    Compact(u64),
}

impl LogState {
    fn apply(&mut self, op: &OwnedOp) {
        match op {
            OwnedOp::Clean => {
                self.entries.clear();
                self.keys.clear();
            }
            OwnedOp::Entries(entries) => {
                if let Some(first) = entries.first() {
                    self.entries.split_off(&first.index);
                }
                for e in entries {
                    self.entries.insert(e.index, e.clone());
                }
            }
            OwnedOp::Put(key, value) => {
                self.keys.insert(key.clone(), value.clone());
            }
            OwnedOp::Compact(index) => {
                self.entries = self.entries.split_off(index);
            }
        }
    }
}

#[derive(Default)]
struct Log {
    /// What survives a power loss for certain.
    durable: LogState,
    /// Writes since the last synced one, oldest first.
    pending: Vec<Vec<OwnedOp>>,
    /// What reads see.
    current: LogState,
}

impl Log {
    fn write(&mut self, ops: Vec<OwnedOp>, sync: bool) {
        for op in &ops {
            self.current.apply(op);
        }
        self.pending.push(ops);
        if sync {
            for ops in std::mem::take(&mut self.pending) {
                for op in &ops {
                    self.durable.apply(op);
                }
            }
        }
    }

    /// A power loss: the first `keep` unsynced writes survive.
    fn lose(&mut self, keep: usize) {
        for ops in self.pending.drain(..).take(keep) {
            for op in &ops {
                self.durable.apply(op);
            }
        }
        self.current = self.durable.clone();
    }
}

/// The log engine on a [`MemDisk`].
struct MemLog {
    disk: MemDisk,
}

impl LogEngine for MemLog {
    fn write(&mut self, ops: Vec<LogOp<'_>>, sync: bool) -> Result<(), EngineError> {
        let owned: Vec<OwnedOp> = ops
            .into_iter()
            .map(|op| match op {
                LogOp::Clean => OwnedOp::Clean,
                LogOp::Entries(entries) => OwnedOp::Entries(entries.to_vec()),
                LogOp::Put(key, value) => OwnedOp::Put(key.to_vec(), value),
                LogOp::Compact(index) => OwnedOp::Compact(index),
            })
            .collect();
        let mut disk = self.disk.lock();
        let proceed = disk.begin_write()?;
        disk.log.write(owned, sync);
        if !proceed {
            disk.lose_power();
            return Err(EngineError::PowerLost);
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let disk = self.disk.lock();
        disk.powered()?;
        Ok(disk.log.current.keys.get(key).cloned())
    }

    fn first_index(&self) -> Option<u64> {
        let disk = self.disk.lock();
        disk.log.current.entries.keys().next().copied()
    }

    fn last_index(&self) -> Option<u64> {
        let disk = self.disk.lock();
        disk.log.current.entries.keys().next_back().copied()
    }

    fn fetch(
        &self,
        low: u64,
        high: u64,
        _max_bytes: Option<usize>,
        out: &mut Vec<Entry>,
    ) -> Result<(), EngineError> {
        let disk = self.disk.lock();
        disk.powered()?;
        // Every entry asked for: the storage trims to its size limit itself.
        out.extend(
            disk.log
                .current
                .entries
                .range(low..high)
                .map(|(_, e)| e.clone()),
        );
        Ok(())
    }

    fn entry(&self, index: u64) -> Result<Option<Entry>, EngineError> {
        let disk = self.disk.lock();
        disk.powered()?;
        Ok(disk.log.current.entries.get(&index).cloned())
    }

    fn used_bytes(&self) -> usize {
        let disk = self.disk.lock();
        disk.log
            .current
            .entries
            .values()
            .map(|e| e.data.len() + e.context.len() + 24)
            .sum()
    }

    fn purge(&mut self) -> Result<(), EngineError> {
        self.disk.lock().powered()
    }

    fn dir(&self) -> &Path {
        &self.disk.log_dir
    }
}

// ---------------------------------------------------------------------------------------------
// The snapshot directory.

/// A change to the directory's names.
#[derive(Clone, Debug)]
enum NameOp {
    Link(String, u64),
    Rename(String, String),
    Remove(String),
}

#[derive(Clone, Debug)]
struct Contents {
    bytes: Bytes,
    synced: bool,
}

#[derive(Default)]
struct Files {
    /// File contents by id.
    contents: BTreeMap<u64, Contents>,
    /// Names as reads see them.
    current: BTreeMap<String, u64>,
    /// Names as of the last directory sync.
    durable: BTreeMap<String, u64>,
    /// Name changes since the last directory sync, oldest first.
    unsynced: Vec<NameOp>,
    next_id: u64,
}

impl Files {
    fn apply(names: &mut BTreeMap<String, u64>, op: &NameOp) {
        match op {
            NameOp::Link(name, id) => {
                names.insert(name.clone(), *id);
            }
            NameOp::Rename(from, to) => {
                if let Some(id) = names.remove(from) {
                    names.insert(to.clone(), id);
                }
            }
            NameOp::Remove(name) => {
                names.remove(name);
            }
        }
    }

    fn change(&mut self, op: NameOp) {
        Self::apply(&mut self.current, &op);
        self.unsynced.push(op);
    }

    fn sync(&mut self) {
        self.durable = self.current.clone();
        self.unsynced.clear();
    }

    /// A power loss: the first `keep` name changes survive; unsynced contents are torn.
    fn lose(&mut self, keep: usize, rng: &mut StdRng) {
        for op in self.unsynced.drain(..).take(keep) {
            Self::apply(&mut self.durable, &op);
        }
        self.current = self.durable.clone();
        let live: std::collections::BTreeSet<u64> = self.current.values().copied().collect();
        self.contents.retain(|id, _| live.contains(id));
        for contents in self.contents.values_mut() {
            if !contents.synced {
                let keep = rng.gen_range(0..=contents.bytes.len());
                contents.bytes.truncate(keep);
                contents.synced = true;
            }
        }
    }
}

/// A file being written on a [`MemDisk`]: its bytes reach the disk when it is finished (a
/// crash before that leaves no file, as a torn file the store refuses would).
struct MemWriter {
    dir: MemDir,
    name: String,
    bytes: Vec<u8>,
}

impl io::Write for MemWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileWriter for MemWriter {
    fn finish(self: Box<Self>, sync: bool) -> io::Result<()> {
        self.dir.write(&self.name, &[&self.bytes], sync)
    }
}

/// The snapshot directory on a [`MemDisk`].
#[derive(Clone)]
struct MemDir {
    disk: MemDisk,
}

impl MemDir {
    /// Runs a mutating operation under the power rules.
    fn mutate(&self, op: impl FnOnce(&mut Files) -> io::Result<()>) -> io::Result<()> {
        let mut disk = self.disk.lock();
        let proceed = disk.begin_write().map_err(|_| power_lost())?;
        let result = op(&mut disk.files);
        if !proceed {
            disk.lose_power();
            return Err(power_lost());
        }
        result
    }

    fn read<T>(&self, op: impl FnOnce(&Files) -> io::Result<T>) -> io::Result<T> {
        let disk = self.disk.lock();
        disk.powered().map_err(|_| power_lost())?;
        op(&disk.files)
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

impl SnapshotDir for MemDir {
    fn path(&self) -> &Path {
        &self.disk.snapshot_dir
    }

    fn list(&self) -> io::Result<Vec<(String, u64)>> {
        self.read(|files| {
            Ok(files
                .current
                .iter()
                .map(|(name, id)| {
                    let len = files.contents.get(id).map_or(0, |c| c.bytes.len());
                    (name.clone(), len as u64)
                })
                .collect())
        })
    }

    fn open(&self, name: &str) -> io::Result<FileReader> {
        self.read(|files| {
            let id = files.current.get(name).ok_or_else(|| not_found(name))?;
            let bytes = files
                .contents
                .get(id)
                .map(|c| c.bytes.clone())
                .unwrap_or_default();
            let len = bytes.len() as u64;
            let reader: Box<dyn io::Read + Send> = Box::new(Cursor::new(bytes));
            Ok((reader, len))
        })
    }

    fn write(&self, name: &str, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        let bytes = Bytes::from(parts.concat());
        self.mutate(|files| {
            files.next_id += 1;
            let id = files.next_id;
            files.contents.insert(
                id,
                Contents {
                    bytes,
                    synced: sync,
                },
            );
            files.change(NameOp::Link(name.to_string(), id));
            Ok(())
        })
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn FileWriter>> {
        self.read(|_| Ok(()))?;
        Ok(Box::new(MemWriter {
            dir: self.clone(),
            name: name.to_string(),
            bytes: Vec::new(),
        }))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.mutate(|files| {
            if !files.current.contains_key(from) {
                return Err(not_found(from));
            }
            files.change(NameOp::Rename(from.to_string(), to.to_string()));
            Ok(())
        })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.mutate(|files| {
            if !files.current.contains_key(name) {
                return Err(not_found(name));
            }
            files.change(NameOp::Remove(name.to_string()));
            Ok(())
        })
    }

    fn sync(&self) -> io::Result<()> {
        self.mutate(|files| {
            files.sync();
            Ok(())
        })
    }

    fn exists(&self, name: &str) -> bool {
        self.read(|files| Ok(files.current.contains_key(name)))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn indexes(log: &dyn LogEngine) -> Vec<u64> {
        let mut out = Vec::new();
        if let (Some(lo), Some(hi)) = (log.first_index(), log.last_index()) {
            log.fetch(lo, hi + 1, None, &mut out).unwrap();
        }
        out.iter().map(|e| e.index).collect()
    }

    #[test]
    fn synced_log_writes_survive_and_unsynced_ones_leave_a_prefix() {
        for seed in 0..20 {
            let disk = MemDisk::new("n1", seed);
            let mut log = disk.log_engine();
            log.write(vec![LogOp::Entries(&[entry(1, 1), entry(2, 1)])], true)
                .unwrap();
            for i in 3..8 {
                log.write(vec![LogOp::Entries(&[entry(i, 1)])], false)
                    .unwrap();
            }
            disk.power_loss();
            assert!(disk.is_dead());
            assert!(log.get(b"k").is_err(), "no reads without power");
            disk.power_on();
            let kept = indexes(log.as_ref());
            assert!(kept.len() >= 2, "{kept:?}");
            assert_eq!(kept, (1..=kept.len() as u64).collect::<Vec<_>>());
        }
    }

    #[test]
    fn an_overwrite_and_a_compaction_replay_in_order() {
        let disk = MemDisk::new("n1", 1);
        let mut log = disk.log_engine();
        log.write(
            vec![LogOp::Entries(&[entry(1, 1), entry(2, 1), entry(3, 1)])],
            true,
        )
        .unwrap();
        log.write(vec![LogOp::Entries(&[entry(2, 2)])], true)
            .unwrap();
        log.write(
            vec![LogOp::Compact(2), LogOp::Put(b"k", b"v".to_vec())],
            true,
        )
        .unwrap();
        disk.power_loss();
        disk.power_on();
        assert_eq!(indexes(log.as_ref()), vec![2]);
        assert_eq!(log.entry(2).unwrap().unwrap().term, 2);
        assert_eq!(log.get(b"k").unwrap(), Some(b"v".to_vec()));
        log.write(vec![LogOp::Clean], true).unwrap();
        assert_eq!(log.first_index(), None);
        assert_eq!(log.get(b"k").unwrap(), None);
    }

    #[test]
    fn an_armed_crash_strikes_the_nth_write_and_everything_after() {
        let disk = MemDisk::new("n1", 3);
        let mut log = disk.log_engine();
        disk.crash_at_write(2);
        log.write(vec![LogOp::Put(b"a", vec![1])], true).unwrap();
        log.write(vec![LogOp::Put(b"b", vec![2])], true).unwrap();
        assert!(matches!(
            log.write(vec![LogOp::Put(b"c", vec![3])], true),
            Err(EngineError::PowerLost)
        ));
        assert!(disk.is_dead());
        assert!(log.write(vec![LogOp::Put(b"d", vec![4])], true).is_err());
        disk.power_on();
        assert_eq!(log.get(b"b").unwrap(), Some(vec![2]));
        assert_eq!(log.get(b"d").unwrap(), None);
    }

    #[test]
    fn files_need_a_synced_write_and_a_synced_directory() {
        let mut torn = 0;
        let mut renamed = 0;
        for seed in 0..40 {
            let disk = MemDisk::new("n1", seed);
            let dir = disk.snapshot_dir();
            dir.write("a.tmp", &[b"hello ", b"world"], true).unwrap();
            dir.rename("a.tmp", "a").unwrap();
            dir.sync().unwrap();
            dir.write("b", &[b"unsynced bytes"], false).unwrap();
            dir.sync().unwrap();
            dir.write("c.tmp", &[b"synced"], true).unwrap();
            dir.rename("c.tmp", "c").unwrap();
            disk.power_loss();
            disk.power_on();
            let mut a = String::new();
            dir.open("a").unwrap().0.read_to_string(&mut a).unwrap();
            assert_eq!(a, "hello world");
            let (_, b_len) = dir.open("b").unwrap();
            torn += usize::from(b_len < 14);
            // The rename of c is durable only if it survived; never both names, never neither
            // once the creation survived.
            let names: Vec<String> = dir.list().unwrap().into_iter().map(|(n, _)| n).collect();
            assert!(!(names.contains(&"c".into()) && names.contains(&"c.tmp".into())));
            renamed += usize::from(names.contains(&"c".into()));
        }
        assert!(torn > 0, "an unsynced file is sometimes torn");
        assert!(
            renamed > 0 && renamed < 40,
            "an unsynced rename sometimes survives"
        );
    }

    use std::io::Read as _;
}
