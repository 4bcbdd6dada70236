//! `/metrics` speaks the Prometheus text format and tells the truth.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

fn scrape(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_boards_jobs_logs_and_refused_keys() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "b").await;
    let stranger = keygen(dir.path(), "stranger").await;
    let server = TestServer::start(&fleet_toml(
        &[("board-1", "rpi5", &key.public)],
        "[plan.params]\ncycles = 3\nreplay_cycle_ms = 20\n",
    ))
    .await;
    let _agent = server.agent("board-1", &key.path, &["--executor", "replay"]);
    let mut refused = server.agent("board-1", &stranger.path, &["--executor", "replay"]);
    server
        .wait_board("board-1", "idle", Duration::from_secs(20))
        .await;
    let run = server.trigger("abcdef0123456789").await;
    wait_for("job passed", Duration::from_secs(20), || async {
        let r = server.get_json(&format!("/api/v1/runs/{run}")).await;
        (r["jobs"][0]["state"] == "passed").then_some(())
    })
    .await;
    wait_for("refused agent", Duration::from_secs(20), || async {
        refused.log_text().contains("refused").then_some(())
    })
    .await;
    refused.kill9();
    // The board turns idle just after its job's end is recorded.
    server
        .wait_board("board-1", "idle", Duration::from_secs(20))
        .await;

    let resp = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().contains_key("x-request-id"),
        "every response carries a request id"
    );
    let m = scrape(&resp.text().await.unwrap());
    assert_eq!(m["armfleet_boards{state=idle}"], 1.0, "{m:?}");
    assert_eq!(m["armfleet_boards{state=offline}"], 0.0);
    assert_eq!(m["armfleet_jobs{state=passed}"], 1.0);
    assert_eq!(m["armfleet_queue_depth"], 0.0);
    assert!(m["armfleet_log_bytes_ingested_total"] > 100.0, "{m:?}");
    assert!(m["armfleet_ssh_auth_failures_total"] >= 1.0);
    assert!(m["armfleet_ssh_connections_total"] >= 2.0);
    assert_eq!(m["armfleet_agent_sessions"], 1.0);
    assert_eq!(m["armfleet_dispatch_latency_seconds_count"], 1.0);
    server.stop().await;
}
