//! Response events: what a device is told about its webhooks
//! (`docs/behaviour.md`, "Response events"), published to the responses
//! topic.
//!
//! In: the integration, the event's template context and the attempt's
//! outcome. Out: device events: `hook-sent/<event>` for each request sent,
//! the response body on `<responseTopic>/<n>` in 512-byte chunks (at most
//! 100 KB, `responseTemplate` applied to a JSON response; one event with
//! `unchunked`; a `data:` URL with `dataUrlResponseEvent`), or
//! `<errorResponseTopic>/0` with what went wrong. Their names never trigger
//! integrations; their device (`coreid`) is `particle-internal`, as
//! Particle's own are, and their Kafka key the device told.

use std::borrow::Cow;
use std::cell::RefCell;

use serde_json::Value;

use base64::Engine as _;

use crate::model::integration::{Integration, ResponseTemplate};
use crate::model::outcome::DeliveryError;
use crate::model::request::RenderFailure;
use crate::model::variables::EventContext;

/// Data of the error event of a skipped attempt.
pub const SLEEPING_MESSAGE: &str = "Sleeping, too many errors, please wait and try again";
/// Response bodies are published in chunks of this many bytes…
pub const CHUNK_BYTES: usize = 512;
/// …up to this many bytes in all.
pub const MAX_RESPONSE_BYTES: usize = 100 * 1024;
/// The device field of `hook-sent` events.
pub const INTERNAL_DEVICE: &str = "particle-internal";

/// One event for the responses topic; its data and device borrowed where
/// they are already text (the response body, the event), as it lives only
/// until it is handed to the producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseEvent<'a> {
    pub name: String,
    pub data: Cow<'a, str>,
    /// `coreid` of the event: the device told, or `particle-internal`.
    pub device: Cow<'a, str>,
}

impl ResponseEvent<'_> {
    /// Device-event JSON, as the events stream carries it.
    /// Written field by field (one per response event per webhook, so no
    /// JSON value is built).
    pub fn to_json(&self, ctx: &EventContext) -> Vec<u8> {
        let e = ctx.event();
        let user = e.user_id.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(
            128 + self.name.len() + self.data.len() + self.device.len() + user.len(),
        );
        with_published_now(|published| {
            for (n, (key, value)) in [
                ("name", self.name.as_str()),
                ("data", &self.data),
                ("published_at", published),
                ("coreid", &self.device),
                ("userid", user),
            ]
            .into_iter()
            .enumerate()
            {
                out.push(if n == 0 { b'{' } else { b',' });
                serde_json::to_writer(&mut out, key).expect("a string always serializes");
                out.push(b':');
                serde_json::to_writer(&mut out, value).expect("a string always serializes");
            }
        });
        out.extend_from_slice(b",\"ttl\":60,\"public\":false");
        if let Some(p) = e.product_id {
            out.extend_from_slice(b",\"productID\":");
            serde_json::to_writer(&mut out, &p).expect("a number always serializes");
        }
        out.push(b'}');
        out
    }
}

/// Calls `f` with the time now as `published_at` is written
/// (`2024-05-13T10:55:40.306Z`), formatted once per millisecond on each
/// thread: two response events per webhook would otherwise format it twice.
fn with_published_now<R>(f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static LAST: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis();
    LAST.with_borrow_mut(|(at, text)| {
        if *at != ms {
            *at = ms;
            *text = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
        f(text)
    })
}

/// `hook-sent/<event name>`, emitted for each request sent.
pub fn hook_sent(ctx: &EventContext) -> ResponseEvent<'static> {
    ResponseEvent {
        name: format!("hook-sent/{}", ctx.event().name),
        data: Cow::Borrowed("undefined"),
        device: Cow::Borrowed(INTERNAL_DEVICE),
    }
}

/// The media type of a data URL whose response had none.
pub const DEFAULT_MEDIA_TYPE: &str = "application/octet-stream";
/// The media type of a data URL carrying `responseTemplate`'s text.
pub const TEMPLATE_MEDIA_TYPE: &str = "text/plain;charset=utf-8";

/// The response body as `<responseTopic>/<n>` events: 512-byte chunks, or
/// one event when `unchunked`; none for an empty body. `content_type` is
/// the response's, for a data URL.
pub fn response_chunks<'a>(
    i: &Integration,
    ctx: &'a EventContext,
    body: &'a [u8],
    content_type: Option<&http::HeaderValue>,
) -> Result<Vec<ResponseEvent<'a>>, RenderFailure> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let topic = ctx.render_unbudgeted("responseTopic", &i.response_topic)?;
    let rendered = match &i.response_template {
        Some(t) => apply_template(t, ctx, body)?,
        None => None,
    };
    let text: Cow<'a, str> = match (rendered, i.response_format.data_url) {
        (Some(text), false) => Cow::Owned(text),
        (None, false) => String::from_utf8_lossy(body),
        // Masked before encoding, so a secret echoed in any form is found;
        // the URL is masked again below, for one the destination sent in
        // base64 itself.
        (Some(text), true) => Cow::Owned(data_url(
            TEMPLATE_MEDIA_TYPE,
            ctx.mask(Cow::Owned(text)).as_bytes(),
        )),
        (None, true) => Cow::Owned(data_url(
            content_type
                .and_then(|v| media_type(v.to_str().ok()?))
                .as_deref()
                .unwrap_or(DEFAULT_MEDIA_TYPE),
            &ctx.mask_bytes(body),
        )),
    };
    // No secret reaches the device, whether the topic was built from one
    // or the destination echoed one (raw, encoded, or inside a data URL's
    // base64).
    let topic = ctx.mask(Cow::Owned(topic)).into_owned();
    let text = ctx.mask(text);
    let event = |n: usize, data: Cow<'a, str>| ResponseEvent {
        name: format!("{topic}/{n}"),
        data,
        device: Cow::Borrowed(INTERNAL_DEVICE),
    };
    let size = if i.response_format.unchunked {
        MAX_RESPONSE_BYTES
    } else {
        CHUNK_BYTES
    };
    Ok(match text {
        // The body as it came: chunks borrow it.
        Cow::Borrowed(text) => chunks(truncate(text, MAX_RESPONSE_BYTES), size)
            .enumerate()
            .map(|(n, data)| event(n, Cow::Borrowed(data)))
            .collect(),
        Cow::Owned(text) => chunks(truncate(&text, MAX_RESPONSE_BYTES), size)
            .enumerate()
            .map(|(n, data)| event(n, Cow::Owned(data.to_owned())))
            .collect(),
    })
}

/// `responseTemplate` over a JSON response: an object's fields are its
/// variables, any other JSON value is `body`. `None` for a response that is
/// not JSON, published as it came.
fn apply_template(
    t: &ResponseTemplate,
    ctx: &EventContext,
    body: &[u8],
) -> Result<Option<String>, RenderFailure> {
    // The body is parsed only for a template to read.
    let fields = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => fields,
        Ok(other) => serde_json::Map::from_iter([("body".to_owned(), other)]),
        Err(_) => return Ok(None),
    };
    Ok(Some(match t {
        ResponseTemplate::Text(t) => ctx.render_with("responseTemplate", t, &fields)?,
        ResponseTemplate::Json(t) => {
            ctx.render_json_with("responseTemplate", t, &fields, MAX_RESPONSE_BYTES)?
        }
    }))
}

/// `data:<media type>;base64,<body>`, of at most [`MAX_RESPONSE_BYTES`]: a
/// longer body is cut to what fits whole, so the URL always decodes.
fn data_url(media_type: &str, body: &[u8]) -> String {
    let head = format!("data:{media_type};base64,");
    let room = MAX_RESPONSE_BYTES.saturating_sub(head.len()) / 4 * 3;
    let body = &body[..body.len().min(room)];
    let mut url = head;
    base64::engine::general_purpose::STANDARD.encode_string(body, &mut url);
    url
}

/// `<errorResponseTopic>/0` carrying `message`.
pub fn error_event<'a>(
    i: &Integration,
    ctx: &'a EventContext,
    message: String,
) -> ResponseEvent<'a> {
    let topic = ctx
        .render_unbudgeted("errorResponseTopic", &i.error_response_topic)
        .unwrap_or_else(|_| format!("hook-error/{}", ctx.event().name));
    ResponseEvent {
        name: ctx.mask(Cow::Owned(format!("{topic}/0"))).into_owned(),
        data: Cow::Owned(ctx.mask(Cow::Owned(message)).into_owned()),
        device: Cow::Borrowed(INTERNAL_DEVICE),
    }
}

/// `error status 404 from example.com`, `timed out after 20s from example.com`.
pub fn error_message(error: &DeliveryError, host: &str) -> String {
    format!("{error} from {host}")
}

/// Delivery reports of response events: a failure is logged, nothing waits.
pub struct ResponseReports;

impl rdkafka::ClientContext for ResponseReports {}

impl rdkafka::producer::ProducerContext for ResponseReports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            use rdkafka::Message as _;
            tracing::warn!(error = %e, topic = m.topic(), "response event not published");
        }
    }
}

/// A `Content-Type` value as a data URL may carry it: `type/subtype` and
/// its parameters, printable ASCII without spaces around separators, at most
/// 128 bytes; anything else (a destination's garbage) is dropped.
fn media_type(v: &str) -> Option<String> {
    let v: String = v
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(";");
    let (kind, rest) = v.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+=\"".contains(&b))
    };
    let subtype = rest.split(';').next().unwrap_or_default();
    let params_ok = rest
        .split(';')
        .skip(1)
        .all(|p| p.split_once('=').is_some_and(|(k, v)| token(k) && token(v)));
    (v.len() <= 128 && token(kind) && token(subtype) && params_ok).then_some(v)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Pieces of at most `size` bytes, never splitting a character (event data is
/// text).
fn chunks(mut s: &str, size: usize) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        if s.is_empty() {
            return None;
        }
        let piece = truncate(s, size);
        // A character longer than `size` cannot happen for size >= 4.
        s = &s[piece.len()..];
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::{DeviceEvent, Origin};
    use crate::model::variables::SecretMode;
    use serde_json::json;
    use std::sync::Arc;

    fn ctx() -> EventContext {
        let raw = json!({"name": "temp", "data": "21", "coreid": "e00fce68aaaaaaaaaaaaaaaa", "productID": 7, "userid": "u1"}).to_string();
        let origin = Origin {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        };
        let e = DeviceEvent::decode(raw.as_bytes(), &origin, chrono::DateTime::UNIX_EPOCH).unwrap();
        EventContext::new(e, Arc::default(), SecretMode::Reveal)
    }

    fn integration(extra: Value) -> Integration {
        let mut v =
            json!({"id": "i", "product_id": 7, "event": "temp", "url": "https://example.com/"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Integration::from_value(v).unwrap()
    }

    #[test]
    fn response_events_are_device_event_json() {
        let e = ResponseEvent {
            name: "r/0".into(),
            data: "say \"hi\"\n\u{e9}".into(),
            device: "e00fce68aaaaaaaaaaaaaaaa".into(),
        };
        let v: Value = serde_json::from_slice(&e.to_json(&ctx())).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "name",
                "data",
                "published_at",
                "coreid",
                "userid",
                "ttl",
                "public",
                "productID"
            ]
        );
        assert_eq!(v["data"], "say \"hi\"\n\u{e9}");
        assert_eq!(
            (&v["userid"], &v["ttl"], &v["public"], &v["productID"]),
            (&json!("u1"), &json!(60), &json!(false), &json!(7))
        );
        assert!(chrono::DateTime::parse_from_rfc3339(v["published_at"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn published_at_is_now_to_the_millisecond() {
        let before = chrono::Utc::now();
        let (first, second) = (
            with_published_now(str::to_owned),
            with_published_now(str::to_owned),
        );
        let after = chrono::Utc::now();
        for at in [&first, &second] {
            assert_eq!(at.len(), "2024-05-13T10:55:40.306Z".len(), "{at}");
            assert!(at.ends_with('Z'), "{at}");
            let t = chrono::DateTime::parse_from_rfc3339(at).unwrap();
            let ms = |d: chrono::DateTime<chrono::Utc>| d.timestamp_millis();
            assert!(
                (ms(before)..=ms(after)).contains(&t.timestamp_millis()),
                "{at}"
            );
        }
        assert!(first <= second);
    }

    #[test]
    fn hook_sent_names_the_event() {
        assert_eq!(
            hook_sent(&ctx()),
            ResponseEvent {
                name: "hook-sent/temp".into(),
                data: "undefined".into(),
                device: "particle-internal".into()
            }
        );
    }

    #[test]
    fn bodies_are_chunked_at_512_bytes_on_the_default_topics() {
        let ctx = ctx();
        let product = response_chunks(&integration(json!({})), &ctx, &[b'x'; 1100], None).unwrap();
        let names: Vec<_> = product.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "e00fce68aaaaaaaaaaaaaaaa/hook-response/temp/0",
                "e00fce68aaaaaaaaaaaaaaaa/hook-response/temp/1",
                "e00fce68aaaaaaaaaaaaaaaa/hook-response/temp/2"
            ]
        );
        assert_eq!(
            product.iter().map(|e| e.data.len()).collect::<Vec<_>>(),
            [512, 512, 76]
        );
        let sandbox = Integration::from_value(
            json!({"id": "s", "owner": "u1", "event": "temp", "url": "https://e.example/"}),
        )
        .unwrap();
        assert_eq!(
            response_chunks(&sandbox, &ctx, b"ok", None).unwrap()[0].name,
            "hook-response/temp/0"
        );
        assert!(response_chunks(&sandbox, &ctx, b"", None)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bodies_are_capped_at_100_kb() {
        let ctx = ctx();
        let body = vec![b'y'; 300 * 1024];
        let events = response_chunks(
            &integration(json!({"responseTopic": "r"})),
            &ctx,
            &body,
            None,
        )
        .unwrap();
        assert_eq!(events.len(), 200);
        assert_eq!(
            events.iter().map(|e| e.data.len()).sum::<usize>(),
            100 * 1024
        );
        assert_eq!(events.last().unwrap().name, "r/199");
    }

    #[test]
    fn chunks_never_split_a_character() {
        let ctx = ctx();
        let body = "é".repeat(600); // 1200 bytes
        let events = response_chunks(&integration(json!({})), &ctx, body.as_bytes(), None).unwrap();
        assert_eq!(
            events.iter().map(|e| e.data.len()).collect::<Vec<_>>(),
            [512, 512, 176]
        );
        assert_eq!(events.iter().map(|e| &*e.data).collect::<String>(), body);
    }

    #[test]
    fn response_template_applies_to_json_responses() {
        let ctx = ctx();
        let i = integration(
            json!({"responseTemplate": "{{{reading.value}}} for {{{PARTICLE_DEVICE_ID}}}", "responseTopic": "{{{PARTICLE_DEVICE_ID}}}/r"}),
        );
        let events = response_chunks(&i, &ctx, br#"{"reading": {"value": 42}}"#, None).unwrap();
        assert_eq!(
            events,
            [ResponseEvent {
                name: "e00fce68aaaaaaaaaaaaaaaa/r/0".into(),
                data: "42 for e00fce68aaaaaaaaaaaaaaaa".into(),
                device: "particle-internal".into()
            }]
        );
        let verbatim = response_chunks(&i, &ctx, b"not json", None).unwrap();
        assert_eq!(verbatim[0].data, "not json");
    }

    #[test]
    fn errors_and_sleeping() {
        let ctx = ctx();
        let i = integration(json!({}));
        let e = error_event(
            &i,
            &ctx,
            error_message(&DeliveryError::Status(404), "example.com"),
        );
        assert_eq!(
            (e.name.as_str(), &*e.data),
            ("hook-error/temp/0", "error status 404 from example.com")
        );
        let custom = integration(json!({"errorResponseTopic": "{{{PARTICLE_DEVICE_ID}}}/oops"}));
        let e = error_event(&custom, &ctx, SLEEPING_MESSAGE.into());
        assert_eq!(
            (e.name.as_str(), &*e.data),
            (
                "e00fce68aaaaaaaaaaaaaaaa/oops/0",
                "Sleeping, too many errors, please wait and try again"
            )
        );
    }

    #[test]
    fn unchunked_responses_are_one_event_of_up_to_100_kb() {
        let ctx = ctx();
        let i = integration(json!({"unchunked": true, "responseTopic": "r"}));
        let body = format!("{{\"v\":\"{}\"}}", "z".repeat(3000));
        let events = response_chunks(&i, &ctx, body.as_bytes(), None).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].name.as_str(), &*events[0].data),
            ("r/0", body.as_str())
        );
        let big = vec![b'y'; 300 * 1024];
        let events = response_chunks(&i, &ctx, &big, None).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.len(), MAX_RESPONSE_BYTES);
    }

    #[test]
    fn data_url_responses_carry_the_bytes_and_their_media_type() {
        let ctx = ctx();
        let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let i = integration(json!({"dataUrlResponseEvent": true, "unchunked": true}));
        let decode = |url: &str, media: &str| -> Vec<u8> {
            let rest = url
                .strip_prefix(&format!("data:{media};base64,"))
                .unwrap_or_else(|| panic!("{url}"));
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .unwrap()
        };
        let events = response_chunks(
            &i,
            &ctx,
            &binary,
            Some(&http::HeaderValue::from_static("image/png")),
        )
        .unwrap();
        assert_eq!(decode(&events[0].data, "image/png"), binary);
        let events = response_chunks(&i, &ctx, &binary, None).unwrap();
        assert_eq!(decode(&events[0].data, DEFAULT_MEDIA_TYPE), binary);
        // Chunked, the URL is cut at 512 bytes like any text.
        let chunked = integration(json!({"dataUrlResponseEvent": true}));
        let events = response_chunks(&chunked, &ctx, &binary, None).unwrap();
        assert!(events.len() > 1 && events[0].data.len() == CHUNK_BYTES);
        let whole: String = events.iter().map(|e| &*e.data).collect();
        assert_eq!(decode(&whole, DEFAULT_MEDIA_TYPE), binary);
        // A body too large for 100 KB of URL is cut so that it still decodes.
        let huge = vec![7u8; 100 * 1024];
        let events = response_chunks(&i, &ctx, &huge, None).unwrap();
        assert!(events[0].data.len() <= MAX_RESPONSE_BYTES);
        let got = decode(&events[0].data, DEFAULT_MEDIA_TYPE);
        assert!(got.len() > 70 * 1024 && huge.starts_with(&got));
    }

    #[test]
    fn response_templates_may_be_json_objects() {
        let ctx = ctx();
        let i = integration(json!({"responseTemplate": {
            "lat": "{{{results.0.location.lat}}}",
            "device": "{{{PARTICLE_DEVICE_ID}}}",
            "fixed": 3
        }}));
        let events = response_chunks(
            &i,
            &ctx,
            br#"{"results": [{"location": {"lat": 51.5, "lng": -0.1}}]}"#,
            None,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(
            v,
            json!({"lat": "51.5", "device": "e00fce68aaaaaaaaaaaaaaaa", "fixed": 3})
        );
        for bad in [json!(5), json!(true)] {
            let mut v =
                json!({"id": "i", "product_id": 7, "event": "temp", "url": "https://example.com/"});
            v["responseTemplate"] = bad;
            let e = Integration::from_value(v).unwrap_err();
            assert_eq!(e.field, "responseTemplate", "{e}");
        }
    }

    #[test]
    fn a_secret_echoed_in_a_data_url_is_masked() {
        let raw = json!({"name": "temp", "data": "21", "coreid": "e00fce68aaaaaaaaaaaaaaaa", "productID": 7}).to_string();
        let origin = Origin {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        };
        let e = DeviceEvent::decode(raw.as_bytes(), &origin, chrono::DateTime::UNIX_EPOCH).unwrap();
        let secret = "hunter2-very-secret";
        let secrets = Arc::new(std::collections::BTreeMap::from([(
            "KEY".to_owned(),
            secret.to_owned(),
        )]));
        let ctx = EventContext::new(e, secrets, SecretMode::Reveal);
        let i = integration(json!({"dataUrlResponseEvent": true, "unchunked": true}));
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("u:{secret}"));
        for echoed in [
            secret.to_owned(),
            format!("a{secret}"),
            format!("ab{secret}"),
            encoded,
            b64,
        ] {
            let mut body = format!("echo {echoed} and more").into_bytes();
            body.extend_from_slice(&[0xff, 0xfe, 0]); // not text
            let events = response_chunks(
                &i,
                &ctx,
                &body,
                Some(&http::HeaderValue::from_static("text/plain")),
            )
            .unwrap();
            let url = &events[0].data;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(url.trim_start_matches("data:text/plain;base64,"))
                .unwrap();
            let decoded = String::from_utf8_lossy(&decoded);
            assert!(
                decoded.contains(crate::model::secrets::SENSITIVE) && !decoded.contains(secret),
                "{echoed:?}: {decoded}"
            );
            // What is left of the base64, read at every alignment, holds
            // no secret.
            let b64 = url.trim_start_matches("data:text/plain;base64,");
            for piece in b64.split(crate::model::secrets::SENSITIVE) {
                for start in 0..4.min(piece.len()) {
                    let s = &piece[start..];
                    if let Ok(b) =
                        base64::engine::general_purpose::STANDARD.decode(&s[..s.len() / 4 * 4])
                    {
                        assert!(!String::from_utf8_lossy(&b).contains(secret), "{url}");
                    }
                }
            }
        }
    }
}
