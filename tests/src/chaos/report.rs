//! The run report: what the clients did, what the nemesis did, how available the cluster was,
//! and what the checker found. Its last line is always `anomalies: N`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::nemesis::{Fault, NemesisLog};
use crate::history;

/// The longest stretch without an acknowledged write.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    /// Its start, since the run started.
    pub from: Duration,
    /// Its end, since the run started.
    pub to: Duration,
}

impl Window {
    /// How long it lasted.
    pub fn length(&self) -> Duration {
        self.to.saturating_sub(self.from)
    }
}

/// The longest window in `[from, to]` with no write completion among `acks` (completion times).
pub fn longest_gap(start: Instant, from: Instant, to: Instant, acks: &[Instant]) -> Window {
    let mut times: Vec<Instant> = acks
        .iter()
        .copied()
        .filter(|&t| t >= from && t <= to)
        .collect();
    times.sort_unstable();
    let mut best = Window::default();
    let mut prev = from;
    for t in times.into_iter().chain([to]) {
        if t.duration_since(prev) > best.length() {
            best = Window {
                from: prev.duration_since(start),
                to: t.duration_since(start),
            };
        }
        prev = t;
    }
    best
}

/// Everything a run reports.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Nodes (slots).
    pub nodes: usize,
    /// Clients.
    pub clients: usize,
    /// The seed of the nemesis and the workload.
    pub seed: u64,
    /// How long faults were injected.
    pub fault_time: Duration,
    /// Where the history is.
    pub history_path: PathBuf,
    /// Where the nemesis's timeline is (one line per step).
    pub timeline_path: PathBuf,
    /// Events in the history.
    pub events: usize,
    /// Per operation: invoked, ok, fail, info.
    pub ops: BTreeMap<history::Op, [u64; 4]>,
    /// What the nemesis did.
    pub nemesis: NemesisLog,
    /// Leaders seen: (time since start, id, term), the first one included.
    pub leaders: Vec<(Duration, u64, u64)>,
    /// The longest window with no acknowledged write while the clients ran.
    pub longest_gap: Window,
    /// How long the cluster took to be whole again after the faults stopped.
    pub recovery: Option<Duration>,
    /// Each node's final digest, if the replicas converged.
    pub digests: BTreeMap<u64, u32>,
    /// Final tuples (per node, they agree when converged).
    pub final_tuples: usize,
    /// What the checker said (its own summary).
    pub checker: String,
    /// Problems outside the checker: the cluster did not recover or converge.
    pub run_anomalies: Vec<String>,
    /// The checker's anomaly count.
    pub checker_anomalies: usize,
    /// Partitions the checker could not decide within its search budget.
    pub checker_unknown: usize,
    /// How long the checker took.
    pub check_time: Duration,
    /// Where the cluster's directory was kept (logs, data, cluster files), if it was.
    pub kept_dir: Option<PathBuf>,
}

impl RunReport {
    /// Every anomaly: the checker's plus the run's own (no recovery, no convergence).
    pub fn anomalies(&self) -> usize {
        self.checker_anomalies + self.run_anomalies.len()
    }

    /// Totals: invoked, ok, fail, info.
    pub fn totals(&self) -> [u64; 4] {
        let mut t = [0; 4];
        for c in self.ops.values() {
            for (sum, n) in t.iter_mut().zip(c) {
                *sum += n;
            }
        }
        t
    }

    /// Leader changes: leaders seen after the first.
    pub fn leader_changes(&self) -> usize {
        self.leaders.len().saturating_sub(1)
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos run: {} nodes, {} clients, {} of faults, seed {}",
            self.nodes,
            self.clients,
            secs(self.fault_time),
            self.seed
        )?;
        writeln!(
            f,
            "history: {} ({} events)",
            self.history_path.display(),
            self.events
        )?;
        let [invoked, ok, fail, info] = self.totals();
        writeln!(
            f,
            "ops: invoked {invoked}, ok {ok}, fail {fail}, info {info}"
        )?;
        for (op, [i, o, fl, inf]) in &self.ops {
            writeln!(
                f,
                "  {:<7} invoked {i:>6}  ok {o:>6}  fail {fl:>4}  info {inf:>5}",
                op.name()
            )?;
        }
        let total: u64 = self.nemesis.counts.values().sum();
        let by_kind: Vec<String> = Fault::ALL
            .iter()
            .filter_map(|k| self.nemesis.counts.get(k).map(|n| format!("{k} {n}")))
            .collect();
        writeln!(
            f,
            "faults: {total} ({}); timeline: {}",
            by_kind.join(", "),
            self.timeline_path.display()
        )?;
        for e in &self.nemesis.errors {
            writeln!(f, "  incomplete: {e}")?;
        }
        let leaders: Vec<String> = self
            .leaders
            .iter()
            .map(|(at, id, term)| format!("{id}@{}(t{term})", secs(*at)))
            .collect();
        let shown = if leaders.len() > 12 {
            format!(
                "{} ... {}",
                leaders[..6].join(" "),
                leaders[leaders.len() - 6..].join(" ")
            )
        } else {
            leaders.join(" ")
        };
        writeln!(f, "leader changes: {} ({shown})", self.leader_changes())?;
        let w = self.longest_gap;
        writeln!(
            f,
            "longest window with no acknowledged write: {} (from {} to {})",
            secs(w.length()),
            secs(w.from),
            secs(w.to)
        )?;
        let during: Vec<String> = self
            .nemesis
            .timeline
            .iter()
            .filter(|(at, _)| *at + Duration::from_secs(6) >= w.from && *at <= w.to)
            .map(|(at, what)| format!("{} {what}", secs(*at)))
            .collect();
        if !during.is_empty() {
            writeln!(f, "  nemesis around it: {}", during.join("; "))?;
        }
        match self.recovery {
            Some(d) => writeln!(f, "recovery after the faults stopped: {}", secs(d))?,
            None => writeln!(f, "recovery after the faults stopped: did not recover")?,
        }
        if !self.digests.is_empty() {
            let digests: Vec<String> = self
                .digests
                .iter()
                .map(|(id, d)| format!("{id}:{d:08x}"))
                .collect();
            writeln!(
                f,
                "replicas converged: digests {} ({} tuples)",
                digests.join(" "),
                self.final_tuples
            )?;
        }
        for a in &self.run_anomalies {
            writeln!(f, "run anomaly: {a}")?;
        }
        let checker = self.checker.trim_end();
        if !checker.is_empty() {
            writeln!(f, "{checker}")?;
            writeln!(f, "checked in {}", secs(self.check_time))?;
        }
        if let Some(dir) = &self.kept_dir {
            writeln!(
                f,
                "kept: {} (node logs, data, cluster files)",
                dir.display()
            )?;
        }
        write!(f, "anomalies: {}", self.anomalies())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_both_ends() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let w = longest_gap(start, at(0), at(10_000), &[at(1000), at(2000), at(7000)]);
        assert_eq!(
            (w.from, w.to),
            (Duration::from_secs(2), Duration::from_secs(7))
        );
        let w = longest_gap(start, at(0), at(10_000), &[at(1000)]);
        assert_eq!(w.to, Duration::from_secs(10));
        let w = longest_gap(start, at(0), at(10_000), &[]);
        assert_eq!(w.length(), Duration::from_secs(10));
    }
}
