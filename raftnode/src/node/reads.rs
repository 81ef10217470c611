//! Reads: linearizable through ReadIndex. The reads collected in one turn share one ReadIndex
//! request; once the leader confirms its index they wait until this node has applied that far,
//! then are answered from the local state. A blocking `rd` that finds nothing waits here, on
//! this node, for the next matching `out` it applies (at most [`MAX_LOCAL_READERS`] at once).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tuplespace::{Template, Tuple, TupleId};

use super::{Node, ReadOp, heavy};
use crate::answer::{error, found, respond};
use crate::proto::{self, error::Code, response};

/// Reads waiting on one ReadIndex, each with where its answer goes.
type ReadBatch = Vec<(ReadOp, oneshot::Sender<proto::Response>)>;

/// Blocking `rd`s waiting on one node at once.
pub const MAX_LOCAL_READERS: usize = 10_000;

/// How long a batch of reads may wait for the leader to confirm its ReadIndex.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads confirmed by ReadIndex at `index`, waiting for the machine to apply that far.
struct ConfirmedReads {
    index: u64,
    reads: ReadBatch,
}

/// A blocking `rd` waiting on this node for a matching `out`.
struct LocalReader {
    template: Template,
    after: TupleId,
    deadline: Instant,
    reply: oneshot::Sender<proto::Response>,
}

/// The reads in every stage.
#[derive(Default)]
pub(super) struct Reads {
    /// Reads collected this turn; one ReadIndex covers them all.
    unsent: ReadBatch,
    /// ReadIndex requests in flight, by context.
    in_flight: HashMap<u64, (Instant, ReadBatch)>,
    /// Reads whose index is known, waiting for the machine to catch up.
    confirmed: Vec<ConfirmedReads>,
    /// Blocking `rd`s waiting for an `out`.
    readers: Vec<LocalReader>,
    /// The last ReadIndex context this node used.
    last_ctx: u64,
}

impl Reads {
    /// Adds a read to this turn's batch.
    pub(super) fn collect(&mut self, op: ReadOp, reply: oneshot::Sender<proto::Response>) {
        self.unsent.push((op, reply));
    }

    /// Whether blocking `rd`s wait here (then applying collects the tuples written).
    pub(super) fn has_readers(&self) -> bool {
        !self.readers.is_empty()
    }

    /// Answers the blocking `rd`s that a newly written tuple matches.
    pub(super) fn wake(&mut self, id: TupleId, tuple: &Tuple) {
        let (hits, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.readers)
            .into_iter()
            .partition(|r| id > r.after && r.template.matches(tuple));
        self.readers = rest;
        for r in hits {
            let _ = r.reply.send(respond(found(Some((id, tuple)))));
        }
    }
}

impl Node {
    /// Asks raft for one ReadIndex covering the reads collected this turn.
    pub(super) fn send_read_index(&mut self) {
        if self.reads.unsent.is_empty() {
            return;
        }
        self.reads.last_ctx += 1;
        let ctx = self.reads.last_ctx;
        let reads = std::mem::take(&mut self.reads.unsent);
        let now = self.env.clock.now();
        self.reads.in_flight.insert(ctx, (now, reads));
        // The leader keeps pending ReadIndex requests by context and ignores a context it already
        // holds, so contexts must be unique across the cluster: this node's id, then its counter.
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&self.id.to_le_bytes());
        bytes.extend_from_slice(&ctx.to_le_bytes());
        self.raw.read_index(bytes);
    }

    /// The leader confirmed the ReadIndex with context `ctx` at `index`.
    pub(super) fn read_confirmed(&mut self, index: u64, ctx: &[u8]) {
        let Ok(bytes) = <[u8; 16]>::try_from(ctx) else {
            return;
        };
        let (node, counter) = bytes.split_at(8);
        if node != self.id.to_le_bytes() {
            return;
        }
        let Ok(bytes) = <[u8; 8]>::try_from(counter) else {
            return;
        };
        if let Some((_, reads)) = self.reads.in_flight.remove(&u64::from_le_bytes(bytes)) {
            self.reads.confirmed.push(ConfirmedReads { index, reads });
        }
    }

    /// Answers the confirmed reads whose index this node has applied.
    pub(super) fn serve_confirmed_reads(&mut self) {
        let applied = self.machine.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads.confirmed)
            .into_iter()
            .partition(|c| c.index <= applied);
        self.reads.confirmed = waiting;
        for batch in ready {
            for (op, reply) in batch.reads {
                self.read(op, reply);
            }
        }
    }

    /// Timer work: reads the leader never confirmed are told to retry, blocking `rd`s whose
    /// timeout passed are told so, and those whose client left are dropped.
    pub(super) fn expire_reads(&mut self, now: Instant) {
        let stale: Vec<u64> = self
            .reads
            .in_flight
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) > READ_INDEX_TIMEOUT)
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in stale {
            if let Some((_, reads)) = self.reads.in_flight.remove(&ctx) {
                let resp = self.with_hint(respond(error(
                    Code::Unavailable,
                    "the leader did not confirm the read (no leader or no quorum?); retry",
                )));
                for (_, reply) in reads {
                    let _ = reply.send(resp.clone());
                }
            }
        }
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads.readers)
            .into_iter()
            .partition(|r| r.deadline <= now || r.reply.is_closed());
        self.reads.readers = waiting;
        for r in expired {
            let _ = r.reply.send(respond(error(
                Code::TimedOut,
                "no matching tuple before the timeout",
            )));
        }
    }

    /// Answers one read from the local state (which has applied past its ReadIndex).
    fn read(&mut self, op: ReadOp, reply: oneshot::Sender<proto::Response>) {
        if heavy::is_heavy(&op) {
            return self.read_heavy(op, reply);
        }
        let space = self.machine.space();
        let result = match op {
            ReadOp::Rd {
                template,
                after,
                block,
                timeout,
            } => match space.rdp(&template, after) {
                Some((id, t)) => found(Some((id, t))),
                None if block && self.reads.readers.len() >= MAX_LOCAL_READERS => {
                    let message = format!(
                        "{MAX_LOCAL_READERS} blocking rds wait on this node already (its limit); \
                         retry later or use another node"
                    );
                    self.refuser
                        .refuse(&self.logger, "client.over_limit", "a client", &message);
                    error(Code::Limit, message)
                }
                None if block => {
                    let deadline = self.env.clock.now() + timeout;
                    self.reads.readers.push(LocalReader {
                        template,
                        after,
                        deadline,
                        reply,
                    });
                    return;
                }
                None => found(None),
            },
            ReadOp::RdAll {
                templates,
                join,
                query,
            } => match self.machine.rd_join(&templates, join.as_ref(), &query) {
                Ok(found) => response::Result::Tuples(found),
                Err(e) => error(Code::Limit, e.to_string()),
            },
            ReadOp::ReadId(id) => found(space.read_id(id).map(|t| (id, t))),
            ReadOp::Count(template) => response::Result::Count(space.count(&template) as u64),
            ReadOp::Policy => response::Result::Policy(self.machine.policy()),
        };
        let resp = self.with_hint(respond(result));
        let _ = reply.send(resp);
    }
}
