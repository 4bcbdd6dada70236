//! `/regressions/{id}`: one regression and its maintainer report, ready
//! to copy (the same text as `armfleet report --lkml`).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Html;

use super::util::{PageError, render};
use crate::wiring::state::AppState;

#[derive(Template)]
#[template(path = "regression.html")]
struct RegressionPage {
    id: i64,
    title: String,
    state: String,
    family: String,
    tree: String,
    branch: String,
    bad: String,
    /// `simulated`, `emulated`, or empty for hardware only.
    host_note: String,
    report: String,
}

pub async fn regression_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let id: i64 = id
        .parse()
        .map_err(|_| super::util::bad_request(format!("`{id}` is not a regression id")))?;
    let base = crate::transport::http::api::base_url(&headers);
    let facts = crate::domain::lkml::load(&state.pool, &state.data_dir, id, &base)
        .await
        .map_err(|e| PageError(e.into()))?;
    let report = crate::domain::lkml::render(&facts, &state.fleet.current().report);
    let kinds: std::collections::BTreeSet<&str> =
        facts.boards.iter().map(|b| b.1.as_str()).collect();
    let host_note = kinds
        .iter()
        .filter(|k| **k != "hardware")
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    render(&RegressionPage {
        id,
        title: facts.title.clone(),
        state: facts.state.clone(),
        family: facts.family_name.clone(),
        tree: facts.tree.clone(),
        branch: facts.branch.clone(),
        bad: facts.bad.clone(),
        host_note,
        report,
    })
}
