//! Who gets in: scoped API tokens, key rotation and revocation by reload,
//! the audit trail.

mod common;

use std::time::Duration;

use common::*;

fn token_entry(name: &str, token: &str, scopes: &str) -> String {
    let hash = hex::encode(armfleet_server::domain::config::token_hash(token));
    format!("\n[[token]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nscopes = [{scopes}]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_scoped_token_cannot_trigger_and_every_write_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "b").await;
    let mut fleet = fleet_toml(&[("board-1", "rpi5", &key.public)], "");
    fleet.push_str(&token_entry("dashboard", "reader-token", "\"read\""));
    fleet.push_str(&token_entry("ci", "ci-token", "\"read\", \"trigger\""));
    let server = TestServer::start(&fleet).await;
    let body = serde_json::json!({"tree": "t", "branch": "master", "commit": "abcdef12"});
    let post = |token: &'static str| {
        server
            .client
            .post(server.url("/api/v1/runs"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let r = post("reader-token").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("lacks the `trigger` scope")
    );
    assert_eq!(post("ci-token").await.unwrap().status(), 201);
    // The CI token is not an admin.
    let reload = server
        .client
        .post(server.url("/api/v1/admin/reload"))
        .bearer_auth("ci-token")
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 403);
    let audit = server.get_as_admin("/api/v1/audit").await;
    let audit: serde_json::Value = audit.json().await.unwrap();
    let first = &audit["audit"][0];
    assert_eq!(
        (first["actor"].as_str(), first["action"].as_str()),
        (Some("api:ci"), Some("trigger")),
        "{audit}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_both_keys_valid_and_a_reload_revokes_a_key_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let old = keygen(dir.path(), "old").await;
    let new = keygen(dir.path(), "new").await;
    // During a rotation the board lists both keys.
    let rotating = fleet_toml(&[("board-1", "rpi5", &old.public)], "").replace(
        &format!("key = \"{}\"", old.public),
        &format!("keys = [\"{}\", \"{}\"]", old.public, new.public),
    );
    let server = TestServer::start(&rotating).await;
    let mut with_old = server.agent("board-1", &old.path, &["--executor", "replay"]);
    server
        .wait_board("board-1", "idle", Duration::from_secs(20))
        .await;

    // An invalid file is refused and changes nothing.
    let fleet_path = server.dir.path().join("fleet.toml");
    std::fs::write(&fleet_path, "[[board]]\nname = 1\n").unwrap();
    let r = server.post_as_admin("/api/v1/admin/reload", None).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("fleet.toml"));
    assert_eq!(
        server.board_state("board-1").await,
        "idle",
        "the fleet in force stays"
    );

    // The rotation ends: only the new key remains. The old key's session is
    // closed at once and it cannot come back.
    std::fs::write(
        &fleet_path,
        fleet_toml(&[("board-1", "rpi5", &new.public)], ""),
    )
    .unwrap();
    let r = server.post_as_admin("/api/v1/admin/reload", None).await;
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!(report["keys_changed"], serde_json::json!(["board-1"]));
    assert_eq!(report["sessions_closed"], serde_json::json!(["board-1"]));
    wait_for(
        "the revoked agent to be refused",
        Duration::from_secs(20),
        || async {
            with_old
                .log_text()
                .contains("the server refused this board's key")
                .then_some(())
        },
    )
    .await;
    assert_eq!(server.board_state("board-1").await, "offline");
    with_old.kill9();
    let _with_new = server.agent("board-1", &new.path, &["--executor", "replay"]);
    server
        .wait_board("board-1", "idle", Duration::from_secs(20))
        .await;
    let audit: serde_json::Value = server
        .get_as_admin("/api/v1/audit")
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"keys-changed")
            && actions.contains(&"reload")
            && actions.contains(&"reload-refused"),
        "{actions:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_rate_limited_per_client_and_reads_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "b").await;
    let fleet = fleet_toml(&[("board-1", "rpi5", &key.public)], "").replace(
        "api_token = \"test-token\"",
        "api_token = \"test-token\"\nrate_limit_per_s = 0.5\nrate_limit_burst = 5",
    );
    let server = TestServer::start(&fleet).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = server.post_as_admin("/api/v1/runs", Some(&serde_json::json!({"tree": "t", "branch": "master", "commit": format!("abcdef{i:02}")}))).await;
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..5], &[201; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    for _ in 0..20 {
        assert_eq!(
            server
                .client
                .get(server.url("/api/v1/runs"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(runs, 5, "refused requests created nothing");
    server.stop().await;
}
