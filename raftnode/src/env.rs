//! The node's environment: where it reads the time, where its background work runs, and how it
//! sends to its peers. Each is a small trait with one production implementation (the monotonic
//! clock, threads, the ZeroMQ [`Transport`](crate::transport::Transport)) and one in the
//! deterministic simulator (virtual time, a seeded queue of jobs, an in-memory network). The
//! disk's seams are in [`crate::disk`].
//!
//! Nothing here is consulted for correctness by anything but the node: the clock only paces
//! ticks, timeouts and cluster time (`crate::clock`), background work only computes what the
//! node then checks, and the network may lose, delay or reorder anything (raft expects that).

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use raft::eraftpb::Message;

/// The monotonic clock a node reads.
pub trait Clock: Send + Sync {
    /// Now, on this node's monotonic clock.
    fn now(&self) -> Instant;
}

/// The process's monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A piece of background work.
pub type Job = Box<dyn FnOnce() + Send>;

/// What kind of background work a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Encoding and writing a snapshot (seconds for a large state; one at a time).
    Snapshot,
    /// A digest of the space, or a scan its index cannot narrow (bounded by the node).
    HeavyRead,
}

/// Where the node's background work runs.
pub trait Background: Send + Sync {
    /// Runs `job` some time later, off the node's thread; an error says why it cannot.
    fn spawn(&self, work: Work, job: Job) -> Result<(), String>;
}

/// Production background work: a thread per snapshot, and a small pool for heavy reads.
pub struct Threads {
    heavy: Mutex<Sender<Job>>,
}

/// Worker threads for heavy reads.
const HEAVY_WORKERS: usize = 2;

impl Threads {
    /// Starts the heavy-read workers (they end when this is dropped).
    pub fn start() -> Arc<Threads> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..HEAVY_WORKERS {
            let rx = Arc::clone(&rx);
            let _ = std::thread::Builder::new()
                .name(format!("heavy-reads-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let Ok(rx) = rx.lock() else { return };
                            match rx.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        };
                        job();
                    }
                });
        }
        Arc::new(Threads {
            heavy: Mutex::new(tx),
        })
    }
}

impl Background for Threads {
    fn spawn(&self, work: Work, job: Job) -> Result<(), String> {
        match work {
            Work::Snapshot => std::thread::Builder::new()
                .name("snapshot-writer".into())
                .spawn(job)
                .map(|_| ())
                .map_err(|e| format!("cannot start the snapshot writer: {e}")),
            Work::HeavyRead => self
                .heavy
                .lock()
                .map_err(|_| "the heavy-read queue is poisoned".to_string())?
                .send(job)
                .map_err(|_| "the heavy-read workers have stopped".to_string()),
        }
    }
}

/// How a node sends raft messages to its peers. Sending never blocks and never fails: what
/// cannot be delivered is reported back into the node's inbox
/// ([`Report`](crate::transport::Report)), as raft expects of a lossy network.
pub trait Network: Send {
    /// Names this node's own raft endpoint in what it sends (so nodes that do not know it yet can
    /// answer).
    fn set_self_url(&mut self, url: String);
    /// Starts sending to peer `id` at `raft_url` (the same address again does nothing).
    fn add_peer(&mut self, id: u64, raft_url: String);
    /// Stops sending to peer `id`.
    fn remove_peer(&mut self, id: u64);
    /// Queues each message for the peer its `to` names.
    fn send(&mut self, msgs: Vec<Message>);
}

/// Draws a node's election timeout, in ticks, from `[min, max)`. raft-rs draws from the thread's
/// own random generator; a simulation replaces it with a seeded one so that runs repeat.
pub type ElectionDraw = Box<dyn FnMut(usize, usize) -> usize + Send>;

/// Everything a node talks to besides its disk.
pub struct Env {
    /// The monotonic clock.
    pub clock: Arc<dyn Clock>,
    /// Background work.
    pub background: Arc<dyn Background>,
    /// The peer network.
    pub network: Box<dyn Network>,
    /// Seeded election timeouts (`None`: raft-rs's own randomness).
    pub election_draw: Option<ElectionDraw>,
}
