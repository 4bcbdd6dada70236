//! Monte-Carlo check of the whole sequential procedure.
//!
//! The verdict rules are applied repeatedly as cycles accumulate ("peeking"),
//! which in general inflates false-alarm rates above `alpha`. Rather than
//! argue about it analytically, [`simulate_sequential`] runs the procedure on
//! synthetic boards with known per-cycle abort rates and reports how often
//! each verdict comes out and how many cycles it cost. The crate's
//! integration tests use it to pin down power and false-regression rates; the
//! server may reuse it (e.g. to show what a budget buys).
//!
//! The PRNG is SplitMix64: tiny, fast, statistically fine for this purpose and
//! fully reproducible from a `u64` seed, with no dependency.

use serde::{Deserialize, Serialize};

use crate::sequential::extra_cycles;
use crate::verdict::{Evidence, Verdict, VerdictConfig, classify, verdict};

/// SplitMix64 pseudo-random generator (Steele, Lea & Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

/// Parameters of [`simulate_sequential`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SimulationConfig {
    /// True per-cycle abort probability of the baseline kernel.
    pub baseline_rate: f64,
    /// True per-cycle abort probability of the candidate kernel.
    pub candidate_rate: f64,
    /// Cycles run on each arm before the first verdict.
    pub initial_cycles: u64,
    /// Cycles added to each arm per round while inconclusive.
    pub batch_cycles: u64,
    /// Maximum cycles per arm; an inconclusive verdict at the budget is final.
    pub budget_cycles: u64,
    /// Number of independent repetitions (seeds `first_seed..first_seed+seeds`).
    pub seeds: u64,
    pub first_seed: u64,
    /// If true, the round size comes from [`extra_cycles`] (clean candidates
    /// jump to the pass threshold); otherwise it is always `batch_cycles`.
    pub use_planner: bool,
    pub verdict: VerdictConfig,
}

impl Default for SimulationConfig {
    fn default() -> Self {
        Self {
            baseline_rate: 0.0,
            candidate_rate: 0.0,
            initial_cycles: 200,
            batch_cycles: 200,
            budget_cycles: 5000,
            seeds: 200,
            first_seed: 1,
            use_planner: false,
            verdict: VerdictConfig::default(),
        }
    }
}

/// Verdict frequencies and cost of a simulation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimulationSummary {
    pub runs: u64,
    pub regression: u64,
    pub fixed: u64,
    pub still_failing: u64,
    pub pass: u64,
    pub inconclusive: u64,
    /// Mean cycles run per arm (the total across both arms is twice this).
    pub mean_cycles_per_arm: f64,
    pub max_cycles_per_arm: u64,
}

impl SimulationSummary {
    pub fn count(&self, v: Verdict) -> u64 {
        match v {
            Verdict::Regression => self.regression,
            Verdict::Fixed => self.fixed,
            Verdict::StillFailing => self.still_failing,
            Verdict::Pass => self.pass,
            Verdict::Inconclusive => self.inconclusive,
        }
    }

    /// Fraction of runs that ended in `v`.
    pub fn rate(&self, v: Verdict) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.count(v) as f64 / self.runs as f64
        }
    }

    fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Regression => self.regression += 1,
            Verdict::Fixed => self.fixed += 1,
            Verdict::StillFailing => self.still_failing += 1,
            Verdict::Pass => self.pass += 1,
            Verdict::Inconclusive => self.inconclusive += 1,
        }
    }
}

impl std::fmt::Display for SimulationSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} runs:", self.runs)?;
        for v in Verdict::ALL {
            write!(f, " {v} {:.1}%", self.rate(v) * 100.0)?;
        }
        write!(
            f,
            "; cycles/arm mean {:.0}, max {}",
            self.mean_cycles_per_arm, self.max_cycles_per_arm
        )
    }
}

/// Run one sequential comparison with the given generator; returns the final
/// verdict and the cycles run per arm.
pub fn run_sequential_once(cfg: &SimulationConfig, rng: &mut SplitMix64) -> (Verdict, u64) {
    let mut base = Evidence::default();
    let mut cand = Evidence::default();
    let mut step = cfg.initial_cycles.min(cfg.budget_cycles).max(1);
    loop {
        for _ in 0..step {
            base.total_cycles += 1;
            base.failed_cycles += rng.bernoulli(cfg.baseline_rate) as u64;
            cand.total_cycles += 1;
            cand.failed_cycles += rng.bernoulli(cfg.candidate_rate) as u64;
        }
        let v = classify(base, cand, &cfg.verdict);
        if v.is_final() || cand.total_cycles >= cfg.budget_cycles {
            return (v, cand.total_cycles);
        }
        step = if cfg.use_planner {
            let report = verdict(base, cand, &cfg.verdict);
            extra_cycles(&report, cand, cfg.batch_cycles, cfg.budget_cycles)
        } else {
            cfg.batch_cycles
                .max(1)
                .min(cfg.budget_cycles - cand.total_cycles)
        };
        if step == 0 {
            return (v, cand.total_cycles);
        }
    }
}

/// Repeat [`run_sequential_once`] over `cfg.seeds` seeds and tally.
pub fn simulate_sequential(cfg: &SimulationConfig) -> SimulationSummary {
    let mut s = SimulationSummary::default();
    let mut cycles = 0u128;
    for i in 0..cfg.seeds {
        let mut rng = SplitMix64::new(cfg.first_seed.wrapping_add(i));
        let (v, n) = run_sequential_once(cfg, &mut rng);
        s.runs += 1;
        s.add(v);
        cycles += n as u128;
        s.max_cycles_per_arm = s.max_cycles_per_arm.max(n);
    }
    if s.runs > 0 {
        s.mean_cycles_per_arm = cycles as f64 / s.runs as f64;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_and_uniformity() {
        // Reference output of SplitMix64 seeded with 0.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(42);
        let n = 1_000_000;
        let hits = (0..n).filter(|_| r.bernoulli(0.005)).count();
        // Binomial sd = sqrt(n p (1-p)) ~ 70.5; allow 5 sd.
        assert!((hits as f64 - 5000.0).abs() < 353.0, "{hits}");
    }

    #[test]
    fn reproducible() {
        let cfg = SimulationConfig {
            candidate_rate: 0.005,
            seeds: 20,
            ..Default::default()
        };
        assert_eq!(simulate_sequential(&cfg), simulate_sequential(&cfg));
    }
}
