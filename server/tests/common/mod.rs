//! Test helpers: a real PostgreSQL, a real server, real agent processes
//! over real SSH, each in a line or two.
#![allow(dead_code)]

pub mod board_sshd;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use armfleet_server::wiring::app::{Server, Settings};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The admin URL of the PostgreSQL the tests use: `$DATABASE_URL`, or a
/// private throwaway cluster started once per test binary and stopped by a
/// reaper process when the binary exits.
fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.is_empty() {
                return url;
            }
        }
        let dir = PathBuf::from(format!("/tmp/armfleet-testpg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pg = armfleet_server::wiring::db::embedded::EmbeddedPostgres::start(&dir)
            .expect("starting a private PostgreSQL for the tests (set DATABASE_URL to use another)");
        let socket = pg.socket_dir().display().to_string();
        let stop = pg.detach();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            stop = stop.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(" "),
            dir = dir.display()
        );
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the PostgreSQL reaper");
        format!("postgres://postgres@localhost/postgres?host={socket}&port=5432")
    })
}

use std::os::unix::process::CommandExt;

/// A fresh, empty database for one test.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("armfleet_t{}_{}", std::process::id(), rand::random::<u32>());
    let pool = PgPool::connect(admin)
        .await
        .expect("connecting to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("creating a test database");
    pool.close().await;
    replace_db(admin, &name)
}

fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map(|(b, q)| (b, Some(q)))
        .unwrap_or((url, None));
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Binaries built by `cargo test --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let target = me.parent().unwrap().parent().unwrap();
    let path = target.join(name);
    assert!(
        path.is_file(),
        "{} not built: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

pub struct AgentKey {
    pub path: PathBuf,
    pub public: String,
}

/// `armfleet-agent keygen`, for real.
pub async fn keygen(dir: &Path, name: &str) -> AgentKey {
    let path = dir.join(format!("{name}.key"));
    let out = Command::new(bin("armfleet-agent"))
        .arg("keygen")
        .arg("--out")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    AgentKey { path, public }
}

/// A fleet.toml for `boards` (name, family, public key line).
pub fn fleet_toml(boards: &[(&str, &str, &str)], plan_extra: &str) -> String {
    let mut s = String::from(
        "[server]\nheartbeat_interval_ms = 300\nheartbeat_deadline_ms = 1500\nassign_deadline_s = 30\napi_token = \"test-token\"\n\n",
    );
    for (name, family, key) in boards {
        s.push_str(&format!(
            "[[board]]\nname = \"{name}\"\nfamily = \"{family}\"\nlabels = [\"kvm\"]\nkey = \"{key}\"\n\n"
        ));
    }
    s.push_str(&format!(
        "[[plan]]\nname = \"smoke\"\ntype = \"migrate-cancel\"\nlabels = [\"kvm\"]\ntimeout_s = 600\n{plan_extra}\n"
    ));
    // Unless a test is about them, no automatic extra cycles or retries: the
    // test decides every job that runs.
    if !plan_extra.contains("[plan.verdict]") {
        s.push_str("[plan.verdict]\nmax_extensions = 0\nmax_infra_retries = 0\n");
    }
    s
}

/// A key in `dir` for each board (name, family), and the fleet.toml that
/// names them with `plan_extra` (as for [`fleet_toml`]).
pub async fn keyed_fleet(
    dir: &Path,
    boards: &[(&str, &str)],
    plan_extra: &str,
) -> (String, Vec<AgentKey>) {
    let mut keys = Vec::new();
    for (name, _) in boards {
        keys.push(keygen(dir, name).await);
    }
    let listed: Vec<(&str, &str, &str)> = boards
        .iter()
        .zip(&keys)
        .map(|((name, family), key)| (*name, *family, key.public.as_str()))
        .collect();
    (fleet_toml(&listed, plan_extra), keys)
}

/// The `[ssh_board]` table of a controller's agent.toml that drives `board`.
pub fn ssh_board_toml(board: &armfleet_migrate_stress::ssh_board::SshBoardConfig) -> String {
    #[derive(serde::Serialize)]
    struct AgentToml<'a> {
        ssh_board: &'a armfleet_migrate_stress::ssh_board::SshBoardConfig,
    }
    toml::to_string(&AgentToml { ssh_board: board }).expect("an [ssh_board] table")
}

/// One board of each of three families, as (name, family): the usual lab.
pub const THREE_FAMILIES: [(&str, &str); 3] = [
    ("kunpeng-01", "kunpeng920"),
    ("altra-01", "ampere-altra"),
    ("rpi4-01", "rpi4"),
];

/// A real server on its own database with one replaying agent per board,
/// every board connected and idle: how most end-to-end tests begin.
pub struct Lab {
    pub server: TestServer,
    pub agents: Vec<TestAgent>,
    _keys_dir: tempfile::TempDir,
}

impl Lab {
    /// `boards` are (name, family); `plan_extra` as for [`fleet_toml`].
    pub async fn replay(boards: &[(&str, &str)], plan_extra: &str) -> Lab {
        Lab::replay_edited(boards, plan_extra, |fleet| fleet).await
    }

    /// [`Lab::replay`] with the fleet.toml passed through `edit` first (a
    /// server setting the test is about).
    pub async fn replay_edited(
        boards: &[(&str, &str)],
        plan_extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Lab {
        let keys_dir = tempfile::tempdir().unwrap();
        let (fleet, keys) = keyed_fleet(keys_dir.path(), boards, plan_extra).await;
        let server = TestServer::start(&edit(fleet)).await;
        let agents = boards
            .iter()
            .zip(&keys)
            .map(|((name, _), key)| server.agent(name, &key.path, &["--executor", "replay"]))
            .collect();
        for (name, _) in boards {
            server
                .wait_board(name, "idle", Duration::from_secs(20))
                .await;
        }
        Lab {
            server,
            agents,
            _keys_dir: keys_dir,
        }
    }
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub db: String,
    pub http: String,
    pub ssh: String,
    pub fingerprint: String,
    pub token: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// A real server on loopback ports with its own database.
    pub async fn start(fleet: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, fleet).await
    }

    pub async fn start_in(dir: tempfile::TempDir, fleet: &str) -> TestServer {
        let db = fresh_database().await;
        Self::start_with(dir, fleet, db, None).await
    }

    /// Stops this server and starts a new one on the same database, data
    /// dir and fleet (its address changes).
    pub async fn restart(mut self) -> TestServer {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().expect("server stops cleanly");
        }
        let fleet = std::fs::read_to_string(self.dir.path().join("fleet.toml")).unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let db = self.db.clone();
        // Same ports, so agents dialing the old address find the new server.
        let addrs = (
            self.http.trim_start_matches("http://").to_owned(),
            self.ssh.clone(),
        );
        Self::start_with(dir, &fleet, db, Some(addrs)).await
    }

    /// A server on a database the test manages itself.
    pub async fn start_on(db: String, fleet: &str) -> TestServer {
        Self::start_with(tempfile::tempdir().unwrap(), fleet, db, None).await
    }

    /// A second server process on the same database (its own data dir,
    /// host key and ports), as a lab that outgrew one host would run.
    pub async fn start_sharing(&self) -> TestServer {
        let fleet = std::fs::read_to_string(self.dir.path().join("fleet.toml")).unwrap();
        Self::start_with(tempfile::tempdir().unwrap(), &fleet, self.db.clone(), None).await
    }

    async fn start_with(
        dir: tempfile::TempDir,
        fleet: &str,
        db: String,
        addrs: Option<(String, String)>,
    ) -> TestServer {
        let fleet_path = dir.path().join("fleet.toml");
        std::fs::write(&fleet_path, fleet).unwrap();
        let server = Server::prepare(Settings {
            fleet_path,
            data_dir: dir.path().join("data"),
            database_url: Some(db.clone()),
        })
        .await
        .expect("server prepares");
        let (http_at, ssh_at) = addrs.unwrap_or(("127.0.0.1:0".into(), "127.0.0.1:0".into()));
        let http = tokio::net::TcpListener::bind(&http_at).await.unwrap();
        let ssh = tokio::net::TcpListener::bind(&ssh_at).await.unwrap();
        let http_addr = format!("http://{}", http.local_addr().unwrap());
        let ssh_addr = ssh.local_addr().unwrap().to_string();
        let fingerprint = server.fingerprint.clone();
        let token = server.api_token.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(http, ssh, shutdown.clone()));
        let pool = PgPool::connect(&db).await.unwrap();
        TestServer {
            dir,
            db,
            http: http_addr,
            ssh: ssh_addr,
            fingerprint,
            token,
            pool,
            client: reqwest::Client::new(),
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// A page or text endpoint, which must answer 2xx.
    pub async fn get_text(&self, path: &str) -> String {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.text().await.unwrap()
    }

    /// `POST path` with the API token (and a JSON body if given); the
    /// answer, whatever its status.
    pub async fn post_as_admin(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url(path)).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.unwrap()
    }

    /// `GET path` with the API token; the answer, whatever its status.
    pub async fn get_as_admin(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    /// `POST /api/v1/runs` with the token; returns the run id.
    pub async fn trigger(&self, commit: &str) -> i64 {
        let resp = self
            .client
            .post(self.url("/api/v1/runs"))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"tree": "https://example.org/linux.git", "branch": "master", "commit": commit}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            201,
            "trigger: {}",
            resp.text().await.unwrap_or_default()
        );
        resp.json::<serde_json::Value>().await.unwrap()["run_id"]
            .as_i64()
            .unwrap()
    }

    pub async fn board_state(&self, board: &str) -> String {
        sqlx::query_scalar("SELECT state FROM boards WHERE name = $1")
            .bind(board)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until `board` is in `state` (e.g. `idle` once its agent is in).
    pub async fn wait_board(&self, board: &str, state: &str, timeout: Duration) {
        wait_for(&format!("{board} to be {state}"), timeout, || async {
            (self.board_state(board).await == state).then_some(())
        })
        .await
    }

    /// Waits until `job` has ended; returns its API record.
    pub async fn wait_job_end(&self, job: i64, timeout: Duration) -> serde_json::Value {
        wait_for(&format!("job {job} to end"), timeout, || async {
            let j = self.get_json(&format!("/api/v1/jobs/{job}")).await;
            let live = ["queued", "assigned", "running"]
                .contains(&j["state"].as_str().unwrap_or_default());
            (!live).then_some(j)
        })
        .await
    }

    /// Starts an agent process for `board` with `key`.
    pub fn agent(&self, board: &str, key: &Path, extra: &[&str]) -> TestAgent {
        let state_dir = self
            .dir
            .path()
            .join(format!("agent-{board}-{}", rand::random::<u16>()));
        self.agent_in(board, key, &state_dir, extra)
    }

    /// Starts an agent process for `board` keeping its state in `state_dir`.
    pub fn agent_in(&self, board: &str, key: &Path, state_dir: &Path, extra: &[&str]) -> TestAgent {
        self.agent_with_env(board, key, state_dir, extra, &[])
    }

    /// Like [`TestServer::agent_in`], with extra environment variables.
    pub fn agent_with_env(
        &self,
        board: &str,
        key: &Path,
        state_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestAgent {
        let log = state_dir.with_extension("log");
        let child = Command::new(bin("armfleet-agent"))
            .arg("--server")
            .arg(&self.ssh)
            .arg("--board")
            .arg(board)
            .arg("--key")
            .arg(key)
            .arg("--server-key")
            .arg(&self.fingerprint)
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .env("ARMFLEET_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("starting armfleet-agent");
        TestAgent { child, log }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().expect("server stops cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct TestAgent {
    pub child: Child,
    pub log: PathBuf,
}

impl TestAgent {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn kill9(&mut self) {
        let pid = self.child.id().expect("agent running") as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A raw SSH channel to the server, authenticated as `board` with `key`,
/// for tests that speak (or mangle) the protocol by hand.
pub async fn raw_channel(
    server: &TestServer,
    board: &str,
    key: &Path,
) -> russh::ChannelStream<russh::client::Msg> {
    struct AcceptPinned(String);
    impl russh::client::Handler for AcceptPinned {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            key: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(match key {
                russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                    key.fingerprint(russh::keys::HashAlg::Sha256).to_string() == self.0
                }
                _ => false,
            })
        }
    }
    let config = std::sync::Arc::new(russh::client::Config::default());
    let mut handle = russh::client::connect(
        config,
        server.ssh.as_str(),
        AcceptPinned(server.fingerprint.clone()),
    )
    .await
    .expect("ssh connect");
    let key = russh::keys::load_secret_key(key, None).unwrap();
    let auth = handle
        .authenticate_publickey(
            board,
            russh::keys::PrivateKeyWithHashAlg::new(std::sync::Arc::new(key), None),
        )
        .await
        .unwrap();
    assert!(auth.success(), "authentication as {board}");
    let channel = handle.channel_open_session().await.unwrap();
    // Keep the connection alive for as long as the test holds the stream.
    std::mem::forget(handle);
    channel.into_stream()
}

/// `git -C dir args…` with a fixed identity; returns stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A virtual arm64 board (`armfleet-agent vboard run`) booted for a test,
/// with the controller key pair that drives it. Stopped when dropped.
pub struct VirtualBoard {
    pub state: PathBuf,
    pub controller_key: PathBuf,
    pub port: u16,
    pub info: serde_json::Value,
    child: Child,
}

/// The image `agent/vboard/build.sh` makes, and QEMU: skips loudly, or
/// fails under `ARMFLEET_REQUIRE_QEMU=1`, when either is missing.
pub fn vboard_ready() -> bool {
    match armfleet_server::wiring::demo::vboard_image() {
        Ok(_) => true,
        Err(why) => skip_loudly(why),
    }
}

/// Says loudly that a test skips its real part and why — or fails, under
/// `ARMFLEET_REQUIRE_QEMU=1` (set by scripts/test once QEMU is installed).
/// Always `false`: "not ready".
pub fn skip_loudly(why: String) -> bool {
    if std::env::var("ARMFLEET_REQUIRE_QEMU").is_ok_and(|v| v == "1") {
        panic!("ARMFLEET_REQUIRE_QEMU=1 but {why}");
    }
    eprintln!("\n******** SKIPPED (not passing): {why} — run scripts/test as root ********\n");
    false
}

impl VirtualBoard {
    /// Boots one in `dir` (`mode`: vhe or nvhe) and waits until its SSH
    /// answers.
    pub async fn boot(dir: &Path, name: &str, mode: &str) -> VirtualBoard {
        let state = dir.join(format!("vboard-{name}"));
        std::fs::create_dir_all(&state).unwrap();
        let controller = keygen(dir, &format!("controller-{name}")).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin("armfleet-agent"))
            .args([
                "vboard",
                "run",
                "--mode",
                mode,
                "--ssh-port",
                &port.to_string(),
            ])
            .arg("--state")
            .arg(&state)
            .arg("--authorized-key")
            .arg(controller.path.with_extension("pub"))
            .env("ARMFLEET_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(state.with_extension("log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("starting armfleet-agent vboard run");
        let json = state.join("vboard.json");
        let info: serde_json::Value = wait_for(
            "the virtual board's SSH",
            Duration::from_secs(600),
            || async {
                let text = std::fs::read_to_string(&json).ok()?;
                serde_json::from_str(&text).ok()
            },
        )
        .await;
        VirtualBoard {
            state,
            controller_key: controller.path,
            port,
            info,
            child,
        }
    }

    /// The `[ssh_board]` table an agent needs to drive it, pinning
    /// `host_key`.
    pub fn ssh_board_toml(&self, host_key: &str) -> String {
        ssh_board_toml(&armfleet_migrate_stress::ssh_board::SshBoardConfig {
            host_key: host_key.into(),
            ..self.ssh_config()
        })
    }

    pub fn host_key(&self) -> String {
        self.info["host_key"].as_str().unwrap().to_owned()
    }

    /// The migrate-stress SSH client's view of the board, for checks.
    pub fn ssh_config(&self) -> armfleet_migrate_stress::ssh_board::SshBoardConfig {
        armfleet_migrate_stress::ssh_board::SshBoardConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "root".into(),
            host_key: self.host_key(),
            key: self.controller_key.clone(),
            guest_dir: "/guest".into(),
            work_dir: "/run/armfleet".into(),
            emulated: true,
        }
    }

    /// Runs a shell command on the board over SSH.
    pub async fn sh(&self, cmd: &str) -> String {
        let b = armfleet_migrate_stress::ssh_board::SshBoard::connect(&self.ssh_config())
            .await
            .expect("SSH to the virtual board");
        let out = b.run(cmd, Duration::from_secs(60)).await.expect(cmd);
        b.disconnect().await;
        out.stdout_text()
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.state.join("console.log")).unwrap_or_default()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl TestServer {
    /// An agent on this machine acting as the lab controller of an
    /// SSH-driven board, configured through agent.toml's `[ssh_board]`.
    pub fn controller_agent(&self, board: &str, key: &Path, ssh_board_toml: &str) -> TestAgent {
        let state_dir = self
            .dir
            .path()
            .join(format!("controller-{board}-{}", rand::random::<u16>()));
        std::fs::create_dir_all(&state_dir).unwrap();
        let config = state_dir.join("agent.toml");
        std::fs::write(&config, ssh_board_toml).unwrap();
        let config = config.display().to_string();
        self.agent_in(board, key, &state_dir, &["--config", &config])
    }
}

/// Validates KCIDB JSON with KernelCI's own `kcidb-io` schema package.
/// Returns false (having said so loudly) when the package is missing and
/// `ARMFLEET_REQUIRE_KCIDB` is unset; panics when the data does not validate.
pub fn kcidb_validate(dir: &Path, data: &serde_json::Value) -> bool {
    let path = dir.join(format!("kcidb-{}.json", rand::random::<u32>()));
    std::fs::write(&path, data.to_string()).unwrap();
    let check = std::process::Command::new("python3")
        .args(["-c", "import json,sys; from kcidb_io import schema; schema.LATEST.validate(json.load(open(sys.argv[1]))); print('valid', schema.LATEST.major, schema.LATEST.minor)"])
        .arg(&path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    if out.contains("No module named 'kcidb_io'")
        && std::env::var("ARMFLEET_REQUIRE_KCIDB").is_err()
    {
        eprintln!(
            "\n*** SKIPPED (not passing): kcidb-io is not installed; run scripts/test, which pip-installs it ***\n"
        );
        return false;
    }
    assert!(
        check.status.success() && out.contains("valid"),
        "KCIDB output does not validate: {out}\n{data:#}"
    );
    true
}
