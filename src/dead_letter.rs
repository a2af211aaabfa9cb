//! Dead letters: records that cannot be delivered, kept with the reason.
//!
//! In: a refused record (its bytes, where it came from and why). Out: the JSON
//! value written to the dead-letter topic, keyed by device id when one can be
//! read. Operators replay or inspect them; nothing is dropped silently.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::event::{InvalidEvent, Origin};
use crate::retry::AttemptLog;

/// One dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Bounded label (`not_json`, `name_too_long`, …).
    pub reason: String,
    /// Human-readable explanation.
    pub error: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The original record: as text when it is UTF-8, else base64 in
    /// `payload_base64`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payload_base64: Option<String>,
    /// When hookd gave up on it (RFC 3339).
    pub dead_lettered_at: String,
    /// For deliveries: the integration and every attempt made.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub integration: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub history: Vec<AttemptLog>,
}

impl DeadLetter {
    pub fn invalid_event(invalid: &InvalidEvent, origin: &Origin, payload: &[u8]) -> DeadLetter {
        let (text, b64) = match std::str::from_utf8(payload) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ),
        };
        DeadLetter {
            reason: invalid.reason.as_label().to_owned(),
            error: invalid.message.clone(),
            topic: origin.topic.clone(),
            partition: origin.partition,
            offset: origin.offset,
            payload: text,
            payload_base64: b64,
            dead_lettered_at: now(),
            integration: None,
            history: Vec::new(),
        }
    }

    /// A delivery given up on: retries exhausted, or a request that cannot be
    /// rendered.
    pub fn delivery(
        reason: &str,
        error: String,
        event_raw: &str,
        origin: &Origin,
        integration: &str,
        history: Vec<AttemptLog>,
    ) -> DeadLetter {
        DeadLetter {
            reason: reason.to_owned(),
            error,
            topic: origin.topic.clone(),
            partition: origin.partition,
            offset: origin.offset,
            payload: Some(event_raw.to_owned()),
            payload_base64: None,
            dead_lettered_at: now(),
            integration: Some(integration.to_owned()),
            history,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a dead letter always serializes")
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
