//! `armfleet serve` as a process, on its embedded private PostgreSQL.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_its_own_postgres_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // The private cluster runs as `postgres` when we are root: it must be
    // able to reach the data dir.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fleet = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fleet.toml");
    let http = free_port();
    let data = dir.path().join("data");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_armfleet"))
        .args([
            "serve",
            "--ssh",
            "127.0.0.1:0",
            "--http",
            &format!("127.0.0.1:{http}"),
            "--config",
        ])
        .arg(&fleet)
        .arg("--data-dir")
        .arg(&data)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{http}/healthz"))
            .send()
            .await
        {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "server did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let boards: serde_json::Value = client
        .get(format!("http://127.0.0.1:{http}/api/v1/boards"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(boards["boards"].as_array().unwrap().len(), 4);
    assert!(
        data.join("postgres/pgdata/PG_VERSION").exists(),
        "private cluster initialised under the data dir"
    );
    assert!(
        data.join("postgres/pgdata/postmaster.pid").exists(),
        "and running"
    );
    assert!(data.join("api-token").exists() && data.join("ssh_host_ed25519_key").exists());

    // SIGTERM: graceful stop, PostgreSQL stopped with it.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("server exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !data.join("postgres/pgdata/postmaster.pid").exists(),
        "PostgreSQL was stopped with the server"
    );

    // The fingerprint is stable across restarts.
    let fp = std::process::Command::new(env!("CARGO_BIN_EXE_armfleet"))
        .args(["fingerprint", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let fp = String::from_utf8(fp.stdout).unwrap();
    assert!(fp.trim().starts_with("SHA256:"), "{fp}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
