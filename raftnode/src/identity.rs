//! Users' identities: Ed25519 key pairs, their key files, and signed requests.
//!
//! A user is a name bound, in the replicated state, to an Ed25519 public key. Every write a
//! client sends is signed by its user's key ([`Identity::seal`]): the receiving node verifies the
//! signature before anything else ([`open`]) and puts the user and the key it verified into the
//! log entry; the state machine then checks, identically on every replica, that the key is the
//! user's registered one and that the policy allows the operation (`crate::policy`).
//!
//! **Signed request format.** An outer `Request` holds only `signed` and `signature`. `signed` is
//! an encoded inner `Request` with `session`, `seq`, `ack`, `op`, `user`, `public_key` (32
//! bytes), `cluster_id` and, outside a session, `not_after_ms`. `signature` is the Ed25519
//! signature over `b"raftnode-request-v1\0"` followed by `signed`, exactly the bytes received.
//!
//! **Key files** (`user.key`, mode 0600, refused if others can read it): TOML with `user` and
//! `secret_key` (the 32-byte Ed25519 seed, hex). The public key and its fingerprint follow from
//! the secret key.

use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use prost::Message as _;
use rand::RngCore as _;

use crate::proto::{self, error::Code};

/// What a request signature covers, before the signed bytes.
pub const REQUEST_DOMAIN: &[u8] = b"raftnode-request-v1\0";

/// The reserved name of the admin principal, created when the cluster is founded.
pub const ADMIN: &str = "admin";

/// The longest user name, in chars.
pub const MAX_NAME_CHARS: usize = 64;

/// How far ahead (in cluster time) a session-less signed request may say it expires.
pub const MAX_VALIDITY_MS: u64 = 10 * 60 * 1000;

/// How far ahead (in cluster time) a signed write may say it expires: its retries (the longest
/// blocking wait is 10 minutes) must fit, and a recorded one must not outlive its session (which
/// lasts 30 idle minutes, and is not evicted younger than this).
pub const MAX_WRITE_VALIDITY_MS: u64 = 15 * 60 * 1000;

/// A user's name and private key.
#[derive(Clone)]
pub struct Identity {
    user: String,
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret key.
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Other users could read the file.
    #[error(
        "{path} can be read by other users (mode {mode:o}); a private key must be mode 0600: \
         chmod 600 {path}"
    )]
    TooOpen {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// The contents are not a key file.
    #[error("{path} is not a key file: {detail}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong (never the key itself).
        detail: String,
    },
    /// The file exists already.
    #[error("{path} exists already; not overwritten")]
    Exists {
        /// The file.
        path: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeyFile {
    user: String,
    secret_key: String,
}

impl Identity {
    /// A new random key pair for `user`.
    pub fn generate(user: &str) -> Identity {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        Identity::from_seed(user, seed)
    }

    /// The identity whose secret key (Ed25519 seed) is `seed`.
    pub fn from_seed(user: &str, seed: [u8; 32]) -> Identity {
        Identity {
            user: user.to_string(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The user's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public key's fingerprint ([`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key())
    }

    /// The signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// `request` signed by this user for cluster `cluster_id` (its own identity fields are
    /// replaced).
    pub fn seal(&self, mut request: proto::Request, cluster_id: u64) -> proto::Request {
        request.signed.clear();
        request.signature.clear();
        request.user = self.user.clone();
        request.public_key = self.public_key().to_vec();
        request.cluster_id = cluster_id;
        let signed = request.encode_to_vec();
        let mut message = Vec::with_capacity(REQUEST_DOMAIN.len() + signed.len());
        message.extend_from_slice(REQUEST_DOMAIN);
        message.extend_from_slice(&signed);
        proto::Request {
            signature: self.sign(&message).to_vec(),
            signed,
            ..Default::default()
        }
    }

    /// Loads a key file (mode 0600).
    pub fn load(path: &Path) -> Result<Identity, KeyFileError> {
        let shown = path.display().to_string();
        let io = |source| KeyFileError::Io {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let malformed = |detail: &str| KeyFileError::Malformed {
            path: shown.clone(),
            detail: detail.to_string(),
        };
        let file: KeyFile = toml::from_str(&text)
            .map_err(|_| malformed("expected `user = \"...\"` and `secret_key = \"<64 hex>\"`"))?;
        let seed: [u8; 32] = hex::decode(file.secret_key.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("secret_key must be 64 hex digits"))?;
        check_name(&file.user).map_err(|e| malformed(&e))?;
        Ok(Identity::from_seed(&file.user, seed))
    }

    /// Writes a new key file (mode 0600); never overwrites one.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let shown = path.display().to_string();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| KeyFileError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let text = toml::to_string(&KeyFile {
            user: self.user.clone(),
            secret_key: hex::encode(self.key.to_bytes()),
        })
        .unwrap_or_default();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyFileError::Exists {
                        path: shown.clone(),
                    }
                } else {
                    KeyFileError::Io {
                        path: shown.clone(),
                        source,
                    }
                }
            })?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| KeyFileError::Io {
                path: shown,
                source,
            })
    }
}

/// A public key's fingerprint: `ed25519:` and the first 16 bytes of its BLAKE3 hash, in hex
/// groups of four (`ed25519:1a2b-3c4d-...`).
pub fn fingerprint(public_key: &[u8]) -> String {
    let hash = blake3::hash(public_key);
    let hex = hex::encode(&hash.as_bytes()[..16]);
    let groups: Vec<&str> = (0..hex.len()).step_by(4).map(|i| &hex[i..i + 4]).collect();
    format!("ed25519:{}", groups.join("-"))
}

/// Whether `signature` is `public_key`'s signature of `message`.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = <[u8; 32]>::try_from(public_key) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    // Strict: no weak keys, no malleable signatures.
    key.verify_strict(message, &signature).is_ok()
}

/// A user name: 1 to 64 chars, no control characters, no spaces at either end.
pub fn check_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(format!(
            "a user name has 1 to {MAX_NAME_CHARS} characters, not {chars}"
        ));
    }
    if name.chars().any(char::is_control) || name.trim() != name {
        return Err("a user name has no control characters and no spaces at its ends".into());
    }
    Ok(())
}

/// Who signed a request whose signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The user the request names.
    pub user: String,
    /// The key that signed (32 bytes): the state machine checks it is the user's.
    pub public_key: Vec<u8>,
    /// The BLAKE3 hash of the signed bytes: a replay of the request carries the same (its
    /// signature bytes need not be the same, see [`crate::verifier`]).
    pub request_hash: [u8; 32],
    /// When a session-less request stops being valid, in cluster time (ms; 0: a session
    /// request). Cluster time, not anyone's wall clock: no node's clock can make a fresh
    /// request look stale or an old one fresh.
    pub not_after_ms: u64,
}

/// A request as the node received it, once its signature (if any) checked out.
#[derive(Debug)]
pub struct Opened {
    /// The request to run (the inner one of a signed request).
    pub request: proto::Request,
    /// Who signed it (`None`: unsigned).
    pub signer: Option<Signer>,
}

/// Checks a request's signature, if it has one, for cluster `cluster_id`: the inner request, and
/// who signed it. An unsigned request passes as it is (the state machine decides what an
/// anonymous user may do). A session-less request's expiry is checked later, against cluster
/// time ([`crate::gate::Gate::once`]). The node checks signatures in batches
/// ([`crate::verifier`]) through [`unseal`] and [`Sealed::finish`]; this is the same, one by one.
pub fn open(outer: proto::Request, cluster_id: u64) -> Result<Opened, (Code, String)> {
    match unseal(outer)? {
        Unsealed::Plain(opened) => Ok(opened),
        Unsealed::Signed(sealed) => {
            let verified = verify(&sealed.inner.public_key, &sealed.message, &sealed.signature);
            sealed.finish(verified, cluster_id)
        }
    }
}

/// A request taken out of its envelope, before its signature is checked.
#[derive(Debug)]
pub enum Unsealed {
    /// An unsigned request.
    Plain(Opened),
    /// A signed one: check `message` and `signature` against `inner.public_key`.
    Signed(Sealed),
}

/// A signed request whose signature is still to be checked.
#[derive(Debug)]
pub struct Sealed {
    /// The request inside.
    pub inner: proto::Request,
    /// What was signed: [`REQUEST_DOMAIN`] and the inner request's bytes.
    pub message: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
    /// The BLAKE3 hash of `message`.
    pub request_hash: [u8; 32],
}

/// Takes a request out of its envelope: decodes a signed request's inner request and checks its
/// shape (one level of signing, a valid user name), not yet its signature.
pub fn unseal(outer: proto::Request) -> Result<Unsealed, (Code, String)> {
    if outer.signed.is_empty() {
        if !outer.signature.is_empty() || !outer.user.is_empty() || !outer.public_key.is_empty() {
            return Err((
                Code::Unauthenticated,
                "a signature or user without signed bytes: sign the whole request".into(),
            ));
        }
        return Ok(Unsealed::Plain(Opened {
            request: outer,
            signer: None,
        }));
    }
    let unauthenticated = |why: String| (Code::Unauthenticated, why);
    let inner = proto::Request::decode(outer.signed.as_slice())
        .map_err(|e| unauthenticated(format!("the signed request does not decode: {e}")))?;
    if !inner.signed.is_empty() || !inner.signature.is_empty() {
        return Err(unauthenticated(
            "a signed request inside a signed request".into(),
        ));
    }
    check_name(&inner.user).map_err(|e| unauthenticated(format!("the signer's name: {e}")))?;
    let mut message = Vec::with_capacity(REQUEST_DOMAIN.len() + outer.signed.len());
    message.extend_from_slice(REQUEST_DOMAIN);
    message.extend_from_slice(&outer.signed);
    Ok(Unsealed::Signed(Sealed {
        inner,
        request_hash: *blake3::hash(&message).as_bytes(),
        message,
        signature: outer.signature,
    }))
}

impl Sealed {
    /// The opened request, given whether its signature verified, for cluster `cluster_id`.
    pub fn finish(self, verified: bool, cluster_id: u64) -> Result<Opened, (Code, String)> {
        let inner = self.inner;
        if !verified {
            return Err((
                Code::Unauthenticated,
                format!("the signature of user {:?} does not verify", inner.user),
            ));
        }
        if inner.cluster_id != cluster_id {
            return Err((
                Code::Unauthenticated,
                format!(
                    "the request was signed for cluster {:016x}, this is cluster \
                     {cluster_id:016x}",
                    inner.cluster_id
                ),
            ));
        }
        let signer = Some(Signer {
            user: inner.user.clone(),
            public_key: inner.public_key.clone(),
            request_hash: self.request_hash,
            not_after_ms: inner.not_after_ms,
        });
        Ok(Opened {
            request: inner,
            signer,
        })
    }
}

/// The wall clock in Unix milliseconds (for `not_after_ms`).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(seq: u64) -> proto::Request {
        proto::Request {
            session: 7,
            seq,
            ack: seq - 1,
            op: Some(proto::request::Op::Count(proto::Count::default())),
            ..Default::default()
        }
    }

    #[test]
    fn a_sealed_request_opens_with_its_signer() {
        let alice = Identity::generate("alice");
        let sealed = alice.seal(write(1), 42);
        let opened = open(sealed, 42).unwrap();
        let signer = opened.signer.unwrap();
        assert_eq!(signer.user, "alice");
        assert_eq!(signer.public_key, alice.public_key().to_vec());
        assert_eq!(opened.request.seq, 1);
    }

    #[test]
    fn tampering_another_cluster_and_another_key_are_refused() {
        let alice = Identity::generate("alice");
        let mallory = Identity::generate("mallory");
        // Another seq in the signed bytes.
        let mut sealed = alice.seal(write(1), 42);
        let mut inner = proto::Request::decode(sealed.signed.as_slice()).unwrap();
        inner.seq = 2;
        sealed.signed = inner.encode_to_vec();
        assert_eq!(open(sealed, 42).unwrap_err().0, Code::Unauthenticated);
        // Another cluster.
        let sealed = alice.seal(write(1), 41);
        assert_eq!(open(sealed, 42).unwrap_err().0, Code::Unauthenticated);
        // Mallory's signature under alice's name and key.
        let sealed = alice.seal(write(1), 42);
        let mut message = REQUEST_DOMAIN.to_vec();
        message.extend_from_slice(&sealed.signed);
        let forged = proto::Request {
            signature: mallory.sign(&message).to_vec(),
            signed: sealed.signed,
            ..Default::default()
        };
        assert_eq!(open(forged, 42).unwrap_err().0, Code::Unauthenticated);
        // A user field outside the signed bytes.
        let bare = proto::Request {
            user: "alice".into(),
            ..write(1)
        };
        assert_eq!(open(bare, 42).unwrap_err().0, Code::Unauthenticated);
    }

    #[test]
    fn key_files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/alice.key");
        let alice = Identity::generate("alice");
        alice.save(&path).unwrap();
        let loaded = Identity::load(&path).unwrap();
        assert_eq!(loaded.public_key(), alice.public_key());
        assert_eq!(loaded.user(), "alice");
        assert!(matches!(
            alice.save(&path),
            Err(KeyFileError::Exists { .. })
        ));
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let err = Identity::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains(&hex::encode(alice.key.to_bytes())));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("alice").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(" alice").is_err());
        assert!(check_name("a\u{7}b").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }
}
