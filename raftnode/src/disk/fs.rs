//! The production snapshot directory: a directory on the file system.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{FileReader, FileWriter, SnapshotDir};

/// The write buffer of a file being created.
const WRITE_BUFFER: usize = 1 << 20;

/// Written bytes after which a file being created is synced on the way: the disk writes a large
/// snapshot steadily as it is made, rather than all of it at the final fsync, which would hold
/// up the log's own small fsyncs on the same disk for as long.
const SYNC_EVERY: u64 = 8 << 20;

struct FsWriter {
    out: BufWriter<File>,
    unsynced: u64,
}

impl Write for FsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY {
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl FileWriter for FsWriter {
    fn finish(self: Box<Self>, sync: bool) -> io::Result<()> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        if sync {
            file.sync_all()?;
        }
        Ok(())
    }
}

/// A directory on the file system.
#[derive(Debug)]
pub struct FsDir {
    dir: PathBuf,
}

impl FsDir {
    /// The directory `dir`, created if it does not exist.
    pub fn create(dir: &Path) -> io::Result<FsDir> {
        fs::create_dir_all(dir)?;
        Ok(FsDir {
            dir: dir.to_path_buf(),
        })
    }
}

impl SnapshotDir for FsDir {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn list(&self) -> io::Result<Vec<(String, u64)>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Follows symlinks, as opening the file does.
            match fs::metadata(entry.path()) {
                Ok(meta) if meta.is_file() => files.push((name, meta.len())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(files)
    }

    fn open(&self, name: &str) -> io::Result<FileReader> {
        let file = File::open(self.dir.join(name))?;
        let len = file.metadata()?.len();
        Ok((Box::new(file), len))
    }

    fn write(&self, name: &str, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(name))?;
        for part in parts {
            file.write_all(part)?;
        }
        if sync {
            file.sync_all()?;
        }
        Ok(())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn FileWriter>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(name))?;
        Ok(Box::new(FsWriter {
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            unsynced: 0,
        }))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))
    }

    fn sync(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }
}
