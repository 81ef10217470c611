//! Loopback ports for dev clusters, leased for as long as the cluster lives.
//!
//! A dev cluster picks its nodes' ports once and keeps them: a node that is killed and started
//! again (by a test, a benchmark or the chaos nemesis) must come back on the same ports, because
//! every other node and client knows it by them. Between the kill and the restart nothing is bound
//! there, so three things could take such a port meanwhile, and each is shut out:
//!
//! - **Another dev cluster**, in this process or another one (test runners run test binaries in
//!   parallel processes). Every port handed out is *leased*: an exclusive advisory lock
//!   (`flock`) on the file `<temp dir>/raftnode-dev-ports/<port>.lock`, held by the
//!   [`PortLease`] for the cluster's lifetime. An allocator skips every port whose file is locked.
//!   The kernel drops a lock when its holder's file is closed, including when the process dies,
//!   so a crashed test never strands a port (its file stays behind, unlocked and harmless, until
//!   the port is next leased and released). (`flock` locks belong to the open file, not the
//!   process: two leases of one port conflict inside one process too.)
//! - **The kernel, for an outgoing connection** (a client's, or a proxy's): `connect` picks its
//!   local port from the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), so leases
//!   come from outside it (from 10000 up to the range's start, or above its end), never from
//!   binding port 0. Where the ephemeral range leaves no room, ports are the kernel's choice
//!   (port 0) and only the first guarantee holds.
//! - **Any other program**: before a port is leased it is bound once on `127.0.0.1` (and
//!   released for the node to bind); a port something listens on is skipped. A program outside
//!   this scheme may still bind a leased port while its node is down: that is the one gap.
//!
//! Releasing a lease removes its file while still holding the lock; an allocator that opened the
//! file just before checks, once it holds the lock, that the path still names the file it locked,
//! and starts over if not, so two leases of one port can never both be held.
//!
//! Leases are per machine only as far as processes share the temp dir (`TMPDIR`); the lock
//! directory is created world-writable and sticky (like `/tmp`) so that dev clusters of
//! different users stay apart too.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rand::Rng as _;

/// The lowest port a lease is taken from (clear of well-known ports and of the fixed ports of
/// the shipped cluster files, 7101-7205).
const FLOOR: u16 = 10_000;

/// A range narrower than this is not worth searching (ports come from the kernel instead).
const MIN_RANGE: u16 = 1_000;

/// How many ports one allocation tries before it gives up.
const ATTEMPTS: usize = 20_000;

/// Why no port could be leased.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The lock directory or a lock file could not be used.
    #[error("port lock {path}: {source}")]
    Lock {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Every port tried was taken.
    #[error("no free loopback port found in {tried} tries over {range}")]
    Exhausted {
        /// How many ports were tried.
        tried: usize,
        /// Where (a port range, or the kernel's choice).
        range: String,
    },
}

/// One port, reserved for this holder until it is dropped. See the module docs.
#[derive(Debug)]
pub struct PortLease {
    /// The port.
    port: u16,
    /// Its lock file, open and locked: the lease itself.
    lock: File,
    /// The lock file's path, removed on release.
    path: PathBuf,
}

impl PortLease {
    /// The leased port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `tcp://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Leases `port` itself: `None` when another lease holds it or something listens on it.
    pub fn claim(port: u16) -> Result<Option<PortLease>, PortError> {
        PortLease::claim_in(&lock_dir()?, port)
    }

    fn claim_in(dir: &Path, port: u16) -> Result<Option<PortLease>, PortError> {
        let path = dir.join(format!("{port}.lock"));
        let lock_error = |source| PortError::Lock {
            path: path.clone(),
            source,
        };
        // A few rounds at most: each one that fails lost a race with a release of this port.
        for _ in 0..8 {
            let lock = open_lock_file(&path).map_err(lock_error)?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(lock_error(e)),
            }
            let locked = lock.metadata().map_err(lock_error)?;
            let still_there = std::fs::metadata(&path)
                .is_ok_and(|now| now.ino() == locked.ino() && now.dev() == locked.dev());
            if !still_there {
                // Released (and removed) between our open and our lock: try a fresh file.
                continue;
            }
            let lease = PortLease {
                port,
                lock,
                path: path.clone(),
            };
            // Something outside the kit may listen there; the probe closes at once.
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                return Ok(None);
            }
            return Ok(Some(lease));
        }
        Ok(None)
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        // Removed while still locked, then unlocked; see the module docs. (A lock file another
        // user created cannot be removed here, in a sticky directory: it stays, harmlessly.)
        let _ = std::fs::remove_file(&self.path);
        let _ = self.lock.unlock();
    }
}

/// Leases one loopback port (see the module docs).
pub fn lease_port() -> Result<PortLease, PortError> {
    let mut leases = lease_ports(1)?;
    Ok(leases.remove(0))
}

/// Leases `n` distinct loopback ports (see the module docs).
pub fn lease_ports(n: usize) -> Result<Vec<PortLease>, PortError> {
    let dir = lock_dir()?;
    let range = quiet_range(ephemeral_range());
    let mut leases: Vec<PortLease> = Vec::with_capacity(n);
    let mut rng = rand::thread_rng();
    let mut tried = 0;
    while leases.len() < n {
        if tried == ATTEMPTS {
            let range = range
                .as_ref()
                .map_or("the kernel's choice of ports".into(), |r| {
                    format!("ports {}-{}", r.start(), r.end())
                });
            return Err(PortError::Exhausted { tried, range });
        }
        tried += 1;
        let port = match &range {
            Some(range) => rng.gen_range(range.clone()),
            None => match kernel_port() {
                Some(port) => port,
                None => continue,
            },
        };
        // (A port this call already holds is refused by its own lock.)
        if let Some(lease) = PortLease::claim_in(&dir, port)? {
            leases.push(lease);
        }
    }
    Ok(leases)
}

/// A port the kernel picks for a listener on 127.0.0.1, released at once.
fn kernel_port() -> Option<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    listener.local_addr().ok().map(|a| a.port())
}

/// The directory of the lock files, created (world-writable, sticky) if missing.
pub fn lock_dir() -> Result<PathBuf, PortError> {
    let dir = std::env::temp_dir().join("raftnode-dev-ports");
    let failed = |source| PortError::Lock {
        path: dir.clone(),
        source,
    };
    match std::fs::create_dir(&dir) {
        Ok(()) => {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))
                .map_err(failed)?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(e)),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(failed)?;
    if !meta.is_dir() {
        return Err(failed(io::Error::other("exists and is not a directory")));
    }
    Ok(dir)
}

/// Opens (creating) a lock file; read-only if it is another user's (a lock needs no write).
fn open_lock_file(path: &Path) -> io::Result<File> {
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(path);
    match created {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(path),
        other => other,
    }
}

/// The kernel's ephemeral port range (where `connect` picks local ports).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The ports outside the ephemeral range `(low, high)` and above [`FLOOR`]: below the range if
/// there is room, else above it; `None` if neither side has [`MIN_RANGE`] ports.
fn quiet_range((low, high): (u16, u16)) -> Option<RangeInclusive<u16>> {
    if low > FLOOR && low - FLOOR >= MIN_RANGE {
        return Some(FLOOR..=low - 1);
    }
    let start = high.saturating_add(1).max(FLOOR);
    (u16::MAX - start >= MIN_RANGE).then_some(start..=u16::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::*;

    fn ports(leases: &[PortLease]) -> BTreeSet<u16> {
        leases.iter().map(PortLease::port).collect()
    }

    #[test]
    fn leases_avoid_the_ephemeral_range() {
        assert_eq!(quiet_range((32768, 60999)), Some(10_000..=32767));
        assert_eq!(quiet_range((50000, 65535)), Some(10_000..=49999));
        assert_eq!(quiet_range((1024, 40000)), Some(40001..=65535));
        assert_eq!(quiet_range((10500, 65000)), None);
        assert_eq!(quiet_range((1024, 65535)), None);
        let (low, high) = ephemeral_range();
        let leased = ports(&lease_ports(20).unwrap());
        assert_eq!(leased.len(), 20);
        if quiet_range((low, high)).is_some() {
            for port in leased {
                assert!(port >= FLOOR && !(low..=high).contains(&port), "{port}");
            }
        }
    }

    #[test]
    fn allocations_at_once_never_overlap() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| lease_ports(50).unwrap()))
            .collect();
        let all: Vec<Vec<PortLease>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut seen = BTreeSet::new();
        for leases in &all {
            assert_eq!(ports(leases).len(), 50);
            for p in ports(leases) {
                assert!(seen.insert(p), "port {p} leased twice");
            }
        }
    }

    #[test]
    fn a_held_port_is_refused_and_a_released_one_comes_back() {
        let lease = lease_port().unwrap();
        let port = lease.port();
        assert!(PortLease::claim(port).unwrap().is_none(), "leased twice");
        drop(lease);
        let again = PortLease::claim(port)
            .unwrap()
            .expect("free again after release");
        assert_eq!(again.port(), port);
    }

    #[test]
    fn a_port_something_listens_on_is_skipped() {
        let lease = lease_port().unwrap();
        let port = lease.port();
        drop(lease);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        assert!(PortLease::claim(port).unwrap().is_none());
        drop(listener);
        assert!(PortLease::claim(port).unwrap().is_some());
    }

    /// Set in the helper process [`two_processes_never_share_a_port`] starts.
    const HELPER: &str = "RAFTNODE_PORT_LEASE_HELPER";

    /// This test's binary, run again as a helper that leases ports, prints them and holds them
    /// until its stdin closes (or it is killed); meanwhile this process must never get them, and
    /// once the helper is gone (SIGKILL: no goodbye) they are free again.
    #[test]
    fn two_processes_never_share_a_port() {
        if std::env::var_os(HELPER).is_some() {
            let leases = lease_ports(40).unwrap();
            let list: Vec<String> = leases.iter().map(|l| l.port().to_string()).collect();
            println!("LEASED {}", list.join(" "));
            std::io::stdout().flush().unwrap();
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            return;
        }
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "devcluster::ports::tests::two_processes_never_share_a_port",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = helper.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // (libtest may have written the test's name on the same line.)
                if let Some((_, list)) = line.split_once("LEASED ") {
                    let _ = tx.send(list.to_string());
                }
            }
        });
        let theirs: BTreeSet<u16> = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(list) => list.split(' ').map(|p| p.parse().unwrap()).collect(),
            Err(e) => {
                let _ = helper.kill();
                let _ = helper.wait();
                panic!("the helper process named no ports: {e}");
            }
        };
        assert_eq!(theirs.len(), 40);
        let mine = lease_ports(200).unwrap();
        let overlap: Vec<u16> = ports(&mine).intersection(&theirs).copied().collect();
        let refused = theirs
            .iter()
            .all(|&p| PortLease::claim(p).unwrap().is_none());
        // SIGKILL: the kernel releases the helper's locks, nothing else does.
        let _ = helper.kill();
        let _ = helper.wait();
        assert!(overlap.is_empty(), "leased by both processes: {overlap:?}");
        assert!(refused, "a port the helper held was claimed here");
        // Reaped, so its files are closed and its locks gone: every port is free again.
        let back: Vec<PortLease> = theirs
            .iter()
            .filter_map(|&p| PortLease::claim(p).unwrap())
            .collect();
        assert_eq!(ports(&back), theirs);
    }
}
