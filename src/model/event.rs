//! Device events: the input of the pipeline.
//!
//! In: the raw bytes of one record of the events topic plus where it came from
//! (topic, partition, offset). Out: a validated [`DeviceEvent`], or an
//! [`InvalidEvent`] whose [`InvalidReason`] is a bounded label for metrics and
//! whose message is written to the dead-letter topic. Decoding never panics and
//! never fails the partition: every record ends as one or the other.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::Value;

/// Longest event name a device may publish (docs/behaviour.md, "Device events").
pub const MAX_NAME_LEN: usize = 64;
/// Largest event data, in bytes (docs/behaviour.md, "Device events").
pub const MAX_DATA_LEN: usize = 16384;

/// Prefixes of the events hookd itself publishes back; they never trigger
/// integrations, so a webhook can never feed itself (docs/behaviour.md,
/// "`event` (trigger)").
pub const RESPONSE_EVENT_PREFIXES: [&str; 3] = ["hook-sent/", "hook-response/", "hook-error/"];

/// Where a record was read from; the fallback event id and the idempotency key
/// derive from it, so a redelivered record yields the same key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A decoded, validated device event. Cheap to share across the deliveries of
/// one fan-out (`Arc` inside).
#[derive(Debug, Clone)]
pub struct DeviceEvent(Arc<EventInner>);

#[derive(Debug)]
pub struct EventInner {
    /// The actual event name (not the integration's prefix).
    pub name: String,
    /// Event data as published; empty when the device sent none.
    pub data: String,
    /// Normalised to ISO-8601 with milliseconds (`2016-04-16T13:37:08.728Z`),
    /// the form the default fields carry (docs/behaviour.md, "Default fields
    /// and `noDefaults`").
    pub published_at: String,
    /// Device id (`coreid` on the wire).
    pub device_id: String,
    /// The claiming user; `None` for unclaimed devices (empty on the wire).
    pub user_id: Option<String>,
    pub product_id: Option<u32>,
    pub version: Option<u32>,
    /// The `id` field when present, else `<topic>/<partition>/<offset>`.
    pub id: String,
    /// The record's JSON text, for `PARTICLE_EVENT_JSON`/`PARTICLE_EVENT_BASE64`.
    pub raw: String,
}

impl std::ops::Deref for DeviceEvent {
    type Target = EventInner;
    fn deref(&self) -> &EventInner {
        &self.0
    }
}

impl DeviceEvent {
    /// True for `hook-sent/…`, `hook-response/…` and `hook-error/…` events.
    /// Also `<device id>/hook-response/…`, the product default response
    /// topic, so a response can never trigger a webhook however it is routed.
    pub fn is_response_event(&self) -> bool {
        let after_first_segment = self
            .name
            .split_once('/')
            .map(|(_, rest)| rest)
            .unwrap_or("");
        RESPONSE_EVENT_PREFIXES
            .iter()
            .any(|p| self.name.starts_with(p) || after_first_segment.starts_with(p))
    }

    /// Decodes one record. `fallback_time` is used when the event carries no
    /// `published_at` (the Kafka record timestamp, normally).
    pub fn decode(
        bytes: &[u8],
        origin: &Origin,
        fallback_time: DateTime<Utc>,
    ) -> Result<DeviceEvent, InvalidEvent> {
        let raw = std::str::from_utf8(bytes)
            .map_err(|e| InvalidEvent::new(InvalidReason::NotJson, format!("not UTF-8: {e}")))?;
        let wire: WireEvent = serde_json::from_str(raw).map_err(|e| {
            let reason = if e.is_data() {
                InvalidReason::BadField
            } else {
                InvalidReason::NotJson
            };
            InvalidEvent::new(reason, format!("cannot decode event: {e}"))
        })?;

        let name = wire.name.ok_or_else(|| {
            InvalidEvent::new(InvalidReason::MissingName, "event has no \"name\"".into())
        })?;
        if name.is_empty() {
            return Err(InvalidEvent::new(
                InvalidReason::MissingName,
                "event \"name\" is empty".into(),
            ));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(InvalidEvent::new(
                InvalidReason::NameTooLong,
                format!(
                    "event name is {} bytes, the limit is {MAX_NAME_LEN}",
                    name.len()
                ),
            ));
        }
        if !name.bytes().all(|b| b.is_ascii() && !b.is_ascii_control()) {
            return Err(InvalidEvent::new(
                InvalidReason::BadName,
                format!("event name {name:?} has non-ASCII or control characters"),
            ));
        }
        let data = match wire.data {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            // Some ingests send structured data; keep its JSON text.
            Some(other) => other.to_string(),
        };
        if data.len() > MAX_DATA_LEN {
            return Err(InvalidEvent::new(
                InvalidReason::DataTooLarge,
                format!(
                    "event data is {} bytes, the limit is {MAX_DATA_LEN}",
                    data.len()
                ),
            ));
        }
        let published_at = match wire.published_at.as_deref() {
            None | Some("") => fallback_time,
            Some(s) => DateTime::parse_from_rfc3339(s)
                .map_err(|e| {
                    InvalidEvent::new(
                        InvalidReason::BadPublishedAt,
                        format!("published_at {s:?} is not an ISO-8601 time: {e}"),
                    )
                })?
                .with_timezone(&Utc),
        };
        let device_id = wire.coreid.unwrap_or_default();
        if device_id.is_empty() {
            return Err(InvalidEvent::new(
                InvalidReason::MissingDevice,
                "event has no \"coreid\"".into(),
            ));
        }
        let id = match wire.id {
            Some(id) if !id.is_empty() => id,
            _ => format!("{}/{}/{}", origin.topic, origin.partition, origin.offset),
        };
        Ok(DeviceEvent(Arc::new(EventInner {
            name,
            data,
            published_at: published_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            device_id,
            user_id: wire.userid.filter(|u| !u.is_empty()),
            product_id: wire.product_id.map(|n| n.0),
            version: wire.version.map(|n| n.0),
            id,
            raw: raw.to_owned(),
        })))
    }
}

/// The event as the events stream carries it. Unknown fields (`ttl`, `public`,
/// anything an ingest adds) are ignored: events come from outside and must not
/// be refused for carrying more than we need.
#[derive(Deserialize)]
struct WireEvent {
    name: Option<String>,
    data: Option<Value>,
    published_at: Option<String>,
    coreid: Option<String>,
    userid: Option<String>,
    #[serde(rename = "productID")]
    product_id: Option<LenientU32>,
    version: Option<LenientU32>,
    id: Option<String>,
}

/// A number that some producers send as a string (`"30301"`).
struct LenientU32(u32);

impl<'de> Deserialize<'de> for LenientU32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(LenientU32)
                .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a product number"))),
            Value::String(s) => s
                .trim()
                .parse()
                .map(LenientU32)
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a product number"))),
            other => Err(serde::de::Error::custom(format!(
                "{other} is not a product number"
            ))),
        }
    }
}

/// Why a record is not a usable event. The label set is closed, so the
/// `hookd_events_invalid_total{reason}` series stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    NotJson,
    BadField,
    MissingName,
    NameTooLong,
    BadName,
    DataTooLarge,
    BadPublishedAt,
    MissingDevice,
    /// The whole record is over `worker.max_event_bytes`.
    RecordTooLarge,
    /// Handling the event panicked (a bug); the worker went on.
    Panicked,
}

impl InvalidReason {
    pub const ALL: [InvalidReason; 10] = [
        InvalidReason::NotJson,
        InvalidReason::BadField,
        InvalidReason::MissingName,
        InvalidReason::NameTooLong,
        InvalidReason::BadName,
        InvalidReason::DataTooLarge,
        InvalidReason::BadPublishedAt,
        InvalidReason::MissingDevice,
        InvalidReason::RecordTooLarge,
        InvalidReason::Panicked,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            InvalidReason::NotJson => "not_json",
            InvalidReason::BadField => "bad_field",
            InvalidReason::MissingName => "missing_name",
            InvalidReason::NameTooLong => "name_too_long",
            InvalidReason::BadName => "bad_name",
            InvalidReason::DataTooLarge => "data_too_large",
            InvalidReason::BadPublishedAt => "bad_published_at",
            InvalidReason::MissingDevice => "missing_device",
            InvalidReason::RecordTooLarge => "record_too_large",
            InvalidReason::Panicked => "panic",
        }
    }
}

/// A record refused by [`DeviceEvent::decode`]; goes to the dead-letter topic.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct InvalidEvent {
    pub reason: InvalidReason,
    pub message: String,
}

impl InvalidEvent {
    fn new(reason: InvalidReason, message: String) -> Self {
        InvalidEvent { reason, message }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn origin() -> Origin {
        Origin {
            topic: "device-events".into(),
            partition: 2,
            offset: 41,
        }
    }

    fn decode(s: &str) -> Result<DeviceEvent, InvalidEvent> {
        DeviceEvent::decode(s.as_bytes(), &origin(), DateTime::UNIX_EPOCH)
    }

    #[test]
    fn decodes_the_particle_example() {
        let e = decode(r#"{"name":"temp","data":"21.5","published_at":"2024-05-13T10:55:40.306Z","coreid":"e00fce68","userid":"5977","productID":30301,"version":3,"ttl":60,"public":false}"#).unwrap();
        assert_eq!(e.name, "temp");
        assert_eq!(e.data, "21.5");
        assert_eq!(e.published_at, "2024-05-13T10:55:40.306Z");
        assert_eq!(e.device_id, "e00fce68");
        assert_eq!(e.user_id.as_deref(), Some("5977"));
        assert_eq!(e.product_id, Some(30301));
        assert_eq!(e.version, Some(3));
        assert_eq!(e.id, "device-events/2/41");
    }

    #[test]
    fn tolerates_the_variants_seen_on_the_wire() {
        let e = decode(r#"{"name":"t","data":null,"published_at":"2024-05-13T10:55:40Z","coreid":"d","userid":"","ttl":"60","productID":"17","id":"ev-1"}"#).unwrap();
        assert_eq!(e.data, "");
        assert_eq!(e.user_id, None, "empty userid means unclaimed");
        assert_eq!(e.product_id, Some(17));
        assert_eq!(e.version, None);
        assert_eq!(e.published_at, "2024-05-13T10:55:40.000Z");
        assert_eq!(e.id, "ev-1");
    }

    #[test]
    fn refuses_bad_records_with_a_reason() {
        let cases = [
            ("{not json", InvalidReason::NotJson),
            (r#"{"data":"x","coreid":"d"}"#, InvalidReason::MissingName),
            (r#"{"name":"","coreid":"d"}"#, InvalidReason::MissingName),
            (r#"{"name":7,"coreid":"d"}"#, InvalidReason::BadField),
            (
                r#"{"name":"t","coreid":"d","productID":"x"}"#,
                InvalidReason::BadField,
            ),
            (r#"{"name":"t"}"#, InvalidReason::MissingDevice),
            (
                r#"{"name":"t","coreid":"d","published_at":"yesterday"}"#,
                InvalidReason::BadPublishedAt,
            ),
            (r#"{"name":"tëmp","coreid":"d"}"#, InvalidReason::BadName),
        ];
        for (input, reason) in cases {
            let err = decode(input).unwrap_err();
            assert_eq!(err.reason, reason, "{input}: {err}");
        }
        let long = format!(r#"{{"name":"{}","coreid":"d"}}"#, "n".repeat(65));
        let err = decode(&long).unwrap_err();
        assert_eq!(err.reason, InvalidReason::NameTooLong);
        assert_eq!(err.message, "event name is 65 bytes, the limit is 64");
        let big = format!(
            r#"{{"name":"t","coreid":"d","data":"{}"}}"#,
            "x".repeat(16385)
        );
        assert_eq!(
            decode(&big).unwrap_err().reason,
            InvalidReason::DataTooLarge
        );
        let exact = format!(
            r#"{{"name":"{}","coreid":"d","data":"{}"}}"#,
            "n".repeat(64),
            "x".repeat(16384)
        );
        assert!(decode(&exact).is_ok(), "the limits themselves are allowed");
    }

    #[test]
    fn response_events_are_recognised() {
        for name in [
            "hook-sent/temp",
            "hook-response/temp/0",
            "hook-error/temp/0",
        ] {
            let e = decode(&format!(r#"{{"name":"{name}","coreid":"d"}}"#)).unwrap();
            assert!(e.is_response_event(), "{name}");
        }
        assert!(!decode(r#"{"name":"hook-sentinel","coreid":"d"}"#)
            .unwrap()
            .is_response_event());
    }

    proptest! {
        /// Whatever bytes arrive, decode answers without panicking.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = DeviceEvent::decode(&bytes, &origin(), DateTime::UNIX_EPOCH);
        }

        /// Any valid name and data round-trip unchanged.
        #[test]
        fn valid_events_round_trip(name in "[ -~]{1,64}", data in "\\PC{0,200}") {
            let json = serde_json::json!({"name": name, "data": data, "coreid": "dev"}).to_string();
            let e = DeviceEvent::decode(json.as_bytes(), &origin(), DateTime::UNIX_EPOCH).unwrap();
            prop_assert_eq!(&e.name, &name);
            prop_assert_eq!(&e.data, &data);
        }
    }
}
