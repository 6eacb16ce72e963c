//! Worker choice. Pure: the caller passes loads or costs and some entropy.
//!
//! - [`pick_least_loaded`]: fewest requests in flight, ties at random (the guard off).
//! - [`pick_p2c`]: power of two choices on a cost (the guard on): pick two candidates at
//!   random, keep the cheaper. Nearly as good as the global minimum, and it does not herd
//!   every concurrent choice onto the one worker that looked best a microsecond ago.
//!
//! Random tie-breaking matters: with sequential traffic every worker sits at 0 in flight, and
//! always taking the first would send everything to worker 1.

use super::MAX_WORKERS;

/// The workers one request has already tried, by index: a retry or a hedge goes to another.
/// A policy has at most [`MAX_WORKERS`] (64) workers, so the set is one word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    /// No worker tried yet.
    pub const NONE: Tried = Tried(0);

    /// Only worker `index`.
    pub fn of(index: usize) -> Tried {
        let mut t = Tried::NONE;
        t.insert(index);
        t
    }

    pub fn insert(&mut self, index: usize) {
        if index < MAX_WORKERS {
            self.0 |= 1 << index;
        }
    }

    pub fn contains(self, index: usize) -> bool {
        index < MAX_WORKERS && self.0 & (1 << index) != 0
    }

    /// Whether every one of `workers` workers has been tried.
    pub fn covers(self, workers: usize) -> bool {
        (0..workers.min(MAX_WORKERS)).all(|i| self.contains(i))
    }
}

/// Returns the index of the least-loaded worker not in `excluded`, choosing uniformly among
/// equals with the help of `entropy`. `None` when all are excluded.
pub fn pick_least_loaded(
    loads: impl Iterator<Item = usize>,
    excluded: Tried,
    entropy: u64,
) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None; // (index, load)
    let mut ties: u64 = 0;
    let mut rng = entropy | 1;
    for (i, load) in loads.enumerate() {
        if excluded.contains(i) {
            continue;
        }
        match best {
            Some((_, b)) if load > b => {}
            Some((_, b)) if load == b => {
                // Reservoir sampling: keep the newcomer with probability 1/ties.
                ties += 1;
                rng = xorshift(rng);
                if rng.is_multiple_of(ties) {
                    best = Some((i, load));
                }
            }
            _ => {
                best = Some((i, load));
                ties = 1;
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Power of two choices among `(index, cost)` candidates. `None` when there are none.
pub fn pick_p2c(candidates: &[(usize, f64)], entropy: u64) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].0),
        n => {
            let a = (entropy % n as u64) as usize;
            // A second, distinct candidate.
            let b = (a + 1 + (xorshift(entropy | 1) % (n as u64 - 1)) as usize) % n;
            let (ia, ca) = candidates[a];
            let (ib, cb) = candidates[b];
            Some(if cb < ca { ib } else { ia })
        }
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_minimum() {
        assert_eq!(
            pick_least_loaded([3, 1, 2].into_iter(), Tried::NONE, 7),
            Some(1)
        );
    }

    #[test]
    fn skips_excluded_even_if_least_loaded() {
        assert_eq!(
            pick_least_loaded([3, 0, 2].into_iter(), Tried::of(1), 7),
            Some(2)
        );
        let mut both = Tried::of(0);
        both.insert(1);
        assert_eq!(pick_least_loaded([0, 0].into_iter(), both, 7), None);
        assert_eq!(pick_least_loaded(std::iter::empty(), Tried::NONE, 7), None);
    }

    #[test]
    fn tried_holds_every_worker_a_policy_can_have() {
        let mut t = Tried::NONE;
        assert!(t.covers(0));
        assert!(!t.covers(1));
        for i in 0..MAX_WORKERS {
            t.insert(i);
        }
        assert!(t.covers(MAX_WORKERS));
        assert!(t.contains(MAX_WORKERS - 1));
        // Past the bound nothing is stored and nothing is found.
        t.insert(MAX_WORKERS);
        assert!(!t.contains(MAX_WORKERS));
        assert!(Tried::of(3).contains(3) && !Tried::of(3).contains(2));
    }

    #[test]
    fn ties_spread_across_all_tied_workers() {
        let mut hits = [0u32; 4];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..4000 {
            seed = xorshift(seed);
            let i = pick_least_loaded([0, 0, 5, 0].into_iter(), Tried::NONE, seed).unwrap();
            hits[i] += 1;
        }
        assert_eq!(hits[2], 0, "a loaded worker is never picked over idle ones");
        for i in [0, 1, 3] {
            // Each of 3 tied workers should get about 1333 of 4000.
            assert!((1000..1700).contains(&hits[i]), "uneven spread: {hits:?}");
        }
    }

    #[test]
    fn p2c_never_picks_the_most_expensive_and_favours_the_cheapest() {
        let c = [(0, 5.0), (1, 1.0), (2, 3.0), (3, 100.0)];
        let mut hits = [0u32; 4];
        let mut seed = 12345u64;
        for _ in 0..4000 {
            seed = xorshift(seed);
            hits[pick_p2c(&c, seed).unwrap()] += 1;
        }
        assert_eq!(hits[3], 0, "{hits:?}");
        // The cheapest wins every pair it is in: 3 of the 6 pairs, so about half.
        assert!(hits[1] > 1700, "{hits:?}");
        assert!(hits[1] > hits[2] && hits[2] > hits[0], "{hits:?}");
    }

    #[test]
    fn p2c_handles_one_or_no_candidate() {
        assert_eq!(pick_p2c(&[], 1), None);
        assert_eq!(pick_p2c(&[(7, 1.0)], 1), Some(7));
        for seed in 1..100 {
            let i = pick_p2c(&[(4, 2.0), (9, 1.0)], seed).unwrap();
            assert_eq!(i, 9, "with two candidates the cheaper always wins");
        }
    }
}
