//! What the receiving side does with a peer frame, without any I/O: authenticate it, refuse
//! replays, decode the batch, and screen each message with the checks that need no raft state.
//! The [`Server`](super::Server) runs every frame it receives through this, and so does the
//! simulator's network, so a simulated cluster refuses exactly what a real one refuses.

use std::sync::Arc;

use prost::Message as _;
use raft::eraftpb::{Message, MessageType};
use slog::Logger;

use super::Delivery;
use crate::machine::Machine;
use crate::peer_auth::{Header, PeerAuth, ReplayGuard};
use crate::proto::{RaftAck, RaftBatch};
use crate::raft_check;
use crate::refusals::Refuser;

/// A frame refused whole: the refusal's counter kind and what was wrong. The sender gets no
/// answer (its connection is closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The refusal counter.
    pub kind: &'static str,
    /// Why.
    pub detail: String,
}

/// A snapshot message whose state is still to be checked, and its place in its batch.
pub struct PendingSnapshot {
    at: usize,
    msg: Message,
}

impl PendingSnapshot {
    /// The state for this snapshot message: `receiver` must have received, checked and decoded
    /// the file its descriptor names ([`raft_check::check_snapshot`],
    /// [`Receiver::take`](crate::snapshot_stream::Receiver::take)).
    pub fn check(
        &self,
        receiver: &mut crate::snapshot_stream::Receiver,
    ) -> Result<Box<Machine>, String> {
        raft_check::check_snapshot(&self.msg)?;
        receiver.take(&self.msg)
    }

    /// The snapshot message.
    pub fn msg(&self) -> &Message {
        &self.msg
    }
}

/// The receiving side's state: this node's keys and the newest batch number accepted from each
/// sender.
pub struct Inbound {
    auth: Arc<PeerAuth>,
    replays: ReplayGuard,
}

impl Inbound {
    /// The receiving side of the node `auth` speaks for.
    pub fn new(auth: Arc<PeerAuth>) -> Inbound {
        Inbound {
            auth,
            replays: ReplayGuard::new(),
        }
    }

    /// Authenticates `payload` (a sealed batch), refuses a replay, and decodes the batch.
    pub fn open(&mut self, payload: &[u8]) -> Result<(Header, RaftBatch), Refused> {
        let refused = |kind: &'static str, detail: String| Refused { kind, detail };
        let (header, body) = self
            .auth
            .open_batch(payload)
            .map_err(|r| refused(r.kind(), r.to_string()))?;
        self.replays
            .admit(&header)
            .map_err(|r| refused(r.kind(), r.to_string()))?;
        let batch = RaftBatch::decode(body).map_err(|err| {
            refused(
                "peer.bad_batch",
                format!("undecodable RaftBatch from node {}: {err}", header.from),
            )
        })?;
        Ok((header, batch))
    }

    /// Decodes the messages of an authentic batch and keeps those that pass
    /// [`raft_check::check_envelope`] (each refusal counted and logged). A snapshot message is
    /// returned apart: its file must have been received and checked
    /// ([`PendingSnapshot::check`]) before [`admit_snapshot`](Self::admit_snapshot).
    pub fn screen(
        &self,
        header: &Header,
        batch: RaftBatch,
        refuser: &Refuser,
        logger: &Logger,
    ) -> (Delivery, Option<PendingSnapshot>) {
        let from = header.from;
        let source = format!("node {from}");
        let mut msgs = Vec::with_capacity(batch.messages.len());
        let mut snapshot = None;
        for bytes in &batch.messages {
            let msg = match <Message as protobuf::Message>::parse_from_bytes(bytes) {
                Ok(msg) => msg,
                Err(err) => {
                    refuser.refuse(logger, "raft.undecodable", &source, &err.to_string());
                    continue;
                }
            };
            if let Err(refusal) = raft_check::check_envelope(&msg, from, self.auth.me()) {
                refuser.refuse(logger, refusal.kind(), &source, &refusal.to_string());
                continue;
            }
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                if snapshot.is_some() {
                    refuser.refuse(
                        logger,
                        "raft.invariant",
                        &source,
                        "a second snapshot in one batch",
                    );
                    continue;
                }
                snapshot = Some(PendingSnapshot {
                    at: msgs.len(),
                    msg,
                });
                continue;
            }
            msgs.push(msg);
        }
        let delivery = Delivery {
            from,
            from_url: batch.from_url,
            msgs,
            snapshot: None,
        };
        (delivery, snapshot)
    }

    /// Puts the snapshot message whose state `checked` says is sound back in its place in
    /// `delivery`, or refuses it.
    pub fn admit_snapshot(
        delivery: &mut Delivery,
        pending: PendingSnapshot,
        checked: Result<Box<Machine>, String>,
        refuser: &Refuser,
        logger: &Logger,
    ) {
        match checked {
            Ok(machine) => {
                delivery.snapshot = Some(machine);
                let at = pending.at.min(delivery.msgs.len());
                delivery.msgs.insert(at, pending.msg);
            }
            Err(why) => refuser.refuse(
                logger,
                "raft.bad_snapshot",
                &format!("node {}", delivery.from),
                &why,
            ),
        }
    }

    /// The sealed acknowledgement of the batch `header` names: how many of its messages were
    /// handed to raft, and whether its sender has been removed from the cluster.
    pub fn ack(
        &self,
        header: &Header,
        accepted: usize,
        sender_removed: bool,
        chunk: Option<crate::proto::ChunkAck>,
    ) -> Vec<u8> {
        let ack = RaftAck {
            accepted: u32::try_from(accepted).unwrap_or(u32::MAX),
            sender_removed,
            chunk,
        }
        .encode_to_vec();
        self.auth.seal_ack(header, &ack)
    }
}
