//! Regressions: the owner of the `regressions` and `regression_events`
//! tables. Every state change goes through [`RegressionState::can_move_to`]
//! and leaves an event with its evidence; verdicts open and fix
//! regressions, bisections mark them bisected.
//!
//! ```text
//! open ──► confirmed ──► bisected
//!   │          │            │
//!   └──────────┴────────────┴──► fixed
//! ```
//! (`open → bisected` too: a bisection may end before a sibling board
//! confirmed the failure.)

use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use crate::domain::lifecycle::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegressionState {
    /// One board failed; a sibling of the same family has yet to confirm.
    Open,
    Confirmed,
    /// A bisection named the first bad commit.
    Bisected,
    /// A later kernel on the branch passes.
    Fixed,
}

impl StateMachine for RegressionState {
    const ALL: &'static [RegressionState] = &[
        RegressionState::Open,
        RegressionState::Confirmed,
        RegressionState::Bisected,
        RegressionState::Fixed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RegressionState::Open => "open",
            RegressionState::Confirmed => "confirmed",
            RegressionState::Bisected => "bisected",
            RegressionState::Fixed => "fixed",
        }
    }

    fn can_move_to(self, to: RegressionState) -> bool {
        use RegressionState::*;
        matches!(
            (self, to),
            (Open, Confirmed | Bisected | Fixed)
                | (Confirmed, Bisected | Fixed)
                | (Bisected, Fixed)
        )
    }
}

/// What identifies a regression: a kernel that fails where its baseline
/// passed, per branch, family and plan.
pub struct RegressionKey<'a> {
    pub on: BranchPlan<'a>,
    pub bad_kernel_id: i64,
}

/// Where regressions live: a tree's branch, tested by a plan on a board family.
pub struct BranchPlan<'a> {
    pub tree: &'a str,
    pub branch: &'a str,
    pub family: &'a str,
    pub plan: &'a str,
}

async fn event(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    to: RegressionState,
    evidence: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO regression_events (regression_id, to_state, evidence) VALUES ($1, $2, $3)",
        id,
        to.as_str(),
        evidence,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves regression `id` to `to` when its state allows it; false when it
/// did not (already there, or past it).
async fn move_to(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    to: RegressionState,
    fixed_kernel_id: Option<i64>,
    evidence: &str,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query!(
        "UPDATE regressions SET state = $2, fixed_kernel_id = COALESCE($3, fixed_kernel_id), updated_at = now()
         WHERE id = $1 AND state = ANY($4)",
        id,
        to.as_str(),
        fixed_kernel_id,
        &RegressionState::sources_of(to),
    )
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if moved {
        event(tx, id, to, evidence).await?;
    }
    Ok(moved)
}

/// A regression verdict: records the regression (`open`, or `confirmed`
/// when enough boards of the family failed), or confirms an open one.
/// Returns its id. Runs in the caller's transaction, so the verdict that
/// opens a regression and the regression are seen together or not at all.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    key: &RegressionKey<'_>,
    good_kernel_id: Option<i64>,
    signature: Option<&str>,
    confirmed: bool,
    evidence: &str,
) -> Result<i64, sqlx::Error> {
    let inserted: Option<i64> = sqlx::query_scalar!(
        "INSERT INTO regressions (tree, branch, family, plan, state, good_kernel_id, bad_kernel_id, signature)
         VALUES ($1, $2, $3, $4, 'open', $5, $6, $7)
         ON CONFLICT (tree, branch, family, plan, bad_kernel_id) DO NOTHING
         RETURNING id",
        key.on.tree,
        key.on.branch,
        key.on.family,
        key.on.plan,
        good_kernel_id,
        key.bad_kernel_id,
        signature,
    )
    .fetch_optional(&mut **tx)
    .await?;
    let id = match inserted {
        Some(id) => {
            event(tx, id, RegressionState::Open, evidence).await?;
            id
        }
        None => {
            sqlx::query_scalar!(
                "SELECT id FROM regressions
                 WHERE tree = $1 AND branch = $2 AND family = $3 AND plan = $4 AND bad_kernel_id = $5
                 FOR UPDATE",
                key.on.tree,
                key.on.branch,
                key.on.family,
                key.on.plan,
                key.bad_kernel_id,
            )
            .fetch_one(&mut **tx)
            .await?
        }
    };
    if confirmed {
        move_to(tx, id, RegressionState::Confirmed, None, evidence).await?;
    }
    Ok(id)
}

/// A passing kernel fixes the unfixed regressions of its branch, family and
/// plan that an earlier kernel opened, in the caller's transaction (with
/// the verdict that says so). Returns their ids.
pub async fn fix_earlier(
    tx: &mut Transaction<'_, Postgres>,
    branch: &BranchPlan<'_>,
    fixed_kernel_id: i64,
    evidence: &str,
) -> Result<Vec<i64>, sqlx::Error> {
    let candidates: Vec<i64> = sqlx::query_scalar!(
        "SELECT id FROM regressions WHERE tree = $1 AND branch = $2 AND family = $3 AND plan = $4
           AND state = ANY($5) AND bad_kernel_id < $6 ORDER BY id FOR UPDATE",
        branch.tree,
        branch.branch,
        branch.family,
        branch.plan,
        &RegressionState::sources_of(RegressionState::Fixed),
        fixed_kernel_id,
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut fixed = vec![];
    for id in candidates {
        if move_to(
            tx,
            id,
            RegressionState::Fixed,
            Some(fixed_kernel_id),
            evidence,
        )
        .await?
        {
            fixed.push(id);
        }
    }
    Ok(fixed)
}

/// A bisection named the first bad commit of regression `id`.
pub async fn mark_bisected(pool: &PgPool, id: i64, evidence: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let moved = move_to(&mut tx, id, RegressionState::Bisected, None, evidence).await?;
    tx.commit().await?;
    Ok(moved)
}

// ---- reading ----

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RegressionRow {
    pub id: i64,
    pub tree: String,
    pub branch: String,
    pub family: String,
    pub plan: String,
    pub state: String,
    pub good_commit: Option<String>,
    pub bad_commit: String,
    pub fixed_commit: Option<String>,
    pub signature: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub async fn list(
    pool: &PgPool,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<RegressionRow>, sqlx::Error> {
    sqlx::query_as::<_, RegressionRow>(
        "SELECT r.id, r.tree, r.branch, r.family, r.plan, r.state, g.commit_sha AS good_commit,
                b.commit_sha AS bad_commit, f.commit_sha AS fixed_commit, r.signature, r.created_at, r.updated_at
         FROM regressions r JOIN kernels b ON b.id = r.bad_kernel_id
         LEFT JOIN kernels g ON g.id = r.good_kernel_id LEFT JOIN kernels f ON f.id = r.fixed_kernel_id
         WHERE ($1::text IS NULL OR r.state = $1) ORDER BY r.id DESC LIMIT $2",
    )
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RegressionEvent {
    pub regression_id: i64,
    pub to_state: String,
    pub evidence: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

pub async fn events(pool: &PgPool, ids: &[i64]) -> Result<Vec<RegressionEvent>, sqlx::Error> {
    sqlx::query_as::<_, RegressionEvent>(
        "SELECT regression_id, to_state, evidence, at FROM regression_events WHERE regression_id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::RegressionState::{self, *};
    use crate::domain::lifecycle::{StateMachine, assert_well_formed};

    #[test]
    fn a_regression_only_moves_forward_and_fixed_is_final() {
        assert_well_formed::<RegressionState>();
        for &from in RegressionState::ALL {
            assert!(!Fixed.can_move_to(from), "fixed is final");
        }
        assert!(Open.can_move_to(Confirmed));
        assert!(Confirmed.can_move_to(Bisected));
        assert!(!Bisected.can_move_to(Confirmed));
        assert!(!Confirmed.can_move_to(Open));
        assert_eq!(
            RegressionState::sources_of(Fixed),
            ["open", "confirmed", "bisected"]
        );
        assert_eq!(RegressionState::sources_of(Bisected), ["open", "confirmed"]);
    }
}
