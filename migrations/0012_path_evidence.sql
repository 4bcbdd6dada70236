-- What the per-kernel record rests on: how many of its cycles ran under
-- KVM, how many were traced on the host kernel's stage-2 code, and what the
-- traces counted (sums of job_cycles.record->'path').
ALTER TABLE kernel_results ADD COLUMN kvm_cycles BIGINT NOT NULL DEFAULT 0;
ALTER TABLE kernel_results ADD COLUMN traced_cycles BIGINT NOT NULL DEFAULT 0;
ALTER TABLE kernel_results ADD COLUMN block_maps_after_cancel BIGINT NOT NULL DEFAULT 0;
ALTER TABLE kernel_results ADD COLUMN perm_faults BIGINT NOT NULL DEFAULT 0;
ALTER TABLE kernel_results ADD COLUMN host_kinds TEXT[] NOT NULL DEFAULT '{}';

-- What a verdict may count (see verdicts.rs): clean cycles under KVM on a
-- real arm64 host (hardware or the emulated board) whose trace shows KVM
-- re-installing blocks after the cancel; failures under KVM on such hosts;
-- untraced KVM cycles only where the plan allows. A fallback (an agent
-- that was asked for `auto` and ran TCG or replay) is recorded and shown,
-- never counted.
ALTER TABLE jobs ADD COLUMN fallback TEXT;
ALTER TABLE kernel_results ADD COLUMN path_cycles BIGINT NOT NULL DEFAULT 0;
ALTER TABLE kernel_results ADD COLUMN untraced_cycles BIGINT NOT NULL DEFAULT 0;
ALTER TABLE kernel_results ADD COLUMN kvm_failed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE kernel_results ADD COLUMN fallback_jobs INT NOT NULL DEFAULT 0;
ALTER TABLE kernel_results ADD COLUMN simulated_only BOOLEAN NOT NULL DEFAULT false;

ALTER TABLE verdicts DROP CONSTRAINT verdicts_verdict_check;
ALTER TABLE verdicts ADD CONSTRAINT verdicts_verdict_check CHECK (verdict IN
    ('regression', 'fixed', 'still-failing', 'pass', 'inconclusive', 'board-suspect',
     'build_failed', 'boot_failed', 'not-exercised'));
-- What the verdict rests on: 'path' (traced cycles that reached the
-- stage-2 path), 'untraced' (KVM cycles without a trace, allowed by the
-- plan), 'simulated' (replayed logs, by design), 'none'.
ALTER TABLE verdicts ADD COLUMN basis TEXT;
