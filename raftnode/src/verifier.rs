//! Checks the signatures of the requests a node receives, in batches.
//!
//! One Ed25519 check costs ~37 µs on this project's 2-core test machine; checking the requests
//! that are waiting together (`ed25519_dalek::verify_batch`, one multiscalar multiplication for
//! the lot) costs ~16 µs each from a batch of 16 on (`cargo bench -p raftnode --bench
//! identity`). Under load requests queue while the previous batch is checked, so the batches
//! grow by themselves. A request that arrives while the endpoint runs at most
//! [`ALONE_UP_TO`] requests is checked where it is, strictly, at once: a lone client pays no
//! thread hop, and a busy endpoint batches.
//!
//! A batch that fails is checked again one by one (`verify_strict`), so one bad signature never
//! fails its neighbours. Batch acceptance is not bit-for-bit strict acceptance: a signature whose
//! R carries a small-order component can pass a batch and fail alone. Only the key's holder can
//! make one (R is hashed into the signed challenge, so changing another's R needs the private
//! key), so it forges nothing; and nothing here keys on signature bytes: replays are recognised
//! by the hash of the signed bytes ([`crate::gate`]) and by the session's request numbers. Weak
//! (small-order) keys, with which anyone could sign, are refused before any batch.
//!
//! Decompressed public keys are kept (at most [`MAX_KEYS`] in two generations), so a key seen
//! recently costs no decompression.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use ed25519_dalek::{Signature, VerifyingKey};
use slog::{Logger, warn};
use tokio::sync::oneshot;

/// Up to this many requests running at the endpoint (the one being checked included), a
/// signature is checked where it arrives rather than on the verifier thread.
pub const ALONE_UP_TO: usize = 2;

/// The most requests checked in one batch (the gain per signature stops growing beyond ~32).
pub const MAX_BATCH: usize = 64;

/// The most decompressed public keys kept.
pub const MAX_KEYS: usize = 16_384;

/// Requests waiting to be checked, at most; beyond it a request is checked where it is.
const QUEUE: usize = 4_096;

/// One signature to check.
struct Job {
    public_key: [u8; 32],
    message: Vec<u8>,
    signature: [u8; 64],
    reply: oneshot::Sender<bool>,
}

/// The handle to a node's verifier thread (which ends when the last handle is dropped).
#[derive(Debug, Clone)]
pub struct Verifier {
    jobs: Option<mpsc::SyncSender<Job>>,
    /// The keys of the checks done where they arrive.
    keys: Arc<Mutex<Keys>>,
}

impl Verifier {
    /// Starts the verifier thread. If the thread cannot be started, signatures are checked one
    /// by one where they arrive (and that is logged).
    pub fn start(logger: &Logger) -> Verifier {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let started = thread::Builder::new()
            .name("verifier".into())
            .spawn(move || run(rx));
        match started {
            Ok(_) => Verifier {
                jobs: Some(tx),
                ..Verifier::inline()
            },
            Err(e) => {
                warn!(logger, "could not start the signature verifier thread; checking \
                               signatures one by one"; "err" => %e);
                Verifier::inline()
            }
        }
    }

    /// A verifier without a thread: every signature checked where it arrives.
    pub fn inline() -> Verifier {
        Verifier {
            jobs: None,
            keys: Arc::default(),
        }
    }

    /// Whether `signature` is `public_key`'s signature of `message`; `in_flight` requests are
    /// running at the endpoint, this one included (few: checked here and now; more: batched).
    pub async fn verify(
        &self,
        public_key: &[u8],
        message: Vec<u8>,
        signature: &[u8],
        in_flight: usize,
    ) -> bool {
        let (Ok(public_key), Ok(signature)) = (
            <[u8; 32]>::try_from(public_key),
            <[u8; 64]>::try_from(signature),
        ) else {
            return false;
        };
        let alone = in_flight <= ALONE_UP_TO;
        let here = |message: &[u8]| {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            let key = keys.get(&public_key);
            drop(keys);
            key.is_some_and(|key| {
                key.verify_strict(message, &Signature::from_bytes(&signature))
                    .is_ok()
            })
        };
        let Some(jobs) = self.jobs.as_ref().filter(|_| !alone) else {
            return here(&message);
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            public_key,
            message,
            signature,
            reply,
        };
        match jobs.try_send(job) {
            Ok(()) => answer.await.unwrap_or(false),
            Err(mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job)) => strict(
                &mut Keys::default(),
                &job.public_key,
                &job.message,
                &job.signature,
            ),
        }
    }
}

fn run(jobs: mpsc::Receiver<Job>) {
    let mut keys = Keys::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let verdicts = check(&mut keys, &batch);
        for (job, ok) in batch.drain(..).zip(verdicts) {
            let _ = job.reply.send(ok);
        }
    }
}

/// The verdict on each job: one batch check, and one by one if the batch fails.
fn check(keys: &mut Keys, batch: &[Job]) -> Vec<bool> {
    if let [job] = batch {
        return vec![strict(keys, &job.public_key, &job.message, &job.signature)];
    }
    let mut verdicts = vec![false; batch.len()];
    // Jobs whose key is usable, for the batch.
    let mut picked = Vec::with_capacity(batch.len());
    let mut messages = Vec::with_capacity(batch.len());
    let mut signatures = Vec::with_capacity(batch.len());
    let mut verifying_keys = Vec::with_capacity(batch.len());
    for (i, job) in batch.iter().enumerate() {
        if let Some(key) = keys.get(&job.public_key) {
            picked.push(i);
            messages.push(job.message.as_slice());
            signatures.push(Signature::from_bytes(&job.signature));
            verifying_keys.push(key);
        }
    }
    if ed25519_dalek::verify_batch(&messages, &signatures, &verifying_keys).is_ok() {
        for i in picked {
            verdicts[i] = true;
        }
    } else {
        for (n, i) in picked.into_iter().enumerate() {
            verdicts[i] = verifying_keys[n]
                .verify_strict(messages[n], &signatures[n])
                .is_ok();
        }
    }
    verdicts
}

/// Checks many signatures at once, `(public_key, message, signature)` each, as the verifier
/// thread does: one batch, and one by one if the batch fails. For clients checking the posts
/// they read.
pub fn verify_all(checks: &[(&[u8], Vec<u8>, &[u8])]) -> Vec<bool> {
    let mut keys = Keys::default();
    let mut verdicts = vec![false; checks.len()];
    let mut jobs = Vec::with_capacity(checks.len());
    let mut at = Vec::with_capacity(checks.len());
    for (i, (public_key, message, signature)) in checks.iter().enumerate() {
        if let (Ok(public_key), Ok(signature)) = (
            <[u8; 32]>::try_from(*public_key),
            <[u8; 64]>::try_from(*signature),
        ) {
            jobs.push(Job {
                public_key,
                message: message.clone(),
                signature,
                reply: oneshot::channel().0,
            });
            at.push(i);
        }
    }
    for (chunk, places) in jobs.chunks(MAX_BATCH).zip(at.chunks(MAX_BATCH)) {
        for (ok, &i) in check(&mut keys, chunk).into_iter().zip(places) {
            verdicts[i] = ok;
        }
    }
    verdicts
}

/// A strict check of one signature.
fn strict(keys: &mut Keys, public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    keys.get(public_key).is_some_and(|key| {
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    })
}

/// Decompressed public keys, in two generations: when the newer fills up, it becomes the older
/// and the older is dropped.
#[derive(Default, Debug)]
struct Keys {
    new: HashMap<[u8; 32], VerifyingKey>,
    old: HashMap<[u8; 32], VerifyingKey>,
}

impl Keys {
    /// The key, unless it does not decompress or is weak (small order: anyone could sign).
    fn get(&mut self, bytes: &[u8; 32]) -> Option<VerifyingKey> {
        if let Some(key) = self.new.get(bytes) {
            return Some(*key);
        }
        let key = match self.old.remove(bytes) {
            Some(key) => key,
            None => {
                let key = VerifyingKey::from_bytes(bytes).ok()?;
                if key.is_weak() {
                    return None;
                }
                key
            }
        };
        if self.new.len() >= MAX_KEYS / 2 {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(*bytes, key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn job(signer: &Identity, message: &[u8]) -> (Job, oneshot::Receiver<bool>) {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            public_key: signer.public_key(),
            message: message.to_vec(),
            signature: signer.sign(message),
            reply,
        };
        (job, answer)
    }

    #[test]
    fn a_bad_signature_fails_alone_and_its_batch_neighbours_pass() {
        let mut keys = Keys::default();
        let users: Vec<Identity> = (0..5)
            .map(|i| Identity::from_seed(&format!("u{i}"), [i + 1; 32]))
            .collect();
        let mut batch: Vec<Job> = users
            .iter()
            .enumerate()
            .map(|(i, u)| job(u, format!("request {i}").as_bytes()).0)
            .collect();
        assert_eq!(check(&mut keys, &batch), vec![true; 5]);
        // Another message under the same signature; another user's signature; a weak key.
        batch[1].message = b"request 99".to_vec();
        batch[2].signature = users[3].sign(&batch[2].message);
        batch[4].public_key = [0; 32];
        batch[4].public_key[0] = 1; // the identity point: small order
        assert_eq!(
            check(&mut keys, &batch),
            vec![true, false, false, true, false]
        );
        // Alone.
        assert_eq!(check(&mut keys, &batch[1..2]), vec![false]);
        assert_eq!(check(&mut keys, &batch[0..1]), vec![true]);
    }

    #[test]
    fn the_key_cache_stays_bounded() {
        let mut keys = Keys::default();
        for i in 0..(MAX_KEYS + 10) as u32 {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            let user = Identity::from_seed("u", seed);
            assert!(keys.get(&user.public_key()).is_some());
            assert!(keys.new.len() + keys.old.len() <= MAX_KEYS);
        }
    }

    #[tokio::test]
    async fn the_thread_answers_many_waiting_requests() {
        let logger = Logger::root(slog::Discard, slog::o!());
        let verifier = Verifier::start(&logger);
        let alice = Identity::from_seed("alice", [7; 32]);
        let checks = (0..200u32).map(|i| {
            let verifier = verifier.clone();
            let message = i.to_le_bytes().to_vec();
            let signature = if i % 7 == 0 {
                alice.sign(b"something else")
            } else {
                alice.sign(&message)
            };
            let key = alice.public_key();
            tokio::spawn(async move { (i, verifier.verify(&key, message, &signature, 64).await) })
        });
        for check in checks.collect::<Vec<_>>() {
            let (i, ok) = check.await.unwrap();
            assert_eq!(ok, i % 7 != 0, "request {i}");
        }
        // Wrong lengths never reach the thread.
        assert!(!verifier.verify(&[1; 31], vec![], &[0; 64], 1).await);
        assert!(
            !Verifier::inline()
                .verify(&alice.public_key(), b"x".to_vec(), &[0; 64], 64)
                .await
        );
    }
}
