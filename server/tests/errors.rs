//! Server errors tell the client nothing of their cause: a generic message
//! and a request id, and the detail (here PostgreSQL's own error text) is in
//! the server's log under that id. Client errors keep their specific text.
//! (Its own test binary: it installs a global log subscriber to read the
//! server's log.)

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;

/// The server's log lines (the in-process server logs through the global
/// subscriber installed here).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn capture() -> Log {
        let log = Log::default();
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info,sqlx=warn,russh=warn")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("installing the log subscriber");
        log
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A board's public key (no agent connects in these tests).
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINshuiiHSBrO3Cv3at18VJGCWY8v2Y4DCSjDp7PxSnhU a";

/// What PostgreSQL says of a missing table; it must never reach a client.
const SQL_DETAIL: &str = "does not exist";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_error_answers_a_request_id_and_logs_the_detail() {
    let log = Log::capture();
    let server = TestServer::start(&fleet_toml(&[("board-1", "rpi5", KEY)], "")).await;

    // A client error keeps its specific message, and has no request id in
    // its body.
    let r = server
        .client
        .get(server.url("/api/v1/jobs/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "`abc` is not a valid job id");
    assert!(body.get("request_id").is_none(), "{body}");

    // Break the database under the server: the tables two reads need are gone.
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_gone")
        .execute(&server.pool)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE signatures RENAME TO signatures_gone")
        .execute(&server.pool)
        .await
        .unwrap();

    // The JSON API.
    let r = server.get_as_admin("/api/v1/audit").await;
    assert_eq!(r.status(), 500);
    let header = r
        .headers()
        .get("x-request-id")
        .expect("an x-request-id header")
        .to_str()
        .unwrap()
        .to_owned();
    let text = r.text().await.unwrap();
    assert!(!text.contains(SQL_DETAIL), "SQL error text leaked: {text}");
    assert!(!text.contains("audit_log"), "SQL error text leaked: {text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"], "internal error", "{body}");
    let id = body["request_id"]
        .as_str()
        .expect("a request id")
        .to_owned();
    assert_eq!(id, header);
    assert!(id.len() >= 16, "{id}");

    // The log has the detail under that id.
    let line = wait_for(
        "the error in the log",
        std::time::Duration::from_secs(5),
        || {
            let text = log.text();
            let id = id.clone();
            async move {
                text.lines()
                    .find(|l| l.contains(&id) && l.contains(SQL_DETAIL))
                    .map(str::to_owned)
            }
        },
    )
    .await;
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("audit_log"), "{line}");

    // A request id the client chose is the one answered and logged.
    let r = server
        .client
        .get(server.url("/api/v1/audit"))
        .bearer_auth(&server.token)
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["x-request-id"], "client-chosen-42");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["request_id"], "client-chosen-42");
    assert!(
        log.text()
            .lines()
            .any(|l| l.contains("client-chosen-42") && l.contains(SQL_DETAIL)),
        "{}",
        log.text()
    );

    // A dashboard page: the same rule, as HTML.
    let r = server
        .client
        .get(server.url("/signatures"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let html = r.text().await.unwrap();
    assert!(!html.contains(SQL_DETAIL), "SQL error text leaked: {html}");
    assert!(
        !html.contains("signatures_gone") && !html.contains("relation"),
        "{html}"
    );
    assert!(html.contains("internal error"), "{html}");
    assert!(
        html.contains(&id),
        "the page shows the request id {id}: {html}"
    );
    assert!(
        log.text()
            .lines()
            .any(|l| l.contains(&id) && l.contains(SQL_DETAIL)),
        "{}",
        log.text()
    );
    server.stop().await;
}
