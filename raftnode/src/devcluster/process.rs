//! One node process, handled by its own pid: started, signalled (kill, freeze, thaw, stop), and
//! killed when dropped.
//!
//! Signals go to the child's pid only while it has not been reaped, so a pid the system has
//! since given to another process is never signalled.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where a node's output goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// This process's stdout and stderr (`raftnode up`).
    Inherit,
    /// Appended to this file, stdout and stderr alike (a dev cluster's node logs).
    AppendTo(PathBuf),
}

/// A node process this program started.
#[derive(Debug)]
pub struct NodeProcess {
    /// Its pid, for signals (and for people: `raftnode up` prints it).
    pid: u32,
    /// The child and, once reaped, how it ended. (A mutex so that `&self` can check whether it
    /// has ended: a dev cluster's status probes hold `&self` while they look.)
    state: Mutex<ChildState>,
    /// Whether it was SIGSTOPped (and not SIGCONTed since).
    frozen: bool,
}

#[derive(Debug)]
struct ChildState {
    child: Child,
    /// How it ended, once reaped: no signal may reach its pid after that.
    ended: Option<ExitStatus>,
}

impl NodeProcess {
    /// Starts `command` (stdin from /dev/null, output as `output` says). With
    /// `own_process_group`, the node gets a process group of its own, so a Ctrl-C at the terminal
    /// reaches only this program, which then stops its nodes itself; without, the terminal's
    /// signals (and a test runner's) reach the node too.
    pub fn start(
        mut command: Command,
        output: &Output,
        own_process_group: bool,
    ) -> io::Result<NodeProcess> {
        command.stdin(Stdio::null());
        if let Output::AppendTo(path) = output {
            let log = File::options().create(true).append(true).open(path)?;
            command.stdout(log.try_clone()?).stderr(log);
        }
        if own_process_group {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        let child = command.spawn()?;
        Ok(NodeProcess {
            pid: child.id(),
            state: Mutex::new(ChildState { child, ended: None }),
            frozen: false,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it is SIGSTOPped.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    fn state(&self) -> MutexGuard<'_, ChildState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How it ended, if it has (reaping it if it just did).
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut state = self.state();
        if state.ended.is_none()
            && let Ok(Some(status)) = state.child.try_wait()
        {
            state.ended = Some(status);
        }
        state.ended
    }

    /// Sends `signal` to its pid, unless it has been reaped. False if nothing was sent.
    pub fn signal(&self, signal: Signal) -> bool {
        let state = self.state();
        if state.ended.is_some() {
            return false;
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        kill(Pid::from_raw(pid), signal).is_ok()
    }

    /// SIGSTOPs it.
    pub fn freeze(&mut self) {
        if self.signal(Signal::SIGSTOP) {
            self.frozen = true;
        }
    }

    /// SIGCONTs it.
    pub fn thaw(&mut self) {
        self.signal(Signal::SIGCONT);
        self.frozen = false;
    }

    /// SIGKILLs it (frozen or not) and reaps it; when the signal went out (`None`: it had already
    /// ended by itself).
    pub fn kill(&mut self) -> Option<Instant> {
        let sent = self.signal(Signal::SIGKILL).then(Instant::now);
        self.frozen = false;
        let mut state = self.state();
        if state.ended.is_none() {
            state.ended = state.child.wait().ok();
        }
        sent
    }

    /// SIGTERMs it (thawing it first) and waits up to `grace` for it to end, then SIGKILLs it.
    /// How it ended, and whether it ended by itself within the grace.
    pub fn stop(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        if self.frozen {
            self.thaw();
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.exited() {
                return (Some(status), true);
            }
            if Instant::now() >= deadline {
                self.kill();
                return (self.exited(), false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> NodeProcess {
        let mut command = Command::new("sleep");
        command.arg("30");
        NodeProcess::start(command, &Output::Inherit, false).expect("start sleep")
    }

    #[test]
    fn kill_reaps_and_never_signals_again() {
        let mut p = sleeper();
        assert!(p.exited().is_none());
        p.freeze();
        assert!(p.is_frozen());
        assert!(p.kill().is_some());
        assert!(!p.is_frozen());
        assert!(p.exited().is_some());
        assert!(!p.signal(Signal::SIGCONT), "a reaped pid was signalled");
        assert!(p.kill().is_none());
    }

    #[test]
    fn stop_ends_it_with_sigterm() {
        let mut p = sleeper();
        p.freeze();
        let started = Instant::now();
        let (status, by_itself) = p.stop(Duration::from_secs(10));
        assert!(by_itself && started.elapsed() < Duration::from_secs(5));
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(Signal::SIGTERM as i32)
        );
    }

    #[test]
    fn a_log_file_gets_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        std::fs::write(&log, "before\n").unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2"]);
        let p = NodeProcess::start(command, &Output::AppendTo(log.clone()), true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.exited().is_none() {
            assert!(Instant::now() < deadline, "sh did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.starts_with("before\n") && text.contains("out\n"),
            "{text}"
        );
        assert!(text.contains("err\n"), "{text}");
    }
}
