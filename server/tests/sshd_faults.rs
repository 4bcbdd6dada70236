//! An SSH-driven board whose sshd dies mid-job, again and again.
//!
//! The "board" is this machine behind a private OpenSSH `sshd` (its own
//! port, host key and `authorized_keys`); a controller agent drives it over
//! SSH and runs real arm64 stress guests there (QEMU, TCG). Each round
//! starts a job, kills every `sshd` of that server with SIGKILL (the
//! listener and the sessions, as an OOM kill or a crash would) at a seeded
//! random moment, and starts the listener again, as the board's init would.
//! Every job must end exactly once, as a lab failure (`infra_error`) —
//! never the kernel's failure, never lost, never stuck — and the board must
//! be left with none of the job's QEMUs and files (the dead-man switch).
//!
//! Its size is a knob: CI runs `ARMFLEET_SSHD_KILLS` = 2 rounds; the soak
//! recorded in BENCHMARKS.md ran 100. Without OpenSSH's `sshd` or QEMU it
//! skips loudly (fails under `ARMFLEET_REQUIRE_QEMU=1`).

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SSHD: &str = "/usr/sbin/sshd";
const BOARD: &str = "sshd-board";

fn ready() -> bool {
    let guest = armfleet_migrate_stress::StressEnv::default_guest_dir().join("arm64");
    if armfleet_migrate_stress::probe::find_qemu("aarch64").is_none() {
        return skip_loudly("qemu-system-aarch64 is not installed".into());
    }
    if !guest.join("vmlinuz").is_file() {
        return skip_loudly(format!(
            "no guest in {} (agent/guest/build.sh arm64)",
            guest.display()
        ));
    }
    if !Path::new(SSHD).is_file() {
        return skip_loudly(format!(
            "{SSHD} is missing (Debian package openssh-server; scripts/test installs it)"
        ));
    }
    true
}

/// A private OpenSSH server on loopback: the board's sshd.
struct BoardSshd {
    config: PathBuf,
    log: PathBuf,
    listener: Option<Child>,
    port: u16,
    host_key_line: String,
    /// `/run/sshd` (privilege separation) when this test made it.
    made_run_dir: bool,
}

impl BoardSshd {
    fn start(dir: &Path, authorized: &str) -> BoardSshd {
        let host_key = dir.join("ssh_host_ed25519_key");
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .status()
            .expect("ssh-keygen (openssh-client)");
        assert!(ok.success(), "ssh-keygen failed");
        let host_key_line = std::fs::read_to_string(host_key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned();
        let authorized_keys = dir.join("authorized_keys");
        std::fs::write(&authorized_keys, format!("{authorized}\n")).unwrap();
        std::fs::set_permissions(&authorized_keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AllowStreamLocalForwarding yes\nMaxSessions 64\nMaxStartups 64\nLogLevel ERROR\n",
                host_key.display(),
                authorized_keys.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let run_dir = Path::new("/run/sshd");
        let made_run_dir = !run_dir.exists();
        if made_run_dir {
            std::fs::create_dir_all(run_dir).unwrap();
        }
        let mut sshd = BoardSshd {
            config,
            log: dir.join("sshd.log"),
            listener: None,
            port,
            host_key_line,
            made_run_dir,
        };
        sshd.listen();
        sshd
    }

    fn listen(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        self.listener = Some(child);
        // As a board's init would: the next job starts only once sshd
        // accepts again (else it fails on "connection refused" before it runs).
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {} within 20 s; see {}",
                self.port,
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to every sshd of this server: the listener and every
    /// session under it (their shells and QEMUs are left to the board's
    /// own clean-up, as after a real crash). Returns how many died.
    fn kill9_all(&mut self) -> usize {
        let Some(mut listener) = self.listener.take() else {
            return 0;
        };
        let root = listener.id();
        let mut doomed: Vec<u32> = descendants(root)
            .into_iter()
            .filter(|pid| comm(*pid).as_deref() == Some("sshd"))
            .collect();
        doomed.push(root);
        for pid in &doomed {
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        let _ = listener.wait();
        doomed.len()
    }

    fn ssh_board_toml(&self, controller_key: &Path, work_dir: &Path) -> String {
        let guest_dir = armfleet_migrate_stress::StressEnv::default_guest_dir();
        format!(
            "[ssh_board]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\nhost_key = \"{}\"\n\
             key = \"{}\"\nguest_dir = \"{}\"\nwork_dir = \"{}\"\n",
            self.port,
            self.host_key_line,
            controller_key.display(),
            guest_dir.display(),
            work_dir.display()
        )
    }
}

impl Drop for BoardSshd {
    fn drop(&mut self) {
        self.kill9_all();
        if self.made_run_dir {
            let _ = std::fs::remove_dir("/run/sshd");
        }
    }
}

fn proc_stat(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let ppid = stat[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

fn comm(pid: u32) -> Option<String> {
    proc_stat(pid).map(|(c, _)| c)
}

/// Every process below `root`.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((_, ppid)) = proc_stat(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// Every path under `dir`.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        }
        out.push(path);
    }
    out
}

/// QEMUs whose command line names `work_dir`: the jobs' own.
fn qemus_under(work_dir: &Path) -> usize {
    let needle = work_dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            comm(*pid).is_some_and(|c| c.starts_with("qemu-system"))
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_whose_sshd_is_killed_mid_job_ends_each_job_once_as_a_lab_failure() {
    if !ready() {
        return;
    }
    let rounds: usize = std::env::var("ARMFLEET_SSHD_KILLS")
        .ok()
        .map(|v| v.parse().expect("ARMFLEET_SSHD_KILLS is a count"))
        .unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let agent_key = keygen(dir.path(), "agent").await;
    let controller = keygen(dir.path(), "controller").await;
    let work_dir = dir.path().join("board-work");
    std::fs::create_dir_all(&work_dir).unwrap();
    let mut sshd = BoardSshd::start(dir.path(), &controller.public);
    // Long enough that every kill lands while the job runs.
    let server = TestServer::start(&fleet_toml(
        &[(BOARD, "generic-arm64", &agent_key.public)],
        "[plan.params]\ncycles = 200\nmemory_mib = 128\nvcpus = 1\nguest_arch = \"arm64\"\n\
         accel = \"tcg\"\ncancel_delay_ms_min = 200\ncancel_delay_ms_max = 400\n",
    ))
    .await;
    let _agent = server.controller_agent(
        BOARD,
        &agent_key.path,
        &sshd.ssh_board_toml(&controller.path, &work_dir),
    );
    server
        .wait_board(BOARD, "idle", Duration::from_secs(120))
        .await;

    let mut rng = 0x55d0_4b11_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let started = Instant::now();
    let mut jobs = Vec::new();
    let mut killed_processes = 0;
    let mut kills_while_guests_ran = 0;
    for round in 0..rounds {
        let run = server
            .trigger(&format!("{:040x}", 0x55d0_0000_u64 + round as u64))
            .await;
        let job: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE run_id = $1")
            .bind(run)
            .fetch_one(&server.pool)
            .await
            .unwrap();
        let job_now = wait_for(
            &format!("job {job} running (round {round})"),
            Duration::from_secs(180),
            || async {
                let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
                (j["state"] != "queued" && j["state"] != "assigned").then_some(j)
            },
        )
        .await;
        assert_eq!(
            job_now["state"], "running",
            "round {round}: the job ended before its board's sshd was killed: {job_now}"
        );
        // Anywhere from the guests' boot to well into the cycles.
        tokio::time::sleep(Duration::from_millis(next(8_000))).await;
        kills_while_guests_ran += usize::from(qemus_under(&work_dir) > 0);
        killed_processes += sshd.kill9_all();
        tokio::time::sleep(Duration::from_millis(200 + next(2_000))).await;
        sshd.listen();
        let end = server.wait_job_end(job, Duration::from_secs(300)).await;
        assert_eq!(
            end["state"], "infra_error",
            "round {round}: a board whose sshd died is a lab failure, never the kernel's: {end}"
        );
        // The dead-man switch: nothing of the job is left on the board.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let files: Vec<_> = walkdir(&work_dir);
            let qemus = qemus_under(&work_dir);
            if qemus == 0 && files.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: 60 s after job {job} ended the board still holds {qemus} of its \
                 QEMUs and these files: {files:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server
            .wait_board(BOARD, "idle", Duration::from_secs(120))
            .await;
        jobs.push(job);
        eprintln!(
            "sshd kill {}/{rounds}: job {job} ended infra_error ({:.0} s so far)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }

    // Each job ended once: one terminal event, nothing left in flight.
    let terminal_events: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT job_id, count(*) FROM job_events
         WHERE job_id = ANY($1) AND to_state IN ('passed', 'failed', 'infra_error', 'lost', 'timed_out', 'cancelled')
         GROUP BY job_id ORDER BY job_id",
    )
    .bind(&jobs)
    .fetch_all(&server.pool)
    .await
    .unwrap();
    assert_eq!(terminal_events.len(), rounds, "{terminal_events:?}");
    assert!(
        terminal_events.iter().all(|(_, n)| *n == 1),
        "a job ended twice: {terminal_events:?}"
    );
    let in_flight: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE state IN ('queued', 'assigned', 'running')",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(in_flight, 0, "jobs stuck in flight");
    println!(
        "sshd-faults: rounds={rounds} sshd_processes_killed={killed_processes} \
         kills_while_guests_ran={kills_while_guests_ran} jobs={} infra_error={} ended_twice=0 \
         stuck=0 qemus_left=0 seconds={:.0}",
        jobs.len(),
        jobs.len(),
        started.elapsed().as_secs_f64()
    );
}
