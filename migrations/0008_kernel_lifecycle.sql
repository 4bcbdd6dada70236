-- The kernel lifecycle on real boards: builds (content-addressed artifacts,
-- cached by commit and config), the boots that put a build on a board, and
-- the jobs that need a given build running.

CREATE TABLE builds (
    id              BIGSERIAL PRIMARY KEY,
    tree            TEXT NOT NULL,
    commit_sha      TEXT NOT NULL,
    -- SHA-256 of the canonical build configuration (defconfig, fragments'
    -- contents, targets, arch) or of the artifact list for `urls` builds.
    config_hash     TEXT NOT NULL,
    config          JSONB NOT NULL,
    -- `make`: built here from the mirror; `urls`: artifacts built elsewhere,
    -- fetched and checked.
    source          TEXT NOT NULL CHECK (source IN ('make', 'urls')),
    state           TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'building', 'built', 'failed')),
    kernel_release  TEXT,
    artifacts       JSONB NOT NULL DEFAULT '[]',
    error           TEXT,
    log_sha256      TEXT,
    -- For a failed build: `kernel` (the source does not build: a build_failed
    -- result) or `infra` (the lab could not build it).
    failure         TEXT CHECK (failure IN ('kernel', 'infra')),
    builder         TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    UNIQUE (commit_sha, config_hash)
);
CREATE INDEX builds_queued ON builds (id) WHERE state = 'queued';

ALTER TABLE jobs ADD COLUMN build_id BIGINT REFERENCES builds(id);
CREATE INDEX jobs_build ON jobs (build_id) WHERE build_id IS NOT NULL;

-- The build a board runs now, as its agent last reported (NULL: the board's
-- own known-good kernel).
ALTER TABLE boards ADD COLUMN build_id BIGINT REFERENCES builds(id);

CREATE TABLE boots (
    id              BIGSERIAL PRIMARY KEY,
    board           TEXT NOT NULL REFERENCES boards(name),
    build_id        BIGINT NOT NULL REFERENCES builds(id),
    state           TEXT NOT NULL CHECK (state IN
                        ('deploying', 'booting', 'booted', 'boot_failed', 'deploy_failed')),
    reason          TEXT,
    method          TEXT,
    -- What the board printed while the build failed to come up, recovered
    -- after the power cycle (pstore, journal).
    console         TEXT,
    console_source  TEXT,
    power_cycled    BOOLEAN NOT NULL DEFAULT FALSE,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    deadline        TIMESTAMPTZ NOT NULL,
    ended_at        TIMESTAMPTZ
);
CREATE UNIQUE INDEX boots_one_active ON boots (board) WHERE state IN ('deploying', 'booting');
CREATE INDEX boots_build ON boots (build_id);

ALTER TABLE verdicts DROP CONSTRAINT verdicts_verdict_check;
ALTER TABLE verdicts ADD CONSTRAINT verdicts_verdict_check CHECK (verdict IN
    ('regression', 'fixed', 'still-failing', 'pass', 'inconclusive', 'board-suspect',
     'build_failed', 'boot_failed'));

-- Artifacts built elsewhere for this kernel (a trigger named their URLs):
-- every run of the kernel boots them instead of building.
ALTER TABLE kernels ADD COLUMN build_id BIGINT REFERENCES builds(id);
