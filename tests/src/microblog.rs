//! Running the `microblog` program in tests: the binary, a command line against a cluster, and
//! what one run did.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use raftnode::devcluster::Program;
use serde_json::Value as Json;

/// How long one `microblog` command may take (it waits at most its `--timeout`, plus retries).
pub const COMMAND: Duration = Duration::from_secs(60);

/// The `microblog` program.
pub const MICROBLOG: Program = Program {
    name: "microblog",
    env_var: "MICROBLOG_BIN",
    package: "microblog-cli",
};

/// The `microblog` binary: `MICROBLOG_BIN`, or the one cargo built beside this test (found as
/// the kit finds `raftnode`: [`Program::find`]).
pub fn microblog_bin() -> PathBuf {
    MICROBLOG.find().unwrap_or_else(|e| panic!("{e}"))
}

/// What one run of the program did.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Stdout, after checking the command succeeded.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        &self.stdout
    }

    /// Stdout's JSON lines, after checking the command succeeded.
    pub fn json(&self) -> Vec<Json> {
        self.ok()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Checks the exit code and that stderr mentions `needle`.
    pub fn fails(&self, code: i32, needle: &str) {
        assert_eq!(self.code, code, "expected exit {code}: {self:?}");
        assert!(
            self.stderr.contains(needle),
            "{needle:?} not in stderr: {self:?}"
        );
    }
}

/// A `microblog` command line with the cluster's endpoints set (none if `endpoints` is empty).
pub fn command(endpoints: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(microblog_bin());
    if !endpoints.is_empty() {
        cmd.arg("--endpoints").arg(endpoints);
    }
    cmd.args(args)
        .env_remove("MICROBLOG_ENDPOINTS")
        .env_remove("MICROBLOG_USER")
        .env("MICROBLOG_HOME", home())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match admin_key() {
        Some(key) => cmd.env("MICROBLOG_ADMIN_KEY", key),
        None => cmd.env_remove("MICROBLOG_ADMIN_KEY"),
    };
    cmd
}

/// The users' key home for this test process (`MICROBLOG_HOME`), never the user's own.
pub fn home() -> &'static std::path::Path {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().expect("a temp dir"))
        .path()
}

static ADMIN_KEY: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Where `microblog --admin` finds the admin's key (`MICROBLOG_ADMIN_KEY`): the newest
/// cluster's (tests run one cluster at a time).
pub fn set_admin_key(path: PathBuf) {
    *ADMIN_KEY.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
}

fn admin_key() -> Option<PathBuf> {
    ADMIN_KEY.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Runs a command to its end (within [`COMMAND`]).
pub async fn finish(mut cmd: tokio::process::Command) -> Run {
    let out = tokio::time::timeout(COMMAND, cmd.output())
        .await
        .expect("the command finished in time")
        .expect("run microblog");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits for a started command (its output piped) to end (within [`COMMAND`]).
pub async fn finish_child(child: tokio::process::Child) -> Run {
    let out = tokio::time::timeout(COMMAND, child.wait_with_output())
        .await
        .expect("the command finished in time")
        .expect("wait for microblog");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `microblog --endpoints <endpoints> args...`.
pub async fn mb(endpoints: &str, args: &[&str]) -> Run {
    finish(command(endpoints, args)).await
}
