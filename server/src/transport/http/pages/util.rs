//! Small helpers shared by the pages: errors as HTML, validated query
//! parameters, formatting, the Wilson interval, pagination.

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Response};

use crate::domain::config::Family;
use crate::transport::http::error::ApiError;

/// A page's error: the status comes from [`ApiError`] (the one place
/// errors become statuses); the body is an HTML page instead of JSON.
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        PageError(e.into())
    }
}

pub fn bad_request(msg: impl Into<String>) -> PageError {
    PageError(ApiError::BadRequest(msg.into()))
}

pub fn not_found(what: impl Into<String>) -> PageError {
    PageError(ApiError::NotFound(what.into()))
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    title: String,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        // A server error's detail goes to the log, not to the page.
        let public = self.0.report();
        let message = match &public.request_id {
            Some(id) => format!("{} (request id {id})", public.message),
            None => public.message.clone(),
        };
        let status = public.status;
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            message: message.clone(),
        };
        let mut resp = match page.render() {
            Ok(body) => (status, Html(body)).into_response(),
            Err(_) => (status, message).into_response(),
        };
        public.add_headers(&mut resp);
        resp
    }
}

pub fn render(t: &impl Template) -> Result<Html<String>, PageError> {
    t.render()
        .map(Html)
        .map_err(|e| PageError(ApiError::Internal(format!("rendering page: {e}"))))
}

/// Query parameters, checked: unknown or repeated names are refused, and
/// each value is validated by the getter that reads it.
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = PageError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, PageError> {
        let q: Result<Query<Vec<(String, String)>>, QueryRejection> =
            Query::from_request_parts(parts, state).await;
        match q {
            Ok(Query(pairs)) => Ok(Params { pairs }),
            Err(e) => Err(bad_request(format!(
                "malformed query string: {}",
                e.body_text()
            ))),
        }
    }
}

impl Params {
    /// Refuses names outside `known` and names given twice.
    pub fn allow(&self, known: &[&str]) -> Result<(), PageError> {
        for (i, (k, _)) in self.pairs.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                return Err(bad_request(format!(
                    "unknown query parameter `{k}` (known: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            if self.pairs[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(bad_request(format!(
                    "query parameter `{k}` given more than once"
                )));
            }
        }
        Ok(())
    }

    /// The value, with an empty value (an unselected form field) as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A 1-based page number (default 1).
    pub fn page(&self, name: &str) -> Result<i64, PageError> {
        match self.get(name) {
            None => Ok(1),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
                _ => Err(bad_request(format!(
                    "`{name}` must be a page number from 1 to 1000000, not `{v}`"
                ))),
            },
        }
    }

    pub fn tree(&self) -> Result<Option<&str>, PageError> {
        match self.get("tree") {
            Some(t) if t.len() > 512 || t.chars().any(char::is_control) => Err(bad_request(
                "`tree` must be a repository URL of at most 512 characters",
            )),
            other => Ok(other),
        }
    }

    pub fn branch(&self) -> Result<Option<&str>, PageError> {
        match self.get("branch") {
            Some(b)
                if b.len() > 255
                    || b.contains("..")
                    || b.chars().any(|c| c.is_control() || c == ' ') =>
            {
                Err(bad_request("`branch` is not a valid git branch name"))
            }
            other => Ok(other),
        }
    }

    /// A plan name; must be one fleet.toml defines or one results exist for.
    pub fn plan(&self, known: &[String]) -> Result<Option<&str>, PageError> {
        match self.get("plan") {
            Some(p) if !known.iter().any(|k| k == p) => Err(bad_request(format!(
                "unknown plan `{p}` (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))),
            other => Ok(other),
        }
    }
}

/// Page navigation for a list fetched with `limit + 1` rows.
pub struct Pager {
    pub page: i64,
    pub has_next: bool,
    /// The query string without the page parameter, ending in `&` or empty.
    pub base: String,
    pub param: &'static str,
}

impl Pager {
    /// Trims `rows` to `per_page` and remembers whether there were more.
    pub fn new<T>(
        rows: &mut Vec<T>,
        page: i64,
        per_page: i64,
        param: &'static str,
        keep: &[(&str, Option<&str>)],
    ) -> Pager {
        let has_next = rows.len() as i64 > per_page;
        rows.truncate(per_page as usize);
        let base = keep
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}&", url_encode(v))))
            .collect::<String>();
        Pager {
            page,
            has_next,
            base,
            param,
        }
    }
    pub fn show(&self) -> bool {
        self.page > 1 || self.has_next
    }
    pub fn prev_href(&self) -> String {
        format!("?{}{}={}", self.base, self.param, self.page - 1)
    }
    pub fn next_href(&self) -> String {
        format!("?{}{}={}", self.base, self.param, self.page + 1)
    }
}

pub fn offset(page: i64, per_page: i64) -> i64 {
    (page - 1) * per_page
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// "12 s ago", "3 min ago", "2 h ago", or a date.
pub fn ago(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let Some(t) = t else { return "never".into() };
    let secs = (chrono::Utc::now() - t).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => t.format("%Y-%m-%d %H:%M UTC").to_string(),
    }
}

pub fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// The display name of a board family ("kunpeng920" → "HiSilicon Kunpeng 920").
pub fn family_name(family: &str) -> String {
    serde_json::from_value::<Family>(serde_json::Value::String(family.to_owned()))
        .map(|f| f.display_name().to_owned())
        .unwrap_or_else(|_| family.to_owned())
}

/// How pages name where a result came from (`jobs.host_kind`,
/// `boards.host_kind`); empty for hardware, which needs no warning.
pub fn host_label(kind: Option<&str>) -> String {
    match kind.and_then(armfleet_protocol::HostKind::parse) {
        Some(armfleet_protocol::HostKind::Hardware) | None => String::new(),
        Some(k) => k.label().to_owned(),
    }
}

/// Two-sided 95% Wilson score interval for `failures / trials`.
pub fn wilson95(failures: i64, trials: i64) -> (f64, f64) {
    if trials <= 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n = trials as f64;
    let f = failures.clamp(0, trials);
    let p = f as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let lo = if f == 0 {
        0.0
    } else {
        (center - half).max(0.0)
    };
    let hi = if f == trials {
        1.0
    } else {
        (center + half).min(1.0)
    };
    (lo, hi)
}

/// A rate as a percentage with sensible precision ("0.25%", "0.0042%").
pub fn pct(rate: f64) -> String {
    let p = rate * 100.0;
    if p == 0.0 {
        "0%".into()
    } else if p >= 10.0 {
        format!("{p:.1}%")
    } else if p >= 0.01 {
        format!("{p:.2}%")
    } else {
        format!("{p:.2e}%")
    }
}

/// "a–b%" for an interval of rates.
pub fn pct_range(lo: f64, hi: f64) -> String {
    let lo = pct(lo);
    let hi = pct(hi);
    format!("{}–{}", lo.trim_end_matches('%'), hi)
}

pub fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Lines worth a highlight in a kernel or QEMU log: aborts, oopses,
/// panics, BUG/WARNING splats.
pub fn is_alarm_line(line: &str) -> bool {
    const NEEDLES: [&str; 14] = [
        "Unable to handle kernel",
        "Internal error:",
        "Kernel panic",
        "TLB conflict abort",
        "FSC = 0x30",
        "SError Interrupt",
        "BUG:",
        "WARNING:",
        "Oops",
        "Call trace:",
        "Synchronous External Abort",
        "KVM internal error",
        "kvm run failed",
        "watchdog: BUG",
    ];
    NEEDLES.iter().any(|n| line.contains(n))
}

/// Verdicts from most to least alarming; a kernel's summary is its worst.
pub const VERDICT_ORDER: [&str; 7] = [
    "regression",
    "still-failing",
    "board-suspect",
    "not-exercised",
    "inconclusive",
    "fixed",
    "pass",
];

pub fn verdict_rank(v: &str) -> usize {
    VERDICT_ORDER
        .iter()
        .position(|x| *x == v)
        .unwrap_or(VERDICT_ORDER.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_known_values() {
        let (lo, hi) = wilson95(3, 1200);
        assert!((lo - 0.000_851).abs() < 2e-5, "{lo}");
        assert!((hi - 0.007_326).abs() < 2e-5, "{hi}");
        assert_eq!(wilson95(0, 100).0, 0.0);
        assert_eq!(wilson95(5, 5).1, 1.0);
        assert_eq!(wilson95(0, 0), (0.0, 1.0));
    }

    #[test]
    fn percentages_read_well() {
        assert_eq!(pct(0.0025), "0.25%");
        assert_eq!(pct(0.0), "0%");
        assert_eq!(pct(0.5), "50.0%");
        assert_eq!(pct_range(0.00086, 0.0073), "0.09–0.73%");
    }

    #[test]
    fn families_have_display_names() {
        assert_eq!(family_name("kunpeng920"), "HiSilicon Kunpeng 920");
        assert_eq!(family_name("rpi5"), "Raspberry Pi 5");
        assert_eq!(family_name("mystery"), "mystery");
    }
}
