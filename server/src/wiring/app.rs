//! Putting the server together: [`Server::prepare`] loads the fleet, brings
//! up the database and keys; [`Server::run`] serves SSH and HTTP until the
//! shutdown token fires, then leaves nothing in flight.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use futures::FutureExt;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::config::Fleet;
use crate::domain::config::SharedFleet;
use crate::wiring::db::{self, embedded::EmbeddedPostgres};
use crate::wiring::state::AppState;
use crate::workers::dispatch::Dispatcher;
use crate::{domain::boards, domain::jobs, transport::ssh};

#[derive(Debug, Clone)]
pub struct Settings {
    pub fleet_path: PathBuf,
    pub data_dir: PathBuf,
    /// Use this database instead of the private cluster.
    pub database_url: Option<String>,
}

pub struct Server {
    pub state: AppState,
    pub api_token: String,
    pub fingerprint: String,
    host_key: russh::keys::PrivateKey,
    analysis_rx: Option<tokio::sync::mpsc::Receiver<i64>>,
    scheduler_rx: Option<tokio::sync::mpsc::Receiver<crate::domain::work::Event>>,
    postgres: Option<EmbeddedPostgres>,
}

impl Server {
    pub async fn prepare(settings: Settings) -> anyhow::Result<Server> {
        let fleet = Fleet::load(&settings.fleet_path)?;
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
        let (options, postgres) = match &settings.database_url {
            Some(url) => (db::options_from_url(url)?, None),
            None => {
                let dir = settings.data_dir.join("postgres");
                let pg =
                    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir)).await??;
                (pg.connect_options(), Some(pg))
            }
        };
        let pool = db::connect(options.clone()).await?;
        let log_pool = db::connect_log_pool(options).await?;
        let host_key = ssh::load_or_create_host_key(&settings.data_dir)?;
        let fingerprint = ssh::fingerprint(&host_key);
        let api_token = match &fleet.server.api_token {
            Some(t) => t.clone(),
            None => load_or_create_token(&settings.data_dir)?,
        };
        let server_id = load_or_create_server_id(&settings.data_dir)?;
        boards::sync_with_fleet(&pool, &fleet).await?;
        boards::all_offline(&pool, &server_id, "server started; waiting for the agent").await?;
        let grace = fleet.server.lease_grace_s();
        let leased = jobs::resolve_after_restart(&pool, &server_id, grace).await?;
        if !leased.is_empty() {
            tracing::warn!(
                ?leased,
                grace,
                "jobs in flight when the previous server stopped wait for their agents"
            );
        }
        let shared = SharedFleet::new(fleet);
        let metrics = Arc::new(crate::wiring::metrics::Metrics::new());
        let dispatcher = Dispatcher::new(pool.clone(), shared.clone(), metrics.clone());
        let (work, scheduler_rx) = crate::domain::work::WorkNotifier::new(Some((
            pool.clone(),
            Arc::from(server_id.as_str()),
        )));
        let (analysis, analysis_rx) = crate::workers::analysis::AnalysisQueue::new();
        let mirrors = crate::domain::mirror::MirrorQueue::new();
        let state = AppState {
            deps: crate::domain::Deps {
                pool,
                fleet: shared,
                data_dir: Arc::new(settings.data_dir.clone()),
                mirrors,
                work,
                server_id: Arc::from(server_id.as_str()),
            },
            log_budget: Arc::new(crate::domain::logs::LogBudget::default()),
            rate_limiter: Arc::default(),
            analysis,
            dispatcher,
            metrics,
            api_token: Arc::from(api_token.as_str()),
            host_key_fingerprint: Arc::from(fingerprint.as_str()),
            shutdown: CancellationToken::new(),
            http_port: Arc::default(),
            log_pool,
        };
        Ok(Server {
            state,
            api_token,
            fingerprint,
            host_key,
            analysis_rx: Some(analysis_rx),
            scheduler_rx: Some(scheduler_rx),
            postgres,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Serves until `shutdown` is cancelled, then stops every task it
    /// started, ends in-flight jobs and stops the private database.
    pub async fn run(
        mut self,
        http: TcpListener,
        ssh_listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let state = AppState {
            shutdown: shutdown.clone(),
            ..self.state.clone()
        };
        if let Ok(addr) = http.local_addr() {
            let _ = state.http_port.set(addr.port());
        }
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(ssh::serve(
            state.clone(),
            self.host_key.clone(),
            ssh_listener,
            shutdown.clone(),
        ));
        if let Some(rx) = self.scheduler_rx.take() {
            tasks.spawn(
                crate::workers::scheduler::run(state.dispatcher.clone(), rx, shutdown.clone())
                    .map(Ok),
            );
        }
        tasks.spawn(
            crate::workers::scheduler::listen_to_other_servers(
                state.pool.clone(),
                state.server_id.clone(),
                state.work.clone(),
                shutdown.clone(),
            )
            .map(Ok),
        );
        if let Some(rx) = self.analysis_rx.take() {
            tasks.spawn(crate::workers::analysis::run(state.clone(), rx, shutdown.clone()).map(Ok));
        }
        tasks.spawn(
            crate::workers::mirror::worker(
                state.pool.clone(),
                state.data_dir.as_ref().clone(),
                state.mirrors.clone(),
                shutdown.clone(),
            )
            .map(Ok),
        );
        tasks.spawn(crate::workers::power::worker(state.clone(), shutdown.clone()).map(Ok));
        tasks.spawn(crate::workers::bisect::worker(state.deps(), shutdown.clone()).map(Ok));
        tasks.spawn(crate::workers::builds::worker(state.deps(), shutdown.clone()).map(Ok));
        tasks.spawn(crate::workers::boots::watchdog(state.clone(), shutdown.clone()).map(Ok));
        let app = crate::transport::http::app(state.clone());
        let http_token = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(
                http,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move { http_token.cancelled().await })
            .await
            .context("HTTP server failed")
        });
        // Any task ending early (an error) brings the whole server down.
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            let outcome = done.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = outcome {
                tracing::error!("server task failed: {e:#}");
                first_error.get_or_insert(e);
            }
            shutdown.cancel();
        }
        // Sessions are gone; in-flight jobs hold leases (set as each session
        // ended) that the next start honours or expires: none stays running.
        let _ = boards::all_offline(&state.pool, &state.server_id, "server stopped").await;
        state.pool.close().await;
        if let Some(mut pg) = self.postgres.take() {
            tokio::task::spawn_blocking(move || pg.stop()).await.ok();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn load_or_create_server_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("server-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_owned());
        }
    }
    let id = format!("srv-{}", hex::encode(rand::random::<[u8; 8]>()));
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

fn load_or_create_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("api-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_owned());
        }
    }
    let bytes: [u8; 24] = rand::random();
    let token = hex::encode(bytes);
    ssh::write_private_file(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}
