-- Automatic bisection of a regression to the commit that introduced it
-- (server/src/bisect.rs). One row per bisection, one per step.

CREATE TABLE bisections (
    id              BIGSERIAL PRIMARY KEY,
    tree            TEXT NOT NULL,
    branch          TEXT NOT NULL,
    plan            TEXT NOT NULL,
    family          TEXT,
    good_sha        TEXT NOT NULL,
    bad_sha         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'found', 'ambiguous', 'failed', 'stopped')),
    -- The regression's per-cycle failure rate: given, or measured on the
    -- bad commit by the calibration step; and the finding signature that
    -- makes a commit bad.
    failure_rate    DOUBLE PRECISION,
    rate_cycles     BIGINT NOT NULL DEFAULT 0,
    rate_failures   BIGINT NOT NULL DEFAULT 0,
    signature       TEXT,
    confidence      DOUBLE PRECISION NOT NULL,
    seed            BIGINT NOT NULL DEFAULT 0,
    max_steps       INTEGER NOT NULL,
    first_bad_sha   TEXT,
    -- Candidates left when only skipped commits remain (state ambiguous).
    candidates      TEXT[] NOT NULL DEFAULT '{}',
    -- Probability that no `good` call in the bisection was a missed bug.
    result_confidence DOUBLE PRECISION,
    board_seconds   DOUBLE PRECISION NOT NULL DEFAULT 0,
    reason          TEXT,
    requested_by    TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ
);

CREATE TABLE bisect_steps (
    bisection_id    BIGINT NOT NULL REFERENCES bisections(id),
    step            INTEGER NOT NULL,
    commit_sha      TEXT NOT NULL,
    -- calibrate: measuring the bad commit's failure rate.
    kind            TEXT NOT NULL CHECK (kind IN ('test', 'calibrate')),
    verdict         TEXT CHECK (verdict IN ('good', 'bad', 'skip')),
    runs            BIGINT[] NOT NULL DEFAULT '{}',
    cycles_needed   BIGINT NOT NULL DEFAULT 0,
    cycles_run      BIGINT NOT NULL DEFAULT 0,
    failures        BIGINT NOT NULL DEFAULT 0,
    -- For a good call: the probability that a bug of the measured rate
    -- would have shown in the clean cycles run.
    confidence      DOUBLE PRECISION,
    board_seconds   DOUBLE PRECISION NOT NULL DEFAULT 0,
    evidence        JSONB NOT NULL DEFAULT '{}',
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at      TIMESTAMPTZ,
    PRIMARY KEY (bisection_id, step)
);
