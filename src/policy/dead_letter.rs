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

use crate::model::event::{InvalidEvent, InvalidReason, Origin};
use crate::policy::retry::AttemptLog;

/// Why a delivery was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryFailure {
    /// Every attempt of the retry schedule failed.
    RetriesExhausted,
    /// The request cannot be rendered; another attempt would fail the same
    /// way.
    RenderFailed,
    /// The request cannot be signed: its `signingSecret` is not a
    /// configured secret, or not a usable key.
    SigningFailed,
    /// Deferred by its host's rate limit `limits.max_deferrals` times.
    RateLimited,
    /// Its retry record could not be produced.
    ProduceFailed,
}

impl DeliveryFailure {
    pub const ALL: [DeliveryFailure; 5] = [
        DeliveryFailure::RetriesExhausted,
        DeliveryFailure::RenderFailed,
        DeliveryFailure::SigningFailed,
        DeliveryFailure::RateLimited,
        DeliveryFailure::ProduceFailed,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            DeliveryFailure::RetriesExhausted => "retries_exhausted",
            DeliveryFailure::RenderFailed => "render_failed",
            DeliveryFailure::SigningFailed => "signing_failed",
            DeliveryFailure::RateLimited => "rate_limited",
            DeliveryFailure::ProduceFailed => "produce_failed",
        }
    }
}

/// Why a record went nowhere, not even to the dead-letter topic
/// (`hookd_records_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its dead letter was refused by the broker even shrunk.
    Unproducible,
    /// Writing its dead letter panicked (a bug).
    Panicked,
}

impl Dropped {
    pub fn as_label(self) -> &'static str {
        match self {
            Dropped::Unproducible => "unproducible",
            Dropped::Panicked => "panic",
        }
    }
}

/// Why a record is in the dead-letter topic: a record refused as an event,
/// or a delivery given up on. Written as its label (`not_json`,
/// `retries_exhausted`, …), a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Event(InvalidReason),
    Delivery(DeliveryFailure),
}

impl Reason {
    pub fn as_label(self) -> &'static str {
        match self {
            Reason::Event(r) => r.as_label(),
            Reason::Delivery(f) => f.as_label(),
        }
    }

    /// The reason a label names; `None` for a label hookd does not write.
    pub fn from_label(label: &str) -> Option<Reason> {
        InvalidReason::ALL
            .into_iter()
            .map(Reason::Event)
            .chain(DeliveryFailure::ALL.into_iter().map(Reason::Delivery))
            .find(|r| r.as_label() == label)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_label())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, label: &&str) -> bool {
        self.as_label() == *label
    }
}

impl PartialEq<Reason> for &str {
    fn eq(&self, reason: &Reason) -> bool {
        *self == reason.as_label()
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_label())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        let label = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Reason::from_label(&label)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown reason {label:?}")))
    }
}

/// One dead-letter record.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: Reason,
    /// Human-readable explanation.
    pub error: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The original record: as text when it is UTF-8, else base64 in
    /// `payload_base64`.
    pub payload: Option<String>,
    pub payload_base64: Option<String>,
    /// Set when the payload was cut: the original record's size in bytes.
    pub payload_truncated_from: Option<usize>,
    /// When hookd gave up on it (RFC 3339).
    pub dead_lettered_at: String,
    /// For deliveries: the integration and every attempt made.
    pub integration: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub history: Vec<AttemptLog>,
}

impl DeadLetter {
    pub fn invalid_event(invalid: &InvalidEvent, origin: &Origin, payload: &[u8]) -> DeadLetter {
        DeadLetter::record(
            Reason::Event(invalid.reason),
            &invalid.message,
            origin,
            payload,
        )
    }

    /// A record whose handling failed for `reason`, with the record as it
    /// was read.
    pub fn record(reason: Reason, error: &str, origin: &Origin, payload: &[u8]) -> DeadLetter {
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
            reason,
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

    /// A delivery given up on.
    pub fn delivery(
        reason: DeliveryFailure,
        error: String,
        event_raw: &str,
        origin: &Origin,
        integration: &str,
        history: Vec<AttemptLog>,
    ) -> DeadLetter {
        DeadLetter {
            integration: Some(integration.to_owned()),
            history,
            ..DeadLetter::record(
                Reason::Delivery(reason),
                &error,
                origin,
                event_raw.as_bytes(),
            )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_written_as_distinct_labels_and_read_back() {
        let all: Vec<Reason> = InvalidReason::ALL
            .into_iter()
            .map(Reason::Event)
            .chain(DeliveryFailure::ALL.into_iter().map(Reason::Delivery))
            .collect();
        let labels: std::collections::BTreeSet<&str> = all.iter().map(|r| r.as_label()).collect();
        assert_eq!(labels.len(), all.len(), "{labels:?}");
        for r in all {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_label()));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
        }
        assert_eq!(
            serde_json::to_string(&Reason::Delivery(DeliveryFailure::RetriesExhausted)).unwrap(),
            "\"retries_exhausted\""
        );
        assert!(serde_json::from_str::<Reason>("\"no_such_reason\"").is_err());
    }
}
