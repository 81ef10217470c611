//! Virtual time and the queue of what happens next.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Virtual nanoseconds since the run began.
pub type Nanos = u64;

/// Nanoseconds in `d`.
pub fn ns(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Milliseconds as nanoseconds.
pub const fn ms(n: u64) -> Nanos {
    n * 1_000_000
}

/// The run's virtual clock: read by every node's clock and by the history.
#[derive(Clone)]
pub struct Now {
    ns: Arc<AtomicU64>,
    /// What virtual time 0 is as an `Instant` (only differences of instants ever matter).
    pub base: Instant,
}

impl Default for Now {
    fn default() -> Self {
        Now::new()
    }
}

impl Now {
    /// A clock at virtual time 0.
    pub fn new() -> Now {
        Now {
            ns: Arc::new(AtomicU64::new(0)),
            base: Instant::now(),
        }
    }

    /// Virtual nanoseconds now.
    pub fn get(&self) -> Nanos {
        self.ns.load(Ordering::Relaxed)
    }

    fn set(&self, at: Nanos) {
        self.ns.store(at, Ordering::Relaxed);
    }

    /// Now as an `Instant` (for code that measures durations with instants).
    pub fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.get())
    }
}

struct Entry<E> {
    at: Nanos,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Events in time order; events at the same time in the order they were scheduled.
pub struct Queue<E> {
    heap: BinaryHeap<Reverse<Entry<E>>>,
    seq: u64,
    now: Now,
}

impl<E> Queue<E> {
    pub(super) fn new(now: Now) -> Queue<E> {
        Queue {
            heap: BinaryHeap::new(),
            seq: 0,
            now,
        }
    }

    /// Schedules `event` at virtual time `at` (not before now).
    pub fn at(&mut self, at: Nanos, event: E) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at: at.max(self.now.get()),
            seq: self.seq,
            event,
        }));
    }

    /// Schedules `event` `after` from now.
    pub fn after(&mut self, after: Nanos, event: E) {
        let at = self.now.get().saturating_add(after);
        self.at(at, event);
    }

    /// The next event, moving virtual time to it.
    pub fn pop(&mut self) -> Option<E> {
        let Reverse(entry) = self.heap.pop()?;
        self.now.set(entry.at);
        Some(entry.event)
    }

    /// Virtual time now.
    pub fn now(&self) -> Nanos {
        self.now.get()
    }
}
