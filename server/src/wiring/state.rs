//! State shared by the server's parts.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::domain::Deps;
use crate::domain::config::SharedFleet;
use crate::wiring::metrics::Metrics;
use crate::workers::dispatch::Dispatcher;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub fleet: SharedFleet,
    pub dispatcher: Arc<Dispatcher>,
    /// Tells the scheduler that work may move (see `scheduler`).
    pub work: crate::domain::work::WorkNotifier,
    pub metrics: Arc<Metrics>,
    pub analysis: crate::workers::analysis::AnalysisQueue,
    pub data_dir: Arc<std::path::PathBuf>,
    pub mirrors: crate::domain::mirror::MirrorQueue,
    pub log_budget: Arc<crate::domain::logs::LogBudget>,
    /// Stable identity of this server process's data dir (several servers
    /// may share one database).
    pub server_id: Arc<str>,
    pub rate_limiter: Arc<crate::transport::http::ratelimit::RateLimiter>,
    pub api_token: Arc<str>,
    pub host_key_fingerprint: Arc<str>,
    pub shutdown: CancellationToken,
    /// The HTTP port this server listens on (set when it starts serving),
    /// told to agents for artifact downloads.
    pub http_port: Arc<std::sync::OnceLock<u16>>,
    /// Log chunk inserts only (asynchronous commit; see `db::connect_log_pool`).
    pub log_pool: PgPool,
}

impl AppState {
    /// What domain operations get: the parts of the server they may use.
    pub fn deps(&self) -> Deps {
        Deps {
            pool: self.pool.clone(),
            fleet: self.fleet.clone(),
            data_dir: self.data_dir.clone(),
            mirrors: self.mirrors.clone(),
            work: self.work.clone(),
            server_id: self.server_id.clone(),
        }
    }
}
