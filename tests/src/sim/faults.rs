//! The faults a run draws from its seed: the network's behaviour, and the events that break
//! things (partitions, crashes, clocks, membership changes, attackers).

use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use raftnode::raft_check::SANE;
use rand::Rng;
use rand::rngs::StdRng;

use super::Scenario;
use super::queue::{Nanos, ms};

/// How the network behaves (redrawn now and then).
#[derive(Clone, Debug)]
pub struct NetParams {
    /// Every message's least delay.
    pub base: Nanos,
    /// Up to this much more.
    pub jitter: Nanos,
    /// Chance a message is much later (so messages overtake each other).
    pub slow: f64,
    /// Chance a peer frame is lost.
    pub loss: f64,
    /// Chance a peer frame arrives twice (its second copy is a replay the endpoint refuses).
    pub duplicate: f64,
    /// Chance a sender's transport sends the same raft messages again later, in a new batch.
    pub resend: f64,
    /// Chance a client's request or its answer is lost.
    pub client_loss: f64,
}

impl NetParams {
    /// A network drawn from `rng`: from pristine to lossy and slow.
    pub fn draw(rng: &mut StdRng) -> NetParams {
        let lossy = rng.gen_bool(0.5);
        NetParams {
            base: rng.gen_range(ms(0)..ms(3)) + 100_000,
            jitter: rng.gen_range(ms(0)..ms(8)),
            slow: if lossy { rng.gen_range(0.0..0.05) } else { 0.0 },
            loss: if lossy { rng.gen_range(0.0..0.08) } else { 0.0 },
            duplicate: if lossy { rng.gen_range(0.0..0.03) } else { 0.0 },
            resend: rng.gen_range(0.0..0.03),
            client_loss: if lossy { rng.gen_range(0.0..0.03) } else { 0.0 },
        }
    }

    /// The network once the faults end: prompt and lossless.
    pub fn calm() -> NetParams {
        NetParams {
            base: 200_000,
            jitter: ms(1),
            slow: 0.0,
            loss: 0.0,
            duplicate: 0.0,
            resend: 0.0,
            client_loss: 0.0,
        }
    }
}

/// What an attacker sends.
#[derive(Clone, Copy, Debug)]
pub enum Hostile {
    /// Random bytes.
    Garbage,
    /// A real frame with one bit flipped.
    BitFlip,
    /// A real frame again (refused, unless its receiver restarted since: then it is a late
    /// duplicate raft copes with).
    Replay,
    /// A frame sealed with another cluster's key.
    ForeignCluster,
    /// An authentic frame from a node that is not a member.
    Stranger,
    /// An authentic frame from a member carrying messages no peer may send.
    Malformed,
}

/// One fault.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Cut some links (healed a little later).
    Partition,
    /// Heal every link.
    Heal,
    /// Crash a node: its process (`power: false`) or its machine.
    Crash {
        /// Whether unsynced writes are lost too.
        power: bool,
    },
    /// Crash a node at its n-th write from now, in the middle of whatever it does.
    CrashAtWrite(u64),
    /// A node's clock runs at this many parts per million.
    ClockRate(u64),
    /// A node's monotonic clock jumps forward (a paused VM).
    ClockJump(Duration),
    /// Add or remove a node.
    Membership,
    /// An attacker sends a frame.
    Hostile(Hostile),
    /// The network changes character.
    Network,
}

impl Fault {
    /// The next fault.
    pub fn draw(rng: &mut StdRng, scenario: &Scenario) -> Fault {
        let roll = rng.gen_range(0..100);
        match roll {
            0..=17 => Fault::Partition,
            18..=24 => Fault::Heal,
            25..=39 => Fault::Crash {
                power: rng.gen_bool(0.6),
            },
            40..=49 => Fault::CrashAtWrite(rng.gen_range(0..40)),
            50..=55 => Fault::ClockRate(rng.gen_range(500_000..2_000_000)),
            56..=61 => Fault::ClockJump(Duration::from_millis(rng.gen_range(50..20_000))),
            62..=71 if scenario.membership => Fault::Membership,
            62..=71 => Fault::Partition,
            72..=91 => Fault::Hostile(match rng.gen_range(0..6) {
                0 => Hostile::Garbage,
                1 => Hostile::BitFlip,
                2 => Hostile::Replay,
                3 => Hostile::ForeignCluster,
                4 => Hostile::Stranger,
                _ => Hostile::Malformed,
            }),
            _ => Fault::Network,
        }
    }
}

/// A heartbeat `from` → `to` in `term`.
pub fn heartbeat(from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// A message from `from` to `to` that the endpoint or admission must refuse whatever raft's
/// state: a forged sender, another receiver, a local type, a term out of range, a term-less vote
/// request, an empty proposal.
pub fn malformed(rng: &mut StdRng, from: u64, to: u64) -> Message {
    let mut m = heartbeat(from, to, rng.gen_range(1..100));
    match rng.gen_range(0..6) {
        0 => m.from = from + 1_000,
        1 => m.to = to + 1_000,
        2 => m.set_msg_type(MessageType::MsgHup),
        3 => m.term = SANE + rng.gen_range(0..1_000),
        4 => {
            m.set_msg_type(MessageType::MsgRequestVote);
            m.term = 0;
        }
        _ => {
            m.set_msg_type(MessageType::MsgPropose);
            m.term = 0;
        }
    }
    m
}
