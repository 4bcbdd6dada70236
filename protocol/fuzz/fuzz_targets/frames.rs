//! `cargo +nightly fuzz run frames` — whatever a peer sends, decoding never
//! panics, never buffers more than the frame limit, and what decodes
//! re-encodes to a frame that decodes to the same message.
#![no_main]

use armfleet_protocol::frame::{decode, encode};
use armfleet_protocol::{AgentMessage, Frame, MAX_FRAME_BYTES, ServerMessage, read_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode::<AgentMessage>(data) {
        assert!(data.len() <= 4 + MAX_FRAME_BYTES as usize);
        let again = encode(&frame).expect("a decoded frame re-encodes");
        let back: Frame<AgentMessage> = decode(&again).expect("and decodes");
        assert_eq!(back, frame);
    }
    let _ = decode::<ServerMessage>(data);
    // The streaming reader over the same bytes, frame after frame.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut input = data;
        for _ in 0..16 {
            if read_frame::<AgentMessage, _>(&mut input).await.is_err() {
                break;
            }
        }
    });
});
