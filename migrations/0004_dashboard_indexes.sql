-- Indexes for the dashboard's list pages (all server-side paginated).

-- A board's jobs, newest first (/boards/{name}).
CREATE INDEX IF NOT EXISTS jobs_board_id ON jobs (board, id);
-- A board's failure history.
CREATE INDEX IF NOT EXISTS jobs_board_failures ON jobs (board, id)
    WHERE state IN ('failed', 'infra_error', 'timed_out', 'lost');
-- A kernel's jobs, newest first, and its active jobs (the "running" badge).
CREATE INDEX IF NOT EXISTS jobs_kernel_id ON jobs (kernel_id, id);
CREATE INDEX IF NOT EXISTS jobs_kernel_active ON jobs (kernel_id)
    WHERE state IN ('queued', 'assigned', 'running');
-- Simulated jobs per kernel (the "simulated" label on kernel lists).
CREATE INDEX IF NOT EXISTS jobs_kernel_simulated ON jobs (kernel_id) WHERE simulated;
-- Kernels along one tree/branch, newest first.
CREATE INDEX IF NOT EXISTS kernels_tree_branch_id ON kernels (tree, branch, id);
CREATE INDEX IF NOT EXISTS kernels_branch_id ON kernels (branch, id);
-- A kernel's runs.
CREATE INDEX IF NOT EXISTS runs_kernel ON runs (kernel_id, id);
-- Signatures, most recently seen first.
CREATE INDEX IF NOT EXISTS signatures_last_seen ON signatures (last_seen_at DESC, signature);
