//! State shared by the server's parts.

use std::sync::{Arc, RwLock};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Fleet;
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;

/// The fleet in force; replaced whole on reload, read without holding a lock
/// across awaits.
#[derive(Clone)]
pub struct SharedFleet(Arc<RwLock<Arc<Fleet>>>);

impl SharedFleet {
    pub fn new(fleet: Fleet) -> SharedFleet {
        SharedFleet(Arc::new(RwLock::new(Arc::new(fleet))))
    }
    pub fn current(&self) -> Arc<Fleet> {
        self.0.read().unwrap().clone()
    }
    pub fn replace(&self, fleet: Fleet) {
        *self.0.write().unwrap() = Arc::new(fleet);
    }
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub fleet: SharedFleet,
    pub dispatcher: Arc<Dispatcher>,
    /// Tells the scheduler that work may move (see `scheduler`).
    pub work: crate::scheduler::WorkNotifier,
    pub metrics: Arc<Metrics>,
    pub analysis: crate::analysis::AnalysisQueue,
    pub data_dir: Arc<std::path::PathBuf>,
    pub mirrors: crate::mirror::MirrorQueue,
    pub log_budget: Arc<crate::logs::LogBudget>,
    /// Stable identity of this server process's data dir (several servers
    /// may share one database).
    pub server_id: Arc<str>,
    pub rate_limiter: Arc<crate::http::ratelimit::RateLimiter>,
    pub api_token: Arc<str>,
    pub host_key_fingerprint: Arc<str>,
    pub shutdown: CancellationToken,
    /// The HTTP port this server listens on (set when it starts serving),
    /// told to agents for artifact downloads.
    pub http_port: Arc<std::sync::OnceLock<u16>>,
    /// Log chunk inserts only (asynchronous commit; see `db::connect_log_pool`).
    pub log_pool: PgPool,
}
