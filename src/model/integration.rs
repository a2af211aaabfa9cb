//! Integrations: the user's webhook config, validated and compiled.
//!
//! In: an integration record as JSON ([`IntegrationSpec`]): a Particle webhook
//! with one scope field added (`owner`, `product_id`, or `org` + `products`) and
//! an `id`. Out: an [`Integration`] whose templates are compiled and whose
//! values are all known to be valid, or an [`InvalidIntegration`] naming the
//! field and what was wrong with it. Nothing downstream re-validates.

use std::cell::Cell;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::event::{MAX_NAME_LEN, RESPONSE_EVENT_PREFIXES};
use crate::template::{Template, TemplateCache, TemplateError, TemplateLimits};

/// An integration record as users write it. Unknown fields are refused, so a
/// typo (`requesttype`) is an error and not a silently ignored setting.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSpec {
    pub id: String,
    /// Config-log version (issue of the control plane); 0 for file-sourced records.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    pub owner: Option<String>,
    pub product_id: Option<Value>,
    pub org: Option<String>,
    /// Kept as raw JSON so that a wildcard (`"*"`) gets its own error message.
    pub products: Option<Value>,
    /// `eventName` is its older name, in Particle's CLI examples.
    #[serde(alias = "eventName")]
    pub event: Option<String>,
    pub url: Option<String>,
    #[serde(rename = "requestType")]
    pub request_type: Option<String>,
    pub json: Option<Value>,
    pub form: Option<Value>,
    pub body: Option<String>,
    pub query: Option<Value>,
    pub headers: Option<Value>,
    pub auth: Option<Value>,
    /// `deviceid` is how Particle's CLI and SDK send it.
    #[serde(rename = "deviceID", alias = "deviceid")]
    pub device_id: Option<String>,
    #[serde(rename = "noDefaults")]
    pub no_defaults: Option<bool>,
    #[serde(rename = "rejectUnauthorized")]
    pub reject_unauthorized: Option<bool>,
    #[serde(rename = "responseTopic")]
    pub response_topic: Option<String>,
    #[serde(rename = "errorResponseTopic")]
    pub error_response_topic: Option<String>,
    /// A template, or a JSON object (or array) of templates.
    #[serde(rename = "responseTemplate")]
    pub response_template: Option<Value>,
    /// Publish the response as one event rather than 512-byte chunks.
    pub unchunked: Option<bool>,
    /// Publish the response body as a `data:` URL.
    #[serde(rename = "dataUrlResponseEvent")]
    pub data_url_response_event: Option<bool>,
    pub name: Option<String>,
    pub disabled: Option<bool>,
    /// Name of a configured secret to sign requests with (Standard Webhooks).
    #[serde(rename = "signingSecret")]
    pub signing_secret: Option<String>,
    /// Particle exports carry these; accepted so exports load unchanged.
    pub integration_type: Option<String>,
    pub mydevices: Option<bool>,
    pub created_at: Option<String>,
    /// `"webhook"` in exports from Particle's console.
    pub template: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Why a record was refused: the field (dotted path) and the reason, which
/// quotes the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidIntegration {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidIntegration {
    InvalidIntegration {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Where an integration fires (docs/behaviour.md, "Scope").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Events of devices claimed by this user.
    Sandbox { owner: String },
    /// Every event of this product.
    Product { product: u32 },
    /// Every event of the listed products.
    Org { org: String, products: ProductList },
}

/// A non-empty list of distinct product ids, never a wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductList(Vec<u32>);

impl ProductList {
    pub fn try_new(raw: &Value) -> Result<ProductList, InvalidIntegration> {
        let items = raw.as_array().ok_or_else(|| {
            invalid(
                "products",
                format!("must be a list of product ids, got {raw}"),
            )
        })?;
        if items.is_empty() {
            return Err(invalid(
                "products",
                "must list at least one product; an organization integration executes only on the products it names",
            ));
        }
        let mut ids = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let id = match item {
                Value::String(s) if matches!(s.trim(), "*" | "all" | "any") => {
                    return Err(invalid(
                        format!("products[{i}]"),
                        format!("wildcard {s:?} is not allowed; list the product ids explicitly"),
                    ))
                }
                Value::Number(n) => n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n > 0),
                _ => None,
            }
            .ok_or_else(|| {
                invalid(
                    format!("products[{i}]"),
                    format!("must be a positive product id number, got {item}"),
                )
            })?;
            if ids.contains(&id) {
                return Err(invalid(
                    format!("products[{i}]"),
                    format!("product {id} is listed twice"),
                ));
            }
            ids.push(id);
        }
        Ok(ProductList(ids))
    }

    pub fn ids(&self) -> &[u32] {
        &self.0
    }
}

/// The event-name prefix an integration fires on: non-empty, at most 64
/// characters, no wildcard, and not a prefix that only response events have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPrefix(String);

impl EventPrefix {
    pub fn try_new(prefix: &str) -> Result<EventPrefix, InvalidIntegration> {
        if prefix.is_empty() {
            return Err(invalid("event", "must have at least one character"));
        }
        if prefix.len() > MAX_NAME_LEN {
            return Err(invalid(
                "event",
                format!(
                    "{prefix:?} is longer than {MAX_NAME_LEN} characters, so no event can match it"
                ),
            ));
        }
        if prefix.contains('*') {
            return Err(invalid(
                "event",
                format!("{prefix:?} contains a wildcard; the event is already a prefix (\"temp\" matches \"temperature\")"),
            ));
        }
        if RESPONSE_EVENT_PREFIXES
            .iter()
            .any(|p| prefix.starts_with(p))
        {
            return Err(invalid(
                "event",
                format!("{prefix:?} only matches hook-sent/hook-response/hook-error events, which never trigger integrations"),
            ));
        }
        Ok(EventPrefix(prefix.to_owned()))
    }

    /// Case-sensitive prefix match (docs/behaviour.md, "`event` (trigger)").
    pub fn matches(&self, event_name: &str) -> bool {
        event_name.starts_with(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// HTTP methods Particle webhooks offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// A JSON body template: string keys and values are templates, other values
/// pass through as they are.
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    Str(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(Template, JsonTemplate)>),
    Other(Value),
}

/// What goes in the request body.
#[derive(Debug, Clone)]
pub enum BodyTemplate {
    /// Nothing configured: the defaults as a form body (GET: nothing).
    Defaults,
    /// `json` as an object: rendered value by value.
    Json(JsonTemplate),
    /// `json` as a string: rendered as text, then parsed as JSON.
    JsonText(Template),
    /// `form`: urlencoded body (query string for GET).
    Form(Vec<(Template, Template)>),
    /// `body`: sent as rendered, no Content-Type added.
    Raw(Template),
}

/// `responseTemplate`: what a JSON response is turned into for the device.
#[derive(Debug, Clone)]
pub enum ResponseTemplate {
    /// A template string: its text.
    Text(Template),
    /// A JSON object or array of templates: the rendered JSON, as text.
    Json(JsonTemplate),
}

/// How a response body is published (`unchunked`, `dataUrlResponseEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseFormat {
    /// One event of up to 100 KB rather than 512-byte chunks.
    pub unchunked: bool,
    /// The body as `data:<content-type>;base64,…`.
    pub data_url: bool,
}

/// The compiled request an integration sends.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    pub method: Method,
    pub url: Template,
    /// The length of the URL template's leading text when that text is
    /// already a normalised `http(s)://host/...` start (see `url_prefix`
    /// below); 0 otherwise.
    pub url_prefix: usize,
    pub body: BodyTemplate,
    pub query: Vec<(Template, Template)>,
    pub headers: Vec<(Template, Template)>,
    /// Basic auth username and password.
    pub auth: Option<(Template, Template)>,
    /// `noDefaults`: leave out event/data/coreid/published_at.
    pub no_defaults: bool,
}

/// A validated, compiled integration. Shared read-only by every delivery.
#[derive(Debug, Clone)]
pub struct Integration {
    pub id: Arc<str>,
    pub version: u64,
    pub name: String,
    pub scope: Scope,
    /// The scope as one key (`org:<id>`, `user:<id>`, `product:<id>`), made
    /// once here: secret grants are looked up by it for every delivery.
    pub tenant: String,
    pub trigger: EventPrefix,
    /// Sandbox only: fire for this device only (lowercase hex).
    pub device_id: Option<String>,
    pub disabled: bool,
    pub reject_unauthorized: bool,
    pub request: RequestTemplate,
    pub response_topic: Template,
    pub error_response_topic: Template,
    pub response_template: Option<ResponseTemplate>,
    /// How the response body is published to the device.
    pub response_format: ResponseFormat,
    /// The secret name to sign with, if any.
    pub signing_secret: Option<String>,
    /// Whether a template names `PARTICLE_EVENT_JSON` or
    /// `PARTICLE_EVENT_BASE64` (a whole copy of the event; skipped otherwise).
    pub uses_whole_event: bool,
    /// The record as given, for display and the control plane. Boxed: it
    /// is most of the integration's size, and indexes of 100k integrations
    /// are built by moving them.
    pub spec: Box<IntegrationSpec>,
}

impl Integration {
    /// Parses and validates one JSON record.
    pub fn from_json(bytes: &[u8]) -> Result<Integration, InvalidIntegration> {
        Integration::from_json_with(bytes, &TemplateLimits::default())
    }

    /// [`Integration::from_json`] under the configured template limits.
    pub fn from_json_with(
        bytes: &[u8],
        limits: &TemplateLimits,
    ) -> Result<Integration, InvalidIntegration> {
        Integration::from_json_in(bytes, limits, None)
    }

    /// As [`Integration::from_json_with`], sharing compiled templates
    /// through `cache`.
    pub fn from_json_in(
        bytes: &[u8],
        limits: &TemplateLimits,
        cache: Option<&TemplateCache>,
    ) -> Result<Integration, InvalidIntegration> {
        let spec: IntegrationSpec = serde_json::from_slice(bytes).map_err(|e| serde_refusal(&e))?;
        Integration::compile_in(spec, limits, cache)
    }

    /// As [`Integration::from_json`], from an already parsed value.
    pub fn from_value(value: Value) -> Result<Integration, InvalidIntegration> {
        Integration::from_value_with(value, &TemplateLimits::default())
    }

    /// [`Integration::from_value`] under the configured template limits.
    pub fn from_value_with(
        value: Value,
        limits: &TemplateLimits,
    ) -> Result<Integration, InvalidIntegration> {
        Integration::from_value_in(value, limits, None)
    }

    /// As [`Integration::from_value_with`], sharing compiled templates
    /// through `cache`.
    pub fn from_value_in(
        value: Value,
        limits: &TemplateLimits,
        cache: Option<&TemplateCache>,
    ) -> Result<Integration, InvalidIntegration> {
        let spec: IntegrationSpec = serde_json::from_value(value).map_err(|e| serde_refusal(&e))?;
        Integration::compile_in(spec, limits, cache)
    }

    /// The product this integration counts a delivery under for `product`
    /// events; sandbox deliveries of non-product devices count under none.
    pub fn is_org(&self) -> bool {
        matches!(self.scope, Scope::Org { .. })
    }
}

/// serde names the unknown or mistyped field between backticks in its
/// message ("unknown field `foo`, expected …"); that is the field at fault.
fn serde_refusal(e: &serde_json::Error) -> InvalidIntegration {
    let msg = e.to_string();
    let field = msg.split('`').nth(1).unwrap_or("record").to_owned();
    invalid(field, msg)
}

impl TryFrom<IntegrationSpec> for Integration {
    type Error = InvalidIntegration;

    fn try_from(spec: IntegrationSpec) -> Result<Integration, InvalidIntegration> {
        Integration::compile(spec, &TemplateLimits::default())
    }
}

impl Integration {
    /// Validates `spec` and compiles its templates under `limits`.
    pub fn compile(
        spec: IntegrationSpec,
        limits: &TemplateLimits,
    ) -> Result<Integration, InvalidIntegration> {
        Integration::compile_in(spec, limits, None)
    }

    /// As [`Integration::compile`], sharing compiled templates through
    /// `cache` with the other integrations of its config.
    pub fn compile_in(
        spec: IntegrationSpec,
        limits: &TemplateLimits,
        cache: Option<&TemplateCache>,
    ) -> Result<Integration, InvalidIntegration> {
        let t = &Templates {
            limits,
            cache,
            bytes: Cell::new(0),
        };
        validate_plain_id("id", &spec.id)?;
        let scope = scope_of(&spec)?;
        let trigger = EventPrefix::try_new(spec.event.as_deref().ok_or_else(|| {
            invalid(
                "event",
                "is required: the event-name prefix that triggers the webhook",
            )
        })?)?;
        let device_id = match (&spec.device_id, &scope) {
            (None, _) => None,
            (Some(d), Scope::Sandbox { .. }) => {
                if d.len() != 24 || !d.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid(
                        "deviceID",
                        format!("{d:?} is not a device id (24 hexadecimal characters)"),
                    ));
                }
                Some(d.to_ascii_lowercase())
            }
            (Some(_), _) => {
                return Err(invalid(
                    "deviceID",
                    "is only allowed on sandbox integrations (those with \"owner\")",
                ));
            }
        };
        if let Some(t) = &spec.integration_type {
            if t != "Webhook" {
                return Err(invalid(
                    "integration_type",
                    format!("{t:?} is not supported: hookd runs webhooks only (\"Webhook\"); Particle's other integration types (Google Cloud, Azure, …) have no equivalent here"),
                ));
            }
        }
        if let Some(t) = &spec.template {
            if t != "webhook" {
                return Err(invalid(
                    "template",
                    format!("{t:?} is not supported; only \"webhook\" (a plain webhook)"),
                ));
            }
        }
        let url_src = spec
            .url
            .as_deref()
            .ok_or_else(|| invalid("url", "is required"))?;
        let url = compile_url(t, url_src)?;
        let method = match spec
            .request_type
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("POST") => Method::Post,
            Some("GET") => Method::Get,
            Some("PUT") => Method::Put,
            Some("DELETE") => Method::Delete,
            Some(_) => {
                return Err(invalid(
                    "requestType",
                    format!(
                        "{:?} is not one of GET, POST, PUT, DELETE",
                        spec.request_type.as_deref().unwrap_or_default()
                    ),
                ))
            }
        };
        let body = body_of(t, &spec)?;
        let request = RequestTemplate {
            method,
            url_prefix: url_prefix(&url),
            url,
            body,
            query: compile_pairs(t, "query", spec.query.as_ref())?,
            headers: compile_pairs(t, "headers", spec.headers.as_ref())?,
            auth: compile_auth(t, spec.auth.as_ref())?,
            no_defaults: spec.no_defaults.unwrap_or(false),
        };
        let default_response_topic = match scope {
            Scope::Sandbox { .. } => "hook-response/{{PARTICLE_EVENT_NAME}}",
            _ => "{{PARTICLE_DEVICE_ID}}/hook-response/{{PARTICLE_EVENT_NAME}}",
        };
        let response_topic = compile_field(
            t,
            "responseTopic",
            spec.response_topic
                .as_deref()
                .unwrap_or(default_response_topic),
        )?;
        let error_response_topic = compile_field(
            t,
            "errorResponseTopic",
            spec.error_response_topic
                .as_deref()
                .unwrap_or("hook-error/{{PARTICLE_EVENT_NAME}}"),
        )?;
        let response_template = match &spec.response_template {
            None => None,
            Some(Value::String(r)) => Some(ResponseTemplate::Text(compile_field(
                t,
                "responseTemplate",
                r,
            )?)),
            Some(r @ (Value::Object(_) | Value::Array(_))) => Some(ResponseTemplate::Json(
                compile_json(t, "responseTemplate", r)?,
            )),
            Some(other) => {
                return Err(invalid(
                    "responseTemplate",
                    format!("must be a template string or a JSON object of templates, got {other}"),
                ))
            }
        };
        if let Some(secret) = &spec.signing_secret {
            if !crate::model::secrets::is_secret_name(secret) {
                return Err(invalid("signingSecret", format!("{secret:?} must name a configured secret ([A-Z_][A-Z0-9_]*), not hold the key")));
            }
        }
        let name = match spec.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => default_name(trigger.as_str(), url_src),
        };
        Ok(Integration {
            id: Arc::from(spec.id.as_str()),
            version: spec.version,
            name,
            tenant: match &scope {
                Scope::Sandbox { owner } => format!("user:{owner}"),
                Scope::Product { product } => format!("product:{product}"),
                Scope::Org { org, .. } => format!("org:{org}"),
            },
            scope,
            trigger,
            device_id,
            disabled: spec.disabled.unwrap_or(false),
            reject_unauthorized: spec.reject_unauthorized.unwrap_or(true),
            request,
            response_topic,
            error_response_topic,
            response_template,
            response_format: ResponseFormat {
                unchunked: spec.unchunked.unwrap_or(false),
                data_url: spec.data_url_response_event.unwrap_or(false),
            },
            signing_secret: spec.signing_secret.clone(),
            uses_whole_event: names_whole_event(&spec),
            spec: Box::new(spec),
        })
    }
}

fn names_whole_event(spec: &IntegrationSpec) -> bool {
    spec.any_text(&|s| s.contains("PARTICLE_EVENT_JSON") || s.contains("PARTICLE_EVENT_BASE64"))
}

impl IntegrationSpec {
    /// Whether `found` holds for any text a template or a secret name can be
    /// in: every template field, the keys and values of the object fields,
    /// and `signingSecret`.
    pub fn any_text(&self, found: &dyn Fn(&str) -> bool) -> bool {
        fn in_value(v: &Value, found: &dyn Fn(&str) -> bool) -> bool {
            match v {
                Value::String(s) => found(s),
                Value::Array(items) => items.iter().any(|v| in_value(v, found)),
                Value::Object(map) => map.iter().any(|(k, v)| found(k) || in_value(v, found)),
                _ => false,
            }
        }
        [
            &self.url,
            &self.body,
            &self.response_topic,
            &self.error_response_topic,
            &self.signing_secret,
        ]
        .into_iter()
        .flatten()
        .any(|s| found(s))
            || [
                &self.json,
                &self.response_template,
                &self.form,
                &self.query,
                &self.headers,
                &self.auth,
            ]
            .into_iter()
            .flatten()
            .any(|v| in_value(v, found))
    }
}

/// Ids (of integrations, orgs, users) appear in Kafka keys, metric labels
/// and URLs: keep them plain.
pub fn validate_plain_id(field: &str, id: &str) -> Result<(), InvalidIntegration> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{id:?} must be 1-64 characters of A-Z, a-z, 0-9, '-' and '_'"),
        ))
    }
}

fn scope_of(spec: &IntegrationSpec) -> Result<Scope, InvalidIntegration> {
    let given = [
        spec.owner.is_some(),
        spec.product_id.is_some(),
        spec.org.is_some() || spec.products.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(invalid(
            "scope",
            "give exactly one of \"owner\" (sandbox), \"product_id\" (product) or \"org\" with \"products\" (organization)",
        ));
    }
    if let Some(owner) = &spec.owner {
        if owner.trim().is_empty() {
            return Err(invalid("owner", "must be a user id, got an empty string"));
        }
        return Ok(Scope::Sandbox {
            owner: owner.clone(),
        });
    }
    if let Some(p) = &spec.product_id {
        let product = p
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "product_id",
                    format!("must be a positive product id number, got {p}"),
                )
            })?;
        return Ok(Scope::Product { product });
    }
    let org = match &spec.org {
        Some(o) if !o.trim().is_empty() => o.clone(),
        Some(_) => {
            return Err(invalid(
                "org",
                "must be an organization id, got an empty string",
            ))
        }
        None => return Err(invalid("org", "is required with \"products\"")),
    };
    let products = spec.products.as_ref().ok_or_else(|| {
        invalid(
            "products",
            "is required for an organization integration: list the product ids it executes on",
        )
    })?;
    Ok(Scope::Org {
        org,
        products: ProductList::try_new(products)?,
    })
}

/// Compiles one integration's templates under the configured limits (in a
/// config's shared cache, when it has one), counting their bytes against
/// the integration's total.
struct Templates<'l> {
    limits: &'l TemplateLimits,
    cache: Option<&'l TemplateCache>,
    bytes: Cell<usize>,
}

fn compile_field(t: &Templates, field: &str, source: &str) -> Result<Template, InvalidIntegration> {
    let bytes = t.bytes.get() + source.len();
    t.bytes.set(bytes);
    if bytes > t.limits.max_integration_bytes.get() {
        return Err(invalid(
            field,
            format!(
                "the integration's templates add up to more than {} bytes (templates.max_integration_bytes)",
                t.limits.max_integration_bytes
            ),
        ));
    }
    match t.cache {
        Some(cache) => cache.compile(source, t.limits),
        None => Template::compile_with(source, t.limits),
    }
    .map_err(|e| template_error(field, source, e))
}

fn template_error(field: &str, source: &str, e: TemplateError) -> InvalidIntegration {
    let shown: String = source.chars().take(80).collect();
    let cut = if shown.len() < source.len() {
        "…"
    } else {
        ""
    };
    invalid(
        field,
        format!("template {shown:?}{cut} does not compile: {e}"),
    )
}

fn compile_url(t: &Templates, src: &str) -> Result<Template, InvalidIntegration> {
    let template = compile_field(t, "url", src)?;
    // What the URL starts with once comments are gone: a template that is
    // only text (comments aside) is checked as the literal it is.
    let text = match &template {
        Template::Literal(text) => text.as_str(),
        _ => src,
    };
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        if template.is_literal() {
            let parsed = url::Url::parse(text)
                .map_err(|e| invalid("url", format!("{text:?} is not a valid URL: {e}")))?;
            // Normalised once here, so rendering can use it as it is.
            return Ok(Template::Literal(parsed.into()));
        }
        Ok(template)
    } else if !template.is_literal() && scheme_may_follow(template.leading_text().unwrap_or("")) {
        // The scheme comes from a variable; checked on every render.
        Ok(template)
    } else {
        Err(invalid(
            "url",
            format!("{src:?} must start with http:// or https://"),
        ))
    }
}

/// Whether a templated URL's text before its first tag can still become
/// `http://` or `https://` (nothing, `ht`, `https:/`, …): the rest of the
/// scheme comes from variables, checked on every render.
fn scheme_may_follow(leading: &str) -> bool {
    let lower = leading.to_ascii_lowercase();
    "http://".starts_with(&lower) || "https://".starts_with(&lower)
}

/// The length of a templated URL's leading text when that text is the start
/// of an http(s) URL, normalised, and through its host into the path
/// (`http://host:8080/org/` before `{{{PRODUCT_ID}}}`): rendering then need
/// not parse the URL when the rest is plain path characters (the
/// renderer's fast path). 0 when that does not hold.
pub(crate) fn url_prefix(template: &Template) -> usize {
    let Some(text) = template.leading_text() else {
        return 0;
    };
    match url::Url::parse(text) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
                && u.as_str() == text =>
        {
            text.len()
        }
        _ => 0,
    }
}

fn body_of(t: &Templates, spec: &IntegrationSpec) -> Result<BodyTemplate, InvalidIntegration> {
    let given: Vec<&str> = [
        ("json", spec.json.is_some()),
        ("form", spec.form.is_some()),
        ("body", spec.body.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, g)| g.then_some(n))
    .collect();
    if given.len() > 1 {
        return Err(invalid(
            given.join("/"),
            format!(
                "{} are mutually exclusive; give only one body",
                given.join(" and ")
            ),
        ));
    }
    if let Some(json) = &spec.json {
        return match json {
            Value::String(s) => Ok(BodyTemplate::JsonText(compile_field(t, "json", s)?)),
            Value::Object(_) | Value::Array(_) => {
                Ok(BodyTemplate::Json(compile_json(t, "json", json)?))
            }
            other => Err(invalid(
                "json",
                format!("must be an object or a string, got {other}"),
            )),
        };
    }
    if let Some(form) = &spec.form {
        return Ok(BodyTemplate::Form(compile_pairs(t, "form", Some(form))?));
    }
    if let Some(body) = &spec.body {
        return Ok(BodyTemplate::Raw(compile_field(t, "body", body)?));
    }
    Ok(BodyTemplate::Defaults)
}

fn compile_json(
    t: &Templates,
    field: &str,
    value: &Value,
) -> Result<JsonTemplate, InvalidIntegration> {
    Ok(match value {
        Value::String(s) => JsonTemplate::Str(compile_field(t, field, s)?),
        Value::Array(items) => JsonTemplate::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| compile_json(t, &format!("{field}[{i}]"), v))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => JsonTemplate::Object(
            map.iter()
                .map(|(k, v)| {
                    let path = format!("{field}.{k}");
                    Ok((compile_field(t, &path, k)?, compile_json(t, &path, v)?))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => JsonTemplate::Other(other.clone()),
    })
}

/// Compiles an object of template keys and values (`query`, `form`, `headers`).
fn compile_pairs(
    t: &Templates,
    field: &str,
    value: Option<&Value>,
) -> Result<Vec<(Template, Template)>, InvalidIntegration> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let map: &Map<String, Value> = value.as_object().ok_or_else(|| {
        invalid(
            field,
            format!("must be an object of names to values, got {value}"),
        )
    })?;
    map.iter()
        .map(|(k, v)| {
            let path = format!("{field}.{k}");
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                other => {
                    return Err(invalid(
                        path,
                        format!("must be a string, number or boolean, got {other}"),
                    ))
                }
            };
            Ok((compile_field(t, &path, k)?, compile_field(t, &path, &text)?))
        })
        .collect()
}

fn compile_auth(
    t: &Templates,
    value: Option<&Value>,
) -> Result<Option<(Template, Template)>, InvalidIntegration> {
    let Some(value) = value else {
        return Ok(None);
    };
    let get = |key: &str| -> Result<Template, InvalidIntegration> {
        let field = format!("auth.{key}");
        match value.get(key) {
            Some(Value::String(s)) => compile_field(t, &field, s),
            None | Some(Value::Null) => Ok(Template::Literal(String::new())),
            Some(other) => Err(invalid(field, format!("must be a string, got {other}"))),
        }
    };
    let obj = value.as_object().ok_or_else(|| {
        invalid(
            "auth",
            format!("must be {{\"username\", \"password\"}}, got {value}"),
        )
    })?;
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "username" | "password"))
    {
        return Err(invalid(
            format!("auth.{k}"),
            "unknown field; auth takes \"username\" and \"password\"",
        ));
    }
    Ok(Some((get("username")?, get("password")?)))
}

/// "event + part of the URL", as Particle names unnamed webhooks.
fn default_name(event: &str, url: &str) -> String {
    // Plain string slicing rather than a second URL parse: this runs for every
    // unnamed integration of a reload. Credentials (`user:pass@`), the query
    // and the fragment are never shown.
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    let shown: String = if path.is_empty() {
        host.to_owned()
    } else {
        format!("{host}/{path}")
    };
    format!("{event} → {}", shown.chars().take(60).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Integration, InvalidIntegration> {
        Integration::from_json(v.to_string().as_bytes())
    }

    fn product(extra: Value) -> Value {
        let mut base = json!({"id": "i1", "product_id": 30301, "event": "temp", "url": "https://example.com/in"});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    }

    fn refused(v: Value) -> InvalidIntegration {
        parse(v).expect_err("must be refused")
    }

    #[test]
    fn accepts_a_particle_webhook_with_a_scope_added() {
        let i = parse(json!({
            "id": "w1", "product_id": 30301, "integration_type": "Webhook",
            "event": "temp", "url": "https://example.com/{{{PARTICLE_DEVICE_ID}}}",
            "requestType": "post", "json": {"t": "{{{PARTICLE_EVENT_VALUE}}}"},
            "headers": {"X-Key": "{{{API_KEY}}}"}, "query": {"a": 1},
            "auth": {"username": "u", "password": "{{{PASS}}}"},
            "noDefaults": true, "rejectUnauthorized": false,
            "responseTopic": "{{PARTICLE_DEVICE_ID}}/r", "errorResponseTopic": "e",
            "responseTemplate": "{{t}}", "name": "My hook", "disabled": false, "mydevices": true
        }))
        .unwrap();
        assert_eq!(i.scope, Scope::Product { product: 30301 });
        assert_eq!(i.request.method, Method::Post);
        assert!(i.request.no_defaults);
        assert!(!i.reject_unauthorized);
        assert_eq!(i.name, "My hook");
    }

    /// Particle console exports carry `"template": "webhook"`; older CLI
    /// examples name the prefix `eventName`.
    #[test]
    fn console_exports_and_older_examples_load() {
        let i = parse(json!({"id": "x", "product_id": 1, "eventName": "temp",
            "url": "https://example.com/in", "template": "webhook"}))
        .unwrap();
        assert_eq!(i.trigger.as_str(), "temp");
        let e = refused(json!({"id": "x", "product_id": 1, "event": "temp",
            "url": "https://example.com/in", "template": "google-maps"}));
        assert_eq!(e.field, "template");
        let e = refused(
            json!({"id": "x", "product_id": 1, "event": "a", "eventName": "b",
            "url": "https://example.com/in"}),
        );
        assert!(e.reason.contains("duplicate field `event`"), "{e}");
    }

    #[test]
    fn defaults() {
        let i = parse(product(json!({}))).unwrap();
        assert_eq!(i.request.method, Method::Post);
        assert!(matches!(i.request.body, BodyTemplate::Defaults));
        assert!(i.reject_unauthorized);
        assert!(!i.disabled);
        assert_eq!(i.name, "temp → example.com/in");
    }

    #[test]
    fn default_names_never_show_credentials_or_queries() {
        assert_eq!(
            default_name("t", "https://u:secret@h.example:8443/a/b/?k=v#f"),
            "t → h.example:8443/a/b"
        );
        assert_eq!(default_name("t", "http://h.example"), "t → h.example");
        assert_eq!(default_name("t", "{{{BASE}}}/x"), "t → {{{BASE}}}/x");
    }

    #[test]
    fn scopes() {
        let sandbox = parse(json!({"id": "s", "owner": "u1", "event": "t", "url": "http://h/", "deviceID": "E00FCE68AAAAAAAAAAAAAAAA"})).unwrap();
        assert_eq!(sandbox.scope, Scope::Sandbox { owner: "u1".into() });
        assert_eq!(
            sandbox.device_id.as_deref(),
            Some("e00fce68aaaaaaaaaaaaaaaa")
        );
        let org = parse(
            json!({"id": "o", "org": "acme", "products": [1, 2], "event": "t", "url": "http://h/"}),
        )
        .unwrap();
        assert_eq!(
            org.scope,
            Scope::Org {
                org: "acme".into(),
                products: ProductList(vec![1, 2])
            }
        );
        let one = parse(
            json!({"id": "o", "org": "acme", "products": [7], "event": "t", "url": "http://h/"}),
        )
        .unwrap();
        assert!(one.is_org(), "one product is allowed");
    }

    #[test]
    fn a_url_of_text_and_comments_is_checked_as_the_literal_it_is() {
        let i = parse(product(json!({"url": "{{! c }}HTTPS://API.EXAMPLE.COM/x"}))).unwrap();
        assert!(
            matches!(&i.request.url, Template::Literal(u) if u == "https://api.example.com/x"),
            "normalised like any literal URL"
        );
        let e = refused(product(json!({"url": "{{! c }}ftp://x"})));
        assert_eq!(e.field, "url");
        let e = refused(product(json!({"url": "{{! c }}ftp://h/{{p}}"})));
        assert_eq!(e.field, "url", "text before the first variable checked too");
        assert!(parse(product(json!({"url": "{{{scheme}}}://h/x"}))).is_ok());
        assert!(parse(product(json!({"url": "http{{s}}://h/x"}))).is_ok());
    }

    #[test]
    fn refusals_name_the_field_and_the_value() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (product(json!({"json": {}, "form": {}})), "json/form", "json and form are mutually exclusive; give only one body"),
            (product(json!({"body": "x", "form": {}})), "form/body", "form and body are mutually exclusive; give only one body"),
            (product(json!({"event": ""})), "event", "must have at least one character"),
            (product(json!({"event": "temp*"})), "event", "\"temp*\" contains a wildcard; the event is already a prefix (\"temp\" matches \"temperature\")"),
            (product(json!({"event": "hook-response/x"})), "event", "\"hook-response/x\" only matches hook-sent/hook-response/hook-error events, which never trigger integrations"),
            (product(json!({"requestType": "PATCH"})), "requestType", "\"PATCH\" is not one of GET, POST, PUT, DELETE"),
            (product(json!({"url": "ftp://x"})), "url", "\"ftp://x\" must start with http:// or https://"),
            (product(json!({"url": "https://exa mple.com"})), "url", "\"https://exa mple.com\" is not a valid URL: invalid international domain name"),
            (product(json!({"url": "https://h/{{#a}}"})), "url", "template \"https://h/{{#a}}\" does not compile: section {{#a}} is never closed"),
            (product(json!({"deviceID": "e00fce68aaaaaaaaaaaaaaaa"})), "deviceID", "is only allowed on sandbox integrations (those with \"owner\")"),
            (product(json!({"product_id": 0})), "product_id", "must be a positive product id number, got 0"),
            (product(json!({"id": "a b"})), "id", "\"a b\" must be 1-64 characters of A-Z, a-z, 0-9, '-' and '_'"),
            (product(json!({"owner": "u"})), "scope", "give exactly one of \"owner\" (sandbox), \"product_id\" (product) or \"org\" with \"products\" (organization)"),
            (product(json!({"headers": {"X": {"nested": 1}}})), "headers.X", "must be a string, number or boolean, got {\"nested\":1}"),
            (product(json!({"auth": {"user": "x"}})), "auth.user", "unknown field; auth takes \"username\" and \"password\""),
            (product(json!({"json": 5})), "json", "must be an object or a string, got 5"),
            (product(json!({"signingSecret": "whsec_abc"})), "signingSecret", "\"whsec_abc\" must name a configured secret ([A-Z_][A-Z0-9_]*), not hold the key"),
            (json!({"id": "o", "org": "acme", "products": [], "event": "t", "url": "http://h/"}), "products", "must list at least one product; an organization integration executes only on the products it names"),
            (json!({"id": "o", "org": "acme", "products": ["*"], "event": "t", "url": "http://h/"}), "products[0]", "wildcard \"*\" is not allowed; list the product ids explicitly"),
            (json!({"id": "o", "org": "acme", "products": [1, "x"], "event": "t", "url": "http://h/"}), "products[1]", "must be a positive product id number, got \"x\""),
            (json!({"id": "o", "org": "acme", "products": [1, 1], "event": "t", "url": "http://h/"}), "products[1]", "product 1 is listed twice"),
            (json!({"id": "o", "org": "acme", "products": "*", "event": "t", "url": "http://h/"}), "products", "must be a list of product ids, got \"*\""),
            (json!({"id": "o", "products": [1], "event": "t", "url": "http://h/"}), "org", "is required with \"products\""),
            (json!({"id": "s", "owner": "u", "event": "t", "url": "http://h/", "deviceID": "abc"}), "deviceID", "\"abc\" is not a device id (24 hexadecimal characters)"),
        ];
        for (input, field, reason) in cases {
            let err = refused(input.clone());
            assert_eq!(
                (err.field.as_str(), err.reason.as_str()),
                (field, reason),
                "{input}"
            );
        }
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let err = refused(product(json!({"requesttype": "GET"})));
        assert_eq!(err.field, "requesttype");
        assert!(
            err.reason.starts_with("unknown field `requesttype`"),
            "{err}"
        );
        let err = refused(json!({"id": "x", "product_id": 1, "url": "http://h/"}));
        assert_eq!(
            err.to_string(),
            "event: is required: the event-name prefix that triggers the webhook"
        );
        let err = refused(json!({"id": "x", "product_id": 1, "event": "t"}));
        assert_eq!(err.to_string(), "url: is required");
    }

    #[test]
    fn prefix_matching_is_case_sensitive_prefix() {
        let p = EventPrefix::try_new("temp").unwrap();
        assert!(p.matches("temperature/basement"));
        assert!(p.matches("temp"));
        assert!(!p.matches("high_temp"));
        assert!(!p.matches("Temperature"));
        assert!(!p.matches("tem"));
    }
}
