-- Findings from log triage, crash signatures, and per-kernel results.

ALTER TABLE kernels ADD COLUMN parent_sha TEXT;
ALTER TABLE kernels ADD COLUMN subject TEXT;
ALTER TABLE kernels ADD COLUMN author TEXT;

ALTER TABLE jobs ADD COLUMN analyzed_at TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN log_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log_truncated BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX jobs_unanalyzed ON jobs (id)
    WHERE analyzed_at IS NULL AND state IN ('passed', 'failed', 'infra_error', 'timed_out', 'lost', 'cancelled');
CREATE INDEX jobs_kernel ON jobs (kernel_id);

CREATE TABLE findings (
    id          BIGSERIAL PRIMARY KEY,
    job_id      BIGINT NOT NULL REFERENCES jobs(id),
    stream      TEXT NOT NULL,
    ordinal     INTEGER NOT NULL,
    title       TEXT NOT NULL,
    class       TEXT NOT NULL,
    source      TEXT NOT NULL,
    corrupted   BOOLEAN NOT NULL,
    fatal       BOOLEAN NOT NULL,
    signature   TEXT NOT NULL,
    start_line  INTEGER NOT NULL,
    end_line    INTEGER NOT NULL,
    esr         JSONB,
    excerpt     TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (job_id, stream, ordinal)
);
CREATE INDEX findings_signature ON findings (signature);

CREATE TABLE signatures (
    signature       TEXT PRIMARY KEY,
    title           TEXT NOT NULL,
    class           TEXT NOT NULL,
    first_job_id    BIGINT NOT NULL REFERENCES jobs(id),
    last_job_id     BIGINT NOT NULL REFERENCES jobs(id),
    first_seen_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    count           BIGINT NOT NULL DEFAULT 0
);

-- The per-kernel regression record: evidence per (kernel, family, plan),
-- recomputed from jobs whenever one of them is analysed.
CREATE TABLE kernel_results (
    kernel_id       BIGINT NOT NULL REFERENCES kernels(id),
    family          TEXT NOT NULL,
    plan            TEXT NOT NULL,
    jobs            INTEGER NOT NULL,
    boards          INTEGER NOT NULL,
    cycles_run      BIGINT NOT NULL,
    failed_cycles   BIGINT NOT NULL,
    infra_errors    INTEGER NOT NULL,
    simulated       BOOLEAN NOT NULL,
    board_seconds   DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kernel_id, family, plan)
);
