//! Confidence intervals for a Bernoulli failure rate.
//!
//! * [`clopper_pearson`] is the "exact" interval obtained by inverting the
//!   binomial test (via Beta quantiles). It guarantees at least the nominal
//!   coverage for every true rate, which matters for rare events: with 0 or a
//!   handful of failures the normal approximation is useless, and an interval
//!   that under-covers would let a buggy kernel look clean. It is what
//!   verdict reports show.
//! * [`wilson_interval`] is the score interval: close to nominal coverage on
//!   average, never degenerate at 0 failures (unlike Wald), narrower than
//!   Clopper-Pearson and closed-form. Useful for dashboards and quick
//!   estimates; it is not used to make verdicts.
//! * [`clopper_pearson_upper`] is the one-sided exact upper bound. For 0
//!   failures it reduces to `1 - (1-confidence)^(1/n)` (the "rule of three"
//!   generalised), which is the same criterion as
//!   [`crate::cycles_for_confidence`].

use crate::special::{beta_quantile, normal_quantile};

fn check(failures: u64, trials: u64, confidence: f64) {
    assert!(
        failures <= trials,
        "failures ({failures}) > trials ({trials})"
    );
    assert!(
        confidence > 0.0 && confidence < 1.0,
        "confidence must be in (0, 1), got {confidence}"
    );
}

/// Two-sided Wilson score interval for `failures / trials` at `confidence`
/// (e.g. 0.95). Returns `(0, 1)` for zero trials.
///
/// # Panics
/// If `failures > trials` or `confidence` is not in (0, 1).
pub fn wilson_interval(failures: u64, trials: u64, confidence: f64) -> (f64, f64) {
    check(failures, trials, confidence);
    if trials == 0 {
        return (0.0, 1.0);
    }
    let z = normal_quantile(1.0 - (1.0 - confidence) / 2.0);
    let n = trials as f64;
    let p = failures as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let lo = if failures == 0 {
        0.0
    } else {
        (center - half).max(0.0)
    };
    let hi = if failures == trials {
        1.0
    } else {
        (center + half).min(1.0)
    };
    (lo, hi)
}

/// Two-sided Clopper-Pearson ("exact") interval for `failures / trials` at
/// `confidence`. Returns `(0, 1)` for zero trials.
///
/// # Panics
/// If `failures > trials` or `confidence` is not in (0, 1).
pub fn clopper_pearson(failures: u64, trials: u64, confidence: f64) -> (f64, f64) {
    check(failures, trials, confidence);
    if trials == 0 {
        return (0.0, 1.0);
    }
    let tail = (1.0 - confidence) / 2.0;
    let (k, n) = (failures, trials);
    let lo = if k == 0 {
        0.0
    } else if k == n {
        tail.powf(1.0 / n as f64)
    } else {
        beta_quantile(tail, k as f64, (n - k + 1) as f64)
    };
    let hi = upper(k, n, tail);
    (lo, hi)
}

/// One-sided exact upper confidence bound: the largest rate `p` such that
/// observing `failures` or fewer in `trials` still has probability at least
/// `1 - confidence`.
///
/// # Panics
/// If `failures > trials` or `confidence` is not in (0, 1).
pub fn clopper_pearson_upper(failures: u64, trials: u64, confidence: f64) -> f64 {
    check(failures, trials, confidence);
    if trials == 0 {
        return 1.0;
    }
    upper(failures, trials, 1.0 - confidence)
}

fn upper(k: u64, n: u64, tail: f64) -> f64 {
    if k == n {
        1.0
    } else if k == 0 {
        // 1 - tail^(1/n), computed without cancellation.
        -(tail.ln() / n as f64).exp_m1()
    } else {
        // Upper bound u solves P(X <= k | u) = tail, i.e. I_u(k+1, n-k) = 1 - tail,
        // equivalently I_{1-u}(n-k, k+1) = tail.
        1.0 - beta_quantile(tail, (n - k) as f64, (k + 1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    // Reference values: scipy 1.17 `scipy.stats.beta.ppf` / `binomtest(...).proportion_ci`
    // and the closed-form Wilson formula with z = norm.ppf(0.975).
    #[test]
    fn wilson_known_values() {
        let (lo, hi) = wilson_interval(3, 1200, 0.95);
        assert!(close(lo, 8.505_818_993_887_722e-4, 1e-9), "{lo}");
        assert!(close(hi, 7.324_463_700_332_478e-3, 1e-9), "{hi}");
        let (lo, hi) = wilson_interval(0, 100, 0.95);
        assert_eq!(lo, 0.0);
        assert!(close(hi, 3.699_349_820_698_568e-2, 1e-9), "{hi}");
        let (lo, hi) = wilson_interval(50, 100, 0.99);
        assert!(close(lo, 0.375_279_625_044_839_86, 1e-9), "{lo}");
        assert!(close(hi, 0.624_720_374_955_160_2, 1e-9), "{hi}");
        assert_eq!(wilson_interval(0, 0, 0.95), (0.0, 1.0));
    }

    #[test]
    fn clopper_pearson_known_values() {
        let (lo, hi) = clopper_pearson(0, 100, 0.95);
        assert_eq!(lo, 0.0);
        assert!(close(hi, 3.621_669_264_517_642e-2, 1e-10), "{hi}");
        let (lo, hi) = clopper_pearson(3, 1200, 0.95);
        assert!(close(lo, 5.158_571_322_382_293e-4, 1e-8), "{lo}");
        assert!(close(hi, 7.288_522_609_490_111e-3, 1e-8), "{hi}");
        let (lo, hi) = clopper_pearson(12, 1000, 0.95);
        assert!(close(lo, 6.215_525_559_595_245e-3, 1e-8), "{lo}");
        assert!(close(hi, 2.086_767_959_103_641e-2, 1e-8), "{hi}");
        let (lo, hi) = clopper_pearson(100, 100, 0.95);
        assert!(close(lo, 0.963_783_307_354_823_6, 1e-10), "{lo}");
        assert_eq!(hi, 1.0);
        // Large counts stay accurate.
        let (lo, hi) = clopper_pearson(5, 1_000_000, 0.95);
        assert!(close(lo, 1.623_488_319_241_170_7e-6, 1e-7), "{lo}");
        assert!(close(hi, 1.166_829_317_520_881_7e-5, 1e-7), "{hi}");
    }

    #[test]
    fn one_sided_upper_matches_rule_of_three() {
        // 0 failures in n: upper 95% bound ~ 3/n.
        let u = clopper_pearson_upper(0, 600, 0.95);
        assert!(close(u, 1.0 - 0.05f64.powf(1.0 / 600.0), 1e-12));
        assert!(u < 0.005 && clopper_pearson_upper(0, 597, 0.95) > 0.005);
    }
}
