//! The workload: concurrent clients looping random tuple operations, every one recorded.
//!
//! Each client task is its own [`Client`] over every node's client endpoint and its own process
//! in the history. It writes unique tuples `("k", KEY, N)` over a few keys, takes them with
//! blocking `in` and non-blocking `inp`, reads them with `rd`/`rdp` (with an `after` id it has
//! seen) and `rd_all`, and races `cas` on `("cas", KEY, V)` (occasionally taking the cas tuple
//! with `inp` so that a `cas` can insert again).
//!
//! Every operation is an invoke followed by exactly one completion: `ok` with its result
//! (a blocking operation whose timeout passed is `ok` with no tuple: the server's definite
//! answer), `fail` when it certainly was not applied (`Invalid`, `TooLarge`, `SessionExpired`),
//! and `info` otherwise (no leader within the retry window, a transport or protocol error: it may
//! or may not have taken effect). After an `info` the task continues as a new process with a new
//! client (a fresh session), as the old operation may still be pending.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftnode::client::{Client, ClientError, ClientOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tuplespace::{Query, Tuple, TupleId};

use super::topology::SharedMembers;
use crate::history::{self, Recorder, Value};
pub use crate::ops::{Mix, is_definite};
use crate::ops::{Op, Planner};

/// Workload settings.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Concurrent clients.
    pub clients: usize,
    /// Keys of the `("k", KEY, N)` tuples.
    pub keys: i64,
    /// Keys of the `("cas", KEY, V)` tuples.
    pub cas_keys: i64,
    /// Pause between one client's operations, at most this (uniform from zero).
    pub think: Duration,
    /// The client's retry window: an operation with no definite answer by then ends `info`.
    pub retry_window: Duration,
    /// Which operations.
    pub mix: Mix,
    /// Seeds the clients' choices.
    pub seed: u64,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            clients: 16,
            keys: 8,
            cas_keys: 3,
            think: Duration::from_millis(20),
            retry_window: Duration::from_secs(5),
            mix: Mix::Full,
            seed: 0,
        }
    }
}

/// Counters per operation and outcome, and the acknowledged writes' times.
#[derive(Default)]
pub struct Stats {
    counts: Mutex<BTreeMap<history::Op, [u64; 4]>>,
    /// (invoked, completed) of every acknowledged write (`out`, `in`, `inp`, `cas`: the
    /// operations that go through the raft log).
    acked_writes: Mutex<Vec<(Instant, Instant)>>,
}

/// Outcome columns of [`Stats`].
const INVOKED: usize = 0;
const OK: usize = 1;
const FAIL: usize = 2;
const INFO: usize = 3;

impl Stats {
    fn bump(&self, f: history::Op, column: usize) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.entry(f).or_default()[column] += 1;
    }

    /// Per operation: invoked, ok, fail, info.
    pub fn by_op(&self) -> BTreeMap<history::Op, [u64; 4]> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Totals: invoked, ok, fail, info.
    pub fn totals(&self) -> [u64; 4] {
        let mut t = [0; 4];
        for c in self.by_op().values() {
            for i in 0..4 {
                t[i] += c[i];
            }
        }
        t
    }

    /// (invoked, completed) of every acknowledged write, in completion order.
    pub fn acked_writes(&self) -> Vec<(Instant, Instant)> {
        let mut v = self
            .acked_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v.sort_by_key(|&(_, done)| done);
        v
    }
}

/// The running clients.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl Workload {
    /// Starts `options.clients` client tasks on the current runtime.
    pub fn start(options: WorkloadOptions, members: SharedMembers, recorder: Recorder) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let next_value = Arc::new(AtomicI64::new(1));
        let options = Arc::new(options);
        let tasks = (0..options.clients)
            .map(|index| {
                let worker = Worker {
                    index: index as u64,
                    options: options.clone(),
                    members: members.clone(),
                    recorder: recorder.clone(),
                    stats: stats.clone(),
                    stop: stop.clone(),
                    planner: Planner::new(
                        options.keys,
                        options.cas_keys,
                        options.mix,
                        next_value.clone(),
                    ),
                    rng: StdRng::seed_from_u64(
                        options.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ),
                };
                tokio::spawn(worker.run())
            })
            .collect();
        Workload { stop, tasks, stats }
    }

    /// The counters so far.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Tells the clients to stop and waits (up to `grace`) for their operations in flight to
    /// complete; a task still running then is aborted (its operation stays without a completion,
    /// which the history reads as `info`).
    pub async fn stop(self, grace: Duration) -> Arc<Stats> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + grace;
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
        self.stats
    }
}

/// Runs one operation; `Ok` is the completion value (with the ids it saw).
async fn execute(client: &mut Client, op: &Op) -> Result<(Value, Vec<TupleId>), ClientError> {
    let found = |r: Option<(TupleId, Tuple)>| match r {
        Some((id, t)) => (Value::found(Some((id, &t))), vec![id]),
        None => (Value::none(), vec![]),
    };
    let timed_out = |r: Result<(TupleId, Tuple), ClientError>| match r {
        Ok(e) => Ok(found(Some(e))),
        // The server's definite answer: no matching tuple before the timeout.
        Err(ClientError::Timeout) => Ok(found(None)),
        Err(e) => Err(e),
    };
    match op {
        Op::Out(t) => {
            let id = client.out(t).await?;
            Ok((Value::id(Some(id)), vec![id]))
        }
        Op::In(p, timeout) => timed_out(client.in_(p, *timeout).await),
        Op::Inp(p) => Ok(found(client.inp(p).await?)),
        Op::Rd(p, after, timeout) => timed_out(client.rd(p, *after, *timeout).await),
        Op::Rdp(p, after) => Ok(found(client.rdp(p, *after).await?)),
        Op::RdAll(p) => {
            let items = client.rd_all(p, &Query::default()).await?;
            let ids = items.iter().map(|(id, _)| *id).collect();
            Ok((Value::items(items.iter().map(|(id, t)| (*id, t))), ids))
        }
        Op::Cas(p, t) => Ok((Value::id(client.cas(p, t, None).await?), vec![])),
    }
}

struct Worker {
    index: u64,
    options: Arc<WorkloadOptions>,
    members: SharedMembers,
    recorder: Recorder,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    planner: Planner,
    rng: StdRng,
}

impl Worker {
    fn client(&self) -> Client {
        let options = ClientOptions {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(300),
            retry_window: self.options.retry_window,
            follow_leader: true,
        };
        let client = Client::with_options(self.members.client_endpoints(), options);
        match self.members.admin() {
            Some(admin) => client.with_identity(admin),
            None => client,
        }
    }

    async fn run(mut self) {
        let clients = self.options.clients as u64;
        let mut process = self.index;
        let mut version = self.members.version();
        let mut client = self.client();
        while !self.stop.load(Ordering::Relaxed) {
            if self.members.version() != version {
                version = self.members.version();
                client = self.client();
            }
            let (op, key) = self.planner.plan(&mut self.rng);
            let f = op.f();
            self.stats.bump(f, INVOKED);
            let invoked = Instant::now();
            let pending = self.recorder.invoke(process, f, op.value());
            match execute(&mut client, &op).await {
                Ok((value, ids)) => {
                    let done = Instant::now();
                    self.recorder.ok(pending, value);
                    self.stats.bump(f, OK);
                    if let Some(key) = key {
                        self.planner.saw(key, ids);
                    }
                    if op.is_logged() {
                        self.stats
                            .acked_writes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((invoked, done));
                    }
                }
                Err(e) if is_definite(&e) => {
                    self.recorder.fail(pending, Value::error(&e));
                    self.stats.bump(f, FAIL);
                }
                Err(e) => {
                    self.recorder.info(pending, Value::error(&e));
                    self.stats.bump(f, INFO);
                    // The operation may still be pending: go on as a new process, new session.
                    process += clients;
                    client = self.client();
                }
            }
            let think = self.options.think.as_millis() as u64;
            if think > 0 {
                let pause = self.rng.gen_range(0..=think);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
}
