//! Authenticated peer frames: every batch of raft messages and every acknowledgement carries the
//! cluster id, the sender, the receiver, a sequence number and a MAC (keyed BLAKE3) over all of
//! it and the payload.
//!
//! # Layout
//!
//! All integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic: `RNB1` for a batch, `RNA1` for an acknowledgement |
//! | 4 | key id: which cluster key made the MAC ([`ClusterKey::id`]) |
//! | 8 | cluster id |
//! | 8 | sender's node id |
//! | 8 | receiver's node id |
//! | 8 | sender's incarnation (a counter its data dir raises at every start) |
//! | 8 | sequence number (strictly increasing within an incarnation) |
//! | 32 | MAC: `BLAKE3-keyed(key, the 48 bytes above ‖ payload)` |
//! | … | payload: a prost `RaftBatch`, or a `RaftAck` |
//!
//! An acknowledgement repeats its request's incarnation and sequence number, so it answers that
//! request and no other. A receiver refuses, before decoding anything of the payload: a frame
//! too short to hold the header; another magic; another cluster (by name: "batch from cluster X,
//! this is cluster Y"); an unknown key id; a MAC that does not verify; a frame addressed to
//! another node; and a batch whose (incarnation, sequence number) is not above the last one it
//! accepted from that sender ([`ReplayGuard`]): a recorded batch cannot be played again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::keys::{ClusterId, ClusterKey, KeyRing, Keys};

/// The magic of a batch.
pub const BATCH_MAGIC: [u8; 4] = *b"RNB1";
/// The magic of an acknowledgement.
pub const ACK_MAGIC: [u8; 4] = *b"RNA1";
/// Bytes before the MAC.
const SIGNED_HEADER: usize = 48;
/// Bytes before the payload.
pub const HEADER_LEN: usize = SIGNED_HEADER + 32;

/// The authenticated fields of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The cluster.
    pub cluster: ClusterId,
    /// Who sent it.
    pub from: u64,
    /// Whom it is for.
    pub to: u64,
    /// The sender's incarnation (for a batch), or the request's (for an acknowledgement).
    pub incarnation: u64,
    /// The sender's sequence number (for a batch), or the request's (for an acknowledgement).
    pub seq: u64,
}

/// Why a frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Too short for the header.
    #[error("a frame of {0} bytes is too short for a peer frame header")]
    Short(usize),
    /// Not a raftnode peer frame of the expected kind.
    #[error("not a raftnode peer frame (magic {0:02x?})")]
    Magic([u8; 4]),
    /// A node of another cluster (or one given the wrong cluster file).
    #[error("batch from cluster {theirs}, this is cluster {ours}")]
    WrongCluster {
        /// The cluster the frame names.
        theirs: ClusterId,
        /// This node's cluster.
        ours: ClusterId,
    },
    /// Signed with a key this node does not hold.
    #[error(
        "signed by node {from} with an unknown key {key_id:08x} (a key rotation not done everywhere?)"
    )]
    UnknownKey {
        /// The claimed sender.
        from: u64,
        /// The key id the frame names.
        key_id: u32,
    },
    /// The MAC does not verify: forged or corrupted.
    #[error("the MAC of a frame claiming to be from node {from} does not verify")]
    BadMac {
        /// The claimed sender.
        from: u64,
    },
    /// Authentic, but for another node.
    #[error("a frame from node {from} for node {to} reached node {me}")]
    Misaddressed {
        /// The sender.
        from: u64,
        /// The node it is for.
        to: u64,
        /// This node.
        me: u64,
    },
    /// Authentic, but node id 0 (reserved) as the sender.
    #[error("a frame from node id 0")]
    NoSender,
    /// Authentic, but not newer than the last batch accepted from that sender.
    #[error(
        "a batch from node {from} numbered ({incarnation}, {seq}), not after ({last_incarnation}, \
         {last_seq}): a replay"
    )]
    Replay {
        /// The sender.
        from: u64,
        /// The batch's incarnation.
        incarnation: u64,
        /// The batch's number.
        seq: u64,
        /// The newest accepted incarnation from that sender.
        last_incarnation: u64,
        /// The newest accepted number.
        last_seq: u64,
    },
}

impl Refusal {
    /// The refusal counter this counts under.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Short(_) | Refusal::Magic(_) => "peer.not_a_peer_frame",
            Refusal::WrongCluster { .. } => "peer.wrong_cluster",
            Refusal::UnknownKey { .. } => "peer.unknown_key",
            Refusal::BadMac { .. } => "peer.bad_mac",
            Refusal::Misaddressed { .. } => "peer.misaddressed",
            Refusal::NoSender => "peer.no_sender",
            Refusal::Replay { .. } => "peer.replay",
        }
    }
}

fn mac(key: &ClusterKey, signed: &[u8], payload: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(key.bytes());
    hasher.update(signed);
    hasher.update(payload);
    hasher.finalize()
}

/// Builds a frame: the header, signed with the signing key, then the payload.
pub fn seal(keys: &Keys, magic: [u8; 4], header: &Header, payload: &[u8]) -> Vec<u8> {
    let key = keys.signing();
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&magic);
    frame.extend_from_slice(&key.id().to_le_bytes());
    for field in [
        header.cluster.0,
        header.from,
        header.to,
        header.incarnation,
        header.seq,
    ] {
        frame.extend_from_slice(&field.to_le_bytes());
    }
    let tag = mac(key, &frame, payload);
    frame.extend_from_slice(tag.as_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn u64_at(frame: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&frame[at..at + 8]);
    u64::from_le_bytes(le)
}

/// Checks a frame addressed to node `me` and returns its header and payload. Nothing of the
/// payload is read unless the MAC verifies.
pub fn open<'a>(
    keys: &Keys,
    magic: [u8; 4],
    me: u64,
    frame: &'a [u8],
) -> Result<(Header, &'a [u8]), Refusal> {
    if frame.len() < HEADER_LEN {
        return Err(Refusal::Short(frame.len()));
    }
    let got: [u8; 4] = [frame[0], frame[1], frame[2], frame[3]];
    if got != magic {
        return Err(Refusal::Magic(got));
    }
    let key_id = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let header = Header {
        cluster: ClusterId(u64_at(frame, 8)),
        from: u64_at(frame, 16),
        to: u64_at(frame, 24),
        incarnation: u64_at(frame, 32),
        seq: u64_at(frame, 40),
    };
    if header.cluster != keys.cluster {
        return Err(Refusal::WrongCluster {
            theirs: header.cluster,
            ours: keys.cluster,
        });
    }
    let key = keys.by_id(key_id).ok_or(Refusal::UnknownKey {
        from: header.from,
        key_id,
    })?;
    let mut tag = [0u8; 32];
    tag.copy_from_slice(&frame[SIGNED_HEADER..HEADER_LEN]);
    let payload = &frame[HEADER_LEN..];
    // `blake3::Hash` compares in constant time.
    if mac(key, &frame[..SIGNED_HEADER], payload) != blake3::Hash::from(tag) {
        return Err(Refusal::BadMac { from: header.from });
    }
    if header.from == 0 {
        return Err(Refusal::NoSender);
    }
    if header.to != me {
        return Err(Refusal::Misaddressed {
            from: header.from,
            to: header.to,
            me,
        });
    }
    Ok((header, payload))
}

/// This node's side of peer authentication: its keys, its id, its incarnation and the numbering
/// of the batches it sends. One per node, shared by the sending and receiving sides.
pub struct PeerAuth {
    keys: KeyRing,
    me: u64,
    incarnation: u64,
    next_seq: AtomicU64,
}

impl PeerAuth {
    /// Authentication for node `me` in its `incarnation` (see
    /// [`RaftStorage::begin_incarnation`](crate::storage::RaftStorage::begin_incarnation)).
    pub fn new(keys: KeyRing, me: u64, incarnation: u64) -> Arc<PeerAuth> {
        Arc::new(PeerAuth {
            keys,
            me,
            incarnation,
            next_seq: AtomicU64::new(1),
        })
    }

    /// This node's id.
    pub fn me(&self) -> u64 {
        self.me
    }

    /// The keys now in force.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.current()
    }

    /// The key ring (to replace the keys at run time).
    pub fn key_ring(&self) -> &KeyRing {
        &self.keys
    }

    /// Seals a batch for node `to`, numbered after every batch this node sent before.
    pub fn seal_batch(&self, to: u64, payload: &[u8]) -> (Vec<u8>, Header) {
        let keys = self.keys.current();
        let header = Header {
            cluster: keys.cluster,
            from: self.me,
            to,
            incarnation: self.incarnation,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        };
        (seal(&keys, BATCH_MAGIC, &header, payload), header)
    }

    /// Checks a batch sent to this node; the replay check is the caller's ([`ReplayGuard`]).
    pub fn open_batch<'a>(&self, frame: &'a [u8]) -> Result<(Header, &'a [u8]), Refusal> {
        open(&self.keys.current(), BATCH_MAGIC, self.me, frame)
    }

    /// Seals the acknowledgement of `request` (a batch this node received).
    pub fn seal_ack(&self, request: &Header, payload: &[u8]) -> Vec<u8> {
        let keys = self.keys.current();
        let header = Header {
            cluster: keys.cluster,
            from: self.me,
            to: request.from,
            incarnation: request.incarnation,
            seq: request.seq,
        };
        seal(&keys, ACK_MAGIC, &header, payload)
    }

    /// Checks the acknowledgement of `request` (a batch this node sent): from its receiver, for
    /// exactly that batch.
    pub fn open_ack<'a>(&self, request: &Header, frame: &'a [u8]) -> Result<&'a [u8], Refusal> {
        let (header, payload) = open(&self.keys.current(), ACK_MAGIC, self.me, frame)?;
        if header.from != request.to
            || header.incarnation != request.incarnation
            || header.seq != request.seq
        {
            return Err(Refusal::Replay {
                from: header.from,
                incarnation: header.incarnation,
                seq: header.seq,
                last_incarnation: request.incarnation,
                last_seq: request.seq,
            });
        }
        Ok(payload)
    }
}

/// The most senders whose numbering a [`ReplayGuard`] remembers (only authenticated senders get
/// in, so this is far above any real cluster).
const MAX_SENDERS: usize = 1024;

/// The newest (incarnation, sequence number) accepted from each sender.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    newest: HashMap<u64, (u64, u64)>,
}

impl ReplayGuard {
    /// An empty guard.
    pub fn new() -> ReplayGuard {
        ReplayGuard::default()
    }

    /// Accepts `header` if it is newer than everything accepted from its sender before, and
    /// remembers it.
    pub fn admit(&mut self, header: &Header) -> Result<(), Refusal> {
        let this = (header.incarnation, header.seq);
        if let Some(&(last_incarnation, last_seq)) = self.newest.get(&header.from)
            && this <= (last_incarnation, last_seq)
        {
            return Err(Refusal::Replay {
                from: header.from,
                incarnation: header.incarnation,
                seq: header.seq,
                last_incarnation,
                last_seq,
            });
        }
        if self.newest.len() >= MAX_SENDERS && !self.newest.contains_key(&header.from) {
            // Forget the sender heard from least recently in sequence terms; it can only be a
            // stale id, and forgetting it only reopens the replay of its old batches to raft,
            // which tolerates duplicates.
            if let Some(oldest) = self.newest.iter().min_by_key(|(_, v)| **v).map(|(k, _)| *k) {
                self.newest.remove(&oldest);
            }
        }
        self.newest.insert(header.from, this);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(from: u64, to: u64, inc: u64, seq: u64, keys: &Keys) -> Header {
        Header {
            cluster: keys.cluster,
            from,
            to,
            incarnation: inc,
            seq,
        }
    }

    #[test]
    fn seal_then_open() {
        let keys = Keys::generate();
        let h = header(1, 2, 3, 4, &keys);
        let frame = seal(&keys, BATCH_MAGIC, &h, b"payload");
        let (got, payload) = open(&keys, BATCH_MAGIC, 2, &frame).unwrap();
        assert_eq!(got, h);
        assert_eq!(payload, b"payload");
        // Not an ack, not for node 3.
        assert!(matches!(
            open(&keys, ACK_MAGIC, 2, &frame),
            Err(Refusal::Magic(_))
        ));
        assert!(matches!(
            open(&keys, BATCH_MAGIC, 3, &frame),
            Err(Refusal::Misaddressed { to: 2, me: 3, .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let keys = Keys::generate();
        let frame = seal(
            &keys,
            BATCH_MAGIC,
            &header(1, 2, 3, 4, &keys),
            b"some payload",
        );
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    open(&keys, BATCH_MAGIC, 2, &bad).is_err(),
                    "flipping bit {bit} of byte {byte} went unnoticed"
                );
            }
        }
        for len in 0..frame.len() {
            assert!(open(&keys, BATCH_MAGIC, 2, &frame[..len]).is_err());
        }
    }

    #[test]
    fn other_clusters_and_keys_are_refused_by_name() {
        let ours = Keys::generate();
        let theirs = Keys::generate();
        let frame = seal(&theirs, BATCH_MAGIC, &header(1, 2, 1, 1, &theirs), b"x");
        let err = open(&ours, BATCH_MAGIC, 2, &frame).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "batch from cluster {}, this is cluster {}",
                theirs.cluster, ours.cluster
            )
        );
        // Same cluster id, another key: an attacker who guessed the id.
        let forger = Keys::new(ours.cluster, vec![ClusterKey::random()]).unwrap();
        let forged = seal(&forger, BATCH_MAGIC, &header(1, 2, 1, 1, &ours), b"x");
        assert!(matches!(
            open(&ours, BATCH_MAGIC, 2, &forged),
            Err(Refusal::UnknownKey { from: 1, .. })
        ));
        // A known key id with the wrong key bytes: the MAC fails.
        let mut spliced = forged.clone();
        spliced[4..8].copy_from_slice(&ours.signing().id().to_le_bytes());
        assert!(matches!(
            open(&ours, BATCH_MAGIC, 2, &spliced),
            Err(Refusal::BadMac { from: 1 })
        ));
    }

    #[test]
    fn rotation_accepts_old_and_new_keys() {
        let old = Keys::generate();
        let both = old.with_new_key().unwrap();
        let new_first = both.promote_newest();
        let new_only = new_first.retire_others();
        let from_old = seal(&old, BATCH_MAGIC, &header(1, 2, 1, 1, &old), b"x");
        let from_new = seal(&new_first, BATCH_MAGIC, &header(1, 2, 1, 1, &old), b"x");
        for receiver in [&both, &new_first] {
            assert!(open(receiver, BATCH_MAGIC, 2, &from_old).is_ok());
            assert!(open(receiver, BATCH_MAGIC, 2, &from_new).is_ok());
        }
        assert!(open(&old, BATCH_MAGIC, 2, &from_new).is_err());
        assert!(open(&new_only, BATCH_MAGIC, 2, &from_old).is_err());
    }

    #[test]
    fn an_ack_answers_its_own_request_only() {
        let keys = Keys::generate();
        let a = PeerAuth::new(KeyRing::new(keys.clone()), 1, 1);
        let b = PeerAuth::new(KeyRing::new(keys), 2, 1);
        let (batch, sent) = a.seal_batch(2, b"batch");
        let (got, payload) = b.open_batch(&batch).unwrap();
        assert_eq!((got, payload), (sent, &b"batch"[..]));
        let ack = b.seal_ack(&got, b"ack");
        assert_eq!(a.open_ack(&sent, &ack).unwrap(), b"ack");
        // The ack of one batch does not answer the next one.
        let (_, next) = a.seal_batch(2, b"batch 2");
        assert!(a.open_ack(&next, &ack).is_err());
        // A batch is not an ack.
        assert!(a.open_ack(&sent, &batch).is_err());
    }

    #[test]
    fn replays_are_refused() {
        let keys = Keys::generate();
        let mut guard = ReplayGuard::new();
        guard.admit(&header(1, 2, 5, 10, &keys)).unwrap();
        guard.admit(&header(1, 2, 5, 11, &keys)).unwrap();
        assert!(guard.admit(&header(1, 2, 5, 11, &keys)).is_err());
        assert!(guard.admit(&header(1, 2, 5, 3, &keys)).is_err());
        assert!(guard.admit(&header(1, 2, 4, 99, &keys)).is_err());
        // A restart of the sender: a higher incarnation starts its numbering again.
        guard.admit(&header(1, 2, 6, 1, &keys)).unwrap();
        // Senders are numbered independently.
        guard.admit(&header(3, 2, 1, 1, &keys)).unwrap();
    }
}
