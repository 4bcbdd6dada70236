//! State shared by the server's parts.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::domain::Deps;
use crate::wiring::metrics::Metrics;
use crate::workers::dispatch::Dispatcher;

/// Everything a request handler, an SSH session or a worker may reach:
/// the domain's [`Deps`] (held once, handed to domain operations as they
/// are) and what only the transports and wiring use.
#[derive(Clone)]
pub struct AppState {
    pub deps: Deps,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    pub analysis: crate::workers::analysis::AnalysisQueue,
    pub log_budget: Arc<crate::domain::logs::LogBudget>,
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
        self.deps.clone()
    }
}

/// `state.pool`, `state.fleet`, … read the one copy in [`Deps`]; the
/// transports use them as often as the domain does.
impl std::ops::Deref for AppState {
    type Target = Deps;
    fn deref(&self) -> &Deps {
        &self.deps
    }
}
