//! Real-QEMU tests of the migrate→cancel executor (TCG: this machine has
//! no hardware KVM). They need `qemu-system-aarch64`/`qemu-system-x86_64`
//! and the guests from `agent/guest/build.sh`; see `common` for the
//! skip/require policy (`ARMFLEET_REQUIRE_QEMU=1` turns skips into failures).

// The serial() guard is a std Mutex held across awaits on purpose: it
// serialises whole tests (each on its own runtime), not tasks.
#![allow(clippy::await_holding_lock)]

mod common;

use std::time::{Duration, Instant};

use armfleet_migrate_stress::StressEnv;
use armfleet_protocol::JobResult;
use common::*;
use tokio_util::sync::CancellationToken;

fn assert_all_cancelled_and_alive(c: &Collected, n: usize) {
    assert_eq!(c.cycles.len(), n, "{}", c.dump());
    for (i, r) in c.cycles.iter().enumerate() {
        assert_eq!(r.cycle as usize, i + 1);
        assert_eq!(r.action, "cancel");
        assert_eq!(r.final_state, "cancelled", "cycle {}: {r:?}", r.cycle);
        assert_eq!(r.state_reached, "active", "cycle {}: {r:?}", r.cycle);
        assert!(r.guest_alive, "cycle {}: {r:?}", r.cycle);
        assert!(r.guest_progress_ms.is_some());
        assert!(r.cancel_to_cancelled_ms.is_some());
        assert!(r.bytes_transferred > 0, "cycle {}: {r:?}", r.cycle);
        assert!(r.wall_ms >= r.delay_ms as f64);
    }
}

fn assert_logs(c: &Collected) {
    assert!(
        c.console.contains("ARMFLEET-GUEST-READY"),
        "no boot marker: {}",
        c.dump()
    );
    assert!(c.console.contains("ARMFLEET-DIRTY-READY"));
    assert!(c.console.matches("ARMFLEET-HB ").count() > 20);
    assert!(c.qmp.contains("\"execute\":\"migrate_cancel\""));
    assert!(c.qmp.contains("\"execute\":\"migrate-incoming\""));
    assert!(c.qmp.contains("<- {\"QMP\""), "greeting in transcript");
    assert!(c.qmp.contains("\"status\": \"cancelled\""));
    assert!(c.agent.contains("does NOT exercise KVM") || c.agent.contains("TCG"));
    assert!(c.max_chunk <= 64 * 1024);
    // Host dmesg window: either records or an explicit note why not.
    assert!(
        c.agent.contains("host dmesg window opened")
            || c.agent.contains("host dmesg window unavailable"),
        "{}",
        c.agent
    );
}

fn assert_no_leftovers(env: &StressEnv) {
    let needle = env.work_dir.display().to_string();
    let left = procs_mentioning(&needle);
    assert!(left.is_empty(), "QEMU processes left: {left:?}");
    assert!(
        dir_is_empty(&env.work_dir),
        "scratch left in {}",
        env.work_dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm64_tcg_20_cycles() {
    let _s = serial();
    let Some(env) = env_for("arm64", "arm64-20") else {
        return;
    };
    let params = tcg_params("arm64", 20);
    // A line in the host kernel log while the job runs must show up in the
    // job's host_dmesg window (root can write /dev/kmsg).
    let marker = format!("armfleet-ms-test-window-{}", std::process::id());
    let needle = env.work_dir.display().to_string();
    let m2 = marker.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..600 {
            if procs_mentioning(&needle)
                .iter()
                .any(|(_, c)| c.contains("-incoming"))
            {
                return std::fs::write("/dev/kmsg", format!("{m2}\n")).is_ok();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    let t0 = Instant::now();
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    if writer.await.unwrap() {
        assert_eq!(
            c.dmesg.matches(&marker).count(),
            1,
            "host_dmesg window: {}",
            c.dmesg
        );
        assert!(
            c.dmesg
                .lines()
                .any(|l| l.starts_with('#') && l.contains(&marker))
        );
    } else {
        eprintln!("note: /dev/kmsg not writable; host_dmesg content not checked");
    }
    eprintln!(
        "arm64 TCG 20 cycles: {:?} in {:.1} s",
        r,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        r,
        JobResult::Passed {
            cycles_completed: 20
        },
        "{}",
        c.dump()
    );
    assert_all_cancelled_and_alive(&c, 20);
    assert_logs(&c);
    // Reproducible delays from the seed, within bounds, not all equal.
    let delays: Vec<u64> = c.cycles.iter().map(|r| r.delay_ms).collect();
    assert!(delays.iter().all(|d| (200..=400).contains(d)));
    assert!(delays.iter().any(|d| *d != delays[0]));
    assert_no_leftovers(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm64_tcg_hugepages() {
    let _s = serial();
    let Some(env) = env_for("arm64", "arm64-huge") else {
        return;
    };
    if !is_root() {
        skip_or_fail("hugepage test needs root to reserve /proc/sys/vm/nr_hugepages");
        return;
    }
    let mut params = tcg_params("arm64", 8);
    params.memory_mib = 192;
    params.hugepages = true;
    // source + destination: 2 × 96 pages
    let _g = HugepageGuard::reserve(2 * 96 + 16).expect("reserve hugepages");
    let before = armfleet_migrate_stress::probe::free_2m_hugepages();
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    assert_eq!(
        r,
        JobResult::Passed {
            cycles_completed: 8
        },
        "{}",
        c.dump()
    );
    assert_all_cancelled_and_alive(&c, 8);
    assert_logs(&c);
    assert!(c.agent.contains("hugetlb 2M"), "{}", c.agent);
    assert_no_leftovers(&env);
    // every hugepage came back (memfd: no files left)
    let after = armfleet_migrate_stress::probe::free_2m_hugepages();
    assert_eq!(before, after, "hugepages leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hugepages_missing_is_infra_error() {
    let Some(env) = env_for("arm64", "huge-missing") else {
        return;
    };
    let mut params = tcg_params("arm64", 1);
    params.hugepages = true;
    params.memory_mib = 1 << 20; // 1 TiB: never enough
    let (r, _c) = run_job(&env, &params, CancellationToken::new()).await;
    match r {
        JobResult::InfraError { reason, .. } => assert!(reason.contains("hugepages"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x86_64_tcg_few_cycles() {
    let _s = serial();
    let Some(env) = env_for("x86_64", "x86-3") else {
        return;
    };
    let params = tcg_params("x86_64", 3);
    let t0 = Instant::now();
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    eprintln!(
        "x86_64 TCG 3 cycles: {:?} in {:.1} s",
        r,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        r,
        JobResult::Passed {
            cycles_completed: 3
        },
        "{}",
        c.dump()
    );
    assert_all_cancelled_and_alive(&c, 3);
    assert!(c.console.contains("arch=x86_64"));
    assert_no_leftovers(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_guest_panic_fails_the_right_cycle() {
    let _s = serial();
    let Some(env) = env_for("arm64", "panic") else {
        return;
    };
    let mut params = tcg_params("arm64", 6);
    params.inject_guest_panic_after = Some(2);
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    eprintln!(
        "panic job result: {r:#?}\ninterrupted cycle: {:#?}",
        c.cycles.last()
    );
    eprintln!("console tail:\n{}", tail(&c.console, 30));
    match &r {
        JobResult::Failed {
            cycles_completed,
            failed_cycle,
            reason,
            evidence,
        } => {
            assert_eq!(*cycles_completed, 2, "{}", c.dump());
            assert_eq!(*failed_cycle, Some(3));
            assert!(reason.contains("Kernel panic"), "{reason}");
            assert!(
                evidence
                    .iter()
                    .any(|l| l.contains("Kernel panic - not syncing: sysrq triggered crash")),
                "{evidence:#?}"
            );
            // the grace period captured the trace after the panic line
            assert!(
                evidence.iter().any(|l| l.contains("sysrq")),
                "{evidence:#?}"
            );
        }
        other => panic!("expected Failed, got {other:?}\n{}", c.dump()),
    }
    // cycles 1, 2 complete; cycle 3 reported as interrupted
    assert_eq!(c.cycles.len(), 3, "{}", c.dump());
    assert!(c.cycles[..2].iter().all(|r| r.guest_alive));
    assert!(!c.cycles[2].guest_alive);
    assert!(
        c.cycles[2]
            .events
            .iter()
            .any(|e| e.contains("ARMFLEET-PANIC"))
    );
    assert_no_leftovers(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_qemu_is_infra_error_naming_the_binary() {
    let mut env = StressEnv::new(StressEnv::default_guest_dir(), work_dir("noqemu"));
    env.qemu_binary = Some("/nonexistent/bin/qemu-system-aarch64".into());
    let (r, c) = run_job(&env, &tcg_params("arm64", 1), CancellationToken::new()).await;
    match r {
        JobResult::InfraError {
            cycles_completed: 0,
            reason,
        } => {
            assert!(
                reason.contains("/nonexistent/bin/qemu-system-aarch64"),
                "{reason}"
            )
        }
        other => panic!("{other:?}\n{}", c.agent),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_guest_is_infra_error() {
    let Some(mut env) = env_for("arm64", "noguest") else {
        return;
    };
    env.guest_dir = "/nonexistent/guest".into();
    let (r, _) = run_job(&env, &tcg_params("arm64", 1), CancellationToken::new()).await;
    match r {
        JobResult::InfraError { reason, .. } => assert!(reason.contains("build.sh"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvm_without_hardware_kvm_is_infra_error() {
    let probe = armfleet_migrate_stress::probe_host();
    let host_arch = if std::env::consts::ARCH == "aarch64" {
        "arm64"
    } else {
        "x86_64"
    };
    if probe.kvm.hardware {
        eprintln!("SKIPPED (not passing): this host has hardware KVM; nothing to refuse");
        return;
    }
    let Some(env) = env_for(host_arch, "nokvm") else {
        return;
    };
    let mut params = tcg_params(host_arch, 1);
    params.accel = "kvm".into();
    let (r, _) = run_job(&env, &params, CancellationToken::new()).await;
    match r {
        JobResult::InfraError { reason, .. } => assert!(reason.contains("kvm"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_killed_mid_migration_is_recorded() {
    let _s = serial();
    let Some(env) = env_for("arm64", "dstkill") else {
        return;
    };
    let mut params = tcg_params("arm64", 3);
    params.cancel_delay_ms_min = 1500;
    params.cancel_delay_ms_max = 1500;
    // Kill the first destination 600 ms after it appears (mid-hold).
    let needle = env.work_dir.display().to_string();
    let killer = tokio::spawn(async move {
        let mut first_seen: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let dests: Vec<_> = procs_mentioning(&needle)
                .into_iter()
                .filter(|(_, c)| c.contains("qemu-system") && c.contains("-incoming"))
                .collect();
            if let Some((pid, _)) = dests.first() {
                let t = *first_seen.get_or_insert_with(Instant::now);
                if t.elapsed() >= Duration::from_millis(600) {
                    unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                    return Some(*pid);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    });
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    let killed = killer.await.unwrap();
    eprintln!("destination-kill cycle: {:#?}", c.cycles.first());
    assert!(killed.is_some(), "never saw a destination");
    assert_eq!(
        r,
        JobResult::Passed {
            cycles_completed: 3
        },
        "{}",
        c.dump()
    );
    assert_eq!(c.cycles.len(), 3);
    let first = &c.cycles[0];
    assert_eq!(first.final_state, "failed", "{first:?}");
    assert!(
        first
            .events
            .iter()
            .any(|e| e.contains("exited during the migration") && e.contains("signal 9")),
        "{first:?}"
    );
    assert!(first.guest_alive);
    for r in &c.cycles[1..] {
        assert_eq!(r.final_state, "cancelled", "{r:?}");
        assert!(r.guest_alive);
    }
    assert_no_leftovers(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_kills_everything() {
    let _s = serial();
    let Some(env) = env_for("arm64", "cancel") else {
        return;
    };
    let params = tcg_params("arm64", 1000);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let needle = env.work_dir.display().to_string();
    // Cancel once two QEMUs (source + destination) are up, i.e. mid-cycle.
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let q: Vec<_> = procs_mentioning(&needle)
                .into_iter()
                .filter(|(_, c)| c.contains("qemu-system"))
                .collect();
            if q.len() >= 2 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                c2.cancel();
                return q.len();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c2.cancel();
        0
    });
    let t0 = Instant::now();
    let (r, c) = run_job(&env, &params, cancel).await;
    let seen = watcher.await.unwrap();
    assert!(seen >= 2, "never saw source + destination");
    assert!(
        matches!(r, JobResult::Cancelled { .. }),
        "{r:?}\n{}",
        c.dump()
    );
    assert!(t0.elapsed() < Duration::from_secs(120));
    assert_no_leftovers(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_every_ping_pongs() {
    let _s = serial();
    let Some(env) = env_for("arm64", "pingpong") else {
        return;
    };
    let mut params = tcg_params("arm64", 4);
    params.complete_every = 2;
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    assert_eq!(
        r,
        JobResult::Passed {
            cycles_completed: 4
        },
        "{}",
        c.dump()
    );
    let actions: Vec<_> = c
        .cycles
        .iter()
        .map(|r| (r.action.as_str(), r.final_state.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("cancel", "cancelled"),
            ("pingpong", "completed"),
            ("cancel", "cancelled"),
            ("pingpong", "completed")
        ],
        "{}",
        c.dump()
    );
    assert!(c.cycles.iter().all(|r| r.guest_alive));
    assert_no_leftovers(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_source_after_cancel_is_resumed() {
    let _s = serial();
    let Some(mut env) = env_for("arm64", "trap2") else {
        return;
    };
    env.fault_hooks.pause_source_before_cancel = vec![2];
    let params = tcg_params("arm64", 3);
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    assert_eq!(
        r,
        JobResult::Passed {
            cycles_completed: 3
        },
        "{}",
        c.dump()
    );
    let resumed: Vec<bool> = c.cycles.iter().map(|r| r.resumed_paused_source).collect();
    assert_eq!(resumed, vec![false, true, false], "{}", c.dump());
    assert!(
        c.cycles
            .iter()
            .all(|r| r.guest_alive && r.final_state == "cancelled")
    );
    assert!(c.qmp.contains("\"execute\":\"cont\""));
    assert_no_leftovers(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x86_64_guest_panic_raises_guest_panicked() {
    let _s = serial();
    let Some(env) = env_for("x86_64", "x86-panic") else {
        return;
    };
    let mut params = tcg_params("x86_64", 3);
    params.inject_guest_panic_after = Some(1);
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    eprintln!("x86 panic: {r:#?}");
    match &r {
        JobResult::Failed {
            cycles_completed: 1,
            failed_cycle: Some(2),
            evidence,
            ..
        } => {
            assert!(
                evidence.iter().any(|l| l.contains("Kernel panic")),
                "{evidence:#?}"
            );
        }
        other => panic!("{other:?}\n{}", c.dump()),
    }
    // Debian's amd64 kernel has the pvpanic driver (the guest loads it).
    assert!(c.qmp.contains("GUEST_PANICKED"), "{}", tail(&c.qmp, 30));
    assert_no_leftovers(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_dmesg_finding_fails_the_job() {
    let _s = serial();
    let Some(mut env) = env_for("arm64", "dmesg-fatal") else {
        return;
    };
    if std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .is_err()
    {
        skip_or_fail("cannot write /dev/kmsg (needs root)");
        return;
    }
    // A benign marker stands in for a host oops (no fake oops in a shared
    // host's log): a detector that flags it on the host_dmesg stream.
    let marker = format!("armfleet-ms-test-hostfault-{}", std::process::id());
    let m = marker.clone();
    let base = armfleet_migrate_stress::default_fatal_detector();
    env.fatal_detector = std::sync::Arc::new(move |stream, line: &str| {
        if stream == armfleet_protocol::LogStream::HostDmesg && line.contains(&m) {
            Some("host_dmesg: test fault marker".into())
        } else {
            base(stream, line)
        }
    });
    let needle = env.work_dir.display().to_string();
    let m2 = marker.clone();
    tokio::spawn(async move {
        for _ in 0..600 {
            if procs_mentioning(&needle)
                .iter()
                .any(|(_, c)| c.contains("-incoming"))
            {
                let _ = std::fs::write("/dev/kmsg", format!("{m2}\n"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (r, c) = run_job(&env, &tcg_params("arm64", 30), CancellationToken::new()).await;
    match &r {
        JobResult::Failed {
            failed_cycle: Some(n),
            reason,
            evidence,
            ..
        } => {
            assert!(*n >= 1);
            assert!(reason.contains("test fault marker"), "{reason}");
            assert!(evidence.iter().any(|l| l.contains(&marker)), "{evidence:?}");
        }
        other => panic!("{other:?}\n{}", c.dump()),
    }
    assert_no_leftovers(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_that_cannot_start_is_infra_error() {
    let _s = serial();
    let Some(mut env) = env_for("arm64", "dst-nostart") else {
        return;
    };
    let real = armfleet_migrate_stress::probe::find_qemu("aarch64").unwrap();
    // A wrapper that is QEMU, except as a destination.
    let wrapper = std::env::temp_dir().join(format!("afms-qemu-wrapper-{}", std::process::id()));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in *-incoming*) echo 'simulated: cannot allocate guest RAM' >&2; exit 1;; esac\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.qemu_binary = Some(wrapper.clone());
    let (r, c) = run_job(&env, &tcg_params("arm64", 3), CancellationToken::new()).await;
    let _ = std::fs::remove_file(&wrapper);
    match &r {
        JobResult::InfraError {
            cycles_completed: 0,
            reason,
        } => {
            assert!(reason.contains("destination failed to start"), "{reason}");
            assert!(
                reason.contains("simulated: cannot allocate guest RAM"),
                "{reason}"
            );
        }
        other => panic!("{other:?}\n{}", c.dump()),
    }
    assert_no_leftovers(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_job_future_kills_qemu() {
    let _s = serial();
    let Some(env) = env_for("arm64", "drop") else {
        return;
    };
    let needle = env.work_dir.display().to_string();
    let params = tcg_params("arm64", 1000);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let job =
        armfleet_migrate_stress::run_migrate_cancel(&env, &params, tx, CancellationToken::new());
    let n2 = needle.clone();
    let up = async move {
        loop {
            if procs_mentioning(&n2)
                .iter()
                .filter(|(_, c)| c.contains("qemu-system"))
                .count()
                >= 2
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = job => panic!("job ended on its own: {r:?}"),
        _ = up => {}
    }
    // The job future is dropped here.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<_> = procs_mentioning(&needle)
            .into_iter()
            .filter(|(_, c)| c.contains("qemu-system"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU survived the dropped job: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dir_is_empty(&env.work_dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_timeout_is_timed_out() {
    let _s = serial();
    let Some(mut env) = env_for("arm64", "timeout") else {
        return;
    };
    env.job_timeout = Some(Duration::from_secs(8));
    let t0 = Instant::now();
    let (r, c) = run_job(&env, &tcg_params("arm64", 1000), CancellationToken::new()).await;
    assert!(
        matches!(r, JobResult::TimedOut { .. }),
        "{r:?}\n{}",
        c.dump()
    );
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_no_leftovers(&env);
}

/// Writes `line(source QEMU pid)` to the host kernel log once the job's
/// first destination runs (mid-cycle); whether it could.
fn inject_host_line(
    needle: String,
    line: impl Fn(u32) -> String + Send + 'static,
) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        for _ in 0..1200 {
            let procs = procs_mentioning(&needle);
            let qemus: Vec<_> = procs
                .iter()
                .filter(|(_, c)| c.contains("qemu-system"))
                .collect();
            let source = qemus.iter().find(|(_, c)| !c.contains("-incoming"));
            if let (Some((pid, _)), true) =
                (source, qemus.iter().any(|(_, c)| c.contains("-incoming")))
            {
                return std::fs::write("/dev/kmsg", format!("<3>{}\n", line(*pid))).is_ok();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    })
}

/// A host kernel message that names another process's thread is kept in
/// the job's host log but does not fail it (on a board running several
/// jobs it is another job's); one that names this job's QEMU fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_message_is_the_failure_of_the_job_whose_qemu_it_names() {
    let _s = serial();
    if !is_root() {
        skip_or_fail("writing /dev/kmsg needs root");
        return;
    }
    let Some(env) = env_for("arm64", "attribution") else {
        return;
    };
    let params = tcg_params("arm64", 4);
    let writer = inject_host_line(env.work_dir.display().to_string(), |_| {
        "kvm [1]: Unexpected abort injected by an armfleet test (thread 1 is init)".into()
    });
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    assert!(writer.await.unwrap(), "could not write /dev/kmsg");
    assert_eq!(
        r,
        JobResult::Passed {
            cycles_completed: 4
        },
        "{}",
        c.dump()
    );
    assert!(
        c.dmesg.contains("kvm [1]: Unexpected abort injected"),
        "{}",
        c.dmesg
    );
    assert!(
        c.agent
            .contains("names thread 1, which belongs to none of this job's QEMU processes"),
        "{}",
        c.agent
    );

    let env = env_for("arm64", "attribution-ours").unwrap();
    let writer = inject_host_line(env.work_dir.display().to_string(), |pid| {
        format!("kvm [{pid}]: Unexpected abort injected by an armfleet test (this job's QEMU)")
    });
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    assert!(writer.await.unwrap());
    match r {
        JobResult::Failed { reason, .. } => assert!(reason.contains("kvm ["), "{reason}"),
        other => panic!(
            "a host abort naming the job's QEMU must fail it: {other:?}\n{}",
            c.dump()
        ),
    }
    assert_no_leftovers(&env);
}

/// A bit flipped in guest memory: the workload's verification reports it
/// (`ARMFLEET-CORRUPTION`) and the job fails on it, in the cycle it happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_in_guest_memory_is_a_finding_in_its_cycle() {
    let _s = serial();
    let Some(env) = env_for("arm64", "corruption") else {
        return;
    };
    let mut params = tcg_params("arm64", 4);
    params.verify = true;
    params.inject_guest_corruption_after = Some(1);
    let (r, c) = run_job(&env, &params, CancellationToken::new()).await;
    match r {
        JobResult::Failed {
            failed_cycle,
            reason,
            ..
        } => {
            assert_eq!(failed_cycle, Some(2), "{}", c.dump());
            assert!(reason.contains("ARMFLEET-CORRUPTION"), "{reason}");
        }
        other => panic!("a flipped bit must fail the job: {other:?}\n{}", c.dump()),
    }
    assert!(c.console.contains("verify=1"), "{}", c.console);
    assert_no_leftovers(&env);
}
