//! The request a delivery sends: exactly as rendered, or why it could not
//! be made; the headers hookd adds to every request, and the idempotency
//! key.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::model::integration::Method;
use crate::template::RenderError;

/// The request exactly as it will be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedRequest {
    pub method: Method,
    /// Complete URL, query string included.
    pub url: String,
    /// In sending order; names as configured.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RenderedRequest {
    /// `{"method","url","headers":{name: value},"body"}`, as the `render`
    /// command prints it.
    pub fn to_json(&self) -> Value {
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "method": self.method.as_str(),
            "url": self.url,
            "headers": headers,
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

/// Why a request could not be rendered. Messages name the field; they never
/// quote rendered values, which may hold secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderFailure {
    #[error("{field}: template failed to render: {message}")]
    Template { field: String, message: String },
    #[error("json: the template did not render to valid JSON: {0}")]
    JsonText(String),
    #[error("url: the rendered URL is not a valid http(s) URL: {0}")]
    Url(String),
    #[error("headers: rendered header {0:?} has an invalid name or value")]
    Header(String),
    /// The event's templates together used up its render budget: another
    /// integration of the same event may have spent it, so a retry (with a
    /// budget of its own) can succeed.
    #[error("{field}: template failed to render: {message}")]
    EventBudget { field: String, message: String },
}

impl RenderFailure {
    pub(super) fn of(field: &str, e: RenderError) -> RenderFailure {
        let (field, message) = (field.to_owned(), e.to_string());
        match e {
            RenderError::EventOutputTooLarge { .. } | RenderError::EventTooManySteps { .. } => {
                RenderFailure::EventBudget { field, message }
            }
            _ => RenderFailure::Template { field, message },
        }
    }
}

/// `User-Agent` of every request: hookd and its version.
pub const USER_AGENT: &str = concat!("hookd/", env!("CARGO_PKG_VERSION"));

/// Header carrying the idempotency key; identical when an event is redelivered.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// Stable across redeliveries of the same event to the same integration:
/// the receiver can drop duplicates by it. XXH3-128 (a fixed, documented
/// algorithm, so keys stay the same across versions and machines) of the event
/// id and the integration id; not a secret, so a cryptographic hash would only
/// cost time (SHA-256 was a third of the default body's render time).
pub fn idempotency_key(event_id: &str, integration_id: &str) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(event_id.as_bytes());
    h.update(&[0]);
    h.update(integration_id.as_bytes());
    hex::encode(h.digest128().to_be_bytes())
}
