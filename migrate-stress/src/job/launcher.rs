//! Starting QEMUs for a job: the source and each destination, with their
//! console and QMP connected and migration configured.

use super::*;
use crate::ssh_board::shell_quote;

/// Starts QEMUs; cheap to clone into a task (destinations are pre-started
/// in the background while the previous cycle holds its migration).
#[derive(Clone)]
pub(super) struct Launcher {
    pub(super) binary: PathBuf,
    pub(super) profile: VmProfile,
    pub(super) qmp_timeout: Duration,
    pub(super) shared: Arc<Shared>,
    pub(super) host: Host,
    /// The job's scratch directory on `host`.
    pub(super) dir: Arc<String>,
    pub(super) bandwidth_mib_s: u64,
    pub(super) downtime_limit_ms: u64,
}

impl Launcher {
    /// Spawns a QEMU, connects its console and QMP, configures migration.
    pub(super) async fn start_vm(&self, index: u32, incoming: bool) -> Result<Vm, String> {
        let name = format!("vm{index}");
        let qmp_sock = PathBuf::from(format!("{}/q{index}.sock", self.dir));
        let con_sock = PathBuf::from(format!("{}/c{index}.sock", self.dir));
        let pidfile = format!("{}/vm{index}.pid", self.dir);
        let args = self.profile.args(&Instance {
            name: &name,
            qmp_socket: &qmp_sock,
            console_socket: &con_sock,
            incoming,
        });
        let role = if incoming { ROLE_DEST } else { ROLE_SOURCE };
        let t0 = Instant::now();
        self.shared.logs.agent(format!(
            "{name}: starting {} {}",
            if incoming { "destination" } else { "source" },
            std::iter::once(self.binary.display().to_string())
                .chain(args.iter().map(|a| shell_quote(&a.to_string_lossy())))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let proc = QemuProc::spawn(
            &self.host,
            &self.binary,
            &args,
            &pidfile,
            &name,
            role,
            &self.shared,
        )
        .await
        .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let died = |proc: &QemuProc, what: &str| {
            format!(
                "{name} exited before {what} ({}); stderr: {}",
                proc.exited().unwrap_or_default(),
                proc.stderr_tail(8).join(" | ")
            )
        };

        // Console first: QEMU waits for it (wait=on) before doing anything else.
        let connect_timeout = Duration::from_secs(20) * self.host.slowdown();
        let con_path = con_sock.to_string_lossy().into_owned();
        let mut exit_w = proc.exit_watch();
        let stream = tokio::select! {
            r = self.host.connect_unix(&con_path, connect_timeout) => match r {
                Ok(s) => s,
                Err(e) => {
                    proc.kill();
                    return Err(format!("{name}: console socket {con_path} not connectable: {e}"));
                }
            },
            _ = async { let _ = exit_w.wait_for(|e| e.is_some()).await; } => {
                // let stderr drain
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(died(&proc, "its console socket appeared"));
            }
        };
        let (rd, wr) = tokio::io::split(stream);
        let console_w = Arc::new(tokio::sync::Mutex::new(wr));
        let (st_tx, st_rx) = watch::channel(ConsoleStatus::default());
        let h = tokio::spawn(console_reader(
            rd,
            console_w.clone(),
            self.shared.clone(),
            st_tx,
        ));
        self.shared.track(h);

        let logs = self.shared.logs.clone();
        let n2 = name.clone();
        let transcript: Transcript = Arc::new(move |dir: Dir, line: &str| {
            logs.write(
                LogStream::Qmp,
                format!("+{:.3} {n2} {} {line}\n", logs.rel(), dir.arrow()).into_bytes(),
            );
        });
        exit_w = proc.exit_watch();
        let qmp_path = qmp_sock.to_string_lossy().into_owned();
        let (qmp, ev_rx) = tokio::select! {
            r = Qmp::connect_on(&self.host, &qmp_path, transcript, connect_timeout) => match r {
                Ok(x) => x,
                Err(e) => {
                    // QMP trouble is usually QEMU dying during start-up: say why.
                    if proc.wait_exit(Duration::from_millis(300)).await.is_some() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return Err(format!("{} ({e})", died(&proc, "QMP answered")));
                    }
                    proc.kill();
                    return Err(format!("{name}: {e}"));
                }
            },
            _ = async { let _ = exit_w.wait_for(|e| e.is_some()).await; } => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(died(&proc, "QMP answered"));
            }
        };
        let events = Arc::new(Mutex::new(vec![]));
        let h = tokio::spawn(event_forwarder(
            ev_rx,
            name.clone(),
            self.shared.clone(),
            events.clone(),
        ));
        self.shared.track(h);

        let vm = Vm {
            name: name.clone(),
            proc,
            qmp,
            console_w,
            console: st_rx,
            events,
            uri: None,
        };
        let setup = async {
            vm.qmp
                .execute(
                    "migrate-set-capabilities",
                    Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
                    self.qmp_timeout,
                )
                .await?;
            self.set_cycle_params(&vm.qmp).await
        };
        if let Err(e) = setup.await {
            vm.proc.kill();
            return Err(format!("{name}: configuring migration: {e}"));
        }
        self.shared.logs.agent(format!(
            "{name}: pid {}, QMP ready after {:.0} ms",
            vm.proc.pid,
            ms(t0.elapsed())
        ));
        Ok(vm)
    }

    /// Migration parameters that keep a cancel cycle in the dirty-logging
    /// (pre-copy) phase: capped bandwidth, tiny downtime limit.
    pub(super) async fn set_cycle_params(&self, qmp: &Qmp) -> Result<Value, QmpError> {
        let mut p = json!({ "downtime-limit": self.downtime_limit_ms });
        if self.bandwidth_mib_s > 0 {
            p["max-bandwidth"] = json!(self.bandwidth_mib_s * MIB);
        }
        qmp.execute("migrate-set-parameters", Some(p), self.qmp_timeout)
            .await
    }

    pub(super) async fn start_dest(&self, index: u32) -> Result<Vm, Stop> {
        let mut vm = self
            .start_vm(index, true)
            .await
            .map_err(|e| Stop::Infra(format!("destination failed to start: {e}")))?;
        let mut last_err = String::new();
        for attempt in 0..3 {
            // A UNIX socket in the job's directory: no port to pick, on
            // this machine or on a board.
            let uri = format!("unix:{}/m{index}-{attempt}.sock", self.dir);
            match vm
                .qmp
                .execute(
                    "migrate-incoming",
                    Some(json!({ "uri": uri })),
                    self.qmp_timeout,
                )
                .await
            {
                Ok(_) => {
                    vm.uri = Some(uri);
                    return Ok(vm);
                }
                Err(e @ QmpError::Command { .. }) => last_err = e.to_string(),
                Err(e) => {
                    last_err = e.to_string();
                    break;
                }
            }
        }
        vm.proc.set_role(ROLE_RETIRED);
        vm.proc.kill();
        Err(Stop::Infra(format!(
            "destination failed to start: {}: migrate-incoming: {last_err}",
            vm.name
        )))
    }
}
