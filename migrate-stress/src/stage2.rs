//! Evidence that a job drove the KVM/arm64 stage-2 code the bug class lives
//! in: kprobes armed on the host kernel for the job, read as histogram
//! counts around every cycle.
//!
//! Probed (each only when this kernel has the function; which were armed
//! is said on the `agent` stream, and a probe that could not be armed is
//! reported as unknown, never as zero):
//!
//! | probe | function | counts |
//! |---|---|---|
//! | `s2map` | `kvm_pgtable_stage2_map(pgt, addr, size, …)` | stage-2 maps, by size: 4 KiB pages vs blocks |
//! | `s2perm` | `kvm_pgtable_stage2_relax_perms` | stage-2 permission faults (writes to pages dirty logging write-protected) |
//! | `memslot` | `kvm_arch_commit_memory_region` | memslot changes (dirty logging switched on or off) |
//!
//! A block map after the cancel is KVM installing a block again over the
//! page table that dirty logging's split left: the re-install the TLB
//! conflict bug needs. The probes count the whole host, not only this job's
//! VMs (boards run one job at a time by default).
//!
//! The probes are removed when the job ends; on an SSH-driven board the
//! job's dead-man switch also runs the removal script (`disarm.sh` in the
//! job directory) if the controller dies.

use std::collections::BTreeMap;

use armfleet_protocol::PathCounters;

use crate::host::{Host, JobDir};

/// The probes armed for one job.
pub struct Stage2Probes {
    group: String,
    tracefs: String,
    /// Probe name → armed.
    pub armed: Vec<&'static str>,
    disarm: String,
}

/// Cumulative hit counts at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub page_maps: u64,
    pub block_maps: u64,
    pub perm: u64,
    pub memslot: u64,
}

const PROBES: &[(&str, &str, &str, &str)] = &[
    // (name, function, fetch args, hist keys)
    (
        "s2map",
        "kvm_pgtable_stage2_map",
        "pgt=%x0:u64 size=%x2:u64",
        "pgt,size",
    ),
    (
        "s2perm",
        "kvm_pgtable_stage2_relax_perms",
        "pgt=%x0:u64",
        "pgt",
    ),
    (
        "memslot",
        "kvm_arch_commit_memory_region",
        "kvm=%x0:u64",
        "kvm",
    ),
];

impl Stage2Probes {
    /// Arms the probes on the job's host. `Err` says why tracing is
    /// impossible there (no tracefs, no kprobe events, locked down).
    pub async fn arm(host: &Host, dir: &JobDir, tag: &str) -> Result<Stage2Probes, String> {
        let group = format!(
            "armfleet_{}",
            tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let mut script = String::from(
            "T=/sys/kernel/tracing; [ -e $T/kprobe_events ] || T=/sys/kernel/debug/tracing\n\
             [ -w $T/kprobe_events ] || { echo \"unavailable: no writable kprobe_events under /sys/kernel/tracing or /sys/kernel/debug/tracing\"; exit 0; }\n\
             echo tracefs=$T\n",
        );
        for (name, func, args, keys) in PROBES {
            script.push_str(&format!(
                "if grep -qw '{func}' $T/available_filter_functions 2>/dev/null || grep -qw '{func}' /proc/kallsyms; then \
                   if echo 'p:{group}/{name} {func} {args}' >> $T/kprobe_events 2>/dev/null \
                      && echo 'hist:keys={keys}:size=256' > $T/events/{group}/{name}/trigger 2>/dev/null; then echo armed={name}; \
                   else echo failed={name}; fi; \
                 else echo absent={name}; fi\n"
            ));
        }
        let out = host.run_shell(&script).await?;
        if let Some(why) = out.lines().find_map(|l| l.strip_prefix("unavailable: ")) {
            return Err(why.to_owned());
        }
        let tracefs = out
            .lines()
            .find_map(|l| l.strip_prefix("tracefs="))
            .unwrap_or("/sys/kernel/tracing")
            .to_owned();
        let armed: Vec<&'static str> = PROBES
            .iter()
            .filter(|(name, ..)| out.lines().any(|l| l == format!("armed={name}")))
            .map(|(name, ..)| *name)
            .collect();
        let mut disarm = String::new();
        for (name, _, _, keys) in PROBES {
            disarm.push_str(&format!(
                "echo '!hist:keys={keys}:size=256' > {tracefs}/events/{group}/{name}/trigger 2>/dev/null\n"
            ));
        }
        for (name, ..) in PROBES {
            disarm.push_str(&format!(
                "echo '-:{group}/{name}' >> {tracefs}/kprobe_events 2>/dev/null\n"
            ));
        }
        disarm.push_str("true\n");
        // Kept in the job directory: the board's dead-man switch runs it.
        let keep = format!(
            "cat > {} <<'ARMFLEET_EOF'\n{disarm}ARMFLEET_EOF\n",
            crate::ssh_board::shell_quote(&dir.join("disarm.sh"))
        );
        let _ = host.run_shell(&keep).await;
        let probes = Stage2Probes {
            group,
            tracefs,
            armed,
            disarm,
        };
        if probes.armed.is_empty() {
            probes.disarm(host).await;
            return Err(format!(
                "none of {} could be probed on this kernel: {}",
                PROBES.iter().map(|p| p.1).collect::<Vec<_>>().join(", "),
                out.lines()
                    .filter(|l| !l.starts_with("tracefs="))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(probes)
    }

    /// The cumulative counts now (one round trip).
    pub async fn read(&self, host: &Host) -> Option<Snapshot> {
        let mut script = String::new();
        for name in &self.armed {
            script.push_str(&format!(
                "echo '@@{name}'; cat {}/events/{}/{name}/hist\n",
                self.tracefs, self.group
            ));
        }
        let out = host.run_shell(&script).await.ok()?;
        Some(parse_hists(&out))
    }

    pub async fn disarm(&self, host: &Host) {
        let _ = host.run_shell(&self.disarm).await;
    }

    /// A cycle's counters from the snapshots at its start, right after its
    /// cancel (`None` for a cycle without one) and at its end.
    pub fn counters(
        &self,
        start: &Snapshot,
        after_cancel: Option<&Snapshot>,
        end: &Snapshot,
    ) -> PathCounters {
        let has = |name: &str| self.armed.contains(&name);
        let map = has("s2map");
        PathCounters {
            page_maps: map.then(|| end.page_maps.saturating_sub(start.page_maps)),
            block_maps: map.then(|| end.block_maps.saturating_sub(start.block_maps)),
            block_maps_after_cancel: match after_cancel {
                Some(mid) if map => Some(end.block_maps.saturating_sub(mid.block_maps)),
                _ => None,
            },
            perm_faults: has("s2perm").then(|| end.perm.saturating_sub(start.perm)),
            memslot_changes: has("memslot").then(|| end.memslot.saturating_sub(start.memslot)),
        }
    }
}

/// Sums `hist` outputs (`@@name` separated) into a snapshot.
pub fn parse_hists(text: &str) -> Snapshot {
    let mut per: BTreeMap<String, Vec<(Option<u64>, u64)>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            current = name.to_owned();
            continue;
        }
        let Some(hits) = field(line, "hitcount:") else {
            continue;
        };
        per.entry(current.clone())
            .or_default()
            .push((field(line, "size:"), hits));
    }
    let sum = |name: &str, pick: &dyn Fn(Option<u64>) -> bool| -> u64 {
        per.get(name)
            .map(|v| v.iter().filter(|(s, _)| pick(*s)).map(|(_, h)| h).sum())
            .unwrap_or(0)
    };
    Snapshot {
        page_maps: sum("s2map", &|s| s.is_some_and(|s| s <= 4096)),
        block_maps: sum("s2map", &|s| s.is_some_and(|s| s > 4096)),
        perm: sum("s2perm", &|_| true),
        memslot: sum("memslot", &|_| true),
    }
}

/// The number after `key` in a hist line (decimal or 0x hex).
fn field(line: &str, key: &str) -> Option<u64> {
    let rest = line[line.find(key)? + key.len()..].trim_start();
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    match word.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_outputs_sum_into_pages_blocks_and_faults() {
        let text = "@@s2map\n# event histogram\n#\n\
            { pgt: 18446612682126835712, size:       4096 } hitcount:        120\n\
            { pgt: 18446612682126835712, size:    2097152 } hitcount:          7\n\
            { pgt: 18446612682126839808, size:       4096 } hitcount:          3\n\
            \nTotals:\n    Hits: 130\n    Entries: 3\n    Dropped: 0\n\
            @@s2perm\n{ pgt: 18446612682126835712 } hitcount:         42\n\nTotals:\n    Hits: 42\n";
        let s = parse_hists(text);
        assert_eq!(
            s,
            Snapshot {
                page_maps: 123,
                block_maps: 7,
                perm: 42,
                memslot: 0
            }
        );
    }

    #[test]
    fn counters_are_unknown_for_probes_that_were_not_armed() {
        let p = Stage2Probes {
            group: "g".into(),
            tracefs: "/t".into(),
            armed: vec!["s2map"],
            disarm: String::new(),
        };
        let start = Snapshot {
            page_maps: 10,
            block_maps: 1,
            ..Default::default()
        };
        let mid = Snapshot {
            page_maps: 50,
            block_maps: 1,
            ..Default::default()
        };
        let end = Snapshot {
            page_maps: 52,
            block_maps: 4,
            ..Default::default()
        };
        let c = p.counters(&start, Some(&mid), &end);
        assert_eq!(c.page_maps, Some(42));
        assert_eq!(c.block_maps, Some(3));
        assert_eq!(c.block_maps_after_cancel, Some(3));
        assert_eq!(c.perm_faults, None, "not armed: unknown, not zero");
        assert_eq!(c.memslot_changes, None);
    }
}
