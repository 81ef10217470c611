//! The load: C concurrent clients, each with its own connection and session, doing one kind of
//! operation for a duration or an operation count, every latency recorded; a progress line on
//! stderr every second. Used by the throughput run, its preloads, and `bench catchup`'s load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftnode::client::{Client, ClientError, ClientOptions};
use tuplespace::{Field, Kind, Template, Tuple, TupleId, Value, codec, tuple};

use crate::blog::Blog;
use crate::error::Error;
use crate::model::PostFilter;

use super::histogram::Histogram;

/// How long a blocking `in` or `rd` waits for a match before the bench calls the tuples gone.
pub const BLOCK: Duration = Duration::from_secs(1);
/// The most distinct error messages kept for the report.
const KEPT_ERRORS: usize = 5;

/// When a load ends.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After measuring this long.
    For(Duration),
    /// After this many measured operations.
    Ops(u64),
}

/// What each client does.
pub enum Work {
    /// `out` of `(prefix, client, seq, payload)`.
    Out {
        /// The first field.
        prefix: &'static str,
    },
    /// Blocking `in` of the oldest `(prefix, ?int, ?int, ?str)`.
    In {
        /// The template.
        template: Template,
    },
    /// `rd` (blocking) or `rdp` of a random preloaded tuple: the oldest match of
    /// `(prefix, ?int, ?int, ?str)` after a random id in `first..=last`.
    Rd {
        /// The template.
        template: Template,
        /// The lowest preloaded id.
        first: TupleId,
        /// The highest preloaded id.
        last: TupleId,
        /// `rd` (true) or `rdp`.
        blocking: bool,
    },
    /// The microblog: post 20%, read 60% (a random user's newest 20), timeline 20% (your own).
    Mix {
        /// The users; client `i` is `users[i % len]`.
        users: Vec<String>,
    },
    /// Microblog posts only (the mix's preload).
    Posts {
        /// As for `Mix`.
        users: Vec<String>,
    },
}

/// What a load does: the work and the data it writes.
pub struct Plan {
    /// The operation.
    pub work: Work,
    /// The string field that makes a tuple `size` bytes.
    pub payload: String,
    /// A post's text for the mix.
    pub text: String,
    /// Who the clients sign as: client `i` as `signers[i % len]` (empty: unsigned, for a
    /// cluster whose policy allows anonymous writes). For the mix, `signers[i]` is `users[i]`.
    pub signers: Arc<Vec<raftnode::identity::Identity>>,
    /// Counts every measured success as it happens (for a timeline of the load), if set.
    pub progress: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// The names of the latency classes of a work: one, or the mix's three.
fn kind_names(work: &Work) -> &'static [&'static str] {
    match work {
        Work::Out { .. } => &["out"],
        Work::In { .. } => &["in"],
        Work::Rd { blocking: true, .. } => &["rd"],
        Work::Rd { .. } => &["rdp"],
        Work::Mix { .. } => &["post", "read", "timeline"],
        Work::Posts { .. } => &["post"],
    }
}

/// A string field sized so that `(prefix, client, seq, payload)` encodes to about `size` bytes.
pub fn payload_for(prefix: &str, size: usize) -> String {
    let encoded = |n: usize| {
        codec::tuple_to_bytes(tuple![prefix, 1_000i64, 1_000_000i64, "x".repeat(n)].fields()).len()
    };
    let mut n = size.saturating_sub(encoded(0));
    while n > 0 && encoded(n) > size {
        n -= 1;
    }
    "x".repeat(n)
}

/// The encoded size of a load's tuple.
pub fn encoded_size(prefix: &str, payload: &str) -> usize {
    codec::tuple_to_bytes(tuple![prefix, 1_000i64, 1_000_000i64, payload].fields()).len()
}

/// `(prefix, ?int, ?int, ?str)`.
pub fn template_for(prefix: &str) -> Template {
    Template::new(vec![
        Field::Literal(Value::from(prefix)),
        Field::Formal(Kind::Int),
        Field::Formal(Kind::Int),
        Field::Formal(Kind::Str),
    ])
}

/// A small fast random number generator (xorshift64*): the bench needs no more.
pub struct Rng(u64);

impl Rng {
    /// Seeded; never zero.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (> 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Counters every client and the progress line share.
struct Shared {
    measure_from: Instant,
    until: Option<Instant>,
    max_ops: Option<u64>,
    claimed: AtomicU64,
    ops: AtomicU64,
    warm_ops: AtomicU64,
    errors: AtomicU64,
    warm_errors: AtomicU64,
    exhausted: AtomicBool,
    first_errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, measuring: bool, message: String) {
        if measuring {
            self.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.warm_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut kept) = self.first_errors.lock()
            && kept.len() < KEPT_ERRORS
            && !kept.contains(&message)
        {
            kept.push(message);
        }
    }
}

/// What one client measured.
struct ClientResult {
    kinds: Vec<Histogram>,
    ids: Option<(TupleId, TupleId)>,
    /// When its last measured operation ended.
    last_done: Option<Instant>,
}

/// What a load measured.
pub struct Outcome {
    /// Every measured latency.
    pub all: Histogram,
    /// By kind (one entry, or the mix's three), with their names.
    pub kinds: Vec<(&'static str, Histogram)>,
    /// Measured operations that succeeded.
    pub ops: u64,
    /// Measured operations that failed.
    pub errors: u64,
    /// Operations that failed during the warmup.
    pub warm_errors: u64,
    /// From the end of the warmup to the last client's end.
    pub measured: Duration,
    /// A client found nothing left to take (`in`) and stopped.
    pub exhausted: bool,
    /// The first few distinct error messages.
    pub first_errors: Vec<String>,
    /// The lowest and highest tuple id written (`out` only).
    pub ids: Option<(TupleId, TupleId)>,
}

impl Outcome {
    /// Measured operations per second.
    pub fn rate(&self) -> f64 {
        let secs = self.measured.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }
}

/// Runs `clients` clients doing `plan` against `endpoints`: a warmup (not measured), then until
/// `stop`. `label` starts the progress lines.
pub async fn drive(
    endpoints: &[String],
    options: &ClientOptions,
    plan: Arc<Plan>,
    clients: u64,
    stop: Stop,
    warmup: Duration,
    label: &str,
) -> Outcome {
    let start = Instant::now();
    let measure_from = start + warmup;
    let shared = Arc::new(Shared {
        measure_from,
        until: match stop {
            Stop::For(d) => Some(measure_from + d),
            Stop::Ops(_) => None,
        },
        max_ops: match stop {
            Stop::Ops(n) => Some(n),
            Stop::For(_) => None,
        },
        claimed: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        warm_ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        warm_errors: AtomicU64::new(0),
        exhausted: AtomicBool::new(false),
        first_errors: Mutex::new(Vec::new()),
    });
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let mut client = Client::with_options(endpoints.to_vec(), options.clone());
        if !plan.signers.is_empty() {
            let signer = plan.signers[i as usize % plan.signers.len()].clone();
            client.set_identity(Some(signer));
        }
        let (plan, shared) = (plan.clone(), shared.clone());
        tasks.spawn(run_client(
            i,
            client,
            plan,
            shared,
            Rng::new(seed ^ (i + 1)),
        ));
    }
    let progress = tokio::spawn(progress(shared.clone(), label.to_string(), start));
    let names = kind_names(&plan.work);
    let mut kinds: Vec<Histogram> = names.iter().map(|_| Histogram::new()).collect();
    let mut ids: Option<(TupleId, TupleId)> = None;
    let mut last_done: Option<Instant> = None;
    while let Some(joined) = tasks.join_next().await {
        let Ok(result) = joined else { continue };
        last_done = last_done.max(result.last_done);
        for (k, h) in kinds.iter_mut().zip(&result.kinds) {
            k.merge(h);
        }
        if let Some((lo, hi)) = result.ids {
            ids = Some(ids.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
    }
    // The measured span ends with the last measured operation (not, say, with a client that
    // waited in vain for a tuple to take).
    let end = last_done.unwrap_or_else(Instant::now);
    progress.abort();
    let mut all = Histogram::new();
    for h in &kinds {
        all.merge(h);
    }
    let first_errors = shared
        .first_errors
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    Outcome {
        ops: all.count(),
        all,
        kinds: names.iter().copied().zip(kinds).collect(),
        errors: shared.errors.load(Ordering::Relaxed),
        warm_errors: shared.warm_errors.load(Ordering::Relaxed),
        measured: end.saturating_duration_since(measure_from),
        exhausted: shared.exhausted.load(Ordering::Relaxed),
        first_errors,
        ids,
    }
}

/// One progress line a second on stderr.
async fn progress(shared: Arc<Shared>, label: String, start: Instant) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last = (Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let errors = shared.errors.load(Ordering::Relaxed);
        if now < shared.measure_from + Duration::from_millis(100) {
            let ops = shared.warm_ops.load(Ordering::Relaxed);
            let warm_errors = shared.warm_errors.load(Ordering::Relaxed);
            eprintln!(
                "{label}: warmup {:>4.1}s  ops {ops:>9}  errors {warm_errors}",
                (now - start).as_secs_f64()
            );
            continue;
        }
        let ops = shared.ops.load(Ordering::Relaxed);
        let (then, ops_then) = if last.0 < shared.measure_from {
            (shared.measure_from, 0)
        } else {
            last
        };
        let secs = (now - then).as_secs_f64().max(1e-3);
        eprintln!(
            "{label}: {:>5.1}s  ops {ops:>9}  {:>8.0} ops/s  errors {errors}",
            (now - shared.measure_from).as_secs_f64(),
            (ops - ops_then) as f64 / secs
        );
        last = (now, ops);
    }
}

/// Why one operation did not count.
enum Miss {
    /// Nothing left to take: this client stops.
    Empty,
    /// A failure, counted as an error.
    Failed(String),
}

impl From<ClientError> for Miss {
    fn from(e: ClientError) -> Miss {
        Miss::Failed(e.to_string())
    }
}

impl From<Error> for Miss {
    fn from(e: Error) -> Miss {
        Miss::Failed(e.message)
    }
}

/// A client's connection: raw, or under the microblog.
enum Conn {
    Raw(Client),
    Blog(Blog<Client>),
}

async fn run_client(
    index: u64,
    client: Client,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut rng: Rng,
) -> ClientResult {
    let mut conn = match plan.work {
        Work::Mix { .. } | Work::Posts { .. } => Conn::Blog(Blog::new(client)),
        _ => Conn::Raw(client),
    };
    let mut kinds: Vec<Histogram> = kind_names(&plan.work)
        .iter()
        .map(|_| Histogram::new())
        .collect();
    let mut ids: Option<(TupleId, TupleId)> = None;
    let mut seq = 0u64;
    let mut last_done = None;
    loop {
        let now = Instant::now();
        let measuring = now >= shared.measure_from;
        if measuring {
            if shared.until.is_some_and(|until| now >= until) {
                break;
            }
            if let Some(max) = shared.max_ops
                && shared.claimed.fetch_add(1, Ordering::Relaxed) >= max
            {
                break;
            }
        }
        seq += 1;
        let started = Instant::now();
        let result = one(&mut conn, &plan, index, seq, &mut rng).await;
        let took = started.elapsed();
        if measuring && !matches!(result, Err(Miss::Empty)) {
            last_done = Some(started + took);
        }
        match result {
            Ok((kind, id)) => {
                if let Some(id) = id {
                    ids = Some(ids.map_or((id, id), |(a, b)| (a.min(id), b.max(id))));
                }
                if measuring {
                    kinds[kind].record(took);
                    shared.ops.fetch_add(1, Ordering::Relaxed);
                    if let Some(progress) = &plan.progress {
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    shared.warm_ops.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(Miss::Empty) => {
                shared.exhausted.store(true, Ordering::Relaxed);
                break;
            }
            Err(Miss::Failed(message)) => {
                shared.error(measuring, message);
                // The client already retried for its whole window; do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    ClientResult {
        kinds,
        ids,
        last_done,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One operation: which latency class it was, and the id it wrote (`out`).
async fn one(
    conn: &mut Conn,
    plan: &Plan,
    index: u64,
    seq: u64,
    rng: &mut Rng,
) -> Result<(usize, Option<TupleId>), Miss> {
    match (&plan.work, conn) {
        (Work::Out { prefix }, Conn::Raw(client)) => {
            let t: Tuple = tuple![*prefix, index as i64, seq as i64, plan.payload.as_str()];
            let id = client.out(&t).await?;
            Ok((0, Some(id)))
        }
        (Work::In { template }, Conn::Raw(client)) => match client.in_(template, BLOCK).await {
            Ok(_) => Ok((0, None)),
            Err(ClientError::Timeout) => Err(Miss::Empty),
            Err(e) => Err(e.into()),
        },
        (
            Work::Rd {
                template,
                first,
                last,
                blocking,
            },
            Conn::Raw(client),
        ) => {
            let after = first - 1 + rng.below(last - first + 1);
            let found = if *blocking {
                match client.rd(template, after, BLOCK).await {
                    Ok(entry) => Some(entry),
                    Err(ClientError::Timeout) => None,
                    Err(e) => return Err(e.into()),
                }
            } else {
                client.rdp(template, after).await?
            };
            match found {
                Some(_) => Ok((0, None)),
                None => Err(Miss::Failed(format!(
                    "no preloaded tuple after id {after} (were they taken?)"
                ))),
            }
        }
        (Work::Mix { users }, Conn::Blog(blog)) => {
            let me = &users[index as usize % users.len()];
            let dice = rng.below(100);
            if dice < 20 {
                blog.post(me, &plan.text, Some("bench"), None, now_ms())
                    .await?;
                Ok((0, None))
            } else if dice < 80 {
                let filter = PostFilter {
                    author: Some(users[rng.below(users.len() as u64) as usize].clone()),
                    ..PostFilter::default()
                };
                blog.read(&filter, 20, None).await?;
                Ok((1, None))
            } else {
                blog.timeline(me, 20, None).await?;
                Ok((2, None))
            }
        }
        (Work::Posts { users }, Conn::Blog(blog)) => {
            let me = &users[index as usize % users.len()];
            blog.post(me, &plan.text, Some("bench"), None, now_ms())
                .await?;
            Ok((0, None))
        }
        _ => Err(Miss::Failed("internal: work and connection differ".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_come_out_the_size_asked_for() {
        for size in [16usize, 64, 100, 256, 1000, 4096] {
            let payload = payload_for("bench", size);
            let got = encoded_size("bench", &payload);
            assert!(got <= size.max(20) && got + 2 >= size, "{size}: {got}");
        }
    }

    #[test]
    fn random_numbers_stay_in_range() {
        let mut rng = Rng::new(0);
        for _ in 0..1000 {
            assert!(rng.below(7) < 7);
        }
        assert_ne!(Rng::new(1).next(), Rng::new(2).next());
    }
}
