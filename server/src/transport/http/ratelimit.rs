//! Rate limits for the write side of the API and the webhooks: a token
//! bucket per client address, so one noisy sender cannot starve the rest.
//! Reads (pages, GET API) are not limited.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

use crate::wiring::state::AppState;

pub struct RateLimiter {
    buckets: Mutex<HashMap<Option<IpAddr>, (f64, Instant)>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl RateLimiter {
    /// Takes one token for `client`; `Err(seconds)` to wait when empty.
    pub fn take(&self, client: Option<IpAddr>, per_s: f64, burst: f64) -> Result<(), f64> {
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > 10_000 {
            // Forget idle clients rather than grow without bound.
            buckets.retain(|_, (tokens, at)| *tokens < burst || at.elapsed().as_secs() < 60);
        }
        let now = Instant::now();
        let (tokens, at) = buckets.entry(client).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_s).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / per_s)
        }
    }
}

pub async fn limit_writes(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let settings = state.fleet.current().server.clone();
    match state
        .rate_limiter
        .take(client, settings.rate_limit_per_s, settings.rate_limit_burst)
    {
        Ok(()) => next.run(req).await,
        Err(wait) => ApiError::RateLimited {
            retry_after_s: wait.ceil().max(1.0) as u64,
        }
        .into_response(),
    }
}
