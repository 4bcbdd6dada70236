-- Kernel intake (webhooks, mirrors) and per-kernel verdicts.

ALTER TABLE runs ADD COLUMN origin TEXT NOT NULL DEFAULT 'api';
-- Runs that add cycles to an earlier, inconclusive run.
ALTER TABLE runs ADD COLUMN extends_run_id BIGINT REFERENCES runs(id);
ALTER TABLE runs ADD COLUMN baseline_kernel_id BIGINT REFERENCES kernels(id);
-- A retry of a job that ended with a lab failure.
ALTER TABLE jobs ADD COLUMN retry_of BIGINT REFERENCES jobs(id);
ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE kernels ADD COLUMN committed_at TIMESTAMPTZ;

CREATE TABLE webhook_deliveries (
    id          BIGSERIAL PRIMARY KEY,
    forge       TEXT NOT NULL,
    delivery_id TEXT,
    event       TEXT NOT NULL,
    result      TEXT NOT NULL,
    run_id      BIGINT REFERENCES runs(id),
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (forge, delivery_id)
);

-- The verdict of one kernel on one board family for one plan, against its
-- baseline. Replaced as evidence grows; every change is kept in
-- verdict_history.
CREATE TABLE verdicts (
    kernel_id           BIGINT NOT NULL REFERENCES kernels(id),
    family              TEXT NOT NULL,
    plan                TEXT NOT NULL,
    baseline_kernel_id  BIGINT REFERENCES kernels(id),
    baseline_reason     TEXT NOT NULL,
    verdict             TEXT NOT NULL CHECK (verdict IN
                            ('regression', 'fixed', 'still-failing', 'pass', 'inconclusive', 'board-suspect')),
    p_value             DOUBLE PRECISION,
    cycles_run          BIGINT NOT NULL,
    failed_cycles       BIGINT NOT NULL,
    rate                DOUBLE PRECISION NOT NULL,
    ci_low              DOUBLE PRECISION NOT NULL,
    ci_high             DOUBLE PRECISION NOT NULL,
    baseline_cycles     BIGINT NOT NULL DEFAULT 0,
    baseline_failed     BIGINT NOT NULL DEFAULT 0,
    explanation         TEXT NOT NULL,
    board_seconds       DOUBLE PRECISION NOT NULL DEFAULT 0,
    extensions          INTEGER NOT NULL DEFAULT 0,
    decided_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kernel_id, family, plan)
);

CREATE TABLE verdict_history (
    id          BIGSERIAL PRIMARY KEY,
    kernel_id   BIGINT NOT NULL REFERENCES kernels(id),
    family      TEXT NOT NULL,
    plan        TEXT NOT NULL,
    verdict     TEXT NOT NULL,
    explanation TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A regression's life: open -> confirmed -> (bisected) -> fixed.
CREATE TABLE regressions (
    id                  BIGSERIAL PRIMARY KEY,
    tree                TEXT NOT NULL,
    branch              TEXT NOT NULL,
    family              TEXT NOT NULL,
    plan                TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('open', 'confirmed', 'bisected', 'fixed')),
    good_kernel_id      BIGINT REFERENCES kernels(id),
    bad_kernel_id       BIGINT NOT NULL REFERENCES kernels(id),
    fixed_kernel_id     BIGINT REFERENCES kernels(id),
    signature           TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tree, branch, family, plan, bad_kernel_id)
);

CREATE TABLE regression_events (
    id              BIGSERIAL PRIMARY KEY,
    regression_id   BIGINT NOT NULL REFERENCES regressions(id),
    to_state        TEXT NOT NULL,
    evidence        TEXT NOT NULL,
    at              TIMESTAMPTZ NOT NULL DEFAULT now()
);
