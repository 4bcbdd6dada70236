-- The walking skeleton's schema: boards, kernels, runs, jobs with their
-- state history, per-cycle records and compressed log chunks.

CREATE TABLE boards (
    name            TEXT PRIMARY KEY,
    family          TEXT NOT NULL,
    arch            TEXT NOT NULL,
    labels          TEXT[] NOT NULL DEFAULT '{}',
    state           TEXT NOT NULL DEFAULT 'offline'
                    CHECK (state IN ('offline', 'idle', 'busy', 'retired')),
    facts           JSONB,
    executor        TEXT,
    simulated       BOOLEAN NOT NULL DEFAULT FALSE,
    connected_at    TIMESTAMPTZ,
    last_heartbeat  TIMESTAMPTZ,
    offline_reason  TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE kernels (
    id          BIGSERIAL PRIMARY KEY,
    tree        TEXT NOT NULL,
    branch      TEXT NOT NULL,
    commit_sha  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tree, branch, commit_sha)
);

CREATE TABLE runs (
    id          BIGSERIAL PRIMARY KEY,
    kernel_id   BIGINT NOT NULL REFERENCES kernels(id),
    plan_filter TEXT,
    requested_by TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id              BIGSERIAL PRIMARY KEY,
    run_id          BIGINT NOT NULL REFERENCES runs(id),
    kernel_id       BIGINT NOT NULL REFERENCES kernels(id),
    board           TEXT NOT NULL REFERENCES boards(name),
    plan            TEXT NOT NULL,
    spec            JSONB NOT NULL,
    state           TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'assigned', 'running', 'passed', 'failed',
                                     'infra_error', 'timed_out', 'lost', 'cancelled')),
    -- Fencing token: bumped at every assignment; messages carrying an older
    -- epoch are refused.
    epoch           BIGINT NOT NULL DEFAULT 0,
    executor        TEXT,
    simulated       BOOLEAN NOT NULL DEFAULT FALSE,
    cycles_total    INTEGER NOT NULL,
    cycles_completed INTEGER NOT NULL DEFAULT 0,
    failed_cycle    INTEGER,
    reason          TEXT,
    evidence        JSONB NOT NULL DEFAULT '[]',
    deadline        TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX jobs_queue ON jobs (board, id) WHERE state = 'queued';
CREATE INDEX jobs_active ON jobs (board) WHERE state IN ('assigned', 'running');
CREATE INDEX jobs_run ON jobs (run_id);

CREATE TABLE job_events (
    id          BIGSERIAL PRIMARY KEY,
    job_id      BIGINT NOT NULL REFERENCES jobs(id),
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    reason      TEXT,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job ON job_events (job_id, id);

CREATE TABLE job_cycles (
    job_id  BIGINT NOT NULL REFERENCES jobs(id),
    cycle   INTEGER NOT NULL,
    record  JSONB NOT NULL,
    PRIMARY KEY (job_id, cycle)
);

CREATE TABLE log_chunks (
    job_id      BIGINT NOT NULL REFERENCES jobs(id),
    stream      TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    raw_len     INTEGER NOT NULL,
    -- gzip of the raw bytes
    data        BYTEA NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, stream, seq)
);
