//! Snapshots streamed in chunks: how a leader's snapshot file reaches a follower, whatever its
//! size, with a bounded buffer on both sides.
//!
//! A raft snapshot message carries only a [`Descriptor`] of the leader's snapshot file (index,
//! term, size, whole-file CRC-32). Before the message itself goes out, the leader's transport
//! streams the file to the follower in chunks of at most [`CHUNK`] bytes, each riding in an
//! authenticated peer request beside the raft messages of that moment (so heartbeats and
//! appends keep flowing), each with its own CRC-32:
//!
//! 1. The sender ([`Transfer`]) sends the chunk at the offset the receiver last asked for (an
//!    empty chunk first, to ask). A chunk at any other offset is not written; the answer names
//!    the offset wanted, so a transfer cut by a lost connection or a dropped request resumes
//!    where it stopped. The sender paces itself (`raft.snapshot_send_mib_per_s`), so a transfer
//!    cannot starve normal replication.
//! 2. The receiver ([`Receiver`]) appends each chunk to a part file in its snapshot directory
//!    (`crate::snapshot`). When the last byte arrives it answers `CHECKING` and, on a blocking
//!    thread ([`CheckJob`]), syncs the file and reads it back completely: every frame's CRC, the
//!    whole file's CRC (which must be the descriptor's), and the state decoded as it is read and
//!    checked against the cluster and the descriptor's index and term.
//! 3. Asked again, the receiver answers `READY` (or `FAILED`, with why: the sender gives up and
//!    raft tries again later). Only then does the sender send the snapshot message; the
//!    receiver hands raft the state it decoded. A file not completely received and checked is
//!    never installed; the node renames the part file into place when raft installs it.
//!
//! One snapshot is received at a time. A chunk of another descriptor waits while the current
//! file's sender is alive (it asks at least once per chunk); once [`YIELD_AFTER`] chunks of
//! other files came with no word from it, the current file is abandoned and the other starts.
//! So a deposed leader still streaming and the new leader cannot take the receiver from each
//! other in turn. The receiver holds at most one decoded state waiting for its message.
//!
//! Both halves are plain state machines without I/O of their own beyond the snapshot directory,
//! so the peer transport and the simulator drive the same code ([`transfer_now`]).

use std::io::{self, Read};
use std::sync::Arc;

use raft::eraftpb::{Message, MessageType};
use slog::{Logger, info, warn};

use crate::disk::FileWriter;
use crate::keys::ClusterId;
use crate::machine::Machine;
use crate::proto::{ChunkAck, SnapshotChunk, chunk_ack};
use crate::snapshot::{Descriptor, SnapshotStore};

/// The most file bytes in one chunk.
pub const CHUNK: usize = 1 << 20;

/// The largest snapshot file a node accepts (a bound on the disk a sender can make it fill).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;

/// Consecutive failed requests after which a sender gives the transfer up (raft then tries
/// again with a fresh snapshot message, and the transfer resumes where the receiver is).
pub const MAX_FAILURES: u32 = 8;

/// The descriptor a chunk belongs to.
fn descriptor_of(chunk: &SnapshotChunk) -> Descriptor {
    Descriptor {
        index: chunk.index,
        term: chunk.term,
        size: chunk.size,
        crc: chunk.crc,
    }
}

/// The longest reason a chunk answer carries.
pub const MAX_DETAIL: usize = 512;

fn ack(state: chunk_ack::State, next: u64, mut detail: String) -> ChunkAck {
    if detail.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    ChunkAck {
        state: state as i32,
        next,
        detail,
    }
}

// ---------------------------------------------------------------------------------------------
// Receiving

enum State {
    Idle,
    Receiving {
        desc: Descriptor,
        out: Box<dyn FileWriter>,
        next: u64,
    },
    Checking {
        desc: Descriptor,
        reception: u64,
    },
    Ready {
        desc: Descriptor,
        machine: Box<Machine>,
    },
    Failed {
        desc: Descriptor,
        why: String,
    },
}

/// The receiving half: one snapshot file at a time, written to the snapshot directory.
pub struct Receiver {
    store: Arc<SnapshotStore>,
    cluster: ClusterId,
    state: State,
    /// Chunks of other files offered since the current one was last asked about.
    foreign: u32,
    /// Receptions started (names each one's part file).
    receptions: u64,
    logger: Logger,
}

/// Chunks of another file after which a reception that nobody asks about any more (its sender
/// died, or was deposed and gave up) yields to it. A live sender asks at least once per chunk
/// it sends, so two senders at similar paces cannot take the receiver from each other in turn:
/// the one holding it finishes first. A file being checked never yields (the check always
/// ends, and then the sender asks again).
pub const YIELD_AFTER: u32 = 32;

/// Answers "checking" after which a sender gives up (with its 20 ms polls, about 10 minutes).
pub const MAX_WAITS: u32 = 30_000;

/// The work after the last byte: sync the file, read it back and decode it. Slow for a large
/// state: run it on a blocking thread, then hand the result to [`Receiver::checked`].
pub struct CheckJob {
    store: Arc<SnapshotStore>,
    cluster: ClusterId,
    desc: Descriptor,
    reception: u64,
    out: Box<dyn FileWriter>,
}

/// What a [`CheckJob`] found.
pub struct CheckDone {
    desc: Descriptor,
    reception: u64,
    result: Result<Machine, String>,
}

impl CheckJob {
    /// Syncs, reads back, checks and decodes the received file; removes it if it is bad. A
    /// panic while decoding is caught and counts as a refusal, so the receiver never stays
    /// "checking" for ever.
    pub fn run(self) -> CheckDone {
        let (desc, reception) = (self.desc, self.reception);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.check()))
            .unwrap_or_else(|_| Err("checking the received snapshot panicked".to_string()));
        CheckDone {
            desc,
            reception,
            result,
        }
    }

    fn check(self) -> Result<Machine, String> {
        let desc = self.desc;
        if let Err(e) = self.out.finish(true) {
            self.store.discard_parts();
            return Err(format!("cannot write the received snapshot: {e}"));
        }
        let cluster = self.cluster;
        self.store
            .check_received(&desc, self.reception, |r, max| {
                let machine = Machine::decode_from(r, max)?;
                check_machine(&machine, &desc, cluster)?;
                Ok(machine)
            })
            .map(|(_, machine)| machine)
            .map_err(|e| e.to_string())
    }
}

/// A decoded snapshot state must be of this cluster, at the index and term it claims.
pub fn check_machine(
    machine: &Machine,
    desc: &Descriptor,
    cluster: ClusterId,
) -> Result<(), String> {
    if machine.cluster_id() != 0 && machine.cluster_id() != cluster.0 {
        return Err(format!(
            "a snapshot of cluster {:016x}, this is cluster {cluster}",
            machine.cluster_id()
        ));
    }
    if machine.applied_index() != desc.index || machine.applied_term() != desc.term {
        return Err(format!(
            "the snapshot's metadata says index {} term {}, its state is at index {} term {}",
            desc.index,
            desc.term,
            machine.applied_index(),
            machine.applied_term()
        ));
    }
    Ok(())
}

impl Receiver {
    /// A receiver writing into `store`, for the cluster `cluster`.
    pub fn new(store: Arc<SnapshotStore>, cluster: ClusterId, logger: Logger) -> Receiver {
        Receiver {
            store,
            cluster,
            state: State::Idle,
            foreign: 0,
            receptions: 0,
            logger,
        }
    }

    /// Takes one chunk from `from`: writes it if it is the next one of the file being received
    /// (starting a new file for another descriptor once the current one is abandoned: see
    /// [`YIELD_AFTER`]), and answers where the receiver is. The last chunk returns the
    /// [`CheckJob`] to run.
    pub fn offer(&mut self, from: u64, chunk: &SnapshotChunk) -> (ChunkAck, Option<CheckJob>) {
        use chunk_ack::State as S;
        let desc = descriptor_of(chunk);
        let len = chunk.data.len() as u64;
        if let Err(why) = check_chunk(chunk) {
            return (ack(S::Failed, 0, why), None);
        }
        let current = self.describe();
        if current == Some(desc) {
            self.foreign = 0;
        } else {
            let held = !matches!(self.state, State::Idle | State::Failed { .. });
            let checking = matches!(self.state, State::Checking { .. });
            if held && (checking || self.foreign < YIELD_AFTER) {
                // Another file is being received and its sender is alive: wait.
                self.foreign += 1;
                return (ack(S::Receiving, 0, String::new()), None);
            }
            self.foreign = 0;
            self.start(from, desc);
        }
        match &mut self.state {
            State::Receiving { out, next, .. } => {
                if chunk.offset != *next || len == 0 {
                    return (ack(S::Receiving, *next, String::new()), None);
                }
                if crc32fast::hash(&chunk.data) != chunk.data_crc {
                    let next = *next;
                    warn!(self.logger, "a snapshot chunk failed its checksum; asking again";
                        "from" => from, "offset" => chunk.offset);
                    return (ack(S::Receiving, next, String::new()), None);
                }
                if let Err(e) = io::Write::write_all(out, &chunk.data) {
                    let why = format!("cannot write the received snapshot: {e}");
                    self.fail(desc, why.clone());
                    self.state = State::Idle;
                    return (ack(S::Failed, 0, why), None);
                }
                *next += len;
                if *next < desc.size {
                    return (ack(S::Receiving, *next, String::new()), None);
                }
                let reception = self.receptions;
                let State::Receiving { out, .. } =
                    std::mem::replace(&mut self.state, State::Checking { desc, reception })
                else {
                    return (ack(S::Failed, 0, "lost the file".into()), None);
                };
                info!(self.logger, "snapshot received; checking it";
                    "from" => from, "index" => desc.index, "bytes" => desc.size);
                let job = CheckJob {
                    store: Arc::clone(&self.store),
                    cluster: self.cluster,
                    desc,
                    reception,
                    out,
                };
                (ack(S::Checking, desc.size, String::new()), Some(job))
            }
            State::Checking { .. } => (ack(S::Checking, desc.size, String::new()), None),
            State::Ready { .. } => (ack(S::Ready, desc.size, String::new()), None),
            State::Failed { why, .. } => {
                let why = std::mem::take(why);
                // Told once; a new attempt starts over.
                self.state = State::Idle;
                (ack(S::Failed, 0, why), None)
            }
            State::Idle => (ack(S::Failed, 0, "cannot start receiving".into()), None),
        }
    }

    fn start(&mut self, from: u64, desc: Descriptor) {
        match self.describe() {
            Some(old) => {
                info!(self.logger, "receiving a new snapshot; abandoning the previous one";
                "from" => from, "index" => desc.index, "bytes" => desc.size,
                "abandoned_index" => old.index)
            }
            None => info!(self.logger, "receiving a snapshot";
                "from" => from, "index" => desc.index, "term" => desc.term, "bytes" => desc.size),
        }
        self.state = State::Idle;
        self.receptions += 1;
        match self.store.receive(&desc, self.receptions) {
            Ok(out) => self.state = State::Receiving { desc, out, next: 0 },
            Err(e) => self.fail(desc, e.to_string()),
        }
    }

    fn fail(&mut self, desc: Descriptor, why: String) {
        warn!(self.logger, "refusing a received snapshot: {why}"; "index" => desc.index);
        self.store.discard_parts();
        self.state = State::Failed { desc, why };
    }

    /// The descriptor of what is being received or held, if anything.
    fn describe(&self) -> Option<Descriptor> {
        match &self.state {
            State::Idle => None,
            State::Receiving { desc, .. }
            | State::Checking { desc, .. }
            | State::Ready { desc, .. }
            | State::Failed { desc, .. } => Some(*desc),
        }
    }

    /// The result of a [`CheckJob`] (ignored if another reception has started meanwhile).
    pub fn checked(&mut self, done: CheckDone) {
        let CheckDone {
            desc,
            reception,
            result,
        } = done;
        if !matches!(self.state, State::Checking { desc: d, reception: r } if d == desc && r == reception)
        {
            return;
        }
        match result {
            Ok(machine) => {
                info!(self.logger, "received snapshot checked";
                    "index" => desc.index, "tuples" => machine.space().len());
                self.state = State::Ready {
                    desc,
                    machine: Box::new(machine),
                };
            }
            Err(why) => self.fail(desc, why),
        }
    }

    /// The decoded state for the snapshot message `msg`, which must name the file received and
    /// checked; hands it over (the receiver is then idle).
    pub fn take(&mut self, msg: &Message) -> Result<Box<Machine>, String> {
        let desc = Descriptor::of(msg.get_snapshot())?;
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Ready { desc: d, machine } if d == desc => Ok(machine),
            other => {
                self.state = other;
                Err(format!(
                    "a snapshot message for index {} whose file was not received and checked",
                    desc.index
                ))
            }
        }
    }
}

/// What any chunk must be, whatever the receiver's state.
fn check_chunk(chunk: &SnapshotChunk) -> Result<(), String> {
    let len = chunk.data.len() as u64;
    if chunk.index == 0 || chunk.term == 0 {
        return Err("a snapshot chunk at index or term 0".into());
    }
    if chunk.size == 0 || chunk.size > MAX_SNAPSHOT_BYTES {
        return Err(format!(
            "a snapshot of {} bytes (at most {MAX_SNAPSHOT_BYTES} are taken)",
            chunk.size
        ));
    }
    if chunk.data.len() > CHUNK {
        return Err(format!(
            "a chunk of {} bytes (at most {CHUNK})",
            chunk.data.len()
        ));
    }
    if chunk
        .offset
        .checked_add(len)
        .is_none_or(|end| end > chunk.size)
    {
        return Err(format!(
            "a chunk at {}..+{len} past the end of a {}-byte file",
            chunk.offset, chunk.size
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sending

/// What the sender does after an answer.
#[derive(Debug)]
pub enum Step {
    /// Send the next chunk (when the pace allows).
    Send,
    /// The receiver is checking the file: ask again a little later.
    Wait,
    /// The file is in place: send this snapshot message now.
    Ready(Message),
    /// The transfer failed: tell raft (`report_snapshot(Failure)`).
    Failed(String),
}

/// The sending half: one snapshot file to one peer.
pub struct Transfer {
    desc: Descriptor,
    msg: Message,
    /// The file, and how far it has been read.
    file: Option<(Box<dyn Read + Send>, u64)>,
    /// The offset the receiver asked for, once it has.
    next: Option<u64>,
    /// The furthest the receiver has been (progress resets the failure count).
    furthest: u64,
    failures: u32,
    /// "Checking" answers so far.
    waits: u32,
    /// File bytes sent (for the log).
    sent: u64,
}

impl Transfer {
    /// A transfer for the snapshot message `msg` (its data must be a [`Descriptor`]).
    pub fn new(msg: Message) -> Result<Transfer, String> {
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err("not a snapshot message".into());
        }
        let desc = Descriptor::of(msg.get_snapshot())?;
        Ok(Transfer {
            desc,
            msg,
            file: None,
            next: None,
            furthest: 0,
            failures: 0,
            waits: 0,
            sent: 0,
        })
    }

    /// The file being sent.
    pub fn descriptor(&self) -> Descriptor {
        self.desc
    }

    /// File bytes sent so far (resent ones included).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The next chunk (at most `max_len` bytes, and at most [`CHUNK`]): the bytes at the offset
    /// the receiver asked for, or an empty chunk to ask where it is (at first, after a failed
    /// request, and while it checks).
    pub fn chunk(
        &mut self,
        store: &SnapshotStore,
        max_len: usize,
    ) -> Result<SnapshotChunk, String> {
        let mut chunk = SnapshotChunk {
            index: self.desc.index,
            term: self.desc.term,
            size: self.desc.size,
            crc: self.desc.crc,
            offset: 0,
            data: Vec::new(),
            data_crc: 0,
        };
        let Some(next) = self.next.filter(|&n| n < self.desc.size) else {
            chunk.offset = self.next.unwrap_or(0);
            return Ok(chunk);
        };
        let reopen = self.file.as_ref().is_none_or(|(_, pos)| *pos > next);
        if reopen {
            let (reader, _) = store.open_raw(&self.desc).map_err(|e| e.to_string())?;
            self.file = Some((reader, 0));
        }
        let Some((reader, pos)) = self.file.as_mut() else {
            return Err("no file".into());
        };
        if *pos < next {
            let skipped = io::copy(&mut reader.take(next - *pos), &mut io::sink())
                .map_err(|e| format!("cannot read the snapshot file: {e}"))?;
            *pos += skipped;
            if *pos != next {
                return Err("the snapshot file is shorter than its descriptor".into());
            }
        }
        let len = (self.desc.size - next).min(CHUNK.min(max_len.max(1)) as u64) as usize;
        let mut data = vec![0u8; len];
        reader
            .read_exact(&mut data)
            .map_err(|e| format!("cannot read the snapshot file: {e}"))?;
        *pos += len as u64;
        chunk.offset = next;
        chunk.data_crc = crc32fast::hash(&data);
        chunk.data = data;
        self.sent += len as u64;
        Ok(chunk)
    }

    /// The receiver's answer to the last chunk (`None`: it sent none, so it cannot take
    /// streamed snapshots).
    pub fn answer(&mut self, ack: Option<&ChunkAck>) -> Step {
        use chunk_ack::State as S;
        let Some(ack) = ack else {
            return Step::Failed("the peer did not answer the snapshot chunk".into());
        };
        match S::try_from(ack.state) {
            Ok(S::Receiving) if ack.next < self.desc.size => {
                if ack.next > self.furthest {
                    self.furthest = ack.next;
                    self.failures = 0;
                }
                self.next = Some(ack.next);
                Step::Send
            }
            Ok(S::Receiving) => Step::Failed(format!(
                "the peer asked for offset {} of a {}-byte file",
                ack.next, self.desc.size
            )),
            Ok(S::Checking) if self.waits >= MAX_WAITS => {
                Step::Failed("the peer has been checking the snapshot for too long".into())
            }
            Ok(S::Checking) => {
                self.failures = 0;
                self.waits += 1;
                self.next = Some(self.desc.size);
                Step::Wait
            }
            Ok(S::Ready) => Step::Ready(self.msg.clone()),
            Ok(S::Failed) => Step::Failed(format!("the peer refused the snapshot: {}", ack.detail)),
            Err(_) => Step::Failed(format!("an unknown chunk answer {}", ack.state)),
        }
    }

    /// A request carrying a chunk was lost. Returns whether to give the transfer up.
    pub fn lost(&mut self) -> bool {
        self.failures += 1;
        // Ask where the receiver is before sending more.
        if self.next.is_some_and(|n| n < self.desc.size) {
            self.next = None;
        }
        self.failures >= MAX_FAILURES
    }
}

/// Sends the whole file of `msg` from `from`'s store to `receiver` at once, checks it, and
/// returns the state for the message: what the simulator does for a snapshot message (the real
/// transport interleaves the same steps with its requests).
pub fn transfer_now(
    msg: &Message,
    from_store: &SnapshotStore,
    receiver: &mut Receiver,
) -> Result<(), String> {
    let mut transfer = Transfer::new(msg.clone())?;
    // Bounded: every round moves a chunk forward or ends.
    let rounds = transfer.desc.size / CHUNK as u64 + 8;
    for _ in 0..rounds {
        let chunk = transfer.chunk(from_store, CHUNK)?;
        let (answer, job) = receiver.offer(msg.from, &chunk);
        if let Some(job) = job {
            receiver.checked(job.run());
        }
        match transfer.answer(Some(&answer)) {
            Step::Send | Step::Wait => {}
            Step::Ready(_) => return Ok(()),
            Step::Failed(why) => return Err(why),
        }
    }
    Err("the transfer did not finish".into())
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::ConfState;

    use super::*;

    const CLUSTER: ClusterId = ClusterId(7);

    fn store(dir: &std::path::Path) -> Arc<SnapshotStore> {
        Arc::new(SnapshotStore::open(dir, crate::logging::discard()).unwrap())
    }

    /// A leader's store holding a snapshot of `tuples` tuples at index 42, and its message.
    fn leader(dir: &std::path::Path, tuples: usize) -> (Arc<SnapshotStore>, Machine, Message) {
        let store = store(dir);
        let mut machine = Machine::new();
        machine.set_cluster_id(CLUSTER.0);
        machine.fill_for_tests(tuples);
        machine.mark_applied(42, 3);
        let view = machine.view();
        let meta = store
            .save_with(42, 3, &ConfState::from((vec![1, 2], vec![])), |w| {
                view.encode_to(w)
            })
            .unwrap();
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgSnapshot);
        msg.from = 1;
        msg.to = 2;
        msg.set_snapshot(meta.to_raft_snapshot());
        (store, machine, msg)
    }

    fn receiver(dir: &std::path::Path) -> Receiver {
        Receiver::new(store(dir), CLUSTER, crate::logging::discard())
    }

    #[test]
    fn a_snapshot_moves_in_chunks_and_decodes_to_the_same_state() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, machine, msg) = leader(&tmp.path().join("a"), 30_000);
        let desc = Descriptor::of(msg.get_snapshot()).unwrap();
        assert!(desc.size > 2 * CHUNK as u64, "{} bytes", desc.size);
        let b = store(&tmp.path().join("b"));
        let mut to = Receiver::new(Arc::clone(&b), CLUSTER, crate::logging::discard());
        // No state before the file is there.
        assert!(to.take(&msg).is_err());
        transfer_now(&msg, &from, &mut to).unwrap();
        let got = to.take(&msg).unwrap();
        assert_eq!(got.space().digest(), machine.space().digest());
        assert_eq!(got.applied_index(), 42);
        // Handed over once.
        assert!(to.take(&msg).is_err());
        // Installed where the node puts it.
        b.install_received(&desc).unwrap();
        assert_eq!(b.list().unwrap()[0].index, 42);
    }

    /// Requests lost on the way (or their answers) cost a resend of one chunk each, never a
    /// restart from the beginning; too many losses in a row give the transfer up.
    #[test]
    fn a_cut_transfer_resumes_where_the_receiver_is() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, _, msg) = leader(&tmp.path().join("a"), 30_000);
        let desc = Descriptor::of(msg.get_snapshot()).unwrap();
        let mut to = receiver(&tmp.path().join("b"));
        let mut transfer = Transfer::new(msg.clone()).unwrap();
        let mut round = 0u32;
        let mut lost = 0u64;
        loop {
            round += 1;
            assert!(round < 200, "no end");
            let chunk = transfer.chunk(&from, CHUNK / 3).unwrap();
            let (answer, job) = to.offer(1, &chunk);
            if let Some(job) = job {
                to.checked(job.run());
            }
            // Every third request's answer is lost (the chunk itself arrived).
            if round.is_multiple_of(3) {
                lost += chunk.data.len() as u64;
                assert!(!transfer.lost());
                continue;
            }
            match transfer.answer(Some(&answer)) {
                Step::Send | Step::Wait => {}
                Step::Ready(m) => {
                    assert_eq!(m.get_snapshot().get_metadata().index, 42);
                    break;
                }
                Step::Failed(why) => panic!("{why}"),
            }
        }
        // Each loss costs at most a resend of that chunk.
        assert!(
            transfer.sent() <= desc.size + lost,
            "sent {} of {}",
            transfer.sent(),
            desc.size
        );
        assert!(to.take(&msg).is_ok());

        // A peer that never answers: given up after MAX_FAILURES losses in a row.
        let mut transfer = Transfer::new(msg).unwrap();
        let gave_up = (0..MAX_FAILURES).map(|_| transfer.lost()).last();
        assert_eq!(gave_up, Some(true));
    }

    #[test]
    fn hostile_chunks_are_refused_and_nothing_half_received_is_installed() {
        use chunk_ack::State as S;
        let tmp = tempfile::tempdir().unwrap();
        let (from, _, msg) = leader(&tmp.path().join("a"), 5_000);
        let mut to = receiver(&tmp.path().join("b"));
        let mut transfer = Transfer::new(msg.clone()).unwrap();
        let first = transfer.chunk(&from, CHUNK).unwrap();
        let (answer, _) = to.offer(1, &first);
        assert_eq!((answer.state, answer.next), (S::Receiving as i32, 0));
        transfer.answer(Some(&answer));
        let good = transfer.chunk(&from, 1000).unwrap();
        let state = |c: &SnapshotChunk, to: &mut Receiver| {
            let (a, job) = to.offer(1, c);
            assert!(job.is_none());
            (S::try_from(a.state).unwrap(), a.next, a.detail)
        };
        // A flipped bit: not written, asked again.
        let mut bad = good.clone();
        bad.data[10] ^= 1;
        assert_eq!(state(&bad, &mut to).0, S::Receiving);
        assert_eq!(state(&bad, &mut to).1, 0);
        // Past the end, oversized, absurd sizes, index 0: refused.
        for (what, c) in [
            (
                "past the end",
                SnapshotChunk {
                    offset: good.size - 10,
                    ..good.clone()
                },
            ),
            (
                "too large",
                SnapshotChunk {
                    data: vec![0; CHUNK + 1],
                    ..good.clone()
                },
            ),
            (
                "huge file",
                SnapshotChunk {
                    size: MAX_SNAPSHOT_BYTES + 1,
                    ..good.clone()
                },
            ),
            (
                "index 0",
                SnapshotChunk {
                    index: 0,
                    ..good.clone()
                },
            ),
            (
                "overflow",
                SnapshotChunk {
                    offset: u64::MAX,
                    ..good.clone()
                },
            ),
        ] {
            let (s, _, detail) = state(&c, &mut to);
            assert_eq!(s, S::Failed, "{what}");
            assert!(!detail.is_empty(), "{what}");
        }
        // A chunk at another offset is not written: the answer names the one wanted.
        let ahead = SnapshotChunk {
            offset: 5000,
            ..good.clone()
        };
        assert_eq!(state(&ahead, &mut to).1, 0);
        // The good chunk still goes in.
        assert_eq!(state(&good, &mut to).1, good.data.len() as u64);
        // A snapshot message for the half-received file gets no state.
        assert!(to.take(&msg).is_err());
        // Nor does one whose data is not a descriptor.
        let mut forged = msg.clone();
        forged.mut_snapshot().set_data(vec![1, 2, 3].into());
        assert!(to.take(&forged).is_err());
    }

    /// Two senders at once (a deposed leader still streaming, and the new one): the file being
    /// received keeps the receiver while its sender keeps asking; a file nobody asks about any
    /// more yields after YIELD_AFTER chunks of the other.
    #[test]
    fn a_live_transfer_keeps_the_receiver_and_a_dead_one_yields() {
        use chunk_ack::State as S;
        let tmp = tempfile::tempdir().unwrap();
        let (a_store, _, a_msg) = leader(&tmp.path().join("a"), 20_000);
        // Another leader's snapshot at the same index: another file.
        let (b_store, _, b_msg) = leader(&tmp.path().join("b"), 20_500);
        assert_ne!(
            Descriptor::of(b_msg.get_snapshot()).unwrap(),
            Descriptor::of(a_msg.get_snapshot()).unwrap()
        );
        let mut to = receiver(&tmp.path().join("c"));
        let mut a = Transfer::new(a_msg.clone()).unwrap();
        let mut b = Transfer::new(b_msg).unwrap();
        let step = |t: &mut Transfer, store: &SnapshotStore, to: &mut Receiver| {
            let chunk = t.chunk(store, CHUNK / 4).unwrap();
            let (answer, job) = to.offer(1, &chunk);
            if let Some(job) = job {
                to.checked(job.run());
            }
            (t.answer(Some(&answer)), answer)
        };
        // A starts; B and A take turns: A keeps the receiver and finishes.
        step(&mut a, &a_store, &mut to);
        let mut a_done = false;
        for _ in 0..200 {
            let (_, answer) = step(&mut b, &b_store, &mut to);
            assert_eq!((answer.state, answer.next), (S::Receiving as i32, 0));
            if let (Step::Ready(_), _) = step(&mut a, &a_store, &mut to) {
                a_done = true;
                break;
            }
        }
        assert!(a_done, "the live transfer finished");
        assert!(to.take(&a_msg).is_ok());
        // B now gets the receiver at once (it is idle).
        let (_, answer) = step(&mut b, &b_store, &mut to);
        assert_eq!(answer.state, S::Receiving as i32);
        // A new transfer from A that then dies mid-way: B takes over after YIELD_AFTER chunks.
        let mut a = Transfer::new(a_msg).unwrap();
        let mut c = receiver(&tmp.path().join("d"));
        step(&mut a, &a_store, &mut c);
        step(&mut a, &a_store, &mut c);
        let mut b = Transfer::new(b.msg.clone()).unwrap();
        let mut waited = 0;
        loop {
            let (_, answer) = step(&mut b, &b_store, &mut c);
            if answer.next > 0 {
                break;
            }
            waited += 1;
            assert!(
                waited <= YIELD_AFTER as usize + 2,
                "B never got the receiver"
            );
        }
        assert!(
            waited >= YIELD_AFTER as usize,
            "B took over too soon: {waited}"
        );
    }

    /// A file that arrives whole but is not what its descriptor says is refused after the check,
    /// and the sender is told.
    #[test]
    fn a_file_that_is_not_the_described_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, _, mut msg) = leader(&tmp.path().join("a"), 100);
        let mut desc = Descriptor::of(msg.get_snapshot()).unwrap();
        desc.crc ^= 1;
        let mut snap = msg.get_snapshot().clone();
        snap.set_data(desc.to_data().into());
        msg.set_snapshot(snap);
        let mut to = receiver(&tmp.path().join("b"));
        // The sender reads the file under its real name; only the whole CRC disagrees.
        let err = transfer_now(&msg, &from, &mut to).unwrap_err();
        assert!(err.contains("refused"), "{err}");
        assert!(to.take(&msg).is_err());
        // Of another cluster: refused too.
        let (from, _, msg) = leader(&tmp.path().join("c"), 10);
        let mut other = Receiver::new(
            store(&tmp.path().join("d")),
            ClusterId(8),
            crate::logging::discard(),
        );
        let err = transfer_now(&msg, &from, &mut other).unwrap_err();
        assert!(err.contains("cluster"), "{err}");
    }
}
