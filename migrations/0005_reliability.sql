-- Reliability and security: leases that survive a dropped connection for a
-- grace period, and an audit trail.

-- While set, the job's board is disconnected; if it does not come back
-- with the job before this time, the job is lost.
ALTER TABLE jobs ADD COLUMN lease_expires_at TIMESTAMPTZ;
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX jobs_queued_age ON jobs (created_at) WHERE state = 'queued';

CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL DEFAULT '',
    detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Which server process holds the board's session (several servers may
-- share one database).
ALTER TABLE boards ADD COLUMN server_id TEXT;
