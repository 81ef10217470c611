//! The client endpoint's identity gate: checks every request's signature before the node sees
//! it, and refuses replays of session-less admin requests.
//!
//! Writes are replay-proof through their session (a request number is applied once). Requests
//! outside a session (membership changes, `status --digest`) carry an expiry instead
//! (`not_after_ms`, in cluster time, at most 10 minutes ahead: the client learns cluster time
//! from a node's status); the gate remembers the requests it let through (the hash of their signed
//! bytes) until they expire (at most [`MAX_REMEMBERED`]) and refuses the same request again. Cluster time, not a wall
//! clock: no node's clock step makes a fresh request stale or a stale one fresh.

// The error side is the answer sent to the client, built once and moved along (as in the state
// machine and the endpoint).
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use crate::answer::error;
use crate::identity::{self, Opened, Signer, Unsealed};
use crate::proto::{self, error::Code, response};
use crate::verifier::Verifier;

/// The most session-less requests remembered at once.
pub const MAX_REMEMBERED: usize = 16_384;

/// Checks requests for one cluster.
#[derive(Debug)]
pub struct Gate {
    cluster_id: u64,
    verifier: Verifier,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    requests: HashSet<[u8; 32]>,
    by_expiry: BTreeSet<(u64, [u8; 32])>,
}

impl Gate {
    /// A gate for cluster `cluster_id`, checking signatures with `verifier`.
    pub fn new(cluster_id: u64, verifier: Verifier) -> Gate {
        Gate {
            cluster_id,
            verifier,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// The cluster whose requests pass.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Verifies `request`'s signature, if any; `in_flight` requests are running at the endpoint,
    /// this one included (see [`Verifier::verify`]).
    pub async fn open(
        &self,
        request: proto::Request,
        in_flight: usize,
    ) -> Result<Opened, response::Result> {
        let refused = |(code, why)| error(code, why);
        match identity::unseal(request).map_err(refused)? {
            Unsealed::Plain(opened) => Ok(opened),
            Unsealed::Signed(mut sealed) => {
                let message = std::mem::take(&mut sealed.message);
                let verified = self
                    .verifier
                    .verify(
                        &sealed.inner.public_key,
                        message,
                        &sealed.signature,
                        in_flight,
                    )
                    .await;
                sealed.finish(verified, self.cluster_id).map_err(refused)
            }
        }
    }

    /// A session-less request that needs the admin, at cluster time `now_ms`: it must be
    /// signed, not be expired nor valid for more than [`identity::MAX_VALIDITY_MS`], and not
    /// have been seen before. (That the signer is the admin is the node's to check, against the
    /// replicated registry.)
    pub fn once(&self, signer: Option<&Signer>, now_ms: u64) -> Result<(), response::Result> {
        let Some(signer) = signer else {
            return Err(error(
                Code::Unauthenticated,
                "this needs the admin: sign the request with the admin's key (`microblog \
                 --admin`)",
            ));
        };
        if signer.not_after_ms == 0 {
            return Err(error(
                Code::Unauthenticated,
                "a request outside a session must say when it expires (not_after_ms)",
            ));
        }
        if signer.not_after_ms < now_ms {
            return Err(error(
                Code::Unauthenticated,
                "the signed request has expired (cluster time is past its not_after_ms)",
            ));
        }
        if signer.not_after_ms > now_ms.saturating_add(identity::MAX_VALIDITY_MS) {
            return Err(error(
                Code::Unauthenticated,
                "the signed request says it is valid for more than 10 minutes of cluster time",
            ));
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some((expiry, _)) = seen.by_expiry.first()
            && (*expiry < now_ms || seen.requests.len() >= MAX_REMEMBERED)
        {
            if let Some((_, sig)) = seen.by_expiry.pop_first() {
                seen.requests.remove(&sig);
            }
        }
        if !seen.requests.insert(signer.request_hash) {
            return Err(error(
                Code::Unauthenticated,
                "this signed request was received before: a replay is refused",
            ));
        }
        seen.by_expiry
            .insert((signer.not_after_ms, signer.request_hash));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[tokio::test]
    async fn a_session_less_request_passes_once() {
        let gate = Gate::new(9, Verifier::inline());
        let admin = Identity::generate(identity::ADMIN);
        let now = 1_000;
        let request = proto::Request {
            not_after_ms: now + 500,
            op: Some(proto::request::Op::Status(proto::StatusRequest {
                digest: true,
            })),
            ..Default::default()
        };
        let sealed = admin.seal(request.clone(), 9);
        let opened = gate.open(sealed.clone(), 1).await.unwrap();
        assert!(gate.once(opened.signer.as_ref(), now).is_ok());
        let again = gate.open(sealed, 1).await.unwrap();
        assert!(gate.once(again.signer.as_ref(), now).is_err(), "a replay");
        assert!(gate.once(None, now).is_err());
        // Expired, or valid for too long.
        for not_after_ms in [now - 1, now + identity::MAX_VALIDITY_MS + 1] {
            let sealed = admin.seal(
                proto::Request {
                    not_after_ms,
                    ..request.clone()
                },
                9,
            );
            let opened = gate.open(sealed, 1).await.unwrap();
            assert!(gate.once(opened.signer.as_ref(), now).is_err());
        }
    }
}
