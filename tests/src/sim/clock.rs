//! Each simulated node's monotonic clock: virtual time at the node's own rate, plus the forward
//! jumps of a paused VM. A monotonic clock never goes back, so neither does this one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftnode::env::Clock;

use super::queue::{Nanos, Now};

/// A node's clock.
pub struct SimClock {
    now: Now,
    state: Mutex<Rate>,
}

/// Node time = `offset + virtual time × ppm / 1e6`.
#[derive(Clone, Copy, Debug)]
struct Rate {
    offset: i128,
    ppm: u64,
}

impl Rate {
    fn at(&self, virtual_ns: Nanos) -> u128 {
        let t = self.offset + i128::from(virtual_ns) * i128::from(self.ppm) / 1_000_000;
        u128::try_from(t.max(0)).unwrap_or(0)
    }
}

impl SimClock {
    /// A clock running at `ppm` parts per million of virtual time (1,000,000: exact).
    pub fn new(now: Now, ppm: u64) -> Arc<SimClock> {
        Arc::new(SimClock {
            now,
            state: Mutex::new(Rate {
                offset: 0,
                ppm: ppm.max(1),
            }),
        })
    }

    fn rate(&self) -> std::sync::MutexGuard<'_, Rate> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Node time in nanoseconds.
    fn node_ns(&self) -> u128 {
        self.rate().at(self.now.get())
    }

    /// Runs at `ppm` from now on, continuing from where it is.
    pub fn set_rate(&self, ppm: u64) {
        let v = self.now.get();
        let mut rate = self.rate();
        let here = rate.at(v) as i128;
        let ppm = ppm.max(1);
        rate.offset = here - i128::from(v) * i128::from(ppm) / 1_000_000;
        rate.ppm = ppm;
    }

    /// Jumps forward by `by` (a VM that was paused, as its monotonic clock sees it).
    pub fn jump(&self, by: Duration) {
        self.rate().offset += by.as_nanos() as i128;
    }

    /// The virtual time at which this clock reaches `at`, or now if it has.
    pub fn when(&self, at: Instant) -> Nanos {
        let target = at.saturating_duration_since(self.now.base).as_nanos() as i128;
        let rate = *self.rate();
        let v = (target - rate.offset) * 1_000_000;
        let ppm = i128::from(rate.ppm);
        // Rounded up: the clock has reached `at` by then.
        let v = (v + ppm - 1).div_euclid(ppm);
        u64::try_from(v.max(0))
            .unwrap_or(u64::MAX)
            .max(self.now.get())
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.now.base + Duration::from_nanos(u64::try_from(self.node_ns()).unwrap_or(u64::MAX))
    }
}
