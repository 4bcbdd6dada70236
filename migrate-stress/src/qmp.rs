//! A small asynchronous QMP client over a UNIX socket (on this machine, or
//! on an SSH-driven board through a forwarded stream).
//!
//! * reads the greeting and negotiates `qmp_capabilities`,
//! * runs commands with numeric ids and a timeout each (responses are
//!   matched by id, so commands may overlap),
//! * delivers asynchronous events (`MIGRATION`, `STOP`, `RESUME`,
//!   `GUEST_PANICKED`, `SHUTDOWN`, ...) on a channel,
//! * reports every line said in either direction to a transcript callback.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};

use crate::host::{BoxStream, Host};
use tokio::sync::{mpsc, oneshot};

/// Direction of a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Sent to QEMU.
    Out,
    /// Received from QEMU.
    In,
    /// A note from the client (connect, disconnect).
    Note,
}

impl Dir {
    pub fn arrow(self) -> &'static str {
        match self {
            Dir::Out => "->",
            Dir::In => "<-",
            Dir::Note => "--",
        }
    }
}

/// Receives every line of the conversation.
pub type Transcript = Arc<dyn Fn(Dir, &str) + Send + Sync>;

#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
    /// QEMU's timestamp (seconds since the epoch), when present.
    pub timestamp: Option<f64>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum QmpError {
    #[error("QMP connect to {path}: {msg}")]
    Connect { path: String, msg: String },
    #[error("QMP I/O: {0}")]
    Io(String),
    #[error("QMP {cmd}: no answer within {ms} ms")]
    Timeout { cmd: String, ms: u64 },
    #[error("QMP {cmd} failed: {class}: {desc}")]
    Command {
        cmd: String,
        class: String,
        desc: String,
    },
    #[error("QMP connection closed")]
    Disconnected,
    #[error("QMP protocol: {0}")]
    Protocol(String),
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>;

struct Inner {
    writer: tokio::sync::Mutex<WriteHalf<BoxStream>>,
    pending: Pending,
    next_id: AtomicU64,
    closed: AtomicBool,
    transcript: Transcript,
}

/// A connected QMP session. Cloning shares the session.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

impl Qmp {
    /// Connects to a socket on this machine (retrying until `timeout` while
    /// it does not exist yet), reads the greeting and enters command mode.
    pub async fn connect(
        path: &Path,
        transcript: Transcript,
        timeout: Duration,
    ) -> Result<(Qmp, mpsc::UnboundedReceiver<QmpEvent>), QmpError> {
        Qmp::connect_on(&Host::Local, &path.to_string_lossy(), transcript, timeout).await
    }

    /// The same on the job's host.
    pub async fn connect_on(
        host: &Host,
        path: &str,
        transcript: Transcript,
        timeout: Duration,
    ) -> Result<(Qmp, mpsc::UnboundedReceiver<QmpEvent>), QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = host
            .connect_unix(path, timeout)
            .await
            .map_err(|e| QmpError::Connect {
                path: path.to_string(),
                msg: e.to_string(),
            })?;
        transcript(Dir::Note, &format!("connected to {path}"));
        let (rd, wr) = tokio::io::split(stream);
        let mut lines = BufReader::new(rd).lines();
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let greeting = match tokio::time::timeout(left, lines.next_line()).await {
            Err(_) => {
                return Err(QmpError::Timeout {
                    cmd: "greeting".into(),
                    ms: left.as_millis() as u64,
                });
            }
            Ok(Err(e)) => return Err(QmpError::Io(e.to_string())),
            Ok(Ok(None)) => return Err(QmpError::Disconnected),
            Ok(Ok(Some(l))) => l,
        };
        transcript(Dir::In, &greeting);
        let v: Value = serde_json::from_str(&greeting)
            .map_err(|e| QmpError::Protocol(format!("greeting: {e}")))?;
        if v.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "not a QMP greeting: {greeting}"
            )));
        }
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(wr),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            transcript,
        });
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        tokio::spawn(reader(lines, inner.clone(), ev_tx));
        let qmp = Qmp { inner };
        // The caller's deadline: a QEMU starting on a loaded (or emulated)
        // host may greet and then take seconds to answer.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        qmp.execute("qmp_capabilities", None, left).await?;
        Ok((qmp, ev_rx))
    }

    /// Runs one command; `Ok` carries the `return` value.
    pub async fn execute(
        &self,
        cmd: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(QmpError::Disconnected);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let mut msg = json!({ "execute": cmd, "id": id });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let line = msg.to_string();
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().unwrap().insert(id, tx);
        (self.inner.transcript)(Dir::Out, &line);
        let write = async {
            let mut w = self.inner.writer.lock().await;
            w.write_all(line.as_bytes()).await?;
            w.write_all(b"\n").await?;
            w.flush().await
        };
        if let Err(e) = tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))
            .and_then(|r| r)
        {
            self.inner.pending.lock().unwrap().remove(&id);
            return Err(QmpError::Io(e.to_string()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.inner.pending.lock().unwrap().remove(&id);
                (self.inner.transcript)(
                    Dir::Note,
                    &format!(
                        "id {id} ({cmd}): no answer within {} ms",
                        timeout.as_millis()
                    ),
                );
                Err(QmpError::Timeout {
                    cmd: cmd.to_string(),
                    ms: timeout.as_millis() as u64,
                })
            }
            Ok(Err(_)) => Err(QmpError::Disconnected),
            Ok(Ok(Err(QmpError::Command { class, desc, .. }))) => Err(QmpError::Command {
                cmd: cmd.to_string(),
                class,
                desc,
            }),
            Ok(Ok(r)) => r,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }
}

async fn reader(
    mut lines: tokio::io::Lines<BufReader<ReadHalf<BoxStream>>>,
    inner: Arc<Inner>,
    events: mpsc::UnboundedSender<QmpEvent>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => {
                (inner.transcript)(Dir::Note, "connection closed by QEMU");
                break;
            }
            Err(e) => {
                (inner.transcript)(Dir::Note, &format!("read error: {e}"));
                break;
            }
        };
        (inner.transcript)(Dir::In, &line);
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                (inner.transcript)(Dir::Note, &format!("unparsable line: {e}"));
                continue;
            }
        };
        if let Some(name) = v.get("event").and_then(Value::as_str) {
            let ts = v.get("timestamp").and_then(|t| {
                Some(t.get("seconds")?.as_f64()? + t.get("microseconds")?.as_f64()? / 1e6)
            });
            let _ = events.send(QmpEvent {
                name: name.to_string(),
                data: v.get("data").cloned().unwrap_or(Value::Null),
                timestamp: ts,
            });
            continue;
        }
        let Some(id) = v.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let Some(tx) = inner.pending.lock().unwrap().remove(&id) else {
            continue;
        };
        let r = if let Some(ret) = v.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = v.get("error") {
            Err(QmpError::Command {
                cmd: String::new(),
                class: err
                    .get("class")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string(),
                desc: err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string(),
            })
        } else {
            Err(QmpError::Protocol(format!(
                "neither return nor error: {line}"
            )))
        };
        let _ = tx.send(r);
    }
    inner.closed.store(true, Ordering::SeqCst);
    let pending: Vec<_> = inner.pending.lock().unwrap().drain().collect();
    for (_, tx) in pending {
        let _ = tx.send(Err(QmpError::Disconnected));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QEMU: greeting, answers commands, emits an event, answers a
    /// second command out of order.
    #[tokio::test]
    async fn greeting_commands_events_transcript() {
        let dir = std::env::temp_dir().join(format!("qmp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut lines = BufReader::new(rd).lines();
            wr.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            while let Ok(Some(l)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&l).unwrap();
                let id = v["id"].clone();
                match v["execute"].as_str().unwrap() {
                    "query-status" => {
                        wr.write_all(b"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 5}}\n")
                            .await
                            .unwrap();
                        let r = json!({"return": {"status": "running"}, "id": id});
                        wr.write_all(format!("{r}\n").as_bytes()).await.unwrap();
                    }
                    "bad" => {
                        let r =
                            json!({"error": {"class": "GenericError", "desc": "nope"}, "id": id});
                        wr.write_all(format!("{r}\n").as_bytes()).await.unwrap();
                    }
                    "never" => {}
                    _ => {
                        let r = json!({"return": {}, "id": id});
                        wr.write_all(format!("{r}\n").as_bytes()).await.unwrap();
                    }
                }
            }
        });
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let l2 = log.clone();
        let t: Transcript =
            Arc::new(move |d, s| l2.lock().unwrap().push(format!("{} {}", d.arrow(), s)));
        let (q, mut ev) = Qmp::connect(&path, t, Duration::from_secs(2))
            .await
            .unwrap();
        let r = q
            .execute("query-status", None, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(r["status"], "running");
        let e = ev.recv().await.unwrap();
        assert_eq!(e.name, "STOP");
        assert_eq!(e.timestamp, Some(1.000005));
        let err = q
            .execute("bad", None, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(err, QmpError::Command { ref desc, .. } if desc == "nope"),
            "{err:?}"
        );
        let err = q
            .execute("never", None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }));
        let t = log.lock().unwrap().join("\n");
        assert!(t.contains("-> {\"execute\":\"qmp_capabilities\""), "{t}");
        assert!(t.contains("<- {\"event\": \"STOP\""), "{t}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
