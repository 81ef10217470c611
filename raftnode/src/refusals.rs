//! What a node refused, counted for `status` and logged without letting a flood flood the log.
//!
//! Every guard in front of the node (the frame guard on each listener, the peer-batch
//! authentication, the raft-message checks, the client endpoint) counts what it refuses here, by
//! a short stable name (`peer.bad_mac`, `raft.from_non_member`, `frame.too_large`, ...), and logs
//! it through a [`LogSampler`]: the first few of each window at warning level, the rest at debug,
//! with a count of what was held back.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use slog::{Logger, debug, warn};

/// Counters of refusals by name, shared by every part of one node.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<&'static str, AtomicU64>>,
}

impl Refusals {
    /// An empty set of counters.
    pub fn new() -> Refusals {
        Refusals::default()
    }

    /// Counts one refusal of kind `what` and returns the new total for it.
    pub fn count(&self, what: &'static str) -> u64 {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts
            .entry(what)
            .or_default()
            .fetch_add(1, Ordering::Relaxed)
            + 1
    }

    /// The total of one kind.
    pub fn get(&self, what: &str) -> u64 {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.get(what).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Every kind counted so far, by name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// How many refusals per window are logged at warning level; the rest go to debug.
const WARNINGS_PER_WINDOW: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);

/// Logs the first few refusals of each kind in each ten-second window at warning level and the
/// rest at debug, then says how many were held back. Kinds are sampled apart, so a flood of one
/// kind (garbage) cannot hide another (a node of the wrong cluster).
#[derive(Debug, Default)]
pub struct LogSampler {
    kinds: Mutex<BTreeMap<String, SamplerState>>,
}

#[derive(Debug)]
struct SamplerState {
    window_start: Instant,
    warned: u32,
    suppressed: u64,
}

/// The most kinds a sampler tracks (kinds are a fixed set of names; this only bounds a bug).
const MAX_KINDS: usize = 256;

impl LogSampler {
    /// A sampler whose windows start at each kind's first refusal.
    pub fn new() -> LogSampler {
        LogSampler::default()
    }

    /// Logs one refusal: `what` is its kind, `source` where it came from (an address, a peer
    /// id), `detail` what was wrong.
    pub fn refused(&self, logger: &Logger, what: &str, source: &str, detail: &str) {
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if kinds.len() >= MAX_KINDS && !kinds.contains_key(what) {
            debug!(logger, "refused"; "what" => what, "from" => source, "detail" => detail);
            return;
        }
        let s = kinds.entry(what.to_string()).or_insert(SamplerState {
            window_start: Instant::now(),
            warned: 0,
            suppressed: 0,
        });
        if s.window_start.elapsed() >= WINDOW {
            if s.suppressed > 0 {
                warn!(logger, "more refusals of this kind were logged at debug level";
                    "what" => what, "count" => s.suppressed);
            }
            s.window_start = Instant::now();
            s.warned = 0;
            s.suppressed = 0;
        }
        if s.warned < WARNINGS_PER_WINDOW {
            s.warned += 1;
            warn!(logger, "refused"; "what" => what, "from" => source, "detail" => detail);
        } else {
            s.suppressed += 1;
            debug!(logger, "refused"; "what" => what, "from" => source, "detail" => detail);
        }
    }
}

/// Counts and logs a refusal in one call.
#[derive(Debug, Default)]
pub struct Refuser {
    /// The counters (shared with the node's status).
    pub counts: std::sync::Arc<Refusals>,
    sampler: LogSampler,
}

impl Refuser {
    /// A refuser counting into `counts`.
    pub fn new(counts: std::sync::Arc<Refusals>) -> Refuser {
        Refuser {
            counts,
            sampler: LogSampler::new(),
        }
    }

    /// Counts a refusal of kind `what` and logs it (sampled).
    pub fn refuse(&self, logger: &Logger, what: &'static str, source: &str, detail: &str) {
        self.counts.count(what);
        self.sampler.refused(logger, what, source, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind() {
        let r = Refusals::new();
        assert_eq!(r.count("a"), 1);
        assert_eq!(r.count("a"), 2);
        r.count("b");
        assert_eq!(r.get("a"), 2);
        assert_eq!(r.get("c"), 0);
        let all = r.snapshot();
        assert_eq!(all.get("b"), Some(&1));
        assert_eq!(all.len(), 2);
    }
}
