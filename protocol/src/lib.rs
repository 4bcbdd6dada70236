//! The server↔agent wire protocol.
//!
//! Both ends of an SSH session channel speak this crate and nothing else, so
//! the protocol has exactly one definition. A connection is a sequence of
//! [frames](frame): the agent opens with [`AgentMessage::Hello`] carrying
//! [`PROTOCOL_VERSION`]; the server answers [`ServerMessage::Welcome`] or
//! [`ServerMessage::Refused`]. After that both sides send messages freely.
//!
//! Architecture invariant: this crate does no I/O policy (no retries, no
//! timeouts, no logging). It only defines messages and how they are framed,
//! so that it can be fuzzed on its own.

pub mod frame;
pub mod messages;

pub use frame::{Frame, FrameError, MAX_FRAME_BYTES, read_frame, write_frame};
pub use messages::*;

/// Bumped on every incompatible change of [`messages`] or [`frame`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the SSH subsystem-less "exec" command an agent requests on its
/// session channel; anything else is refused by the server.
pub const AGENT_CHANNEL_COMMAND: &str = "armfleet-agent-v1";
