//! The workload shared by the `space` and `memory` benches: a deterministic stream of 4-field
//! tuples `(topic, user, int, payload)`.
//!
//! - topic: one of [`TOPICS`] strings, `"topic-0000"` .. `"topic-0999"` (10 bytes, stored inline);
//! - user: one of [`USERS`] strings, `"user-00000"` .. `"user-09999"` (10 bytes, stored inline);
//! - an int;
//! - a 64-byte ASCII payload (longer than `Text::INLINE_CAPACITY`, so one heap allocation).
//!
//! The stream comes from a 64-bit LCG (Knuth's MMIX constants) so every run, on every machine,
//! builds the same space without a `rand` dependency.

use tuplespace::{Space, Tuple, Value};

/// How many distinct topics (first fields).
pub const TOPICS: u64 = 1_000;
/// How many distinct users (second fields).
pub const USERS: u64 = 10_000;
/// Payload length in bytes.
pub const PAYLOAD: usize = 64;
/// Resident tuples in the benchmarked space.
pub const RESIDENT: usize = 1_000_000;

/// The topic string for topic number `n`.
pub fn topic(n: u64) -> String {
    format!("topic-{n:04}")
}

/// A deterministic generator of workload tuples.
pub struct Gen {
    state: u64,
}

impl Gen {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Gen {
        Gen {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The next 32 well-mixed bits (the high half of the LCG state).
    fn next(&mut self) -> u64 {
        self.state = self
            .state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.state >> 32
    }

    /// The next tuple.
    pub fn tuple(&mut self) -> Tuple {
        let topic = topic(self.next() % TOPICS);
        let user = format!("user-{:05}", self.next() % USERS);
        let n = (self.next() as i64) - (1 << 31);
        let mut payload = String::with_capacity(PAYLOAD);
        while payload.len() < PAYLOAD {
            let mut bits = self.next();
            for _ in 0..4 {
                if payload.len() < PAYLOAD {
                    payload.push(char::from(b'a' + (bits % 26) as u8));
                    bits >>= 8;
                }
            }
        }
        Tuple::new(vec![
            Value::from(topic),
            Value::from(user),
            Value::Int(n),
            Value::from(payload),
        ])
    }
}

/// A space of `n` workload tuples from seed 1, each generated and `out` at once (no TTLs, no
/// waiters), so tuple ids are 1..=n.
pub fn build_space(n: usize) -> Space {
    let mut space = Space::new();
    let mut g = Gen::new(1);
    for _ in 0..n {
        space.out(g.tuple(), None);
    }
    space
}
