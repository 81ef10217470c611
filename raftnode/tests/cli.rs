//! The `raftnode` binary refuses bad configs and a data dir already in use, saying why.
//!
//! (Being an integration test of this package, it also makes `cargo test --workspace` build the
//! binary that the cluster tests in `tests/` start.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raftnode::config::{ClusterConfig, NodeConfig};
use raftnode::devcluster::lease_ports;

fn raftnode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raftnode"))
}

/// Creates a key file with `raftnode key init`; its path.
fn key_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = raftnode()
        .args(["key", "init", path.to_str().unwrap()])
        .output()
        .expect("run raftnode key init");
    assert!(out.status.success(), "{out:?}");
    path
}

/// A one-node cluster: node 1 at these endpoints with this data dir.
fn one_node(
    key_file: Option<PathBuf>,
    raft: String,
    client: String,
    data_dir: PathBuf,
) -> ClusterConfig {
    ClusterConfig {
        key_file,
        raft: Default::default(),
        limits: Default::default(),
        nodes: vec![NodeConfig {
            id: 1,
            raft,
            client,
            data_dir,
        }],
    }
}

/// `config` written to `dir/name`; the file's path as text.
fn write(config: &ClusterConfig, dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    config.write(&path).unwrap();
    path.to_str().unwrap().to_string()
}

fn run_expecting_failure(args: &[&str]) -> String {
    let out = raftnode()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run raftnode");
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = run_expecting_failure(&["run", "--cluster", missing.to_str().unwrap(), "--id", "1"]);
    assert!(err.contains("nope.toml"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[node]]\nid = 1\nraft = \"tcp://127.0.0.1:1\"\n").unwrap();
    let err = run_expecting_failure(&["run", "--cluster", bad.to_str().unwrap(), "--id", "1"]);
    assert!(err.contains("client"), "names the missing field: {err}");

    // (Never started far enough to bind its ports.)
    let keyless = |key| {
        let (raft, client) = ("tcp://127.0.0.1:7991".into(), "tcp://127.0.0.1:7992".into());
        one_node(key, raft, client, "d1".into())
    };
    let no_key = write(&keyless(None), dir.path(), "nokey.toml");
    let err = run_expecting_failure(&["run", "--cluster", &no_key, "--id", "1"]);
    assert!(
        err.contains("key_file"),
        "names the missing key file: {err}"
    );

    let good = keyless(Some(key_file(dir.path(), "good.key")));
    let good = write(&good, dir.path(), "good.toml");
    let err = run_expecting_failure(&["run", "--cluster", &good, "--id", "4"]);
    assert!(err.contains("node id 4"), "{err}");

    // A key file others can read is refused, with the fix.
    let key = key_file(dir.path(), "exposed.key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let exposed = write(&keyless(Some(key)), dir.path(), "exposed.toml");
    let err = run_expecting_failure(&["run", "--cluster", &exposed, "--id", "1"]);
    assert!(err.contains("chmod 600"), "{err}");

    let err = run_expecting_failure(&["--log-level", "loud", "run", "--id", "1"]);
    assert!(err.contains("unknown log level"), "{err}");

    let file_as_dir = dir.path().join("plainfile");
    std::fs::write(&file_as_dir, b"x").unwrap();
    let ports = lease_ports(2).unwrap();
    let blocked = one_node(
        Some(key_file(dir.path(), "blocked.key")),
        ports[0].endpoint(),
        ports[1].endpoint(),
        file_as_dir,
    );
    let blocked = write(&blocked, dir.path(), "blocked.toml");
    let err = run_expecting_failure(&["run", "--cluster", &blocked, "--id", "1"]);
    assert!(
        err.contains("plainfile"),
        "names the unusable data dir: {err}"
    );
}

#[test]
fn a_data_dir_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ports = lease_ports(2).unwrap();
    let config = one_node(
        Some(key_file(dir.path(), "one.key")),
        ports[0].endpoint(),
        ports[1].endpoint(),
        dir.path().join("data"),
    );
    let cluster = write(&config, dir.path(), "one.toml");
    let mut first = raftnode()
        .args(["run", "--cluster", &cluster, "--id", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first node to take its lock.
    let lock = dir.path().join("data").join("LOCK");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let second = raftnode()
        .args(["run", "--cluster", &cluster, "--id", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use"), "{err}");

    // The data dir recorded its cluster: a key file of another cluster is refused by name.
    let other = ClusterConfig {
        key_file: Some(key_file(dir.path(), "other.key")),
        ..config
    };
    let other = write(&other, dir.path(), "other.toml");
    let err = run_expecting_failure(&["run", "--cluster", &other, "--id", "1"]);
    assert!(err.contains("belongs to cluster"), "{err}");
}
