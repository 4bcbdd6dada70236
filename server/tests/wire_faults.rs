//! Bad input on the agent channel closes that connection, with a reason, and
//! nothing else.

mod common;

use std::time::Duration;

use armfleet_protocol::{
    AgentMessage, BoardFacts, Frame, Hello, ServerMessage, read_frame, write_frame,
};
use common::*;
use tokio::io::AsyncWriteExt;

async fn lab() -> (TestServer, AgentKey, AgentKey) {
    let dir = tempfile::tempdir().unwrap().keep();
    let a = keygen(&dir, "a").await;
    let b = keygen(&dir, "b").await;
    let server = TestServer::start(&fleet_toml(
        &[
            ("board-a", "rpi4", &a.public),
            ("board-b", "rpi5", &b.public),
        ],
        "",
    ))
    .await;
    (server, a, b)
}

/// A Hello as an agent of `board` speaking protocol `version` would send it.
fn hello(board: &str, version: u32) -> Frame<AgentMessage> {
    Frame::new(AgentMessage::Hello(Hello {
        protocol_version: version,
        agent_version: "test".into(),
        board: board.into(),
        facts: BoardFacts::default(),
        running_jobs: vec![],
    }))
}

/// Board A, spoken for by hand over a raw channel: it says hello, waits
/// until idle, and takes the job of a run of `commit`. Returns the channel
/// and the job's id and epoch.
async fn board_a_with_a_job(
    server: &TestServer,
    a: &AgentKey,
    commit: &str,
) -> (russh::ChannelStream<russh::client::Msg>, i64, i64) {
    let mut raw = raw_channel(server, "board-a", &a.path).await;
    write_frame(
        &mut raw,
        &hello("board-a", armfleet_protocol::PROTOCOL_VERSION),
    )
    .await
    .unwrap();
    let _welcome = read_frame::<ServerMessage, _>(&mut raw).await.unwrap();
    server
        .wait_board("board-a", "idle", Duration::from_secs(10))
        .await;
    server.trigger(commit).await;
    loop {
        let f = next_frame(&mut raw).await;
        if let ServerMessage::AssignJob { job_id, epoch, .. } = f.message {
            return (raw, job_id, epoch);
        }
    }
}

/// The server's next frame on a raw channel (it must come within 10 s).
async fn next_frame(raw: &mut (impl tokio::io::AsyncRead + Unpin)) -> Frame<ServerMessage> {
    tokio::time::timeout(Duration::from_secs(10), read_frame::<ServerMessage, _>(raw))
        .await
        .expect("the server answers within 10 s")
        .expect("a frame")
}

async fn expect_refusal(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    match next_frame(stream).await.message {
        ServerMessage::Refused { reason } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_connection() {
    let (server, a, b) = lab().await;
    let _good = server.agent("board-b", &b.path, &["--executor", "replay"]);
    server
        .wait_board("board-b", "idle", Duration::from_secs(20))
        .await;

    // A board that says hello properly, then sends junk.
    let mut raw = raw_channel(&server, "board-a", &a.path).await;
    write_frame(
        &mut raw,
        &hello("board-a", armfleet_protocol::PROTOCOL_VERSION),
    )
    .await
    .unwrap();
    let welcome = read_frame::<ServerMessage, _>(&mut raw).await.unwrap();
    assert!(matches!(welcome.message, ServerMessage::Welcome { .. }));
    server
        .wait_board("board-a", "idle", Duration::from_secs(10))
        .await;
    raw.write_all(&[0, 0, 0, 9, 0, 0, 0, 5, b'{', b'x', b'x', b'x', b'}'])
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let reason = expect_refusal(&mut raw).await;
    assert!(
        reason.contains("protocol error") && reason.contains("bad message"),
        "{reason}"
    );
    server
        .wait_board("board-a", "offline", Duration::from_secs(10))
        .await;
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
    write_frame(&mut raw, &hello("board-a", 99)).await.unwrap();
    let reason = expect_refusal(&mut raw).await;
    assert!(
        reason.contains("v99")
            && reason.contains(&format!("v{}", armfleet_protocol::PROTOCOL_VERSION)),
        "{reason}"
    );
    assert_eq!(server.board_state("board-a").await, "offline");

    // A hello that names another board than the key's is refused too.
    let mut raw = raw_channel(&server, "board-a", &a.path).await;
    write_frame(
        &mut raw,
        &hello("board-b", armfleet_protocol::PROTOCOL_VERSION),
    )
    .await
    .unwrap();
    let reason = expect_refusal(&mut raw).await;
    assert!(
        reason.contains("board-b") && reason.contains("board-a"),
        "{reason}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_and_results_for_lost_jobs_are_refused() {
    let (server, a, _b) = lab().await;
    let (mut raw, job_id, epoch) =
        board_a_with_a_job(&server, &a, "5ca1e00000000000000000000000000000000001").await;
    write_frame(
        &mut raw,
        &Frame::new(AgentMessage::JobStarted { job_id, epoch }),
    )
    .await
    .unwrap();
    let state = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SELECT state FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    wait_for("running", Duration::from_secs(10), || async {
        (state(server.pool.clone()).await == "running").then_some(())
    })
    .await;

    // A result fenced by an old epoch is refused (and acknowledged, so a
    // stale agent drops it); the job is untouched.
    let stale = AgentMessage::JobFinished {
        job_id,
        epoch: epoch - 1,
        result: armfleet_protocol::JobResult::Passed {
            cycles_completed: 3,
        },
        environment: None,
    };
    write_frame(&mut raw, &Frame::new(stale)).await.unwrap();
    let ack = next_frame(&mut raw).await;
    assert_eq!(ack.message, ServerMessage::JobAck { job_id });
    assert_eq!(
        state(server.pool.clone()).await,
        "running",
        "a stale epoch cannot end the job"
    );

    // The job is declared lost (its board vanished past the lease); a late
    // result from the old agent cannot overwrite that.
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(job_id)
        .execute(&server.pool)
        .await
        .unwrap();
    wait_for("lost", Duration::from_secs(10), || async {
        (state(server.pool.clone()).await == "lost").then_some(())
    })
    .await;
    let late = AgentMessage::JobFinished {
        job_id,
        epoch,
        result: armfleet_protocol::JobResult::Passed {
            cycles_completed: 20,
        },
        environment: None,
    };
    write_frame(&mut raw, &Frame::new(late)).await.unwrap();
    // (The server also tells the board to stop the job it declared lost.)
    loop {
        let f = next_frame(&mut raw).await;
        match f.message {
            ServerMessage::JobAck { job_id: acked } => {
                assert_eq!(acked, job_id);
                break;
            }
            ServerMessage::CancelJob {
                job_id: cancelled, ..
            } => assert_eq!(cancelled, job_id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        state(server.pool.clone()).await,
        "lost",
        "the late result was refused"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_gzip_chunk_is_refused_and_the_chunks_around_it_are_kept() {
    use armfleet_protocol::chunk::gzipped_log_chunk;
    use armfleet_protocol::{ChunkEncoding, LogStream};
    let (server, a, _b) = lab().await;
    let (mut raw, job_id, epoch) =
        board_a_with_a_job(&server, &a, "5ca1e00000000000000000000000000000000002").await;
    let console = LogStream::GuestConsole;
    let first = b"[    1.000000] Booting Linux on physical CPU 0x0\n".repeat(40);
    let last = b"[    2.000000] armfleet-guest: heartbeat 1\n".repeat(40);
    let mut corrupt = gzipped_log_chunk(job_id, epoch, console, 1, &first);
    let mut bytes = corrupt.payload.to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    corrupt.payload = bytes.into();
    let mut lying = gzipped_log_chunk(job_id, epoch, console, 2, &first);
    lying.message = AgentMessage::LogChunk {
        job_id,
        epoch,
        stream: console,
        seq: 2,
        encoding: ChunkEncoding::Gzip { raw_len: 1 << 19 },
    };
    for frame in [
        Frame::new(AgentMessage::JobStarted { job_id, epoch }),
        gzipped_log_chunk(job_id, epoch, console, 0, &first),
        corrupt,
        lying,
        gzipped_log_chunk(job_id, epoch, console, 3, &last),
        Frame::new(AgentMessage::JobFinished {
            job_id,
            epoch,
            result: armfleet_protocol::JobResult::Passed {
                cycles_completed: 1,
            },
            environment: None,
        }),
    ] {
        write_frame(&mut raw, &frame).await.unwrap();
    }
    // The connection survived the bad chunks: the job's end is acknowledged.
    let ack = next_frame(&mut raw).await;
    assert_eq!(ack.message, ServerMessage::JobAck { job_id });
    let stored: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT seq, raw_len FROM log_chunks WHERE job_id = $1 AND stream = 'guest_console' ORDER BY seq",
    )
    .bind(job_id)
    .fetch_all(&server.pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        vec![(0, first.len() as i32), (3, last.len() as i32)],
        "only the two sound chunks are stored, with their log lengths"
    );
    let text = reqwest::get(server.url(&format!("/api/v1/jobs/{job_id}/log?stream=guest_console")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text.as_bytes(),
        [first.as_slice(), last.as_slice()].concat()
    );
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("armfleet_agent_messages_refused_total 2\n"),
        "the corrupt chunk and the lying one are counted as refused:\n{metrics}"
    );
    server.stop().await;
}
