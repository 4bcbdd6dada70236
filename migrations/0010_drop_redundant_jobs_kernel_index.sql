-- `jobs_kernel (kernel_id)` is a prefix of `jobs_kernel_id (kernel_id, id)`,
-- which serves every lookup it served. Each index costs every job state
-- change an index write (a state change is never a HOT update: `state` is
-- in the partial indexes' predicates), and claims are the hot path.
DROP INDEX IF EXISTS jobs_kernel;
