//! Cluster time: the one clock the replicated state reads, which no node's wall clock can move.
//!
//! The state machine's clock is the highest stamp applied so far (stamps are in the log, so
//! every replica agrees). Only the leader stamps: its own proposals, the ticks it proposes when a
//! deadline is due, and — restamped on arrival — the proposals followers forward to it; a
//! follower's or client's idea of the time never reaches the log.
//!
//! The leader's clock is the last stamp it saw applied, advanced by its **monotonic** clock
//! (`Instant`) since it saw it. A wall-clock step (NTP, a VM resume, an operator's `date`) on any
//! node, the leader included, moves nothing. A new leader continues from the stamp it applied
//! last plus the monotonic time since, so cluster time runs on across leader changes, and never
//! goes backwards (a leader never stamps below what it has stamped or applied).
//!
//! What this guarantees, in the manner of etcd's lease guarantees:
//!
//! - Cluster time advances at the rate of the current leader's monotonic clock (ppm-accurate on
//!   real hardware). It does not advance while no node runs: after a whole-cluster outage it
//!   resumes from where the log left it, so every TTL and deadline is extended by the outage
//!   (etcd likewise refreshes leases when a new leader takes over).
//! - At a leader change cluster time loses at most the delay between the old leader stamping an
//!   entry and the new leader applying it (a replication round trip), and a frozen or partitioned
//!   old leader's stamps never commit.
//! - A TTL of `d` therefore means: the tuple lives at least `d` of cluster time after the `out`
//!   was stamped, which is about `d` of real time (longer by any whole-cluster outage), and it
//!   disappears within about a tick (the leader's timer, 50 ms by default) plus a commit after
//!   that. Blocking waits and session expiry are measured the same way.

use std::sync::Arc;
use std::time::Instant;

use tuplespace::Millis;

use crate::env::Clock;

/// This node's view of cluster time.
pub struct ClusterClock {
    /// The node's monotonic clock.
    clock: Arc<dyn Clock>,
    /// The stamp the view is anchored at.
    base: Millis,
    /// When (on this node's monotonic clock) it was anchored.
    at: Instant,
    /// The highest time this node has handed out as a stamp.
    given: Millis,
}

impl ClusterClock {
    /// A clock anchored at `applied` (the machine's clock after a restart), now on `clock`.
    pub fn new(applied: Millis, clock: Arc<dyn Clock>) -> ClusterClock {
        ClusterClock {
            base: applied,
            at: clock.now(),
            clock,
            given: applied,
        }
    }

    /// The anchored time plus the monotonic time since.
    fn projected(&self) -> Millis {
        let elapsed = self.clock.now().saturating_duration_since(self.at);
        let elapsed = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self.base.saturating_add(elapsed).max(self.given)
    }

    /// The machine's clock reached `applied`. A follower anchors there (the leader's clock is the
    /// one that counts); a leader only moves forward to it if it is ahead of its own projection,
    /// which never happens once it has stamped anything, so its own stamps coming back through
    /// the log never slow it down.
    pub fn observe(&mut self, applied: Millis, leader: bool) {
        if !leader || applied > self.projected() {
            self.base = applied;
            self.at = self.clock.now();
            self.given = self.given.max(applied);
        }
    }

    /// The time to stamp a proposal with (the leader's job): never below anything stamped or
    /// applied before.
    pub fn stamp(&mut self) -> Millis {
        self.given = self.projected();
        self.given
    }

    /// The current time without handing it out.
    pub fn now(&self) -> Millis {
        self.projected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_never_go_backwards_and_follow_the_monotonic_clock() {
        let mut c = ClusterClock::new(1_000, Arc::new(crate::env::SystemClock));
        let a = c.stamp();
        assert!(a >= 1_000);
        std::thread::sleep(Duration::from_millis(30));
        let b = c.stamp();
        assert!(b >= a + 25, "{a} then {b}");
        // A leader's own stamp applied later does not pull it back.
        c.observe(a, true);
        assert!(c.stamp() >= b);
        // A follower anchors at what it applies, but never hands out less than before.
        c.observe(a, false);
        assert!(c.stamp() >= b);
        // A stamp from another leader ahead of us moves us forward.
        c.observe(b + 60_000, true);
        assert!(c.stamp() >= b + 60_000);
    }
}
