//! One QEMU of a job as the driver sees it: its process, QMP session and
//! console, and the tasks that read the console and forward QMP events.

use super::*;

#[derive(Debug, Clone, Default)]
pub(super) struct ConsoleStatus {
    pub(super) ready: bool,
    pub(super) dirty_ready: bool,
    pub(super) heartbeats: u64,
    pub(super) last_hb: Option<u64>,
}

/// One QEMU with its QMP session and console.
pub(super) struct Vm {
    pub(super) name: String,
    pub(super) proc: QemuProc,
    pub(super) qmp: Qmp,
    pub(super) console_w: Arc<tokio::sync::Mutex<WriteHalf<BoxStream>>>,
    pub(super) console: watch::Receiver<ConsoleStatus>,
    pub(super) events: Arc<Mutex<Vec<String>>>,
    /// `unix:DIR/mN.sock` for a destination.
    pub(super) uri: Option<String>,
}

impl Vm {
    pub(super) async fn send_console(&self, text: &str) -> std::io::Result<()> {
        let mut w = self.console_w.lock().await;
        w.write_all(text.as_bytes()).await?;
        w.flush().await
    }
    pub(super) fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

/// Reads one VM's console until QEMU closes it. Holds a reference to the
/// write half: dropping the last one shuts the socket down for writing,
/// and QEMU then drops the whole connection — losing the rest of e.g. a
/// panic trace. So the write half lives exactly as long as the reader.
pub(super) async fn console_reader(
    mut rd: ReadHalf<BoxStream>,
    _keep_writer: Arc<tokio::sync::Mutex<WriteHalf<BoxStream>>>,
    shared: Arc<Shared>,
    status: watch::Sender<ConsoleStatus>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut split = LineSplitter::default();
    let mut handle = |line: String| console_line(&shared, &status, line);
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                shared
                    .logs
                    .write(LogStream::GuestConsole, buf[..n].to_vec());
                split.push(&buf[..n], &mut handle);
            }
        }
    }
    split.finish(&mut handle);
}

fn console_line(shared: &Arc<Shared>, status: &watch::Sender<ConsoleStatus>, line: String) {
    let idx = shared
        .logs
        .rings
        .push(LogStream::GuestConsole, line.clone());
    if let Some(pos) = line.find("ARMFLEET-HB ") {
        let n = line[pos + 12..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok());
        status.send_modify(|s| {
            s.heartbeats += 1;
            s.last_hb = n;
        });
    } else if line.contains("ARMFLEET-GUEST-READY") {
        status.send_modify(|s| s.ready = true);
    } else if line.contains("ARMFLEET-DIRTY-READY") {
        status.send_modify(|s| s.dirty_ready = true);
    }
    if let Some(reason) = (shared.detector)(LogStream::GuestConsole, &line) {
        let _ = shared.fatal_tx.send(Finding {
            stream: LogStream::GuestConsole,
            reason,
            line,
            idx: Some(idx),
            kind: FindingKind::Line,
        });
    }
}

pub(super) async fn event_forwarder(
    mut rx: mpsc::UnboundedReceiver<QmpEvent>,
    name: String,
    shared: Arc<Shared>,
    out: Arc<Mutex<Vec<String>>>,
) {
    while let Some(ev) = rx.recv().await {
        let text = format!("+{:.3}s {name} {} {}", shared.logs.rel(), ev.name, ev.data);
        out.lock().unwrap().push(text.clone());
        if ev.name == "GUEST_PANICKED" {
            let _ = shared.fatal_tx.send(Finding {
                stream: LogStream::Qmp,
                reason: "GUEST_PANICKED event (pvpanic)".into(),
                line: text,
                idx: None,
                kind: FindingKind::GuestPanicked,
            });
        }
    }
}
