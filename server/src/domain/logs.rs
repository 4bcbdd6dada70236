//! Job logs: chunks as agents stream them, stored gzip-compressed and
//! exactly once per (job, stream, seq).

use std::io::Read;

use armfleet_protocol::{ChunkEncoding, LogStream};
use flate2::read::GzDecoder;
use sqlx::{PgPool, Row};

/// Stores one chunk; a chunk already stored (a resend) is ignored.
/// Returns whether it was new.
pub async fn store_chunk(
    pool: &PgPool,
    job: i64,
    stream: LogStream,
    seq: u64,
    data: &[u8],
) -> Result<bool, sqlx::Error> {
    let compressed = armfleet_protocol::chunk::gzip(data);
    let result = sqlx::query(
        "INSERT INTO log_chunks (job_id, stream, seq, raw_len, data) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (job_id, stream, seq) DO NOTHING",
    )
    .bind(job)
    .bind(stream.as_str())
    .bind(seq as i64)
    .bind(data.len() as i32)
    .bind(compressed)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// A chunk as an agent sent it, checked and in the form it is stored.
pub struct IncomingChunk<'a> {
    /// Log bytes it carries.
    pub raw_len: u64,
    /// Its gzip: the agent's payload as it came, or compressed here.
    gzip: std::borrow::Cow<'a, [u8]>,
}

impl<'a> IncomingChunk<'a> {
    /// A gzip payload is checked in full before it is accepted, so that a
    /// stored chunk can always be read back.
    pub fn check(
        payload: &'a [u8],
        encoding: ChunkEncoding,
    ) -> Result<IncomingChunk<'a>, armfleet_protocol::chunk::ChunkError> {
        Ok(match encoding {
            ChunkEncoding::Raw => IncomingChunk {
                raw_len: payload.len() as u64,
                gzip: armfleet_protocol::chunk::gzip(payload).into(),
            },
            ChunkEncoding::Gzip { raw_len } => IncomingChunk {
                raw_len: armfleet_protocol::chunk::check_gzip(payload, raw_len)?,
                gzip: payload.into(),
            },
        })
    }
}

/// An agent's chunk, stored only if `board` owns the job at `epoch` — the
/// ownership check and the insert in one statement, one round trip on the
/// ingest hot path. False: a duplicate, or not the board's (the caller
/// asks `jobs::check_owner` which).
pub async fn store_agent_chunk(
    pool: &PgPool,
    job: i64,
    board: &str,
    epoch: i64,
    stream: LogStream,
    seq: u64,
    chunk: IncomingChunk<'_>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO log_chunks (job_id, stream, seq, raw_len, data)
         SELECT $1, $2, $3, $4, $5 FROM jobs WHERE id = $1 AND board = $6 AND epoch = $7
         ON CONFLICT (job_id, stream, seq) DO NOTHING",
    )
    .bind(job)
    .bind(stream.as_str())
    .bind(seq as i64)
    .bind(chunk.raw_len as i32)
    .bind(chunk.gzip.as_ref())
    .bind(board)
    .bind(epoch)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The whole stream as stored, chunks in order.
pub async fn read_stream(
    pool: &PgPool,
    job: i64,
    stream: LogStream,
) -> Result<Vec<u8>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, data FROM log_chunks WHERE job_id = $1 AND stream = $2 ORDER BY seq",
    )
    .bind(job)
    .bind(stream.as_str())
    .fetch_all(pool)
    .await?;
    Ok(decode_rows(job, rows)?
        .into_iter()
        .flat_map(|(_, data)| data)
        .collect())
}

/// Raw and stored byte counts per stream.
pub async fn sizes(pool: &PgPool, job: i64) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT stream, sum(raw_len)::int8 AS raw, sum(length(data))::int8 AS stored
         FROM log_chunks WHERE job_id = $1 GROUP BY stream ORDER BY stream",
    )
    .bind(job)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get("stream"), r.get("raw"), r.get("stored")))
        .collect())
}

// ---- dashboard reads (appended for the web pages; read-only) ----

/// The chunks of a stream without their data: (seq, raw length), in order.
pub async fn chunk_list(
    pool: &PgPool,
    job: i64,
    stream: LogStream,
) -> Result<Vec<(i64, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, raw_len FROM log_chunks WHERE job_id = $1 AND stream = $2 ORDER BY seq",
    )
    .bind(job)
    .bind(stream.as_str())
    .fetch_all(pool)
    .await
}

fn gunzip_chunk(job: i64, data: &[u8]) -> Result<Vec<u8>, sqlx::Error> {
    let mut out = Vec::with_capacity(data.len() * 3);
    gunzip_into(job, data, &mut out)?;
    Ok(out)
}

/// Appends a decompressed chunk to `out` (one buffer for a whole stream).
fn gunzip_into(job: i64, data: &[u8], out: &mut Vec<u8>) -> Result<(), sqlx::Error> {
    GzDecoder::new(data).read_to_end(out).map_err(|e| {
        sqlx::Error::Protocol(format!("stored log chunk of job {job} is corrupt: {e}"))
    })?;
    Ok(())
}

/// `(seq, data)` rows of `log_chunks`, decompressed.
fn decode_rows(
    job: i64,
    rows: Vec<sqlx::postgres::PgRow>,
) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    rows.into_iter()
        .map(|r| {
            Ok((
                r.get::<i64, _>("seq"),
                gunzip_chunk(job, r.get::<&[u8], _>("data"))?,
            ))
        })
        .collect()
}

/// Chunks `seq_from..=seq_to` of a stream, decompressed, in order.
pub async fn read_chunk_range(
    pool: &PgPool,
    job: i64,
    stream: LogStream,
    seq_from: i64,
    seq_to: i64,
) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    let rows = sqlx::query("SELECT seq, data FROM log_chunks WHERE job_id = $1 AND stream = $2 AND seq BETWEEN $3 AND $4 ORDER BY seq")
        .bind(job)
        .bind(stream.as_str())
        .bind(seq_from)
        .bind(seq_to)
        .fetch_all(pool)
        .await?;
    decode_rows(job, rows)
}

/// Up to `limit` chunks with `seq > after`, decompressed, in order.
pub async fn chunks_after(
    pool: &PgPool,
    job: i64,
    stream: LogStream,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    let rows = sqlx::query("SELECT seq, data FROM log_chunks WHERE job_id = $1 AND stream = $2 AND seq > $3 ORDER BY seq LIMIT $4")
        .bind(job)
        .bind(stream.as_str())
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    decode_rows(job, rows)
}

/// The last `limit` chunks of a stream, decompressed, in order.
pub async fn tail_chunks(
    pool: &PgPool,
    job: i64,
    stream: LogStream,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    let rows = sqlx::query("SELECT seq, data FROM log_chunks WHERE job_id = $1 AND stream = $2 ORDER BY seq DESC LIMIT $3")
        .bind(job)
        .bind(stream.as_str())
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let mut out = decode_rows(job, rows)?;
    out.reverse();
    Ok(out)
}

/// Per-job log quota: past `max_log_bytes_per_job` further chunks are
/// dropped, and one marker says so, so that a flooding agent cannot fill
/// the database or slow other boards.
#[derive(Default)]
pub struct LogBudget {
    used: std::sync::Mutex<std::collections::HashMap<i64, (u64, bool)>>,
}

/// Where the truncation marker goes: after any chunk an agent can send.
const MARKER_SEQ: u64 = 1 << 60;

impl LogBudget {
    /// Whether a chunk of `bytes` for `job` may be stored.
    pub async fn admit(
        &self,
        pool: &PgPool,
        job: i64,
        bytes: u64,
        cap: u64,
    ) -> Result<bool, sqlx::Error> {
        let known = self.used.lock().unwrap().get(&job).copied();
        let (used, truncated) = match known {
            Some(u) => u,
            None => {
                let row = sqlx::query(
                    "SELECT COALESCE((SELECT sum(raw_len) FROM log_chunks WHERE job_id = $1), 0)::int8 AS used, log_truncated
                     FROM jobs WHERE id = $1",
                )
                .bind(job)
                .fetch_optional(pool)
                .await?;
                // An unknown job is refused by the ownership check after.
                match row {
                    Some(row) => (
                        row.get::<i64, _>("used") as u64,
                        row.get::<bool, _>("log_truncated"),
                    ),
                    None => (0, false),
                }
            }
        };
        if used + bytes <= cap {
            self.used
                .lock()
                .unwrap()
                .insert(job, (used + bytes, truncated));
            return Ok(true);
        }
        if !truncated {
            let marker = format!(
                "\n[armfleet: logs of this job truncated at {used} bytes: the per-job limit is {cap} bytes]\n"
            );
            store_chunk(pool, job, LogStream::Agent, MARKER_SEQ, marker.as_bytes()).await?;
            crate::domain::jobs::mark_log_truncated(pool, job).await?;
            tracing::warn!(job, used, cap, "log flood: truncating the job's logs");
        }
        self.used.lock().unwrap().insert(job, (used, true));
        Ok(false)
    }

    /// Gives back what [`LogBudget::admit`] counted for a chunk that was
    /// not stored after all (a duplicate, or refused).
    pub fn refund(&self, job: i64, bytes: u64) {
        if let Some((used, _)) = self.used.lock().unwrap().get_mut(&job) {
            *used = used.saturating_sub(bytes);
        }
    }

    pub fn forget(&self, job: i64) {
        self.used.lock().unwrap().remove(&job);
    }
}
