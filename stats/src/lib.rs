//! Rare-event statistics for per-kernel regression verdicts.
//!
//! A buggy kernel makes the guest abort in a small fraction of
//! live-migration→cancel cycles (say 0.5%), so a verdict is a statement about
//! a Bernoulli failure rate estimated from counts like "3 of 1200". Every
//! method here was picked for *small counts of rare events*; normal
//! approximations are avoided wherever a decision depends on them.
//!
//! | need | method | why |
//! |---|---|---|
//! | interval shown in reports | [`clopper_pearson`] | exact inversion of the binomial test; never under-covers, sane at 0 failures |
//! | quick/narrower interval | [`wilson_interval`] | score interval, good average coverage, closed form; not used for decisions |
//! | candidate vs baseline | [`fisher_exact_one_sided`] | exact conditional test, valid at any count, conservative (false alarms ≤ alpha) |
//! | "is a clean run long enough?" | [`cycles_for_confidence`] | P(no failure in n \| rate p) = (1-p)^n; solve for n |
//! | single kernel vs known rate, continuous monitoring | [`Sprt`] | Wald's SPRT: fewest expected cycles for given error rates, valid under peeking |
//! | how many cycles next | [`extra_cycles`] | jump to the pass threshold when clean, else one batch, under a budget |
//! | does the whole procedure work? | [`simulate_sequential`] | Monte-Carlo over seeds with SplitMix64; pins power and false-regression rates |
//!
//! The verdict rules are in [`verdict`](mod@verdict). Special functions (lgamma,
//! incomplete beta, normal quantile) are implemented in [`special`] so the
//! crate depends on nothing but serde.
//!
//! All functions are pure: no I/O, no global state, deterministic.

pub mod fisher;
pub mod interval;
pub mod sequential;
pub mod simulate;
pub mod special;
pub mod verdict;

pub use fisher::fisher_exact_one_sided;
pub use interval::{clopper_pearson, clopper_pearson_upper, wilson_interval};
pub use sequential::{
    Sprt, SprtDecision, SprtParamError, cycles_for_confidence, extra_cycles, sprt_decide,
};
pub use simulate::{SimulationConfig, SimulationSummary, SplitMix64, simulate_sequential};
pub use verdict::{Evidence, Verdict, VerdictConfig, VerdictReport, classify, verdict};
