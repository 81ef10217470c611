//! The terms of the stored log, kept in memory so raft's frequent `term` calls never read the
//! disk.

/// The terms of the stored log, run-length encoded: `runs[i] = (first index, term)`, the run
/// lasting until the next run's first index (the last run until the last index of the log).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct TermRuns {
    runs: Vec<(u64, u64)>,
}

impl TermRuns {
    pub(super) fn clear(&mut self) {
        self.runs.clear();
    }

    /// Forgets every index `>= index`.
    pub(super) fn truncate(&mut self, index: u64) {
        let keep = self.runs.partition_point(|&(start, _)| start < index);
        self.runs.truncate(keep);
    }

    /// Records entry `index` with `term`; everything `>= index` must have been truncated.
    pub(super) fn push(&mut self, index: u64, term: u64) {
        match self.runs.last() {
            Some(&(_, t)) if t == term => {}
            _ => self.runs.push((index, term)),
        }
    }

    /// Forgets every index `< index`.
    pub(super) fn compact(&mut self, index: u64) {
        // Runs whose successor starts at or before `index` end before it.
        let drop = self
            .runs
            .partition_point(|&(start, _)| start <= index)
            .saturating_sub(1);
        self.runs.drain(..drop);
        if let Some(first) = self.runs.first_mut() {
            first.0 = first.0.max(index);
        }
    }

    /// The term of `index`, which the caller has checked is within the log.
    pub(super) fn get(&self, index: u64) -> Option<u64> {
        let i = self.runs.partition_point(|&(start, _)| start <= index);
        i.checked_sub(1).map(|i| self.runs[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_runs() {
        let mut t = TermRuns::default();
        for (i, term) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 5), (6, 5)] {
            t.push(i, term);
        }
        assert_eq!(t.runs, vec![(1, 1), (3, 2), (5, 5)]);
        assert_eq!(
            (1..=6).map(|i| t.get(i).unwrap()).collect::<Vec<_>>(),
            [1, 1, 2, 2, 5, 5]
        );
        t.truncate(4);
        t.push(4, 3);
        assert_eq!(t.runs, vec![(1, 1), (3, 2), (4, 3)]);
        t.truncate(3);
        t.push(3, 1);
        assert_eq!(t.runs, vec![(1, 1)]);
        t.push(4, 2);
        t.compact(3);
        assert_eq!(t.runs, vec![(3, 1), (4, 2)]);
        t.compact(4);
        assert_eq!(t.runs, vec![(4, 2)]);
        t.compact(9);
        assert_eq!(t.runs, vec![(9, 2)]);
        assert_eq!(t.get(0), None);
    }
}
