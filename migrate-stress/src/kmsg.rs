//! The host kernel log window of a job, from `/dev/kmsg`.
//!
//! At job start the reader consumes the existing ring (to learn the next
//! sequence number), then reports every record that follows exactly once,
//! numbered from the job start. `/dev/kmsg` hands out one record per
//! `read()` and reports overwritten records with `EPIPE`; gaps in the
//! sequence numbers become explicit "missed" items, never silent.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;

#[derive(Debug, Clone, PartialEq)]
pub struct KmsgRecord {
    /// Kernel sequence number.
    pub seq: u64,
    /// Syslog level (0 emerg .. 7 debug).
    pub level: u8,
    pub facility: u8,
    /// Microseconds since boot.
    pub ts_us: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KmsgItem {
    Record(KmsgRecord),
    /// Records `from..=to` were overwritten before they could be read.
    Missed {
        from: u64,
        to: u64,
    },
}

/// Parses one `/dev/kmsg` record: `prio,seq,ts,flags[,...];text\n[ KEY=v\n]*`.
pub fn parse_record(buf: &[u8]) -> Option<KmsgRecord> {
    let s = String::from_utf8_lossy(buf);
    let (head, rest) = s.split_once(';')?;
    let mut f = head.split(',');
    let prio: u32 = f.next()?.parse().ok()?;
    let seq: u64 = f.next()?.parse().ok()?;
    let ts_us: u64 = f.next()?.parse().ok()?;
    let text = rest.split('\n').next().unwrap_or("").to_string();
    Some(KmsgRecord {
        seq,
        level: (prio & 7) as u8,
        facility: (prio >> 3) as u8,
        ts_us,
        text,
    })
}

impl KmsgRecord {
    /// `#<n from job start> [<sec.usec>] <lvl>: text`
    pub fn format(&self, base_seq: u64) -> String {
        format!(
            "#{} [{:>5}.{:06}] <{}> {}",
            self.seq.saturating_sub(base_seq),
            self.ts_us / 1_000_000,
            self.ts_us % 1_000_000,
            self.level,
            self.text
        )
    }
}

pub struct KmsgReader {
    file: File,
    /// Sequence number of the first record after job start.
    pub base_seq: u64,
    next_seq: u64,
    buf: Vec<u8>,
}

impl KmsgReader {
    /// Opens `/dev/kmsg` (non-blocking) and positions after the last
    /// existing record.
    pub fn open() -> std::io::Result<KmsgReader> {
        Self::open_path("/dev/kmsg")
    }

    pub fn open_path(path: &str) -> std::io::Result<KmsgReader> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let mut r = KmsgReader {
            file,
            base_seq: 0,
            next_seq: 0,
            buf: vec![0u8; 16 * 1024],
        };
        // Drain the existing ring to learn where "now" is.
        let mut last = None;
        loop {
            match r.read_one() {
                Ok(Some(rec)) => last = Some(rec.seq),
                Ok(None) => break,
                Err(e) if e.kind() == ErrorKind::BrokenPipe => continue,
                Err(e) => return Err(e),
            }
        }
        r.base_seq = last.map(|s| s + 1).unwrap_or(0);
        r.next_seq = r.base_seq;
        Ok(r)
    }

    fn read_one(&mut self) -> std::io::Result<Option<KmsgRecord>> {
        loop {
            match self.file.read(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    if let Some(rec) = parse_record(&self.buf[..n]) {
                        return Ok(Some(rec));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Everything that arrived since the last call, in order, each record
    /// once, gaps reported.
    pub fn read_available(&mut self) -> std::io::Result<Vec<KmsgItem>> {
        let mut out = vec![];
        loop {
            match self.read_one() {
                Ok(Some(rec)) => {
                    if rec.seq < self.next_seq {
                        continue; // already reported
                    }
                    if rec.seq > self.next_seq {
                        out.push(KmsgItem::Missed {
                            from: self.next_seq,
                            to: rec.seq - 1,
                        });
                    }
                    self.next_seq = rec.seq + 1;
                    out.push(KmsgItem::Record(rec));
                }
                Ok(None) => return Ok(out),
                // Overwritten records: the next read continues at the oldest
                // available one; the gap shows up in the sequence numbers.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let r = parse_record(b"6,1234,5678901,-;kvm [42]: hello world\n SUBSYSTEM=x\n").unwrap();
        assert_eq!(r.seq, 1234);
        assert_eq!(r.level, 6);
        assert_eq!(r.ts_us, 5678901);
        assert_eq!(r.text, "kvm [42]: hello world");
        assert_eq!(
            r.format(1200),
            "#34 [    5.678901] <6> kvm [42]: hello world"
        );
        assert!(parse_record(b"garbage").is_none());
    }

    #[test]
    fn window_sees_new_records_once() {
        let Ok(mut r) = KmsgReader::open() else {
            eprintln!("SKIPPED (not passing): /dev/kmsg not readable");
            return;
        };
        let marker = format!("armfleet-kmsg-test-{}", std::process::id());
        if std::fs::write("/dev/kmsg", format!("{marker}\n")).is_err() {
            eprintln!("SKIPPED (not passing): cannot write /dev/kmsg");
            return;
        }
        let items = r.read_available().unwrap();
        let hits: Vec<_> = items
            .iter()
            .filter(|i| matches!(i, KmsgItem::Record(rec) if rec.text.contains(&marker)))
            .collect();
        assert_eq!(hits.len(), 1, "{items:?}");
        assert!(
            r.read_available()
                .unwrap()
                .iter()
                .all(|i| !matches!(i, KmsgItem::Record(rec) if rec.text.contains(&marker)))
        );
    }
}

/// The job's window on a board's `/dev/kmsg`, read as `cat /dev/kmsg`
/// over SSH. Opening the window writes a unique marker record into the
/// board's log; every record up to it is history, every record after it is
/// the job's. A reader restarted after an overflow (`cat` ends on `EPIPE`)
/// reads the ring from its start again: records already seen are skipped
/// and a gap becomes an explicit [`KmsgItem::Missed`].
#[derive(Debug)]
pub struct MarkedWindow {
    marker: String,
    /// Sequence number of the marker record, once seen.
    pub base_seq: Option<u64>,
    last_seq: Option<u64>,
}

impl MarkedWindow {
    pub fn new(marker: impl Into<String>) -> MarkedWindow {
        MarkedWindow {
            marker: marker.into(),
            base_seq: None,
            last_seq: None,
        }
    }

    /// One line of `cat /dev/kmsg` output (continuation lines, which start
    /// with a space, carry no record and are ignored): the job's items it
    /// yields, a gap first when records were lost.
    pub fn line(&mut self, line: &[u8]) -> Vec<KmsgItem> {
        if line.first() == Some(&b' ') {
            return vec![];
        }
        let Some(r) = parse_record(line) else {
            return vec![];
        };
        let Some(base) = self.base_seq else {
            if r.text.contains(&self.marker) {
                self.base_seq = Some(r.seq);
                self.last_seq = Some(r.seq);
            }
            return vec![];
        };
        let last = self.last_seq.unwrap_or(base);
        if r.seq <= last {
            return vec![];
        }
        self.last_seq = Some(r.seq);
        let mut out = vec![];
        if r.seq > last + 1 {
            out.push(KmsgItem::Missed {
                from: last + 1,
                to: r.seq - 1,
            });
        }
        out.push(KmsgItem::Record(r));
        out
    }
}

/// Opens the job's window on the board and streams it into the job's
/// `host_dmesg` until `stop` (then drains for a moment, so the tail of an
/// oops printed at the end is kept).
pub(crate) async fn start_board_window(
    board: std::sync::Arc<crate::ssh_board::SshBoard>,
    shared: std::sync::Arc<crate::job::Shared>,
    stop: tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    use armfleet_protocol::LogStream;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let marker = format!(
        "armfleet: job window {}-{}-{} opens",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    );
    let addr = board.config().addr();
    let open = format!(
        "echo {} > /dev/kmsg && exec cat /dev/kmsg",
        crate::ssh_board::shell_quote(&marker)
    );
    let ch = match board.spawn(&open).await {
        Ok(ch) => ch,
        Err(e) => {
            shared.logs.agent(format!(
                "host dmesg window unavailable: {e} (host_dmesg stream stays empty)"
            ));
            return None;
        }
    };
    Some(tokio::spawn(async move {
        let mut window = MarkedWindow::new(marker);
        let mut ch = ch;
        let mut restarts = 0;
        let mut announced = false;
        loop {
            let mut buf: Vec<u8> = Vec::new();
            let mut stderr = Vec::new();
            let mut stopping_deadline: Option<tokio::time::Instant> = None;
            loop {
                let msg = match stopping_deadline {
                    Some(d) => match tokio::time::timeout_at(d, ch.wait()).await {
                        Ok(m) => m,
                        Err(_) => return,
                    },
                    None => tokio::select! {
                        m = ch.wait() => m,
                        _ = stop.cancelled() => {
                            stopping_deadline = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(300));
                            continue;
                        }
                    },
                };
                match msg {
                    Some(russh::ChannelMsg::Data { data }) => {
                        buf.extend_from_slice(&data);
                        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=nl).collect();
                            for item in window.line(&line[..line.len() - 1]) {
                                let base = window.base_seq.unwrap_or(0);
                                crate::job::host_log_item(&shared, item, base);
                            }
                            if window.base_seq.is_some() && !announced {
                                announced = true;
                                shared.logs.write(
                                    LogStream::HostDmesg,
                                    format!(
                                        "armfleet: the board's kernel log window from /dev/kmsg sequence {} on {addr} (numbers below are relative)\n",
                                        window.base_seq.unwrap_or(0)
                                    )
                                    .into_bytes(),
                                );
                                shared.logs.agent(format!(
                                    "host dmesg window opened on the board at kernel sequence {}",
                                    window.base_seq.unwrap_or(0)
                                ));
                            }
                        }
                    }
                    Some(russh::ChannelMsg::ExtendedData { data, .. }) => {
                        stderr.extend_from_slice(&data)
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            if stop.is_cancelled() || board.is_closed() || restarts >= 20 {
                if !stop.is_cancelled() {
                    shared.logs.agent(format!(
                        "host dmesg window on {addr} closed: {}",
                        if board.is_closed() {
                            "the SSH link is gone".to_string()
                        } else {
                            String::from_utf8_lossy(&stderr).trim().to_string()
                        }
                    ));
                }
                return;
            }
            // `cat` ends on EPIPE when records were overwritten: read again.
            restarts += 1;
            ch = match board.spawn("exec cat /dev/kmsg").await {
                Ok(ch) => ch,
                Err(e) => {
                    shared
                        .logs
                        .agent(format!("host dmesg window on {addr} closed: {e}"));
                    return;
                }
            };
        }
    }))
}

#[cfg(test)]
mod marked_window_tests {
    use super::*;

    #[test]
    fn history_is_skipped_gaps_are_reported_and_rereads_are_deduplicated() {
        let mut w = MarkedWindow::new("MARK-1");
        assert!(w.line(b"6,10,100,-;old boot message").is_empty());
        assert!(w.line(b"12,11,200,-;armfleet MARK-1 opens").is_empty());
        assert_eq!(w.base_seq, Some(11));
        let items = w.line(b"3,12,300,-;kvm: something");
        assert!(
            matches!(&items[..], [KmsgItem::Record(r)] if r.seq == 12 && r.text == "kvm: something")
        );
        assert!(w.line(b" SUBSYSTEM=cpu").is_empty());
        // An overflow: the reader restarts and sees the ring again.
        assert!(w.line(b"6,12,300,-;kvm: something").is_empty());
        let items = w.line(b"6,15,400,-;later");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], KmsgItem::Missed { from: 13, to: 14 });
    }
}
