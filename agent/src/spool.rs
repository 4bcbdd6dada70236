//! The agent's outbox: every frame a job produces is appended to a spool
//! file on disk before it is sent, and stays there until the server
//! acknowledges the job's end (`JobAck`). After a reconnect — or an agent
//! restart — everything spooled is sent again; the server stores each log
//! chunk, cycle and result exactly once, so resending is always safe.
//!
//! Bounded: past `max_log_bytes` of log payload per job, further log chunks
//! are dropped and one truncation marker is spooled in their place; cycle
//! records and results are never dropped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use armfleet_protocol::frame::{decode_body, encode};
use armfleet_protocol::{AgentMessage, ChunkEncoding, Frame, JobLease, LogStream};

struct JobSpool {
    path: PathBuf,
    epoch: i64,
    /// Byte offset of the next frame to send in this connection.
    sent: u64,
    len: u64,
    log_bytes: u64,
    truncated: bool,
    finished: bool,
}

pub struct Spool {
    dir: PathBuf,
    jobs: BTreeMap<i64, JobSpool>,
    max_log_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("spool: {0}")]
    Frame(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Spool {
    /// Opens the spool dir, taking over what a previous agent process left.
    pub fn open(dir: &Path, max_log_bytes: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut jobs = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            let path = entry.path();
            let Some(job) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("job-"))
                .and_then(|n| n.strip_suffix(".spool"))
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            let frames = read_frames(&path)?;
            let Some(epoch) = frames.iter().find_map(|(_, f)| epoch_of(&f.message)) else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let len = frames.last().map(|(end, _)| *end).unwrap_or(0);
            // A torn write at the end (crash mid-append) is cut off.
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            file.set_len(len).map_err(io(&path))?;
            let log_bytes = frames.iter().map(|(_, f)| log_bytes_of(f)).sum();
            let finished = frames
                .iter()
                .any(|(_, f)| matches!(f.message, AgentMessage::JobFinished { .. }));
            tracing::info!(
                job,
                frames = frames.len(),
                finished,
                "spool recovered from a previous run"
            );
            jobs.insert(
                job,
                JobSpool {
                    path,
                    epoch,
                    sent: 0,
                    len,
                    log_bytes,
                    truncated: false,
                    finished,
                },
            );
        }
        Ok(Spool {
            dir: dir.to_owned(),
            jobs,
            max_log_bytes,
        })
    }

    /// Appends a frame of `job` (fsync'd for results, so they survive a crash).
    pub fn push(&mut self, frame: Frame<AgentMessage>) -> Result<(), SpoolError> {
        let Some((job, epoch)) = job_of(&frame.message) else {
            return Ok(());
        };
        let dir = self.dir.clone();
        let spool = self.jobs.entry(job).or_insert_with(|| JobSpool {
            path: dir.join(format!("job-{job}.spool")),
            epoch,
            sent: 0,
            len: 0,
            log_bytes: 0,
            truncated: false,
            finished: false,
        });
        let mut frame = frame;
        let log_bytes = log_bytes_of(&frame);
        if let AgentMessage::LogChunk {
            stream, encoding, ..
        } = &mut frame.message
        {
            if spool.log_bytes + log_bytes > self.max_log_bytes {
                if spool.truncated {
                    return Ok(());
                }
                spool.truncated = true;
                let marker = format!(
                    "\n[armfleet-agent: {} log truncated: the job's logs exceeded the agent's spool limit of {} bytes]\n",
                    stream.as_str(),
                    self.max_log_bytes
                );
                *encoding = ChunkEncoding::Raw;
                frame.payload = marker.into_bytes().into();
            }
            spool.log_bytes += log_bytes_of(&frame);
        }
        let durable = matches!(
            frame.message,
            AgentMessage::JobFinished { .. } | AgentMessage::CycleDone { .. }
        );
        if matches!(frame.message, AgentMessage::JobFinished { .. }) {
            spool.finished = true;
        }
        let bytes = encode(&frame).map_err(|e| SpoolError::Frame(e.to_string()))?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spool.path)
            .map_err(io(&spool.path))?;
        file.write_all(&bytes).map_err(io(&spool.path))?;
        if durable {
            file.sync_data().map_err(io(&spool.path))?;
        }
        spool.len += bytes.len() as u64;
        Ok(())
    }

    /// The next frame not yet sent on this connection.
    pub fn next_unsent(&mut self) -> Result<Option<Frame<AgentMessage>>, SpoolError> {
        for spool in self.jobs.values_mut() {
            if spool.sent >= spool.len {
                continue;
            }
            let mut file = File::open(&spool.path).map_err(io(&spool.path))?;
            file.seek(SeekFrom::Start(spool.sent))
                .map_err(io(&spool.path))?;
            let mut len = [0u8; 4];
            file.read_exact(&mut len).map_err(io(&spool.path))?;
            let total = u32::from_be_bytes(len) as usize;
            let mut body = vec![0u8; total];
            file.read_exact(&mut body).map_err(io(&spool.path))?;
            spool.sent += 4 + total as u64;
            let frame = decode_body(body.into()).map_err(|e| SpoolError::Frame(e.to_string()))?;
            return Ok(Some(frame));
        }
        Ok(None)
    }

    /// A new connection: everything unacknowledged is sent again.
    pub fn rewind(&mut self) {
        for spool in self.jobs.values_mut() {
            spool.sent = 0;
        }
    }

    /// The server has the job's end: forget it.
    pub fn ack(&mut self, job: i64) {
        if let Some(spool) = self.jobs.remove(&job) {
            let _ = std::fs::remove_file(&spool.path);
        }
    }

    /// Jobs whose spool awaits acknowledgement (for the Hello).
    pub fn leases(&self) -> Vec<JobLease> {
        self.jobs
            .iter()
            .map(|(job, s)| JobLease {
                job_id: *job,
                epoch: s.epoch,
            })
            .collect()
    }

    /// Jobs recovered from disk whose end was never produced (the agent
    /// died mid-job): the caller reports them.
    pub fn unfinished(&self) -> Vec<(i64, i64)> {
        self.jobs
            .iter()
            .filter(|(_, s)| !s.finished)
            .map(|(j, s)| (*j, s.epoch))
            .collect()
    }

    pub fn has_unsent(&self) -> bool {
        self.jobs.values().any(|s| s.sent < s.len)
    }
}

fn job_of(m: &AgentMessage) -> Option<(i64, i64)> {
    match m {
        AgentMessage::JobStarted { job_id, epoch }
        | AgentMessage::LogChunk { job_id, epoch, .. }
        | AgentMessage::CycleDone { job_id, epoch, .. }
        | AgentMessage::JobFinished { job_id, epoch, .. } => Some((*job_id, *epoch)),
        _ => None,
    }
}

/// Log bytes a frame carries (before compression): what the spool limit
/// counts.
fn log_bytes_of(frame: &Frame<AgentMessage>) -> u64 {
    match &frame.message {
        AgentMessage::LogChunk { encoding, .. } => encoding.raw_len(frame.payload.len()),
        _ => 0,
    }
}

fn epoch_of(m: &AgentMessage) -> Option<i64> {
    job_of(m).map(|(_, e)| e)
}

/// Every complete frame of a spool file, with the offset where it ends.
fn read_frames(path: &Path) -> Result<Vec<(u64, Frame<AgentMessage>)>, SpoolError> {
    let file = File::open(path).map_err(io(path))?;
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).is_err() {
            break;
        }
        let total = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; total];
        if reader.read_exact(&mut body).is_err() {
            break;
        }
        let Ok(frame) = decode_body(body.into()) else {
            break;
        };
        offset += 4 + total as u64;
        out.push((offset, frame));
    }
    Ok(out)
}

/// A log line the agent adds itself (for jobs it lost with a crash).
pub fn agent_note(job_id: i64, epoch: i64, seq: u64, text: &str) -> Frame<AgentMessage> {
    Frame::with_payload(
        AgentMessage::LogChunk {
            job_id,
            epoch,
            stream: LogStream::Agent,
            seq,
            encoding: ChunkEncoding::Raw,
        },
        text.as_bytes().to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use armfleet_protocol::JobResult;

    fn chunk(seq: u64, n: usize) -> Frame<AgentMessage> {
        Frame::with_payload(
            AgentMessage::LogChunk {
                job_id: 5,
                epoch: 1,
                stream: LogStream::GuestConsole,
                seq,
                encoding: ChunkEncoding::Raw,
            },
            vec![b'x'; n],
        )
    }

    #[test]
    fn frames_survive_a_restart_and_are_resent_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(chunk(0, 10)).unwrap();
        s.push(Frame::new(AgentMessage::JobFinished {
            job_id: 5,
            epoch: 1,
            result: JobResult::Passed {
                cycles_completed: 3,
            },
            environment: None,
        }))
        .unwrap();
        assert!(s.next_unsent().unwrap().is_some());
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            s.leases(),
            vec![JobLease {
                job_id: 5,
                epoch: 1
            }]
        );
        assert!(s.unfinished().is_empty());
        let mut n = 0;
        while s.next_unsent().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 2, "both frames again after the restart");
        s.rewind();
        assert!(s.has_unsent());
        s.ack(5);
        assert!(!s.has_unsent() && s.leases().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "acked spools are deleted"
        );
    }

    #[test]
    fn logs_past_the_cap_become_one_marker_but_results_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 100).unwrap();
        for seq in 0..10 {
            s.push(chunk(seq, 40)).unwrap();
        }
        s.push(Frame::new(AgentMessage::JobFinished {
            job_id: 5,
            epoch: 1,
            result: JobResult::Passed {
                cycles_completed: 3,
            },
            environment: None,
        }))
        .unwrap();
        let mut frames = Vec::new();
        while let Some(f) = s.next_unsent().unwrap() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 4, "2 chunks, 1 marker, the result");
        assert!(String::from_utf8_lossy(&frames[2].payload).contains("truncated"));
        assert!(matches!(
            frames[3].message,
            AgentMessage::JobFinished { .. }
        ));
    }

    #[test]
    fn a_torn_last_frame_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(chunk(0, 10)).unwrap();
        drop(s);
        let path = dir.path().join("job-5.spool");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 1, 0, 9, 9]).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(s.next_unsent().unwrap().is_some());
        assert!(s.next_unsent().unwrap().is_none());
        assert_eq!(s.unfinished(), vec![(5, 1)]);
    }
}
