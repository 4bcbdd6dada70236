//! The host kernel log window of a job: `/dev/kmsg` read on this
//! machine, or the board's window (`crate::kmsg`) over SSH; every record
//! stored on the `host_dmesg` stream and checked for fatal findings.

use super::*;

pub(super) async fn start_kmsg(
    host: &Host,
    shared: &Arc<Shared>,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    if let Host::Ssh(board) = host {
        return crate::kmsg::start_board_window(board.clone(), shared.clone(), stop).await;
    }
    let logs = shared.logs.clone();
    let mut reader = match KmsgReader::open() {
        Ok(r) => r,
        Err(e) => {
            logs.agent(format!("host dmesg window unavailable: cannot read /dev/kmsg: {e} (host_dmesg stream stays empty)"));
            return None;
        }
    };
    logs.agent(format!(
        "host dmesg window opened at kernel sequence {}",
        reader.base_seq
    ));
    // The window is stored even when the host stays quiet, so a reader can
    // tell "nothing happened" from "not captured".
    logs.write(
        LogStream::HostDmesg,
        format!("armfleet: host kernel log window from /dev/kmsg sequence {} (numbers below are relative)\n", reader.base_seq).into_bytes(),
    );
    let shared = shared.clone();
    Some(tokio::spawn(async move {
        let base = reader.base_seq;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.cancelled() => true,
            };
            match reader.read_available() {
                Ok(items) => {
                    for item in items {
                        host_log_item(&shared, item, base);
                    }
                }
                Err(e) => {
                    shared
                        .logs
                        .agent(format!("host dmesg window: read error {e}; window closed"));
                    return;
                }
            }
            if last {
                return;
            }
        }
    }))
}

/// One item of the host kernel log window (this machine's or a board's):
/// a record, stored and checked for a fatal finding, or a gap, said aloud.
pub(crate) fn host_log_item(shared: &Shared, item: KmsgItem, base: u64) {
    match item {
        KmsgItem::Record(r) => host_log_record(shared, &r, base),
        KmsgItem::Missed { from, to } => {
            let line = format!(
                "MISSED {} records (#{}..#{}): overwritten in the kernel ring before they were read",
                to - from + 1,
                from - base,
                to - base
            );
            shared
                .logs
                .write(LogStream::HostDmesg, format!("{line}\n").into_bytes());
            shared.logs.agent(format!("host dmesg: {line}"));
        }
    }
}

fn host_log_record(shared: &Shared, r: &crate::kmsg::KmsgRecord, base: u64) {
    let line = r.format(base);
    shared
        .logs
        .write(LogStream::HostDmesg, format!("{line}\n").into_bytes());
    let idx = shared.logs.rings.push(LogStream::HostDmesg, line.clone());
    if let Some(reason) = (shared.detector)(LogStream::HostDmesg, &r.text) {
        let _ = shared.fatal_tx.send(Finding {
            stream: LogStream::HostDmesg,
            reason,
            line,
            idx: Some(idx),
            kind: FindingKind::Line,
        });
    }
}
