//! The dashboard in a real headless Chromium, driven over WebDriver
//! (chromedriver, spoken with a few lines of reqwest): every page loads
//! and shows its key elements in the DOM, a hostile console line stays
//! text, and a job advancing shows up on the open job and fleet pages
//! without a reload. Screenshots go to `<target>/dashboard-screenshots/`.
//!
//! Without Chromium/chromedriver these tests print a loud SKIP; with
//! `ARMFLEET_REQUIRE_BROWSER=1` they fail instead.

mod common;
mod dashboard_support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use dashboard_support::*;
use serde_json::{Value, json};

fn find(candidates: &[&str], env: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The browser and its driver, or a loud skip (or failure when required).
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = find(
        &[
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ],
        "ARMFLEET_CHROMIUM",
    );
    let driver = find(
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        "ARMFLEET_CHROMEDRIVER",
    );
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        (c, d) => {
            let msg = format!(
                "browser tests need Chromium and chromedriver (found chromium: {c:?}, chromedriver: {d:?}); \
                 on Debian: apt-get install chromium chromium-driver"
            );
            if std::env::var("ARMFLEET_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("ARMFLEET_REQUIRE_BROWSER=1 and {msg}");
            }
            eprintln!(
                "\n########################################################\n\
                       ### SKIPPED: dashboard browser tests did not run\n### {msg}\n\
                       ########################################################\n"
            );
            None
        }
    }
}

fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/debug/deps/<test binary>
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .unwrap()
        .to_path_buf();
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A minimal W3C WebDriver client.
struct Browser {
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    http: reqwest::Client,
    base: String,
}

impl Browser {
    async fn start(chromium: &PathBuf, driver: &PathBuf) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting chromedriver");
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver to listen", Duration::from_secs(20), || {
            let http = http.clone();
            let url = format!("{root}/status");
            async move { http.get(url).send().await.is_ok() }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--no-first-run", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.path().display())],
            },
            "unhandledPromptBehavior": "ignore",
        }}});
        let resp: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
            .to_owned();
        Browser {
            _driver: child,
            _profile: profile,
            http,
            base: format!("{root}/session/{id}"),
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap().json::<Value>().await.unwrap()["value"].clone()
    }

    async fn goto(&self, url: &str) {
        let v = self
            .cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
        assert!(v.is_null(), "navigating to {url}: {v}");
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn text(&self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).unwrap();
        self.js(&format!(
            "var e = document.querySelector({sel}); return e ? e.textContent : null;"
        ))
        .await
        .as_str()
        .unwrap_or("")
        .to_owned()
    }

    async fn count(&self, selector: &str) -> i64 {
        let sel = serde_json::to_string(selector).unwrap();
        self.js(&format!("return document.querySelectorAll({sel}).length;"))
            .await
            .as_i64()
            .unwrap()
    }

    /// Whether a JavaScript dialog (alert) is open.
    async fn alert_open(&self) -> bool {
        let v = self.cmd(reqwest::Method::GET, "/alert/text", None).await;
        !(v.is_object() && v.get("error").is_some())
    }

    async fn resize(&self, w: u32, h: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": w, "height": h })),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot data"))
            .unwrap();
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    async fn wait_js(&self, what: &str, script: &str) {
        let start = std::time::Instant::now();
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

impl Drop for Browser {
    /// Also on a failed assertion: end the session so that chromedriver
    /// closes Chromium (killing chromedriver alone would orphan it).
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let rest = self.base.trim_start_matches("http://");
        let Some((host, path)) = rest.split_once('/') else {
            return;
        };
        if let Ok(mut s) = std::net::TcpStream::connect(host) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.read(&mut [0u8; 512]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_in_chromium_and_hostile_log_lines_stay_text() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let p = prepare().await;
    let s = seed(p.pool()).await;
    let url = p.serve().await;
    let b = Browser::start(&chromium, &driver).await;
    let pages: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "fleet",
            "/".into(),
            vec![
                "#family-kunpeng920",
                "tr[data-board='altra-01'] .progress",
                "#runs",
            ],
        ),
        (
            "board",
            "/boards/kunpeng-01".into(),
            vec!["#board-facts", "#failures", "#jobs"],
        ),
        (
            "kernels",
            "/kernels".into(),
            vec![
                "#kernels .v-regression",
                "#kernels .v-pass",
                "#kernels .v-running",
            ],
        ),
        (
            "kernels-trend",
            format!(
                "/kernels?tree={}&branch={BRANCH}",
                TREE.replace(':', "%3A").replace('/', "%2F")
            ),
            vec!["#plot-trend svg circle", "#plot-trend .whisker"],
        ),
        (
            "matrix",
            "/matrix".into(),
            vec![
                "#matrix td.v-regression a",
                "#matrix th[data-family='rpi4']",
            ],
        ),
        (
            "kernel",
            format!("/kernels/{}", s.buggy_kernel),
            vec![
                "#verdicts",
                "#results #family-kunpeng920",
                "#findings",
                "#runs",
                "#jobs",
            ],
        ),
        (
            "job-failed",
            format!("/jobs/{}", s.xss_job),
            vec![
                "#plot-timings svg path.series",
                "#cycles tbody tr.dead",
                "#findings a.finding-link",
                "#tail .line.alarm",
                "#logs",
                "#timeline li",
            ],
        ),
        (
            "job-running",
            format!("/jobs/{}", s.running_job),
            vec!["#live-root[data-live]", "#job-bar"],
        ),
        (
            "log-page3",
            format!(
                "/jobs/{}/log/guest_console?page=3#L{}",
                s.big_job, s.big_abort_line
            ),
            vec!["#log .line.alarm", "#log .line.finding"],
        ),
        (
            "signatures",
            "/signatures".into(),
            vec!["#signatures tbody tr"],
        ),
        (
            "error-400",
            "/matrix?plan=nope".into(),
            vec!["#error-message"],
        ),
    ];
    for (name, path, selectors) in &pages {
        b.goto(&format!("{url}{path}")).await;
        for sel in selectors {
            assert!(b.count(sel).await > 0, "{name}: `{sel}` in the DOM");
        }
        assert!(!b.alert_open().await, "{name}: no dialog");
        b.screenshot(&format!("{name}-1280")).await;
    }
    // The anchored finding line is the :target and scrolled into view.
    b.goto(&format!(
        "{url}/jobs/{}/log/guest_console?page=3#L{}",
        s.big_job, s.big_abort_line
    ))
    .await;
    let target = b.js("var t = document.querySelector(':target'); if (!t) return null; var r = t.getBoundingClientRect(); return [t.id, r.bottom > 0 && r.top < window.innerHeight];").await;
    assert_eq!(
        target,
        json!([format!("L{}", s.big_abort_line), true]),
        "anchor lands on the abort line"
    );

    // XSS: the console line and the kernel subject are text, never markup.
    for path in [
        format!("/jobs/{}", s.xss_job),
        format!("/jobs/{}/log/guest_console", s.xss_job),
        "/kernels".to_owned(),
    ] {
        b.goto(&format!("{url}{path}")).await;
        b.js("window.__armfleet_probe = 1; return null;").await;
        assert!(!b.alert_open().await, "{path}: alert() ran");
        let scripts = b.js("return Array.from(document.scripts).map(function (s) { return s.src || s.textContent; });").await;
        assert_eq!(
            scripts,
            json!([format!("{url}/static/live.js")]),
            "{path}: the only script is ours"
        );
        let shown = b
            .js("return document.body.innerText.indexOf('<script>alert(1)</script>') >= 0;")
            .await;
        assert_eq!(
            shown,
            Value::Bool(true),
            "{path}: the hostile text is visible as text"
        );
    }
    b.goto(&format!("{url}/jobs/{}/log/guest_console", s.xss_job))
        .await;
    b.screenshot("log-xss-1280").await;

    // A phone.
    b.resize(390, 844).await;
    for (name, path) in [
        ("fleet", "/".to_owned()),
        ("job-failed", format!("/jobs/{}", s.xss_job)),
        ("matrix", "/matrix".to_owned()),
    ] {
        b.goto(&format!("{url}{path}")).await;
        let overflow = b
            .js("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
            .await;
        assert_eq!(
            overflow,
            Value::Bool(true),
            "{name}: no sideways scrolling of the whole page on a phone"
        );
        b.screenshot(&format!("{name}-phone")).await;
    }
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advancing_job_updates_the_open_job_and_fleet_pages_without_a_reload() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let p = prepare().await;
    let s = seed(p.pool()).await;
    let url = p.serve().await;
    let pool = p.pool().clone();
    let job = s.running_job;
    let b = Browser::start(&chromium, &driver).await;

    b.goto(&format!("{url}/jobs/{job}")).await;
    b.wait_js(
        "the job page's live stream",
        "var s = document.getElementById('live-status'); return !!s && s.textContent === 'live';",
    )
    .await;
    b.js("window.__not_reloaded = 42; return null;").await;
    assert!(b.text("#job-cycles").await.starts_with("5 of 50"));
    let rows_before = b.count("#cycles tbody tr").await;
    advance(&pool, job, "altra-01", 3, &format!("live line {XSS}")).await;
    b.wait_js(
        "cycle 8 on the job page",
        "return document.getElementById('job-cycles').textContent.indexOf('8 of 50') === 0;",
    )
    .await;
    b.wait_js("the new console line", "return document.getElementById('tail').textContent.indexOf('live line <script>alert(1)</script>') >= 0;").await;
    assert_eq!(
        b.count("#cycles tbody tr").await,
        rows_before + 3,
        "three new cycle rows"
    );
    assert_eq!(
        b.count("#tail script").await,
        0,
        "the console line stayed text"
    );
    assert!(!b.alert_open().await);
    assert_eq!(
        b.js("return window.__not_reloaded;").await,
        json!(42),
        "no reload"
    );
    b.screenshot("job-live-1280").await;

    b.goto(&format!("{url}/")).await;
    b.wait_js(
        "the fleet page's live stream",
        "var s = document.getElementById('live-status'); return !!s && s.textContent === 'live';",
    )
    .await;
    b.js("window.__not_reloaded = 43; return null;").await;
    advance(&pool, job, "altra-01", 3, "more").await;
    b.wait_js("cycle 11 on the fleet page",
        "var r = document.querySelector(\"tr[data-board='altra-01'] [data-field='job']\"); return !!r && r.textContent.indexOf('cycle 11 of 50') >= 0;").await;
    // The job ends and the board goes idle.
    let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&pool)
        .await
        .unwrap();
    armfleet_server::domain::jobs::finish(
        &pool,
        job,
        "altra-01",
        epoch,
        &armfleet_protocol::JobResult::Passed {
            cycles_completed: 11,
        },
        None,
    )
    .await
    .unwrap();
    armfleet_server::domain::boards::refresh_busy(&pool, "altra-01")
        .await
        .unwrap();
    b.wait_js("altra-01 idle on the fleet page",
        "var r = document.querySelector(\"tr[data-board='altra-01'] [data-field='state']\"); return !!r && r.textContent === 'idle';").await;
    b.wait_js("the run's chip to say passed", &format!("var c = document.querySelector(\"a[data-job='{job}']\"); return !!c && c.textContent.indexOf('passed') >= 0;")).await;
    assert_eq!(
        b.js("return window.__not_reloaded;").await,
        json!(43),
        "no reload"
    );
    b.screenshot("fleet-live-1280").await;
    b.quit().await;
}
