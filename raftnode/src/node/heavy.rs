//! Work too heavy for the raft thread: digests of the whole space, and scans the index cannot
//! narrow (a `count` or copy-collect whose template has no literal first field).
//!
//! Such work reads a [`tuplespace::SpaceView`] (taken on the raft thread in about a page table's
//! time, at the point the read is linearizable) on one of a few worker threads, so ticks,
//! heartbeats and writes go on meanwhile. The queue is bounded: past it a read is answered
//! `OVERLOADED` at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;
use tuplespace::{Query, SpaceView, Template};

use super::{Node, ReadOp};
use crate::answer::{error, respond};
use crate::env::{Job, Work};
use crate::machine::fitting_view;
use crate::proto::{self, error::Code};

/// Heavy reads queued or running at once.
const QUEUE: usize = 256;

/// How many heavy reads are queued or running.
#[derive(Default)]
pub(super) struct Heavy {
    pending: Arc<AtomicUsize>,
}

impl Heavy {
    /// Whether the queue is full.
    fn full(&self) -> bool {
        self.pending.load(Ordering::Relaxed) >= QUEUE
    }
}

/// Counts one job as pending until it has run (or was dropped without running).
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Node {
    /// Runs a job in the background, counted against the queue (the caller checked
    /// [`Heavy::full`] on this same thread).
    fn submit_heavy(&self, job: Job) {
        self.heavy.pending.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(Arc::clone(&self.heavy.pending));
        let job = Box::new(move || {
            let _counted = counted;
            job();
        });
        if let Err(e) = self.env.background.spawn(Work::HeavyRead, job) {
            slog::error!(self.logger, "cannot run a heavy read"; "err" => e);
        }
    }
}

/// Whether a read is one for the workers: a scan of every tuple of its arity.
pub(super) fn is_heavy(op: &ReadOp) -> bool {
    match op {
        ReadOp::Count(template) => template.index_key().is_none(),
        ReadOp::RdAll {
            templates, join, ..
        } => {
            templates.iter().any(|t| t.index_key().is_none())
                || join.as_ref().is_some_and(|j| {
                    j.source.index_key().is_none() || j.target.index_key().is_none()
                })
        }
        ReadOp::Rd { .. } | ReadOp::ReadId(_) | ReadOp::Policy => false,
    }
}

fn scan(view: &SpaceView, op: ReadOp) -> proto::response::Result {
    match op {
        ReadOp::Count(template) => proto::response::Result::Count(view.count(&template) as u64),
        ReadOp::RdAll {
            templates,
            join,
            query,
        } => rd_all(view, &templates, join.as_ref(), &query),
        ReadOp::Rd { .. } | ReadOp::ReadId(_) | ReadOp::Policy => {
            error(Code::Internal, "not a read for the heavy-read workers")
        }
    }
}

fn rd_all(
    view: &SpaceView,
    templates: &[Template],
    join: Option<&tuplespace::union::Join>,
    query: &Query,
) -> proto::response::Result {
    let found = match join {
        Some(join) => view.rd_join(templates, join, query),
        None => Ok(view.rd_any(templates, query)),
    };
    match found {
        Ok(found) => proto::response::Result::Tuples(fitting_view(found)),
        Err(e) => error(Code::Limit, e.to_string()),
    }
}

impl Node {
    /// Answers a heavy read on a worker, from a view of the space as it is now.
    pub(super) fn read_heavy(&mut self, op: ReadOp, reply: oneshot::Sender<proto::Response>) {
        if self.heavy.full() {
            let why = format!("{QUEUE} scans are queued on this node already; retry later");
            self.refuser
                .refuse(&self.logger, "client.heavy_reads_queued", "a client", &why);
            let _ = reply.send(self.with_hint(respond(error(Code::Overloaded, why))));
            return;
        }
        let view = self.machine.space().view();
        let hint = self.with_hint(respond(proto::response::Result::Count(0)));
        self.submit_heavy(Box::new(move || {
            let resp = proto::Response {
                result: Some(scan(&view, op)),
                ..hint
            };
            let _ = reply.send(resp);
        }));
    }

    /// Sends `status` with the digest of the space as it is now, computed on a worker.
    pub(super) fn status_with_digest(
        &mut self,
        mut status: proto::Status,
        reply: oneshot::Sender<proto::Status>,
    ) {
        if self.heavy.full() {
            // Answered without its digest (0: not computed).
            self.refuser.refuse(
                &self.logger,
                "client.heavy_reads_queued",
                "a client",
                "too many digests and scans queued",
            );
            let _ = reply.send(status);
            return;
        }
        let view = self.machine.space().view();
        self.submit_heavy(Box::new(move || {
            status.digest = view.digest();
            let _ = reply.send(status);
        }));
    }
}
