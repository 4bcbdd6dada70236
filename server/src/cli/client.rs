//! The CLI's HTTP client: every `armfleet` subcommand that talks to a
//! running server goes through [`Api`], so that errors read the same
//! everywhere ("server answered 404 Not Found: run 9", with the request id
//! of a server error to look for in the server's log).

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// A server's API, with or without a token.
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// `server` is the base URL (`http://127.0.0.1:8080`).
    pub fn new(server: &str) -> Api {
        Api {
            base: server.trim_end_matches('/').to_owned(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    pub fn with_token(mut self, token: String) -> Api {
        self.token = Some(token);
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// `GET path` answered with JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let text = self
            .send(self.request(reqwest::Method::GET, path), path)
            .await?;
        self.json(&text, path)
    }

    /// `GET path` answered with text (a script, a report).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        self.send(self.request(reqwest::Method::GET, path), path)
            .await
    }

    /// `POST path` with an optional JSON body, answered with JSON.
    pub async fn post_json(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut req = self.request(reqwest::Method::POST, path);
        if let Some(body) = body {
            req = req.json(body);
        }
        let text = self.send(req, path).await?;
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        self.json(&text, path)
    }

    fn json(&self, text: &str, path: &str) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(text)
            .with_context(|| format!("{} did not answer JSON", self.url(path)))
    }

    async fn send(&self, req: reqwest::RequestBuilder, path: &str) -> anyhow::Result<String> {
        let url = self.url(path);
        let resp = req
            .send()
            .await
            .with_context(|| format!("contacting {url}"))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .with_context(|| format!("reading {url}"))?;
        if !status.is_success() {
            let err = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .filter(|v| v["error"].is_string())
                .map(|v| describe(&v))
                .unwrap_or(body);
            anyhow::bail!("server answered {status}: {err}");
        }
        Ok(body)
    }
}

/// An error answer's body as the CLI shows it: the message, and for a
/// server error the request id to look for in the server's log.
pub fn describe(body: &serde_json::Value) -> String {
    let message = body["error"].as_str().unwrap_or("?");
    match body["request_id"].as_str() {
        Some(id) => format!("{message} (request id {id})"),
        None => message.to_owned(),
    }
}

/// The API token: given (flag or `ARMFLEET_TOKEN`), else the one the
/// server wrote into its data dir.
pub fn read_token(token: Option<String>, data_dir: &Path) -> anyhow::Result<String> {
    match token {
        Some(t) => Ok(t),
        None => std::fs::read_to_string(data_dir.join("api-token"))
            .map(|t| t.trim().to_owned())
            .with_context(|| {
                format!(
                    "no API token: pass --token, set ARMFLEET_TOKEN, or run from the server's data dir ({})",
                    data_dir.join("api-token").display()
                )
            }),
    }
}
