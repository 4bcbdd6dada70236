//! How a log chunk's payload is encoded, and the two functions that encode
//! and check it. Agents compress their own chunks (a board has spare cores;
//! the server has one set of cores for the whole lab) and the server stores
//! what arrives as it is, after checking it.

use std::io::{Read, Write};

use flate2::Compression;
use serde::{Deserialize, Serialize};

use crate::{AgentMessage, Frame, LogStream, MAX_FRAME_BYTES};

/// The encoding of a [`crate::AgentMessage::LogChunk`] payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChunkEncoding {
    /// The log bytes themselves.
    #[default]
    Raw,
    /// One gzip member holding exactly `raw_len` log bytes.
    Gzip { raw_len: u32 },
}

impl ChunkEncoding {
    /// How many log bytes a payload of `payload_len` bytes carries.
    pub fn raw_len(self, payload_len: usize) -> u64 {
        match self {
            ChunkEncoding::Raw => payload_len as u64,
            ChunkEncoding::Gzip { raw_len } => raw_len as u64,
        }
    }
}

/// The frame of one log chunk, gzipped: how agents send their logs.
pub fn gzipped_log_chunk(
    job_id: i64,
    epoch: i64,
    stream: LogStream,
    seq: u64,
    data: &[u8],
) -> Frame<AgentMessage> {
    Frame::with_payload(
        AgentMessage::LogChunk {
            job_id,
            epoch,
            stream,
            seq,
            encoding: ChunkEncoding::Gzip {
                raw_len: data.len() as u32,
            },
        },
        gzip(data),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("a log chunk may carry at most {MAX_FRAME_BYTES} log bytes, this one claims {0}")]
    TooLarge(u64),
    #[error("the gzip payload of a log chunk is corrupt: {0}")]
    Corrupt(String),
    #[error("the gzip payload of a log chunk holds {actual} bytes, its message says {claimed}")]
    LengthMismatch { claimed: u64, actual: u64 },
    #[error("the gzip payload of a log chunk has {0} bytes after its gzip member")]
    TrailingBytes(usize),
}

/// Compresses log bytes into one gzip member (fast level: logs compress
/// well at any level, and boards must not spend their cores on it).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc =
        flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 3 + 64), Compression::fast());
    // Writing into a Vec cannot fail.
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// Checks a gzip payload completely (CRC, length, nothing trailing) without
/// keeping the log bytes, so that what is stored can always be read back.
/// Returns the number of log bytes it holds.
pub fn check_gzip(payload: &[u8], raw_len: u32) -> Result<u64, ChunkError> {
    let claimed = raw_len as u64;
    if claimed > MAX_FRAME_BYTES as u64 {
        return Err(ChunkError::TooLarge(claimed));
    }
    let mut decoder = flate2::bufread::GzDecoder::new(payload);
    let mut sink = [0u8; 16 * 1024];
    let mut actual = 0u64;
    loop {
        let n = decoder
            .read(&mut sink)
            .map_err(|e| ChunkError::Corrupt(e.to_string()))?;
        if n == 0 {
            break;
        }
        actual += n as u64;
        // A bomb stops here, not after inflating a gigabyte.
        if actual > claimed {
            return Err(ChunkError::LengthMismatch { claimed, actual });
        }
    }
    if actual != claimed {
        return Err(ChunkError::LengthMismatch { claimed, actual });
    }
    let rest = decoder.into_inner();
    if !rest.is_empty() {
        return Err(ChunkError::TrailingBytes(rest.len()));
    }
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gzip_chunk_round_trips_and_reports_its_length() {
        let text = b"[  12.345678] kvm: stage-2 fault at 0x8000\n".repeat(200);
        let packed = gzip(&text);
        assert!(packed.len() < text.len() / 4);
        assert_eq!(
            check_gzip(&packed, text.len() as u32).unwrap(),
            text.len() as u64
        );
    }

    #[test]
    fn a_lying_length_is_refused() {
        let packed = gzip(b"hello");
        assert!(matches!(
            check_gzip(&packed, 4),
            Err(ChunkError::LengthMismatch { claimed: 4, .. })
        ));
        assert!(matches!(
            check_gzip(&packed, 6),
            Err(ChunkError::LengthMismatch {
                claimed: 6,
                actual: 5
            })
        ));
    }

    #[test]
    fn garbage_trailing_bytes_and_bombs_are_refused() {
        assert!(matches!(
            check_gzip(b"not gzip at all", 15),
            Err(ChunkError::Corrupt(_))
        ));
        let mut packed = gzip(b"hello");
        packed.extend_from_slice(b"tail");
        assert!(matches!(
            check_gzip(&packed, 5),
            Err(ChunkError::TrailingBytes(4))
        ));
        let mut flipped = gzip(b"hello world, hello world");
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        assert!(check_gzip(&flipped, 24).is_err());
        let bomb = gzip(&vec![0u8; 8 << 20]);
        assert!(matches!(
            check_gzip(&bomb, 8 << 20),
            Err(ChunkError::TooLarge(_))
        ));
        assert!(matches!(
            check_gzip(&bomb, 1000),
            Err(ChunkError::LengthMismatch { claimed: 1000, .. })
        ));
    }
}
