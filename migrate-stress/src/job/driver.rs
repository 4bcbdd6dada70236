//! Driving a job's cycles: migrate, hold, cancel (or complete, for a
//! ping-pong cycle), check the guest, record the cycle.

use super::*;

pub(super) struct Driver<'a> {
    pub(super) params: MigrateCancelParams,
    pub(super) plan: &'a Plan,
    pub(super) shared: Arc<Shared>,
    pub(super) progress: Arc<Progress>,
    /// The seeded hold of each cycle (`MigrateCancelParams::delay_schedule`,
    /// which the job's reproducer replays too).
    pub(super) delays: Vec<u64>,
    pub(super) vm_counter: u32,
    pub(super) dest_failures_in_a_row: u32,
    /// Start the next cycle's destination during this cycle's hold.
    pub(super) prespawn: bool,
    pub(super) next_dest: Option<JoinHandle<Result<Vm, Stop>>>,
    pub(super) launcher: Launcher,
    pub(super) hooks: crate::FaultHooks,
    pub(super) host: Host,
    pub(super) stage2: Option<Arc<crate::stage2::Stage2Probes>>,
    /// The path counters right after this cycle's cancel.
    pub(super) after_cancel: Option<crate::stage2::Snapshot>,
}

impl Driver<'_> {
    fn logs(&self) -> &Logs {
        &self.shared.logs
    }

    fn snap(&self, rec: &CycleRecord) {
        *self.progress.partial.lock().unwrap() = Some(rec.clone());
    }

    pub(super) async fn run(mut self) -> Result<u32, Stop> {
        let boot_t0 = Instant::now();
        let mut src = self
            .start_vm(false)
            .await
            .map_err(|e| Stop::Infra(format!("source QEMU failed to start: {e}")))?;
        self.wait_boot(&src).await?;
        self.logs().agent(format!(
            "{}: guest ready, workload filled, after {:.0} ms",
            src.name,
            ms(boot_t0.elapsed())
        ));
        let mut before = self.stage2_snapshot().await;
        for n in 1..=self.params.cycles {
            self.progress.current.store(n, Ordering::SeqCst);
            *self.progress.current_started.lock().unwrap() = Some(Instant::now());
            let pingpong = self.params.complete_every > 0 && n % self.params.complete_every == 0;
            let mut rec = if pingpong {
                self.pingpong_cycle(n, &mut src).await?
            } else {
                self.cancel_cycle(n, &mut src).await?
            };
            sort_events(&mut rec.events);
            let end = self.stage2_snapshot().await;
            let mid = self.after_cancel.take();
            if let (Some(p), Some(b), Some(e)) = (&self.stage2, &before, &end) {
                rec.path = Some(p.counters(b, mid.as_ref(), e));
            }
            before = end;
            self.logs().agent(format!(
                "cycle {n}: {} delay {} ms, reached {}, final {}, {} MiB sent, cancel->cancelled {}, progress {}, wall {:.0} ms{}",
                rec.action,
                rec.delay_ms,
                rec.state_reached,
                rec.final_state,
                rec.bytes_transferred / MIB,
                rec.cancel_to_cancelled_ms.map(|v| format!("{v:.1} ms")).unwrap_or("-".into()),
                rec.guest_progress_ms.map(|v| format!("{v:.0} ms")).unwrap_or("-".into()),
                rec.wall_ms,
                if rec.resumed_paused_source { ", RESUMED PAUSED SOURCE" } else { "" }
            ));
            if let Some(p) = &rec.path {
                let v =
                    |x: Option<u64>| x.map(|n| n.to_string()).unwrap_or_else(|| "unknown".into());
                self.logs().agent(format!(
                    "cycle {n}: stage-2 path: {} page maps, {} block maps ({} after the cancel), {} permission faults, {} memslot changes",
                    v(p.page_maps),
                    v(p.block_maps),
                    v(p.block_maps_after_cancel),
                    v(p.perm_faults),
                    v(p.memslot_changes)
                ));
            }
            self.logs().cycle(rec);
            self.progress.completed.store(n, Ordering::SeqCst);
            *self.progress.partial.lock().unwrap() = None;
        }
        // Orderly end: the source is torn down by the job's cleanup.
        src.proc.set_role(ROLE_RETIRED);
        Ok(self.params.cycles)
    }

    async fn stage2_snapshot(&self) -> Option<crate::stage2::Snapshot> {
        match &self.stage2 {
            Some(p) => p.read(&self.host).await,
            None => None,
        }
    }

    async fn qmp(&self, vm: &Vm, cmd: &str, args: Option<Value>) -> Result<Value, Stop> {
        vm.qmp
            .execute(cmd, args, self.plan.qmp_timeout)
            .await
            .map_err(|e| Stop::Infra(format!("{}: {e}", vm.name)))
    }

    async fn query_migrate(&self, vm: &Vm) -> Result<Value, Stop> {
        self.qmp(vm, "query-migrate", None).await
    }

    async fn start_vm(&mut self, incoming: bool) -> Result<Vm, String> {
        self.vm_counter += 1;
        self.launcher.start_vm(self.vm_counter, incoming).await
    }

    async fn start_dest(&mut self) -> Result<Vm, Stop> {
        self.vm_counter += 1;
        self.launcher.start_dest(self.vm_counter).await
    }

    /// Starts the next destination in the background.
    fn prestart_dest(&mut self) {
        self.vm_counter += 1;
        let l = self.launcher.clone();
        let index = self.vm_counter;
        self.next_dest = Some(tokio::spawn(async move { l.start_dest(index).await }));
    }

    async fn set_cycle_params(&self, qmp: &Qmp) -> Result<Value, QmpError> {
        self.launcher.set_cycle_params(qmp).await
    }

    /// The pre-started destination if it is still alive, else a new one.
    async fn take_dest(&mut self, rec: &mut CycleRecord) -> Result<Vm, Stop> {
        if let Some(h) = self.next_dest.take() {
            let d = h
                .await
                .map_err(|e| Stop::Infra(format!("destination start task: {e}")))??;
            match d.proc.exited() {
                None => return Ok(d),
                Some(exit) => {
                    note(
                        &self.shared,
                        rec,
                        format!(
                            "pre-started destination {} had exited ({exit}); starting another",
                            d.name
                        ),
                    );
                    self.retire(d, rec);
                }
            }
        }
        self.start_dest().await
    }

    async fn wait_boot(&self, vm: &Vm) -> Result<(), Stop> {
        let mut rx = vm.console.clone();
        let t = self.plan.boot_timeout;
        let tail = || {
            self.logs()
                .rings
                .tail(LogStream::GuestConsole, 15)
                .join(" | ")
        };
        if tokio::time::timeout(t, rx.wait_for(|s| s.ready))
            .await
            .is_err()
        {
            return Err(Stop::Infra(format!(
                "guest on {} did not print ARMFLEET-GUEST-READY within {} s (is the initrd an armfleet guest?); console tail: {}",
                vm.name,
                t.as_secs(),
                tail()
            )));
        }
        if self.params.dirty_percent > 0
            && tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|s| s.dirty_ready))
                .await
                .is_err()
        {
            return Err(Stop::Infra(format!(
                "guest workload on {} did not finish its first fill (ARMFLEET-DIRTY-READY) within 120 s; console tail: {}",
                vm.name,
                tail()
            )));
        }
        if tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.heartbeats > 0))
            .await
            .is_err()
        {
            return Err(Stop::Infra(format!(
                "guest on {} prints no heartbeat; console tail: {}",
                vm.name,
                tail()
            )));
        }
        Ok(())
    }

    /// Polls `query-migrate` every `every` until `done(status)`.
    async fn poll_migrate(
        &self,
        vm: &Vm,
        every: Duration,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<(Value, bool), Stop> {
        let deadline = Instant::now() + timeout;
        loop {
            let q = self.query_migrate(vm).await?;
            if done(&status_of(&q)) {
                return Ok((q, true));
            }
            if Instant::now() >= deadline {
                return Ok((q, false));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The one way a cycle starts its migration: `migrate` to the
    /// destination's URI, then polled until it has left `setup`, the state
    /// it reached recorded.
    async fn start_migration(
        &self,
        src: &Vm,
        dst: &Vm,
        rec: &mut CycleRecord,
        how: &str,
    ) -> Result<(), Stop> {
        let uri = dst.uri.clone().unwrap_or_default();
        note(
            &self.shared,
            rec,
            format!("{} -> {} via {uri}{how}", src.name, dst.name),
        );
        self.qmp(src, "migrate", Some(json!({ "uri": uri })))
            .await?;
        let (q, _) = self
            .poll_migrate(
                src,
                Duration::from_millis(5),
                Duration::from_secs(20),
                |s| s != "setup" && s != "none",
            )
            .await?;
        rec.state_reached = status_of(&q);
        Ok(())
    }

    fn fill_stats(rec: &mut CycleRecord, q: &Value) {
        let ram = &q["ram"];
        if let Some(b) = ram.get("transferred").and_then(Value::as_u64) {
            rec.bytes_transferred = b;
        }
        // QEMU reports 0 until its first dirty-rate measurement (~1 s in).
        rec.dirty_pages_rate = ram
            .get("dirty-pages-rate")
            .and_then(Value::as_u64)
            .filter(|r| *r > 0);
    }

    /// Fault injection (`inject_guest_panic_after = N`,
    /// `inject_guest_corruption_after = N`): in cycle N+1, while the
    /// migration is active, the guest is told to panic (sysrq-c) or its
    /// workload to flip a bit it wrote. The cycle then waits for the
    /// finding, so the failure is attributed to exactly this cycle (the job
    /// ends through the fatal-finding path).
    async fn maybe_inject_fault(
        &self,
        n: u32,
        src: &Vm,
        rec: &mut CycleRecord,
    ) -> Result<(), Stop> {
        let command = if self.params.inject_guest_panic_after == Some(n - 1) {
            "ARMFLEET-PANIC"
        } else if self.params.inject_guest_corruption_after == Some(n - 1) {
            "ARMFLEET-CORRUPT"
        } else {
            return Ok(());
        };
        self.logs().agent(format!(
            "fault injection: {command} to the guest on {} (cycle {n}, after {} completed cycles)",
            src.name,
            n - 1
        ));
        if let Err(e) = src.send_console(&format!("{command}\n")).await {
            return Err(Stop::Infra(format!(
                "fault injection: console write to {}: {e}",
                src.name
            )));
        }
        note(
            &self.shared,
            rec,
            format!("fault injection: {command} sent to the guest console"),
        );
        self.snap(rec);
        tokio::time::sleep(Duration::from_secs(60) * self.host.slowdown()).await;
        Err(Stop::Infra(format!(
            "fault injection: no finding from the guest on {} within 60 s of {command}",
            src.name
        )))
    }

    async fn cancel_cycle(&mut self, n: u32, src: &mut Vm) -> Result<CycleRecord, Stop> {
        let t0 = Instant::now();
        let mut rec = CycleRecord {
            cycle: n,
            action: "cancel".into(),
            delay_ms: self.delays.get(n as usize - 1).copied().unwrap_or_default(),
            ..Default::default()
        };
        self.snap(&rec);
        let dst = self.take_dest(&mut rec).await?;
        self.start_migration(src, &dst, &mut rec, "").await?;
        self.snap(&rec);

        let mut status = rec.state_reached.clone();
        if is_in_progress(&status) {
            self.maybe_inject_fault(n, src, &mut rec).await?;
            self.snap(&rec);
            if self.prespawn && n < self.params.cycles && self.next_dest.is_none() {
                // The next destination starts while this migration is held
                // (in the background: the hold stays exactly delay_ms).
                self.prestart_dest();
            }
            tokio::time::sleep(Duration::from_millis(rec.delay_ms)).await;
            if self.hooks.pause_source_before_cancel.contains(&n) {
                note(
                    &self.shared,
                    &mut rec,
                    format!(
                        "fault hook: stopping source {} before the cancel (trap 2)",
                        src.name
                    ),
                );
                self.qmp(src, "stop", None).await?;
            }
            let q = self.query_migrate(src).await?;
            status = status_of(&q);
            rec.state_reached = status.clone();
            Self::fill_stats(&mut rec, &q);
        }

        let completed;
        if is_in_progress(&status) {
            let tc = Instant::now();
            self.qmp(src, "migrate_cancel", None).await?;
            let (q, done) = self
                .poll_migrate(
                    src,
                    Duration::from_millis(2),
                    Duration::from_secs(15),
                    |s| matches!(s, "cancelled" | "failed" | "completed"),
                )
                .await?;
            let s = status_of(&q);
            if !done {
                return Err(Stop::Infra(format!(
                    "{}: migration still '{s}' 15 s after migrate_cancel",
                    src.name
                )));
            }
            rec.cancel_to_cancelled_ms = Some(ms(tc.elapsed()));
            if let Some(b) = q["ram"].get("transferred").and_then(Value::as_u64) {
                rec.bytes_transferred = rec.bytes_transferred.max(b);
            }
            rec.final_state = s.clone();
            completed = s == "completed";
        } else {
            rec.final_state = status.clone();
            completed = status == "completed";
        }
        self.snap(&rec);
        self.after_cancel = self.stage2_snapshot().await;

        if rec.final_state == "failed" {
            // Most likely the destination died mid-migration.
            let why = match dst.proc.wait_exit(Duration::from_millis(300)).await {
                Some(exit) => format!(
                    "destination {} exited during the migration ({exit})",
                    dst.name
                ),
                None => format!("migration failed; destination {} still running", dst.name),
            };
            note(&self.shared, &mut rec, why.clone());
            self.logs().agent(format!("cycle {n}: {why}"));
            self.dest_failures_in_a_row += 1;
            if self.dest_failures_in_a_row >= MAX_DEST_FAILURES_IN_A_ROW {
                return Err(Stop::Infra(format!(
                    "{} migrations in a row failed on the destination side (last: {why})",
                    self.dest_failures_in_a_row
                )));
            }
        } else {
            self.dest_failures_in_a_row = 0;
        }

        let mut dst = dst;
        if completed {
            note(
                &self.shared,
                &mut rec,
                format!(
                    "migration completed before the cancel took effect; {} is now the source",
                    dst.name
                ),
            );
            self.logs().agent(format!(
                "cycle {n}: migration completed (cancel too late); switching source to {}",
                dst.name
            ));
            std::mem::swap(src, &mut dst);
            src.proc.set_role(ROLE_SOURCE);
            self.ensure_dest_running(src, &mut rec).await?;
        }
        // The (old) destination goes away now, in the background.
        self.retire(dst, &mut rec);

        let mark = Instant::now();
        self.ensure_running(src, &mut rec).await?;
        self.check_progress(src, &mut rec, mark).await?;
        if self.params.dwell_after_cancel_ms > 0 {
            // The guest keeps writing to what dirty logging left mapped by
            // pages; these faults are where KVM re-installs blocks.
            tokio::time::sleep(Duration::from_millis(self.params.dwell_after_cancel_ms)).await;
        }
        rec.events.extend(src.take_events());
        rec.wall_ms = ms(t0.elapsed());
        Ok(rec)
    }

    async fn pingpong_cycle(&mut self, n: u32, src: &mut Vm) -> Result<CycleRecord, Stop> {
        let t0 = Instant::now();
        let mut rec = CycleRecord {
            cycle: n,
            action: "pingpong".into(),
            ..Default::default()
        };
        self.snap(&rec);
        let dst = self.take_dest(&mut rec).await?;
        // Let it converge: no bandwidth cap, generous downtime.
        self.qmp(
            src,
            "migrate-set-parameters",
            Some(json!({"max-bandwidth": 1u64 << 40, "downtime-limit": 2000})),
        )
        .await?;
        self.maybe_inject_fault(n, src, &mut rec).await?;
        self.start_migration(src, &dst, &mut rec, " (complete, ping-pong)")
            .await?;
        let (mut q, mut done) = self
            .poll_migrate(
                src,
                Duration::from_millis(20),
                Duration::from_secs(10),
                |s| matches!(s, "completed" | "failed" | "cancelled"),
            )
            .await?;
        if !done {
            note(
                &self.shared,
                &mut rec,
                "did not converge in 10 s: paused the source to force completion",
            );
            self.qmp(src, "stop", None).await?;
            (q, done) = self
                .poll_migrate(
                    src,
                    Duration::from_millis(20),
                    Duration::from_secs(30),
                    |s| matches!(s, "completed" | "failed" | "cancelled"),
                )
                .await?;
            if !done {
                return Err(Stop::Infra(format!(
                    "{}: forced migration did not complete in 30 s",
                    src.name
                )));
            }
        }
        Self::fill_stats(&mut rec, &q);
        rec.final_state = status_of(&q);
        self.snap(&rec);
        let mut dst = dst;
        let mark;
        if rec.final_state == "completed" {
            self.dest_failures_in_a_row = 0;
            std::mem::swap(src, &mut dst);
            src.proc.set_role(ROLE_SOURCE);
            // `dst` is now the old source (postmigrate).
            dst.proc.set_role(ROLE_RETIRED);
            let _ = dst.qmp.execute("quit", None, Duration::from_secs(2)).await;
            self.retire(dst, &mut rec);
            mark = Instant::now();
            self.ensure_dest_running(src, &mut rec).await?;
        } else {
            let why = match dst.proc.wait_exit(Duration::from_millis(300)).await {
                Some(exit) => format!(
                    "destination {} exited during the migration ({exit})",
                    dst.name
                ),
                None => format!(
                    "migration {}; destination {} still running",
                    rec.final_state, dst.name
                ),
            };
            note(&self.shared, &mut rec, why.clone());
            self.dest_failures_in_a_row += 1;
            self.retire(dst, &mut rec);
            if self.dest_failures_in_a_row >= MAX_DEST_FAILURES_IN_A_ROW {
                return Err(Stop::Infra(format!(
                    "{} migrations in a row failed on the destination side (last: {why})",
                    self.dest_failures_in_a_row
                )));
            }
            // Restore the cycle parameters on the source we keep.
            self.set_cycle_params(&src.qmp)
                .await
                .map_err(|e| Stop::Infra(e.to_string()))?;
            mark = Instant::now();
            self.ensure_running(src, &mut rec).await?;
        }
        self.check_progress(src, &mut rec, mark).await?;
        rec.events.extend(src.take_events());
        rec.wall_ms = ms(t0.elapsed());
        Ok(rec)
    }

    /// After a completed migration the destination should run by itself
    /// (the source was running); resume it if it did not.
    async fn ensure_dest_running(&self, vm: &Vm, rec: &mut CycleRecord) -> Result<(), Stop> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = self.qmp(vm, "query-status", None).await?;
            let s = status_of(&st);
            if s == "running" {
                return Ok(());
            }
            if s == "paused" || Instant::now() >= deadline {
                note(
                    &self.shared,
                    rec,
                    format!(
                        "new source {} was '{s}' after completion; sent cont",
                        vm.name
                    ),
                );
                self.qmp(vm, "cont", None).await?;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Trap 2: a cancel that lands while the migration completes leaves the
    /// source paused. Resume it.
    async fn ensure_running(&self, vm: &Vm, rec: &mut CycleRecord) -> Result<(), Stop> {
        let st = self.qmp(vm, "query-status", None).await?;
        let s = status_of(&st);
        if s != "running" {
            self.resume(vm, rec, &s).await?;
        }
        Ok(())
    }

    async fn resume(&self, vm: &Vm, rec: &mut CycleRecord, state: &str) -> Result<(), Stop> {
        self.logs().agent(format!(
            "cycle {}: source {} is '{state}' after the migration; sending cont",
            rec.cycle, vm.name
        ));
        note(
            &self.shared,
            rec,
            format!("source {} was '{state}'; resumed with cont", vm.name),
        );
        self.qmp(vm, "cont", None).await?;
        rec.resumed_paused_source = true;
        Ok(())
    }

    /// Waits for the guest heartbeat to advance past what was seen at `mark`.
    async fn check_progress(
        &self,
        vm: &Vm,
        rec: &mut CycleRecord,
        mark: Instant,
    ) -> Result<(), Stop> {
        let mut rx = vm.console.clone();
        let seen = rx.borrow().heartbeats;
        let advanced = |s: &ConsoleStatus| s.heartbeats > seen;
        let first_ok = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(advanced))
            .await
            .is_ok();
        if !first_ok {
            // Trap 2 again: query-status may have said "running" too early.
            let st = self.qmp(vm, "query-status", None).await?;
            let s = status_of(&st);
            if s != "running" {
                self.resume(vm, rec, &s).await?;
            }
            let left = self.plan.progress_timeout.saturating_sub(mark.elapsed());
            if tokio::time::timeout(left, rx.wait_for(advanced))
                .await
                .is_err()
            {
                let st = self
                    .qmp(vm, "query-status", None)
                    .await
                    .map(|v| status_of(&v))
                    .unwrap_or_default();
                let reason = format!(
                    "guest on {} made no progress for {} s after cycle {} (no new ARMFLEET-HB; QEMU status '{st}')",
                    vm.name,
                    self.plan.progress_timeout.as_secs(),
                    rec.cycle
                );
                rec.guest_alive = false;
                self.snap(rec);
                return Err(Stop::Failed {
                    reason,
                    evidence: self.logs().rings.tail(LogStream::GuestConsole, 40),
                });
            }
        }
        rec.guest_progress_ms = Some(ms(mark.elapsed()));
        rec.guest_alive = true;
        Ok(())
    }

    /// Tears a VM down in the background (kill the group; the waiter reaps).
    fn retire(&self, vm: Vm, rec: &mut CycleRecord) {
        vm.proc.set_role(ROLE_RETIRED);
        rec.events.extend(vm.take_events());
        vm.proc.kill();
    }
}
