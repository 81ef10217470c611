//! The `raftnode` binary refuses bad configs and a data dir already in use, saying why.
//!
//! (Being an integration test of this package, it also makes `cargo test --workspace` build the
//! binary that the cluster tests in `tests/` start.)

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn raftnode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raftnode"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Creates a key file with `raftnode key init` and returns the `key_file = ...` line for it.
fn key_line(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    let out = raftnode()
        .args(["key", "init", path.to_str().unwrap()])
        .output()
        .expect("run raftnode key init");
    assert!(out.status.success(), "{out:?}");
    format!("key_file = \"{}\"\n", path.display())
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

    let keyless = "[[node]]\nid = 1\nraft = \"tcp://127.0.0.1:7991\"\nclient = \"tcp://127.0.0.1:7992\"\ndata_dir = \"d1\"\n";
    let no_key = dir.path().join("nokey.toml");
    std::fs::write(&no_key, keyless).unwrap();
    let err = run_expecting_failure(&["run", "--cluster", no_key.to_str().unwrap(), "--id", "1"]);
    assert!(
        err.contains("key_file"),
        "names the missing key file: {err}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, key_line(dir.path(), "good.key") + keyless).unwrap();
    let err = run_expecting_failure(&["run", "--cluster", good.to_str().unwrap(), "--id", "4"]);
    assert!(err.contains("node id 4"), "{err}");

    // A key file others can read is refused, with the fix.
    let exposed = dir.path().join("exposed.toml");
    let line = key_line(dir.path(), "exposed.key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let key = dir.path().join("exposed.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::write(&exposed, line + keyless).unwrap();
    let err = run_expecting_failure(&["run", "--cluster", exposed.to_str().unwrap(), "--id", "1"]);
    assert!(err.contains("chmod 600"), "{err}");

    let err = run_expecting_failure(&["--log-level", "loud", "run", "--id", "1"]);
    assert!(err.contains("unknown log level"), "{err}");

    let file_as_dir = dir.path().join("plainfile");
    std::fs::write(&file_as_dir, b"x").unwrap();
    let blocked = dir.path().join("blocked.toml");
    std::fs::write(
        &blocked,
        key_line(dir.path(), "blocked.key")
            + &format!(
            "[[node]]\nid = 1\nraft = \"tcp://127.0.0.1:{}\"\nclient = \"tcp://127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
            free_port(),
            free_port(),
            file_as_dir.display()
        ),
    )
    .unwrap();
    let err = run_expecting_failure(&["run", "--cluster", blocked.to_str().unwrap(), "--id", "1"]);
    assert!(
        err.contains("plainfile"),
        "names the unusable data dir: {err}"
    );
}

#[test]
fn a_data_dir_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("one.toml");
    std::fs::write(
        &cluster,
        key_line(dir.path(), "one.key")
            + &format!(
            "[[node]]\nid = 1\nraft = \"tcp://127.0.0.1:{}\"\nclient = \"tcp://127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
            free_port(),
            free_port(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut first = raftnode()
        .args(["run", "--cluster", cluster.to_str().unwrap(), "--id", "1"])
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
        .args(["run", "--cluster", cluster.to_str().unwrap(), "--id", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use"), "{err}");

    // The data dir recorded its cluster: a key file of another cluster is refused by name.
    let other = dir.path().join("other.toml");
    let text = std::fs::read_to_string(&cluster).unwrap();
    let (_, nodes) = text.split_once('\n').unwrap();
    std::fs::write(&other, key_line(dir.path(), "other.key") + nodes).unwrap();
    let err = run_expecting_failure(&["run", "--cluster", other.to_str().unwrap(), "--id", "1"]);
    assert!(err.contains("belongs to cluster"), "{err}");
}
