//! What came of a delivery attempt ([`Outcome`]), what it counts as, and
//! the counts kept per (integration, product): the same three kinds in the
//! metrics, the traffic book and the api's history.

use std::time::Duration;

use bytes::Bytes;

/// What an attempt counts as; its label in the metrics, the delivery log
/// and the api.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeKind {
    Success,
    Error,
    Skipped,
}

impl OutcomeKind {
    /// In the order of their discriminants.
    pub const ALL: [OutcomeKind; 3] = [
        OutcomeKind::Success,
        OutcomeKind::Error,
        OutcomeKind::Skipped,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::Error => "error",
            OutcomeKind::Skipped => "skipped",
        }
    }
}

/// An integration id and the product of the event (`None` for sandbox
/// deliveries of non-product devices): what counts are kept per.
pub type CountKey = (std::sync::Arc<str>, Option<u32>);

/// Counts of one (integration, product).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub success: u64,
    pub error: u64,
    pub skipped: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.success += other.success;
        self.error += other.error;
        self.skipped += other.skipped;
    }
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.success + self.error + self.skipped
    }

    pub fn add(&mut self, kind: OutcomeKind) {
        match kind {
            OutcomeKind::Success => self.success += 1,
            OutcomeKind::Error => self.error += 1,
            OutcomeKind::Skipped => self.skipped += 1,
        }
    }
}

/// Why a delivery did not succeed. Messages never include the URL or headers,
/// which may carry secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("error status {0}")]
    Status(u16),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    /// The destination is not a public address (outbound safety).
    #[error("{0}")]
    Refused(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("the request could not be built: {0}")]
    Invalid(String),
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The response status on success, or why it failed.
    pub result: Result<u16, DeliveryError>,
    /// Response body, at most `max_response_bytes`.
    pub body: Bytes,
    pub elapsed: Duration,
    /// The response's `Retry-After`, in seconds or as an HTTP date.
    pub retry_after: Option<Duration>,
    /// The response's `Content-Type` as it came (checked only where a data
    /// URL needs it: `responses::media_type`).
    pub content_type: Option<http::HeaderValue>,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }

    /// An attempt that never left because its request could not be rendered.
    pub fn not_sent(error: DeliveryError) -> Outcome {
        Outcome {
            result: Err(error),
            body: Bytes::new(),
            elapsed: Duration::ZERO,
            retry_after: None,
            content_type: None,
        }
    }
}
