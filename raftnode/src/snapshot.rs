//! Snapshot files: the machine state at a log index, written atomically and checked on load.
//!
//! # On disk
//!
//! ```text
//! <data_dir>/snapshots/
//!   snap-<index:020>-<term:020>.snap           a complete snapshot (at most `keep` of them, default 2)
//!   snap-<index:020>-<term:020>.snap.tmp       a save in progress (removed on open: a crash left it)
//!   snap-<index:020>-<term:020>.snap.corrupt   a file refused on load, kept for inspection only
//! ```
//!
//! # Format
//!
//! All integers little-endian. Version 2 (what this build writes) stores the state in frames of
//! at most [`MAX_FRAME`] bytes, so that it is written, read, checked and sent with a bounded
//! buffer however large it is:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `RNSNAP01` |
//! | 4 | format version (`u32`, [`FORMAT_VERSION`] = 2) |
//! | 8 | index (`u64`): the last log index the snapshot covers |
//! | 8 | term (`u64`) of that entry |
//! | 4 | conf state length `c` (`u32`) |
//! | `c` | the `raft::eraftpb::ConfState` in raft's protobuf encoding |
//! | ... | frames, each: 4 length `n` (1..=[`MAX_FRAME`]), 4 CRC-32 of the `n` bytes, the `n` bytes |
//! | 4 | 0: the end of the frames |
//! | 8 | data length `d` (`u64`): the frames' bytes together |
//! | 4 | CRC-32 (`crc32fast`, IEEE) of every byte before it: the whole file's checksum |
//!
//! The frames' bytes together are the opaque machine state
//! ([`MachineView::encode_to`](crate::machine::MachineView::encode_to)). A file's
//! [`Descriptor`] (index, term, size, whole checksum) is what raft carries in a snapshot
//! message; the file itself is streamed in chunks (`crate::snapshot_stream`).
//!
//! Version 1 files (the whole state in one piece: data length, data, CRC-32 of everything before
//! it) are still read.
//!
//! The file name repeats the index and term, so the newest snapshot is found without opening
//! anything; a file whose name disagrees with its header is refused.
//!
//! # Atomic write
//!
//! [`SnapshotStore::save`] writes `<name>.tmp`, fsyncs it, renames it to `<name>` and fsyncs the
//! directory. A crash at any point leaves either no `<name>` at all (the `.tmp` is removed on the
//! next [`open`](SnapshotStore::open)) or the complete, durable file: a reader never sees a
//! half-written `<name>`. Saving a snapshot older than the newest one on disk is refused.
//!
//! # Corruption
//!
//! Loading checks everything before trusting anything: the magic and version, every length
//! against the actual file size (so a torn file is recognised, and nothing is ever allocated from
//! an unchecked length), the exact file size, each frame's CRC before its bytes are handed on, the
//! whole file's CRC, that the name agrees with the header, that the conf state decodes, and that
//! the state decodes (the state is decoded as it is read, and a decoded state is used only once
//! the whole file has passed). [`SnapshotStore::load_newest`] tries the files newest first; a
//! file that fails is *refused*: an error is logged naming the file and what is wrong, it is
//! renamed to `<name>.corrupt` (never tried again, but kept for inspection), and the next older
//! file is tried. If no file is valid it returns `None`, and the node starts from its log alone;
//! when the leader finds the entries it needs compacted away, raft sends it a fresh snapshot.
//!
//! An I/O error that is not evidence of a bad file (permission denied, EIO, ...) is returned as
//! an error instead: the file is left alone and the node does not start on a silently older state.
//!
//! # Why two are kept
//!
//! The newest `keep` (default 2) valid snapshots are kept and older ones deleted after each save.
//! The log must be compacted only up to the *older* kept snapshot (the first entry of
//! [`SnapshotStore::list`], read after the save returns), never up to the newest: if the newest
//! file then turns out to be corrupt, the node falls back to the older one and still finds every
//! entry after it in the log, so nothing committed is lost and no leader snapshot is needed.
//!
//! Pruning counts only valid files: a kept file not already verified by this store (written by it
//! or loaded through it) is checked before it is counted, and refused like above if it is bad.
//!
//! # Blocking
//!
//! Every method does blocking file I/O (a save writes and fsyncs the whole state): call it from a
//! blocking thread (`tokio::task::spawn_blocking`), not from an async task. Saves are serialised
//! by an internal lock; loads may run alongside them.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Snapshot, SnapshotMetadata};
use slog::{Logger, debug, error, info, warn};

use crate::disk::{FileWriter, FsDir, SnapshotDir};

/// The snapshot directory inside the data dir.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// The first 8 bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"RNSNAP01";

/// The file format version this build writes.
pub const FORMAT_VERSION: u32 = 2;

/// The first format version (the state in one piece), still read.
pub const LEGACY_VERSION: u32 = 1;

/// The most state bytes in one frame of a version 2 file.
pub const MAX_FRAME: usize = 1 << 20;

/// A snapshot being received is written to `<name>.<crc:08x>.<reception>.part`, and renamed
/// `<name>.<crc:08x>.ok` once checked (both removed on open).
const PART_SUFFIX: &str = ".part";
/// A received snapshot file that passed its check, waiting to be installed.
const OK_SUFFIX: &str = ".ok";

/// How many valid snapshots [`SnapshotStore`] keeps by default.
pub const DEFAULT_KEEP: usize = 2;

/// magic + version + index + term + conf state length.
const PREFIX_LEN: u64 = 8 + 4 + 8 + 8 + 4;
/// The smallest possible file: the prefix, an empty conf state, the data length, no data, the CRC.
const MIN_LEN: u64 = PREFIX_LEN + 8 + 4;

const NAME_PREFIX: &str = "snap-";
const NAME_SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".tmp";
const CORRUPT_SUFFIX: &str = ".corrupt";

/// Errors of the snapshot store. Every variant names the file or directory it is about.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("cannot create snapshot dir", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A snapshot file is torn, malformed or fails its checksum.
    #[error("corrupt snapshot {}: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The snapshot could not be encoded (nothing was written).
    #[error("cannot write snapshot {}: {detail}", path.display())]
    Encode {
        /// The file that was to be written.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// [`SnapshotStore::save`] was given a snapshot older than one already on disk.
    #[error(
        "snapshot dir {}: refusing to save a snapshot at index {index} term {term}: \
         a newer one exists (index {newest_index} term {newest_term})",
        dir.display()
    )]
    Stale {
        /// The snapshot directory.
        dir: PathBuf,
        /// The index of the refused snapshot.
        index: u64,
        /// The term of the refused snapshot.
        term: u64,
        /// The index of the newest snapshot on disk.
        newest_index: u64,
        /// The term of the newest snapshot on disk.
        newest_term: u64,
    },
}

/// A snapshot read from a file and fully checked.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedSnapshot {
    /// The last log index the snapshot covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The membership at `index`.
    pub conf_state: ConfState,
    /// The machine state ([`Machine::decode`](crate::machine::Machine::decode) reads it).
    pub data: Vec<u8>,
    /// The file it was read from.
    pub path: PathBuf,
}

/// A snapshot file written or fully checked: what raft is told of it.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The membership at `index`.
    pub conf_state: ConfState,
    /// The file's size in bytes.
    pub size: u64,
    /// The whole file's CRC-32 (its last four bytes).
    pub crc: u32,
    /// The file.
    pub path: PathBuf,
}

impl SnapshotMeta {
    /// What names this file to a follower.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            index: self.index,
            term: self.term,
            size: self.size,
            crc: self.crc,
        }
    }

    /// raft's `Snapshot` for this file: the metadata (index, term, conf state), and the
    /// [`Descriptor`] as its data. The state itself never travels inside a raft message; a
    /// follower fetches the file in chunks (`crate::snapshot_stream`).
    pub fn to_raft_snapshot(&self) -> Snapshot {
        let mut meta = SnapshotMetadata {
            index: self.index,
            term: self.term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state.clone());
        let mut snap = Snapshot {
            data: self.descriptor().to_data().into(),
            ..Default::default()
        };
        snap.set_metadata(meta);
        snap
    }
}

/// Names one snapshot file exactly: its (index, term), size and whole-file CRC. It is the data
/// of the raft snapshot messages a leader sends; the follower receives the file it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Descriptor {
    /// The last log index the snapshot covers.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The file's size in bytes.
    pub size: u64,
    /// The whole file's CRC-32.
    pub crc: u32,
}

/// The first bytes of a descriptor in a raft snapshot's data.
const DESCRIPTOR_MAGIC: &[u8; 8] = b"RNSDESC1";

impl Descriptor {
    /// The bytes of a raft snapshot's data: magic, size, CRC.
    pub fn to_data(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(20);
        data.extend_from_slice(DESCRIPTOR_MAGIC);
        data.extend_from_slice(&self.size.to_le_bytes());
        data.extend_from_slice(&self.crc.to_le_bytes());
        data
    }

    /// The descriptor a raft snapshot carries; anything else is refused.
    pub fn of(snap: &Snapshot) -> Result<Descriptor, String> {
        let data = snap.get_data();
        if data.len() != 20 || &data[..8] != DESCRIPTOR_MAGIC {
            return Err(format!(
                "a snapshot whose data ({} bytes) is not a snapshot file's descriptor",
                data.len()
            ));
        }
        let size = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(data[16..20].try_into().unwrap_or_default());
        let meta = snap.get_metadata();
        if size < MIN_LEN {
            return Err(format!("a snapshot file of {size} bytes cannot exist"));
        }
        Ok(Descriptor {
            index: meta.index,
            term: meta.term,
            size,
            crc,
        })
    }
}

/// A snapshot file found by [`SnapshotStore::list`]: its name is well formed; its contents have
/// not been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The index in the file name.
    pub index: u64,
    /// The term in the file name.
    pub term: u64,
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// The snapshot files of one node, in `<data_dir>/snapshots/`. See the [module docs](self).
pub struct SnapshotStore {
    /// The directory (on the file system, or on a simulated disk).
    dir: Box<dyn SnapshotDir>,
    keep: usize,
    logger: Logger,
    /// Names of the files this store wrote or fully checked. Held during a whole save.
    verified: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("dir", &self.dir.path())
            .field("keep", &self.keep)
            .finish()
    }
}

impl SnapshotStore {
    /// Opens (creating it if needed) `<data_dir>/snapshots/` and removes the temp files an
    /// interrupted save left behind, logging each. Reads no snapshot.
    pub fn open(data_dir: &Path, logger: Logger) -> Result<SnapshotStore, SnapshotError> {
        let dir = data_dir.join(SNAPSHOT_DIR);
        let fs_dir = FsDir::create(&dir).map_err(io_err("cannot create snapshot dir", &dir))?;
        Self::in_dir(Box::new(fs_dir), logger)
    }

    /// The store in `dir` (the file system's, or a simulated disk's), opened as
    /// [`open`](Self::open) describes.
    pub fn in_dir(
        dir: Box<dyn SnapshotDir>,
        logger: Logger,
    ) -> Result<SnapshotStore, SnapshotError> {
        let files = dir
            .list()
            .map_err(io_err("cannot read snapshot dir", dir.path()))?;
        for (name, _) in files {
            let path = dir.path().join(&name);
            if name.ends_with(TMP_SUFFIX)
                || name.ends_with(PART_SUFFIX)
                || name.ends_with(OK_SUFFIX)
            {
                dir.remove(&name)
                    .map_err(io_err("cannot remove temp snapshot", &path))?;
                warn!(logger, "removed a temp snapshot file left by an interrupted save";
                    "file" => %path.display());
            } else if !name.ends_with(CORRUPT_SUFFIX) && parse_name(&name).is_none() {
                debug!(logger, "ignoring an unknown file in the snapshot dir";
                    "file" => %path.display());
            }
        }
        Ok(SnapshotStore {
            dir,
            keep: DEFAULT_KEEP,
            logger,
            verified: Mutex::default(),
        })
    }

    /// Sets how many valid snapshots to keep (at least 1; default [`DEFAULT_KEEP`]).
    pub fn with_keep(mut self, keep: usize) -> SnapshotStore {
        self.keep = keep.max(1);
        self
    }

    /// How many valid snapshots are kept.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a snapshot atomically and durably (see the [module docs](self)), then deletes all
    /// but the newest [`keep`](Self::keep) valid snapshots. Returns what was written.
    ///
    /// Refused ([`SnapshotError::Stale`], nothing written) if a snapshot with a higher
    /// `(index, term)` is already on disk; the same `(index, term)` replaces the file. A failure
    /// while pruning is logged, not returned: the new snapshot is durable by then.
    pub fn save(
        &self,
        index: u64,
        term: u64,
        conf_state: &ConfState,
        data: &[u8],
    ) -> Result<SnapshotMeta, SnapshotError> {
        self.save_with(index, term, conf_state, |w| w.write_all(data))
    }

    /// [`save`](Self::save), with the state written by `write` piece by piece: the file is
    /// written through a bounded buffer, whatever the state's size.
    pub fn save_with(
        &self,
        index: u64,
        term: u64,
        conf_state: &ConfState,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<SnapshotMeta, SnapshotError> {
        let mut verified = self.lock();
        let name = file_name(index, term);
        let path = self.dir.path().join(&name);
        self.check_not_stale(index, term)?;
        let prefix = prefix(index, term, conf_state).map_err(|detail| SnapshotError::Encode {
            path: path.clone(),
            detail,
        })?;
        let tmp = format!("{name}{TMP_SUFFIX}");
        let tmp_path = self.dir.path().join(&tmp);
        let written = (|| -> io::Result<(u64, u32)> {
            let mut out = FrameWriter::new(self.dir.create(&tmp)?);
            out.raw(&prefix)?;
            write(&mut out)?;
            out.end(true)
        })();
        let (size, crc) = match written {
            Ok(written) => written,
            Err(e) => {
                let _ = self.dir.remove(&tmp);
                return Err(SnapshotError::Io {
                    op: "cannot write (and fsync) temp snapshot",
                    path: tmp_path,
                    source: e,
                });
            }
        };
        if let Err(e) = self.dir.rename(&tmp, &name) {
            let _ = self.dir.remove(&tmp);
            return Err(SnapshotError::Io {
                op: "cannot rename temp snapshot into place",
                path: path.clone(),
                source: e,
            });
        }
        self.sync_dir()?;
        verified.insert(name);
        info!(self.logger, "saved snapshot"; "file" => %path.display(), "index" => index,
            "term" => term, "bytes" => size);

        self.prune(&mut verified, &path);
        Ok(SnapshotMeta {
            index,
            term,
            conf_state: conf_state.clone(),
            size,
            crc,
            path,
        })
    }

    /// Refuses to write `(index, term)` behind a newer snapshot on disk.
    fn check_not_stale(&self, index: u64, term: u64) -> Result<(), SnapshotError> {
        if let Some(newest) = self.list()?.last()
            && (newest.index, newest.term) > (index, term)
        {
            return Err(SnapshotError::Stale {
                dir: self.dir.path().to_path_buf(),
                index,
                term,
                newest_index: newest.index,
                newest_term: newest.term,
            });
        }
        Ok(())
    }

    /// Opens the file `desc` describes, to send it: its bytes as they are on disk, and its size.
    /// Fails if the file is gone or is not the one described (pruned and replaced).
    pub fn open_raw(&self, desc: &Descriptor) -> Result<crate::disk::FileReader, SnapshotError> {
        let name = file_name(desc.index, desc.term);
        let path = self.dir.path().join(&name);
        let (reader, len) = self
            .dir
            .open(&name)
            .map_err(io_err("cannot open snapshot", &path))?;
        if len != desc.size {
            return Err(SnapshotError::Corrupt {
                path,
                detail: format!(
                    "the file has {len} bytes, the snapshot being sent has {}",
                    desc.size
                ),
            });
        }
        Ok((reader, len))
    }

    /// Starts reception number `reception` of the file `desc` describes: creates its part file
    /// (removing every other part or checked file first: one snapshot is received at a time).
    /// The caller writes the file's bytes in order and finishes the writer (synced) before
    /// [`check_received`](Self::check_received).
    pub fn receive(
        &self,
        desc: &Descriptor,
        reception: u64,
    ) -> Result<Box<dyn FileWriter>, SnapshotError> {
        self.discard_parts();
        let name = part_name(desc, reception);
        self.dir.create(&name).map_err(io_err(
            "cannot create a received snapshot",
            &self.dir.path().join(&name),
        ))
    }

    /// Removes every part file and every checked file not installed (a snapshot that will not
    /// be installed).
    pub fn discard_parts(&self) {
        if let Ok(files) = self.dir.list() {
            for (name, _) in files {
                if name.ends_with(PART_SUFFIX) || name.ends_with(OK_SUFFIX) {
                    let _ = self.dir.remove(&name);
                }
            }
        }
    }

    /// Reads and checks the file of reception `reception` completely, handing its state to
    /// `decode` (see [`load_newest_with`](Self::load_newest_with)); it must be exactly the file
    /// `desc` describes, in the current format. A file that passes is renamed to its checked
    /// name (what [`install_received`](Self::install_received) puts in place: only a checked
    /// file can be installed, whatever reception starts meanwhile); a bad one is removed.
    pub fn check_received<T>(
        &self,
        desc: &Descriptor,
        reception: u64,
        decode: impl FnOnce(&mut dyn Read, u64) -> Result<T, String>,
    ) -> Result<(SnapshotMeta, T), SnapshotError> {
        let name = part_name(desc, reception);
        let path = self.dir.path().join(&name);
        let checked = (|| {
            let (reader, len) = self
                .dir
                .open(&name)
                .map_err(io_err("cannot open a received snapshot", &path))?;
            let (meta, value) = read_file(
                reader,
                len,
                &path,
                (desc.index, desc.term),
                Formats::CurrentOnly,
                decode,
            )?;
            if meta.descriptor() != *desc {
                return Err(SnapshotError::Corrupt {
                    path: path.clone(),
                    detail: format!(
                        "received {} bytes with checksum {:08x}, the leader described {} bytes \
                         with checksum {:08x}",
                        meta.size, meta.crc, desc.size, desc.crc
                    ),
                });
            }
            let ok = ok_name(desc);
            self.dir
                .rename(&name, &ok)
                .map_err(io_err("cannot keep a checked snapshot", &path))?;
            Ok((meta, value))
        })();
        if checked.is_err() {
            let _ = self.dir.remove(&name);
        }
        checked
    }

    /// Puts a received and checked file in place as the newest snapshot, durably, and prunes
    /// older ones. Refused if a newer snapshot is on disk, or if no checked file of `desc` is
    /// there (another reception discarded it).
    pub fn install_received(&self, desc: &Descriptor) -> Result<PathBuf, SnapshotError> {
        let mut verified = self.lock();
        self.check_not_stale(desc.index, desc.term)?;
        let ok = ok_name(desc);
        let name = file_name(desc.index, desc.term);
        let path = self.dir.path().join(&name);
        self.dir.rename(&ok, &name).map_err(io_err(
            "cannot rename a received snapshot into place",
            &path,
        ))?;
        self.sync_dir()?;
        verified.insert(name);
        info!(self.logger, "saved snapshot"; "file" => %path.display(), "index" => desc.index,
            "term" => desc.term, "bytes" => desc.size, "received" => true);
        self.prune(&mut verified, &path);
        Ok(path)
    }

    /// Deletes all but the newest `keep` valid snapshots; `just_saved` is never deleted.
    fn prune(&self, verified: &mut HashSet<String>, just_saved: &Path) {
        let files = match self.list() {
            Ok(files) => files,
            Err(e) => {
                warn!(self.logger, "cannot prune old snapshots: {e}");
                return;
            }
        };
        let mut kept = 0;
        for info in files.into_iter().rev() {
            let name = file_name(info.index, info.term);
            if kept < self.keep || info.path == just_saved {
                if verified.contains(&name) {
                    kept += 1;
                    continue;
                }
                match self.read(&info, skip_all) {
                    Ok(_) => {
                        verified.insert(name);
                        kept += 1;
                    }
                    Err(e @ SnapshotError::Corrupt { .. }) => {
                        self.quarantine(verified, &info.path, &e);
                    }
                    Err(e) => {
                        // Not proof the file is bad: keep it, and count it so that no more
                        // than `keep` files are kept.
                        warn!(self.logger, "cannot check a snapshot while pruning, keeping it: {e}";
                            "file" => %info.path.display());
                        kept += 1;
                    }
                }
            } else {
                match self.dir.remove(&name) {
                    Ok(()) => {
                        verified.remove(&name);
                        info!(self.logger, "deleted old snapshot"; "file" => %info.path.display(),
                            "index" => info.index, "term" => info.term);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        verified.remove(&name);
                    }
                    Err(e) => {
                        warn!(self.logger, "cannot delete old snapshot: {e}";
                            "file" => %info.path.display());
                    }
                }
            }
        }
    }

    /// Loads the newest valid snapshot, trying the files newest first (by index, then term).
    /// A file that is torn, malformed, fails its checksum or whose name disagrees with its header
    /// is refused: logged at error level, renamed to `<name>.corrupt`, and the next older file is
    /// tried. `Ok(None)` if no valid snapshot exists. An I/O error other than a short file is
    /// returned (the file is left alone). The state is read into memory whole: see
    /// [`load_newest_with`](Self::load_newest_with) for a large one.
    pub fn load_newest(&self) -> Result<Option<LoadedSnapshot>, SnapshotError> {
        Ok(self
            .load_newest_with(read_all)?
            .map(|(meta, data)| LoadedSnapshot {
                index: meta.index,
                term: meta.term,
                conf_state: meta.conf_state,
                data,
                path: meta.path,
            }))
    }

    /// [`load_newest`](Self::load_newest), handing each file's state to `decode` as it is read
    /// (a reader of the state's bytes, and an upper bound of their number): a state of any size
    /// is loaded with a bounded buffer. A file whose state `decode` refuses is refused like a
    /// corrupt one. What `decode` returned is kept only once the whole file has passed its checks.
    pub fn load_newest_with<T>(
        &self,
        mut decode: impl FnMut(&mut dyn Read, u64) -> Result<T, String>,
    ) -> Result<Option<(SnapshotMeta, T)>, SnapshotError> {
        for info in self.list()?.into_iter().rev() {
            match self.read(&info, &mut decode) {
                Ok((meta, value)) => {
                    self.lock().insert(file_name(info.index, info.term));
                    info!(self.logger, "loaded snapshot"; "file" => %info.path.display(),
                        "index" => meta.index, "term" => meta.term, "bytes" => meta.size);
                    return Ok(Some((meta, value)));
                }
                Err(e @ SnapshotError::Corrupt { .. }) => {
                    self.quarantine(&mut self.lock(), &info.path, &e);
                }
                Err(SnapshotError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    debug!(self.logger, "snapshot disappeared while loading";
                        "file" => %info.path.display());
                }
                Err(e) => return Err(e),
            }
        }
        info!(self.logger, "no valid snapshot"; "dir" => %self.dir().display());
        Ok(None)
    }

    /// Loads one snapshot file with the same checks as [`load_newest`](Self::load_newest)
    /// (including that its name is `snap-<index:020>-<term:020>.snap` and agrees with the
    /// header). A bad file gives [`SnapshotError::Corrupt`]; unlike `load_newest` it is left
    /// where it is. The file need not be in this store's directory.
    pub fn load(&self, path: &Path) -> Result<LoadedSnapshot, SnapshotError> {
        let names = name_of(path)?;
        let file = File::open(path).map_err(io_err("cannot open snapshot", path))?;
        let len = file
            .metadata()
            .map_err(io_err("cannot stat snapshot", path))?
            .len();
        let (meta, data) = read_file(Box::new(file), len, path, names, Formats::Any, read_all)?;
        let loaded = LoadedSnapshot {
            index: meta.index,
            term: meta.term,
            conf_state: meta.conf_state,
            data,
            path: meta.path,
        };
        if path.parent() == Some(self.dir()) {
            self.lock().insert(file_name(loaded.index, loaded.term));
        }
        Ok(loaded)
    }

    /// The snapshot files whose names are well formed, oldest first (by index, then term). Their
    /// contents are not checked. After a [`save`](Self::save) the first one is the oldest kept
    /// snapshot: the log may be compacted up to its index, not further.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let dir = self.dir.path();
        let mut files = Vec::new();
        let listed = self
            .dir
            .list()
            .map_err(io_err("cannot read snapshot dir", dir))?;
        for (name, size) in listed {
            let Some((index, term)) = parse_name(&name) else {
                continue;
            };
            files.push(SnapshotInfo {
                index,
                term,
                path: dir.join(name),
                size,
            });
        }
        files.sort_by_key(|f| (f.index, f.term));
        Ok(files)
    }

    /// Moves a refused file aside to `<name>.corrupt` (or `.corrupt.<n>` if that is taken) and
    /// logs why. `verified` is the caller's lock on the set of checked names.
    fn quarantine(&self, verified: &mut HashSet<String>, path: &Path, why: &SnapshotError) {
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            verified.remove(name);
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let mut target = corrupt_name(name, 0);
        let mut n = 1;
        while self.dir.exists(&target) && n < 1000 {
            target = corrupt_name(name, n);
            n += 1;
        }
        let target_path = self.dir.path().join(&target);
        match self.dir.rename(name, &target) {
            Ok(()) => {
                let _ = self.sync_dir();
                error!(self.logger, "refusing snapshot file: {why}; moved it to {}", target_path.display();
                    "file" => %path.display(), "moved_to" => %target_path.display());
            }
            Err(e) => {
                error!(self.logger,
                    "refusing snapshot file: {why}; cannot move it to {}: {e}", target_path.display();
                    "file" => %path.display());
            }
        }
    }

    /// Reads and fully checks a listed file.
    fn read<T>(
        &self,
        info: &SnapshotInfo,
        decode: impl FnOnce(&mut dyn Read, u64) -> Result<T, String>,
    ) -> Result<(SnapshotMeta, T), SnapshotError> {
        let name = file_name(info.index, info.term);
        let (reader, len) = self
            .dir
            .open(&name)
            .map_err(io_err("cannot open snapshot", &info.path))?;
        read_file(
            reader,
            len,
            &info.path,
            (info.index, info.term),
            Formats::Any,
            decode,
        )
    }

    fn sync_dir(&self) -> Result<(), SnapshotError> {
        self.dir
            .sync()
            .map_err(io_err("cannot fsync snapshot dir", self.dir.path()))
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `snap-<index:020>-<term:020>.snap`.
fn file_name(index: u64, term: u64) -> String {
    format!("{NAME_PREFIX}{index:020}-{term:020}{NAME_SUFFIX}")
}

/// `(index, term)` of a well-formed snapshot file name.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    let (index, term) = rest.split_once('-')?;
    let number = |s: &str| {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    Some((number(index)?, number(term)?))
}

fn corrupt_name(name: &str, n: u32) -> String {
    if n > 0 {
        format!("{name}{CORRUPT_SUFFIX}.{n}")
    } else {
        format!("{name}{CORRUPT_SUFFIX}")
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + use<> {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// The `(index, term)` a snapshot file's name gives, or why it is not a snapshot's name.
fn name_of(path: &Path) -> Result<(u64, u64), SnapshotError> {
    let corrupt = |detail: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| corrupt("the file name is not valid UTF-8".into()))?;
    parse_name(name).ok_or_else(|| {
        corrupt(format!(
            "the file name {name:?} is not of the form snap-<index:020>-<term:020>.snap"
        ))
    })
}

/// The start of a file: magic, version, index, term, conf state.
fn prefix(index: u64, term: u64, conf_state: &ConfState) -> Result<Vec<u8>, String> {
    let cs = conf_state
        .write_to_bytes()
        .map_err(|e| format!("cannot encode the conf state: {e}"))?;
    let cs_len = u32::try_from(cs.len())
        .map_err(|_| format!("the conf state is too large ({} bytes)", cs.len()))?;
    let mut prefix = Vec::with_capacity(PREFIX_LEN as usize + cs.len());
    prefix.extend_from_slice(MAGIC);
    prefix.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    prefix.extend_from_slice(&index.to_le_bytes());
    prefix.extend_from_slice(&term.to_le_bytes());
    prefix.extend_from_slice(&cs_len.to_le_bytes());
    prefix.extend_from_slice(&cs);
    Ok(prefix)
}

/// The part file of reception number `reception` of a snapshot.
fn part_name(desc: &Descriptor, reception: u64) -> String {
    format!(
        "{}.{:08x}.{reception}{PART_SUFFIX}",
        file_name(desc.index, desc.term),
        desc.crc
    )
}

/// The name of a received snapshot file that passed its check.
fn ok_name(desc: &Descriptor) -> String {
    format!(
        "{}.{:08x}{OK_SUFFIX}",
        file_name(desc.index, desc.term),
        desc.crc
    )
}

/// Which file formats a read accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Formats {
    /// Both: a node's own files, written by this or an older build.
    Any,
    /// Only the current, framed one: a file from a peer (a version 1 file would be read whole
    /// into memory).
    CurrentOnly,
}

/// Reads a state whole (for small states and tests).
fn read_all(r: &mut dyn Read, max: u64) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    r.take(max)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    Ok(data)
}

/// Reads a state without keeping it (the checks still run).
fn skip_all(r: &mut dyn Read, _max: u64) -> Result<(), String> {
    io::copy(r, &mut io::sink())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Writes the frames of a version 2 file after its prefix, keeping the whole file's CRC.
struct FrameWriter {
    out: Box<dyn FileWriter>,
    frame: Vec<u8>,
    whole: crc32fast::Hasher,
    data_len: u64,
    size: u64,
}

impl FrameWriter {
    fn new(out: Box<dyn FileWriter>) -> FrameWriter {
        FrameWriter {
            out,
            frame: Vec::with_capacity(MAX_FRAME),
            whole: crc32fast::Hasher::new(),
            data_len: 0,
            size: 0,
        }
    }

    /// Writes bytes as they are (the prefix, frame headers, the trailer).
    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.whole.update(bytes);
        self.size += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    fn flush_frame(&mut self) -> io::Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let frame = std::mem::take(&mut self.frame);
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(&frame).to_le_bytes());
        self.raw(&header)?;
        self.raw(&frame)?;
        self.frame = frame;
        self.frame.clear();
        Ok(())
    }

    /// Ends the frames, writes the trailer and finishes the file; its size and whole CRC.
    fn end(mut self, sync: bool) -> io::Result<(u64, u32)> {
        self.flush_frame()?;
        self.raw(&0u32.to_le_bytes())?;
        self.raw(&self.data_len.to_le_bytes())?;
        let crc = self.whole.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.finish(sync)?;
        Ok((self.size + 4, crc))
    }
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_FRAME - self.frame.len());
        self.frame.extend_from_slice(&buf[..n]);
        self.data_len += n as u64;
        if self.frame.len() == MAX_FRAME {
            self.flush_frame()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the state out of a version 2 file's frames, checking each frame's CRC before handing
/// its bytes on, and the trailer (data length, whole CRC, nothing after it) at the end.
struct FrameReader {
    file: Box<dyn Read + Send>,
    /// File bytes not read yet.
    left: u64,
    whole: crc32fast::Hasher,
    frame: Vec<u8>,
    pos: usize,
    data_len: u64,
    done: bool,
    /// The whole file's CRC, once checked.
    crc: u32,
    /// What is wrong with the file, once found.
    bad: Option<String>,
    /// An I/O error that is not the file's fault.
    failed: Option<io::Error>,
}

impl FrameReader {
    fn corrupt(&mut self, detail: String) -> io::Error {
        let e = io::Error::new(io::ErrorKind::InvalidData, detail.clone());
        self.bad.get_or_insert(detail);
        e
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        if (buf.len() as u64) > self.left {
            return Err(self.corrupt(format!("torn: the file ends inside the {what}")));
        }
        match self.file.read_exact(buf) {
            Ok(()) => {
                self.left -= buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.corrupt(format!(
                "torn: the file ends inside the {what} (did it shrink while being read?)"
            ))),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed.get_or_insert(e);
                Err(copy)
            }
        }
    }

    /// Reads the next frame into `frame`, or the trailer (then `done`).
    fn next_frame(&mut self) -> io::Result<()> {
        let mut len = [0u8; 4];
        self.exact(&mut len, "frame length")?;
        self.whole.update(&len);
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            let mut data_len = [0u8; 8];
            self.exact(&mut data_len, "data length")?;
            self.whole.update(&data_len);
            let mut crc = [0u8; 4];
            self.exact(&mut crc, "checksum")?;
            let (stored, computed) = (u32::from_le_bytes(crc), self.whole.clone().finalize());
            if stored != computed {
                return Err(self.corrupt(format!(
                    "checksum mismatch: the file says {stored:08x}, its contents give {computed:08x}"
                )));
            }
            let data_len = u64::from_le_bytes(data_len);
            if data_len != self.data_len {
                return Err(self.corrupt(format!(
                    "the trailer says {data_len} bytes of data, the frames hold {}",
                    self.data_len
                )));
            }
            if self.left != 0 {
                return Err(
                    self.corrupt(format!("{} unexpected bytes after the checksum", self.left))
                );
            }
            self.crc = stored;
            self.done = true;
            return Ok(());
        }
        if len > MAX_FRAME {
            return Err(self.corrupt(format!(
                "a frame of {len} bytes, more than the {MAX_FRAME} allowed"
            )));
        }
        let mut crc = [0u8; 4];
        self.exact(&mut crc, "frame checksum")?;
        self.whole.update(&crc);
        let mut frame = std::mem::take(&mut self.frame);
        frame.resize(len, 0);
        let read = self.exact(&mut frame, "frame");
        self.frame = frame;
        read?;
        let (stored, computed) = (u32::from_le_bytes(crc), crc32fast::hash(&self.frame));
        if stored != computed {
            self.frame.clear();
            return Err(self.corrupt(format!(
                "frame checksum mismatch at data byte {}: the file says {stored:08x}, the frame \
                 gives {computed:08x}",
                self.data_len
            )));
        }
        self.whole.update(&self.frame);
        self.data_len += len as u64;
        self.pos = 0;
        Ok(())
    }

    /// Reads (and checks) whatever the decoder left, up to the trailer.
    fn drain(&mut self) -> io::Result<()> {
        while !self.done {
            self.pos = self.frame.len();
            self.next_frame()?;
        }
        Ok(())
    }
}

impl Read for FrameReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.bad.is_some() || self.failed.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the snapshot file failed a check",
            ));
        }
        while self.pos == self.frame.len() {
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            self.next_frame()?;
        }
        let n = buf.len().min(self.frame.len() - self.pos);
        buf[..n].copy_from_slice(&self.frame[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads and fully checks one snapshot file (either version), handing its state to `decode`.
/// Every problem with the file's contents (including a file that ends early, and a state that
/// does not decode) is [`SnapshotError::Corrupt`]; other I/O errors are [`SnapshotError::Io`].
/// `names` is the (index, term) its name says.
fn read_file<T>(
    file: Box<dyn Read + Send>,
    len: u64,
    path: &Path,
    (name_index, name_term): (u64, u64),
    formats: Formats,
    decode: impl FnOnce(&mut dyn Read, u64) -> Result<T, String>,
) -> Result<(SnapshotMeta, T), SnapshotError> {
    let mut file = SnapshotReader { file, path };
    let mut prefix = [0u8; PREFIX_LEN as usize];
    let have = len.min(PREFIX_LEN) as usize;
    file.exact(&mut prefix[..have], "header")?;
    let header = Header::check(&prefix, have, len).map_err(|d| file.corrupt(d))?;
    // Bounded by the file size, checked by `Header::check`.
    let mut cs = vec![0u8; header.cs_len as usize];
    file.exact(&mut cs, "conf state")?;
    let (index, term) = (header.index, header.term);
    if (name_index, name_term) != (index, term) {
        return Err(file.corrupt(format!(
            "the file name says index {name_index} term {name_term} but the header says index \
             {index} term {term}"
        )));
    }
    let conf_state = ConfState::parse_from_bytes(&cs)
        .map_err(|e| file.corrupt(format!("the conf state does not decode: {e}")))?;
    let meta = |crc: u32| SnapshotMeta {
        index,
        term,
        conf_state: conf_state.clone(),
        size: len,
        crc,
        path: path.to_path_buf(),
    };
    if header.version == LEGACY_VERSION {
        if formats == Formats::CurrentOnly {
            return Err(file.corrupt(format!(
                "a version {LEGACY_VERSION} file, where only version {FORMAT_VERSION} is taken"
            )));
        }
        let mut data_len_bytes = [0u8; 8];
        file.exact(&mut data_len_bytes, "data length")?;
        let data_len = u64::from_le_bytes(data_len_bytes);
        check_total_length(header.cs_len, data_len, len).map_err(|d| file.corrupt(d))?;
        let data = file.data(data_len)?;
        let mut crc_bytes = [0u8; 4];
        file.exact(&mut crc_bytes, "checksum")?;
        let stored = u32::from_le_bytes(crc_bytes);
        let mut hasher = crc32fast::Hasher::new();
        for part in [&prefix[..], &cs, &data_len_bytes, &data] {
            hasher.update(part);
        }
        let computed = hasher.finalize();
        if stored != computed {
            return Err(file.corrupt(format!(
                "checksum mismatch: the file says {stored:08x}, its contents give {computed:08x}"
            )));
        }
        let value = decode(&mut &data[..], data_len)
            .map_err(|e| file.corrupt(format!("the state does not decode: {e}")))?;
        return Ok((meta(stored), value));
    }
    let mut whole = crc32fast::Hasher::new();
    whole.update(&prefix);
    whole.update(&cs);
    let left = len - PREFIX_LEN - u64::from(header.cs_len);
    let mut frames = FrameReader {
        file: file.file,
        left,
        whole,
        frame: Vec::new(),
        pos: 0,
        data_len: 0,
        done: false,
        crc: 0,
        bad: None,
        failed: None,
    };
    let decoded = decode(&mut frames, left);
    let drained = frames.drain();
    let corrupt = |detail: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(e) = frames.failed.take() {
        return Err(SnapshotError::Io {
            op: "cannot read snapshot",
            path: path.to_path_buf(),
            source: e,
        });
    }
    if let Some(detail) = frames.bad.take() {
        return Err(corrupt(detail));
    }
    drained.map_err(|e| corrupt(e.to_string()))?;
    let value = decoded.map_err(|e| corrupt(format!("the state does not decode: {e}")))?;
    Ok((meta(frames.crc), value))
}

/// A snapshot file being read: a file that ends early is torn.
struct SnapshotReader<'a> {
    file: Box<dyn Read + Send>,
    path: &'a Path,
}

impl SnapshotReader<'_> {
    fn corrupt(&self, detail: String) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.to_path_buf(),
            detail,
        }
    }

    /// Reads exactly `buf.len()` bytes of the `what`.
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), SnapshotError> {
        self.file.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.corrupt(format!(
                    "torn: the file ends inside the {what} (did it shrink while being read?)"
                ))
            } else {
                SnapshotError::Io {
                    op: "cannot read snapshot",
                    path: self.path.to_path_buf(),
                    source: e,
                }
            }
        })
    }

    /// Reads the `data_len` bytes of data (already checked against the file's size).
    fn data(&mut self, data_len: u64) -> Result<Vec<u8>, SnapshotError> {
        let data_cap = usize::try_from(data_len)
            .map_err(|_| self.corrupt(format!("{data_len} bytes of data do not fit in memory")))?;
        let mut data = Vec::with_capacity(data_cap);
        (&mut self.file)
            .take(data_len)
            .read_to_end(&mut data)
            .map_err(io_err("cannot read snapshot", self.path))?;
        if data.len() != data_cap {
            return Err(self.corrupt(format!(
                "torn: the file ends inside the data ({} of {data_len} bytes; did it shrink \
                 while being read?)",
                data.len()
            )));
        }
        Ok(data)
    }
}

/// The fixed-size start of a snapshot file.
struct Header {
    version: u32,
    index: u64,
    term: u64,
    cs_len: u32,
}

impl Header {
    /// Checks the `have` bytes read of the prefix of a `len`-byte file: magic, version, and a
    /// conf state that fits in the file.
    fn check(prefix: &[u8], have: usize, len: u64) -> Result<Header, String> {
        if have >= 8 && prefix[..8] != MAGIC[..] {
            return Err(format!(
                "bad magic bytes {:02x?} (expected {:?}): not a snapshot file",
                &prefix[..8],
                String::from_utf8_lossy(MAGIC)
            ));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes(prefix[at..at + 4].try_into().unwrap_or_default());
        let u64_at =
            |at: usize| u64::from_le_bytes(prefix[at..at + 8].try_into().unwrap_or_default());
        let version = if have >= 12 { u32_at(8) } else { 0 };
        if have >= 12 && version != FORMAT_VERSION && version != LEGACY_VERSION {
            return Err(format!(
                "unsupported format version {version} (this build reads versions \
                 {LEGACY_VERSION} and {FORMAT_VERSION})"
            ));
        }
        if len < MIN_LEN {
            return Err(format!(
                "torn: the file has {len} bytes, fewer than the {MIN_LEN} of the smallest snapshot"
            ));
        }
        let cs_len = u32_at(28);
        if PREFIX_LEN + u64::from(cs_len) + 8 + 4 > len {
            return Err(format!(
                "torn: the conf state length {cs_len} runs past the end of the file ({len} bytes)"
            ));
        }
        Ok(Header {
            version,
            index: u64_at(12),
            term: u64_at(20),
            cs_len,
        })
    }
}

/// The file must be exactly as long as its header and data length say.
fn check_total_length(cs_len: u32, data_len: u64, len: u64) -> Result<(), String> {
    let expected = (PREFIX_LEN + u64::from(cs_len) + 8)
        .checked_add(data_len)
        .and_then(|n| n.checked_add(4));
    match expected {
        Some(expected) if expected == len => Ok(()),
        Some(expected) if expected < len => Err(format!(
            "{} unexpected bytes after the checksum (the header describes a {expected}-byte \
             file, the file has {len} bytes)",
            len - expected
        )),
        _ => Err(format!(
            "torn: the header says {data_len} bytes of data, more than the file holds ({len} \
             bytes)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::fs;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use slog::o;

    use super::*;

    /// Where a refused file goes (the test's view of [`corrupt_name`]).
    fn corrupt_path(path: &Path, n: u32) -> PathBuf {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        path.with_file_name(corrupt_name(name, n))
    }

    /// A logger that keeps every line (level, message and key-values).
    struct Collect(Arc<Mutex<Vec<String>>>);

    struct Line(String);

    impl slog::Serializer for Line {
        fn emit_arguments(
            &mut self,
            key: slog::Key,
            val: &std::fmt::Arguments<'_>,
        ) -> slog::Result {
            let _ = write!(self.0, " {key}={val}");
            Ok(())
        }
    }

    impl slog::Drain for Collect {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, r: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
            use slog::KV as _;
            let mut line = Line(format!("{} {}", r.level().as_short_str(), r.msg()));
            let _ = r.kv().serialize(r, &mut line);
            let _ = values.serialize(r, &mut line);
            self.0.lock().unwrap().push(line.0);
            Ok(())
        }
    }

    type Lines = Arc<Mutex<Vec<String>>>;

    fn logger() -> (Logger, Lines) {
        let lines = Lines::default();
        (Logger::root(Collect(Arc::clone(&lines)), o!()), lines)
    }

    fn conf(voters: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: vec![9],
            ..Default::default()
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn open(data_dir: &Path) -> (SnapshotStore, Lines) {
        let (logger, lines) = logger();
        (SnapshotStore::open(data_dir, logger).unwrap(), lines)
    }

    #[test]
    fn snapshot_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        assert_eq!(store.dir(), tmp.path().join(SNAPSHOT_DIR));
        assert_eq!(store.keep(), DEFAULT_KEEP);
        let saved = store
            .save(42, 7, &conf(&[1, 2, 3]), b"machine state")
            .unwrap();
        let path = saved.path.clone();
        assert_eq!(
            path,
            store
                .dir()
                .join("snap-00000000000000000042-00000000000000000007.snap")
        );
        assert_eq!(
            names(store.dir()),
            ["snap-00000000000000000042-00000000000000000007.snap"]
        );

        // A fresh store (a restart) reads it back.
        let (store, _) = open(tmp.path());
        let loaded = store.load_newest().unwrap().unwrap();
        let expected = LoadedSnapshot {
            index: 42,
            term: 7,
            conf_state: conf(&[1, 2, 3]),
            data: b"machine state".to_vec(),
            path: path.clone(),
        };
        assert_eq!(loaded, expected);
        assert_eq!(store.load(&path).unwrap(), expected);
        let info = store.list().unwrap();
        assert_eq!(info.len(), 1);
        assert_eq!((info[0].index, info[0].term), (42, 7));
        assert_eq!(info[0].size, fs::metadata(&path).unwrap().len());

        // raft's snapshot names the file: metadata, and the descriptor as data.
        assert_eq!(saved.size, info[0].size);
        let snap = saved.to_raft_snapshot();
        assert_eq!(snap.get_metadata().index, 42);
        assert_eq!(snap.get_metadata().term, 7);
        assert_eq!(snap.get_metadata().get_conf_state(), &conf(&[1, 2, 3]));
        assert_eq!(Descriptor::of(&snap), Ok(saved.descriptor()));
        let bytes = fs::read(&path).unwrap();
        let crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
        assert_eq!(saved.crc, crc);
    }

    #[test]
    fn snapshot_empty_data_and_conf_state() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let path = store.save(1, 1, &ConfState::default(), b"").unwrap().path;
        // No frame: the end marker, the data length and the checksum.
        assert_eq!(fs::metadata(&path).unwrap().len(), PREFIX_LEN + 4 + 8 + 4);
        let loaded = store.load_newest().unwrap().unwrap();
        assert_eq!(loaded.conf_state, ConfState::default());
        assert!(loaded.data.is_empty());
    }

    #[test]
    fn snapshot_newest_wins_and_two_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, lines) = open(tmp.path());
        store.save(10, 1, &conf(&[1]), b"ten").unwrap();
        store.save(20, 1, &conf(&[1, 2]), b"twenty").unwrap();
        // Same index, higher term sorts newer.
        store
            .save(20, 2, &conf(&[1, 2, 3]), b"twenty, term 2")
            .unwrap();
        let listed: Vec<_> = store
            .list()
            .unwrap()
            .iter()
            .map(|i| (i.index, i.term))
            .collect();
        assert_eq!(listed, [(20, 1), (20, 2)]);
        let loaded = store.load_newest().unwrap().unwrap();
        assert_eq!((loaded.index, loaded.term), (20, 2));
        assert_eq!(loaded.data, b"twenty, term 2");

        store.save(300, 3, &conf(&[1, 2, 3]), b"300").unwrap();
        store.save(1000, 3, &conf(&[1, 2, 3]), b"1000").unwrap();
        let listed: Vec<_> = store.list().unwrap().iter().map(|i| i.index).collect();
        assert_eq!(listed, [300, 1000]);
        assert_eq!(store.load_newest().unwrap().unwrap().data, b"1000");
        // Sorted by number, not by the order saved: 1000 > 300.
        let deleted = lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("INFO deleted old snapshot"))
            .count();
        assert_eq!(deleted, 3);

        // keep can be changed; the same (index, term) replaces the file.
        let (store, _) = open(tmp.path());
        let store = store.with_keep(3);
        store.save(1000, 3, &conf(&[1]), b"again").unwrap();
        store.save(2000, 3, &conf(&[1]), b"2000").unwrap();
        store.save(3000, 3, &conf(&[1]), b"3000").unwrap();
        let listed: Vec<_> = store.list().unwrap().iter().map(|i| i.index).collect();
        assert_eq!(listed, [1000, 2000, 3000]);
        let oldest = store.list().unwrap()[0].path.clone();
        assert_eq!(store.load(&oldest).unwrap().data, b"again");
        assert_eq!(
            SnapshotStore::open(tmp.path(), logger().0)
                .unwrap()
                .with_keep(0)
                .keep(),
            1
        );
    }

    #[test]
    fn snapshot_older_than_newest_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        store.save(50, 2, &conf(&[1]), b"50").unwrap();
        let err = store.save(40, 2, &conf(&[1]), b"40").unwrap_err();
        assert!(matches!(
            err,
            SnapshotError::Stale {
                index: 40,
                newest_index: 50,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains(&store.dir().display().to_string()), "{msg}");
        assert!(
            msg.contains("index 40") && msg.contains("index 50"),
            "{msg}"
        );
        assert!(store.save(50, 1, &conf(&[1]), b"50").is_err());
        assert_eq!(names(store.dir()).len(), 1);
    }

    #[test]
    fn snapshot_no_valid_file_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        assert_eq!(store.load_newest().unwrap(), None);
        assert!(store.list().unwrap().is_empty());

        // Unrelated names are ignored, not refused.
        for junk in [
            "README",
            "snap-1-1.snap",
            "snap-00000000000000000001.snap",
            "x.corrupt",
        ] {
            fs::write(store.dir().join(junk), b"junk").unwrap();
        }
        assert_eq!(store.load_newest().unwrap(), None);
        assert_eq!(names(store.dir()).len(), 4);

        // A lone bad snapshot: refused, moved aside, None.
        let bad = store.dir().join(file_name(5, 1));
        fs::write(&bad, b"not a snapshot at all, just some bytes here").unwrap();
        assert_eq!(store.load_newest().unwrap(), None);
        assert!(!bad.exists());
        assert!(corrupt_path(&bad, 0).exists());
        assert_eq!(store.load_newest().unwrap(), None);
    }

    #[test]
    fn snapshot_open_removes_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(SNAPSHOT_DIR);
        fs::create_dir_all(&dir).unwrap();
        let leftover = dir.join(format!("{}{TMP_SUFFIX}", file_name(9, 9)));
        fs::write(&leftover, b"half a snap").unwrap();
        fs::write(dir.join("other.tmp"), b"").unwrap();
        fs::write(
            dir.join(format!("{}{CORRUPT_SUFFIX}", file_name(1, 1))),
            b"kept",
        )
        .unwrap();
        let (store, lines) = open(tmp.path());
        assert_eq!(
            names(store.dir()),
            [format!("{}{CORRUPT_SUFFIX}", file_name(1, 1))]
        );
        let lines = lines.lock().unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("WARN removed a temp snapshot")
                    && l.contains(&leftover.display().to_string())),
            "{lines:?}"
        );
        assert_eq!(lines.iter().filter(|l| l.starts_with("WARN")).count(), 2);
    }

    #[test]
    fn snapshot_open_creates_the_dir_and_names_it_on_error() {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("a/b");
        let (store, _) = open(&data_dir);
        assert!(store.dir().is_dir());

        let file = tmp.path().join("plain-file");
        fs::write(&file, b"").unwrap();
        let err = SnapshotStore::open(&file, logger().0).unwrap_err();
        assert!(err.to_string().contains("plain-file"), "{err}");
    }

    /// The bytes of a small valid snapshot at index 200 (the "newer" file in the refusal tests).
    fn small_snapshot() -> Vec<u8> {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let path = store
            .save(200, 4, &conf(&[1, 2, 3]), b"newer state")
            .unwrap()
            .path;
        fs::read(path).unwrap()
    }

    /// Writes `bytes` as `name` next to a good snapshot at index 100, then checks that
    /// `load_newest` refuses it (error log naming the file and containing `problem`), moves it to
    /// `.corrupt` unchanged, and loads the snapshot at 100 instead.
    fn assert_refused(name: &str, bytes: &[u8], problem: &str) {
        let tmp = tempfile::tempdir().unwrap();
        let (store, lines) = open(tmp.path());
        store.save(100, 3, &conf(&[1, 2]), b"older state").unwrap();
        let bad = store.dir().join(name);
        fs::write(&bad, bytes).unwrap();

        let err = store.load(&bad).unwrap_err();
        assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(name), "{err}");
        assert!(
            err.to_string().contains(problem),
            "{err} (wanted {problem:?})"
        );
        assert!(bad.exists(), "load(path) leaves the file alone");

        let loaded = store
            .load_newest()
            .unwrap()
            .expect("falls back to the older snapshot");
        assert_eq!((loaded.index, loaded.term), (100, 3));
        assert_eq!(loaded.data, b"older state");
        assert!(!bad.exists());
        assert_eq!(fs::read(corrupt_path(&bad, 0)).unwrap(), bytes);
        let lines = lines.lock().unwrap();
        let refusal: Vec<_> = lines.iter().filter(|l| l.starts_with("ERRO")).collect();
        assert_eq!(refusal.len(), 1, "{lines:?}");
        assert!(
            refusal[0].contains(&bad.display().to_string()),
            "{refusal:?}"
        );
        assert!(
            refusal[0].contains(problem),
            "{refusal:?} (wanted {problem:?})"
        );
        drop(lines);

        // Never tried again; the good one is still there.
        assert_eq!(store.load_newest().unwrap().unwrap().index, 100);
        let listed: Vec<_> = store.list().unwrap().iter().map(|i| i.index).collect();
        assert_eq!(listed, [100]);
    }

    #[test]
    fn snapshot_torn_file_is_refused() {
        let good = small_snapshot();
        let name = file_name(200, 4);
        let len = good.len();
        // The prefix and conf state, then the first frame's length.
        let header = PREFIX_LEN as usize + conf(&[1, 2, 3]).write_to_bytes().unwrap().len() + 4;
        let mut cuts = vec![
            0,
            1,
            7,
            8,
            11,
            12,
            20,
            31,
            32,
            33,
            43,
            44,
            header - 1,
            header,
        ];
        cuts.extend([header + 1, len - 5, len - 4, len - 3, len - 1]);
        for cut in cuts {
            assert_refused(&name, &good[..cut], "torn");
        }
        // Extra bytes after the checksum are refused too.
        let mut long = good.clone();
        long.extend_from_slice(b"\0\0\0\0");
        assert_refused(&name, &long, "unexpected bytes after the checksum");
    }

    #[test]
    fn snapshot_flipped_byte_is_refused() {
        let good = small_snapshot();
        let name = file_name(200, 4);
        for at in 0..good.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] ^= mask;
                let problem = match at {
                    0..8 => "bad magic",
                    8..12 => "",
                    12..28 => "the file name says",
                    _ => "",
                };
                assert_refused(&name, &bad, problem);
            }
        }
        // The data and checksum bytes are caught by the CRC.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last - 6] ^= 0x10;
        assert_refused(&name, &bad, "checksum mismatch");
        bad = good.clone();
        bad[last] ^= 0x10;
        assert_refused(&name, &bad, "checksum mismatch");
    }

    #[test]
    fn snapshot_bad_magic_and_version_are_refused() {
        let good = small_snapshot();
        let name = file_name(200, 4);
        let mut bad = good.clone();
        bad[..8].copy_from_slice(b"RNSNAP99");
        assert_refused(&name, &bad, "bad magic");
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert_refused(&name, &bad, "unsupported format version 3");
        assert_refused(&name, &[0xff; 4096], "bad magic");
        assert_refused(&name, b"", "torn");
    }

    #[test]
    fn snapshot_huge_lengths_are_refused_without_allocating() {
        let good = small_snapshot();
        let name = file_name(200, 4);
        // A conf state length and a data length far past the file size: refused from the file
        // size alone (an allocation of that size would abort the test).
        let mut bad = good.clone();
        bad[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_refused(&name, &bad, "torn");
        // A frame length past the limit or the file: refused before anything that size is
        // allocated.
        let cs_len = u32::from_le_bytes(good[28..32].try_into().unwrap()) as usize;
        let at = PREFIX_LEN as usize + cs_len;
        for huge in [u32::MAX, MAX_FRAME as u32 + 1] {
            let mut bad = good.clone();
            bad[at..at + 4].copy_from_slice(&huge.to_le_bytes());
            assert_refused(&name, &bad, "more than the");
        }
        let mut bad = good.clone();
        bad[at..at + 4].copy_from_slice(&(good.len() as u32).to_le_bytes());
        assert_refused(&name, &bad, "torn");
        // The trailer's data length must be what the frames hold (the CRC is made to match).
        let mut bad = good.clone();
        let end = bad.len();
        bad[end - 12..end - 4].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let crc = crc32fast::hash(&bad[..end - 4]);
        bad[end - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_refused(&name, &bad, "the trailer says");
    }

    #[test]
    fn snapshot_renamed_to_another_index_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        store.save(100, 3, &conf(&[1]), b"older state").unwrap();
        let newer = store
            .save(200, 4, &conf(&[1]), b"newer state")
            .unwrap()
            .path;
        let bytes = fs::read(&newer).unwrap();
        fs::remove_file(&newer).unwrap();
        assert_refused(
            &file_name(300, 4),
            &bytes,
            "the file name says index 300 term 4",
        );
        assert_refused(
            &file_name(200, 5),
            &bytes,
            "but the header says index 200 term 4",
        );
    }

    #[test]
    fn snapshot_all_corrupt_then_none_and_corrupt_name_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let a = store.save(1, 1, &conf(&[1]), b"a").unwrap().path;
        let b = store.save(2, 1, &conf(&[1]), b"b").unwrap().path;
        fs::write(&a, b"garbage").unwrap();
        fs::write(&b, b"garbage").unwrap();
        fs::write(corrupt_path(&b, 0), b"an earlier refusal").unwrap();
        assert_eq!(store.load_newest().unwrap(), None);
        assert!(store.list().unwrap().is_empty());
        assert!(corrupt_path(&a, 0).exists());
        assert_eq!(
            fs::read(corrupt_path(&b, 0)).unwrap(),
            b"an earlier refusal"
        );
        assert_eq!(fs::read(corrupt_path(&b, 1)).unwrap(), b"garbage");
    }

    #[test]
    fn snapshot_prune_skips_a_corrupt_older_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        store.save(10, 1, &conf(&[1]), b"10").unwrap();
        let twenty = store.save(20, 1, &conf(&[1]), b"20").unwrap().path;
        // After a restart the store has checked nothing; the file at 20 rots.
        fs::write(&twenty, b"rotten").unwrap();
        let (store, lines) = open(tmp.path());
        store.save(30, 1, &conf(&[1]), b"30").unwrap();
        // 20 is refused while pruning, so 10 stays as the second valid snapshot.
        let listed: Vec<_> = store.list().unwrap().iter().map(|i| i.index).collect();
        assert_eq!(listed, [10, 30]);
        assert!(corrupt_path(&twenty, 0).exists());
        assert!(lines.lock().unwrap().iter().any(|l| l.starts_with("ERRO")));
    }

    /// On a disk that loses power in the middle of a save (at its temp file, its rename, its
    /// directory sync or its pruning), the store comes back with the old snapshot or the new one,
    /// whole, never a torn one.
    #[test]
    fn a_save_cut_by_power_loss_leaves_the_old_snapshot_or_the_new_one() {
        use crate::disk::memory::MemDisk;
        let mut outcomes = HashSet::new();
        for seed in 0..80u64 {
            let disk = MemDisk::new("n1", seed);
            let logger = crate::logging::discard();
            let store = SnapshotStore::in_dir(disk.snapshot_dir(), logger.clone()).unwrap();
            store.save(10, 1, &conf(&[1]), b"ten").unwrap();
            disk.crash_at_write(seed % 5);
            let saved = store.save(20, 1, &conf(&[1]), b"twenty").is_ok();
            disk.power_loss();
            disk.power_on();
            let store = SnapshotStore::in_dir(disk.snapshot_dir(), logger).unwrap();
            let loaded = store.load_newest().unwrap().expect("a snapshot");
            match (loaded.index, loaded.data.as_slice()) {
                (10, b"ten") => assert!(!saved, "seed {seed}: a completed save was lost"),
                (20, b"twenty") => {}
                other => panic!("seed {seed}: {other:?}"),
            }
            outcomes.insert(loaded.index);
        }
        assert_eq!(outcomes, HashSet::from([10, 20]));
    }

    #[test]
    fn snapshot_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let missing = store.dir().join(file_name(1, 1));
        let err = store.load(&missing).unwrap_err();
        assert!(matches!(err, SnapshotError::Io { .. }));
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let odd = store.dir().join("not-a-snapshot.bin");
        let err = store.load(&odd).unwrap_err();
        assert!(err.to_string().contains("not-a-snapshot.bin"), "{err}");
        assert!(
            err.to_string().contains("snap-<index:020>-<term:020>.snap"),
            "{err}"
        );
    }

    #[test]
    fn snapshot_parse_name() {
        assert_eq!(parse_name(&file_name(0, 0)), Some((0, 0)));
        assert_eq!(
            parse_name(&file_name(u64::MAX, u64::MAX)),
            Some((u64::MAX, u64::MAX))
        );
        for bad in [
            "snap-99999999999999999999-00000000000000000001.snap",
            "snap-+0000000000000000001-00000000000000000001.snap",
            "snap-00000000000000000001-00000000000000000001.snap.tmp",
            "snap-00000000000000000001_00000000000000000001.snap",
            "snap-0000000000000000001-00000000000000000001.snap",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn snapshot_100_mb_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let data: Vec<u8> = (0..100u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let start = Instant::now();
        // Written in odd-sized pieces, as an encoder does.
        let saved = store
            .save_with(1 << 40, 9, &conf(&[1, 2, 3]), |w| {
                for piece in data.chunks(77_777) {
                    w.write_all(piece)?;
                }
                Ok(())
            })
            .unwrap();
        let saved_in = start.elapsed();
        let start = Instant::now();
        let loaded = store.load_newest().unwrap().unwrap();
        let loaded_in = start.elapsed();
        eprintln!("100 MB snapshot: save {saved_in:?}, load {loaded_in:?}");
        assert_eq!(loaded.index, 1 << 40);
        assert_eq!(loaded.path, saved.path);
        assert!(loaded.data == data);
        let frames = data.len().div_ceil(MAX_FRAME) as u64;
        assert_eq!(
            fs::metadata(&saved.path).unwrap().len(),
            PREFIX_LEN
                + conf(&[1, 2, 3]).write_to_bytes().unwrap().len() as u64
                + frames * 8
                + data.len() as u64
                + 4
                + 8
                + 4
        );
        assert_eq!(saved.size, fs::metadata(&saved.path).unwrap().len());
    }

    /// A version 1 file: prefix, data length, the data in one piece, CRC-32 of all before it.
    fn v1_file(index: u64, term: u64, cs: &ConfState, data: &[u8]) -> Vec<u8> {
        let cs = cs.write_to_bytes().unwrap();
        let mut file = Vec::new();
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&LEGACY_VERSION.to_le_bytes());
        file.extend_from_slice(&index.to_le_bytes());
        file.extend_from_slice(&term.to_le_bytes());
        file.extend_from_slice(&(cs.len() as u32).to_le_bytes());
        file.extend_from_slice(&cs);
        file.extend_from_slice(&(data.len() as u64).to_le_bytes());
        file.extend_from_slice(data);
        let crc = crc32fast::hash(&file);
        file.extend_from_slice(&crc.to_le_bytes());
        file
    }

    /// A version 1 file from a peer is refused (it would be read whole into memory).
    #[test]
    fn snapshot_received_version_1_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let file = v1_file(70, 3, &conf(&[1, 2]), b"data");
        let crc = u32::from_le_bytes(file[file.len() - 4..].try_into().unwrap());
        let desc = Descriptor {
            index: 70,
            term: 3,
            size: file.len() as u64,
            crc,
        };
        let mut out = store.receive(&desc, 1).unwrap();
        out.write_all(&file).unwrap();
        out.finish(true).unwrap();
        let err = store.check_received(&desc, 1, read_all).unwrap_err();
        assert!(err.to_string().contains("only version 2"), "{err}");
        assert!(store.install_received(&desc).is_err());
    }

    /// A version 1 file (the state in one piece) written by an older build still loads.
    #[test]
    fn snapshot_version_1_files_still_load() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let data = b"an old state";
        let file = v1_file(5, 2, &conf(&[1, 2]), data);
        fs::write(store.dir().join(file_name(5, 2)), &file).unwrap();
        let loaded = store.load_newest().unwrap().unwrap();
        assert_eq!((loaded.index, loaded.term), (5, 2));
        assert_eq!(loaded.data, data);
        // A torn one is refused like any other.
        fs::write(store.dir().join(file_name(6, 2)), &file[..file.len() - 1]).unwrap();
        assert_eq!(store.load_newest().unwrap().unwrap().index, 5);
    }

    /// A state the decoder refuses makes its file refused (and the older one used); what the
    /// decoder returned is used only for a file that passed every check.
    #[test]
    fn snapshot_load_with_a_decoder() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        store.save(10, 1, &conf(&[1]), b"good").unwrap();
        store.save(20, 1, &conf(&[1]), b"bad!").unwrap();
        let decode = |r: &mut dyn Read, _: u64| {
            let mut s = String::new();
            r.read_to_string(&mut s).map_err(|e| e.to_string())?;
            if s == "bad!" {
                return Err("not a state".to_string());
            }
            Ok(s)
        };
        let (meta, state) = store.load_newest_with(decode).unwrap().unwrap();
        assert_eq!((meta.index, state.as_str()), (10, "good"));
        assert!(corrupt_path(&store.dir().join(file_name(20, 1)), 0).exists());
        // A decoder that stops early does not skip the checks of the rest of the file.
        let big: Vec<u8> = (0..3 * MAX_FRAME).map(|i| i as u8).collect();
        let saved = store.save(30, 1, &conf(&[1]), &big).unwrap();
        let mut bytes = fs::read(&saved.path).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 1;
        fs::write(&saved.path, &bytes).unwrap();
        let first_byte = |r: &mut dyn Read, _: u64| {
            let mut b = [0u8; 1];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            Ok(b[0])
        };
        let (meta, _) = store.load_newest_with(first_byte).unwrap().unwrap();
        assert_eq!(meta.index, 10);
    }

    /// A received file: written in pieces into its part file, checked against its descriptor,
    /// then installed; a file that is not the one described is refused and removed.
    #[test]
    fn snapshot_receive_check_install() {
        let tmp = tempfile::tempdir().unwrap();
        let (leader, _) = open(&tmp.path().join("leader"));
        let state: Vec<u8> = (0..2 * MAX_FRAME + 5).map(|i| (i * 7) as u8).collect();
        let saved = leader.save(50, 3, &conf(&[1, 2]), &state).unwrap();
        let desc = saved.descriptor();
        let bytes = fs::read(&saved.path).unwrap();

        let (follower, _) = open(&tmp.path().join("follower"));
        follower.save(10, 1, &conf(&[1, 2]), b"old").unwrap();
        let mut out = follower.receive(&desc, 1).unwrap();
        for piece in bytes.chunks(100_000) {
            out.write_all(piece).unwrap();
        }
        out.finish(true).unwrap();
        // Not a snapshot until installed, and not installable until checked.
        assert_eq!(follower.list().unwrap().len(), 1);
        assert!(follower.install_received(&desc).is_err());
        let (meta, data) = follower.check_received(&desc, 1, read_all).unwrap();
        assert_eq!((meta.index, meta.crc), (50, desc.crc));
        assert_eq!(data, state);
        follower.install_received(&desc).unwrap();
        let loaded = follower.load_newest().unwrap().unwrap();
        assert_eq!((loaded.index, loaded.data), (50, state.clone()));

        // Another file under the same descriptor (one byte changed, CRCs made to match) is
        // refused by the descriptor's checksum, and removed.
        let (other, _) = open(&tmp.path().join("other"));
        let mut changed = state.clone();
        changed[0] ^= 1;
        let other_saved = other.save(60, 3, &conf(&[1, 2]), &changed).unwrap();
        let lie = Descriptor {
            crc: desc.crc,
            ..other_saved.descriptor()
        };
        let mut out = follower.receive(&lie, 2).unwrap();
        out.write_all(&fs::read(&other_saved.path).unwrap())
            .unwrap();
        out.finish(true).unwrap();
        let err = follower.check_received(&lie, 2, read_all).unwrap_err();
        assert!(err.to_string().contains("the leader described"), "{err}");
        assert!(follower.install_received(&lie).is_err());
        // A restart removes a part file left behind.
        let _ = follower.receive(&desc, 4).unwrap();
        let (follower, _) = open(&tmp.path().join("follower"));
        assert!(
            !names(follower.dir()).iter().any(|n| n.ends_with(".part")),
            "{:?}",
            names(follower.dir())
        );
    }
}
