//! `/signatures`: crash signatures, deduplicated across jobs.

use askama::Template;
use axum::extract::State;
use axum::response::Html;

use super::util::{PageError, Pager, Params, ago, offset, render, short};
use crate::domain::findings;
use crate::wiring::state::AppState;

const PER_PAGE: i64 = 50;

pub struct SignatureView {
    pub signature: String,
    pub title: String,
    pub class: String,
    pub count: i64,
    pub first_kernel_id: i64,
    pub first_commit: String,
    pub first_seen: String,
    pub last_kernel_id: i64,
    pub last_commit: String,
    pub last_seen: String,
    pub boards: Vec<String>,
    pub more_boards: i64,
    pub example_job: i64,
}

#[derive(Template)]
#[template(path = "signatures.html")]
struct SignaturesPage {
    signatures: Vec<SignatureView>,
    pager: Pager,
}

pub async fn signatures_page(
    State(state): State<AppState>,
    params: Params,
) -> Result<Html<String>, PageError> {
    params.allow(&["page"])?;
    let page = params.page("page")?;
    let mut rows =
        findings::signature_summaries(&state.pool, PER_PAGE + 1, offset(page, PER_PAGE)).await?;
    let pager = Pager::new(&mut rows, page, PER_PAGE, "page", &[]);
    let signatures = rows
        .into_iter()
        .map(|s| SignatureView {
            more_boards: (s.board_count - s.boards.len() as i64).max(0),
            signature: s.signature.chars().take(16).collect(),
            title: s.title,
            class: s.class,
            count: s.count,
            first_kernel_id: s.first_kernel_id,
            first_commit: short(&s.first_commit),
            first_seen: ago(Some(s.first_seen_at)),
            last_kernel_id: s.last_kernel_id,
            last_commit: short(&s.last_commit),
            last_seen: ago(Some(s.last_seen_at)),
            boards: s.boards,
            example_job: s.last_job_id,
        })
        .collect();
    render(&SignaturesPage { signatures, pager })
}
