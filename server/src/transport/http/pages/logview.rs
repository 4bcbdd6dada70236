//! Paging through a stored log without ever loading it whole.
//!
//! A log is a sequence of gzip chunks. To find page N (2,000 lines a page)
//! we need to know which chunk holds its first line, so we keep, per
//! stream, the number of newlines in each chunk. Chunks never change once
//! stored, so that index is cached in memory (bounded) and only chunks
//! that arrived since are counted; after the first visit, showing a page
//! decompresses only the chunks the page covers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use armfleet_protocol::LogStream;
use sqlx::PgPool;

use crate::domain::logs;

pub const LINES_PER_PAGE: i64 = 2000;
/// Characters of one line shown; the rest is summarised.
pub const MAX_LINE_CHARS: usize = 2000;
/// Chunks decompressed per database round trip.
const BATCH: i64 = 16;
/// Streams whose index is cached.
const CACHE_STREAMS: usize = 512;

#[derive(Clone, Copy)]
struct ChunkIdx {
    seq: i64,
    raw_len: i32,
    newlines: i64,
    ends_with_newline: bool,
}

type Key = (String, i64, &'static str);

fn cache() -> &'static Mutex<HashMap<Key, Arc<Vec<ChunkIdx>>>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Vec<ChunkIdx>>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Which database a pool talks to, so that two servers in one process
/// (tests) never share cache entries.
fn db_identity(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("")
    )
}

pub struct Line {
    pub number: i64,
    pub text: String,
    pub alarm: bool,
    /// Part of a finding's line range.
    pub finding: bool,
}

pub struct LogPage {
    pub lines: Vec<Line>,
    pub total_lines: i64,
    pub total_bytes: i64,
    pub pages: i64,
}

/// Turns raw bytes of one line into display text, capped.
pub fn display_line(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let text = String::from_utf8_lossy(raw);
    if text.chars().count() <= MAX_LINE_CHARS {
        return text.into_owned();
    }
    let kept: String = text.chars().take(MAX_LINE_CHARS).collect();
    format!(
        "{kept} … [{} more bytes]",
        raw.len().saturating_sub(kept.len())
    )
}

async fn index(
    pool: &PgPool,
    job: i64,
    stream: LogStream,
) -> Result<Arc<Vec<ChunkIdx>>, sqlx::Error> {
    let key: Key = (db_identity(pool), job, stream.as_str());
    let listed = logs::chunk_list(pool, job, stream).await?;
    let cached = cache().lock().unwrap().get(&key).cloned();
    // Reuse the cached prefix while it matches what is stored.
    let mut idx: Vec<ChunkIdx> = Vec::with_capacity(listed.len());
    if let Some(c) = cached {
        for (have, (seq, raw_len)) in c.iter().zip(&listed) {
            if have.seq != *seq || have.raw_len != *raw_len {
                break;
            }
            idx.push(*have);
        }
        if idx.len() == listed.len() && idx.len() == c.len() {
            return Ok(c);
        }
    }
    let mut i = idx.len();
    while i < listed.len() {
        let from = listed[i].0;
        let to = listed[(i + BATCH as usize - 1).min(listed.len() - 1)].0;
        for (seq, data) in logs::read_chunk_range(pool, job, stream, from, to).await? {
            let raw_len = listed
                .iter()
                .find(|(s, _)| *s == seq)
                .map(|(_, l)| *l)
                .unwrap_or(data.len() as i32);
            idx.push(ChunkIdx {
                seq,
                raw_len,
                newlines: data.iter().filter(|&&b| b == b'\n').count() as i64,
                ends_with_newline: data.last() == Some(&b'\n'),
            });
        }
        i = idx.len().max(i + 1);
    }
    let idx = Arc::new(idx);
    let mut c = cache().lock().unwrap();
    if c.len() >= CACHE_STREAMS {
        c.clear();
    }
    c.insert(key, idx.clone());
    Ok(idx)
}

/// Page `page` (1-based) of a stream; `highlight` are finding line ranges.
pub async fn page(
    pool: &PgPool,
    job: i64,
    stream: LogStream,
    page: i64,
    highlight: &[(i64, i64)],
) -> Result<LogPage, sqlx::Error> {
    let idx = index(pool, job, stream).await?;
    let total_newlines: i64 = idx.iter().map(|c| c.newlines).sum();
    let trailing = idx.last().map(|c| !c.ends_with_newline).unwrap_or(false);
    let total_lines = total_newlines + i64::from(trailing);
    let total_bytes: i64 = idx.iter().map(|c| c.raw_len as i64).sum();
    let pages = ((total_lines + LINES_PER_PAGE - 1) / LINES_PER_PAGE).max(1);
    let first_line = (page - 1) * LINES_PER_PAGE + 1;
    let mut out = LogPage {
        lines: Vec::new(),
        total_lines,
        total_bytes,
        pages,
    };
    if first_line > total_lines {
        return Ok(out);
    }
    // Line L starts after the (L-1)th newline: find the chunk holding it.
    let skip_target = first_line - 1;
    let mut before = 0i64;
    let mut start = 0usize;
    for (i, c) in idx.iter().enumerate() {
        if before + c.newlines >= skip_target {
            start = i;
            break;
        }
        before += c.newlines;
        start = i + 1;
    }
    let mut to_skip = skip_target - before;
    let mut current: Vec<u8> = Vec::new();
    let mut number = first_line;
    let last_line = (first_line + LINES_PER_PAGE - 1).min(total_lines);
    let push = |out: &mut LogPage, number: i64, raw: &[u8]| {
        let text = display_line(raw);
        out.lines.push(Line {
            number,
            alarm: crate::transport::http::pages::util::is_alarm_line(&text),
            finding: highlight.iter().any(|(a, b)| (*a..=*b).contains(&number)),
            text,
        });
    };
    let mut i = start;
    'chunks: while i < idx.len() {
        let from = idx[i].seq;
        let to = idx[(i + BATCH as usize - 1).min(idx.len() - 1)].seq;
        let chunks = logs::read_chunk_range(pool, job, stream, from, to).await?;
        if chunks.is_empty() {
            break;
        }
        i += chunks.len();
        for (_, data) in chunks {
            let mut rest: &[u8] = &data;
            while to_skip > 0 {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        rest = &rest[p + 1..];
                        to_skip -= 1;
                    }
                    None => {
                        rest = &[];
                        break;
                    }
                }
            }
            while !rest.is_empty() {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        if current.len() < MAX_LINE_CHARS * 4 {
                            let room = MAX_LINE_CHARS * 4 - current.len();
                            current.extend_from_slice(&rest[..p.min(room)]);
                        }
                        push(&mut out, number, &current);
                        current.clear();
                        number += 1;
                        rest = &rest[p + 1..];
                        if number > last_line {
                            break 'chunks;
                        }
                    }
                    None => {
                        if current.len() < MAX_LINE_CHARS * 4 {
                            let room = MAX_LINE_CHARS * 4 - current.len();
                            current.extend_from_slice(&rest[..rest.len().min(room)]);
                        }
                        rest = &[];
                    }
                }
            }
        }
    }
    if number <= last_line && !current.is_empty() {
        push(&mut out, number, &current);
    }
    Ok(out)
}

/// The last `n` lines of a stream (from its last few chunks; no line
/// numbers), and the highest chunk seq read.
pub async fn tail(
    pool: &PgPool,
    job: i64,
    stream: LogStream,
    n: usize,
) -> Result<(Vec<(String, bool)>, i64), sqlx::Error> {
    let chunks = logs::tail_chunks(pool, job, stream, 8).await?;
    let last_seq = chunks.last().map(|c| c.0).unwrap_or(-1);
    let mut bytes = Vec::new();
    for (_, d) in &chunks {
        bytes.extend_from_slice(d);
    }
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let from = lines.len().saturating_sub(n);
    let out = lines[from..]
        .iter()
        .map(|l| {
            let t = display_line(l);
            let alarm = crate::transport::http::pages::util::is_alarm_line(&t);
            (t, alarm)
        })
        .collect();
    Ok((out, last_seq))
}
