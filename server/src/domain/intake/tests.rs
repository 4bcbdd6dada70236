//! The intake's specification: forge examples, signatures, malformed bodies.

use super::*;
use std::collections::HashMap;

const SECRET: &[u8] = b"s3cr3t-hook-key";
const SHA_A: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const SHA_B: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
const SHA_C: &str = "59b20b8d5c6ff8d09518454d4dd8b7a30f095ab5";
const ZERO: &str = "0000000000000000000000000000000000000000";

fn hdrs(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    move |name: &str| map.get(&name.to_ascii_lowercase()).cloned()
}

fn sign(body: &[u8]) -> String {
    hex::encode(hmac_sha256(SECRET, body))
}

// ---------------------------------------------------------------- HMAC

#[test]
fn hmac_rfc4231_vectors() {
    // Test case 1
    let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
    assert_eq!(
        hex::encode(mac),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
    // Test case 2
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    assert_eq!(
        hex::encode(mac),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // Test case 6: key longer than the block size.
    let mac = hmac_sha256(
        &[0xaa; 131],
        b"Test Using Larger Than Block-Size Key - Hash Key First",
    );
    assert_eq!(
        hex::encode(mac),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

#[test]
fn github_documented_example() {
    // From GitHub's "Validating webhook deliveries" docs.
    let h = hdrs(&[(
        "X-Hub-Signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )]);
    assert_eq!(
        verify(
            Forge::Github,
            b"It's a Secret to Everybody",
            &h,
            b"Hello, World!"
        ),
        Ok(())
    );
}

// ---------------------------------------------------------- verification

#[test]
fn github_signatures() {
    let body = github_push_body().into_bytes();
    let good = format!("sha256={}", sign(&body));
    let h = hdrs(&[("x-hub-signature-256", &good)]);
    assert_eq!(verify(Forge::Github, SECRET, &h, &body), Ok(()));
    // Uppercase hex is fine too.
    let upper = format!("sha256={}", sign(&body).to_ascii_uppercase());
    assert_eq!(
        verify(
            Forge::Github,
            SECRET,
            &hdrs(&[("X-Hub-Signature-256", &upper)]),
            &body
        ),
        Ok(())
    );

    // Wrong secret, tampered body.
    assert!(matches!(
        verify(Forge::Github, b"other", &h, &body),
        Err(IntakeError::BadSignature { .. })
    ));
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert!(matches!(
        verify(Forge::Github, SECRET, &h, &tampered),
        Err(IntakeError::BadSignature { .. })
    ));

    // Missing, SHA-1 only, malformed.
    let e = verify(Forge::Github, SECRET, &hdrs(&[]), &body).unwrap_err();
    assert!(matches!(
        e,
        IntakeError::MissingSignature {
            header: "X-Hub-Signature-256",
            ..
        }
    ));
    assert_eq!(e.http_status(), 401);
    let e = verify(
        Forge::Github,
        SECRET,
        &hdrs(&[("X-Hub-Signature", "sha1=abcd")]),
        &body,
    )
    .unwrap_err();
    assert!(e.to_string().contains("SHA-1"), "{e}");
    let e = verify(
        Forge::Github,
        SECRET,
        &hdrs(&[("X-Hub-Signature-256", &sign(&body))]),
        &body,
    )
    .unwrap_err();
    assert!(matches!(e, IntakeError::MalformedSignature { .. }), "{e}");
    let e = verify(
        Forge::Github,
        SECRET,
        &hdrs(&[("X-Hub-Signature-256", "sha256=zz")]),
        &body,
    )
    .unwrap_err();
    assert!(matches!(e, IntakeError::MalformedSignature { .. }), "{e}");

    // Empty secret is a server misconfiguration, never "anything goes".
    let e = verify(Forge::Github, b"", &h, &body).unwrap_err();
    assert_eq!(e, IntakeError::NoSecretConfigured("GitHub"));
    assert_eq!(e.http_status(), 503);
}

#[test]
fn gitea_and_forgejo_signatures() {
    let body = gitea_push_body().into_bytes();
    let sig = sign(&body);
    assert_eq!(
        verify(
            Forge::Gitea,
            SECRET,
            &hdrs(&[("X-Gitea-Signature", &sig)]),
            &body
        ),
        Ok(())
    );
    assert_eq!(
        verify(
            Forge::Gitea,
            SECRET,
            &hdrs(&[("X-Forgejo-Signature", &sig)]),
            &body
        ),
        Ok(())
    );
    // Forgejo sends both; the Forgejo one is checked.
    let both = hdrs(&[("X-Forgejo-Signature", &sig), ("X-Gitea-Signature", &sig)]);
    assert_eq!(verify(Forge::Gitea, SECRET, &both, &body), Ok(()));
    let e = verify(
        Forge::Gitea,
        b"wrong",
        &hdrs(&[("X-Gitea-Signature", &sig)]),
        &body,
    )
    .unwrap_err();
    assert_eq!(
        e,
        IntakeError::BadSignature {
            header: "X-Gitea-Signature"
        }
    );
    assert!(matches!(
        verify(
            Forge::Gitea,
            SECRET,
            &hdrs(&[("X-Gitea-Event", "push")]),
            &body
        ),
        Err(IntakeError::MissingSignature { .. })
    ));
}

#[test]
fn gitlab_token() {
    let body = gitlab_push_body().into_bytes();
    let secret = std::str::from_utf8(SECRET).unwrap();
    assert_eq!(
        verify(
            Forge::Gitlab,
            SECRET,
            &hdrs(&[("X-Gitlab-Token", secret)]),
            &body
        ),
        Ok(())
    );
    let e = verify(
        Forge::Gitlab,
        SECRET,
        &hdrs(&[("X-Gitlab-Token", "guess")]),
        &body,
    )
    .unwrap_err();
    assert_eq!(
        e,
        IntakeError::BadSignature {
            header: "X-Gitlab-Token"
        }
    );
    let e = verify(Forge::Gitlab, SECRET, &hdrs(&[]), &body).unwrap_err();
    assert!(e.to_string().contains("Secret token"), "{e}");
}

#[test]
fn plain_git_signature() {
    let body = plain_push_body(Some(SHA_A)).into_bytes();
    let good = format!("sha256={}", sign(&body));
    assert_eq!(
        verify(
            Forge::PlainGit,
            SECRET,
            &hdrs(&[("X-Armfleet-Signature", &good)]),
            &body
        ),
        Ok(())
    );
    let e = verify(
        Forge::PlainGit,
        SECRET,
        &hdrs(&[("X-Armfleet-Signature", &good)]),
        b"{}",
    )
    .unwrap_err();
    assert!(matches!(e, IntakeError::BadSignature { .. }));
    let e = verify(Forge::PlainGit, SECRET, &hdrs(&[]), &body).unwrap_err();
    assert!(e.to_string().contains("HMAC-SHA256"), "{e}");
}

#[test]
fn errors_never_echo_the_secret() {
    let secret = std::str::from_utf8(SECRET).unwrap();
    let body = b"{}";
    let cases = [
        (Forge::Github, hdrs(&[("X-Hub-Signature-256", "sha256=00")])),
        (Forge::Gitlab, hdrs(&[("X-Gitlab-Token", "s3cr3t-hook-ke")])),
        (
            Forge::Gitea,
            hdrs(&[("X-Gitea-Signature", &"0".repeat(64))]),
        ),
        (Forge::PlainGit, hdrs(&[])),
    ];
    for (forge, h) in cases {
        let e = verify(forge, SECRET, &h, body).unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(!format!("{e:?}").contains(secret), "{e:?}");
    }
}

// ------------------------------------------------------ events, delivery

#[test]
fn event_kinds() {
    use EventKind::*;
    assert_eq!(
        event_kind(Forge::Github, &hdrs(&[("X-GitHub-Event", "push")])),
        Push
    );
    assert_eq!(
        event_kind(Forge::Github, &hdrs(&[("X-GitHub-Event", "ping")])),
        Ping
    );
    assert_eq!(
        event_kind(Forge::Github, &hdrs(&[("X-GitHub-Event", "pull_request")])),
        Other("pull_request".into())
    );
    assert_eq!(event_kind(Forge::Github, &hdrs(&[])), Other(String::new()));
    assert_eq!(
        event_kind(Forge::Gitlab, &hdrs(&[("X-Gitlab-Event", "Push Hook")])),
        Push
    );
    assert_eq!(
        event_kind(Forge::Gitlab, &hdrs(&[("X-Gitlab-Event", "Tag Push Hook")])),
        Push
    );
    assert_eq!(
        event_kind(
            Forge::Gitlab,
            &hdrs(&[("X-Gitlab-Event", "Merge Request Hook")])
        ),
        Other("Merge Request Hook".into())
    );
    assert_eq!(
        event_kind(Forge::Gitea, &hdrs(&[("X-Gitea-Event", "push")])),
        Push
    );
    assert_eq!(
        event_kind(Forge::Gitea, &hdrs(&[("X-Forgejo-Event", "push")])),
        Push
    );
    assert_eq!(
        event_kind(Forge::Gitea, &hdrs(&[("X-Gitea-Event", "create")])),
        Other("create".into())
    );
    assert_eq!(event_kind(Forge::PlainGit, &hdrs(&[])), Push);
    assert_eq!(
        event_kind(Forge::PlainGit, &hdrs(&[("X-Armfleet-Event", "ping")])),
        Ping
    );
}

#[test]
fn delivery_ids() {
    let id = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    assert_eq!(
        delivery_id(Forge::Github, &hdrs(&[("X-GitHub-Delivery", id)])).as_deref(),
        Some(id)
    );
    assert_eq!(
        delivery_id(Forge::Gitlab, &hdrs(&[("X-Gitlab-Event-UUID", id)])).as_deref(),
        Some(id)
    );
    let both = hdrs(&[
        ("X-Gitlab-Event-UUID", id),
        ("Idempotency-Key", "retry-stable"),
    ]);
    assert_eq!(
        delivery_id(Forge::Gitlab, &both).as_deref(),
        Some("retry-stable")
    );
    assert_eq!(
        delivery_id(Forge::Gitea, &hdrs(&[("X-Gitea-Delivery", id)])).as_deref(),
        Some(id)
    );
    assert_eq!(
        delivery_id(Forge::PlainGit, &hdrs(&[("X-Armfleet-Delivery", id)])).as_deref(),
        Some(id)
    );
    assert_eq!(delivery_id(Forge::Github, &hdrs(&[])), None);
    assert_eq!(
        delivery_id(Forge::Github, &hdrs(&[("X-GitHub-Delivery", "a b\u{7}")])),
        None
    );
}

// ------------------------------------------------------------ fixtures

fn github_push_body() -> String {
    format!(
        r#"{{
  "ref": "refs/heads/kvm-arm64/next",
  "before": "{SHA_A}",
  "after": "{SHA_B}",
  "repository": {{
    "id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
    "name": "linux", "full_name": "armfleet/linux", "private": false,
    "owner": {{"name": "armfleet", "login": "armfleet"}},
    "html_url": "https://github.com/armfleet/linux",
    "git_url": "git://github.com/armfleet/linux.git",
    "ssh_url": "git@github.com:armfleet/linux.git",
    "clone_url": "https://github.com/armfleet/linux.git",
    "default_branch": "master"
  }},
  "pusher": {{"name": "mzyngier", "email": "maz@example.org"}},
  "sender": {{"login": "mzyngier", "id": 1}},
  "created": false, "deleted": false, "forced": false, "base_ref": null,
  "compare": "https://github.com/armfleet/linux/compare/6113728f27ae...0d1a26e67d8f",
  "commits": [{{
    "id": "{SHA_B}", "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433", "distinct": true,
    "message": "KVM: arm64: Fix vgic state restore on migration cancel\n\nLonger explanation.\n",
    "timestamp": "2024-05-02T10:11:12+01:00",
    "url": "https://github.com/armfleet/linux/commit/{SHA_B}",
    "author": {{"name": "Marc Zyngier", "email": "maz@example.org", "username": "mzyngier"}},
    "committer": {{"name": "Marc Zyngier", "email": "maz@example.org", "username": "mzyngier"}},
    "added": [], "removed": [], "modified": ["arch/arm64/kvm/vgic/vgic-v3.c"]
  }}],
  "head_commit": {{
    "id": "{SHA_B}", "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433", "distinct": true,
    "message": "KVM: arm64: Fix vgic state restore on migration cancel\n\nLonger explanation.\n",
    "timestamp": "2024-05-02T10:11:12+01:00",
    "url": "https://github.com/armfleet/linux/commit/{SHA_B}",
    "author": {{"name": "Marc Zyngier", "email": "maz@example.org", "username": "mzyngier"}},
    "committer": {{"name": "Marc Zyngier", "email": "maz@example.org", "username": "mzyngier"}},
    "added": [], "removed": [], "modified": ["arch/arm64/kvm/vgic/vgic-v3.c"]
  }}
}}"#
    )
}

fn gitlab_push_body() -> String {
    // Commits oldest first, head last (as GitLab sends them).
    format!(
        r#"{{
  "object_kind": "push", "event_name": "push",
  "before": "{SHA_A}", "after": "{SHA_C}", "ref": "refs/heads/master", "ref_protected": true,
  "checkout_sha": "{SHA_C}",
  "user_id": 4, "user_name": "John Smith", "user_username": "jsmith", "user_email": "",
  "project_id": 15,
  "project": {{
    "id": 15, "name": "linux", "description": "", "web_url": "https://gitlab.example.com/kernel/linux",
    "git_ssh_url": "git@gitlab.example.com:kernel/linux.git",
    "git_http_url": "https://gitlab.example.com/kernel/linux.git",
    "namespace": "kernel", "visibility_level": 20, "path_with_namespace": "kernel/linux",
    "default_branch": "master",
    "url": "git@gitlab.example.com:kernel/linux.git",
    "ssh_url": "git@gitlab.example.com:kernel/linux.git",
    "http_url": "https://gitlab.example.com/kernel/linux.git"
  }},
  "commits": [
    {{"id": "{SHA_B}", "message": "arm64: mm: older change\n", "title": "arm64: mm: older change",
      "timestamp": "2024-05-01T09:00:00+00:00", "url": "https://gitlab.example.com/kernel/linux/-/commit/{SHA_B}",
      "author": {{"name": "Older Author", "email": "old@example.com"}},
      "added": [], "modified": ["arch/arm64/mm/fault.c"], "removed": []}},
    {{"id": "{SHA_C}", "message": "KVM: arm64: Head commit subject\r\n\r\nBody.", "title": "KVM: arm64: Head commit subject",
      "timestamp": "2024-05-01T10:00:00+00:00", "url": "https://gitlab.example.com/kernel/linux/-/commit/{SHA_C}",
      "author": {{"name": "Jordi Mallach", "email": "jordi@example.com"}},
      "added": [], "modified": ["arch/arm64/kvm/arm.c"], "removed": []}}
  ],
  "total_commits_count": 2,
  "repository": {{
    "name": "linux", "url": "git@gitlab.example.com:kernel/linux.git", "description": "",
    "homepage": "https://gitlab.example.com/kernel/linux",
    "git_http_url": "https://gitlab.example.com/kernel/linux.git",
    "git_ssh_url": "git@gitlab.example.com:kernel/linux.git", "visibility_level": 20
  }}
}}"#
    )
}

fn gitea_push_body() -> String {
    // Gitea lists commits newest first; head_commit omitted (older Gitea).
    format!(
        r#"{{
  "ref": "refs/heads/develop", "before": "{SHA_A}", "after": "{SHA_C}",
  "compare_url": "https://forge.example.org/kernel/linux/compare/6113728f27ae...59b20b8d5c6f",
  "commits": [
    {{"id": "{SHA_C}", "message": "arm64: head on develop\n", "url": "https://forge.example.org/kernel/linux/commit/{SHA_C}",
      "author": {{"name": "Gitea Dev", "email": "dev@example.org", "username": "gdev"}},
      "committer": {{"name": "Gitea Dev", "email": "dev@example.org", "username": "gdev"}},
      "verification": null, "timestamp": "2024-05-03T12:00:00Z", "added": [], "removed": [], "modified": ["README"]}},
    {{"id": "{SHA_B}", "message": "arm64: older on develop\n", "url": "https://forge.example.org/kernel/linux/commit/{SHA_B}",
      "author": {{"name": "Other Dev", "email": "other@example.org", "username": "odev"}},
      "committer": {{"name": "Other Dev", "email": "other@example.org", "username": "odev"}},
      "verification": null, "timestamp": "2024-05-03T11:00:00Z", "added": [], "removed": [], "modified": []}}
  ],
  "total_commits": 2,
  "repository": {{
    "id": 7, "owner": {{"id": 1, "login": "kernel", "full_name": ""}},
    "name": "linux", "full_name": "kernel/linux", "private": false, "fork": false,
    "html_url": "https://forge.example.org/kernel/linux",
    "ssh_url": "ssh://git@forge.example.org:2222/kernel/linux.git",
    "clone_url": "https://forge.example.org/kernel/linux.git",
    "default_branch": "main"
  }},
  "pusher": {{"id": 1, "login": "gdev"}},
  "sender": {{"id": 1, "login": "gdev"}}
}}"#
    )
}

fn plain_push_body(parent: Option<&str>) -> String {
    let parent = parent
        .map(|p| format!(r#", "parent": "{p}""#))
        .unwrap_or_default();
    format!(
        r#"{{"tree": "https://git.example.org/linux.git", "ref": "refs/heads/for-next",
 "before": "{SHA_A}", "after": "{SHA_B}", "subject": "arm64: fix it\nsecond line",
 "author": "Will Deacon"{parent}, "x-future-field": 1}}"#
    )
}

// ------------------------------------------------------------- parsing

#[test]
fn github_push() {
    let p = parse_push(Forge::Github, github_push_body().as_bytes()).unwrap();
    assert_eq!(p.tree, "https://github.com/armfleet/linux.git");
    assert_eq!(p.git_ref, "refs/heads/kvm-arm64/next");
    assert_eq!(p.branch, "kvm-arm64/next");
    assert_eq!((p.before.as_str(), p.after.as_str()), (SHA_A, SHA_B));
    assert_eq!(
        p.head_subject,
        "KVM: arm64: Fix vgic state restore on migration cancel"
    );
    assert_eq!(p.head_author, "Marc Zyngier <maz@example.org>");
    assert_eq!(
        p.parent.as_deref(),
        Some(SHA_A),
        "single non-forced commit: parent is before"
    );
    assert!(p.should_test() && !p.deleted && !p.is_tag && !p.is_new_branch());
}

#[test]
fn github_forced_push_has_no_parent() {
    let body = github_push_body().replace(r#""forced": false"#, r#""forced": true"#);
    let p = parse_push(Forge::Github, body.as_bytes()).unwrap();
    assert_eq!(p.parent, None);
    assert!(p.should_test());
}

#[test]
fn github_branch_deletion() {
    let body = format!(
        r#"{{"ref": "refs/heads/old-topic", "before": "{SHA_A}", "after": "{ZERO}",
  "repository": {{"clone_url": "https://github.com/armfleet/linux.git"}},
  "created": false, "deleted": true, "forced": false, "base_ref": null,
  "commits": [], "head_commit": null, "pusher": {{"name": "x"}}}}"#
    );
    let p = parse_push(Forge::Github, body.as_bytes()).unwrap();
    assert!(p.deleted && !p.should_test());
    assert_eq!(p.branch, "old-topic");
    assert_eq!(p.head_subject, "");
    assert_eq!(p.parent, None);
}

#[test]
fn github_tag_push() {
    let body = github_push_body()
        .replace("refs/heads/kvm-arm64/next", "refs/tags/v6.9-rc1")
        .replace(
            &format!(r#""before": "{SHA_A}""#),
            &format!(r#""before": "{ZERO}""#),
        )
        .replace(r#""created": false"#, r#""created": true"#);
    let p = parse_push(Forge::Github, body.as_bytes()).unwrap();
    assert!(p.is_tag && !p.should_test() && !p.deleted);
    assert_eq!(p.branch, "v6.9-rc1");
    assert_eq!(p.parent, None, "new ref: before is zero");
}

#[test]
fn github_ping_body_is_not_a_push() {
    let ping = br#"{"zen": "Design for failure.", "hook_id": 42,
          "hook": {"type": "Repository", "id": 42, "active": true, "events": ["push"],
                   "config": {"content_type": "json", "url": "https://armfleet.example/api/v1/hooks/github"}},
          "repository": {"clone_url": "https://github.com/armfleet/linux.git"}, "sender": {"login": "x"}}"#;
    let e = parse_push(Forge::Github, ping).unwrap_err();
    assert!(
        matches!(&e, IntakeError::Malformed(m) if m.contains("ref")),
        "{e}"
    );
    assert_eq!(e.http_status(), 400);
    let h = hdrs(&[("X-GitHub-Event", "ping")]);
    assert_eq!(event_kind(Forge::Github, &h), EventKind::Ping);
}

#[test]
fn form_encoded_body_gets_a_hint() {
    let e = parse_push(Forge::Github, b"payload=%7B%22ref%22%3A...").unwrap_err();
    assert!(e.to_string().contains("application/json"), "{e}");
}

#[test]
fn gitlab_push() {
    let p = parse_push(Forge::Gitlab, gitlab_push_body().as_bytes()).unwrap();
    assert_eq!(p.tree, "https://gitlab.example.com/kernel/linux.git");
    assert_eq!(p.branch, "master");
    assert_eq!(p.after, SHA_C);
    assert_eq!(p.head_subject, "KVM: arm64: Head commit subject");
    assert_eq!(p.head_author, "Jordi Mallach <jordi@example.com>");
    assert_eq!(
        p.parent, None,
        "GitLab payloads cannot establish the parent"
    );
    assert!(p.should_test());
}

#[test]
fn gitlab_tag_push_and_deletion() {
    let tag = format!(
        r#"{{"object_kind": "tag_push", "event_name": "tag_push", "before": "{ZERO}", "after": "{SHA_C}",
  "ref": "refs/tags/v1.0.0", "checkout_sha": "{SHA_C}", "user_name": "John Smith",
  "project": {{"git_http_url": "https://gitlab.example.com/kernel/linux.git",
               "git_ssh_url": "git@gitlab.example.com:kernel/linux.git"}},
  "commits": [], "total_commits_count": 0}}"#
    );
    let p = parse_push(Forge::Gitlab, tag.as_bytes()).unwrap();
    assert!(p.is_tag && !p.should_test());
    assert_eq!(p.branch, "v1.0.0");

    let del = format!(
        r#"{{"object_kind": "push", "before": "{SHA_A}", "after": "{ZERO}", "ref": "refs/heads/gone",
  "checkout_sha": null, "project": {{"git_http_url": "https://gitlab.example.com/kernel/linux.git"}},
  "commits": [], "total_commits_count": 0}}"#
    );
    let p = parse_push(Forge::Gitlab, del.as_bytes()).unwrap();
    assert!(p.deleted && !p.should_test());
    assert_eq!(p.branch, "gone");
}

#[test]
fn gitea_push_without_head_commit() {
    let p = parse_push(Forge::Gitea, gitea_push_body().as_bytes()).unwrap();
    assert_eq!(p.tree, "https://forge.example.org/kernel/linux.git");
    assert_eq!(p.branch, "develop");
    // Head found by id even though Gitea lists it first.
    assert_eq!(p.head_subject, "arm64: head on develop");
    assert_eq!(p.head_author, "Gitea Dev <dev@example.org>");
    assert_eq!(p.parent, None);
    assert!(p.should_test());
}

#[test]
fn gitea_push_with_head_commit_only() {
    let body = format!(
        r#"{{"ref": "refs/heads/main", "before": "{ZERO}", "after": "{SHA_B}", "commits": [],
  "head_commit": {{"id": "{SHA_B}", "message": "Initial import\n", "author": {{"name": "", "username": "odev"}}}},
  "repository": {{"clone_url": "", "html_url": "https://forge.example.org/kernel/linux"}}}}"#
    );
    let p = parse_push(Forge::Gitea, body.as_bytes()).unwrap();
    assert_eq!(
        p.tree, "https://forge.example.org/kernel/linux",
        "falls back to html_url"
    );
    assert_eq!(p.head_subject, "Initial import");
    assert_eq!(p.head_author, "odev", "falls back to username");
    assert!(p.is_new_branch() && p.should_test());
}

#[test]
fn plain_git_push() {
    let p = parse_push(
        Forge::PlainGit,
        plain_push_body(Some(&SHA_A.to_ascii_uppercase())).as_bytes(),
    )
    .unwrap();
    assert_eq!(p.tree, "https://git.example.org/linux.git");
    assert_eq!(p.branch, "for-next");
    assert_eq!(p.head_subject, "arm64: fix it");
    assert_eq!(p.head_author, "Will Deacon");
    assert_eq!(p.parent.as_deref(), Some(SHA_A), "normalized to lowercase");
    let p = parse_push(Forge::PlainGit, plain_push_body(None).as_bytes()).unwrap();
    assert_eq!(p.parent, None);
    // SHA-256 repositories.
    let long = "a".repeat(64);
    let body = plain_push_body(None)
        .replace(SHA_B, &long)
        .replace(SHA_A, &"0".repeat(64));
    let p = parse_push(Forge::PlainGit, body.as_bytes()).unwrap();
    assert_eq!(p.after, long);
    assert!(p.is_new_branch());
}

#[test]
fn plain_git_rejects_bad_fields() {
    let cases = [
        (plain_push_body(Some("HEAD~1")), "parent"),
        (plain_push_body(None).replace(SHA_B, "abc123"), "after"),
        (
            plain_push_body(None).replace("refs/heads/for-next", "for-next"),
            "full ref",
        ),
        (
            plain_push_body(None).replace("refs/heads/for-next", "refs/heads/../x"),
            "valid git ref",
        ),
        (
            plain_push_body(None).replace("refs/heads/for-next", "refs/heads/-x"),
            "valid git ref",
        ),
        (
            plain_push_body(None).replace(
                "https://git.example.org/linux.git",
                "ext::sh -c touch% /tmp/pwned",
            ),
            "URL",
        ),
        (
            plain_push_body(None)
                .replace("https://git.example.org/linux.git", "--upload-pack=evil"),
            "URL",
        ),
        (
            plain_push_body(None).replace(
                "https://git.example.org/linux.git",
                "ftp://git.example.org/linux.git",
            ),
            "https",
        ),
        (
            plain_push_body(None).replace("https://git.example.org/linux.git", "srv/git/linux"),
            "repository URL",
        ),
        (r#"{"ref": "refs/heads/x"}"#.to_string(), "missing field"),
    ];
    for (body, needle) in cases {
        let e = parse_push(Forge::PlainGit, body.as_bytes()).unwrap_err();
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    // scp-like, ssh, local and file URLs are fine.
    for url in [
        "/srv/git/linux.git",
        "file:///srv/git/linux.git",
        "git@git.example.org:linux.git",
        "ssh://git@git.example.org:2222/linux.git",
        "git://git.kernel.org/pub/scm/linux.git",
    ] {
        let body = plain_push_body(None).replace("https://git.example.org/linux.git", url);
        assert_eq!(
            parse_push(Forge::PlainGit, body.as_bytes()).unwrap().tree,
            url
        );
    }
}

#[test]
fn forge_routes() {
    assert_eq!(Forge::from_route("forgejo"), Some(Forge::Gitea));
    assert_eq!(Forge::from_route("git"), Some(Forge::PlainGit));
    assert_eq!(Forge::from_route("bitbucket"), None);
    for f in [Forge::Github, Forge::Gitlab, Forge::Gitea, Forge::PlainGit] {
        assert_eq!(Forge::from_route(f.as_str()), Some(f));
    }
}
