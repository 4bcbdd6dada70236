//! The one place where errors become HTTP responses.
//!
//! Client errors (4xx) tell the client what is wrong. Server errors (500,
//! 503) never show their detail (SQL, serde, I/O messages) to the client:
//! the detail is logged with the request's id (`x-request-id`), and the
//! client gets a generic message and that id to quote.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::domain::jobs::JobError;
use crate::domain::runs::TriggerError;

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
    #[error("rate limit: retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// A dependency (the database) is down: retry later. The text is for
    /// the log only.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure. The text is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the client is told of an [`ApiError::Internal`].
pub const INTERNAL_MESSAGE: &str = "internal error";
/// What the client is told of an [`ApiError::Unavailable`].
pub const UNAVAILABLE_MESSAGE: &str = "temporarily unavailable, retry later";

const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    /// The id of the request being handled (see [`with_request_id`]).
    static REQUEST_ID: String;
}

/// Middleware (inside `SetRequestIdLayer`): the request's `x-request-id`
/// is known while the request is handled, so that an error can be logged
/// and answered with it.
pub async fn with_request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    REQUEST_ID.scope(id, next.run(req)).await
}

/// The id of the request being handled; outside a request (or without
/// [`with_request_id`]), a fresh one, so the log and the answer still match.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| new_request_id())
}

fn new_request_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A client's view of an error: its status, the message it may read, and
/// for server errors the request id under which the detail was logged.
pub struct PublicError {
    pub status: StatusCode,
    pub message: String,
    pub request_id: Option<String>,
}

impl ApiError {
    /// Logs a server error's detail with the request id, and returns what
    /// the client may see. Client errors keep their specific message.
    pub fn report(&self) -> PublicError {
        let status = self.status();
        let (message, request_id) = match self {
            ApiError::Internal(detail) => {
                let id = request_id();
                tracing::error!(request_id = %id, status = status.as_u16(), "internal error: {detail}");
                (INTERNAL_MESSAGE.to_owned(), Some(id))
            }
            ApiError::Unavailable(detail) => {
                let id = request_id();
                tracing::warn!(request_id = %id, status = status.as_u16(), "unavailable: {detail}");
                (UNAVAILABLE_MESSAGE.to_owned(), Some(id))
            }
            other => (other.to_string(), None),
        };
        PublicError {
            status,
            message,
            request_id,
        }
    }

    /// The status of each error, decided here only.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let public = self.report();
        let body = match &public.request_id {
            Some(id) => serde_json::json!({ "error": public.message, "request_id": id }),
            None => serde_json::json!({ "error": public.message }),
        };
        let mut resp = (public.status, Json(body)).into_response();
        public.add_headers(&mut resp);
        match self {
            ApiError::Unauthorized => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited { retry_after_s } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, retry_after_s.into());
            }
            _ => {}
        }
        resp
    }
}

impl PublicError {
    /// The `x-request-id` header of a server error's answer (the request's
    /// own id is also propagated to every answer by the HTTP stack).
    pub fn add_headers(&self, resp: &mut Response) {
        if let Some(v) = self
            .request_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
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

impl From<crate::domain::repro::ReproError> for ApiError {
    fn from(e: crate::domain::repro::ReproError) -> Self {
        use crate::domain::repro::ReproError;
        match e {
            ReproError::NotFound(id) => ApiError::NotFound(format!("job {id}")),
            // The job exists but cannot be replayed: its records say why.
            ReproError::NotRecorded { .. } => ApiError::Conflict(e.to_string()),
            ReproError::Db(db) => db.into(),
        }
    }
}

impl From<crate::domain::bisect::BisectError> for ApiError {
    fn from(e: crate::domain::bisect::BisectError) -> Self {
        use crate::domain::bisect::BisectError;
        match e {
            BisectError::Invalid(m) | BisectError::Git(m) => ApiError::BadRequest(m),
            BisectError::NotFound(id) => ApiError::NotFound(format!("bisection {id}")),
            BisectError::Db(db) => db.into(),
        }
    }
}

impl From<crate::domain::lkml::LkmlError> for ApiError {
    fn from(e: crate::domain::lkml::LkmlError) -> Self {
        match e {
            crate::domain::lkml::LkmlError::NotFound(id) => {
                ApiError::NotFound(format!("regression {id}"))
            }
            crate::domain::lkml::LkmlError::Db(db) => db.into(),
        }
    }
}
