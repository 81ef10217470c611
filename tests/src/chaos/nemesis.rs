//! The nemesis: a seeded sequence of faults against a [`ChaosCluster`].
//!
//! Every few seconds it picks one fault: SIGKILL a random node or the leader (it stays down until
//! a `restart`), SIGSTOP a node for a while (then SIGCONT), restart a killed node with its data,
//! cut the leader off from everyone or split the cluster into a minority and a majority for a
//! while (then heal), remove a running node from the membership and add it back wiped, or replace
//! a node after a disk loss by a fresh node with a new id, or step a node's wall clock hours
//! ahead or behind (nodes run under libfaketime). It never lets more than a minority be
//! down, frozen or cut off at once: when a fault would exceed that, it first restarts a killed
//! node. Membership faults start from a healed, fully running cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::topology::{ChaosCluster, SharedMembers, leader_of, statuses_of};

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// SIGKILL a random node (it stays down until restarted).
    Kill,
    /// SIGKILL the leader.
    KillLeader,
    /// SIGSTOP a node for a while, then SIGCONT it.
    Freeze,
    /// Restart a killed node with its data.
    Restart,
    /// Cut the leader off from every other node for a while.
    IsolateLeader,
    /// Split the cluster into a minority (2 of 5, 1 of 3) and a majority for a while.
    Split,
    /// Remove a running node from the cluster, wipe it, and add it back.
    RemoveReadd,
    /// Kill a node, wipe it, remove it and add a fresh node with a new id in its place.
    Replace,
    /// Step a node's wall clock (hours ahead or behind, or back to true time), as NTP or a VM
    /// resume would; its monotonic clock is left alone (nodes run under libfaketime).
    ClockStep,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 9] = [
        Fault::Kill,
        Fault::KillLeader,
        Fault::Freeze,
        Fault::Restart,
        Fault::IsolateLeader,
        Fault::Split,
        Fault::RemoveReadd,
        Fault::Replace,
        Fault::ClockStep,
    ];

    /// Its name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::Freeze => "freeze",
            Fault::Restart => "restart",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Split => "split",
            Fault::RemoveReadd => "remove-readd",
            Fault::Replace => "replace",
            Fault::ClockStep => "clock-step",
        }
    }

    /// How often it is picked, relative to the others.
    fn weight(self) -> u32 {
        match self {
            Fault::Kill | Fault::KillLeader | Fault::Freeze => 2,
            Fault::Restart => 3,
            Fault::IsolateLeader | Fault::Split => 2,
            Fault::RemoveReadd | Fault::Replace => 1,
            Fault::ClockStep => 2,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault {s:?} (known: {})", names.join(", "))
            })
    }
}

/// Parses a comma-separated fault list; `all`, `crash` (kill, kill-leader, freeze, restart),
/// `partition` (isolate-leader, split), `membership` (remove-readd, replace) and `clock`
/// (clock-step) name groups.
pub fn parse_faults(text: &str) -> Result<Vec<Fault>, String> {
    let mut out = BTreeSet::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "all" => out.extend(Fault::ALL),
            "crash" => out.extend([
                Fault::Kill,
                Fault::KillLeader,
                Fault::Freeze,
                Fault::Restart,
            ]),
            "partition" => out.extend([Fault::IsolateLeader, Fault::Split]),
            "membership" => out.extend([Fault::RemoveReadd, Fault::Replace]),
            "clock" => out.extend([Fault::ClockStep]),
            other => {
                out.insert(other.parse()?);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// No membership fault starts when less than this is left of the run.
const MEMBERSHIP_TAIL: Duration = Duration::from_secs(10);

/// Nemesis settings.
#[derive(Clone, Debug)]
pub struct NemesisOptions {
    /// Which faults it picks from.
    pub faults: Vec<Fault>,
    /// Pause between faults (uniform in this range).
    pub gap: (Duration, Duration),
    /// How long a freeze or a partition lasts (uniform in this range).
    pub hold: (Duration, Duration),
    /// Seeds its choices.
    pub seed: u64,
    /// Print each fault as it happens.
    pub verbose: bool,
}

impl Default for NemesisOptions {
    fn default() -> Self {
        NemesisOptions {
            faults: Fault::ALL.to_vec(),
            gap: (Duration::from_millis(1000), Duration::from_millis(3000)),
            hold: (Duration::from_millis(1500), Duration::from_millis(5000)),
            seed: 0,
            verbose: false,
        }
    }
}

/// What the nemesis did.
#[derive(Clone, Debug, Default)]
pub struct NemesisLog {
    /// Faults injected, by kind.
    pub counts: BTreeMap<Fault, u64>,
    /// Every step, with its time since the run started.
    pub timeline: Vec<(Duration, String)>,
    /// Steps that did not complete (e.g. a membership change without a leader in time).
    pub errors: Vec<String>,
}

/// Injects faults until told to stop.
pub struct Nemesis<'a> {
    cc: &'a mut ChaosCluster,
    rng: StdRng,
    options: NemesisOptions,
    start: Instant,
    /// Killed slots, not restarted yet.
    down: BTreeSet<usize>,
    log: NemesisLog,
}

impl<'a> Nemesis<'a> {
    /// A nemesis over `cc`; `start` is the run's time zero (for the timeline).
    pub fn new(cc: &'a mut ChaosCluster, options: NemesisOptions, start: Instant) -> Self {
        Nemesis {
            cc,
            rng: StdRng::seed_from_u64(options.seed),
            options,
            start,
            down: BTreeSet::new(),
            log: NemesisLog::default(),
        }
    }

    fn note(&mut self, text: String) {
        let at = self.start.elapsed();
        if self.options.verbose {
            eprintln!("[{:>7.1}s] nemesis: {text}", at.as_secs_f64());
        }
        self.log.timeline.push((at, text));
    }

    fn count(&mut self, fault: Fault) {
        *self.log.counts.entry(fault).or_default() += 1;
    }

    fn between(&mut self, range: (Duration, Duration)) -> Duration {
        let (lo, hi) = (range.0.as_millis() as u64, range.1.as_millis() as u64);
        Duration::from_millis(self.rng.gen_range(lo..=hi.max(lo)))
    }

    /// Injects faults until `until`, then returns what it did (faults may still be in effect:
    /// killed nodes stay down; heal with [`ChaosCluster::heal_everything`]).
    pub async fn run(mut self, until: Instant) -> NemesisLog {
        if self.options.faults.is_empty() {
            tokio::time::sleep_until(until.into()).await;
            return self.log;
        }
        loop {
            let gap = self.between(self.options.gap);
            if Instant::now() + gap >= until {
                tokio::time::sleep_until(until.into()).await;
                break;
            }
            tokio::time::sleep(gap).await;
            for (id, code) in self.cc.reap_exited().await {
                let text = format!("node {id} exited by itself (exit code {code})");
                self.note(text.clone());
                self.log.errors.push(text);
                if let Some(slot) = self.cc.slot_of(id) {
                    self.down.insert(slot);
                }
            }
            let fault = self.pick(until);
            self.inject(fault, until).await;
            if Instant::now() >= until {
                break;
            }
        }
        self.log
    }

    fn pick(&mut self, until: Instant) -> Fault {
        // A membership fault takes a while: none in the last seconds of the run.
        let membership_ok = Instant::now() + MEMBERSHIP_TAIL < until;
        let choices: Vec<Fault> = self
            .options
            .faults
            .iter()
            .copied()
            .filter(|&f| f != Fault::Restart || !self.down.is_empty())
            .filter(|&f| membership_ok || !matches!(f, Fault::RemoveReadd | Fault::Replace))
            .collect();
        if choices.is_empty() {
            return Fault::Restart;
        }
        *choices
            .choose_weighted(&mut self.rng, |f| f.weight())
            .expect("non-empty choices with positive weights")
    }

    /// Restarts killed nodes until `more` further nodes may be impaired.
    fn make_room(&mut self, more: usize) {
        while !self.down.is_empty() && self.down.len() + more > self.cc.minority() {
            let down: Vec<usize> = self.down.iter().copied().collect();
            let slot = *down.choose(&mut self.rng).expect("not empty");
            self.restart(slot);
        }
    }

    fn restart(&mut self, slot: usize) {
        self.down.remove(&slot);
        if self.cc.restart(slot) {
            self.count(Fault::Restart);
            self.note(format!("restart node {}", self.cc.id(slot)));
        }
    }

    fn running_slots(&self) -> Vec<usize> {
        (0..self.cc.size())
            .filter(|&s| self.cc.is_running(s) && !self.cc.is_frozen(s))
            .collect()
    }

    async fn leader_slot(&mut self) -> Option<usize> {
        match self.cc.wait_leader(Duration::from_secs(3)).await {
            Some(id) => self.cc.slot_of(id),
            None => {
                self.note("no leader to target; skipped".into());
                None
            }
        }
    }

    /// Holds a fault in place for a while (not past `until`).
    async fn hold(&mut self, until: Instant) {
        let hold = self.between(self.options.hold);
        let end = (Instant::now() + hold).min(until);
        tokio::time::sleep_until(end.into()).await;
    }

    async fn inject(&mut self, fault: Fault, until: Instant) {
        match fault {
            Fault::Kill => {
                self.make_room(1);
                let Some(&slot) = self.running_slots().choose(&mut self.rng) else {
                    return;
                };
                self.cc.kill(slot);
                self.down.insert(slot);
                self.count(fault);
                self.note(format!("kill node {}", self.cc.id(slot)));
            }
            Fault::KillLeader => {
                let Some(slot) = self.leader_slot().await else {
                    return;
                };
                self.make_room(1);
                self.cc.kill(slot);
                self.down.insert(slot);
                self.count(fault);
                self.note(format!("kill the leader, node {}", self.cc.id(slot)));
            }
            Fault::ClockStep => {
                let slot = self.rng.gen_range(0..self.cc.size());
                let offset = *[-7_200i64, 7_200, 86_400, -3_600, 0]
                    .choose(&mut self.rng)
                    .expect("offsets");
                if self.cc.step_clock(slot, offset) {
                    self.count(fault);
                    self.note(format!(
                        "step node {}'s wall clock to {offset:+} s from true time",
                        self.cc.id(slot)
                    ));
                }
            }
            Fault::Freeze => {
                self.make_room(1);
                let Some(&slot) = self.running_slots().choose(&mut self.rng) else {
                    return;
                };
                self.cc.freeze(slot);
                self.count(fault);
                self.note(format!("freeze node {}", self.cc.id(slot)));
                self.hold(until).await;
                self.cc.thaw(slot);
                self.note(format!("thaw node {}", self.cc.id(slot)));
            }
            Fault::Restart => {
                let down: Vec<usize> = self.down.iter().copied().collect();
                if let Some(&slot) = down.choose(&mut self.rng) {
                    self.restart(slot);
                }
            }
            Fault::IsolateLeader => {
                let Some(slot) = self.leader_slot().await else {
                    return;
                };
                self.make_room(1);
                self.cc.isolate(slot);
                self.count(fault);
                self.note(format!("isolate the leader, node {}", self.cc.id(slot)));
                self.hold(until).await;
                self.cc.heal();
                self.note("heal the network".into());
            }
            Fault::Split => {
                let minority = self.cc.minority();
                if minority == 0 {
                    return;
                }
                if self.down.len() >= minority {
                    self.make_room(1);
                }
                // Dead nodes go to the minority side, so the majority side stays a majority.
                let mut side: Vec<usize> = self.down.iter().copied().collect();
                let mut others: Vec<usize> =
                    (0..self.cc.size()).filter(|s| !side.contains(s)).collect();
                others.shuffle(&mut self.rng);
                while side.len() < minority {
                    side.push(others.pop().expect("enough nodes"));
                }
                side.sort_unstable();
                let rest: Vec<usize> = (0..self.cc.size()).filter(|s| !side.contains(s)).collect();
                let ids = |slots: &[usize]| -> Vec<u64> {
                    slots.iter().map(|&s| self.cc.id(s)).collect::<Vec<_>>()
                };
                let text = format!("split {:?} | {:?}", ids(&side), ids(&rest));
                self.cc.partition(&[side, rest]);
                self.count(fault);
                self.note(text);
                self.hold(until).await;
                self.cc.heal();
                self.note("heal the network".into());
            }
            Fault::RemoveReadd | Fault::Replace => {
                // Start from a whole cluster: everyone running, no partition.
                let down: Vec<usize> = self.down.iter().copied().collect();
                for slot in down {
                    self.restart(slot);
                }
                self.cc.heal();
                if self.cc.wait_leader(Duration::from_secs(10)).await.is_none() {
                    self.note("no leader for a membership change; skipped".into());
                    return;
                }
                let slot = self.rng.gen_range(0..self.cc.size());
                let id = self.cc.id(slot);
                self.count(fault);
                let result = if fault == Fault::RemoveReadd {
                    self.note(format!(
                        "remove node {id}, wipe it and add the machine back under a new id"
                    ));
                    self.cc
                        .remove_and_readd(slot)
                        .await
                        .map(|()| format!("node {id}'s machine is back as a voter"))
                } else {
                    self.note(format!("kill node {id}, wipe it and replace it"));
                    self.cc
                        .replace(slot)
                        .await
                        .map(|new| format!("node {new} replaced node {id}"))
                };
                match result {
                    Ok(text) => self.note(text),
                    Err(e) => {
                        let text = format!("{fault} of node {id} did not complete: {e:#}");
                        self.note(text.clone());
                        self.log.errors.push(text);
                        match self.cc.heal_everything(Duration::from_secs(60)).await {
                            Ok(_) => {
                                self.down.clear();
                                self.note("recovered: every node runs as a voter".into());
                            }
                            Err(e) => {
                                let text = format!("recovery after {fault} failed: {e:#}");
                                self.note(text.clone());
                                self.log.errors.push(text);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Leader changes seen by polling every node's status.
pub struct LeaderWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Duration, u64, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderWatch {
    /// Polls the members' statuses every `every`.
    pub fn start(members: SharedMembers, start: Instant, every: Duration) -> LeaderWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            async move {
                let mut last: Option<(u64, u64)> = None;
                while !stop.load(Ordering::Relaxed) {
                    let views = statuses_of(&members.members()).await;
                    if let Some((id, term)) = leader_of(&views)
                        && last.is_none_or(|(_, t)| term > t)
                    {
                        let at = start.elapsed();
                        seen.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((at, id, term));
                        last = Some((id, term));
                    }
                    tokio::time::sleep(every).await;
                }
            }
        });
        LeaderWatch { stop, seen, task }
    }

    /// Stops polling; the leaders seen: (time, id, term), first one included.
    pub async fn stop(self) -> Vec<(Duration, u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
