//! Turning two sets of cycle counts into a verdict.
//!
//! Decision order (first match wins):
//!
//! 1. **regression** — one-sided Fisher p-value that the candidate's failure
//!    rate exceeds the baseline's is below `alpha`.
//! 2. **fixed** — the baseline failed, the candidate did not fail at all, and
//!    the one-sided Fisher test says the candidate is better at `alpha`.
//!    (A candidate that is significantly better but still aborts is *not*
//!    fixed; it lands in still-failing with the improvement in the
//!    explanation.)
//! 3. **still-failing** — both arms have failures and the difference is not
//!    significant in the regression direction.
//! 4. **pass** — the candidate has 0 failures over at least
//!    `cycles_for_confidence(min_detectable_rate, power)` cycles, i.e. a bug
//!    aborting at `min_detectable_rate` per cycle would have shown up at least
//!    once with probability ≥ `power` (n ≥ ln(1-power)/ln(1-p)). The baseline
//!    may have failed a little without that being a significant improvement.
//! 5. **inconclusive** — everything else: too few clean cycles, or the
//!    candidate aborted while the baseline never did but not (yet)
//!    significantly so. The latter is deliberately *not* "pass": a kernel that
//!    aborted guests when the baseline never did must not be waved through;
//!    more cycles (see [`crate::extra_cycles`]) resolve it one way or the
//!    other.
//!
//! Why this shape: Fisher is exact for tiny counts and conservative (see
//! [`crate::fisher`]); the "pass" criterion is a power statement rather than a
//! significance statement, because "no failures seen" is only evidence of
//! absence once enough cycles ran. Intervals in the report are
//! Clopper-Pearson (exact, never under-covering), see [`crate::interval`].

use serde::{Deserialize, Serialize};

use crate::fisher::fisher_exact_one_sided;
use crate::interval::clopper_pearson;
use crate::sequential::cycles_for_confidence;

/// Cycle counts of one kernel (or one arm of a comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Evidence {
    /// Cycles in which the guest aborted (or the cycle otherwise failed).
    pub failed_cycles: u64,
    /// All completed cycles, failed or not.
    pub total_cycles: u64,
}

impl Evidence {
    pub const fn new(failed_cycles: u64, total_cycles: u64) -> Self {
        Self {
            failed_cycles,
            total_cycles,
        }
    }

    /// Observed failure rate (0 when there are no cycles).
    pub fn rate(&self) -> f64 {
        if self.total_cycles == 0 {
            0.0
        } else {
            self.failed_cycles as f64 / self.total_cycles as f64
        }
    }

    fn is_valid(&self) -> bool {
        self.failed_cycles <= self.total_cycles
    }
}

/// Knobs for [`verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerdictConfig {
    /// Significance level of the one-sided Fisher tests (false regression /
    /// false "fixed" rate per comparison).
    pub alpha: f64,
    /// Smallest per-cycle abort rate we promise to catch, e.g. 0.005.
    pub min_detectable_rate: f64,
    /// Probability with which a `min_detectable_rate` bug must have shown up
    /// before a clean candidate may pass, e.g. 0.95.
    pub power: f64,
    /// Two-sided confidence of the intervals shown in reports.
    pub ci_confidence: f64,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            min_detectable_rate: 0.005,
            power: 0.95,
            ci_confidence: 0.95,
        }
    }
}

impl VerdictConfig {
    /// Clean candidate cycles needed before [`Verdict::Pass`] is possible.
    pub fn required_clean_cycles(&self) -> u64 {
        cycles_for_confidence(self.min_detectable_rate, self.power)
    }

    fn is_valid(&self) -> bool {
        let unit = |x: f64| x > 0.0 && x < 1.0;
        unit(self.alpha)
            && unit(self.min_detectable_rate)
            && unit(self.power)
            && unit(self.ci_confidence)
    }
}

/// Outcome of comparing a candidate kernel against a baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Candidate significantly worse than baseline.
    Regression,
    /// Baseline failed; candidate clean and significantly better.
    Fixed,
    /// Both fail; no significant regression.
    #[serde(alias = "still_failing")]
    StillFailing,
    /// Candidate clean over enough cycles.
    Pass,
    /// Not enough evidence either way (yet).
    Inconclusive,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Regression,
        Verdict::Fixed,
        Verdict::StillFailing,
        Verdict::Pass,
        Verdict::Inconclusive,
    ];

    /// The serialized name ("still-failing", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Regression => "regression",
            Verdict::Fixed => "fixed",
            Verdict::StillFailing => "still-failing",
            Verdict::Pass => "pass",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// Whether more cycles could change the answer.
    pub fn is_final(self) -> bool {
        self != Verdict::Inconclusive
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "regression" => Ok(Verdict::Regression),
            "fixed" => Ok(Verdict::Fixed),
            "still-failing" | "still_failing" => Ok(Verdict::StillFailing),
            "pass" => Ok(Verdict::Pass),
            "inconclusive" => Ok(Verdict::Inconclusive),
            other => Err(format!("unknown verdict {other:?}")),
        }
    }
}

/// A verdict with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictReport {
    pub verdict: Verdict,
    /// One-sided Fisher p-value that the candidate fails *more* often than the
    /// baseline (the regression test).
    pub p_value: f64,
    /// One-sided Fisher p-value that the candidate fails *less* often (the
    /// "fixed" test).
    pub p_value_better: f64,
    pub candidate_rate: f64,
    /// Clopper-Pearson interval at `ci_confidence`.
    pub candidate_ci: (f64, f64),
    pub baseline_rate: f64,
    pub baseline_ci: (f64, f64),
    /// Clean candidate cycles needed for a pass (see [`VerdictConfig`]).
    pub required_clean_cycles: u64,
    /// One or two sentences for humans.
    pub explanation: String,
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p == 0.0 {
        "0%".into()
    } else if p >= 10.0 {
        format!("{p:.1}%")
    } else if p >= 0.1 {
        format!("{p:.2}%")
    } else {
        format!("{p:.3}%")
    }
}

fn pval(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn describe(name: &str, e: Evidence, ci: (f64, f64), conf: f64) -> String {
    format!(
        "{name} {}/{} ({}, {:.0}% CI {}–{})",
        e.failed_cycles,
        e.total_cycles,
        pct(e.rate()),
        conf * 100.0,
        pct(ci.0),
        pct(ci.1)
    )
}

fn p_values(b: Evidence, c: Evidence) -> (f64, f64) {
    (
        fisher_exact_one_sided(
            b.failed_cycles,
            b.total_cycles,
            c.failed_cycles,
            c.total_cycles,
        ),
        fisher_exact_one_sided(
            c.failed_cycles,
            c.total_cycles,
            b.failed_cycles,
            b.total_cycles,
        ),
    )
}

/// Just the [`Verdict`] of [`verdict`], without intervals or explanation
/// (cheap enough for simulations). Same decision rules, same handling of
/// invalid input.
pub fn classify(baseline: Evidence, candidate: Evidence, cfg: &VerdictConfig) -> Verdict {
    let (b, c) = (baseline, candidate);
    if !cfg.is_valid() || !b.is_valid() || !c.is_valid() || c.total_cycles == 0 {
        return Verdict::Inconclusive;
    }
    let (p_worse, p_better) = p_values(b, c);
    decide(b, c, p_worse, p_better, cfg)
}

fn decide(b: Evidence, c: Evidence, p_worse: f64, p_better: f64, cfg: &VerdictConfig) -> Verdict {
    if c.total_cycles == 0 {
        Verdict::Inconclusive
    } else if p_worse < cfg.alpha {
        Verdict::Regression
    } else if b.failed_cycles > 0 && c.failed_cycles == 0 && p_better < cfg.alpha {
        Verdict::Fixed
    } else if b.failed_cycles > 0 && c.failed_cycles > 0 {
        Verdict::StillFailing
    } else if c.failed_cycles == 0 && c.total_cycles >= cfg.required_clean_cycles() {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    }
}

/// Compare `candidate` against `baseline`. Never panics: invalid input
/// (failures > cycles, config values outside (0, 1)) yields an
/// `Inconclusive` report whose explanation says what is wrong.
pub fn verdict(baseline: Evidence, candidate: Evidence, cfg: &VerdictConfig) -> VerdictReport {
    let invalid = |why: String| VerdictReport {
        verdict: Verdict::Inconclusive,
        p_value: 1.0,
        p_value_better: 1.0,
        candidate_rate: candidate.rate(),
        candidate_ci: (0.0, 1.0),
        baseline_rate: baseline.rate(),
        baseline_ci: (0.0, 1.0),
        required_clean_cycles: 0,
        explanation: why,
    };
    if !cfg.is_valid() {
        return invalid(format!(
            "invalid verdict configuration {cfg:?}: all values must be in (0, 1)"
        ));
    }
    if !baseline.is_valid() || !candidate.is_valid() {
        return invalid(format!(
            "invalid evidence: failed cycles exceed total (baseline {baseline:?}, candidate {candidate:?})"
        ));
    }

    let (b, c) = (baseline, candidate);
    let (p_worse, p_better) = p_values(b, c);
    let conf = cfg.ci_confidence;
    let c_ci = clopper_pearson(c.failed_cycles, c.total_cycles, conf);
    let b_ci = clopper_pearson(b.failed_cycles, b.total_cycles, conf);
    let required = cfg.required_clean_cycles();
    let facts = format!(
        "{}; {}",
        describe("candidate", c, c_ci, conf),
        describe("baseline", b, b_ci, conf)
    );
    let alpha = cfg.alpha;

    let (v, why) = if c.total_cycles == 0 {
        (Verdict::Inconclusive, "no candidate cycles yet".to_string())
    } else if p_worse < alpha {
        (
            Verdict::Regression,
            format!(
                "candidate fails significantly more often than baseline (one-sided Fisher p = {} < {alpha})",
                pval(p_worse)
            ),
        )
    } else if b.failed_cycles > 0 && c.failed_cycles == 0 && p_better < alpha {
        (
            Verdict::Fixed,
            format!(
                "baseline failures are gone: candidate is clean and significantly better (one-sided Fisher p = {} < {alpha})",
                pval(p_better)
            ),
        )
    } else if b.failed_cycles > 0 && c.failed_cycles > 0 {
        let extra = if p_better < alpha {
            format!(
                "; the rate improved significantly (p = {}) but the candidate still aborts",
                pval(p_better)
            )
        } else {
            format!(
                "; no significant difference (regression p = {})",
                pval(p_worse)
            )
        };
        (Verdict::StillFailing, format!("both kernels fail{extra}"))
    } else if c.failed_cycles == 0 {
        if c.total_cycles >= required {
            (
                Verdict::Pass,
                format!(
                    "no candidate failures in {} cycles: a bug aborting {} of cycles would have shown up with probability ≥ {:.0}%",
                    c.total_cycles,
                    pct(cfg.min_detectable_rate),
                    cfg.power * 100.0
                ),
            )
        } else {
            (
                Verdict::Inconclusive,
                format!(
                    "no candidate failures yet, but {} more clean cycles are needed to rule out a {} per-cycle bug with {:.0}% probability",
                    required - c.total_cycles,
                    pct(cfg.min_detectable_rate),
                    cfg.power * 100.0
                ),
            )
        }
    } else if b.total_cycles == 0 {
        (
            Verdict::Inconclusive,
            "the candidate failed but there are no baseline cycles to compare against".to_string(),
        )
    } else {
        (
            Verdict::Inconclusive,
            format!(
                "the candidate failed and the baseline did not, but not significantly (one-sided Fisher p = {} ≥ {alpha}); run more cycles on both",
                pval(p_worse)
            ),
        )
    };

    debug_assert_eq!(v, decide(b, c, p_worse, p_better, cfg));
    VerdictReport {
        verdict: v,
        p_value: p_worse,
        p_value_better: p_better,
        candidate_rate: c.rate(),
        candidate_ci: c_ci,
        baseline_rate: b.rate(),
        baseline_ci: b_ci,
        required_clean_cycles: required,
        explanation: format!("{v}: {why}. {facts}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(b: (u64, u64), c: (u64, u64)) -> VerdictReport {
        verdict(
            Evidence::new(b.0, b.1),
            Evidence::new(c.0, c.1),
            &VerdictConfig::default(),
        )
    }

    #[test]
    fn known_answers() {
        let r = v((0, 200), (3, 200));
        assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.explanation);
        assert!((r.p_value - 0.124_06).abs() < 1e-4);

        let r = v((0, 1000), (12, 1000));
        assert_eq!(r.verdict, Verdict::Regression, "{}", r.explanation);
        assert!(r.p_value < 0.001);

        let r = v((10, 1000), (0, 1000));
        assert_eq!(r.verdict, Verdict::Fixed, "{}", r.explanation);
        assert!(r.p_value_better < 0.001);
    }

    #[test]
    fn pass_needs_enough_clean_cycles() {
        let cfg = VerdictConfig::default();
        assert_eq!(cfg.required_clean_cycles(), 598);
        assert_eq!(v((0, 200), (0, 200)).verdict, Verdict::Inconclusive);
        assert_eq!(v((0, 597), (0, 597)).verdict, Verdict::Inconclusive);
        assert_eq!(v((0, 598), (0, 598)).verdict, Verdict::Pass);
        // Baseline failing a bit, candidate clean but not significantly better: pass.
        assert_eq!(v((1, 1000), (0, 1000)).verdict, Verdict::Pass);
        // ... and with too few cycles: inconclusive.
        assert_eq!(v((1, 300), (0, 300)).verdict, Verdict::Inconclusive);
    }

    #[test]
    fn still_failing_and_unresolved() {
        assert_eq!(v((3, 1000), (4, 1000)).verdict, Verdict::StillFailing);
        // Improved a lot but still aborting: not "fixed".
        let r = v((100, 1000), (20, 1000));
        assert_eq!(r.verdict, Verdict::StillFailing);
        assert!(r.explanation.contains("improved"), "{}", r.explanation);
        // Candidate aborted, baseline never did, not significant: inconclusive, not pass.
        assert_eq!(v((0, 5000), (2, 5000)).verdict, Verdict::Inconclusive);
        // Significantly worse even though both fail.
        assert_eq!(v((2, 1000), (20, 1000)).verdict, Verdict::Regression);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        assert_eq!(v((0, 0), (0, 0)).verdict, Verdict::Inconclusive);
        assert_eq!(v((0, 0), (5, 100)).verdict, Verdict::Inconclusive);
        assert_eq!(v((0, 0), (0, 1000)).verdict, Verdict::Pass);
        let r = v((5, 3), (0, 10));
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.explanation.contains("invalid evidence"));
        let bad = VerdictConfig {
            alpha: 0.0,
            ..VerdictConfig::default()
        };
        assert_eq!(
            verdict(Evidence::new(0, 1), Evidence::new(0, 1), &bad).verdict,
            Verdict::Inconclusive
        );
    }

    #[test]
    fn serde_names() {
        let names: Vec<String> = Verdict::ALL
            .iter()
            .map(|v| serde_json::to_string(v).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "\"regression\"",
                "\"fixed\"",
                "\"still-failing\"",
                "\"pass\"",
                "\"inconclusive\""
            ]
        );
        let v: Verdict = serde_json::from_str("\"still_failing\"").unwrap();
        assert_eq!(v, Verdict::StillFailing);
        for v in Verdict::ALL {
            assert_eq!(v.as_str().parse::<Verdict>().unwrap(), v);
        }
        let r = verdict(
            Evidence::new(0, 1000),
            Evidence::new(12, 1000),
            &VerdictConfig::default(),
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["verdict"], "regression");
        let back: VerdictReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }
}
