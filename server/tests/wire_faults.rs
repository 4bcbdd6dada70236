//! Bad input on the agent channel closes that connection, with a reason, and
//! nothing else.

mod common;

use std::time::Duration;

use armfleet_protocol::{AgentMessage, BoardFacts, Frame, Hello, ServerMessage, read_frame, write_frame};
use common::*;
use tokio::io::AsyncWriteExt;

async fn lab() -> (TestServer, AgentKey, AgentKey) {
    let dir = tempfile::tempdir().unwrap().keep();
    let a = keygen(&dir, "a").await;
    let b = keygen(&dir, "b").await;
    let server = TestServer::start(&fleet_toml(&[("board-a", "rpi4", &a.public), ("board-b", "rpi5", &b.public)], "")).await;
    (server, a, b)
}

async fn expect_refusal(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let frame = tokio::time::timeout(Duration::from_secs(10), read_frame::<ServerMessage, _>(stream))
        .await
        .expect("server answers")
        .expect("a frame");
    match frame.message {
        ServerMessage::Refused { reason } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_connection() {
    let (server, a, b) = lab().await;
    let _good = server.agent("board-b", &b.path, &["--executor", "replay"]);
    wait_for("board-b online", Duration::from_secs(20), || async { (server.board_state("board-b").await == "idle").then_some(()) }).await;

    // A board that says hello properly, then sends junk.
    let mut raw = raw_channel(&server, "board-a", &a.path).await;
    let hello = AgentMessage::Hello(Hello {
        protocol_version: armfleet_protocol::PROTOCOL_VERSION,
        agent_version: "test".into(),
        board: "board-a".into(),
        facts: BoardFacts::default(),
        running_jobs: vec![],
    });
    write_frame(&mut raw, &Frame::new(hello)).await.unwrap();
    let welcome = read_frame::<ServerMessage, _>(&mut raw).await.unwrap();
    assert!(matches!(welcome.message, ServerMessage::Welcome { .. }));
    wait_for("board-a online", Duration::from_secs(10), || async { (server.board_state("board-a").await == "idle").then_some(()) }).await;
    raw.write_all(&[0, 0, 0, 9, 0, 0, 0, 5, b'{', b'x', b'x', b'x', b'}']).await.unwrap();
    raw.flush().await.unwrap();
    let reason = expect_refusal(&mut raw).await;
    assert!(reason.contains("protocol error") && reason.contains("bad message"), "{reason}");
    wait_for("board-a offline", Duration::from_secs(10), || async { (server.board_state("board-a").await == "offline").then_some(()) }).await;
    // The other board did not notice.
    assert_eq!(server.board_state("board-b").await, "idle");

    // A frame announcing 2 GB is refused before it is read.
    let mut raw = raw_channel(&server, "board-a", &a.path).await;
    raw.write_all(&0x8000_0000u32.to_be_bytes()).await.unwrap();
    raw.flush().await.unwrap();
    let reason = expect_refusal(&mut raw).await;
    assert!(reason.contains("exceeds the limit"), "{reason}");
    assert_eq!(server.board_state("board-b").await, "idle");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_version_mismatch_is_refused_with_both_versions() {
    let (server, a, _b) = lab().await;
    let mut raw = raw_channel(&server, "board-a", &a.path).await;
    let hello = AgentMessage::Hello(Hello {
        protocol_version: 99,
        agent_version: "future".into(),
        board: "board-a".into(),
        facts: BoardFacts::default(),
        running_jobs: vec![],
    });
    write_frame(&mut raw, &Frame::new(hello)).await.unwrap();
    let reason = expect_refusal(&mut raw).await;
    assert!(reason.contains("v99") && reason.contains(&format!("v{}", armfleet_protocol::PROTOCOL_VERSION)), "{reason}");
    assert_eq!(server.board_state("board-a").await, "offline");

    // A hello that names another board than the key's is refused too.
    let mut raw = raw_channel(&server, "board-a", &a.path).await;
    let hello = AgentMessage::Hello(Hello {
        protocol_version: armfleet_protocol::PROTOCOL_VERSION,
        agent_version: "x".into(),
        board: "board-b".into(),
        facts: BoardFacts::default(),
        running_jobs: vec![],
    });
    write_frame(&mut raw, &Frame::new(hello)).await.unwrap();
    let reason = expect_refusal(&mut raw).await;
    assert!(reason.contains("board-b") && reason.contains("board-a"), "{reason}");
    server.stop().await;
}
