//! Dead letters: records that cannot be delivered, kept with the reason.
//!
//! In: a refused record (its bytes, where it came from and why). Out: the JSON
//! value written to the dead-letter topic, keyed by device id when one can be
//! read. Operators replay or inspect them; nothing is dropped silently.
//!
//! Bounded: a dead letter must always fit in a Kafka record, whatever it
//! carries (a record may be refused *because* it was too large), so the
//! payload is cut at [`MAX_PAYLOAD_BYTES`] with its original size kept
//! beside it, and the error text at [`MAX_ERROR_CHARS`].

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::model::event::{InvalidEvent, Origin};
use crate::policy::retry::AttemptLog;

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
    /// Set when the payload was cut: the original record's size in bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payload_truncated_from: Option<usize>,
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
        DeadLetter::record(invalid.reason.as_label(), &invalid.message, origin, payload)
    }

    /// A record whose handling failed for `reason` (a bounded label), with
    /// the record as it was read.
    pub fn record(reason: &str, error: &str, origin: &Origin, payload: &[u8]) -> DeadLetter {
        let truncated = payload.len() > MAX_PAYLOAD_BYTES;
        let kept = &payload[..payload.len().min(MAX_PAYLOAD_BYTES)];
        let (text, b64) = match std::str::from_utf8(kept) {
            Ok(s) => (Some(s.to_owned()), None),
            // A cut inside a UTF-8 character: keep the text before it.
            Err(e) if truncated && e.error_len().is_none() => (
                Some(String::from_utf8_lossy(&kept[..e.valid_up_to()]).into_owned()),
                None,
            ),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(kept)),
            ),
        };
        DeadLetter {
            reason: reason.to_owned(),
            error: cap(error),
            topic: origin.topic.clone(),
            partition: origin.partition,
            offset: origin.offset,
            payload: text,
            payload_base64: b64,
            payload_truncated_from: truncated.then_some(payload.len()),
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
            integration: Some(integration.to_owned()),
            history,
            ..DeadLetter::record(reason, &error, origin, event_raw.as_bytes())
        }
    }

    /// This letter with its payload cut to `max` bytes and its history
    /// dropped: what is left to write when the whole letter cannot be
    /// produced.
    pub fn shrunk(mut self, max: usize) -> DeadLetter {
        let original = self
            .payload_truncated_from
            .or(self.payload.as_ref().map(String::len))
            .or(self.payload_base64.as_ref().map(|b| b.len() / 4 * 3));
        if let Some(text) = &mut self.payload {
            if text.len() > max {
                let mut at = max;
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.truncate(at);
                self.payload_truncated_from = original;
            }
        }
        if let Some(b64) = &mut self.payload_base64 {
            if b64.len() > max {
                b64.truncate(max / 4 * 4);
                self.payload_truncated_from = original;
            }
        }
        self.history.clear();
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a dead letter always serializes")
    }
}

/// Bytes of the original record a dead letter keeps.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Characters of an error text a dead letter keeps.
pub const MAX_ERROR_CHARS: usize = 1024;

/// `text` cut to [`MAX_ERROR_CHARS`], marked when cut.
pub fn cap(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}… ({} bytes in all)", &text[..at], text.len()),
        None => text.to_owned(),
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
