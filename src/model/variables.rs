//! The template variables of one event: what `{{NAME}}` means in an
//! integration's templates (the event's predefined variables, its data's
//! fields, secrets), looked up as templates ask for them.
//!
//! Secrets: the context either reveals them (what is sent) or shows them as
//! `[[SENSITIVE]]` (what is displayed: the `render` command, logs, the
//! delivery log), so displayed requests never contain a secret's value.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use serde_json::{Map, Value};

use crate::model::event::DeviceEvent;
use crate::model::integration::JsonTemplate;
use crate::model::request::RenderFailure;
use crate::model::secrets::{mask_forms, secret_forms, Secrets, SENSITIVE};
use crate::template::{Budget, Found, RenderError, Template, TemplateLimits, Variables};

/// Whether secrets render as their values (to send) or masked (to show).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMode {
    Reveal,
    Mask,
}

/// The template variables of one event, looked up by name as templates ask
/// for them ([`Variables`]); the event data's JSON is parsed on first use.
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

/// The predefined variables (docs/behaviour.md, "Variables").
pub(crate) const PREDEFINED: [&str; 12] = [
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
    /// (an integration's `uses_whole_event`).
    pub fn without_whole_event(mut self) -> EventContext {
        self.whole_event = false;
        self
    }

    #[inline]
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

    // Inlined into the render stage's encoders, which call it per template.
    #[inline]
    pub(crate) fn render(&self, field: &str, t: &Template) -> Result<String, RenderFailure> {
        t.render(self).map_err(|e| RenderFailure::of(field, e))
    }
}

/// An event's variables without its budget.
struct Unbudgeted<'a>(&'a EventContext);

impl Variables for Unbudgeted<'_> {
    fn lookup(&self, name: &str) -> Option<Found<'_>> {
        self.0.lookup(name)
    }
}

impl Variables for EventContext {
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

impl Variables for Overlay<'_> {
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

/// `t` as a JSON value, each template rendered by `render`.
pub(crate) fn json_value(
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
