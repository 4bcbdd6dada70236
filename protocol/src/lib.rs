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

pub mod chunk;
pub mod frame;
pub mod messages;

pub use chunk::ChunkEncoding;
pub use frame::{Frame, FrameError, MAX_FRAME_BYTES, read_frame, write_frame};
pub use messages::*;

/// Bumped on every incompatible change of [`messages`] or [`frame`].
///
/// v2: `Hello::running_jobs` and `ServerMessage::JobAck`, so jobs survive a
/// dropped connection and agents know when their spool may be dropped.
/// (Still v2: a crash log recovered after a restart travels as ordinary
/// `host_dmesg` `LogChunk`s numbered from [`RECOVERED_LOG_SEQ_BASE`]; no
/// message or field changed.)
///
/// v3: the kernel lifecycle: `ServerMessage::Boot` (deploy a build and boot
/// it), `AgentMessage::BootReport` (how that went before the reboot, and the
/// console of a boot that never came up), `BoardFacts::build_id`, and
/// `Welcome::artifact_base_url`.
///
/// v4: `LogChunk::encoding`: agents gzip their log chunks and the server
/// stores them as they arrive, after checking them (see [`chunk`]).
///
/// v5: where a result came from: `BoardFacts::host_kind` (hardware,
/// emulated, simulated), `ssh_board` and `kvm_mode`, and
/// `JobFinished::environment` (the host kind and the accelerator the job
/// really used).
///
/// v6: evidence of the stage-2 path: `BoardFacts::memory` (page size, THP
/// modes, hugetlb pools), `RunEnvironment::fallback`, and the workload's
/// `MigrateCancelParams` (`memory_backing`, `dirty_threads`, `verify`,
/// `dwell_after_cancel_ms`, `dirty_ring_size`, `gic_version`,
/// `inject_guest_corruption_after`), which a v5 agent would refuse.
pub const PROTOCOL_VERSION: u32 = 6;
