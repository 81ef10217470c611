//! FIFO queues of blocked `in` and `rd` operations.
//!
//! Waiters are state like tuples: a replicated state machine registers them, and an `out` hands
//! its tuple to the oldest matching taker in the same step, on every replica alike. They are
//! indexed like tuples, by arity and literal first field, so an `out` looks only at waiters that
//! could match it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::value::Value;
use crate::{Millis, Template, TupleId, WaiterId};

/// What a waiter does with the tuple it is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitKind {
    /// A blocking `in`: removes the tuple.
    Take,
    /// A blocking `rd`: sees the tuple and leaves it.
    Read,
}

/// A blocked operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter {
    /// Take or read.
    pub kind: WaitKind,
    /// What it waits for.
    pub template: Template,
    /// Only tuples with an id greater than this satisfy it (0: any).
    pub after: TupleId,
    /// The clock value at which it gives up, if any.
    pub deadline: Option<Millis>,
}

#[derive(Default, Debug)]
struct ArityWaiters {
    by_first: HashMap<Value, VecDeque<WaiterId>>,
    others: VecDeque<WaiterId>,
}

/// Every waiter, in registration order.
#[derive(Default, Debug)]
pub(crate) struct Waiters {
    by_id: BTreeMap<WaiterId, Waiter>,
    index: HashMap<usize, ArityWaiters>,
    deadlines: BTreeSet<(Millis, WaiterId)>,
}

/// Who an `out` satisfied.
#[derive(Default, Debug)]
pub(crate) struct Served {
    pub taker: Option<WaiterId>,
    pub readers: Vec<WaiterId>,
}

impl Waiters {
    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn get(&self, id: WaiterId) -> Option<&Waiter> {
        self.by_id.get(&id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (WaiterId, &Waiter)> {
        self.by_id.iter().map(|(&id, w)| (id, w))
    }

    pub(crate) fn insert(&mut self, id: WaiterId, waiter: Waiter) {
        let slot = self.index.entry(waiter.template.arity()).or_default();
        match waiter.template.index_key() {
            Some(key) => slot.by_first.entry(key.clone()).or_default().push_back(id),
            None => slot.others.push_back(id),
        }
        if let Some(deadline) = waiter.deadline {
            self.deadlines.insert((deadline, id));
        }
        self.by_id.insert(id, waiter);
    }

    pub(crate) fn remove(&mut self, id: WaiterId) -> Option<Waiter> {
        let waiter = self.by_id.remove(&id)?;
        let arity = waiter.template.arity();
        if let Some(slot) = self.index.get_mut(&arity) {
            let queue = match waiter.template.index_key() {
                Some(key) => slot.by_first.get_mut(key),
                None => Some(&mut slot.others),
            };
            if let Some(queue) = queue
                && let Some(pos) = queue.iter().position(|&w| w == id)
            {
                queue.remove(pos);
            }
            if let Some(key) = waiter.template.index_key()
                && slot.by_first.get(key).is_some_and(VecDeque::is_empty)
            {
                slot.by_first.remove(key);
            }
            if slot.by_first.is_empty() && slot.others.is_empty() {
                self.index.remove(&arity);
            }
        }
        if let Some(deadline) = waiter.deadline {
            self.deadlines.remove(&(deadline, id));
        }
        Some(waiter)
    }

    /// Hands the new tuple `id` to every matching reader and the oldest matching taker, removing
    /// them all.
    pub(crate) fn serve(&mut self, id: TupleId, fields: &[Value]) -> Served {
        let mut served = Served::default();
        let Some(slot) = self.index.get(&fields.len()) else {
            return served;
        };
        let keyed = fields
            .first()
            .and_then(|first| slot.by_first.get(first))
            .into_iter()
            .flatten();
        // Both queues are in registration order; walk them merged so the oldest taker wins.
        let mut candidates: Vec<WaiterId> = keyed.chain(slot.others.iter()).copied().collect();
        candidates.sort_unstable();
        for waiter_id in candidates {
            let Some(waiter) = self.by_id.get(&waiter_id) else {
                continue;
            };
            if id <= waiter.after || !waiter.template.matches(fields) {
                continue;
            }
            match waiter.kind {
                WaitKind::Read => served.readers.push(waiter_id),
                WaitKind::Take if served.taker.is_none() => served.taker = Some(waiter_id),
                WaitKind::Take => {}
            }
        }
        for &reader in &served.readers {
            self.remove(reader);
        }
        if let Some(taker) = served.taker {
            self.remove(taker);
        }
        served
    }

    /// Removes and returns the waiters whose deadline is at or before `now`, earliest first.
    pub(crate) fn expire(&mut self, now: Millis) -> Vec<WaiterId> {
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.remove(id);
            expired.push(id);
        }
        expired
    }

    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|&(d, _)| d)
    }
}
