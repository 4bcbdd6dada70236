-- Where a result came from: a real board ('hardware'), the virtual arm64
-- board ('emulated': real KVM/arm64 code nested under QEMU TCG) or replayed
-- logs ('simulated'); and which accelerator a job's guests really used.
ALTER TABLE boards ADD COLUMN host_kind TEXT NOT NULL DEFAULT 'hardware'
    CHECK (host_kind IN ('hardware', 'emulated', 'simulated'));
UPDATE boards SET host_kind = 'simulated' WHERE simulated;

ALTER TABLE jobs ADD COLUMN host_kind TEXT
    CHECK (host_kind IN ('hardware', 'emulated', 'simulated'));
ALTER TABLE jobs ADD COLUMN accel TEXT;
ALTER TABLE jobs ADD COLUMN run_detail TEXT;
UPDATE jobs SET host_kind = 'simulated' WHERE simulated;
