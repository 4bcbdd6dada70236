//! Kernel intake: push webhooks from GitHub, GitLab, Gitea/Forgejo and
//! plain git servers (`scripts/post-receive`).
//!
//! A delivery is authenticated against the secret of a watched tree before
//! anything is read from it, and recorded in the same transaction as the
//! run it starts, so a delivery is either fully accepted or not at all
//! (senders retry on 5xx). The same delivery id, or the same tree, branch,
//! commit and plans, never starts a second run.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::domain::config::Tree;
use crate::domain::deliveries::{self, PushOutcome};
use crate::domain::intake::{self, EventKind, Forge, IntakeError};
use crate::domain::runs::{self, KernelInput};
use crate::wiring::metrics::ResultLabel;
use crate::wiring::state::AppState;

/// Largest webhook body accepted (a push of thousands of commits is big).
pub const MAX_HOOK_BODY: usize = 8 << 20;

pub async fn receive(
    State(state): State<AppState>,
    Path(forge): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(forge) = Forge::from_route(&forge) else {
        return ApiError::NotFound(format!(
            "webhook endpoint `{forge}` (github, gitlab, gitea, forgejo, git)"
        ))
        .into_response();
    };
    let outcome = handle(&state, forge, &headers, &body).await;
    let label = match &outcome {
        Ok((status, _)) if status.is_success() => "accepted",
        Ok(_) => "ignored",
        Err(HookError::Auth(_)) => "unauthorized",
        Err(HookError::Api(ApiError::Unavailable(_))) => "unavailable",
        Err(_) => "rejected",
    };
    state
        .metrics
        .webhooks
        .get_or_create(&ResultLabel {
            result: label.into(),
        })
        .inc();
    match outcome {
        Ok((status, body)) => (status, Json(body)).into_response(),
        Err(HookError::Auth(e)) => {
            tracing::warn!(forge = forge.as_str(), "webhook refused: {e}");
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
            (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
        Err(HookError::Api(e)) => e.into_response(),
    }
}

enum HookError {
    Auth(IntakeError),
    Api(ApiError),
}

impl From<sqlx::Error> for HookError {
    fn from(e: sqlx::Error) -> Self {
        HookError::Api(e.into())
    }
}

async fn handle(
    state: &AppState,
    forge: Forge,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(StatusCode, serde_json::Value), HookError> {
    let lookup = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let fleet = state.fleet.current();

    // Authenticate first: which watched tree's secret signed this?
    let mut first_error = None;
    let mut tree: Option<&Tree> = None;
    for t in &fleet.trees {
        let Some(secret) = &t.secret else { continue };
        match intake::verify(forge, secret.as_bytes(), &lookup, body) {
            Ok(()) => {
                tree = Some(t);
                break;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some(tree) = tree else {
        return Err(HookError::Auth(
            first_error.unwrap_or(IntakeError::NoSecretConfigured(forge.display_name())),
        ));
    };

    let delivery = intake::delivery_id(forge, &lookup);
    let push = match intake::event_kind(forge, &lookup) {
        EventKind::Ping => {
            record_delivery(state, forge, delivery.as_deref(), "ping", "pong").await?;
            return Ok((
                StatusCode::OK,
                serde_json::json!({ "ok": "pong", "tree": tree.name }),
            ));
        }
        EventKind::Other(name) => {
            record_delivery(state, forge, delivery.as_deref(), &name, "ignored").await?;
            return Ok((
                StatusCode::ACCEPTED,
                serde_json::json!({ "ignored": format!("event `{name}` is not a push") }),
            ));
        }
        EventKind::Push => intake::parse_push(forge, body)
            .map_err(|e| HookError::Api(ApiError::BadRequest(e.to_string())))?,
    };
    if !tree.matches_url(&push.tree) {
        return Err(HookError::Api(ApiError::BadRequest(format!(
            "the payload names repository {} but was signed with the secret of tree `{}` ({})",
            push.tree, tree.name, tree.url
        ))));
    }
    let ignore = |why: String| Ok((StatusCode::OK, serde_json::json!({ "ignored": why })));
    if push.deleted {
        record_delivery(
            state,
            forge,
            delivery.as_deref(),
            "push",
            "ignored: deletion",
        )
        .await?;
        return ignore(format!("{} was deleted", push.git_ref));
    }
    if push.is_tag && !tree.test_tags {
        record_delivery(state, forge, delivery.as_deref(), "push", "ignored: tag").await?;
        return ignore(format!(
            "tag push {} (tags are not tested for tree `{}`)",
            push.git_ref, tree.name
        ));
    }
    if !push.is_tag && !tree.watches_branch(&push.branch) {
        record_delivery(
            state,
            forge,
            delivery.as_deref(),
            "push",
            "ignored: unwatched branch",
        )
        .await?;
        return ignore(format!(
            "branch `{}` is not watched for tree `{}`",
            push.branch, tree.name
        ));
    }

    let plans =
        runs::select_plans(&fleet, tree.plans.clone()).map_err(|e| HookError::Api(e.into()))?;
    let plan_filter = (!tree.plans.is_empty()).then(|| tree.plans.join(","));
    let kernel = KernelInput {
        tree: tree.url.clone(),
        branch: push.branch.clone(),
        commit: push.after.to_ascii_lowercase(),
        parent: push.parent.clone(),
        subject: Some(push.head_subject.clone()).filter(|s| !s.is_empty()),
        author: Some(push.head_author.clone()).filter(|s| !s.is_empty()),
        committed_at: None,
    };
    let planned = match deliveries::accept_push(
        &state.pool,
        forge.as_str(),
        delivery.as_deref(),
        &kernel,
        &plans,
        plan_filter.as_deref(),
    )
    .await?
    {
        PushOutcome::SameDelivery { run_id } => {
            return Ok((
                StatusCode::OK,
                serde_json::json!({ "duplicate": true, "delivery": delivery, "run_id": run_id }),
            ));
        }
        PushOutcome::SameKernel { run_id } => {
            return Ok((
                StatusCode::OK,
                serde_json::json!({ "duplicate": true, "run_id": run_id }),
            ));
        }
        PushOutcome::Planned(planned) => planned,
    };
    tracing::info!(forge = forge.as_str(), tree = %tree.name, branch = %push.branch, commit = %kernel.commit, run = planned.run_id, "push accepted");
    state.mirrors.request(&tree.url);
    state.work.work_arrived(&planned.boards).await;
    Ok((
        StatusCode::CREATED,
        serde_json::json!({
            "run_id": planned.run_id,
            "kernel_id": planned.kernel_id,
            "jobs": planned.jobs,
            "tree": tree.name,
            "branch": push.branch,
            "commit": kernel.commit,
        }),
    ))
}

async fn record_delivery(
    state: &AppState,
    forge: Forge,
    delivery: Option<&str>,
    event: &str,
    result: &str,
) -> Result<(), HookError> {
    deliveries::record(&state.pool, forge.as_str(), delivery, event, result).await?;
    Ok(())
}
