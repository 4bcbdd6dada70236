//! The framing is the first thing a hostile or broken peer touches: it must
//! round-trip every message and refuse everything else without panicking.

use armfleet_protocol::frame::{decode, encode};
use armfleet_protocol::*;
use proptest::prelude::*;

fn sample_messages() -> Vec<Frame<AgentMessage>> {
    vec![
        Frame::new(AgentMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            board: "kunpeng-01".into(),
            facts: BoardFacts {
                kernel_release: "6.12.0".into(),
                cores: 96,
                ..Default::default()
            },
            running_jobs: vec![JobLease {
                job_id: 7,
                epoch: 2,
            }],
        })),
        Frame::new(AgentMessage::Heartbeat {
            running_job: Some(7),
        }),
        Frame::with_payload(
            AgentMessage::LogChunk {
                job_id: 7,
                epoch: 2,
                stream: LogStream::GuestConsole,
                seq: 3,
                encoding: ChunkEncoding::Raw,
            },
            b"\x00\xffnot utf-8 \x1b[31mred\r\n".to_vec(),
        ),
        armfleet_protocol::chunk::gzipped_log_chunk(
            7,
            2,
            LogStream::HostDmesg,
            4,
            b"[ 1.0] kvm [1]: IPA Size Limit: 44 bits\n",
        ),
        Frame::new(AgentMessage::CycleDone {
            job_id: 7,
            epoch: 2,
            record: CycleRecord {
                cycle: 4,
                ..Default::default()
            },
        }),
        Frame::new(AgentMessage::JobFinished {
            job_id: 7,
            epoch: 2,
            result: JobResult::Failed {
                cycles_completed: 3,
                failed_cycle: Some(4),
                reason: "guest abort".into(),
                evidence: vec!["Unable to handle kernel TLB conflict abort".into()],
            },
            environment: None,
        }),
    ]
}

#[test]
fn every_message_round_trips_with_its_payload() {
    for frame in sample_messages() {
        let bytes = encode(&frame).unwrap();
        let back: Frame<AgentMessage> = decode(&bytes).unwrap();
        assert_eq!(back, frame);
    }
}

#[test]
fn oversized_frames_are_refused_before_reading_them() {
    let mut bytes = (MAX_FRAME_BYTES + 1).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0; 16]);
    assert!(matches!(
        decode::<AgentMessage>(&bytes),
        Err(FrameError::TooLarge(_))
    ));
    let big = Frame::with_payload(
        AgentMessage::LogChunk {
            job_id: 1,
            epoch: 1,
            stream: LogStream::Agent,
            seq: 0,
            encoding: ChunkEncoding::Raw,
        },
        vec![b'x'; MAX_FRAME_BYTES as usize],
    );
    assert!(
        matches!(encode(&big), Err(FrameError::TooLarge(_))),
        "the sender refuses too"
    );
}

#[test]
fn unknown_message_types_are_malformed_not_fatal() {
    let json = br#"{"type":"format_disk"}"#;
    let mut bytes = ((4 + json.len()) as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&(json.len() as u32).to_be_bytes());
    bytes.extend_from_slice(json);
    let err = decode::<AgentMessage>(&bytes).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    assert!(
        err.to_string().contains("format_disk"),
        "the error names what was wrong: {err}"
    );
}

#[tokio::test]
async fn the_async_reader_reports_a_clean_close_and_a_truncated_frame_differently() {
    let mut empty: &[u8] = &[];
    assert!(matches!(
        read_frame::<AgentMessage, _>(&mut empty).await,
        Err(FrameError::Closed)
    ));
    let bytes = encode(&Frame::new(AgentMessage::Heartbeat { running_job: None })).unwrap();
    let mut truncated = &bytes[..bytes.len() - 2];
    assert!(matches!(
        read_frame::<AgentMessage, _>(&mut truncated).await,
        Err(FrameError::Io(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<AgentMessage>(&bytes);
        let _ = decode::<ServerMessage>(&bytes);
    }

    #[test]
    fn corrupted_valid_frames_never_panic(idx in 0usize..5, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = encode(&sample_messages()[idx]).unwrap();
        for (pos, val) in flips {
            let n = bytes.len();
            bytes[pos % n] ^= val;
        }
        let _ = decode::<AgentMessage>(&bytes);
    }
}
