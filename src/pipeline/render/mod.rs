//! Render: an integration and an event become the HTTP request to send.
//!
//! In: a resolved [`Integration`] and the [`EventContext`] of one event (built
//! once per event, shared by every integration it fans out to). Out: a
//! [`RenderedRequest`] with the complete URL, every header that will be sent
//! and the body, or a [`RenderFailure`] saying which field failed and why; a
//! failure is an error outcome of that delivery, never a panic.
//!
//! Secrets: the context either reveals secrets (what is sent) or shows them as
//! `[[SENSITIVE]]` (what is displayed: the `render` command, logs, the delivery
//! log), so displayed requests never contain a secret's value.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::model::event::DeviceEvent;
use crate::model::integration::{BodyTemplate, Integration, JsonTemplate, Method, RequestTemplate};
use crate::model::secrets::{mask_forms, secret_forms, Secrets, SENSITIVE};
use crate::template::{Budget, Found, RenderError, Scope, Template, TemplateLimits};

/// `User-Agent` of every request: hookd and its version.
pub const USER_AGENT: &str = concat!("hookd/", env!("CARGO_PKG_VERSION"));

/// Header carrying the idempotency key; identical when an event is redelivered.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// The host of a rendered URL, without credentials or port: the key of the
/// per-host rate limit and the sleeping-host rating. Rendered URLs are
/// already normalised by `url` (at load for literal URLs, at render for
/// templated ones), so slicing the string is enough; no second parse per
/// request.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    host_port.split(':').next().unwrap_or("")
}

/// Whether secrets render as their values (to send) or masked (to show).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMode {
    Reveal,
    Mask,
}

/// The template variables of one event, looked up by name as templates ask
/// for them ([`Scope`]); the event data's JSON is parsed on first use.
pub struct EventContext {
    event: DeviceEvent,
    secrets: Secrets,
    mode: SecretMode,
    /// Whether `PARTICLE_EVENT_JSON` and `PARTICLE_EVENT_BASE64` are
    /// variables: a copy and a base64 of the whole record per event, which
    /// few templates use.
    whole_event: bool,
    /// The fields of JSON event data (none when the data is not an object).
    data: OnceLock<DataFields>,
    /// What every render from this context spends together: one event's
    /// templates cannot multiply the per-template bounds.
    budget: Budget,
    /// Each secret value as it may appear in text the device or a person
    /// sees: raw, base64 and form-encoded; made on first use.
    masks: OnceLock<Vec<String>>,
}

/// The predefined variables (README, "Integrations": variables).
const PREDEFINED: [&str; 12] = [
    "PARTICLE_DEVICE_ID",
    "PARTICLE_EVENT_NAME",
    "PARTICLE_EVENT_VALUE",
    "SPARK_EVENT_VALUE",
    "PARTICLE_PUBLISHED_AT",
    "SPARK_PUBLISHED_AT",
    "PARTICLE_EVENT_ID",
    "PRODUCT_ID",
    "PRODUCT_USER_ID",
    "PRODUCT_VERSION",
    "PARTICLE_EVENT_JSON",
    "PARTICLE_EVENT_BASE64",
];

impl EventContext {
    pub fn new(event: DeviceEvent, secrets: Secrets, mode: SecretMode) -> EventContext {
        EventContext {
            event,
            secrets,
            mode,
            whole_event: true,
            data: OnceLock::new(),
            budget: Budget::new(&TemplateLimits::default()),
            masks: OnceLock::new(),
        }
    }

    /// `text` with every secret value this context reveals replaced by
    /// `[[SENSITIVE]]`: raw, base64-encoded or form-encoded (a destination
    /// echoing a key, an error quoting a host built from one). Values under
    /// 4 bytes are left alone: they would mask innocent text.
    pub fn mask<'t>(&self, text: Cow<'t, str>) -> Cow<'t, str> {
        if self.mode == SecretMode::Mask || self.secrets.is_empty() {
            return text;
        }
        let forms = self.masks.get_or_init(|| secret_forms(&self.secrets));
        mask_forms(text, forms)
    }

    /// [`EventContext::mask`] over bytes that need not be text (a binary
    /// response about to become a data URL).
    pub fn mask_bytes<'t>(&self, bytes: &'t [u8]) -> Cow<'t, [u8]> {
        if self.mode == SecretMode::Mask || self.secrets.is_empty() {
            return Cow::Borrowed(bytes);
        }
        let forms = self.masks.get_or_init(|| secret_forms(&self.secrets));
        let mut out = Cow::Borrowed(bytes);
        for form in forms {
            let form = form.as_bytes();
            if !out.windows(form.len()).any(|w| w == form) {
                continue;
            }
            let mut replaced = Vec::with_capacity(out.len());
            let mut rest: &[u8] = &out;
            while let Some(at) = rest.windows(form.len()).position(|w| w == form) {
                replaced.extend_from_slice(&rest[..at]);
                replaced.extend_from_slice(SENSITIVE.as_bytes());
                rest = &rest[at + form.len()..];
            }
            replaced.extend_from_slice(rest);
            out = Cow::Owned(replaced);
        }
        out
    }

    /// The event-wide render bounds of `limits` (`max_event_*`) instead of
    /// the defaults.
    pub fn with_limits(mut self, limits: &TemplateLimits) -> EventContext {
        self.budget = Budget::new(limits);
        self
    }

    /// For integrations none of which names the whole-event variables
    /// ([`Integration::uses_whole_event`]).
    pub fn without_whole_event(mut self) -> EventContext {
        self.whole_event = false;
        self
    }

    pub fn event(&self) -> &DeviceEvent {
        &self.event
    }

    fn data(&self) -> &DataFields {
        self.data
            .get_or_init(|| DataFields::parse(&self.event.data))
    }

    /// A predefined variable's value.
    fn predefined(&self, name: &str) -> Option<Cow<'_, str>> {
        let e = &self.event;
        let text = match name {
            "PARTICLE_DEVICE_ID" => &e.device_id,
            "PARTICLE_EVENT_NAME" => &e.name,
            "PARTICLE_EVENT_VALUE" | "SPARK_EVENT_VALUE" => &e.data,
            "PARTICLE_PUBLISHED_AT" | "SPARK_PUBLISHED_AT" => &e.published_at,
            "PARTICLE_EVENT_ID" => &e.id,
            "PRODUCT_ID" => {
                return Some(
                    e.product_id
                        .map(|p| p.to_string())
                        .unwrap_or_default()
                        .into(),
                )
            }
            "PRODUCT_USER_ID" => e.user_id.as_deref().unwrap_or(""),
            "PRODUCT_VERSION" => {
                return Some(e.version.map(|v| v.to_string()).unwrap_or_default().into())
            }
            "PARTICLE_EVENT_JSON" if self.whole_event => &e.raw,
            "PARTICLE_EVENT_BASE64" if self.whole_event => {
                return Some(
                    base64::engine::general_purpose::STANDARD
                        .encode(&e.raw)
                        .into(),
                )
            }
            _ => return None,
        };
        Some(Cow::Borrowed(text))
    }

    /// Every variable, as one JSON object. Precedence, lowest first: the keys
    /// of JSON event data, then secrets, then the predefined variables, so a
    /// device can never replace a secret or a predefined value.
    pub fn variables(&self) -> Map<String, Value> {
        let mut vars = self.data().to_map(&self.event.data);
        for (name, value) in self.secrets.iter() {
            vars.insert(name.clone(), Value::String(self.shown(value).to_owned()));
        }
        for name in PREDEFINED {
            if let Some(v) = self.predefined(name) {
                vars.insert(name.to_owned(), Value::String(v.into_owned()));
            }
        }
        vars
    }

    /// Renders `t` with the event's variables overlaid by `extra` (the keys of
    /// a JSON response, for `responseTemplate`).
    pub fn render_with(
        &self,
        field: &str,
        t: &Template,
        extra: &Map<String, Value>,
    ) -> Result<String, RenderFailure> {
        let scope = Overlay { extra, base: self };
        t.render(&scope).map_err(|e| RenderFailure::of(field, e))
    }

    /// Renders a JSON template over the event and `extra` (the fields of a
    /// JSON response) to JSON text of at most `max` bytes: its strings
    /// together, and the text they make, stop at that bound.
    pub fn render_json_with(
        &self,
        field: &str,
        t: &JsonTemplate,
        extra: &Map<String, Value>,
        max: usize,
    ) -> Result<String, RenderFailure> {
        let too_large = || RenderFailure::of(field, RenderError::OutputTooLarge { max });
        let total = std::cell::Cell::new(0usize);
        let value = json_value(t, &|s| {
            let text = self.render_with(field, s, extra)?;
            total.set(total.get() + text.len());
            if total.get() > max {
                return Err(too_large());
            }
            Ok(text)
        })?;
        let text = value.to_string();
        if text.len() > max {
            return Err(too_large());
        }
        Ok(text)
    }

    /// Renders `t` outside the event's budget (its own bounds still hold):
    /// for the response and error topics, small, which must render even when
    /// the request's templates used the budget up.
    pub fn render_unbudgeted(&self, field: &str, t: &Template) -> Result<String, RenderFailure> {
        t.render(&Unbudgeted(self))
            .map_err(|e| RenderFailure::of(field, e))
    }

    /// A secret's value as this context shows it.
    fn shown<'a>(&self, value: &'a str) -> &'a str {
        match self.mode {
            SecretMode::Reveal => value,
            SecretMode::Mask => SENSITIVE,
        }
    }

    /// Whether this context was made with exactly `secrets` (the same map).
    pub fn shares_secrets(&self, secrets: &Secrets) -> bool {
        Arc::ptr_eq(&self.secrets, secrets)
    }

    /// The secret named `name`, if configured (for signing keys).
    pub fn secret(&self, name: &str) -> Option<&str> {
        self.secrets.get(name).map(String::as_str)
    }

    pub(crate) fn render(&self, field: &str, t: &Template) -> Result<String, RenderFailure> {
        t.render(self).map_err(|e| RenderFailure::of(field, e))
    }
}

/// An event's variables without its budget.
struct Unbudgeted<'a>(&'a EventContext);

impl Scope for Unbudgeted<'_> {
    fn lookup(&self, name: &str) -> Option<Found<'_>> {
        self.0.lookup(name)
    }
}

impl Scope for EventContext {
    fn lookup(&self, name: &str) -> Option<Found<'_>> {
        if let Some(v) = self.predefined(name) {
            return Some(Found::Text(v));
        }
        if let Some(v) = self.secrets.get(name) {
            return Some(Found::Text(Cow::Borrowed(self.shown(v))));
        }
        self.data().get(&self.event.data, name).map(Found::Json)
    }

    fn budget(&self) -> Option<&Budget> {
        Some(&self.budget)
    }
}

/// The top-level fields of JSON event data, each value parsed on its first
/// lookup: templates name a few fields of data that often carries many.
enum DataFields {
    /// Where each key and value is in the data text.
    Lazy(Vec<LazyField>),
    /// Keys written with escapes: parsed whole.
    Parsed(Map<String, Value>),
}

struct LazyField {
    key: Range<usize>,
    value: Range<usize>,
    /// `None` for a value serde_json refuses though it is well formed (a
    /// number beyond f64): that field is left out, the others stay.
    parsed: OnceLock<Option<Value>>,
}

impl DataFields {
    fn parse(data: &str) -> DataFields {
        if !data.trim_start().starts_with('{') {
            return DataFields::Parsed(Map::new());
        }
        match serde_json::from_str::<Spans<'_>>(data) {
            Ok(Spans(spans)) => {
                let at = |s: &str| {
                    let start = s.as_ptr() as usize - data.as_ptr() as usize;
                    start..start + s.len()
                };
                DataFields::Lazy(
                    spans
                        .into_iter()
                        .map(|(k, v)| LazyField {
                            key: at(k),
                            value: at(v.get()),
                            parsed: OnceLock::new(),
                        })
                        .collect(),
                )
            }
            Err(_) => DataFields::Parsed(match serde_json::from_str::<Value>(data) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            }),
        }
    }

    /// The value of `name`; the last one when a key repeats, as a parsed
    /// object keeps it.
    fn get<'a>(&'a self, data: &str, name: &str) -> Option<&'a Value> {
        match self {
            DataFields::Parsed(map) => map.get(name),
            DataFields::Lazy(fields) => {
                let f = fields.iter().rev().find(|f| &data[f.key.clone()] == name)?;
                f.value(data)
            }
        }
    }

    /// Every field, as one object (what [`EventContext::variables`] lists).
    fn to_map(&self, data: &str) -> Map<String, Value> {
        match self {
            DataFields::Parsed(map) => map.clone(),
            DataFields::Lazy(fields) => fields
                .iter()
                .filter_map(|f| Some((data[f.key.clone()].to_owned(), f.value(data)?.clone())))
                .collect(),
        }
    }
}

impl LazyField {
    fn value(&self, data: &str) -> Option<&Value> {
        self.parsed
            .get_or_init(|| serde_json::from_str(&data[self.value.clone()]).ok())
            .as_ref()
    }
}

/// A JSON object's keys (without escapes) and raw values, borrowed from the
/// text.
struct Spans<'a>(Vec<(&'a str, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Spans<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Spans<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Spans<'de>, M::Error> {
                let mut spans = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some(entry) = m.next_entry()? {
                    spans.push(entry);
                }
                Ok(Spans(spans))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// An event's variables overlaid by the keys of a JSON response.
struct Overlay<'a> {
    extra: &'a Map<String, Value>,
    base: &'a EventContext,
}

impl Scope for Overlay<'_> {
    fn lookup(&self, name: &str) -> Option<Found<'_>> {
        match self.extra.get(name) {
            Some(v) => Some(Found::Json(v)),
            None => self.base.lookup(name),
        }
    }

    fn budget(&self) -> Option<&Budget> {
        Some(&self.base.budget)
    }
}

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
    fn of(field: &str, e: RenderError) -> RenderFailure {
        let (field, message) = (field.to_owned(), e.to_string());
        match e {
            RenderError::EventOutputTooLarge { .. } | RenderError::EventTooManySteps { .. } => {
                RenderFailure::EventBudget { field, message }
            }
            _ => RenderFailure::Template { field, message },
        }
    }
}

/// Renders `integration`'s request for the event in `ctx`.
pub fn render(
    integration: &Integration,
    ctx: &EventContext,
) -> Result<RenderedRequest, RenderFailure> {
    let req = &integration.request;
    let event = ctx.event();
    let defaults = default_fields(event);
    let with_defaults = !req.no_defaults;
    let mut headers: Vec<(String, String)> = Vec::with_capacity(4 + req.headers.len());
    let mut query: Vec<(String, String)> = render_pairs(ctx, "query", &req.query)?;
    let is_get = req.method == Method::Get;
    if is_get && with_defaults {
        query.extend(defaults.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    }

    let body: Bytes = match &req.body {
        BodyTemplate::Defaults if is_get || !with_defaults => Bytes::new(),
        BodyTemplate::Defaults => {
            headers.push((
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
            encode_form(defaults.iter().map(|(k, v)| (*k, *v))).into()
        }
        BodyTemplate::Form(pairs) => {
            let mut pairs = render_pairs(ctx, "form", pairs)?;
            if is_get {
                query.append(&mut pairs);
                Bytes::new()
            } else {
                if with_defaults {
                    for (k, v) in defaults {
                        if !pairs.iter().any(|(pk, _)| pk == k) {
                            pairs.push((k.to_owned(), v.to_owned()));
                        }
                    }
                }
                headers.push((
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded".into(),
                ));
                encode_form(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).into()
            }
        }
        BodyTemplate::Json(t) if literal_keys(t) => {
            headers.push(("Content-Type".into(), "application/json".into()));
            let mut out = Vec::with_capacity(256);
            write_json_body(ctx, t, with_defaults && !is_get, &defaults, &mut out)?;
            out.into()
        }
        BodyTemplate::Json(t) => {
            let mut value = render_json(ctx, "json", t)?;
            json_body(
                &mut value,
                with_defaults && !is_get,
                &defaults,
                &mut headers,
            )
        }
        BodyTemplate::JsonText(t) => {
            let text = ctx.render("json", t)?;
            let mut value: Value =
                serde_json::from_str(&text).map_err(|e| RenderFailure::JsonText(e.to_string()))?;
            json_body(
                &mut value,
                with_defaults && !is_get,
                &defaults,
                &mut headers,
            )
        }
        BodyTemplate::Raw(t) => ctx.render("body", t)?.into(),
    };

    let url = build_url(req, ctx.render("url", &req.url)?, &query)?;

    if let Some((user, pass)) = &req.auth {
        let user = ctx.render("auth.username", user)?;
        let pass = ctx.render("auth.password", pass)?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        headers.push(("Authorization".into(), format!("Basic {token}")));
    }
    for (n, (name_template, value)) in req.headers.iter().enumerate() {
        // Errors name the header as configured, never as rendered: a name
        // built from a secret would otherwise carry it into logs, dead
        // letters and the device's error event.
        let label = match name_template {
            Template::Literal(s) => s.clone(),
            _ => format!("#{} (a templated name)", n + 1),
        };
        let name = ctx.render("headers", name_template)?;
        let value = ctx.render("headers", value).map_err(|e| match e {
            RenderFailure::Template { message, .. } => RenderFailure::Template {
                field: format!("headers.{label}"),
                message,
            },
            other => other,
        })?;
        if http::HeaderName::try_from(name.as_str()).is_err()
            || http::HeaderValue::try_from(value.as_str()).is_err()
        {
            return Err(RenderFailure::Header(label));
        }
        // A configured header replaces a generated one of the same name.
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        headers.push((name, value));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
    {
        headers.push(("User-Agent".into(), USER_AGENT.into()));
    }
    headers.push((
        IDEMPOTENCY_HEADER.into(),
        idempotency_key(&event.id, &integration.id),
    ));
    Ok(RenderedRequest {
        method: req.method,
        url,
        headers,
        body,
    })
}

/// The four fields Particle adds to a body unless `noDefaults`.
fn default_fields(event: &DeviceEvent) -> [(&'static str, &str); 4] {
    [
        ("event", &event.name),
        ("data", &event.data),
        ("published_at", &event.published_at),
        ("coreid", &event.device_id),
    ]
}

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
    let digest = h.digest128().to_be_bytes();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = String::with_capacity(32);
    for b in digest {
        key.push(HEX[(b >> 4) as usize] as char);
        key.push(HEX[(b & 0xf) as usize] as char);
    }
    key
}

fn json_body(
    value: &mut Value,
    add_defaults: bool,
    defaults: &[(&str, &str); 4],
    headers: &mut Vec<(String, String)>,
) -> Bytes {
    if add_defaults {
        if let Value::Object(map) = value {
            for (k, v) in defaults {
                if !map.contains_key(*k) {
                    map.insert((*k).to_owned(), Value::String((*v).to_owned()));
                }
            }
        }
    }
    headers.push(("Content-Type".into(), "application/json".into()));
    serde_json::to_vec(value)
        .expect("a JSON value always serializes")
        .into()
}

fn render_pairs(
    ctx: &EventContext,
    field: &str,
    pairs: &[(Template, Template)],
) -> Result<Vec<(String, String)>, RenderFailure> {
    pairs
        .iter()
        .map(|(k, v)| Ok((ctx.render(field, k)?, ctx.render(field, v)?)))
        .collect()
}

/// Whether every object key in `t` is plain text. Then the keys are those of
/// the configured JSON object, so unique, and the body can be written
/// straight out; templated keys may render equal, and go through a
/// [`Value`] (where the later one wins).
fn literal_keys(t: &JsonTemplate) -> bool {
    match t {
        JsonTemplate::Object(entries) => entries
            .iter()
            .all(|(k, v)| k.is_literal() && literal_keys(v)),
        JsonTemplate::Array(items) => items.iter().all(literal_keys),
        JsonTemplate::Str(_) | JsonTemplate::Other(_) => true,
    }
}

/// The JSON body, written as it renders: the same bytes as rendering a
/// [`Value`] and serializing it, without building the value.
fn write_json_body(
    ctx: &EventContext,
    t: &JsonTemplate,
    add_defaults: bool,
    defaults: &[(&str, &str); 4],
    out: &mut Vec<u8>,
) -> Result<(), RenderFailure> {
    let JsonTemplate::Object(entries) = t else {
        return write_json(ctx, t, out);
    };
    out.push(b'{');
    write_entries(ctx, entries, out)?;
    if add_defaults {
        let mut first = entries.is_empty();
        for (k, v) in defaults {
            if entries.iter().any(|(key, _)| literal_text(key) == *k) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_str(out, k);
            out.push(b':');
            write_str(out, v);
        }
    }
    out.push(b'}');
    Ok(())
}

fn write_json(
    ctx: &EventContext,
    t: &JsonTemplate,
    out: &mut Vec<u8>,
) -> Result<(), RenderFailure> {
    match t {
        JsonTemplate::Str(Template::Literal(s)) => write_str(out, s),
        JsonTemplate::Str(s) => write_str(out, &ctx.render("json", s)?),
        JsonTemplate::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_json(ctx, item, out)?;
            }
            out.push(b']');
        }
        JsonTemplate::Object(entries) => {
            out.push(b'{');
            write_entries(ctx, entries, out)?;
            out.push(b'}');
        }
        JsonTemplate::Other(v) => {
            serde_json::to_writer(&mut *out, v).expect("a JSON value always serializes")
        }
    }
    Ok(())
}

fn write_entries(
    ctx: &EventContext,
    entries: &[(Template, JsonTemplate)],
    out: &mut Vec<u8>,
) -> Result<(), RenderFailure> {
    for (n, (k, v)) in entries.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_str(out, literal_text(k));
        out.push(b':');
        write_json(ctx, v, out)?;
    }
    Ok(())
}

/// The text of a literal template (keys, after [`literal_keys`]).
fn literal_text(t: &Template) -> &str {
    match t {
        Template::Literal(s) => s,
        _ => "",
    }
}

/// `s` as a JSON string, quoted and escaped.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("a string always serializes");
}

fn render_json(ctx: &EventContext, field: &str, t: &JsonTemplate) -> Result<Value, RenderFailure> {
    json_value(t, &|s| ctx.render(field, s))
}

/// `t` as a JSON value, each template rendered by `render`.
fn json_value(
    t: &JsonTemplate,
    render: &dyn Fn(&Template) -> Result<String, RenderFailure>,
) -> Result<Value, RenderFailure> {
    Ok(match t {
        JsonTemplate::Str(s) => Value::String(render(s)?),
        JsonTemplate::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| json_value(i, render))
                .collect::<Result<_, _>>()?,
        ),
        JsonTemplate::Object(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| Ok((render(k)?, json_value(v, render)?)))
                .collect::<Result<_, RenderFailure>>()?,
        ),
        JsonTemplate::Other(v) => v.clone(),
    })
}

/// `application/x-www-form-urlencoded`, as form_urlencoded serialises it
/// (unreserved bytes kept, space as `+`, the rest `%XX`), into one buffer
/// sized up front.
fn encode_form<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> String {
    let room: usize = pairs
        .clone()
        .map(|(k, v)| 3 * (k.len() + v.len()) + 2)
        .sum();
    let mut out = String::with_capacity(room);
    for (i, (k, v)) in pairs.enumerate() {
        if i > 0 {
            out.push('&');
        }
        form_encode_into(&mut out, k);
        out.push('=');
        form_encode_into(&mut out, v);
    }
    out
}

fn form_encode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
        }
    }
}

fn build_url(
    req: &RequestTemplate,
    rendered: String,
    query: &[(String, String)],
) -> Result<String, RenderFailure> {
    // A literal URL was parsed and checked when the integration was loaded;
    // so was the start of a templated one, and plain path characters after
    // it are what parsing would give back.
    if query.is_empty()
        && (req.url.is_literal()
            || (req.url_prefix > 0 && plain_path_after(&rendered, req.url_prefix)))
    {
        return Ok(rendered);
    }
    let rendered = rendered.as_str();
    let mut url =
        url::Url::parse(rendered.trim()).map_err(|e| RenderFailure::Url(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        // The scheme is not quoted: it may come from a variable.
        return Err(RenderFailure::Url(
            "the scheme is not http or https, or there is no host".to_owned(),
        ));
    }
    if !query.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in query {
            q.append_pair(k, v);
        }
    }
    Ok(url.into())
}

/// Whether `url` after its checked start (`prefix` bytes) holds only
/// characters a URL parser keeps as they are in a path (letters, digits,
/// `-._~/`) and no `.` or `..` segment, which it would resolve.
fn plain_path_after(url: &str, prefix: usize) -> bool {
    let Some(rest) = url.get(prefix..) else {
        return false;
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/');
    if !rest.bytes().all(plain) {
        return false;
    }
    // Segments that cross from the start into the rest count too.
    let from = url[..prefix].rfind('/').unwrap_or(prefix);
    url[from..].split('/').all(|s| s != "." && s != "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::Origin;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn event(data: &str) -> DeviceEvent {
        let raw = json!({"name": "temperature/basement", "data": data, "published_at": "2016-04-16T13:37:08.728Z",
            "coreid": "e00fce68aaaaaaaaaaaaaaaa", "userid": "u1", "productID": 30301, "version": 3});
        DeviceEvent::decode(
            raw.to_string().as_bytes(),
            &Origin {
                topic: "device-events".into(),
                partition: 0,
                offset: 7,
            },
            chrono::DateTime::UNIX_EPOCH,
        )
        .unwrap()
    }

    fn secrets() -> Secrets {
        Arc::new(BTreeMap::from([(
            "API_KEY".to_owned(),
            "s3cr3t".to_owned(),
        )]))
    }

    /// Templates look variables up one by one; [`EventContext::variables`]
    /// lists them all as one object. Both must show the same values,
    /// precedence included.
    #[test]
    fn looked_up_variables_equal_the_built_context() {
        let data = r#"{"PARTICLE_DEVICE_ID":"spoof","API_KEY":"spoof","t":21.5,"ok":true,"nested":{"a":[1,"x&y"]}}"#;
        let mut names: Vec<String> = PREDEFINED.iter().map(|n| n.to_string()).collect();
        names.extend(
            [
                "API_KEY",
                "t",
                "ok",
                "nested.a.1",
                "nested.a",
                "missing",
                "t.x",
            ]
            .map(String::from),
        );
        for mode in [SecretMode::Reveal, SecretMode::Mask] {
            for whole in [true, false] {
                let mut ctx = EventContext::new(event(data), secrets(), mode);
                if !whole {
                    ctx = ctx.without_whole_event();
                }
                for name in &names {
                    for source in [format!("{{{{{{{name}}}}}}}"), format!("<{{{{{name}}}}}>")] {
                        let t = Template::compile(&source).unwrap();
                        let direct = t.render(&ctx).unwrap();
                        let built = t.render(&ctx.variables()).unwrap();
                        assert_eq!(direct, built, "{source}, {mode:?}, whole event {whole}");
                    }
                }
                let value = |n: &str| Template::compile(n).unwrap().render(&ctx).unwrap();
                assert_eq!(
                    value("{{{PARTICLE_DEVICE_ID}}}"),
                    "e00fce68aaaaaaaaaaaaaaaa"
                );
                let key = if mode == SecretMode::Reveal {
                    "s3cr3t"
                } else {
                    SENSITIVE
                };
                assert_eq!(value("{{{API_KEY}}}"), key);
                assert_eq!(value("{{{nested.a.1}}}"), "x&y");
                assert_eq!(value("{{{PARTICLE_EVENT_JSON}}}").is_empty(), !whole);
            }
        }
    }

    /// Event data fields are parsed one by one as templates name them;
    /// every shape of data must give what parsing it whole gives.
    #[test]
    fn lazily_parsed_data_fields_equal_the_whole_parse() {
        let cases = [
            r#"{"t":21.5,"s":"a\"b","o":{"y":[1,"z"]},"n":null,"big":1e400}"#,
            r#" { "k" : 1 , "k" : "second" , "x" : [ ] } "#,
            r#"{"a\u0062":"escaped key","b":2}"#,
            r#"{"t":21.5"#,
            "21.5",
            "[1,2]",
            "",
            "{}",
        ];
        let names = [
            "t", "s", "o.y.1", "o", "n", "big", "k", "x", "ab", "b", "missing",
        ];
        for data in cases {
            let ctx = EventContext::new(event(data), Arc::default(), SecretMode::Reveal);
            for name in names {
                let t = Template::compile(&format!("{{{{{{{name}}}}}}}")).unwrap();
                let direct = t.render(&ctx).unwrap();
                let built = t.render(&ctx.variables()).unwrap();
                assert_eq!(direct, built, "{name} in {data}");
            }
        }
        // A number beyond f64 leaves out its own field, not the others.
        let ctx = EventContext::new(event(cases[0]), Arc::default(), SecretMode::Reveal);
        assert_eq!(
            Template::compile("{{{t}}}|{{{big}}}")
                .unwrap()
                .render(&ctx)
                .unwrap(),
            "21.5|"
        );
        let ctx = EventContext::new(event(cases[1]), Arc::default(), SecretMode::Reveal);
        assert_eq!(
            Template::compile("{{{k}}}").unwrap().render(&ctx).unwrap(),
            "second"
        );
        let ctx = EventContext::new(event(cases[2]), Arc::default(), SecretMode::Reveal);
        assert_eq!(
            Template::compile("{{{ab}}}").unwrap().render(&ctx).unwrap(),
            "escaped key"
        );
    }

    /// JSON bodies are written as they render; the bytes must be those of
    /// the rendered value serialized, defaults and escaping included.
    #[test]
    fn written_json_bodies_equal_serialized_values() {
        let data = r#"{"t":21.5,"s":"q\"uote\\ \u00e9 <tag>","arr":[1,{"x":null}],"o":{"k":"v"}}"#;
        let ctx = EventContext::new(event(data), secrets(), SecretMode::Reveal);
        let templates = [
            json!({}),
            json!({"a": "{{{t}}}", "b": "{{s}}", "c": "{{{s}}}", "d": 7, "e": null, "f": [true, "{{{o.k}}}", [], {}]}),
            json!({"event": "mine", "nested": {"deep": {"arr": ["{{{arr.1.x}}}", 2.5e10, "x{{{t}}}y"]}}}),
            json!({"data": "{{{PARTICLE_EVENT_VALUE}}}", "coreid": "{{{PARTICLE_DEVICE_ID}}}", "k": "{{{API_KEY}}}"}),
            json!({"published_at": "", "event": "", "data": "", "coreid": ""}),
        ];
        for t in templates {
            let i = integration(json!({"json": t}));
            let BodyTemplate::Json(jt) = &i.request.body else {
                panic!("{t} is a JSON object template")
            };
            assert!(literal_keys(jt));
            let defaults = default_fields(ctx.event());
            for add_defaults in [true, false] {
                let mut written = Vec::new();
                write_json_body(&ctx, jt, add_defaults, &defaults, &mut written).unwrap();
                let mut value = render_json(&ctx, "json", jt).unwrap();
                let serialized = json_body(&mut value, add_defaults, &defaults, &mut Vec::new());
                assert_eq!(
                    String::from_utf8(written).unwrap(),
                    String::from_utf8(serialized.to_vec()).unwrap(),
                    "{t}, defaults {add_defaults}"
                );
            }
        }
        // Templated keys may collide, so they take the value path.
        let i = integration(json!({"json": {"{{{PARTICLE_EVENT_NAME}}}": 1}}));
        let BodyTemplate::Json(jt) = &i.request.body else {
            panic!("a JSON object template")
        };
        assert!(!literal_keys(jt));
    }

    #[test]
    fn whole_event_variables_are_built_only_where_named() {
        let whole = integration(json!({"json": {"b": "{{{PARTICLE_EVENT_BASE64}}}"}}));
        let plain = integration(json!({"json": {"n": "{{{PARTICLE_EVENT_NAME}}}"}}));
        assert!(whole.uses_whole_event && !plain.uses_whole_event);
        let full = EventContext::new(event("1"), secrets(), SecretMode::Reveal);
        let body = String::from_utf8(render(&whole, &full).unwrap().body.to_vec()).unwrap();
        assert!(body.contains("eyJ"), "base64 of the event JSON: {body}");
        // What the worker builds when no integration of the event names them.
        let lean =
            EventContext::new(event("1"), secrets(), SecretMode::Reveal).without_whole_event();
        let body = String::from_utf8(render(&plain, &lean).unwrap().body.to_vec()).unwrap();
        assert!(body.contains("\"n\":\"temperature/basement\""), "{body}");
    }

    fn integration(extra: Value) -> Integration {
        let mut base = json!({"id": "i1", "product_id": 30301, "event": "temp", "url": "https://example.com/in"});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Integration::from_json(base.to_string().as_bytes()).unwrap()
    }

    /// Many fields, each within a template's bounds, cannot add up past the
    /// event's: a request whose fields each render 12 KB from 13 KiB of device data, 400 times over (5 MB), fails to render (and is
    /// dead-lettered) instead.
    #[test]
    fn the_fields_of_a_request_share_the_event_budget() {
        let fields: Map<String, Value> = (0..400)
            .map(|n| (format!("f{n}"), Value::from("{{#a}}{{{b}}}{{/a}}")))
            .collect();
        let i = integration(json!({ "json": fields }));
        let data = json!({"a": vec![0; 62], "b": "x".repeat(200)}).to_string();
        let ctx = EventContext::new(event(&data), Arc::default(), SecretMode::Reveal);
        let e = render(&i, &ctx).unwrap_err();
        assert!(
            e.to_string().contains("templates.max_event_output_bytes")
                || e.to_string().contains("templates.max_event_render_steps"),
            "{e}"
        );
        // One field of it renders.
        let i = integration(json!({"json": {"f": "{{#a}}{{{b}}}{{/a}}"}}));
        let ctx = EventContext::new(event(&data), Arc::default(), SecretMode::Reveal);
        assert!(render(&i, &ctx).is_ok());
    }

    fn run(extra: Value, data: &str) -> RenderedRequest {
        let ctx = EventContext::new(event(data), secrets(), SecretMode::Reveal);
        render(&integration(extra), &ctx).unwrap()
    }

    fn header<'a>(r: &'a RenderedRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body_json(r: &RenderedRequest) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn only_event_and_url_posts_the_defaults_as_a_form() {
        let r = run(json!({}), "21.5");
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.url, "https://example.com/in");
        assert_eq!(
            r.body,
            "event=temperature%2Fbasement&data=21.5&published_at=2016-04-16T13%3A37%3A08.728Z&coreid=e00fce68aaaaaaaaaaaaaaaa"
        );
        assert_eq!(
            header(&r, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(header(&r, "user-agent"), Some(USER_AGENT));
    }

    #[test]
    fn get_puts_defaults_and_form_in_the_query_string() {
        let r = run(
            json!({"requestType": "GET", "form": {"f": "{{{PARTICLE_EVENT_VALUE}}}"}, "query": {"q": "1"}}),
            "21.5",
        );
        assert_eq!(
            r.url,
            "https://example.com/in?q=1&event=temperature%2Fbasement&data=21.5&published_at=2016-04-16T13%3A37%3A08.728Z&coreid=e00fce68aaaaaaaaaaaaaaaa&f=21.5"
        );
        assert!(r.body.is_empty());
        let r = run(json!({"requestType": "GET", "noDefaults": true}), "x");
        assert_eq!(r.url, "https://example.com/in");
    }

    #[test]
    fn json_objects_render_values_and_merge_defaults() {
        let r = run(
            json!({"json": {"t": "{{{PARTICLE_EVENT_VALUE}}}", "n": 5, "nested": {"{{{PRODUCT_ID}}}": ["{{{PRODUCT_VERSION}}}"]}}}),
            "21.5",
        );
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(
            body_json(&r),
            json!({"t": "21.5", "n": 5, "nested": {"30301": ["3"]}, "event": "temperature/basement", "data": "21.5",
                   "published_at": "2016-04-16T13:37:08.728Z", "coreid": "e00fce68aaaaaaaaaaaaaaaa"})
        );
        let r = run(json!({"json": {"t": 1}, "noDefaults": true}), "x");
        assert_eq!(r.body, r#"{"t":1}"#);
    }

    #[test]
    fn json_given_as_a_string_is_parsed_after_rendering() {
        let r = run(
            json!({"json": "{\"temp\": {{{t}}}, \"ok\": true}", "noDefaults": true}),
            r#"{"t": 21.5}"#,
        );
        assert_eq!(body_json(&r), json!({"temp": 21.5, "ok": true}));
        let ctx = EventContext::new(event("{}"), secrets(), SecretMode::Reveal);
        let err = render(&integration(json!({"json": "{\"temp\": {{{t}}} }"})), &ctx).unwrap_err();
        assert!(matches!(err, RenderFailure::JsonText(_)), "{err}");
    }

    #[test]
    fn form_body_merges_defaults() {
        let r = run(
            json!({"form": {"a": "{{{PARTICLE_DEVICE_ID}}}"}, "requestType": "PUT"}),
            "d",
        );
        assert_eq!(r.method, Method::Put);
        assert_eq!(
            r.body,
            "a=e00fce68aaaaaaaaaaaaaaaa&event=temperature%2Fbasement&data=d&published_at=2016-04-16T13%3A37%3A08.728Z&coreid=e00fce68aaaaaaaaaaaaaaaa"
        );
    }

    #[test]
    fn raw_body_has_no_content_type_and_no_defaults() {
        let r = run(json!({"body": "v={{{PARTICLE_EVENT_VALUE}}}"}), "7");
        assert_eq!(r.body, "v=7");
        assert_eq!(header(&r, "content-type"), None);
    }

    #[test]
    fn all_predefined_variables_and_aliases() {
        let template = "{{{PARTICLE_DEVICE_ID}}}|{{{PARTICLE_EVENT_NAME}}}|{{{PARTICLE_EVENT_VALUE}}}|{{{PARTICLE_PUBLISHED_AT}}}|{{{PARTICLE_EVENT_ID}}}|{{{PRODUCT_ID}}}|{{{PRODUCT_USER_ID}}}|{{{PRODUCT_VERSION}}}|{{{SPARK_EVENT_VALUE}}}|{{{SPARK_PUBLISHED_AT}}}";
        let r = run(json!({"body": template}), "v");
        assert_eq!(
            r.body,
            "e00fce68aaaaaaaaaaaaaaaa|temperature/basement|v|2016-04-16T13:37:08.728Z|device-events/0/7|30301|u1|3|v|2016-04-16T13:37:08.728Z"
        );
        let r = run(json!({"body": "{{{PARTICLE_EVENT_JSON}}}"}), "v");
        let ev: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(ev["name"], "temperature/basement");
        let r = run(json!({"body": "{{{PARTICLE_EVENT_BASE64}}}"}), "v");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&r.body)
            .unwrap();
        assert_eq!(decoded, event("v").raw.as_bytes());
    }

    #[test]
    fn json_event_data_keys_are_variables() {
        let data = r#"{"a": {"aa": "x"}, "b": true, "c": [{"ca": "first"}, {"ca": "second"}], "PARTICLE_DEVICE_ID": "spoof"}"#;
        let r = run(
            json!({"body": "{{{a.aa}}}|{{{c.0.ca}}}|{{#c}}{{{ca}}}~{{/c}}|{{^z}}Missing{{/z}}|{{#b}}B{{/b}}|{{{PARTICLE_DEVICE_ID}}}"}),
            data,
        );
        assert_eq!(
            r.body,
            "x|first|first~second~|Missing|B|e00fce68aaaaaaaaaaaaaaaa"
        );
    }

    #[test]
    fn headers_query_and_basic_auth() {
        let r = run(
            json!({"headers": {"X-Dev": "{{{PARTICLE_DEVICE_ID}}}", "Content-Type": "text/plain"}, "query": {"k": "{{{API_KEY}}}"},
                   "auth": {"username": "user", "password": "{{{API_KEY}}}"}, "body": "b"}),
            "",
        );
        assert_eq!(header(&r, "x-dev"), Some("e00fce68aaaaaaaaaaaaaaaa"));
        assert_eq!(header(&r, "content-type"), Some("text/plain"));
        assert_eq!(r.url, "https://example.com/in?k=s3cr3t");
        let expected = base64::engine::general_purpose::STANDARD.encode("user:s3cr3t");
        assert_eq!(
            header(&r, "authorization"),
            Some(format!("Basic {expected}").as_str())
        );
    }

    #[test]
    fn secrets_are_masked_when_displayed() {
        let i = integration(
            json!({"url": "https://example.com/{{{API_KEY}}}", "json": {"k": "{{{API_KEY}}}"}, "headers": {"X-K": "{{{API_KEY}}}"}}),
        );
        let shown = render(
            &i,
            &EventContext::new(event("x"), secrets(), SecretMode::Mask),
        )
        .unwrap();
        let text = shown.to_json().to_string();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert_eq!(header(&shown, "x-k"), Some(SENSITIVE));
        assert_eq!(shown.url, "https://example.com/[[SENSITIVE]]");
        let sent = render(
            &i,
            &EventContext::new(event("x"), secrets(), SecretMode::Reveal),
        )
        .unwrap();
        assert_eq!(sent.url, "https://example.com/s3cr3t");
    }

    #[test]
    fn url_templates_are_checked_after_rendering() {
        let ctx = EventContext::new(
            event(r#"{"base": "ftp://x"}"#),
            secrets(),
            SecretMode::Reveal,
        );
        let err = render(&integration(json!({"url": "{{{base}}}/p"})), &ctx).unwrap_err();
        assert!(matches!(err, RenderFailure::Url(_)), "{err}");
        let ctx = EventContext::new(
            event(r#"{"base": "http://h.example"}"#),
            secrets(),
            SecretMode::Reveal,
        );
        assert_eq!(
            render(&integration(json!({"url": "{{{base}}}/p"})), &ctx)
                .unwrap()
                .url,
            "http://h.example/p"
        );
    }

    #[test]
    fn header_injection_is_refused() {
        let ctx = EventContext::new(
            event(r#"{"v": "a\r\nX-Evil: 1"}"#),
            secrets(),
            SecretMode::Reveal,
        );
        let err = render(&integration(json!({"headers": {"X-V": "{{{v}}}"}})), &ctx).unwrap_err();
        assert_eq!(err, RenderFailure::Header("X-V".into()));
    }

    /// Text bound for a device or a person loses every secret value this
    /// context reveals, raw or in the encodings destinations echo it in.
    #[test]
    fn secrets_are_masked_raw_base64_and_form_encoded() {
        let secrets: Secrets = Arc::new(BTreeMap::from([
            ("API_KEY".to_owned(), "s3cr3t".to_owned()),
            ("PASS".to_owned(), "p@ss w/rd!".to_owned()),
            ("PIN".to_owned(), "123".to_owned()),
        ]));
        let ctx = EventContext::new(event("{}"), secrets.clone(), SecretMode::Reveal);
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr3t");
        let text = format!("key=s3cr3t b64={b64} form=p%40ss+w%2Frd%21 raw=p@ss w/rd! pin=123");
        let masked = ctx.mask(text.into());
        assert_eq!(
            masked,
            "key=[[SENSITIVE]] b64=[[SENSITIVE]] form=[[SENSITIVE]] raw=[[SENSITIVE]] pin=123",
            "values under 4 bytes are left alone"
        );
        let clean = ctx.mask(Cow::Borrowed("nothing secret"));
        assert!(
            matches!(clean, Cow::Borrowed(_)),
            "no copy when nothing matches"
        );
    }

    /// A secret inside a longer encoded text (a Basic `Authorization`
    /// header, a data URL, a URL's path or a JSON string echoed back) is
    /// masked wherever it sits in it.
    #[test]
    fn secrets_inside_encoded_text_are_masked() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let secret = "p@ss\"w/rd?~1";
        let secrets: Secrets = Arc::new(BTreeMap::from([("PASS".to_owned(), secret.to_owned())]));
        let ctx = EventContext::new(event("{}"), secrets, SecretMode::Reveal);
        let mut echoes = vec![
            format!("path=/a/p%40ss%22w%2Frd%3F~1/b"),
            serde_json::to_string(&json!({"echo": secret})).unwrap(),
        ];
        for user in ["", "u", "us", "user", "a-longer-user"] {
            let pair = format!("{user}:{secret}");
            echoes.push(format!("Authorization: Basic {}", STANDARD.encode(&pair)));
            echoes.push(format!("token={}", URL_SAFE.encode(format!("{pair}&tail"))));
        }
        for text in echoes {
            let masked = ctx.mask(Cow::Borrowed(&text));
            assert!(masked.contains(SENSITIVE), "{text} was not masked");
        }
    }

    /// A header name built from a secret that renders invalid is named by
    /// its place, not by what it rendered to.
    #[test]
    fn an_invalid_header_name_never_quotes_a_secret() {
        let ctx = EventContext::new(event("{}"), secrets(), SecretMode::Reveal);
        let err = render(
            &integration(json!({"headers": {"X-A": "1", "{{{API_KEY}}}/": "v"}})),
            &ctx,
        )
        .unwrap_err();
        assert_eq!(err, RenderFailure::Header("#2 (a templated name)".into()));
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    proptest::proptest! {
        /// The hand-written encoder agrees with form_urlencoded on any input.
        #[test]
        fn form_encoding_matches_form_urlencoded(k in "\\PC{0,20}", v in "\\PC{0,60}") {
            let mut reference = form_urlencoded::Serializer::new(String::new());
            reference.append_pair(&k, &v);
            reference.append_pair("b", "x y");
            proptest::prop_assert_eq!(encode_form([(k.as_str(), v.as_str()), ("b", "x y")].into_iter()), reference.finish());
        }

        /// A URL taken as rendered, unparsed, is exactly what parsing it
        /// would have given.
        #[test]
        fn unparsed_urls_are_what_parsing_gives(
            start in proptest::sample::select(vec![
                "http://h.example:8080/org/{{{v}}}",
                "https://h.example/{{{v}}}/x",
                "http://127.0.0.1:9/a{{{v}}}",
                "http://h.example/a.{{{v}}}.b/{{{v}}}",
                "HTTP://H.example/{{{v}}}",
                "http://h.example{{{v}}}",
                "http://h.example/a?b={{{v}}}",
            ]),
            v in "[a-zA-Z0-9._~/%?# -]{0,12}",
        ) {
            let i = integration(json!({"url": start, "noDefaults": true}));
            let ctx = EventContext::new(event(&json!({ "v": v }).to_string()), secrets(), SecretMode::Reveal);
            // Some values make no URL at all (a space in the host): refused.
            let Ok(rendered) = render(&i, &ctx) else { return Ok(()) };
            let prefix = i.request.url_prefix;
            if prefix > 0 && plain_path_after(&rendered.url, prefix) {
                let parsed = url::Url::parse(&rendered.url).unwrap();
                proptest::prop_assert_eq!(parsed.as_str(), rendered.url.as_str());
            }
        }
    }

    #[test]
    fn urls_with_plain_variables_in_the_path_skip_the_parse() {
        let i = integration(json!({"url": "http://h.example:8080/org/{{{v}}}"}));
        assert_eq!(i.request.url_prefix, "http://h.example:8080/org/".len());
        for (v, plain) in [
            ("30301", true),
            ("a/b.c", true),
            ("..", false),
            ("a b", false),
            ("%2e", false),
        ] {
            assert_eq!(
                plain_path_after(
                    &format!("http://h.example:8080/org/{v}"),
                    i.request.url_prefix
                ),
                plain,
                "{v}"
            );
        }
        for unchecked in [
            "HTTP://H/{{{v}}}",
            "http://h{{{v}}}",
            "{{{v}}}/x",
            "http://h/?q={{{v}}}",
        ] {
            assert_eq!(
                integration(json!({"url": unchecked})).request.url_prefix,
                0,
                "{unchecked}"
            );
        }
    }

    #[test]
    fn url_hosts_drop_credentials_and_ports() {
        assert_eq!(
            url_host("https://u:p@api.example.com:8443/x?y#z"),
            "api.example.com"
        );
        assert_eq!(url_host("http://h.example"), "h.example");
        assert_eq!(url_host("http://h.example?q=1"), "h.example");
        assert_eq!(url_host("http://[::1]:8080/"), "::1");
        for url in [
            "https://u:p@api.example.com:8443/x?y#z",
            "http://[::1]:8080/",
            "http://h.example/a",
        ] {
            let parsed = url::Url::parse(url).unwrap();
            assert_eq!(
                url_host(url),
                parsed.host_str().unwrap().trim_matches(['[', ']'])
            );
        }
    }

    #[test]
    fn idempotency_key_depends_on_event_and_integration_only() {
        let a = run(json!({}), "1");
        let b = run(json!({}), "2");
        assert_eq!(
            header(&a, IDEMPOTENCY_HEADER),
            header(&b, IDEMPOTENCY_HEADER),
            "same event id"
        );
        assert_ne!(idempotency_key("e", "i1"), idempotency_key("e", "i2"));
        assert_ne!(idempotency_key("e1", "i"), idempotency_key("e", "1i"));
    }
}
