//! The domain: what armfleet knows and decides — jobs, runs, boards,
//! builds, boots, verdicts, regressions, bisections, findings, reports —
//! each module the owner of its tables and their SQL.
//!
//! Architecture invariant: nothing here imports the transport (HTTP, SSH),
//! the workers or the wiring; `tests/layers.rs` checks it.

pub mod audit;
pub mod bisect;
pub mod boards;
pub mod builds;
pub mod config;
pub mod deliveries;
pub mod deploy;
pub mod export;
pub mod families;
pub mod findings;
pub mod intake;
pub mod jobs;
pub mod leases;
pub mod lifecycle;
pub mod lkml;
pub mod logs;
pub mod mirror;
pub mod power;
pub mod regressions;
pub mod repro;
pub mod results;
pub mod runs;
pub mod verdicts;
pub mod work;

use std::path::PathBuf;
use std::sync::Arc;

use sqlx::PgPool;

/// What domain operations that move work need from the running server:
/// the database, the fleet in force, the data dir (mirrors, artifacts),
/// the mirror queue, the scheduler's notifier and this server's id. Never
/// the transport (sessions, HTTP) or the wiring.
#[derive(Clone)]
pub struct Deps {
    pub pool: PgPool,
    pub fleet: config::SharedFleet,
    pub data_dir: Arc<PathBuf>,
    pub mirrors: mirror::MirrorQueue,
    pub work: work::WorkNotifier,
    pub server_id: Arc<str>,
}
