//! Work too heavy for the raft thread: digests of the whole space, and scans the index cannot
//! narrow (a `count` or copy-collect whose template has no literal first field).
//!
//! Such work reads a [`tuplespace::SpaceView`] (taken on the raft thread in about a page table's
//! time, at the point the read is linearizable) on one of a few worker threads, so ticks,
//! heartbeats and writes go on meanwhile. The queue is bounded: past it a read is answered
//! `OVERLOADED` at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tuplespace::{Query, SpaceView, Template};

use super::{Node, ReadOp, response};
use crate::machine::{error, fitting_view};
use crate::proto::{self, error::Code};

/// Worker threads for heavy reads.
const WORKERS: usize = 2;

/// Heavy reads waiting for a worker at once.
const QUEUE: usize = 256;

type Job = Box<dyn FnOnce() + Send>;

/// The workers and their queue.
pub(super) struct Heavy {
    queue: SyncSender<Job>,
    /// Jobs queued or running.
    pending: Arc<AtomicUsize>,
}

impl Heavy {
    /// Starts the workers (they end when the node, and so the queue, is dropped).
    pub(super) fn start() -> Heavy {
        let (queue, jobs) = sync_channel::<Job>(QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        let pending = Arc::new(AtomicUsize::new(0));
        for i in 0..WORKERS {
            let (jobs, pending) = (Arc::clone(&jobs), Arc::clone(&pending));
            let _ = std::thread::Builder::new()
                .name(format!("heavy-reads-{i}"))
                .spawn(move || work(&jobs, &pending));
        }
        Heavy { queue, pending }
    }

    /// Whether the queue is full.
    fn full(&self) -> bool {
        self.pending.load(Ordering::Relaxed) >= QUEUE
    }

    /// Queues a job (the caller checked [`Heavy::full`] on this same thread).
    fn submit(&self, job: Job) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.queue.try_send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn work(jobs: &Mutex<Receiver<Job>>, pending: &AtomicUsize) {
    loop {
        let job = {
            let Ok(jobs) = jobs.lock() else { return };
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        job();
        pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a read is one for the workers: a scan of every tuple of its arity.
pub(super) fn is_heavy(op: &ReadOp) -> bool {
    match op {
        ReadOp::Count(template) | ReadOp::RdAll { template, .. } => template.index_key().is_none(),
        ReadOp::Rd { .. } | ReadOp::ReadId(_) => false,
    }
}

fn scan(view: &SpaceView, op: ReadOp) -> proto::response::Result {
    match op {
        ReadOp::Count(template) => proto::response::Result::Count(view.count(&template) as u64),
        ReadOp::RdAll { template, query } => rd_all(view, &template, &query),
        ReadOp::Rd { .. } | ReadOp::ReadId(_) => {
            error(Code::Internal, "not a read for the heavy-read workers")
        }
    }
}

fn rd_all(view: &SpaceView, template: &Template, query: &Query) -> proto::response::Result {
    proto::response::Result::Tuples(fitting_view(view.rd_all(template, query)))
}

impl Node {
    /// Answers a heavy read on a worker, from a view of the space as it is now.
    pub(super) fn read_heavy(&mut self, op: ReadOp, reply: oneshot::Sender<proto::Response>) {
        if self.heavy.full() {
            let why = format!("{QUEUE} scans are queued on this node already; retry later");
            self.refuser
                .refuse(&self.logger, "client.heavy_reads_queued", "a client", &why);
            let _ = reply.send(self.with_hint(response(error(Code::Overloaded, why))));
            return;
        }
        let view = self.machine.space().view();
        let hint = self.with_hint(response(proto::response::Result::Count(0)));
        self.heavy.submit(Box::new(move || {
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
        self.heavy.submit(Box::new(move || {
            status.digest = view.digest();
            let _ = reply.send(status);
        }));
    }
}
