//! Findings: what triage found in a job's logs, and the crash signatures
//! they collapse into.

use armfleet_protocol::LogStream;
use armfleet_triage::Source;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

/// The streams triage reads, and what each is the voice of.
pub const TRIAGED: [(LogStream, Source); 3] = [
    (LogStream::GuestConsole, Source::Guest),
    (LogStream::HostDmesg, Source::Host),
    (LogStream::QemuStderr, Source::Qemu),
];

/// Lines of context kept with a finding for the API and pages.
const EXCERPT_LINES: usize = 60;

pub struct Found {
    pub stream: LogStream,
    pub finding: armfleet_triage::Finding,
    pub excerpt: String,
}

/// Runs triage over one stream (CPU work: call from a blocking thread).
pub fn triage_stream(stream: LogStream, source: Source, log: &[u8]) -> Vec<Found> {
    let findings = armfleet_triage::triage(log, source);
    if findings.is_empty() {
        return Vec::new();
    }
    let lines: Vec<&[u8]> = log.split(|&b| b == b'\n').collect();
    findings
        .into_iter()
        .map(|finding| {
            let start = finding.start_line.saturating_sub(1).min(lines.len());
            let end = finding
                .end_line
                .min(lines.len())
                .min(start + EXCERPT_LINES)
                .max(start);
            let excerpt = lines[start..end]
                .iter()
                .map(|l| {
                    String::from_utf8_lossy(l)
                        .trim_end_matches('\r')
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join("\n");
            Found {
                stream,
                finding,
                excerpt,
            }
        })
        .collect()
}

/// Drops the job's findings and takes their signature counts back.
pub async fn forget_job(tx: &mut Transaction<'_, Postgres>, job: i64) -> Result<(), sqlx::Error> {
    let gone: Vec<String> =
        sqlx::query_scalar("DELETE FROM findings WHERE job_id = $1 RETURNING signature")
            .bind(job)
            .fetch_all(&mut **tx)
            .await?;
    for sig in gone {
        sqlx::query("UPDATE signatures SET count = GREATEST(count - 1, 0) WHERE signature = $1")
            .bind(sig)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Replaces the job's findings (idempotent) and counts them into signatures.
pub async fn store(
    tx: &mut Transaction<'_, Postgres>,
    job: i64,
    found: &[Found],
) -> Result<(), sqlx::Error> {
    let already: i64 = sqlx::query_scalar("SELECT count(*) FROM findings WHERE job_id = $1")
        .bind(job)
        .fetch_one(&mut **tx)
        .await?;
    if already > 0 {
        return Ok(());
    }
    for (ordinal, f) in found.iter().enumerate() {
        let x = &f.finding;
        sqlx::query(
            "INSERT INTO findings (job_id, stream, ordinal, title, class, source, corrupted, fatal, signature,
                                   start_line, end_line, esr, excerpt)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(job)
        .bind(f.stream.as_str())
        .bind(ordinal as i32)
        .bind(&x.title)
        .bind(x.class.as_str())
        .bind(x.source.as_str())
        .bind(x.corrupted)
        .bind(x.fatal)
        .bind(&x.signature)
        .bind(x.start_line as i32)
        .bind(x.end_line as i32)
        .bind(x.esr.as_ref().map(|e| serde_json::to_value(e).unwrap_or_default()))
        .bind(&f.excerpt)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO signatures (signature, title, class, first_job_id, last_job_id, count)
             VALUES ($1, $2, $3, $4, $4, 1)
             ON CONFLICT (signature) DO UPDATE SET last_job_id = $4, last_seen_at = now(),
                 count = signatures.count + 1",
        )
        .bind(&x.signature)
        .bind(&x.title)
        .bind(x.class.as_str())
        .bind(job)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FindingRow {
    pub id: i64,
    pub job_id: i64,
    pub stream: String,
    pub title: String,
    pub class: String,
    pub source: String,
    pub corrupted: bool,
    pub fatal: bool,
    pub signature: String,
    pub start_line: i32,
    pub end_line: i32,
    pub esr: Option<serde_json::Value>,
    pub excerpt: String,
}

pub async fn for_job(pool: &PgPool, job: i64) -> Result<Vec<FindingRow>, sqlx::Error> {
    sqlx::query_as::<_, FindingRow>(
        "SELECT id, job_id, stream, title, class, source, corrupted, fatal, signature, start_line, end_line, esr, excerpt
         FROM findings WHERE job_id = $1 ORDER BY stream = 'guest_console' DESC, ordinal",
    )
    .bind(job)
    .fetch_all(pool)
    .await
}

/// The API's signature listing is the dashboard's (see [`SignatureSummary`]).
pub async fn signatures(
    pool: &PgPool,
    limit: i64,
    offset: i64,
) -> Result<Vec<SignatureSummary>, sqlx::Error> {
    signature_summaries(pool, limit, offset).await
}

// ---- dashboard reads (appended for the web pages; read-only) ----

/// A finding with the job it came from, for kernel and board pages.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FindingBrief {
    pub id: i64,
    pub job_id: i64,
    pub board: String,
    pub stream: String,
    pub title: String,
    pub class: String,
    pub fatal: bool,
    pub signature: String,
    pub start_line: i32,
    pub end_line: i32,
}

/// Findings in the jobs of one kernel, newest first.
pub async fn for_kernel(
    pool: &PgPool,
    kernel: i64,
    limit: i64,
) -> Result<Vec<FindingBrief>, sqlx::Error> {
    sqlx::query_as::<_, FindingBrief>(
        "SELECT f.id, f.job_id, j.board, f.stream, f.title, f.class, f.fatal, f.signature, f.start_line, f.end_line
         FROM jobs j JOIN findings f ON f.job_id = j.id
         WHERE j.kernel_id = $1 ORDER BY f.id DESC LIMIT $2",
    )
    .bind(kernel)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A signature with the kernels it was first and last seen on.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SignatureSummary {
    pub signature: String,
    pub title: String,
    pub class: String,
    pub count: i64,
    pub first_job_id: i64,
    pub last_job_id: i64,
    pub first_seen_at: chrono::DateTime<chrono::Utc>,
    pub last_seen_at: chrono::DateTime<chrono::Utc>,
    pub first_kernel_id: i64,
    pub first_commit: String,
    pub last_kernel_id: i64,
    pub last_commit: String,
    pub boards: Vec<String>,
    pub board_count: i64,
}

/// Signatures, most recently seen first, one page.
pub async fn signature_summaries(
    pool: &PgPool,
    limit: i64,
    offset: i64,
) -> Result<Vec<SignatureSummary>, sqlx::Error> {
    sqlx::query_as::<_, SignatureSummary>(
        "SELECT s.signature, s.title, s.class, s.count, s.first_job_id, s.last_job_id, s.first_seen_at, s.last_seen_at,
                kf.id AS first_kernel_id, kf.commit_sha AS first_commit,
                kl.id AS last_kernel_id, kl.commit_sha AS last_commit,
                b.boards[1:12] AS boards, COALESCE(cardinality(b.boards), 0)::int8 AS board_count
         FROM (SELECT * FROM signatures ORDER BY last_seen_at DESC, signature LIMIT $1 OFFSET $2) s
         JOIN jobs jf ON jf.id = s.first_job_id JOIN kernels kf ON kf.id = jf.kernel_id
         JOIN jobs jl ON jl.id = s.last_job_id JOIN kernels kl ON kl.id = jl.kernel_id
         CROSS JOIN LATERAL (SELECT ARRAY(SELECT DISTINCT j.board FROM findings f JOIN jobs j ON j.id = f.job_id
                                          WHERE f.signature = s.signature ORDER BY j.board) AS boards) b
         ORDER BY s.last_seen_at DESC, s.signature",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
}

/// The findings of several jobs, in job and report order (exports).
pub async fn for_jobs(pool: &PgPool, jobs: &[i64]) -> Result<Vec<FindingRow>, sqlx::Error> {
    sqlx::query_as::<_, FindingRow>(
        "SELECT id, job_id, stream, title, class, source, corrupted, fatal, signature, start_line, end_line, esr, excerpt
         FROM findings WHERE job_id = ANY($1) ORDER BY job_id, stream, ordinal",
    )
    .bind(jobs)
    .fetch_all(pool)
    .await
}
