//! Webhook intake: authenticate, classify and parse push notifications from
//! GitHub, GitLab, Gitea/Forgejo and plain git servers.
//!
//! Pure functions only (no HTTP framework, no database): the handler for
//! `POST /api/v1/hooks/{github,gitlab,gitea,forgejo,git}` looks up the secret,
//! then calls, in order,
//!
//! 1. [`verify`] on the *raw* body bytes (before any JSON parsing),
//! 2. [`event_kind`] — answer `Ping` with 200, ignore `Other`,
//! 3. [`parse_push`] — and only schedule work when [`Push::should_test`],
//! 4. [`delivery_id`] for de-duplicating redeliveries (best effort; also
//!    de-duplicate on `(tree, branch, after)`).
//!
//! [`IntakeError::http_status`] suggests the response code.
//!
//! ## Authentication
//!
//! | forge | header | scheme |
//! |---|---|---|
//! | GitHub | `X-Hub-Signature-256: sha256=<hex>` | HMAC-SHA256(secret, body) |
//! | Gitea / Forgejo | `X-Forgejo-Signature` or `X-Gitea-Signature`: `<hex>` | HMAC-SHA256(secret, body) |
//! | GitLab | `X-Gitlab-Token: <secret>` | shared token |
//! | plain git | `X-Armfleet-Signature: sha256=<hex>` | HMAC-SHA256(secret, body) |
//!
//! Comparisons are constant-time. An empty configured secret is refused
//! (HMAC with an empty key authenticates nothing).
//!
//! ## Plain git body (`/hooks/git`)
//!
//! ```json
//! {"tree": "https://git.example.org/linux.git", "ref": "refs/heads/main",
//!  "before": "<sha>", "after": "<sha>", "subject": "first line of the head commit",
//!  "author": "A. U. Thor", "parent": "<sha of after^, optional>"}
//! ```
//!
//! Optional headers: `X-Armfleet-Event: push|ping` (absent means push) and
//! `X-Armfleet-Delivery: <unique id>`. `subject`, `author` and `parent` may be
//! omitted; unknown fields are ignored. SHAs are 40 (SHA-1) or 64 (SHA-256)
//! hex digits; an all-zero `before` means a new branch, an all-zero `after` a
//! deletion.
//!
//! ## Deletions and tags
//!
//! [`parse_push`] returns a [`Push`] for every well-formed push, including
//! branch deletions (`deleted = true`) and tag pushes (`is_tag = true`), so the
//! caller can log what it ignored. Use [`Push::should_test`] to decide whether
//! to schedule anything.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The kind of server that sent the hook (selected by the route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forge {
    Github,
    Gitlab,
    /// Gitea and Forgejo (same payloads).
    Gitea,
    /// Any git server with a post-receive hook posting the documented body.
    PlainGit,
}

impl Forge {
    /// From the last segment of `/api/v1/hooks/<segment>`.
    pub fn from_route(segment: &str) -> Option<Forge> {
        match segment {
            "github" => Some(Forge::Github),
            "gitlab" => Some(Forge::Gitlab),
            "gitea" | "forgejo" => Some(Forge::Gitea),
            "git" => Some(Forge::PlainGit),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitlab => "gitlab",
            Forge::Gitea => "gitea",
            Forge::PlainGit => "git",
        }
    }

    pub fn display_name(self) -> &'static str {
        match self {
            Forge::Github => "GitHub",
            Forge::Gitlab => "GitLab",
            Forge::Gitea => "Gitea/Forgejo",
            Forge::PlainGit => "plain git",
        }
    }
}

impl std::fmt::Display for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a hook was rejected. Messages are meant for the sender (they end up
/// in the forge's "recent deliveries" view) and never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    #[error(
        "no webhook secret is configured on the armfleet server for {0} hooks; refusing unauthenticated deliveries"
    )]
    NoSecretConfigured(&'static str),
    #[error("missing {header} header: {hint}")]
    MissingSignature {
        header: &'static str,
        hint: &'static str,
    },
    #[error("{header} header is malformed: {reason}")]
    MalformedSignature {
        header: &'static str,
        reason: &'static str,
    },
    #[error(
        "{header} does not match: the webhook secret differs from the one configured in armfleet, or the body was modified in transit"
    )]
    BadSignature { header: &'static str },
    #[error("malformed payload: {0}")]
    Malformed(String),
}

impl IntakeError {
    /// Suggested HTTP status: 401 for authentication problems, 400 for bad
    /// payloads, 503 when the server itself is not configured.
    pub fn http_status(&self) -> u16 {
        match self {
            IntakeError::NoSecretConfigured(_) => 503,
            IntakeError::MissingSignature { .. }
            | IntakeError::MalformedSignature { .. }
            | IntakeError::BadSignature { .. } => 401,
            IntakeError::Malformed(_) => 400,
        }
    }
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

/// HMAC-SHA256 (RFC 2104) over `sha2`; small enough not to need the `hmac` crate.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Constant-time equality for equal-length inputs (length is not secret):
/// how every secret (webhook signature, token) is compared.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn header(headers: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    headers(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn decode_sha256_hex(value: &str, header: &'static str) -> Result<[u8; 32], IntakeError> {
    let bad = |reason| IntakeError::MalformedSignature { header, reason };
    if value.len() != 64 {
        return Err(bad("expected 64 hex digits of HMAC-SHA256"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out)
        .map_err(|_| bad("expected 64 hex digits of HMAC-SHA256"))?;
    Ok(out)
}

fn check_hmac(
    secret: &[u8],
    body: &[u8],
    header: &'static str,
    value: &str,
    require_prefix: bool,
) -> Result<(), IntakeError> {
    let hex_part = match value.strip_prefix("sha256=") {
        Some(rest) => rest,
        None if require_prefix => {
            return Err(IntakeError::MalformedSignature {
                header,
                reason: "expected \"sha256=<64 hex digits>\"",
            });
        }
        None => value,
    };
    let given = decode_sha256_hex(hex_part, header)?;
    let expected = hmac_sha256(secret, body);
    if constant_time_eq(&given, &expected) {
        Ok(())
    } else {
        Err(IntakeError::BadSignature { header })
    }
}

const SECRET_HINT: &str = "configure the same secret in the webhook settings of the sending server";

/// Authenticate a delivery.
///
/// `headers` looks up a request header by name and **must be
/// case-insensitive** (as `http::HeaderMap::get` is); `body` must be the raw
/// request body exactly as received.
pub fn verify(
    forge: Forge,
    secret: &[u8],
    headers: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<(), IntakeError> {
    if secret.is_empty() {
        return Err(IntakeError::NoSecretConfigured(forge.display_name()));
    }
    match forge {
        Forge::Github => {
            const H: &str = "X-Hub-Signature-256";
            match header(headers, H) {
                Some(v) => check_hmac(secret, body, H, &v, true),
                None if header(headers, "X-Hub-Signature").is_some() => {
                    Err(IntakeError::MissingSignature {
                        header: H,
                        hint: "only the SHA-1 X-Hub-Signature was sent; armfleet requires the SHA-256 signature",
                    })
                }
                None => Err(IntakeError::MissingSignature {
                    header: H,
                    hint: SECRET_HINT,
                }),
            }
        }
        Forge::Gitea => {
            for h in ["X-Forgejo-Signature", "X-Gitea-Signature"] {
                if let Some(v) = header(headers, h) {
                    return check_hmac(secret, body, h, &v, false);
                }
            }
            Err(IntakeError::MissingSignature {
                header: "X-Gitea-Signature",
                hint: SECRET_HINT,
            })
        }
        Forge::Gitlab => {
            const H: &str = "X-Gitlab-Token";
            let Some(token) = header(headers, H) else {
                return Err(IntakeError::MissingSignature {
                    header: H,
                    hint: "set the \"Secret token\" of the GitLab webhook to the armfleet secret",
                });
            };
            // Compare digests so neither the content nor the length of the
            // secret leaks through timing.
            if constant_time_eq(&Sha256::digest(token.as_bytes()), &Sha256::digest(secret)) {
                Ok(())
            } else {
                Err(IntakeError::BadSignature { header: H })
            }
        }
        Forge::PlainGit => {
            const H: &str = "X-Armfleet-Signature";
            match header(headers, H) {
                Some(v) => check_hmac(secret, body, H, &v, true),
                None => Err(IntakeError::MissingSignature {
                    header: H,
                    hint: "sign the body: \"sha256=\" + hex(HMAC-SHA256(secret, body))",
                }),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Event classification
// ---------------------------------------------------------------------------

/// What a delivery is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum EventKind {
    /// A push (GitLab "Tag Push Hook" included; [`parse_push`] flags tags).
    Push,
    /// Connectivity test (GitHub `ping`, plain git `X-Armfleet-Event: ping`).
    Ping,
    /// Anything else, with the forge's event name ("" if the header was absent).
    Other(String),
}

/// Classify a delivery from its headers (see [`verify`] for the lookup contract).
pub fn event_kind(forge: Forge, headers: &dyn Fn(&str) -> Option<String>) -> EventKind {
    let name = match forge {
        Forge::Github => header(headers, "X-GitHub-Event"),
        Forge::Gitlab => header(headers, "X-Gitlab-Event"),
        Forge::Gitea => ["X-Forgejo-Event", "X-Gitea-Event", "X-Gogs-Event"]
            .iter()
            .find_map(|h| header(headers, h)),
        Forge::PlainGit => {
            Some(header(headers, "X-Armfleet-Event").unwrap_or_else(|| "push".into()))
        }
    };
    let Some(name) = name else {
        return EventKind::Other(String::new());
    };
    match (forge, name.as_str()) {
        (Forge::Gitlab, "Push Hook" | "Tag Push Hook") => EventKind::Push,
        (Forge::Gitlab, _) => EventKind::Other(name),
        (_, n) if n.eq_ignore_ascii_case("push") => EventKind::Push,
        (_, n) if n.eq_ignore_ascii_case("ping") => EventKind::Ping,
        _ => EventKind::Other(name),
    }
}

/// The forge's id for this delivery, for de-duplication and logs.
///
/// GitLab: `Idempotency-Key` (stable across retries, GitLab ≥ 17.4), else
/// `X-Gitlab-Event-UUID`. Values that are not printable ASCII or longer than
/// 128 bytes are ignored.
pub fn delivery_id(forge: Forge, headers: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let names: &[&str] = match forge {
        Forge::Github => &["X-GitHub-Delivery"],
        Forge::Gitlab => &["Idempotency-Key", "X-Gitlab-Event-UUID"],
        Forge::Gitea => &["X-Forgejo-Delivery", "X-Gitea-Delivery", "X-Gogs-Delivery"],
        Forge::PlainGit => &["X-Armfleet-Delivery"],
    };
    names
        .iter()
        .filter_map(|h| header(headers, h))
        .find(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
}

// ---------------------------------------------------------------------------
// Push payloads
// ---------------------------------------------------------------------------

/// A normalized push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Push {
    /// URL to fetch from: the forge's HTTP(S) clone URL when it provides one.
    pub tree: String,
    /// Full ref name, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// Short branch name (`main`); for tags the tag name; otherwise the full ref.
    pub branch: String,
    /// Previous tip (all zeros for a new branch). Lowercase hex.
    pub before: String,
    /// New tip (all zeros for a deletion). Lowercase hex.
    pub after: String,
    /// First line of the head commit message; empty when the payload does not
    /// include the head commit (deletions, a branch created on an existing
    /// commit, truncated commit lists).
    pub head_subject: String,
    /// Author of the head commit in git ident form, `Name <email>` (just the
    /// name when the forge omits the email; plain git: as sent); empty when
    /// unknown (as above).
    pub head_author: String,
    /// Parent of `after`, only when the payload establishes it: given
    /// explicitly (plain git), or GitHub non-forced single-commit pushes (then
    /// it is `before`). `None` means unknown — resolve with `git rev-parse
    /// <after>^` after fetching.
    pub parent: Option<String>,
    /// Branch (or tag) deletion: `after` is all zeros.
    pub deleted: bool,
    /// The ref is under `refs/tags/`.
    pub is_tag: bool,
}

impl Push {
    pub fn is_branch(&self) -> bool {
        self.git_ref.starts_with("refs/heads/")
    }

    /// `before` is all zeros: the branch was just created.
    pub fn is_new_branch(&self) -> bool {
        is_zero_sha(&self.before)
    }

    /// Whether this push should schedule test runs: a branch update or
    /// creation, not a deletion and not a tag.
    pub fn should_test(&self) -> bool {
        self.is_branch() && !self.deleted && !self.is_tag
    }
}

#[derive(Deserialize)]
struct Author {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    author: Option<Author>,
}

#[derive(Deserialize)]
struct HubRepository {
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
}

/// GitHub and Gitea/Forgejo push events share these fields.
#[derive(Deserialize)]
struct HubPush {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    repository: HubRepository,
    #[serde(default)]
    head_commit: Option<Commit>,
    #[serde(default)]
    commits: Option<Vec<Commit>>,
    #[serde(default)]
    deleted: bool,
    /// GitHub only.
    #[serde(default)]
    forced: Option<bool>,
}

#[derive(Deserialize)]
struct GitlabProject {
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    http_url: Option<String>,
    #[serde(default)]
    git_ssh_url: Option<String>,
}

#[derive(Deserialize)]
struct GitlabRepository {
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    git_ssh_url: Option<String>,
}

#[derive(Deserialize)]
struct GitlabPush {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
    #[serde(default)]
    project: Option<GitlabProject>,
    #[serde(default)]
    repository: Option<GitlabRepository>,
    #[serde(default)]
    commits: Option<Vec<Commit>>,
}

#[derive(Deserialize)]
struct PlainPush {
    tree: String,
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    parent: Option<String>,
}

fn is_zero_sha(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

fn normalize_sha(field: &str, s: &str) -> Result<String, IntakeError> {
    let ok = (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(IntakeError::Malformed(format!(
            "`{field}` must be a full commit id (40 or 64 hex digits), got {:?}",
            truncate(s, 80)
        )))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Basic `git check-ref-format` rules, enough to keep refs safe to pass to git.
fn check_ref(r: &str) -> Result<(), IntakeError> {
    let bad = |why: &str| IntakeError::Malformed(format!("`ref` {:?} {why}", truncate(r, 120)));
    if !r.starts_with("refs/") {
        return Err(bad("must be a full ref name such as refs/heads/main"));
    }
    if r.len() > 1024 {
        return Err(bad("is too long"));
    }
    if r.bytes()
        .any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b))
    {
        return Err(bad("contains characters git does not allow in ref names"));
    }
    if r.contains("..")
        || r.contains("@{")
        || r.contains("//")
        || r.ends_with('/')
        || r.ends_with(".lock")
        || r.ends_with('.')
    {
        return Err(bad("is not a valid git ref name"));
    }
    if r.split('/')
        .any(|c| c.is_empty() || c.starts_with('.') || c.starts_with('-'))
    {
        return Err(bad("is not a valid git ref name"));
    }
    Ok(())
}

/// Accept repository URLs: `https://`, `http://`, `ssh://`, `git://`,
/// `file://`, scp-like `user@host:path`, or an absolute path (plain git hooks
/// on the git server itself). `<transport>::` remote helpers (e.g. `ext::`),
/// other schemes, leading dashes, spaces and control characters are refused.
fn check_tree_url(url: &str) -> Result<(), IntakeError> {
    let bad = |why: &str| {
        IntakeError::Malformed(format!("repository URL {:?} {why}", truncate(url, 200)))
    };
    if url.is_empty() {
        return Err(bad("is empty"));
    }
    if url.len() > 2048 {
        return Err(bad("is too long"));
    }
    if url.starts_with('-') || url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad("contains a leading '-', spaces or control characters"));
    }
    if url.contains("::") {
        return Err(bad(
            "uses a git remote-helper transport, which is not allowed",
        ));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let allowed = ["https", "http", "ssh", "git", "file"]
            .iter()
            .any(|s| scheme.eq_ignore_ascii_case(s));
        if !allowed {
            return Err(bad("must use https, http, ssh, git or file"));
        }
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() && !scheme.eq_ignore_ascii_case("file") {
            return Err(bad("has no host"));
        }
        return Ok(());
    }
    // A local repository on the git server itself (plain git hooks). The URL
    // is only ever matched against fleet.toml's trees, never fetched.
    if url.starts_with('/') {
        return Ok(());
    }
    // scp-like syntax: [user@]host:path, where no '/' precedes the first ':'.
    match url.split_once(':') {
        Some((host, path)) if !host.is_empty() && !host.contains('/') && !path.is_empty() => Ok(()),
        _ => Err(bad(
            "is not a repository URL (https://, ssh://, git://, file://, user@host:path or an absolute path)",
        )),
    }
}

fn pick_url<'a>(candidates: impl IntoIterator<Item = &'a Option<String>>) -> Option<String> {
    candidates
        .into_iter()
        .flatten()
        .map(|s| s.trim())
        .find(|s| !s.is_empty())
        .map(str::to_owned)
}

fn subject_of(message: &str) -> String {
    message.lines().next().unwrap_or("").trim_end().to_owned()
}

/// Git ident style, like `git log --format='%an <%ae>'` (what
/// `scripts/post-receive` sends): "Name <email>", falling back to the forge
/// username for the name and dropping a missing email.
fn author_of(c: &Commit) -> String {
    let Some(a) = c.author.as_ref() else {
        return String::new();
    };
    let name = pick_url([&a.name, &a.username]).unwrap_or_default();
    match pick_url([&a.email]) {
        Some(email) if name.is_empty() => format!("<{email}>"),
        Some(email) => format!("{name} <{email}>"),
        None => name,
    }
}

fn parse_json<'a, T: Deserialize<'a>>(forge: Forge, body: &'a [u8]) -> Result<T, IntakeError> {
    serde_json::from_slice(body).map_err(|e| {
        let hint = if body.starts_with(b"payload=") {
            " (the body is form-encoded: set the webhook content type to application/json)"
        } else {
            ""
        };
        IntakeError::Malformed(format!("{} push payload: {e}{hint}", forge.display_name()))
    })
}

/// Parse a push event body into a [`Push`].
///
/// Returns `Ok` for every well-formed push, including deletions and tag
/// pushes (see the flags and [`Push::should_test`]); `Err(Malformed)` when
/// the body is not a push payload of that forge (e.g. a ping body), a SHA is
/// not a full commit id, the ref is not a valid full ref, or the repository
/// URL is missing or not a network URL.
pub fn parse_push(forge: Forge, body: &[u8]) -> Result<Push, IntakeError> {
    struct Raw {
        tree: Option<String>,
        git_ref: String,
        before: String,
        after: String,
        deleted_flag: bool,
        head: Option<(String, String)>, // (subject, author)
        parent: Option<String>,
    }

    let raw = match forge {
        Forge::Github | Forge::Gitea => {
            let p: HubPush = parse_json(forge, body)?;
            let tree = pick_url([
                &p.repository.clone_url,
                &p.repository.html_url,
                &p.repository.ssh_url,
            ]);
            let commits = p.commits.unwrap_or_default();
            // Gitea lists commits newest first, GitHub oldest first: find the
            // head by id rather than by position.
            let head = commits
                .iter()
                .find(|c| c.id.eq_ignore_ascii_case(&p.after))
                .or(p
                    .head_commit
                    .as_ref()
                    .filter(|c| c.id.eq_ignore_ascii_case(&p.after)))
                .map(|c| (subject_of(&c.message), author_of(c)));
            let single_new_commit =
                commits.len() == 1 && commits[0].id.eq_ignore_ascii_case(&p.after);
            let parent = (forge == Forge::Github
                && p.forced == Some(false)
                && single_new_commit
                && !is_zero_sha(&p.before))
            .then(|| p.before.clone());
            Raw {
                tree,
                git_ref: p.git_ref,
                before: p.before,
                after: p.after,
                deleted_flag: p.deleted,
                head,
                parent,
            }
        }
        Forge::Gitlab => {
            let p: GitlabPush = parse_json(forge, body)?;
            let (proj, repo) = (p.project.as_ref(), p.repository.as_ref());
            let none = None;
            let tree = pick_url([
                proj.map_or(&none, |x| &x.git_http_url),
                proj.map_or(&none, |x| &x.http_url),
                repo.map_or(&none, |x| &x.git_http_url),
                proj.map_or(&none, |x| &x.git_ssh_url),
                repo.map_or(&none, |x| &x.git_ssh_url),
            ]);
            let head_id = p
                .checkout_sha
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| p.after.clone());
            let head = p
                .commits
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|c| c.id.eq_ignore_ascii_case(&head_id))
                .map(|c| (subject_of(&c.message), author_of(c)));
            Raw {
                tree,
                git_ref: p.git_ref,
                before: p.before,
                after: p.after,
                deleted_flag: false,
                head,
                parent: None,
            }
        }
        Forge::PlainGit => {
            let p: PlainPush = parse_json(forge, body)?;
            let parent = match p.parent.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(s) => Some(normalize_sha("parent", s)?),
            };
            let head = Some((
                subject_of(p.subject.as_deref().unwrap_or("")),
                p.author.unwrap_or_default().trim().to_owned(),
            ));
            Raw {
                tree: Some(p.tree.trim().to_owned()),
                git_ref: p.git_ref,
                before: p.before,
                after: p.after,
                deleted_flag: false,
                head,
                parent,
            }
        }
    };

    let before = normalize_sha("before", raw.before.trim())?;
    let after = normalize_sha("after", raw.after.trim())?;
    let git_ref = raw.git_ref.trim().to_owned();
    check_ref(&git_ref)?;
    let tree = raw.tree.ok_or_else(|| {
        IntakeError::Malformed(format!(
            "{} push payload has no repository clone URL",
            forge.display_name()
        ))
    })?;
    check_tree_url(&tree)?;

    let deleted = raw.deleted_flag || is_zero_sha(&after);
    let is_tag = git_ref.starts_with("refs/tags/");
    let branch = git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(&git_ref)
        .to_owned();
    let (head_subject, head_author) = if deleted {
        Default::default()
    } else {
        raw.head.unwrap_or_default()
    };
    let parent = if deleted {
        None
    } else {
        raw.parent.map(|p| p.to_ascii_lowercase())
    };

    Ok(Push {
        tree,
        git_ref,
        branch,
        before,
        after,
        head_subject,
        head_author,
        parent,
        deleted,
        is_tag,
    })
}

#[cfg(test)]
mod tests {
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
}
