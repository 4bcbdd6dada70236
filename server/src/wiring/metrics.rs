//! Prometheus metrics (`GET /metrics`), through the `prometheus-client`
//! crate. Event counters are bumped where the events happen; gauges that
//! mirror the database (boards and jobs by state, queue depth) are read at
//! scrape time so they can never drift from the truth.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    boards: Family<StateLabel, Gauge>,
    jobs: Family<StateLabel, Gauge>,
    queue_depth: Gauge,
    queue_oldest_seconds: Gauge,
    db_pool_size: Gauge,
    db_pool_idle: Gauge,
    pub dispatch_latency: Histogram,
    pub log_bytes: Counter,
    pub log_chunks_duplicate: Counter,
    pub webhooks: Family<ResultLabel, Counter>,
    pub ssh_connections: Counter,
    pub ssh_auth_failures: Counter,
    pub sessions: Gauge,
    pub boots_failed: Counter,
    pub agent_messages_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("armfleet")),
            boards: Family::default(),
            jobs: Family::default(),
            queue_depth: Gauge::default(),
            queue_oldest_seconds: Gauge::default(),
            db_pool_size: Gauge::default(),
            db_pool_idle: Gauge::default(),
            dispatch_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            log_bytes: Counter::default(),
            log_chunks_duplicate: Counter::default(),
            webhooks: Family::default(),
            ssh_connections: Counter::default(),
            ssh_auth_failures: Counter::default(),
            sessions: Gauge::default(),
            boots_failed: Counter::default(),
            agent_messages_refused: Counter::default(),
        };
        {
            let mut r = m.registry.lock().unwrap();
            r.register("boards", "Boards by state", m.boards.clone());
            r.register("jobs", "Jobs by state", m.jobs.clone());
            r.register(
                "queue_depth",
                "Jobs waiting in the queue",
                m.queue_depth.clone(),
            );
            r.register(
                "queue_oldest_age_seconds",
                "Age of the oldest queued job",
                m.queue_oldest_seconds.clone(),
            );
            r.register(
                "db_pool_connections",
                "Open database connections",
                m.db_pool_size.clone(),
            );
            r.register(
                "db_pool_idle_connections",
                "Idle database connections",
                m.db_pool_idle.clone(),
            );
            r.register(
                "dispatch_latency_seconds",
                "Time from a job being queued to its assignment being sent to a board",
                m.dispatch_latency.clone(),
            );
            r.register(
                "log_bytes_ingested",
                "Log bytes received from agents and stored",
                m.log_bytes.clone(),
            );
            r.register(
                "log_chunks_duplicate",
                "Log chunks received again and ignored",
                m.log_chunks_duplicate.clone(),
            );
            r.register(
                "webhook_deliveries",
                "Webhook deliveries by result",
                m.webhooks.clone(),
            );
            r.register(
                "ssh_connections",
                "SSH connections accepted",
                m.ssh_connections.clone(),
            );
            r.register(
                "ssh_auth_failures",
                "SSH authentications refused",
                m.ssh_auth_failures.clone(),
            );
            r.register("agent_sessions", "Agents connected now", m.sessions.clone());
            r.register(
                "boots_failed",
                "Builds that did not boot on a board",
                m.boots_failed.clone(),
            );
            r.register(
                "agent_messages_refused",
                "Agent messages refused (corrupt, stale or not the board's); the session goes on",
                m.agent_messages_refused.clone(),
            );
        }
        m
    }

    /// Refreshes the database-backed gauges and renders the text format.
    pub async fn render(&self, pool: &PgPool) -> Result<String, sqlx::Error> {
        let boards: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM boards WHERE state <> 'retired' GROUP BY state",
        )
        .fetch_all(pool)
        .await?;
        self.boards.clear();
        for state in ["offline", "idle", "busy"] {
            self.boards
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(0);
        }
        for (state, n) in boards {
            self.boards.get_or_create(&StateLabel { state }).set(n);
        }
        let jobs: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state")
                .fetch_all(pool)
                .await?;
        self.jobs.clear();
        for state in crate::domain::jobs::JobState::ALL {
            self.jobs
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(0);
        }
        for (state, n) in jobs {
            self.jobs.get_or_create(&StateLabel { state }).set(n);
        }
        let (depth, oldest): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM jobs WHERE state = 'queued'",
        )
        .fetch_one(pool)
        .await?;
        self.queue_depth.set(depth);
        self.queue_oldest_seconds.set(oldest.unwrap_or(0.0) as i64);
        self.db_pool_size.set(pool.size() as i64);
        self.db_pool_idle.set(pool.num_idle() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap())
            .map_err(|e| sqlx::Error::Protocol(format!("encoding metrics: {e}")))?;
        Ok(out)
    }
}
