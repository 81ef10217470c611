//! The cluster key file: the cluster's id and the secret keys that authenticate peer traffic.
//!
//! Every node of a cluster holds the same key file (named by `key_file` in the cluster file):
//!
//! ```toml
//! # raftnode cluster key file: secret. Mode 0600, on every node of this cluster and nowhere else.
//! cluster_id = "5c1e0f7a9b3d2e64"
//! # The first key signs what this node sends; a batch signed by any key listed is accepted.
//! keys = ["<64 hex digits: 32 random bytes>"]
//! ```
//!
//! - The **cluster id** is chosen at random when the file is created (at the cluster's founding).
//!   Every peer batch names it, the founding log entries and every snapshot carry it, and a node's
//!   data dir records it on first start: a node never mixes two clusters' state or traffic.
//! - The **keys** are 32 random bytes each. The first signs (MACs) every batch this node sends;
//!   batches signed by any listed key are accepted, which is how a key is rotated without
//!   downtime: add the new key last everywhere, then move it first everywhere, then drop the old
//!   one (`raftnode key add|promote|retire`, each followed by a reload: SIGHUP or restart).
//! - The file must not be readable by anyone but its owner: a node refuses a file whose mode
//!   grants group or other any access.
//! - `admin_key` is the admin principal's Ed25519 **public** key (hex). A cluster founded with
//!   this file registers it as user `admin` in its founding log entries; the private key is kept
//!   apart, in `admin.key` next to this file (`raftnode key init` and `raftnode up` create both).

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// The most keys a file may list (the signing key and those accepted during a rotation).
pub const MAX_KEYS: usize = 4;

/// A cluster's id: random at founding, never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for ClusterId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("cluster id {s:?} is not 16 hex digits"));
        }
        match u64::from_str_radix(s, 16) {
            Ok(0) | Err(_) => Err(format!("cluster id {s:?} is not a valid id")),
            Ok(id) => Ok(ClusterId(id)),
        }
    }
}

/// One secret key, with the short id that names it in frames (never the key itself).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    bytes: [u8; 32],
    id: u32,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({})", self.fingerprint())
    }
}

impl ClusterKey {
    /// A key from its 32 bytes.
    pub fn new(bytes: [u8; 32]) -> ClusterKey {
        let digest = blake3::derive_key("raftnode cluster key id v1", &bytes);
        let id = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
        ClusterKey { bytes, id }
    }

    /// A fresh random key from the operating system's generator.
    pub fn random() -> ClusterKey {
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut bytes);
        ClusterKey::new(bytes)
    }

    /// The id frames carry to say which key signed them (a one-way function of the key).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key id as 8 hex digits, as logs and `raftnode key show` print it.
    pub fn fingerprint(&self) -> String {
        format!("{:08x}", self.id)
    }

    /// The secret bytes (for the MAC).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

/// The contents of a key file: the cluster id and the keys, the signing key first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// The cluster these keys belong to.
    pub cluster: ClusterId,
    /// At least one key; the first signs.
    keys: Vec<ClusterKey>,
    /// The admin's public key, which the founding entries register (`None`: the file predates
    /// it, and a cluster founded with it would have no admin).
    pub admin: Option<[u8; 32]>,
}

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("key file {}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The file grants access to others than its owner.
    #[error(
        "key file {} is accessible by group or others (mode {mode:04o}); the cluster key is a \
         secret: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file's contents are not a key file.
    #[error("key file {}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The file to create exists already.
    #[error("key file {} exists already; not overwriting a cluster key", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileText {
    cluster_id: String,
    keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_key: Option<String>,
}

impl Keys {
    /// Keys for `cluster`; `keys` must hold 1 to [`MAX_KEYS`] distinct keys, the signing key first.
    pub fn new(cluster: ClusterId, keys: Vec<ClusterKey>) -> Result<Keys, String> {
        if cluster.0 == 0 {
            return Err("cluster id 0 is not valid".into());
        }
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(format!(
                "a key file lists 1 to {MAX_KEYS} keys, not {}",
                keys.len()
            ));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(format!("key {} is listed twice", k.fingerprint()));
            }
        }
        Ok(Keys {
            cluster,
            keys,
            admin: None,
        })
    }

    /// A new cluster: a random id and one random key.
    pub fn generate() -> Keys {
        let cluster = loop {
            let id: u64 = rand::Rng::r#gen(&mut rand::rngs::OsRng);
            if id != 0 {
                break ClusterId(id);
            }
        };
        Keys {
            cluster,
            keys: vec![ClusterKey::random()],
            admin: None,
        }
    }

    /// These keys naming `public_key` as the admin's.
    pub fn with_admin(mut self, public_key: [u8; 32]) -> Keys {
        self.admin = Some(public_key);
        self
    }

    /// The admin's private key file that goes with the key file at `path`: `admin.key` in the
    /// same directory.
    pub fn admin_key_path(path: &Path) -> PathBuf {
        path.parent()
            .unwrap_or_else(|| Path::new("."))
            .join("admin.key")
    }

    /// The key that signs what this node sends.
    pub fn signing(&self) -> &ClusterKey {
        &self.keys[0]
    }

    /// Every accepted key, the signing key first.
    pub fn all(&self) -> &[ClusterKey] {
        &self.keys
    }

    /// The accepted key with this id.
    pub fn by_id(&self, id: u32) -> Option<&ClusterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Parses key-file text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Keys, KeyError> {
        let invalid = |detail: String| KeyError::Invalid {
            path: path.to_owned(),
            detail,
        };
        // toml's own message quotes the offending line, which may hold a key: say only where
        // and what.
        let file: KeyFileText = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |span| {
                text[..span.start.min(text.len())].lines().count().max(1)
            });
            invalid(format!("line {line}: {}", e.message()))
        })?;
        let cluster: ClusterId = file.cluster_id.parse().map_err(invalid)?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for (i, text) in file.keys.iter().enumerate() {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut bytes)
                .map_err(|_| invalid(format!("key {} is not 64 hex digits (32 bytes)", i + 1)))?;
            keys.push(ClusterKey::new(bytes));
        }
        let admin = match &file.admin_key {
            None => None,
            Some(text) => {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
                    invalid("admin_key is not 64 hex digits (an Ed25519 public key)".into())
                })?;
                Some(bytes)
            }
        };
        Ok(Keys {
            admin,
            ..Keys::new(cluster, keys).map_err(invalid)?
        })
    }

    /// The key-file text for these keys.
    pub fn to_text(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(|k| hex::encode(k.bytes)).collect();
        let body = toml::to_string(&KeyFileText {
            cluster_id: self.cluster.to_string(),
            keys,
            admin_key: self.admin.map(hex::encode),
        })
        .unwrap_or_default();
        format!(
            "# raftnode cluster key file: secret. Mode 0600, on every node of this cluster and \
             nowhere else.\n# The first key signs what this node sends; a batch signed by any \
             key listed is accepted.\n{body}"
        )
    }

    /// Reads a key file, refusing one that others may read.
    pub fn load(path: &Path) -> Result<Keys, KeyError> {
        let io = |what, source| KeyError::Io {
            path: path.to_owned(),
            what,
            source,
        };
        let meta = std::fs::metadata(path).map_err(|e| io("cannot read", e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Exposed {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        if meta.len() > 64 * 1024 {
            return Err(KeyError::Invalid {
                path: path.to_owned(),
                detail: format!("{} bytes is too large for a key file", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| io("cannot read", e))?;
        Keys::parse(&text, path)
    }

    /// Writes a new key file (mode 0600, never over an existing file), synced.
    pub fn create(&self, path: &Path) -> Result<(), KeyError> {
        self.write(path, false)
    }

    /// Replaces a key file with these keys: written to a temporary file (mode 0600), synced and
    /// renamed over it.
    pub fn replace(&self, path: &Path) -> Result<(), KeyError> {
        self.write(path, true)
    }

    fn write(&self, path: &Path, replace: bool) -> Result<(), KeyError> {
        let io = |what, source| KeyError::Io {
            path: path.to_owned(),
            what,
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create its directory", e))?;
        }
        let target = if replace {
            path.with_extension("key.tmp")
        } else {
            path.to_owned()
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if replace {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&target).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io("cannot create", e)
            }
        })?;
        #[cfg(unix)]
        {
            // A temporary file left by an earlier attempt keeps its mode: set it again.
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io("cannot restrict the mode of", e))?;
        }
        file.write_all(self.to_text().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io("cannot write", e))?;
        if replace {
            std::fs::rename(&target, path).map_err(|e| io("cannot replace", e))?;
        }
        Ok(())
    }

    /// Rotation step 1: a copy with a fresh key accepted (listed last, not signing yet).
    pub fn with_new_key(&self) -> Result<Keys, String> {
        let mut keys = self.keys.clone();
        keys.push(ClusterKey::random());
        Ok(Keys {
            admin: self.admin,
            ..Keys::new(self.cluster, keys)?
        })
    }

    /// Rotation step 2: a copy whose newest key (the last listed) signs.
    pub fn promote_newest(&self) -> Keys {
        let mut keys = self.keys.clone();
        if let Some(newest) = keys.pop() {
            keys.insert(0, newest);
        }
        Keys {
            cluster: self.cluster,
            keys,
            admin: self.admin,
        }
    }

    /// Rotation step 3: a copy with only the signing key.
    pub fn retire_others(&self) -> Keys {
        Keys {
            cluster: self.cluster,
            keys: vec![self.keys[0].clone()],
            admin: self.admin,
        }
    }
}

/// The keys a running node uses, replaceable at run time (SIGHUP) without a restart.
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<RwLock<Arc<Keys>>>,
}

impl KeyRing {
    /// A ring holding `keys`.
    pub fn new(keys: Keys) -> KeyRing {
        KeyRing {
            inner: Arc::new(RwLock::new(Arc::new(keys))),
        }
    }

    /// The keys now in force.
    pub fn current(&self) -> Arc<Keys> {
        match self.inner.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The cluster id (it never changes for a running node).
    pub fn cluster(&self) -> ClusterId {
        self.current().cluster
    }

    /// Replaces the keys; refused if they belong to another cluster.
    pub fn replace(&self, keys: Keys) -> Result<(), String> {
        let current = self.cluster();
        if keys.cluster != current {
            return Err(format!(
                "the key file is for cluster {}, this node is of cluster {current}",
                keys.cluster
            ));
        }
        let mut guard = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = Arc::new(keys);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cluster.key");
        let keys = Keys::generate();
        keys.create(&path).unwrap();
        assert!(matches!(keys.create(&path), Err(KeyError::Exists { .. })));
        let back = Keys::load(&path).unwrap();
        assert_eq!(back, keys);

        let added = back.with_new_key().unwrap();
        assert_eq!(added.signing(), keys.signing());
        assert_eq!(added.all().len(), 2);
        let promoted = added.promote_newest();
        assert_eq!(promoted.signing(), &added.all()[1]);
        assert!(promoted.by_id(keys.signing().id()).is_some());
        let retired = promoted.retire_others();
        assert_eq!(retired.all(), &[added.all()[1].clone()]);
        retired.replace(&path).unwrap();
        assert_eq!(Keys::load(&path).unwrap(), retired);
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        Keys::generate().create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keys::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("0644"), "{err}");
    }

    #[test]
    fn malformed_files_are_refused_by_name() {
        let p = Path::new("k.key");
        let good = "cluster_id = \"00000000000000ab\"\nkeys = [\"".to_string()
            + &"ab".repeat(32)
            + "\"]\n";
        assert!(Keys::parse(&good, p).is_ok());
        let cases = [
            (
                good.replace("00000000000000ab", "0000000000000000"),
                "not a valid id",
            ),
            (good.replace("00000000000000ab", "xyz"), "16 hex digits"),
            (good.replace(&"ab".repeat(32), "abcd"), "64 hex digits"),
            (good.replace("keys", "kees"), "unknown field"),
            (
                good.replace(
                    &format!("\"{}\"", "ab".repeat(32)),
                    &format!("\"{0}\", \"{0}\"", "ab".repeat(32)),
                ),
                "listed twice",
            ),
            (
                "cluster_id = \"00000000000000ab\"\nkeys = []\n".into(),
                "1 to 4 keys",
            ),
        ];
        for (text, needle) in cases {
            let err = Keys::parse(&text, p).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
            assert!(
                !err.contains(&"ab".repeat(32)),
                "an error must not print a key"
            );
        }
    }

    #[test]
    fn ring_refuses_another_cluster() {
        let ring = KeyRing::new(Keys::generate());
        assert!(ring.replace(Keys::generate()).is_err());
        let same = ring.current().with_new_key().unwrap();
        ring.replace(same.clone()).unwrap();
        assert_eq!(*ring.current(), same);
    }
}
