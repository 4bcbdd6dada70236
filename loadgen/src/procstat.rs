//! CPU time and memory of the server (and PostgreSQL) from /proc.

use std::path::Path;

#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// user+system CPU seconds.
    pub cpu_s: f64,
    pub rss_bytes: u64,
    /// Peak RSS over the process's life (VmHWM).
    pub peak_rss_bytes: u64,
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (ppid, utime+stime in ticks) of a process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)` which may contain spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let (_, ticks) = stat(pid)?;
    Some(ProcSample {
        cpu_s: ticks as f64 / ticks_per_s(),
        rss_bytes: status_kib(pid, "VmRSS:") * 1024,
        peak_rss_bytes: status_kib(pid, "VmHWM:") * 1024,
    })
}

/// Several processes (e.g. the servers sharing a database), summed; None
/// when none could be read.
pub fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    pids.iter()
        .filter_map(|p| sample(*p))
        .reduce(|a, b| ProcSample {
            cpu_s: a.cpu_s + b.cpu_s,
            rss_bytes: a.rss_bytes + b.rss_bytes,
            peak_rss_bytes: a.peak_rss_bytes + b.peak_rss_bytes,
        })
}

/// A process and its direct children (PostgreSQL: the postmaster and its
/// backends): summed CPU seconds and RSS.
pub fn sample_tree(pid: u32) -> Option<ProcSample> {
    let (_, own) = stat(pid)?;
    let mut ticks = own;
    let mut rss = status_kib(pid, "VmRSS:");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, t)) = stat(child) {
            if ppid == pid {
                ticks += t;
                rss += status_kib(child, "VmRSS:");
            }
        }
    }
    Some(ProcSample {
        cpu_s: ticks as f64 / ticks_per_s(),
        rss_bytes: rss * 1024,
        peak_rss_bytes: 0,
    })
}

/// The postmaster pid of a cluster data dir.
pub fn postmaster_pid(pgdata: &Path) -> Option<u32> {
    std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Raises the open-file soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}
