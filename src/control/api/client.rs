//! A client of the REST API, for `hookd integrations` and the tests.
//!
//! In: a method, a path under the api's base URL and an optional JSON body.
//! Out: the status and the JSON answer, or [`ClientError::Api`] carrying the
//! api's own error message for any 4xx/5xx.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status}: {message}")]
    Api {
        status: u16,
        message: String,
        body: Value,
    },
    #[error("cannot reach the api at {base}: {error}")]
    Transport { base: String, error: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Transport { .. } => None,
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    /// `base` like `http://127.0.0.1:8480`.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> ApiClient {
        ApiClient {
            base: base.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same api as another caller.
    pub fn with_token(&self, token: impl Into<String>) -> ApiClient {
        ApiClient {
            token: token.into(),
            ..self.clone()
        }
    }

    /// Sends the request; `Ok` for 2xx (204 answers `Value::Null`).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let (status, value) = self.raw(method, path, body).await?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            Err(ClientError::Api {
                status,
                message,
                body: value,
            })
        }
    }

    /// The status and body whatever the status.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        let transport = |error: String| ClientError::Transport {
            base: self.base.clone(),
            error,
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if !self.token.is_empty() {
            req = req.header("authorization", format!("Bearer {}", self.token));
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| transport(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, value))
    }
}
