//! Cluster leases: the owner of the `leases` table.
//!
//! Several servers may share one database. Most work is shared out row by
//! row (`FOR UPDATE SKIP LOCKED`), but a few workers scan everything each
//! round and act on what they find — advancing bisections, ending overdue
//! boots, power-cycling boards that stayed offline — and two of them at
//! once would act twice. Such a worker holds a named lease and works only
//! in rounds where [`hold`] says it still has it. The lease lives in the
//! database, not in a connection, so it survives a PostgreSQL restart; a
//! holder that stops renewing loses it after `ttl`.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Takes or renews the lease `name` for `holder` for `ttl`. True when
/// `holder` has it now; false while another server's lease runs.
pub async fn hold(
    pool: &PgPool,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let got = sqlx::query_scalar!(
        "INSERT INTO leases (name, holder, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
         WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now()
         RETURNING holder",
        name,
        holder,
        ttl.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(got.is_some())
}

/// Gives the lease up (on shutdown), so that another server need not wait
/// for it to expire.
pub async fn release(pool: &PgPool, name: &str, holder: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM leases WHERE name = $1 AND holder = $2",
        name,
        holder
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// What a worker does this round.
#[derive(Debug, PartialEq, Eq)]
pub enum Round {
    Work,
    Skip,
    Stop,
}

/// A worker's lease, renewed round by round.
pub struct Lease {
    pool: PgPool,
    name: &'static str,
    holder: String,
    ttl: Duration,
    held: bool,
}

impl Lease {
    pub fn new(pool: PgPool, name: &'static str, holder: &str, ttl: Duration) -> Lease {
        Lease {
            pool,
            name,
            holder: holder.to_owned(),
            ttl,
            held: false,
        }
    }

    /// Whether this round may work: the lease is renewed (or taken over).
    /// A database error counts as not holding it.
    pub async fn renew(&mut self) -> bool {
        let now = match hold(&self.pool, self.name, &self.holder, self.ttl).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(lease = self.name, "renewing the lease: {e}");
                false
            }
        };
        if now != self.held {
            tracing::info!(
                lease = self.name,
                holder = %self.holder,
                "{}",
                if now { "lease taken" } else { "lease lost" }
            );
            self.held = now;
        }
        now
    }

    /// Waits `every`, then renews: [`Round::Work`] when this server holds
    /// the lease, [`Round::Skip`] while another does, [`Round::Stop`] (the
    /// lease given up) once `shutdown` fires.
    pub async fn next_round(&mut self, every: Duration, shutdown: &CancellationToken) -> Round {
        self.next_round_or(every, std::future::pending(), shutdown)
            .await
    }

    /// [`Lease::next_round`], the wait cut short when `wake` completes
    /// (something this worker acts on happened on this server).
    pub async fn next_round_or(
        &mut self,
        every: Duration,
        wake: impl std::future::Future<Output = ()>,
        shutdown: &CancellationToken,
    ) -> Round {
        tokio::select! {
            _ = shutdown.cancelled() => {
                self.release().await;
                return Round::Stop;
            }
            _ = tokio::time::sleep(every) => {}
            _ = wake => {}
        }
        if self.renew().await {
            Round::Work
        } else {
            Round::Skip
        }
    }

    /// Gives the lease up if held.
    pub async fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            if let Err(e) = release(&self.pool, self.name, &self.holder).await {
                tracing::debug!(lease = self.name, "releasing the lease: {e}");
            }
        }
    }
}
