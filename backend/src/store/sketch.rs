//! A small mergeable quantile sketch (log-bucketed histogram, after DDSketch)
//! used for the p50/p95 of each aggregate.
//!
//! Accuracy: for any quantile `q`, the estimate is within 1% (relative) of
//! the exact value at rank `floor(q * (n - 1))` of the sorted samples, as
//! long as no store has collapsed (more than [`MAX_BUCKETS`] distinct
//! buckets on one sign, i.e. a dynamic range above ~1e17). Values with
//! `|x| < 1e-9` count as zero. Merging two sketches is exact (counts add), so
//! coarser time buckets lose no accuracy.

/// Relative accuracy of the estimates.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Cap on distinct buckets per sign; beyond it the lowest-magnitude buckets
/// are folded together, which only hurts quantiles among the tiniest values.
pub const MAX_BUCKETS: usize = 2048;

/// Magnitudes below this are counted in the zero bucket.
const MIN_MAGNITUDE: f64 = 1e-9;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// Bucket `i` holds magnitudes in `(gamma^(i-1), gamma^i]`.
fn index_of(magnitude: f64) -> i32 {
    (magnitude.ln() / gamma().ln()).ceil() as i32
}

/// The value that is within `RELATIVE_ACCURACY` of every magnitude in bucket `i`.
fn value_of(index: i32) -> f64 {
    let g = gamma();
    2.0 * g.powi(index) / (g + 1.0)
}

/// Sorted `(bucket index, count)` pairs for one sign.
#[derive(Debug, Clone, Default, PartialEq)]
struct Buckets(Vec<(i32, u64)>);

impl Buckets {
    fn add(&mut self, index: i32, count: u64) {
        match self.0.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(pos) => self.0[pos].1 += count,
            Err(pos) => {
                self.0.insert(pos, (index, count));
                if self.0.len() > MAX_BUCKETS {
                    let (_, lowest) = self.0.remove(0);
                    self.0[0].1 += lowest;
                }
            }
        }
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|(_, c)| c).sum()
    }
}

/// Quantile sketch over `f64` samples of either sign.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    positive: Buckets,
    negative: Buckets,
    zero: u64,
}

impl Sketch {
    /// Adds one sample (non-finite samples are ignored; validation keeps them out).
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        if x.abs() < MIN_MAGNITUDE {
            self.zero += 1;
        } else if x > 0.0 {
            self.positive.add(index_of(x), 1);
        } else {
            self.negative.add(index_of(-x), 1);
        }
    }

    /// Adds every sample of `other`, as if they had been added here.
    pub fn merge(&mut self, other: &Sketch) {
        for &(i, c) in &other.positive.0 {
            self.positive.add(i, c);
        }
        for &(i, c) in &other.negative.0 {
            self.negative.add(i, c);
        }
        self.zero += other.zero;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.positive.total() + self.negative.total() + self.zero
    }

    /// Estimate of the `q` quantile (`0.0..=1.0`), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (n - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // Ascending order of value: most negative first, then zero, then positives.
        for &(i, c) in self.negative.0.iter().rev() {
            seen += c;
            if seen > rank {
                return Some(-value_of(i));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0);
        }
        for &(i, c) in &self.positive.0 {
            seen += c;
            if seen > rank {
                return Some(value_of(i));
            }
        }
        // Unreachable with consistent counts; the largest value is the safe answer.
        self.positive.0.last().map(|&(i, _)| value_of(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers in [0, 1) (an LCG; no rand crate).
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn assert_close(estimate: f64, truth: f64) {
        let err = (estimate - truth).abs() / truth.abs().max(1e-9);
        assert!(
            err <= RELATIVE_ACCURACY + 1e-9,
            "estimate {estimate} vs {truth}: relative error {err}"
        );
    }

    #[test]
    fn empty_sketch_has_no_quantile() {
        assert_eq!(Sketch::default().quantile(0.5), None);
    }

    #[test]
    fn quantiles_are_within_one_percent_over_wide_ranges() {
        let mut seed = 42;
        for (lo, hi) in [(0.001, 1.0), (1.0, 10_000.0), (-500.0, 500.0)] {
            let mut sketch = Sketch::default();
            let mut samples: Vec<f64> =
                (0..5000).map(|_| lo + (hi - lo) * lcg(&mut seed)).collect();
            samples.iter().for_each(|&x| sketch.add(x));
            samples.sort_by(f64::total_cmp);
            for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0] {
                assert_close(sketch.quantile(q).unwrap(), exact(&samples, q));
            }
        }
    }

    #[test]
    fn heavy_tailed_latencies() {
        let mut seed = 7;
        let mut sketch = Sketch::default();
        // Exponential-ish: most around 10 ms, a tail to seconds.
        let mut samples: Vec<f64> = (0..20_000)
            .map(|_| -10.0 * (1.0 - lcg(&mut seed)).ln() + 1.0)
            .collect();
        samples.iter().for_each(|&x| sketch.add(x));
        samples.sort_by(f64::total_cmp);
        for q in [0.5, 0.95, 0.99] {
            assert_close(sketch.quantile(q).unwrap(), exact(&samples, q));
        }
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let mut seed = 3;
        let (mut a, mut b, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
        for i in 0..3000 {
            let x = 1000.0 * lcg(&mut seed) - 100.0;
            if i % 3 == 0 { &mut a } else { &mut b }.add(x);
            all.add(x);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(a.count(), 3000);
    }

    #[test]
    fn zeros_and_single_values() {
        let mut s = Sketch::default();
        s.add(0.0);
        s.add(0.0);
        s.add(5.0);
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert_close(s.quantile(1.0).unwrap(), 5.0);
    }

    #[test]
    fn bucket_count_is_capped() {
        let mut s = Sketch::default();
        for k in 0..5000 {
            s.add(1.05f64.powi(k % 800) * 1e-8);
            s.add(1.05f64.powi(k));
        }
        assert!(s.positive.0.len() <= MAX_BUCKETS);
        assert_eq!(s.count(), 10_000);
    }
}
