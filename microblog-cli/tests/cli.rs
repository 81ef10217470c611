//! The `microblog` program without a cluster: help on every command, usage errors (exit 2), input
//! refused before anything is sent, and shell completions.
//!
//! (Being an integration test of this package, it also makes `cargo test --workspace` build the
//! binary that the cluster scenarios in `tests/tests/microblog.rs` run.)

use std::process::{Command, Output, Stdio};

/// An endpoint nothing listens on: input errors must be reported before it is ever tried.
const NOWHERE: &str = "tcp://127.0.0.1:9";

fn microblog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microblog"))
        .args(args)
        .env_remove("MICROBLOG_ENDPOINTS")
        .env_remove("MICROBLOG_USER")
        .env("MICROBLOG_HOME", home())
        .stdin(Stdio::null())
        .output()
        .expect("run microblog")
}

/// A key home for this test process (never the user's own).
fn home() -> &'static std::path::Path {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().expect("a temp dir"))
        .path()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_works_and_a_usage_error_exits_2() {
    let out = microblog(&["--help"]);
    assert_eq!(code(&out), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "post",
        "timeline",
        "tail",
        "tuple",
        "cluster",
        "Exit codes",
        "Example",
    ] {
        assert!(text.contains(needle), "{needle:?} not in --help:\n{text}");
    }
    let out = microblog(&["no-such-command"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = microblog(&["read", "--limit", "0"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = microblog(&["--timeout", "soon", "users"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("500ms"), "{}", stderr(&out));
}

#[test]
fn every_command_has_help_with_an_example() {
    let commands: &[&[&str]] = &[
        &["post"],
        &["read"],
        &["show"],
        &["timeline"],
        &["follow"],
        &["unfollow"],
        &["following"],
        &["followers"],
        &["users"],
        &["topics"],
        &["delete"],
        &["tail"],
        &["tuple", "out"],
        &["tuple", "in"],
        &["tuple", "rd"],
        &["tuple", "inp"],
        &["tuple", "rdp"],
        &["tuple", "all"],
        &["tuple", "count"],
        &["tuple", "cas"],
        &["cluster", "up"],
        &["cluster", "status"],
        &["cluster", "add"],
        &["cluster", "promote"],
        &["cluster", "remove"],
        &["cluster", "change"],
        &["completions"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = microblog(&args);
        assert_eq!(code(&out), 0, "{cmd:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example"),
            "{cmd:?} --help has no example:\n{text}"
        );
    }
}

#[test]
fn bad_input_is_refused_before_contacting_the_cluster() {
    let cases: &[(&[&str], &str)] = &[
        (&["post", "hi"], "--user"),
        (&["--user", "", "post", "hi"], "empty user name"),
        (
            &["--user", "bad\u{7}name", "post", "hi"],
            "control character",
        ),
        (&["--user", "two words", "post", "hi"], "whitespace"),
        (&["--user", "alice", "post", "  "], "empty post"),
        (
            &["--user", "alice", "post", "hi", "--topic", "a b"],
            "topic",
        ),
        (&["--endpoints", "localhost:7201", "users"], "tcp://"),
        (&["tuple", "out", r#"("a", "#], "column 7"),
        (&["tuple", "rdp", r#"("a", ?nope)"#], "column"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["--endpoints", NOWHERE];
        if args.first() == Some(&"--endpoints") {
            full.clear();
        }
        full.extend_from_slice(args);
        let out = microblog(&full);
        assert_eq!(code(&out), 2, "{full:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{needle:?} not in the error of {full:?}: {}",
            stderr(&out)
        );
    }
    // The size limit is named; 4,000 bytes of two-byte chars is fine, one more byte is not.
    let big = "é".repeat(2_000) + "x";
    let out = microblog(&["--endpoints", NOWHERE, "--user", "alice", "post", &big]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("4000 bytes"), "{}", stderr(&out));
    // With --json the error is one JSON object on stderr.
    let out = microblog(&["--json", "--endpoints", NOWHERE, "tuple", "out", "(1,"]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(
        err.trim().starts_with('{') && err.contains("\"exit\":2"),
        "{err}"
    );
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = microblog(&["completions", shell]);
        assert_eq!(code(&out), 0, "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("timeline"), "{shell}: {script}");
    }
    assert_eq!(code(&microblog(&["completions", "tcsh"])), 2);
}

#[test]
fn cluster_up_needs_a_cluster_file() {
    let out = microblog(&["cluster", "up", "--cluster", "/nonexistent/cluster.toml"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("/nonexistent/cluster.toml"),
        "{}",
        stderr(&out)
    );
    let out = microblog(&["cluster", "up", "--endpoints", NOWHERE]);
    assert_eq!(code(&out), 2);
}
