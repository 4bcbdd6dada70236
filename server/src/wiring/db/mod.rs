//! PostgreSQL: where the database comes from and how the schema gets there.
//!
//! SQL itself lives next to the domain it serves (`jobs`, `boards`, `runs`,
//! `logs`); this module only owns the pool and the migrations.

pub mod embedded;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects to `options` and brings the schema up to date.
pub async fn connect(options: PgConnectOptions) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("running database migrations")?;
    Ok(pool)
}

/// A pool for log chunk inserts only: commits without waiting for the WAL
/// flush. Safe for exactly-once delivery because the agent keeps every
/// chunk spooled until the job's `JobAck`, which is sent only after the
/// job's end is committed synchronously on the main pool, later in the WAL:
/// that flush makes every earlier chunk durable too.
pub async fn connect_log_pool(options: PgConnectOptions) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options.options([("synchronous_commit", "off")]))
        .await
        .context("connecting to PostgreSQL (log pool)")
}

pub fn options_from_url(url: &str) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid PostgreSQL URL")
}
