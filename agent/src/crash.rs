//! Crash recovery: the previous boot's kernel log.
//!
//! When the agent starts and its spool holds jobs that never ended, the
//! board (or the agent) died in the middle of them. If the host kernel
//! crashed, its last words are in pstore/ramoops (`/sys/fs/pstore/dmesg-*`)
//! or, where the journal is persistent, in `journalctl -k -b -1`. This
//! module finds them; `link` uploads them as the dead job's `host_dmesg`
//! (chunks numbered from [`armfleet_protocol::RECOVERED_LOG_SEQ_BASE`], so
//! they follow whatever the job had streamed live) and reports the job as
//! failed with the crash's title when triage finds a fatal report.
//!
//! pstore records are moved to `STATE_DIR/pstore-archive/` once taken (that
//! also frees the ramoops space), so a crash is attributed to one job only.

use std::path::{Path, PathBuf};

use armfleet_protocol::{AgentMessage, Frame, JobResult, LogStream, RECOVERED_LOG_SEQ_BASE};

/// A recovered kernel log and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct BootLog {
    /// e.g. `pstore /sys/fs/pstore (dmesg-ramoops-0)` or `journalctl -k -b -1`.
    pub source: String,
    pub text: String,
    /// pstore files to archive once the log is safely spooled.
    pub files: Vec<PathBuf>,
}

/// The boot id of the running kernel (changes on every boot).
pub fn current_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Records the current boot id in the state dir; returns the one a previous
/// agent process recorded, if any.
pub fn swap_boot_id(state_dir: &Path) -> Option<String> {
    let path = state_dir.join("boot_id");
    let previous = std::fs::read_to_string(&path)
        .ok()
        .map(|s| s.trim().to_owned());
    if let Some(now) = current_boot_id() {
        let _ = std::fs::write(&path, format!("{now}\n"));
    }
    previous
}

/// The `dmesg-*` records in a pstore directory, oldest name first.
pub fn pstore_records(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("dmesg-") && !n.ends_with(".enc.z"))
        })
        .collect();
    files.sort();
    files
}

/// Finds the previous boot's kernel log: pstore first; the journal only
/// when the board really rebooted (`rebooted`), since after a mere agent
/// restart `-b -1` is an unrelated older boot.
pub fn recover(pstore_dir: &Path, journal: bool, rebooted: bool) -> Option<BootLog> {
    let files = pstore_records(pstore_dir);
    if !files.is_empty() {
        let mut text = String::new();
        for f in &files {
            if let Ok(bytes) = std::fs::read(f) {
                text.push_str(&String::from_utf8_lossy(&bytes));
                if !text.ends_with('\n') {
                    text.push('\n');
                }
            }
        }
        if !text.trim().is_empty() {
            let names: Vec<String> = files
                .iter()
                .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            return Some(BootLog {
                source: format!("pstore {} ({})", pstore_dir.display(), names.join(", ")),
                text,
                files,
            });
        }
    }
    if journal && rebooted {
        let out = std::process::Command::new("journalctl")
            .args([
                "-k",
                "-b",
                "-1",
                "--no-pager",
                "-q",
                "-o",
                "short-monotonic",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !text.trim().is_empty() {
            return Some(BootLog {
                source: "journalctl -k -b -1".into(),
                text,
                files: vec![],
            });
        }
    }
    None
}

/// Moves the taken pstore records out of the way (kept under the state dir).
pub fn archive(log: &BootLog, state_dir: &Path) {
    if log.files.is_empty() {
        return;
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = state_dir.join("pstore-archive").join(stamp.to_string());
    let _ = std::fs::create_dir_all(&dir);
    for f in &log.files {
        let Some(name) = f.file_name() else { continue };
        let kept = std::fs::copy(f, dir.join(name)).is_ok();
        if let Err(e) = std::fs::remove_file(f) {
            tracing::warn!(file = %f.display(), kept, "cannot remove a pstore record after taking it: {e}");
        }
    }
}

/// The frames that report a job the agent lost with a crash or restart:
/// the agent's note, the recovered kernel log (if any) as `host_dmesg`,
/// and the job's end — `failed` with the crash title when the log holds a
/// fatal host report, else `infra_error`.
pub fn lost_job_frames(job_id: i64, epoch: i64, log: Option<&BootLog>) -> Vec<Frame<AgentMessage>> {
    let mut frames = Vec::new();
    let mut note = String::from(
        "armfleet-agent: the agent process restarted while this job ran (crash, kill or power loss); its guests are gone\n",
    );
    let mut result = JobResult::InfraError {
        cycles_completed: 0,
        reason: "the agent restarted while the job ran".into(),
    };
    if let Some(log) = log {
        note.push_str(&format!(
            "armfleet-agent: recovered the previous boot's kernel log from {}\n",
            log.source
        ));
        let mut text = format!(
            "==== armfleet-agent: previous boot's kernel log, recovered after the restart from {} ====\n",
            log.source
        );
        text.push_str(&log.text);
        for (i, piece) in text.as_bytes().chunks(48 * 1024).enumerate() {
            frames.push(armfleet_protocol::chunk::gzipped_log_chunk(
                job_id,
                epoch,
                LogStream::HostDmesg,
                RECOVERED_LOG_SEQ_BASE + i as u64,
                piece,
            ));
        }
        let findings = armfleet_triage::triage(log.text.as_bytes(), armfleet_triage::Source::Host);
        if let Some(f) = findings.iter().find(|f| f.fatal) {
            let lines: Vec<&str> = log.text.lines().collect();
            let evidence: Vec<String> = lines
                .get(f.start_line.saturating_sub(1)..f.end_line.min(lines.len()))
                .unwrap_or_default()
                .iter()
                .take(12)
                .map(|l| l.trim_end().to_owned())
                .collect();
            note.push_str(&format!(
                "armfleet-agent: the host kernel crashed during the job: {}\n",
                f.title
            ));
            result = JobResult::Failed {
                cycles_completed: 0,
                failed_cycle: None,
                reason: format!(
                    "the host kernel crashed during the job: {} (log from {})",
                    f.title, log.source
                ),
                evidence,
            };
        }
    }
    frames.insert(
        0,
        crate::spool::agent_note(job_id, epoch, u32::MAX as u64, &note),
    );
    frames.push(Frame::new(AgentMessage::JobFinished {
        job_id,
        epoch,
        result,
        environment: None,
    }));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const OOPS: &str = include_str!("../replay/host-oops-stage2.log");

    #[test]
    fn pstore_records_are_read_and_a_host_oops_fails_the_job_with_its_title() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dmesg-ramoops-0"), OOPS).unwrap();
        std::fs::write(dir.path().join("console-ramoops-0"), "not dmesg").unwrap();
        let log = recover(dir.path(), false, false).expect("a log");
        assert!(log.source.contains("dmesg-ramoops-0") && !log.source.contains("console"));
        let frames = lost_job_frames(7, 3, Some(&log));
        assert!(
            matches!(&frames[1].message, AgentMessage::LogChunk { stream: LogStream::HostDmesg, seq, .. } if *seq == RECOVERED_LOG_SEQ_BASE)
        );
        match &frames.last().unwrap().message {
            AgentMessage::JobFinished {
                job_id: 7,
                epoch: 3,
                result:
                    JobResult::Failed {
                        reason, evidence, ..
                    },
                ..
            } => {
                assert!(reason.contains("kvm_pgtable_stage2_map"), "{reason}");
                assert!(
                    evidence
                        .iter()
                        .any(|l| l.contains("Unable to handle kernel paging request")),
                    "{evidence:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let state = tempfile::tempdir().unwrap();
        archive(&log, state.path());
        assert!(
            pstore_records(dir.path()).is_empty(),
            "taken records leave pstore"
        );
        assert!(recover(dir.path(), false, false).is_none());
    }

    #[test]
    fn without_a_log_the_job_is_a_lab_failure() {
        let frames = lost_job_frames(7, 3, None);
        assert_eq!(frames.len(), 2);
        assert!(matches!(
            frames[1].message,
            AgentMessage::JobFinished {
                result: JobResult::InfraError { .. },
                ..
            }
        ));
    }
}
