//! Sequential tools: deciding when to stop running cycles.
//!
//! * [`Sprt`] is Wald's sequential probability ratio test for a single
//!   Bernoulli failure rate, H0: p ≤ p0 against H1: p ≥ p1. Among all tests
//!   with error rates (alpha, beta) it needs the fewest cycles on average at
//!   p0 and p1, and it can be evaluated after every cycle without inflating
//!   the error rates (the boundaries already account for continuous
//!   monitoring). Use it when one kernel is judged against a known rate (a
//!   floor such as 1e-4, or a long-run baseline rate) rather than against a
//!   concurrently-run baseline. The boundaries use Wald's approximations
//!   A = ln((1-beta)/alpha), B = ln(beta/(1-alpha)), which are slightly
//!   conservative.
//! * [`cycles_for_confidence`] answers "how many clean cycles make missing a
//!   rate-p bug unlikely": n ≥ ln(1-confidence)/ln(1-p). It is the exact
//!   zero-failure Clopper-Pearson bound solved for n, and is what the pass
//!   criterion of [`crate::verdict()`] uses.
//! * [`extra_cycles`] turns an inconclusive verdict into a number of cycles to
//!   schedule next, under a budget.

use serde::{Deserialize, Serialize};

use crate::verdict::{Evidence, VerdictReport};

/// Number of consecutive clean cycles after which a bug that aborts a cycle
/// with probability `p` would have shown up at least once with probability
/// ≥ `confidence`: the smallest n with (1-p)^n ≤ 1-confidence.
///
/// Returns 0 for `confidence <= 0`, 1 for `p >= 1`, and `u64::MAX` when no
/// finite number suffices (`p <= 0` or `confidence >= 1`).
pub fn cycles_for_confidence(p: f64, confidence: f64) -> u64 {
    if confidence.is_nan() || p.is_nan() {
        return u64::MAX;
    }
    if confidence <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return 1;
    }
    if p <= 0.0 || confidence >= 1.0 {
        return u64::MAX;
    }
    let ln_miss = (1.0 - confidence).ln();
    let ln_clean = (-p).ln_1p();
    let x = ln_miss / ln_clean;
    if x >= u64::MAX as f64 {
        return u64::MAX;
    }
    let mut n = x.ceil().max(1.0) as u64;
    // Guard against rounding when x is (nearly) an integer.
    if n > 1 && (n - 1) as f64 * ln_clean <= ln_miss {
        n -= 1;
    }
    n
}

/// How many more cycles (per arm) to schedule after `report`, given the
/// candidate's evidence so far, a batch size and a total per-arm budget.
///
/// Returns 0 when the verdict is final or the budget is spent. A clean
/// candidate jumps straight to the cycle count at which it could pass
/// (rounded up to whole batches); otherwise one batch is added. Never exceeds
/// the remaining budget.
pub fn extra_cycles(report: &VerdictReport, candidate: Evidence, batch: u64, budget: u64) -> u64 {
    if report.verdict.is_final() {
        return 0;
    }
    let remaining = budget.saturating_sub(candidate.total_cycles);
    if remaining == 0 {
        return 0;
    }
    let batch = batch.max(1);
    let want = if candidate.failed_cycles == 0 {
        report
            .required_clean_cycles
            .saturating_sub(candidate.total_cycles)
            .max(batch)
    } else {
        batch
    };
    let want = want.div_ceil(batch).saturating_mul(batch);
    want.min(remaining)
}

/// Outcome of one SPRT evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SprtDecision {
    /// Failure rate is at most `p0` (e.g. "clean").
    AcceptH0,
    /// Failure rate is at least `p1` (e.g. "buggy").
    AcceptH1,
    /// Keep running cycles.
    Continue,
}

/// Invalid SPRT parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SprtParamError(pub String);

impl std::fmt::Display for SprtParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid SPRT parameters: {}", self.0)
    }
}

impl std::error::Error for SprtParamError {}

/// Wald's SPRT for a Bernoulli failure rate, H0: p ≤ p0 vs H1: p ≥ p1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sprt {
    pub p0: f64,
    pub p1: f64,
    /// Probability of accepting H1 when p = p0.
    pub alpha: f64,
    /// Probability of accepting H0 when p = p1.
    pub beta: f64,
}

impl Sprt {
    /// Requires `0 <= p0 < p1 < 1` and `alpha, beta` in (0, 1) with
    /// `alpha + beta < 1`. `p0 = 0` is allowed: then a single failure accepts
    /// H1 (the likelihood under H0 is zero).
    pub fn new(p0: f64, p1: f64, alpha: f64, beta: f64) -> Result<Self, SprtParamError> {
        if !(p0 >= 0.0 && p0 < p1 && p1 < 1.0) {
            return Err(SprtParamError(format!(
                "need 0 <= p0 < p1 < 1, got p0={p0}, p1={p1}"
            )));
        }
        if !(alpha > 0.0 && beta > 0.0 && alpha + beta < 1.0) {
            return Err(SprtParamError(format!(
                "need alpha, beta > 0 and alpha + beta < 1, got {alpha}, {beta}"
            )));
        }
        Ok(Self {
            p0,
            p1,
            alpha,
            beta,
        })
    }

    /// (lower, upper) log-likelihood-ratio boundaries: accept H0 at or below
    /// `lower`, accept H1 at or above `upper`.
    pub fn bounds(&self) -> (f64, f64) {
        (
            (self.beta / (1.0 - self.alpha)).ln(),
            ((1.0 - self.beta) / self.alpha).ln(),
        )
    }

    /// ln L(p1)/L(p0) after `failures` in `trials`.
    pub fn log_likelihood_ratio(&self, failures: u64, trials: u64) -> f64 {
        let clean = trials.saturating_sub(failures) as f64;
        let clean_term = clean * ((-self.p1).ln_1p() - (-self.p0).ln_1p());
        if failures == 0 {
            return clean_term;
        }
        if self.p0 == 0.0 {
            return f64::INFINITY;
        }
        failures as f64 * (self.p1 / self.p0).ln() + clean_term
    }

    pub fn decide(&self, failures: u64, trials: u64) -> SprtDecision {
        let llr = self.log_likelihood_ratio(failures, trials);
        let (lo, hi) = self.bounds();
        if llr >= hi {
            SprtDecision::AcceptH1
        } else if llr <= lo {
            SprtDecision::AcceptH0
        } else {
            SprtDecision::Continue
        }
    }

    /// Clean cycles (no failures at all) after which H0 is accepted.
    pub fn clean_cycles_to_accept_h0(&self) -> u64 {
        let (lo, _) = self.bounds();
        let per_cycle = (-self.p1).ln_1p() - (-self.p0).ln_1p(); // < 0
        (lo / per_cycle).ceil() as u64
    }
}

/// One-shot [`Sprt::decide`].
///
/// # Panics
/// On invalid parameters (see [`Sprt::new`]).
pub fn sprt_decide(
    failures: u64,
    trials: u64,
    p0: f64,
    p1: f64,
    alpha: f64,
    beta: f64,
) -> SprtDecision {
    match Sprt::new(p0, p1, alpha, beta) {
        Ok(s) => s.decide(failures, trials),
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Verdict, VerdictConfig, verdict};

    #[test]
    fn cycles_for_confidence_values() {
        // ln(0.05)/ln(0.995) = 597.6
        assert_eq!(cycles_for_confidence(0.005, 0.95), 598);
        // ln(0.01)/ln(0.999) = 4602.9
        assert_eq!(cycles_for_confidence(0.001, 0.99), 4603);
        // Exact integer case: 0.5^2 = 0.25.
        assert_eq!(cycles_for_confidence(0.5, 0.75), 2);
        assert_eq!(cycles_for_confidence(0.01, 0.0), 0);
        assert_eq!(cycles_for_confidence(1.0, 0.99), 1);
        assert_eq!(cycles_for_confidence(0.0, 0.95), u64::MAX);
        assert_eq!(cycles_for_confidence(0.01, 1.0), u64::MAX);
        for &(p, c) in &[(0.005, 0.95), (0.001, 0.99), (0.02, 0.9), (1e-5, 0.95)] {
            let n = cycles_for_confidence(p, c);
            assert!((1.0 - p).powf(n as f64) <= 1.0 - c);
            assert!((1.0 - p).powf((n - 1) as f64) > 1.0 - c);
        }
    }

    #[test]
    fn sprt_boundaries() {
        let s = Sprt::new(0.0005, 0.005, 0.05, 0.05).unwrap();
        let (lo, hi) = s.bounds();
        assert!((hi - 19f64.ln()).abs() < 1e-12 && (lo + 19f64.ln()).abs() < 1e-12);
        // Each failure adds ln 10 = 2.30; each clean cycle subtracts ~0.00451.
        assert_eq!(s.decide(1, 1), SprtDecision::Continue);
        assert_eq!(s.decide(2, 2), SprtDecision::AcceptH1);
        assert_eq!(s.decide(2, 400), SprtDecision::Continue);
        let n0 = s.clean_cycles_to_accept_h0();
        assert_eq!(n0, 653); // ln 19 / (ln(0.9995) - ln(0.995)) = 652.5
        assert_eq!(s.decide(0, n0 - 1), SprtDecision::Continue);
        assert_eq!(s.decide(0, n0), SprtDecision::AcceptH0);
        assert_eq!(
            sprt_decide(6, 1000, 0.0005, 0.005, 0.05, 0.05),
            SprtDecision::AcceptH1
        );
        assert_eq!(
            sprt_decide(1, 1500, 0.0005, 0.005, 0.05, 0.05),
            SprtDecision::AcceptH0
        );
        // p0 = 0: any failure proves H1.
        assert_eq!(
            sprt_decide(1, 10_000, 0.0, 0.005, 0.05, 0.05),
            SprtDecision::AcceptH1
        );
        assert!(Sprt::new(0.01, 0.005, 0.05, 0.05).is_err());
        assert!(Sprt::new(0.001, 0.005, 0.6, 0.5).is_err());
    }

    #[test]
    fn extra_cycles_plan() {
        let cfg = VerdictConfig::default();
        let c = Evidence::new(0, 200);
        let r = verdict(Evidence::new(0, 200), c, &cfg);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert_eq!(extra_cycles(&r, c, 200, 5000), 400); // 598 - 200 -> 2 batches
        assert_eq!(extra_cycles(&r, c, 200, 300), 100); // budget cap
        let c = Evidence::new(3, 200);
        let r = verdict(Evidence::new(0, 200), c, &cfg);
        assert_eq!(extra_cycles(&r, c, 200, 5000), 200);
        assert_eq!(extra_cycles(&r, c, 200, 200), 0);
        let c = Evidence::new(12, 1000);
        let r = verdict(Evidence::new(0, 1000), c, &cfg);
        assert_eq!(extra_cycles(&r, c, 200, 5000), 0); // final
    }
}
