//! The one place where errors become HTTP responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::jobs::JobError;
use crate::runs::TriggerError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        let mut resp = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert("www-authenticate", "Bearer".parse().unwrap());
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        match e {
            TriggerError::Invalid(_) | TriggerError::UnknownPlan(_) => {
                ApiError::BadRequest(e.to_string())
            }
            TriggerError::Db(db) => db.into(),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::NotFound(id) => ApiError::NotFound(format!("job {id}")),
            JobError::IllegalTransition { .. }
            | JobError::StaleEpoch { .. }
            | JobError::WrongBoard { .. } => ApiError::Conflict(e.to_string()),
            JobError::Db(db) => db.into(),
        }
    }
}

impl From<crate::repro::ReproError> for ApiError {
    fn from(e: crate::repro::ReproError) -> Self {
        use crate::repro::ReproError;
        match e {
            ReproError::NotFound(id) => ApiError::NotFound(format!("job {id}")),
            // The job exists but cannot be replayed: its records say why.
            ReproError::NotRecorded { .. } => {
                ApiError::Conflict(e.to_string())
            }
            ReproError::Db(db) => db.into(),
        }
    }
}

impl From<crate::lkml::LkmlError> for ApiError {
    fn from(e: crate::lkml::LkmlError) -> Self {
        match e {
            crate::lkml::LkmlError::NotFound(id) => ApiError::NotFound(format!("regression {id}")),
            crate::lkml::LkmlError::Db(db) => db.into(),
        }
    }
}
