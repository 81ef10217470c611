//! What `bench catchup` measures besides the catch-up itself: how steadily a long load was
//! acknowledged (per second, and the longest gap with no acknowledgement), a node's resident
//! memory, and the bytes a node keeps on disk.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the load's acknowledgement counter is sampled.
const SAMPLE: Duration = Duration::from_millis(5);

/// Acknowledged writes over time.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// Acknowledged writes in each whole second of the load.
    pub per_second: Vec<u64>,
    /// The longest time with no acknowledgement at all (to the sampling's 5 ms).
    pub longest_gap: Duration,
}

impl Timeline {
    /// The mean of the whole seconds.
    pub fn mean(&self) -> f64 {
        if self.per_second.is_empty() {
            return 0.0;
        }
        self.per_second.iter().sum::<u64>() as f64 / self.per_second.len() as f64
    }

    /// The slowest whole second.
    pub fn min(&self) -> u64 {
        self.per_second.iter().copied().min().unwrap_or(0)
    }

    /// Whole seconds below half the mean (the target is none).
    pub fn below_half_mean(&self) -> usize {
        let half = self.mean() / 2.0;
        self.per_second
            .iter()
            .filter(|&&n| (n as f64) < half)
            .count()
    }
}

/// Samples `acked` (a counter of acknowledged writes) until `done` is set.
pub async fn watch(acked: Arc<AtomicU64>, done: Arc<std::sync::atomic::AtomicBool>) -> Timeline {
    let mut timeline = Timeline::default();
    let start = Instant::now();
    let mut last = acked.load(Ordering::Relaxed);
    let mut last_change: Option<Instant> = None;
    let mut second_start = 0;
    let mut next_second = start + Duration::from_secs(1);
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let count = acked.load(Ordering::Relaxed);
        if count != last {
            // The gap is counted from the first acknowledgement on, between changes.
            if let Some(at) = last_change {
                timeline.longest_gap = timeline.longest_gap.max(now - at);
            }
            last_change = Some(now);
            last = count;
        }
        while now >= next_second {
            timeline.per_second.push(count - second_start);
            second_start = count;
            next_second += Duration::from_secs(1);
        }
        if done.load(Ordering::Relaxed) {
            return timeline;
        }
    }
}

/// A process's resident memory in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The bytes of every file under `dir`.
pub fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The size of the newest snapshot file in `<data_dir>/snapshots`.
pub fn newest_snapshot(data_dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(data_dir.join("snapshots")).ok()?;
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            (name.starts_with("snap-") && name.ends_with(".snap"))
                .then(|| Some((name, e.metadata().ok()?.len())))?
        })
        .max()
        .map(|(_, len)| len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_figures() {
        let t = Timeline {
            per_second: vec![100, 90, 40, 110],
            longest_gap: Duration::from_millis(30),
        };
        assert_eq!(t.mean(), 85.0);
        assert_eq!(t.min(), 40);
        assert_eq!(t.below_half_mean(), 1);
        assert_eq!(Timeline::default().mean(), 0.0);
    }

    #[test]
    fn rss_and_du_read_this_process_and_a_dir() {
        assert!(rss(std::process::id()).unwrap_or(0) > 0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("snapshots")).unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        let snaps = dir.path().join("snapshots");
        std::fs::write(snaps.join("snap-1.snap"), [0u8; 5]).unwrap();
        std::fs::write(snaps.join("snap-2.snap"), [0u8; 7]).unwrap();
        std::fs::write(snaps.join("snap-3.snap.tmp"), [0u8; 9]).unwrap();
        assert_eq!(du(dir.path()), 31);
        assert_eq!(newest_snapshot(dir.path()), Some(7));
    }
}
