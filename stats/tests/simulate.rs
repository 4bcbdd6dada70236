//! End-to-end Monte-Carlo checks of the sequential verdict procedure:
//! start with 200 cycles per arm, add 200 per arm while inconclusive, stop at
//! 5000 per arm. Run with `--nocapture` to see the rates.

use armfleet_stats::{
    SimulationConfig, SimulationSummary, SplitMix64, Sprt, SprtDecision, Verdict,
    simulate_sequential,
};

const SEEDS: u64 = 1000;
const ALPHA: f64 = 0.05;

fn run(
    name: &str,
    baseline_rate: f64,
    candidate_rate: f64,
    use_planner: bool,
) -> SimulationSummary {
    let cfg = SimulationConfig {
        baseline_rate,
        candidate_rate,
        seeds: SEEDS,
        first_seed: 0x0A4F_1EE7,
        use_planner,
        ..SimulationConfig::default()
    };
    let s = simulate_sequential(&cfg);
    println!(
        "{name:<42} base {:>5.2}% cand {:>5.2}% planner={use_planner:<5} {s} (both arms: {:.0} cycles)",
        baseline_rate * 100.0,
        candidate_rate * 100.0,
        2.0 * s.mean_cycles_per_arm
    );
    s
}

#[test]
fn buggy_candidate_is_caught() {
    for planner in [false, true] {
        let s = run("buggy candidate (0.5%/cycle) vs clean", 0.0, 0.005, planner);
        assert!(s.rate(Verdict::Regression) >= 0.90, "power too low: {s}");
    }
}

#[test]
fn clean_candidate_is_not_called_regression() {
    for planner in [false, true] {
        let s = run("clean vs clean", 0.0, 0.0, planner);
        assert_eq!(s.regression, 0, "{s}");
        assert_eq!(s.rate(Verdict::Pass), 1.0, "{s}");
    }
}

#[test]
fn board_noise_is_not_called_regression() {
    for planner in [false, true] {
        for rate in [0.0005, 0.002, 0.005, 0.01] {
            let s = run("equal noise on both arms", rate, rate, planner);
            assert!(
                s.rate(Verdict::Regression) < ALPHA,
                "false regression rate too high: {s}"
            );
        }
    }
}

#[test]
fn fix_is_recognised() {
    let s = run("fix: 1% baseline vs clean candidate", 0.01, 0.0, false);
    assert!(
        s.rate(Verdict::Fixed) + s.rate(Verdict::Pass) >= 0.95,
        "{s}"
    );
    assert_eq!(s.regression, 0, "{s}");
}

/// Operating characteristic of the SPRT used for single-kernel monitoring.
#[test]
fn sprt_error_rates() {
    let sprt = Sprt::new(0.0005, 0.005, 0.05, 0.05).unwrap();
    let trial = |p: f64, seed: u64| {
        let mut rng = SplitMix64::new(seed);
        let (mut f, mut n) = (0u64, 0u64);
        loop {
            n += 1;
            f += rng.bernoulli(p) as u64;
            match sprt.decide(f, n) {
                SprtDecision::Continue if n < 200_000 => continue,
                d => return (d, n),
            }
        }
    };
    for (p, want_h1) in [(0.0, false), (0.0005, false), (0.005, true), (0.01, true)] {
        let mut wrong = 0;
        let mut cycles = 0;
        for seed in 0..SEEDS {
            let (d, n) = trial(p, seed);
            cycles += n;
            if (d == SprtDecision::AcceptH1) != want_h1 {
                wrong += 1;
            }
        }
        let err = wrong as f64 / SEEDS as f64;
        println!(
            "SPRT p0=0.05% p1=0.5%: true p {:>5.2}% wrong decision {:.1}%, mean cycles {:.0}",
            p * 100.0,
            err * 100.0,
            cycles as f64 / SEEDS as f64
        );
        assert!(err <= 0.06, "SPRT error rate {err} at p={p}");
    }
}
