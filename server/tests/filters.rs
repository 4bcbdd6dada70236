//! The filter parameters of the list endpoints and pages are values, never
//! query text: arbitrary strings (quotes, semicolons, LIKE wildcards, control
//! characters, any Unicode, very long) are answered 200 or a 4xx, never a
//! server error, and a filter that names nothing that exists finds nothing
//! (an injected `' OR '1'='1` would find everything). One server for all
//! cases; a modest number of cases, so it runs in seconds.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINshuiiHSBrO3Cv3at18VJGCWY8v2Y4DCSjDp7PxSnhU a";
/// What `TestServer::trigger` tests.
const TREE: &str = "https://example.org/linux.git";
const BRANCH: &str = "master";
const COMMIT: &str = "c0ffee15badd00d5c0ffee15badd00d5c0ffee15";

/// Strings a filter may be given.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        // Any Unicode, control characters included.
        any::<String>(),
        // SQL's punctuation.
        "[a-zA-Z0-9 '\";%_\\\\()=*/$-]{0,40}",
        prop::sample::select(vec![
            "' OR '1'='1",
            "https://example.org/linux.git' OR tree <> '",
            "'; DROP TABLE kernels; --",
            "master'--",
            "master' OR '1'='1",
            "%",
            "_",
            "\\",
            "$1",
            "NULL",
            "1 OR 1=1",
            "-1",
            "9223372036854775808",
            "c0ffee",
            "c0ffee%",
            "hardware,emulated",
            "open",
            "é漢字🦀\u{202e}",
        ])
        .prop_map(String::from),
        // Very long.
        "[a-z';%]{1000,3000}",
    ]
}

/// Percent-encodes `s` as one path segment.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn counts(server: &TestServer) -> Vec<i64> {
    let mut out = Vec::new();
    for sql in [
        "SELECT count(*) FROM kernels",
        "SELECT count(*) FROM runs",
        "SELECT count(*) FROM jobs",
        "SELECT count(*) FROM boards",
        "SELECT count(*) FROM audit_log",
    ] {
        out.push(
            sqlx::query_scalar(sql)
                .fetch_one(&server.pool)
                .await
                .unwrap(),
        );
    }
    out
}

#[test]
fn filter_values_never_cause_a_server_error_nor_widen_a_query() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, before) = rt.block_on(async {
        let server = TestServer::start(&fleet_toml(&[("board-1", "rpi5", KEY)], "")).await;
        server.trigger(COMMIT).await;
        let before = counts(&server).await;
        (server, before)
    });
    let short = &COMMIT[..12];

    // GET `path` with `query`: the status and the body.
    let get = |path: String, query: Vec<(&str, &str)>, token: bool| {
        rt.block_on(async {
            let mut req = server.client.get(server.url(&path)).query(&query);
            if token {
                req = req.bearer_auth(&server.token);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        })
    };
    let listed = |query: Vec<(&str, &str)>| {
        let (status, body) = get("/kernels".into(), query.clone(), false);
        assert_eq!(status, 200, "{query:?}: {body}");
        body.contains(short)
    };
    // The controls: the kernel is found by its own tree and branch, and not
    // by another.
    assert!(listed(vec![]));
    assert!(listed(vec![("tree", TREE), ("branch", BRANCH)]));
    assert!(!listed(vec![("tree", "https://example.org/other.git")]));

    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(nasty(), nasty(), nasty()), |(a, b, c)| {
            let ok = |what: &str, (status, body): (u16, String), allowed: &[u16]| {
                if allowed.contains(&status) {
                    Ok((status, body))
                } else {
                    Err(TestCaseError::fail(format!(
                        "{what} with {a:?}, {b:?}, {c:?}: {status} {body}"
                    )))
                }
            };
            // The kernel list page: tree and branch are bound values, each
            // filter tried alone, next to the right value of the other, and
            // with another arbitrary one.
            for (tree, branch) in [
                (Some(a.as_str()), None),
                (None, Some(b.as_str())),
                (Some(a.as_str()), Some(BRANCH)),
                (Some(TREE), Some(b.as_str())),
                (Some(a.as_str()), Some(b.as_str())),
            ] {
                let mut query = Vec::new();
                query.extend(tree.map(|t| ("tree", t)));
                query.extend(branch.map(|b| ("branch", b)));
                let (status, body) = ok(
                    "/kernels",
                    get("/kernels".into(), query, false),
                    &[200, 400],
                )?;
                if status == 200 {
                    // An empty value is an unselected form field: no filter.
                    let tree_matches = tree.is_none_or(|t| t.is_empty() || t == TREE);
                    let branch_matches = branch.is_none_or(|b| b.is_empty() || b == BRANCH);
                    prop_assert_eq!(
                        body.contains(short),
                        tree_matches && branch_matches,
                        "tree {:?} branch {:?}",
                        tree,
                        branch
                    );
                }
            }
            ok(
                "/matrix",
                get("/matrix".into(), vec![("tree", &a), ("branch", &b)], false),
                &[200, 400],
            )?;
            ok(
                "regressions",
                get(
                    "/api/v1/regressions".into(),
                    vec![("state", &a), ("limit", &c)],
                    false,
                ),
                &[200, 400],
            )?;
            ok(
                "kcidb",
                get(
                    "/api/v1/export/kcidb".into(),
                    vec![("commit", &a), ("hosts", &b), ("limit", &c)],
                    false,
                ),
                &[200, 400],
            )?;
            ok(
                "junit",
                get("/api/v1/export/junit".into(), vec![("run", &a)], false),
                &[200, 400, 404],
            )?;
            ok(
                "runs",
                get("/api/v1/runs".into(), vec![("limit", &a)], false),
                &[200, 400],
            )?;
            ok(
                "signatures",
                get(
                    "/api/v1/signatures".into(),
                    vec![("limit", &a), ("offset", &b)],
                    false,
                ),
                &[200, 400],
            )?;
            ok(
                "audit",
                get("/api/v1/audit".into(), vec![("limit", &c)], true),
                &[200, 400],
            )?;
            let (_, body) = ok(
                "kernel",
                get(format!("/api/v1/kernels/{}", segment(&a)), vec![], false),
                &[200, 400, 404],
            )?;
            if body.contains(short) {
                // Only a prefix of the commit finds it.
                prop_assert!(COMMIT.starts_with(&a.to_ascii_lowercase()), "{:?}", a);
            }
            ok(
                "job log",
                get(
                    format!("/api/v1/jobs/{}/log", segment(&a)),
                    vec![("stream", &b)],
                    false,
                ),
                &[200, 400, 404],
            )?;
            ok(
                "job",
                get(format!("/jobs/{}", segment(&a)), vec![], false),
                &[200, 400, 404],
            )?;
            Ok(())
        })
        .unwrap();

    rt.block_on(async {
        // Nothing was written, nothing dropped.
        assert_eq!(counts(&server).await, before);
        server.stop().await;
    });
}
