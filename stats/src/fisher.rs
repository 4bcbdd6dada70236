//! Fisher's exact test for comparing two failure counts.
//!
//! Why Fisher: the counts are tiny (0-20 aborts in thousands of cycles), so
//! chi-square / z-tests for two proportions are badly miscalibrated exactly
//! where verdicts are decided. Conditioning on the total number of failures
//! gives a hypergeometric null distribution that is exact for any sample
//! size, and it is conservative (actual false-alarm rate ≤ alpha), which is
//! the right direction for a tool that files "regression" bugs. The test is
//! one-sided because the question asked is directional ("is the candidate
//! worse?" / "is it better?").
//!
//! The tail is summed in log space: the first term comes from `ln_choose`
//! (lgamma), further terms from the pmf ratio, always walking *away* from the
//! mode so the terms shrink and summation can stop once they are negligible.
//! That keeps million-cycle totals both fast and accurate.

use crate::special::ln_choose;

/// One-sided Fisher exact p-value that B's failure rate is *greater* than
/// A's: `P(X >= b_fail)` where `X` is B's failure count under the null of
/// equal rates, conditioned on the total number of failures.
///
/// Returns 1.0 when there is no information (no failures at all, or an arm
/// with zero trials).
///
/// # Panics
/// If a failure count exceeds its total.
pub fn fisher_exact_one_sided(a_fail: u64, a_total: u64, b_fail: u64, b_total: u64) -> f64 {
    assert!(a_fail <= a_total, "a_fail ({a_fail}) > a_total ({a_total})");
    assert!(b_fail <= b_total, "b_fail ({b_fail}) > b_total ({b_total})");
    let n = a_total + b_total; // population
    let k = a_fail + b_fail; // successes ("failures") in population
    let draws = b_total; // B's sample
    let x_min = draws.saturating_sub(n - k);
    let x_max = k.min(draws);
    if b_fail <= x_min {
        return 1.0;
    }
    // Mode of the hypergeometric distribution.
    let mode = (((k + 1) as u128 * (draws + 1) as u128) / (n + 2) as u128) as u64;
    let hg = Hypergeometric { n, k, draws };
    if b_fail > mode {
        hg.sum_upward(b_fail, x_max).min(1.0)
    } else {
        (1.0 - hg.sum_downward(b_fail - 1, x_min)).clamp(0.0, 1.0)
    }
}

struct Hypergeometric {
    n: u64,
    k: u64,
    draws: u64,
}

impl Hypergeometric {
    fn ln_pmf(&self, x: u64) -> f64 {
        ln_choose(self.k, x) + ln_choose(self.n - self.k, self.draws - x)
            - ln_choose(self.n, self.draws)
    }

    /// pmf(x+1) / pmf(x)
    fn ratio_up(&self, x: u64) -> f64 {
        let (n, k, d, x) = (self.n as f64, self.k as f64, self.draws as f64, x as f64);
        (k - x) * (d - x) / ((x + 1.0) * (n - k - d + x + 1.0))
    }

    /// Σ pmf(x) for x in from..=to, where pmf decreases from `from` upward.
    fn sum_upward(&self, from: u64, to: u64) -> f64 {
        let mut term = 1.0;
        let mut sum = 1.0;
        let mut x = from;
        while x < to {
            term *= self.ratio_up(x);
            sum += term;
            x += 1;
            if term < sum * 1e-17 {
                break;
            }
        }
        (self.ln_pmf(from) + sum.ln()).exp()
    }

    /// Σ pmf(x) for x in to..=from, where pmf decreases from `from` downward.
    fn sum_downward(&self, from: u64, to: u64) -> f64 {
        let mut term = 1.0;
        let mut sum = 1.0;
        let mut x = from;
        while x > to {
            term /= self.ratio_up(x - 1);
            sum += term;
            x -= 1;
            if term < sum * 1e-17 {
                break;
            }
        }
        (self.ln_pmf(from) + sum.ln()).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    // Reference values from scipy.stats.fisher_exact(..., alternative=...).
    #[test]
    fn known_values() {
        let p = fisher_exact_one_sided(0, 200, 3, 200);
        assert!(close(p, 0.124_060_150_375_939_84, 1e-10), "{p}");
        let p = fisher_exact_one_sided(0, 1000, 12, 1000);
        assert!(close(p, 2.361_703_487_317_973e-4, 1e-9), "{p}");
        // "Candidate better": B = baseline, A = candidate.
        let p = fisher_exact_one_sided(0, 1000, 10, 1000);
        assert!(close(p, 9.547_325_826_708_071e-4, 1e-9), "{p}");
        let p = fisher_exact_one_sided(3, 1000, 7, 1000);
        assert!(close(p, 0.171_258_223_375_207, 1e-9), "{p}");
        // Lower-half b: complement path.
        let p = fisher_exact_one_sided(7, 1000, 3, 1000);
        assert!(close(p, 0.945_752_171_414_126_5, 1e-9), "{p}");
        // Unequal sizes.
        let p = fisher_exact_one_sided(2, 5000, 4, 600);
        assert!(close(p, 1.640_053_450_742_712_5e-3, 1e-9), "{p}");
    }

    #[test]
    fn large_totals() {
        let p = fisher_exact_one_sided(20, 1_000_000, 45, 1_000_000);
        assert!(close(p, 1.312_981_015_931_633e-3, 1e-7), "{p}");
        let p = fisher_exact_one_sided(5000, 1_000_000, 5000, 1_000_000);
        assert!(close(p, 0.503_999_333_757_200_2, 1e-7), "{p}");
    }

    #[test]
    fn degenerate() {
        assert_eq!(fisher_exact_one_sided(0, 100, 0, 100), 1.0);
        assert_eq!(fisher_exact_one_sided(0, 0, 5, 100), 1.0);
        assert_eq!(fisher_exact_one_sided(5, 100, 0, 0), 1.0);
        let p = fisher_exact_one_sided(0, 10, 10, 10);
        assert!(close(p, 5.412_544_112_234_515e-6, 1e-10), "{p}");
    }
}
