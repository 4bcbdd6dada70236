-- A bisection started automatically for a confirmed regression.
ALTER TABLE bisections ADD COLUMN regression_id BIGINT REFERENCES regressions(id);
CREATE UNIQUE INDEX bisections_one_per_regression ON bisections (regression_id) WHERE regression_id IS NOT NULL;
