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

mod signature;
pub use signature::{constant_time_eq, hmac_sha256, verify};

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

fn header(headers: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    headers(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
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
mod tests;
