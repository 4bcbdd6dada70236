//! Dashboard benchmark: seeds 100,000 jobs with plain SQL (plus one job
//! with 20,000 cycles and one with a 200 MB console log), then renders
//! every page N times in-process (`oneshot` on the real router and a real
//! PostgreSQL) and prints p50/p99 per page.
//!
//!   cargo run --release -p armfleet-server --example dashboard_bench [-- N [LOG_MB]]
//!
//! Uses `DATABASE_URL` (a new database is created in it) or else starts a
//! private cluster under /tmp.

use std::time::{Duration, Instant};

use armfleet_protocol::LogStream;
use armfleet_server::wiring::app::{Server, Settings};
use axum::body::Body;
use axum::http::Request;
use sqlx::PgPool;
use tower::ServiceExt;

const FLEET: &str = r#"
[server]
api_token = "bench"
[[board]]
name = "kunpeng-01"
family = "kunpeng920"
labels = ["kvm"]
key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINshuiiHSBrO3Cv3at18VJGCWY8v2Y4DCSjDp7PxSnhU a@k"
[[board]]
name = "altra-01"
family = "ampere-altra"
labels = ["kvm"]
key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3SXM6axZ4/Gucd4kmFjr5dx2Qa0JRQ4bMKsHpe9diY a@a"
[[board]]
name = "rpi4-01"
family = "rpi4"
labels = ["kvm"]
key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIARRA47iBnw6TPFVeJFF7LmirH2r0MDniNjrvd+WJC4+ a@r"
[[plan]]
name = "smoke"
type = "migrate-cancel"
labels = ["kvm"]
timeout_s = 600
[plan.params]
cycles = 200
"#;

const FAMILIES: [&str; 6] = [
    "kunpeng920",
    "ampere-altra",
    "ampere-one",
    "nvidia-grace",
    "rpi4",
    "rpi5",
];
const BOARDS_PER_FAMILY: usize = 4;
const KERNELS: i64 = 4200;

async fn exec(pool: &PgPool, sql: &str) {
    let t = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    eprintln!(
        "  {:>6.1} s  {}",
        t.elapsed().as_secs_f64(),
        sql.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
    );
}

async fn seed(pool: &PgPool, log_mb: usize) -> (i64, i64, i64) {
    eprintln!("seeding…");
    let boards: Vec<String> = FAMILIES
        .iter()
        .flat_map(|f| {
            (1..=BOARDS_PER_FAMILY).map(move |i| {
                format!("('{f}-{i:02}', '{f}', 'arm64', '{{kvm}}', 'idle', true, now())")
            })
        })
        .collect();
    exec(pool, &format!("INSERT INTO boards (name, family, arch, labels, state, simulated, last_heartbeat) VALUES {} ON CONFLICT DO NOTHING", boards.join(","))).await;
    exec(pool, "UPDATE boards SET facts = '{\"kernel_release\": \"6.12.9-arm64\", \"cores\": 80, \"mem_total_kib\": 268435456, \"cpu_implementer\": \"0x41\"}'::jsonb").await;
    exec(pool, &format!(
        "INSERT INTO kernels (tree, branch, commit_sha, subject, created_at)
         SELECT 'https://git.kernel.org/pub/scm/linux/kernel/git/kvmarm/kvmarm.git',
                (ARRAY['next','fixes','queue','master'])[1 + g % 4], md5(g::text) || substr(md5((g+1)::text), 1, 8),
                'KVM: arm64: change number ' || g, now() - make_interval(mins => {KERNELS} - g)
         FROM generate_series(1, {KERNELS}) g")).await;
    exec(pool, "INSERT INTO runs (kernel_id, requested_by, created_at) SELECT id, 'bench', created_at FROM kernels ORDER BY id").await;
    // One job per (run, board): 4,200 × 24 = 100,800 jobs; ~3% failed, 1% lab errors, the newest runs still going.
    exec(pool, &format!(
        "INSERT INTO jobs (run_id, kernel_id, board, plan, spec, state, epoch, executor, simulated, cycles_total,
                           cycles_completed, failed_cycle, reason, created_at, started_at, finished_at, analyzed_at)
         SELECT r.id, r.kernel_id, b.name, 'smoke',
                '{{\"plan\": \"smoke\", \"timeout_s\": 600, \"task\": {{\"type\": \"migrate_cancel\", \"cycles\": 200}}}}'::jsonb,
                s.state, 1, 'replay', true, 200,
                CASE s.state WHEN 'passed' THEN 200 WHEN 'failed' THEN h % 200 WHEN 'running' THEN h % 150 WHEN 'queued' THEN 0 ELSE h % 100 END,
                CASE WHEN s.state = 'failed' THEN h % 200 + 1 END,
                CASE WHEN s.state = 'failed' THEN 'guest took a TLB conflict abort' WHEN s.state = 'infra_error' THEN 'qemu died' END,
                r.created_at, r.created_at, CASE WHEN s.state NOT IN ('queued','running') THEN r.created_at + interval '20 min' END,
                CASE WHEN s.state NOT IN ('queued','running') THEN r.created_at + interval '21 min' END
         FROM runs r CROSS JOIN boards b
         CROSS JOIN LATERAL (SELECT abs(hashtext(r.id::text || b.name)) AS h) hh
         CROSS JOIN LATERAL (SELECT CASE
              WHEN r.id > {k} - 2 THEN (CASE WHEN h % 3 = 0 THEN 'queued' ELSE 'running' END)
              WHEN h % 100 < 3 THEN 'failed' WHEN h % 100 = 3 THEN 'infra_error' ELSE 'passed' END AS state) s
         WHERE b.state <> 'retired' ORDER BY r.id, b.name", k = KERNELS)).await;
    exec(pool, "INSERT INTO job_events (job_id, from_state, to_state, reason, at)
                SELECT id, NULL, 'queued', 'planned', created_at FROM jobs
                UNION ALL SELECT id, 'queued', 'assigned', NULL, created_at FROM jobs WHERE state <> 'queued'
                UNION ALL SELECT id, 'assigned', 'running', NULL, started_at FROM jobs WHERE state <> 'queued'
                UNION ALL SELECT id, 'running', state, reason, finished_at FROM jobs WHERE finished_at IS NOT NULL").await;
    exec(pool, "INSERT INTO signatures (signature, title, class, first_job_id, last_job_id, count, first_seen_at, last_seen_at)
                SELECT md5('sig' || g), 'TLB conflict abort in function_' || g, 'guest-abort',
                       (SELECT min(id) FROM jobs WHERE state = 'failed'), (SELECT max(id) FROM jobs WHERE state = 'failed'),
                       0, now() - interval '3 days', now() - make_interval(mins => g)
                FROM generate_series(1, 200) g").await;
    exec(pool, "INSERT INTO findings (job_id, stream, ordinal, title, class, source, corrupted, fatal, signature, start_line, end_line, excerpt)
                SELECT j.id, 'guest_console', 0, 'TLB conflict abort in function_' || (1 + j.id % 200), 'guest-abort', 'guest',
                       false, true, md5('sig' || (1 + j.id % 200)), 1000 + j.id % 5000, 1040 + j.id % 5000, 'Unable to handle kernel TLB conflict abort'
                FROM jobs j WHERE j.state = 'failed'").await;
    exec(pool, "UPDATE signatures s SET count = c.n FROM (SELECT signature, count(*) AS n FROM findings GROUP BY signature) c WHERE c.signature = s.signature").await;
    exec(pool, "INSERT INTO kernel_results (kernel_id, family, plan, jobs, boards, cycles_run, failed_cycles, infra_errors, simulated, board_seconds)
                SELECT j.kernel_id, b.family, j.plan, count(*), count(DISTINCT j.board),
                       sum(j.cycles_completed + CASE WHEN j.state = 'failed' THEN 1 ELSE 0 END),
                       count(*) FILTER (WHERE j.state = 'failed'), count(*) FILTER (WHERE j.state = 'infra_error'), true, 4800
                FROM jobs j JOIN boards b ON b.name = j.board
                WHERE j.state IN ('passed','failed','infra_error') GROUP BY j.kernel_id, b.family, j.plan").await;
    exec(pool, "INSERT INTO verdicts (kernel_id, family, plan, baseline_kernel_id, baseline_reason, verdict, p_value, cycles_run,
                                      failed_cycles, rate, ci_low, ci_high, baseline_cycles, baseline_failed, explanation)
                SELECT kr.kernel_id, kr.family, kr.plan, CASE WHEN kr.kernel_id > 4 THEN kr.kernel_id - 4 END, 'previous tested commit on the branch',
                       CASE WHEN kr.failed_cycles = 0 THEN 'pass' WHEN kr.failed_cycles > 1 THEN 'regression' ELSE 'inconclusive' END,
                       CASE WHEN kr.failed_cycles > 0 THEN 0.04 / kr.failed_cycles END, kr.cycles_run, kr.failed_cycles,
                       kr.failed_cycles::float8 / GREATEST(kr.cycles_run, 1), 0, 0.01, 800, 0, 'bench'
                FROM kernel_results kr").await;
    // Cycle records: the newest 200 jobs × up to 200 cycles, and one job with 20,000.
    let cycle_json = "jsonb_build_object('cycle', c, 'action', 'cancel', 'delay_ms', 200 + c % 400, 'state_reached', 'active',
                      'final_state', 'cancelled', 'bytes_transferred', 1048576, 'dirty_pages_rate', 1000,
                      'cancel_to_cancelled_ms', 5 + c % 7, 'guest_progress_ms', 20 + c % 13, 'guest_alive', true,
                      'resumed_paused_source', false, 'events', '[]'::jsonb, 'wall_ms', 400 + c % 50)";
    exec(pool, &format!("INSERT INTO job_cycles (job_id, cycle, record)
                SELECT j.id, c, {cycle_json} FROM (SELECT id, cycles_completed FROM jobs ORDER BY id DESC LIMIT 200) j
                CROSS JOIN LATERAL generate_series(1, GREATEST(j.cycles_completed, 1)) c")).await;
    let long_job: i64 = sqlx::query_scalar("SELECT min(id) FROM jobs WHERE state = 'passed'")
        .fetch_one(pool)
        .await
        .unwrap();
    exec(
        pool,
        &format!(
            "UPDATE jobs SET cycles_total = 20000, cycles_completed = 20000 WHERE id = {long_job}"
        ),
    )
    .await;
    exec(pool, &format!("INSERT INTO job_cycles (job_id, cycle, record) SELECT {long_job}, c, {cycle_json} FROM generate_series(1, 20000) c")).await;
    // A console of `log_mb` MB in 64 KiB chunks, with an abort in the middle.
    let log_job: i64 = sqlx::query_scalar("SELECT min(id) FROM jobs WHERE state = 'failed'")
        .fetch_one(pool)
        .await
        .unwrap();
    let t = Instant::now();
    let mut line_no = 0u64;
    let target = log_mb * 1024 * 1024;
    let mut written = 0usize;
    let mut seq = 0u64;
    while written < target {
        let mut chunk = String::with_capacity(66 * 1024);
        while chunk.len() < 64 * 1024 {
            line_no += 1;
            if line_no == 1_000_000 {
                chunk.push_str("[ 4242.000000] Unable to handle kernel TLB conflict abort at virtual address ffff00000a2c3000\n");
            } else {
                chunk.push_str(&format!(
                    "[{:6}.{:06}] armfleet-dirty: pass {line_no} ok, 262144 pages dirtied\n",
                    line_no / 1000,
                    line_no % 1_000_000
                ));
            }
        }
        written += chunk.len();
        armfleet_server::domain::logs::store_chunk(
            pool,
            log_job,
            LogStream::GuestConsole,
            seq,
            chunk.as_bytes(),
        )
        .await
        .unwrap();
        seq += 1;
    }
    eprintln!(
        "  {:>6.1} s  {} MB console ({line_no} lines, {seq} chunks) for job {log_job}",
        t.elapsed().as_secs_f64(),
        written >> 20
    );
    exec(pool, "ANALYZE").await;
    (long_job, log_job, (line_no as i64 + 1999) / 2000)
}

async fn time_get(app: &axum::Router, uri: &str) -> (Duration, usize) {
    let t = Instant::now();
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 256 << 20)
        .await
        .unwrap();
    assert!(
        status.is_success(),
        "GET {uri}: {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    (t.elapsed(), body.len())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let log_mb: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200);
    let dir = std::path::PathBuf::from(format!("/tmp/armfleet-dashbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut embedded = None;
    let admin = match std::env::var("DATABASE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            let pg =
                armfleet_server::wiring::db::embedded::EmbeddedPostgres::start(&dir.join("pg"))?;
            let url = format!(
                "postgres://postgres@localhost/postgres?host={}&port=5432",
                pg.socket_dir().display()
            );
            embedded = Some(pg);
            url
        }
    };
    let db = format!("armfleet_dashbench_{}", std::process::id());
    let admin_pool = PgPool::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin_pool)
        .await?;
    let (base, query) = admin
        .split_once('?')
        .map(|(b, q)| (b.to_owned(), format!("?{q}")))
        .unwrap_or((admin.clone(), String::new()));
    let url = format!("{}/{db}{query}", &base[..base.rfind('/').unwrap()]);
    std::fs::write(dir.join("fleet.toml"), FLEET)?;
    let server = Server::prepare(Settings {
        fleet_path: dir.join("fleet.toml"),
        data_dir: dir.join("data"),
        database_url: Some(url),
    })
    .await?;
    let state = server.state.clone();
    let (long_job, log_job, log_pages) = seed(&state.pool, log_mb).await;
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&state.pool)
        .await?;
    let recent_job: i64 = sqlx::query_scalar("SELECT max(id) FROM jobs WHERE state = 'running'")
        .fetch_one(&state.pool)
        .await?;
    let mid_kernel = KERNELS / 2;
    let app = armfleet_server::transport::http::app(state.clone());

    // The first view of the last page of the big log builds its line index.
    let last_log = format!("/jobs/{log_job}/log/guest_console?page={log_pages}");
    let (cold, _) = time_get(&app, &last_log).await;
    let (cold_mid, _) =
        time_get(&app, &format!("/jobs/{log_job}/log/guest_console?page=500")).await;

    let pages: Vec<(&str, String)> = vec![
        ("fleet", "/".into()),
        ("fleet runs p50", "/?runs=50".into()),
        ("board", "/boards/kunpeng920-01".into()),
        ("board p80", "/boards/kunpeng920-01?page=80".into()),
        ("kernels", "/kernels".into()),
        ("kernels branch+plot", "/kernels?tree=https%3A%2F%2Fgit.kernel.org%2Fpub%2Fscm%2Flinux%2Fkernel%2Fgit%2Fkvmarm%2Fkvmarm.git&branch=next".into()),
        ("kernels p40", "/kernels?page=40".into()),
        ("matrix", "/matrix".into()),
        ("matrix filtered", "/matrix?branch=fixes&plan=smoke".into()),
        ("kernel", format!("/kernels/{mid_kernel}")),
        ("job running", format!("/jobs/{recent_job}")),
        ("job 20k cycles", format!("/jobs/{long_job}")),
        ("job 20k cycles p50", format!("/jobs/{long_job}?cycles=50")),
        ("job 200MB log", format!("/jobs/{log_job}")),
        ("log p1", format!("/jobs/{log_job}/log/guest_console")),
        ("log middle (warm)", format!("/jobs/{log_job}/log/guest_console?page=500")),
        ("log last (warm)", last_log.clone()),
        ("signatures", "/signatures".into()),
        ("signatures p4", "/signatures?page=4".into()),
    ];
    println!(
        "\n{jobs} jobs, {KERNELS} kernels, {} boards; {n} renders per page (after 2 warm-ups)",
        FAMILIES.len() * BOARDS_PER_FAMILY + 3
    );
    println!(
        "log: {log_mb} MB, {log_pages} pages; first view of its last page {:.0} ms, then page 500 {:.0} ms (line index built once, then cached)",
        cold.as_secs_f64() * 1000.0,
        cold_mid.as_secs_f64() * 1000.0
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>10}",
        "page", "p50 ms", "p99 ms", "max ms", "bytes"
    );
    for (name, uri) in &pages {
        for _ in 0..2 {
            time_get(&app, uri).await;
        }
        let mut times = Vec::with_capacity(n);
        let mut size = 0;
        for _ in 0..n {
            let (d, s) = time_get(&app, uri).await;
            times.push(d);
            size = s;
        }
        times.sort();
        println!(
            "{name:<22} {:>9.1} {:>9.1} {:>9.1} {size:>10}",
            pct(&times, 0.5),
            pct(&times, 0.99),
            times.last().unwrap().as_secs_f64() * 1000.0
        );
    }
    state.pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db} WITH (FORCE)"
    )))
    .execute(&admin_pool)
    .await?;
    admin_pool.close().await;
    if let Some(mut pg) = embedded {
        pg.stop();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
