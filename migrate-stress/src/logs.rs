//! Log plumbing: one task owns per-stream buffers and forwards them to the
//! caller's event channel in chunks of at most [`MAX_CHUNK`] bytes, at least
//! every [`FLUSH_EVERY`]. Cycle records go through the same task, after the
//! logs written before them, so a consumer sees them in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use armfleet_protocol::{CycleRecord, LogStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::StressEvent;

pub const MAX_CHUNK: usize = 64 * 1024;
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

enum Msg {
    Data(LogStream, Vec<u8>),
    Cycle(CycleRecord),
    Environment(crate::RunEnvironment),
    Flush(oneshot::Sender<()>),
}

/// Cheap handle for writing logs; clone freely.
#[derive(Clone)]
pub struct Logs {
    tx: mpsc::UnboundedSender<Msg>,
    pub t0: Instant,
    pub rings: Arc<Rings>,
}

impl Logs {
    pub fn spawn(events: mpsc::Sender<StressEvent>) -> (Logs, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(logger(rx, events));
        (
            Logs {
                tx,
                t0: Instant::now(),
                rings: Arc::new(Rings::default()),
            },
            handle,
        )
    }

    pub fn write(&self, stream: LogStream, data: Vec<u8>) {
        if !data.is_empty() {
            let _ = self.tx.send(Msg::Data(stream, data));
        }
    }

    /// Seconds since job start, for prefixes.
    pub fn rel(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// A line on the `agent` stream: `[+12.345s] text`.
    pub fn agent(&self, text: impl AsRef<str>) {
        let line = format!("[+{:.3}s] {}\n", self.rel(), text.as_ref());
        tracing::debug!(target: "armfleet_migrate_stress", "{}", line.trim_end());
        self.write(LogStream::Agent, line.into_bytes());
    }

    pub fn cycle(&self, rec: CycleRecord) {
        let _ = self.tx.send(Msg::Cycle(rec));
    }

    /// Where the job runs, once decided.
    pub fn environment(&self, env: crate::RunEnvironment) {
        self.agent(format!(
            "environment: {} host, accel {}, {}",
            env.host.as_str(),
            env.accel,
            env.detail
        ));
        let _ = self.tx.send(Msg::Environment(env));
    }

    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn logger(mut rx: mpsc::UnboundedReceiver<Msg>, events: mpsc::Sender<StressEvent>) {
    let mut bufs: BTreeMap<LogStream, Vec<u8>> = BTreeMap::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Data(stream, data)) => {
                    let buf = bufs.entry(stream).or_default();
                    buf.extend_from_slice(&data);
                    while buf.len() >= MAX_CHUNK {
                        let rest = buf.split_off(MAX_CHUNK);
                        let chunk = std::mem::replace(buf, rest);
                        let _ = events.send(StressEvent::Log { stream, data: chunk }).await;
                    }
                }
                Some(Msg::Environment(env)) => {
                    let _ = events.send(StressEvent::Environment(env)).await;
                }
                Some(Msg::Cycle(rec)) => {
                    flush_all(&mut bufs, &events).await;
                    let _ = events.send(StressEvent::Cycle(rec)).await;
                }
                Some(Msg::Flush(ack)) => {
                    flush_all(&mut bufs, &events).await;
                    let _ = ack.send(());
                }
                None => {
                    flush_all(&mut bufs, &events).await;
                    return;
                }
            },
            _ = tick.tick() => flush_all(&mut bufs, &events).await,
        }
    }
}

async fn flush_all(bufs: &mut BTreeMap<LogStream, Vec<u8>>, events: &mpsc::Sender<StressEvent>) {
    for (stream, buf) in bufs.iter_mut() {
        while !buf.is_empty() {
            let n = buf.len().min(MAX_CHUNK);
            let rest = buf.split_off(n);
            let chunk = std::mem::replace(buf, rest);
            let _ = events
                .send(StressEvent::Log {
                    stream: *stream,
                    data: chunk,
                })
                .await;
        }
    }
}

/// Splits a byte stream into lines (without `\r`/`\n`), keeping a partial
/// tail across calls.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, data: &[u8], mut f: impl FnMut(String)) {
        for &b in data {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string();
                self.partial.clear();
                f(line);
            } else if self.partial.len() < 16 * 1024 {
                self.partial.push(b);
            }
        }
    }
    pub fn finish(&mut self, mut f: impl FnMut(String)) {
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&self.partial)
                .trim_end_matches('\r')
                .to_string();
            self.partial.clear();
            f(line);
        }
    }
}

const RING_LINES: usize = 600;

/// The recent lines of the line-oriented streams, for evidence.
#[derive(Default)]
pub struct Rings {
    inner: Mutex<BTreeMap<LogStream, Ring>>,
}

#[derive(Default)]
struct Ring {
    next: u64,
    lines: VecDeque<(u64, String)>,
}

impl Rings {
    /// Stores a line, returns its index within the stream.
    pub fn push(&self, stream: LogStream, line: String) -> u64 {
        let mut g = self.inner.lock().unwrap();
        let r = g.entry(stream).or_default();
        let idx = r.next;
        r.next += 1;
        r.lines.push_back((idx, line));
        if r.lines.len() > RING_LINES {
            r.lines.pop_front();
        }
        idx
    }

    /// Lines of `stream` with index in `[from, to]`.
    pub fn range(&self, stream: LogStream, from: u64, to: u64) -> Vec<String> {
        let g = self.inner.lock().unwrap();
        g.get(&stream)
            .map(|r| {
                r.lines
                    .iter()
                    .filter(|(i, _)| *i >= from && *i <= to)
                    .map(|(_, l)| l.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn tail(&self, stream: LogStream, n: usize) -> Vec<String> {
        let g = self.inner.lock().unwrap();
        g.get(&stream)
            .map(|r| {
                r.lines
                    .iter()
                    .rev()
                    .take(n)
                    .rev()
                    .map(|(_, l)| l.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_handles_partials_and_cr() {
        let mut s = LineSplitter::default();
        let mut out = vec![];
        s.push(b"ab", |l| out.push(l));
        s.push(b"c\r\nde\nf", |l| out.push(l));
        assert_eq!(out, vec!["abc", "de"]);
        s.finish(|l| out.push(l));
        assert_eq!(out, vec!["abc", "de", "f"]);
    }

    #[tokio::test]
    async fn chunks_are_bounded_and_ordered() {
        let (tx, mut rx) = mpsc::channel(1000);
        let (logs, h) = Logs::spawn(tx);
        let big = vec![b'x'; MAX_CHUNK * 2 + 10];
        logs.write(LogStream::GuestConsole, big.clone());
        logs.cycle(CycleRecord {
            cycle: 1,
            ..Default::default()
        });
        drop(logs);
        h.await.unwrap();
        let mut got = vec![];
        let mut saw_cycle = false;
        while let Ok(ev) = rx.try_recv() {
            match ev {
                StressEvent::Log { data, .. } => {
                    assert!(!saw_cycle, "log after the cycle record");
                    assert!(data.len() <= MAX_CHUNK);
                    got.extend(data);
                }
                StressEvent::Cycle(_) => saw_cycle = true,
                StressEvent::Environment(_) => {}
            }
        }
        assert!(saw_cycle);
        assert_eq!(got, big);
    }
}
