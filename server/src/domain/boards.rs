//! Boards as PostgreSQL knows them: their rows mirror fleet.toml plus what
//! the agents report (facts, heartbeats, state).

use armfleet_protocol::BoardFacts;
use serde::Serialize;
use sqlx::PgPool;

use crate::domain::config::Fleet;

/// Board states shown in the API and on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BoardState {
    Offline,
    Idle,
    Busy,
    /// Removed from fleet.toml; kept for history.
    Retired,
}

impl BoardState {
    pub fn as_str(self) -> &'static str {
        match self {
            BoardState::Offline => "offline",
            BoardState::Idle => "idle",
            BoardState::Busy => "busy",
            BoardState::Retired => "retired",
        }
    }
}

/// Makes the `boards` table match fleet.toml: new boards appear offline,
/// boards no longer listed are retired.
pub async fn sync_with_fleet(pool: &PgPool, fleet: &Fleet) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for b in &fleet.boards {
        sqlx::query(
            "INSERT INTO boards (name, family, arch, labels) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET family = $2, arch = $3, labels = $4,
                 state = CASE WHEN boards.state = 'retired' THEN 'offline' ELSE boards.state END,
                 updated_at = now()",
        )
        .bind(&b.name)
        .bind(b.family.as_str())
        .bind(&b.arch)
        .bind(&b.labels)
        .execute(&mut *tx)
        .await?;
    }
    let names: Vec<String> = fleet.boards.iter().map(|b| b.name.clone()).collect();
    sqlx::query(
        "UPDATE boards SET state = 'retired', updated_at = now() WHERE NOT (name = ANY($1))",
    )
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// At start-up and shutdown: the boards this server held are not connected
/// (boards held by other servers sharing the database are left alone).
pub async fn all_offline(pool: &PgPool, server_id: &str, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE boards SET state = 'offline', offline_reason = $1, updated_at = now()
         WHERE state <> 'retired' AND (server_id IS NULL OR server_id = $2)",
    )
    .bind(reason)
    .bind(server_id)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn set_online(
    pool: &PgPool,
    board: &str,
    facts: &BoardFacts,
    server_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE boards SET state = 'idle', facts = $2, executor = $3, simulated = $4, server_id = $5, host_kind = $7,
            connected_at = now(), last_heartbeat = now(), offline_reason = NULL, updated_at = now(),
            build_id = (SELECT id FROM builds WHERE id = $6)
         WHERE name = $1",
    )
    .bind(board)
    .bind(serde_json::to_value(facts).unwrap_or_default())
    .bind(facts.executor.as_str())
    .bind(facts.executor.is_simulated())
    .bind(server_id)
    .bind(facts.build_id)
    .bind(facts.host_kind.as_str())
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn heartbeats(pool: &PgPool, boards: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE boards SET last_heartbeat = now() WHERE name = ANY($1)")
        .bind(boards)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn set_offline(pool: &PgPool, board: &str, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE boards SET state = 'offline', offline_reason = $2, updated_at = now() WHERE name = $1 AND state <> 'retired'")
        .bind(board)
        .bind(reason)
        .execute(pool)
        .await
        .map(|_| ())
}

/// For a connected board: busy while it has active jobs, idle otherwise.
/// The row is only written when that changes its state (every claim calls
/// this; a rewrite costs a row version and WAL each time).
pub async fn refresh_busy(db: impl sqlx::PgExecutor<'_>, board: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH truth AS (
            SELECT CASE WHEN EXISTS (
                SELECT 1 FROM jobs WHERE board = $1 AND state IN ('assigned', 'running'))
             THEN 'busy' ELSE 'idle' END AS state)
         UPDATE boards SET state = truth.state, updated_at = now() FROM truth
         WHERE name = $1 AND boards.state IN ('idle', 'busy') AND boards.state <> truth.state",
    )
    .bind(board)
    .execute(db)
    .await
    .map(|_| ())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BoardRow {
    pub name: String,
    pub family: String,
    pub arch: String,
    pub labels: Vec<String>,
    pub state: String,
    pub facts: Option<serde_json::Value>,
    pub executor: Option<String>,
    pub simulated: bool,
    /// `hardware`, `emulated` (the virtual arm64 board) or `simulated`.
    pub host_kind: String,
    pub connected_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_heartbeat: Option<chrono::DateTime<chrono::Utc>>,
    pub offline_reason: Option<String>,
}

pub async fn list(pool: &PgPool) -> Result<Vec<BoardRow>, sqlx::Error> {
    sqlx::query_as::<_, BoardRow>(
        "SELECT name, family, arch, labels, state, facts, executor, simulated, host_kind, connected_at,
                last_heartbeat, offline_reason
         FROM boards WHERE state <> 'retired' ORDER BY family, name",
    )
    .fetch_all(pool)
    .await
}

// ---- dashboard reads (appended for the web pages; read-only) ----

/// One board, retired or not.
pub async fn get(pool: &PgPool, name: &str) -> Result<Option<BoardRow>, sqlx::Error> {
    sqlx::query_as::<_, BoardRow>(
        "SELECT name, family, arch, labels, state, facts, executor, simulated, host_kind, connected_at,
                last_heartbeat, offline_reason
         FROM boards WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// Where a board's reported facts contradict its family's profile (MIDR,
/// page size, THP mode), in words; empty when they agree or the board has
/// not reported yet.
pub fn profile_warnings(
    fleet: &crate::domain::config::Fleet,
    board: &str,
    facts: Option<&serde_json::Value>,
) -> Vec<String> {
    let (Some(b), Some(facts)) = (fleet.board(board), facts) else {
        return vec![];
    };
    let Ok(facts) = serde_json::from_value::<BoardFacts>(facts.clone()) else {
        return vec![];
    };
    if facts.executor.is_simulated() {
        // A simulated board reports this machine, not the board it plays.
        return vec![];
    }
    fleet
        .families
        .get(&b.family)
        .map(|p| p.check(b.family, &facts))
        .unwrap_or_default()
}
