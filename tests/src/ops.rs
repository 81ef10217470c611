//! The operations test clients run, and how they are chosen: unique tuples `("k", KEY, N)` over a
//! few keys, taken with blocking `in` and non-blocking `inp`, read with `rd`/`rdp` (with an
//! `after` id the client has seen) and `rd_all`, and `cas` races on `("cas", KEY, V)`
//! (occasionally taking the cas tuple with `inp` so that a `cas` can insert again). The chaos
//! workload (real processes) and the simulator plan their operations here, so both produce
//! histories the [checker](crate::checker) splits by key the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use raftnode::client::ClientError;
use rand::Rng;
use rand::rngs::StdRng;
use tuplespace::{Template, Tuple, TupleId};

use crate::history::{self, Value};

/// Which operations the clients choose from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Every operation.
    Full,
    /// Only writes (`out` and `cas`): for the unavailability test.
    Writes,
}

/// One planned operation.
#[derive(Clone, Debug)]
pub enum Op {
    /// `out` of a unique tuple.
    Out(Tuple),
    /// Blocking take with a timeout.
    In(Template, Duration),
    /// Non-blocking take.
    Inp(Template),
    /// Blocking read after an id, with a timeout.
    Rd(Template, TupleId, Duration),
    /// Non-blocking read after an id.
    Rdp(Template, TupleId),
    /// Every match.
    RdAll(Template),
    /// Insert if nothing matches.
    Cas(Template, Tuple),
}

impl Op {
    /// Its name in the history.
    pub fn f(&self) -> history::Op {
        match self {
            Op::Out(_) => history::Op::Out,
            Op::In(..) => history::Op::In,
            Op::Inp(_) => history::Op::Inp,
            Op::Rd(..) => history::Op::Rd,
            Op::Rdp(..) => history::Op::Rdp,
            Op::RdAll(_) => history::Op::RdAll,
            Op::Cas(..) => history::Op::Cas,
        }
    }

    /// Whether it goes through the raft log (an acknowledgement means a majority had it).
    pub fn is_logged(&self) -> bool {
        matches!(self, Op::Out(_) | Op::In(..) | Op::Inp(_) | Op::Cas(..))
    }

    /// The invocation's value.
    pub fn value(&self) -> Value {
        match self {
            Op::Out(t) => Value::tuple(t),
            Op::In(p, _) | Op::Inp(p) | Op::RdAll(p) => Value::template(p),
            Op::Rd(p, after, _) | Op::Rdp(p, after) => Value::read(p, *after),
            Op::Cas(p, t) => Value::cas(p, t),
        }
    }
}

/// Whether an error means the operation certainly was not applied.
pub fn is_definite(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Invalid(_) | ClientError::TooLarge(_) | ClientError::SessionExpired(_)
    )
}

fn template(text: &str) -> Template {
    text.parse()
        .unwrap_or_else(|e| panic!("workload template {text}: {e}"))
}

fn tuple(text: &str) -> Tuple {
    text.parse()
        .unwrap_or_else(|e| panic!("workload tuple {text}: {e}"))
}

/// Chooses one client's operations.
pub struct Planner {
    keys: i64,
    cas_keys: i64,
    mix: Mix,
    /// Shared by every client of a run, so written values are unique in it.
    next_value: Arc<AtomicI64>,
    /// Ids this client has seen, per key (for `rd`'s `after`).
    seen: BTreeMap<i64, Vec<TupleId>>,
}

impl Planner {
    /// A planner over `keys` keys and `cas_keys` cas keys, drawing unique values from
    /// `next_value`.
    pub fn new(keys: i64, cas_keys: i64, mix: Mix, next_value: Arc<AtomicI64>) -> Planner {
        Planner {
            keys,
            cas_keys,
            mix,
            next_value,
            seen: BTreeMap::new(),
        }
    }

    fn unique(&self) -> i64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    fn after(&mut self, key: i64, rng: &mut StdRng) -> TupleId {
        let seen = self.seen.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        if seen.is_empty() || rng.gen_bool(0.4) {
            0
        } else {
            seen[rng.gen_range(0..seen.len())]
        }
    }

    /// Notes the ids an operation on `key` returned.
    pub fn saw(&mut self, key: i64, ids: Vec<TupleId>) {
        let seen = self.seen.entry(key).or_default();
        for id in ids {
            if !seen.contains(&id) {
                seen.push(id);
            }
        }
        let excess = seen.len().saturating_sub(16);
        seen.drain(..excess);
    }

    fn blocking_timeout(rng: &mut StdRng) -> Duration {
        Duration::from_millis(rng.gen_range(300..=1000))
    }

    /// The next operation and the key it is about (for [`saw`](Self::saw)).
    pub fn plan(&mut self, rng: &mut StdRng) -> (Op, Option<i64>) {
        let key = rng.gen_range(0..self.keys);
        let cas_key = rng.gen_range(0..self.cas_keys);
        let k_any = || template(&format!("(\"k\", {key}, ?int)"));
        let cas_any = || template(&format!("(\"cas\", {cas_key}, _)"));
        if self.mix == Mix::Writes {
            return if rng.gen_bool(0.8) {
                let n = self.unique();
                (Op::Out(tuple(&format!("(\"k\", {key}, {n})"))), None)
            } else {
                let v = self.unique();
                let t = tuple(&format!("(\"cas\", {cas_key}, {v})"));
                (Op::Cas(cas_any(), t), None)
            };
        }
        let roll = rng.gen_range(0..100);
        match roll {
            0..=19 => {
                let n = self.unique();
                (Op::Out(tuple(&format!("(\"k\", {key}, {n})"))), Some(key))
            }
            20..=33 => {
                let t = Self::blocking_timeout(rng);
                (Op::In(k_any(), t), Some(key))
            }
            34..=47 => (Op::Inp(k_any()), Some(key)),
            48..=55 => {
                let after = self.after(key, rng);
                let t = Self::blocking_timeout(rng);
                (Op::Rd(k_any(), after, t), Some(key))
            }
            56..=65 => {
                let after = self.after(key, rng);
                (Op::Rdp(k_any(), after), Some(key))
            }
            66..=73 => (
                Op::RdAll(template(&format!("(\"k\", {key}, _)"))),
                Some(key),
            ),
            74..=92 => {
                let v = self.unique();
                let t = tuple(&format!("(\"cas\", {cas_key}, {v})"));
                (Op::Cas(cas_any(), t), None)
            }
            _ => (Op::Inp(cas_any()), None),
        }
    }
}
