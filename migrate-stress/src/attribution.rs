//! Which job a host kernel message belongs to.
//!
//! A board may run several jobs at once (`max_jobs > 1`), and every job
//! reads the same host kernel log. A host message that names a process —
//! KVM's own `kvm [TID]: …` lines name the vCPU thread, oops and warning
//! headers say `CPU: N PID: TID Comm: …` — implicates the job whose QEMU
//! that thread belongs to, and only that one. A message that names a
//! thread of no QEMU of this job is recorded in this job's host log but
//! does not fail it. A message that names no process (or one this job
//! cannot rule out) still fails it: nothing says it is someone else's.

use std::collections::HashSet;

use crate::host::Host;

/// Whom a host kernel message implicates, as far as this job can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Implicates {
    /// A thread of one of this job's QEMU processes, or no process at all.
    ThisJob,
    /// A thread of some other process: another job's QEMU, or anything else.
    Other(u32),
}

/// The thread a host kernel message (and the lines that follow it, for an
/// oops whose header comes first) names.
pub fn named_thread(lines: &[String]) -> Option<u32> {
    for line in lines {
        if let Some(rest) = line.split("kvm [").nth(1) {
            if let Some(n) = rest.split(']').next().and_then(|n| n.trim().parse().ok()) {
                return Some(n);
            }
        }
        if let Some(rest) = line.split(" PID: ").nth(1) {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                return Some(n);
            }
        }
    }
    None
}

/// Every thread of the given processes on `host`; `None` when any of them
/// could not be listed (then nothing can be ruled out).
pub async fn threads_of(host: &Host, pids: &[u32]) -> Option<HashSet<u32>> {
    if pids.is_empty() {
        return None;
    }
    let script: String = pids
        .iter()
        .map(|p| format!("ls /proc/{p}/task || echo MISSING; "))
        .collect();
    let out = host.run_shell(&script).await.ok()?;
    if out.contains("MISSING") {
        return None;
    }
    let mut tids: HashSet<u32> = out
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    tids.extend(pids);
    Some(tids)
}

/// The verdict on one message: `Other` only when it names a thread and
/// this job's threads are known and do not include it.
pub fn implicates(named: Option<u32>, ours: Option<&HashSet<u32>>) -> Implicates {
    match (named, ours) {
        (Some(tid), Some(ours)) if !ours.contains(&tid) => Implicates::Other(tid),
        _ => Implicates::ThisJob,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_thread_a_message_names() {
        assert_eq!(
            named_thread(&lines(&["kvm [4242]: Unsupported FSC: EC=0x24 xFSC=0x30"])),
            Some(4242)
        );
        // An oops names the thread on its CPU/PID header after the first line.
        assert_eq!(
            named_thread(&lines(&[
                "Unable to handle kernel paging request at virtual address 0000000000001000",
                "Mem abort info:",
                "CPU: 3 PID: 777 Comm: CPU 0/KVM Not tainted 6.1.0-28-arm64 #1",
            ])),
            Some(777)
        );
        assert_eq!(
            named_thread(&lines(&["Kernel panic - not syncing: Fatal exception"])),
            None
        );
    }

    #[test]
    fn only_a_thread_known_not_to_be_ours_clears_this_job() {
        let ours: HashSet<u32> = [100, 101, 102].into();
        assert_eq!(implicates(Some(101), Some(&ours)), Implicates::ThisJob);
        assert_eq!(implicates(Some(555), Some(&ours)), Implicates::Other(555));
        assert_eq!(implicates(None, Some(&ours)), Implicates::ThisJob);
        // Our threads unknown: nothing is ruled out.
        assert_eq!(implicates(Some(555), None), Implicates::ThisJob);
    }
}
