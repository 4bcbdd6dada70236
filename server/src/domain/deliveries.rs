//! Webhook deliveries: the owner of `webhook_deliveries`. A push becomes
//! at most one run: a repeated delivery id answers with the run it started,
//! and the same kernel and plans pushed again (another forge, a delivery
//! without an id) start nothing. The delivery is recorded in the same
//! transaction as the run it starts.

use sqlx::PgPool;

use crate::domain::config::Plan;
use crate::domain::runs::{self, KernelInput, PlannedRun};

pub enum PushOutcome {
    /// This delivery was seen before.
    SameDelivery {
        run_id: Option<i64>,
    },
    /// A push already started a run for this kernel and these plans.
    SameKernel {
        run_id: i64,
    },
    Planned(PlannedRun),
}

pub async fn accept_push(
    pool: &PgPool,
    forge: &str,
    delivery: Option<&str>,
    kernel: &KernelInput,
    plans: &[&Plan],
    plan_filter: Option<&str>,
) -> Result<PushOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(id) = delivery {
        let inserted: Option<i64> = sqlx::query_scalar!(
            "INSERT INTO webhook_deliveries (forge, delivery_id, event, result) VALUES ($1, $2, 'push', 'accepted')
             ON CONFLICT (forge, delivery_id) DO NOTHING RETURNING id",
            forge,
            id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            let run_id: Option<i64> = sqlx::query_scalar!(
                "SELECT run_id FROM webhook_deliveries WHERE forge = $1 AND delivery_id = $2",
                forge,
                id,
            )
            .fetch_one(&mut *tx)
            .await?;
            return Ok(PushOutcome::SameDelivery { run_id });
        }
    }
    let kernel_id = runs::record_kernel(&mut tx, kernel).await?;
    let existing: Option<i64> = sqlx::query_scalar!(
        "SELECT id FROM runs WHERE kernel_id = $1 AND origin LIKE 'webhook:%'
           AND plan_filter IS NOT DISTINCT FROM $2 ORDER BY id LIMIT 1",
        kernel_id,
        plan_filter,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(run_id) = existing {
        if let Some(id) = delivery {
            sqlx::query!(
                "UPDATE webhook_deliveries SET run_id = $3, result = 'duplicate' WHERE forge = $1 AND delivery_id = $2",
                forge,
                id,
                run_id,
            )
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        return Ok(PushOutcome::SameKernel { run_id });
    }
    let origin = format!("webhook:{forge}");
    let planned = runs::plan_run(
        &mut tx,
        kernel_id,
        kernel,
        plans,
        &origin,
        plan_filter,
        None,
        None,
        delivery,
    )
    .await?;
    if let Some(id) = delivery {
        sqlx::query!(
            "UPDATE webhook_deliveries SET run_id = $3 WHERE forge = $1 AND delivery_id = $2",
            forge,
            id,
            planned.run_id,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(PushOutcome::Planned(planned))
}

/// A delivery that started nothing (refused, ignored): kept for the record.
pub async fn record(
    pool: &PgPool,
    forge: &str,
    delivery: Option<&str>,
    event: &str,
    result: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO webhook_deliveries (forge, delivery_id, event, result) VALUES ($1, $2, $3, $4)
         ON CONFLICT (forge, delivery_id) DO NOTHING",
        forge,
        delivery,
        event,
        result,
    )
    .execute(pool)
    .await?;
    Ok(())
}
