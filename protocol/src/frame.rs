//! Framing: how one message travels on the byte stream.
//!
//! ```text
//! +-------------+------------+------------------+-----------------+
//! | u32 BE total| u32 BE json| JSON header      | raw payload     |
//! +-------------+------------+------------------+-----------------+
//! ```
//! `total` counts everything after itself. The JSON header is the message;
//! the payload carries raw bytes (log chunks) so that kernel logs, which are
//! not UTF-8 clean, travel unmodified and without base64 overhead.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame either side accepts. A peer that announces more is cut off
/// before a single byte of the body is buffered.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// A decoded frame: a message plus its optional raw payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<M> {
    pub message: M,
    pub payload: Bytes,
}

impl<M> Frame<M> {
    pub fn new(message: M) -> Self {
        Frame {
            message,
            payload: Bytes::new(),
        }
    }
    pub fn with_payload(message: M, payload: impl Into<Bytes>) -> Self {
        Frame {
            message,
            payload: payload.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("peer closed the connection")]
    Closed,
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge(u64),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("i/o error on the agent channel: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes a frame into bytes ready to be written.
pub fn encode<M: Serialize>(frame: &Frame<M>) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(&frame.message)
        .map_err(|e| FrameError::Malformed(format!("cannot encode message: {e}")))?;
    let total = 4u64 + json.len() as u64 + frame.payload.len() as u64;
    if total > MAX_FRAME_BYTES as u64 {
        return Err(FrameError::TooLarge(total));
    }
    let mut out = Vec::with_capacity(4 + total as usize);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&frame.payload);
    Ok(out)
}

/// Decodes the body of a frame (everything after the leading `total`).
pub fn decode_body<M: DeserializeOwned>(body: Bytes) -> Result<Frame<M>, FrameError> {
    if body.len() < 4 {
        return Err(FrameError::Malformed(
            "frame shorter than its header".into(),
        ));
    }
    let json_len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if json_len > body.len() - 4 {
        return Err(FrameError::Malformed(format!(
            "header length {json_len} runs past the frame end ({} bytes)",
            body.len() - 4
        )));
    }
    let message = serde_json::from_slice(&body[4..4 + json_len])
        .map_err(|e| FrameError::Malformed(format!("bad message: {e}")))?;
    Ok(Frame {
        message,
        payload: body.slice(4 + json_len..),
    })
}

/// Decodes one complete frame from a byte slice (used by fuzzing and tests).
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<Frame<M>, FrameError> {
    if bytes.len() < 4 {
        return Err(FrameError::Malformed("truncated length prefix".into()));
    }
    let total = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if total > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(total as u64));
    }
    if bytes.len() - 4 != total as usize {
        return Err(FrameError::Malformed(format!(
            "length prefix says {total} bytes, {} follow",
            bytes.len() - 4
        )));
    }
    decode_body(Bytes::copy_from_slice(&bytes[4..]))
}

/// Reads one frame. Returns [`FrameError::Closed`] on a clean end of stream
/// between frames.
pub async fn read_frame<M: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Frame<M>, FrameError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let total = u32::from_be_bytes(len);
    if total > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(total as u64));
    }
    let mut body = vec![0u8; total as usize];
    reader.read_exact(&mut body).await?;
    decode_body(Bytes::from(body))
}

/// Writes one frame and flushes it.
pub async fn write_frame<M: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame<M>,
) -> Result<(), FrameError> {
    let bytes = encode(frame)?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}
