//! The create, edit and separate form: its fields, the config a posted
//! form stands for, and the form again as the person left it.
//!
//! In: a config (an integration's, to edit) or a posted form's fields.
//! Out: the form's HTML, or the config as the REST handlers take it (a
//! JSON object), or the field at fault and why.

use std::collections::HashMap;

use axum::http::StatusCode;
use maud::{html, Markup};
use serde_json::{Map, Value};

use super::layout::{csrf_input, Failure};
use super::request::field;
use crate::control::api::error::ApiError;
use crate::control::api::sessions::Session;

/// The create/edit form's fields, as the person left them.
#[derive(Default)]
pub(super) struct FormValues(pub(super) Map<String, Value>);

impl FormValues {
    fn text(&self, name: &str) -> String {
        match self.0.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => serde_json::to_string_pretty(other).unwrap_or_default(),
        }
    }

    fn checked(&self, name: &str, default: bool) -> bool {
        self.0.get(name).and_then(Value::as_bool).unwrap_or(default)
    }

    fn products(&self) -> Vec<u64> {
        self.0
            .get("products")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }
}

/// Fields that hold JSON (objects), entered as JSON text.
const JSON_FIELDS: &[&str] = &["query", "headers"];
/// Fields that are plain text.
const TEXT_FIELDS: &[&str] = &[
    "name",
    "event",
    "url",
    "requestType",
    "responseTopic",
    "errorResponseTopic",
    "deviceID",
    "signingSecret",
];
/// Boolean fields: (name, default). Only a value other than the default is
/// written, so saving a form never adds fields that change nothing.
const BOOLEAN_FIELDS: &[(&str, bool)] = &[
    ("noDefaults", false),
    ("rejectUnauthorized", true),
    ("disabled", false),
    ("unchunked", false),
    ("dataUrlResponseEvent", false),
];
/// Fields the form does not edit: kept as they are on save.
pub(super) const KEPT_FIELDS: &[&str] =
    &["integration_type", "template", "created_at", "mydevices"];

/// How the body is given: a JSON object, JSON as a template string, a web
/// form (a JSON object of fields) or a custom body.
fn body_kind_of(v: &Map<String, Value>) -> &'static str {
    match v.get("_body_kind").and_then(Value::as_str) {
        Some("json") => "json",
        Some("json_text") => "json_text",
        Some("form") => "form",
        Some("body") => "body",
        _ => match (v.get("json"), v.get("form"), v.get("body")) {
            (Some(Value::String(_)), _, _) => "json_text",
            (Some(_), _, _) => "json",
            (_, Some(_), _) => "form",
            (_, _, Some(_)) => "body",
            _ => "json",
        },
    }
}

/// How `responseTemplate` is given: a template string or JSON of templates.
fn template_kind_of(v: &Map<String, Value>) -> &'static str {
    match v.get("_template_kind").and_then(Value::as_str) {
        Some("json") => "json",
        Some(_) => "text",
        None => match v.get("responseTemplate") {
            Some(Value::Object(_) | Value::Array(_)) => "json",
            _ => "text",
        },
    }
}

/// The config a posted form stands for, or the field at fault; an org's
/// integration names its products.
pub(super) fn config_from_form(
    f: &[(String, String)],
    org: bool,
) -> Result<Map<String, Value>, (String, String)> {
    let mut c = Map::new();
    for name in TEXT_FIELDS {
        if let Some(v) = field(f, name).map(str::trim).filter(|v| !v.is_empty()) {
            c.insert((*name).into(), v.into());
        }
    }
    for name in JSON_FIELDS {
        if let Some(v) = field(f, name).map(str::trim).filter(|v| !v.is_empty()) {
            let parsed: Value = serde_json::from_str(v)
                .map_err(|e| (name.to_string(), format!("not JSON: {e}")))?;
            c.insert((*name).into(), parsed);
        }
    }
    let body = field(f, "body_text").unwrap_or_default().trim();
    if !body.is_empty() {
        match field(f, "body_kind").unwrap_or("json") {
            "json" => {
                let v: Value = serde_json::from_str(body).map_err(|e| {
                    (
                        "json".to_owned(),
                        format!("not JSON: {e} (choose \"JSON template\" for JSON that only becomes valid once rendered)"),
                    )
                })?;
                c.insert("json".into(), v);
            }
            "json_text" => {
                c.insert("json".into(), body.into());
            }
            "form" => {
                let v: Value = serde_json::from_str(body)
                    .map_err(|e| ("form".to_owned(), format!("not a JSON object: {e}")))?;
                c.insert("form".into(), v);
            }
            _ => {
                c.insert("body".into(), body.into());
            }
        }
    }
    let template = field(f, "responseTemplate").unwrap_or_default().trim();
    if !template.is_empty() {
        let v = match field(f, "template_kind") {
            Some("json") => serde_json::from_str::<Value>(template)
                .map_err(|e| ("responseTemplate".to_owned(), format!("not JSON: {e}")))?,
            _ => template.into(),
        };
        c.insert("responseTemplate".into(), v);
    }
    let user = field(f, "auth_username").unwrap_or_default();
    let pass = field(f, "auth_password").unwrap_or_default();
    if !user.is_empty() || !pass.is_empty() {
        c.insert(
            "auth".into(),
            serde_json::json!({"username": user, "password": pass}),
        );
    }
    for (name, default) in BOOLEAN_FIELDS {
        let checked = field(f, name).is_some();
        if checked != *default {
            c.insert((*name).into(), checked.into());
        }
    }
    if org {
        c.insert("products".into(), posted_products(f).into());
    }
    Ok(c)
}

fn posted_products(f: &[(String, String)]) -> Vec<Value> {
    f.iter()
        .filter(|(k, _)| k == "products")
        .filter_map(|(_, v)| v.parse::<u64>().ok().map(Value::from))
        .collect()
}

/// What a person posted, shown again as they left it beside an error.
pub(super) fn echo(f: &[(String, String)]) -> FormValues {
    let mut m = Map::new();
    for name in TEXT_FIELDS.iter().chain(JSON_FIELDS) {
        if let Some(v) = field(f, name) {
            m.insert((*name).into(), v.into());
        }
    }
    let kind = field(f, "body_kind").unwrap_or("json");
    m.insert("_body_kind".into(), kind.into());
    let body_key = match kind {
        "form" => "form",
        "body" => "body",
        _ => "json",
    };
    m.insert(
        body_key.into(),
        field(f, "body_text").unwrap_or_default().into(),
    );
    m.insert(
        "_template_kind".into(),
        field(f, "template_kind").unwrap_or("text").into(),
    );
    m.insert(
        "responseTemplate".into(),
        field(f, "responseTemplate").unwrap_or_default().into(),
    );
    m.insert(
        "auth".into(),
        serde_json::json!({"username": field(f, "auth_username").unwrap_or_default(),
                           "password": field(f, "auth_password").unwrap_or_default()}),
    );
    for (name, _) in BOOLEAN_FIELDS {
        m.insert((*name).into(), field(f, name).is_some().into());
    }
    m.insert("products".into(), posted_products(f).into());
    FormValues(m)
}

/// The form's values from a config (an integration's, or a posted one).
pub(super) fn values_of(config: &Map<String, Value>) -> FormValues {
    FormValues(config.clone())
}

pub(super) struct FormSpec<'a> {
    pub(super) action: String,
    /// The version an edit form was made from (a stale save is a conflict).
    pub(super) version: Option<u64>,
    pub(super) submit: &'a str,
    pub(super) error: Option<(String, String)>,
    /// Org pages: the org's products to choose from.
    pub(super) products: Option<&'a HashMap<u64, String>>,
    pub(super) sandbox: bool,
}

fn error_for(spec: &FormSpec, name: &str) -> Markup {
    html! {
        @if let Some((field, message)) = &spec.error {
            @if field == name || field.starts_with(&format!("{name}.")) || field.starts_with(&format!("{name}[")) {
                p.error role="alert" id={ "error-" (name) } { (message) }
            }
        }
    }
}

pub(super) fn integration_form(s: &Session, v: &FormValues, spec: &FormSpec) -> Markup {
    let text = |name: &str, label: &str, hint: &str| {
        html! {
            label for=(name) { (label) }
            input type="text" id=(name) name=(name) value=(v.text(name)) aria-describedby={ "hint-" (name) };
            @if !hint.is_empty() { small id={ "hint-" (name) } { (hint) } }
            (error_for(spec, name))
        }
    };
    let body_kind = body_kind_of(&v.0);
    let template_kind = template_kind_of(&v.0);
    let body_text = match body_kind {
        "form" => v.text("form"),
        "body" => v.text("body"),
        _ => v.text("json"),
    };
    let template = match v.0.get("responseTemplate") {
        Some(Value::String(t)) => t.clone(),
        Some(other) => serde_json::to_string_pretty(other).unwrap_or_default(),
        None => String::new(),
    };
    let auth = v.0.get("auth").cloned().unwrap_or(Value::Null);
    let method = v.text("requestType");
    let method = if method.is_empty() {
        "POST".to_owned()
    } else {
        method.to_uppercase()
    };
    html! {
        form method="post" action=(spec.action) {
            (csrf_input(s))
            @if let Some(version) = spec.version {
                input type="hidden" name="version" value=(version);
            }
            @if let Some((field, message)) = &spec.error {
                p.error role="alert" { (field) ": " (message) }
            }
            (text("name", "Name", "shown in lists; default: the event and part of the URL"))
            (text("event", "Event name", "a case-sensitive prefix of the event names that trigger it"))
            (text("url", "URL", "templates allowed, e.g. https://example.com/{{{PARTICLE_DEVICE_ID}}}"))
            label for="requestType" { "Request type" }
            select id="requestType" name="requestType" {
                @for m in ["POST", "GET", "PUT", "DELETE"] {
                    option value=(m) selected[m == method] { (m) }
                }
            }
            (error_for(spec, "requestType"))
            @if let Some(products) = spec.products {
                label for="products" { "Product(s) where the integration will execute" }
                select id="products" name="products" multiple size=(products.len().clamp(2, 8)) {
                    @for (id, name) in sorted(products) {
                        option value=(id) selected[v.products().contains(&id)] { (name) " (" (id) ")" }
                    }
                }
                small { "Choose each product; there is no “all products”." }
                (error_for(spec, "products"))
            }
            fieldset {
                legend { "Request format" }
                @for (kind, label) in [("json", "JSON"), ("json_text", "JSON template (valid JSON once rendered)"), ("form", "Web form"), ("body", "Custom body")] {
                    label {
                        input type="radio" name="body_kind" value=(kind) checked[kind == body_kind];
                        " " (label)
                    }
                }
                label for="body_text" { "Body (JSON for JSON and web form; any text for a custom body)" }
                textarea id="body_text" name="body_text" { (body_text) }
                (error_for(spec, "json")) (error_for(spec, "form")) (error_for(spec, "body"))
            }
            label for="query" { "Query parameters (JSON object)" }
            textarea id="query" name="query" { (v.text("query")) }
            (error_for(spec, "query"))
            label for="headers" { "HTTP headers (JSON object)" }
            textarea id="headers" name="headers" { (v.text("headers")) }
            (error_for(spec, "headers"))
            fieldset {
                legend { "HTTP basic auth" }
                label for="auth_username" { "Username" }
                input type="text" id="auth_username" name="auth_username" value=(auth["username"].as_str().unwrap_or_default());
                label for="auth_password" { "Password" }
                input type="password" id="auth_password" name="auth_password" autocomplete="off" value=(auth["password"].as_str().unwrap_or_default());
                (error_for(spec, "auth"))
            }
            (text("responseTopic", "Response topic", "default: {{PARTICLE_DEVICE_ID}}/hook-response/{{PARTICLE_EVENT_NAME}}"))
            (text("errorResponseTopic", "Error response topic", "default: hook-error/{{PARTICLE_EVENT_NAME}}"))
            fieldset {
                legend { "Response template" }
                @for (kind, label) in [("text", "A template"), ("json", "JSON of templates")] {
                    label {
                        input type="radio" name="template_kind" value=(kind) checked[kind == template_kind];
                        " " (label)
                    }
                }
                label for="responseTemplate" { "Template" }
                textarea id="responseTemplate" name="responseTemplate" { (template) }
            }
            (error_for(spec, "responseTemplate"))
            @if spec.sandbox {
                (text("deviceID", "Device", "fire for this device only (24 hex digits)"))
            }
            label { input type="checkbox" name="noDefaults" value="true" checked[v.checked("noDefaults", false)]; " No defaults (leave out event, data, coreid, published_at)" }
            label { input type="checkbox" name="rejectUnauthorized" value="true" checked[v.checked("rejectUnauthorized", true)]; " Enforce SSL (verify certificates)" }
            label { input type="checkbox" name="disabled" value="true" checked[v.checked("disabled", false)]; " Disabled" }
            label { input type="checkbox" name="unchunked" value="true" checked[v.checked("unchunked", false)]; " Unchunked (the response as one event of up to 100 KB)" }
            label { input type="checkbox" name="dataUrlResponseEvent" value="true" checked[v.checked("dataUrlResponseEvent", false)]; " Encode the response as a data URL" }
            (text("signingSecret", "Signing secret", "the name of a configured secret to sign requests with (Standard Webhooks)"))
            button type="submit" { (spec.submit) }
        }
    }
}

fn sorted(products: &HashMap<u64, String>) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = products.iter().map(|(k, n)| (*k, n.clone())).collect();
    v.sort();
    v
}

/// An api refusal a form shows beside its fields when its status is one of
/// `shown` (the field at fault, or `config`); any other is a page of its
/// own.
pub(super) fn form_error(e: ApiError, shown: &[StatusCode]) -> Result<(String, String), Failure> {
    if shown.contains(&e.status) {
        Ok((e.field.unwrap_or_else(|| "config".into()), e.error))
    } else {
        Err(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_become_configs_and_bad_json_names_its_field() {
        let org = true;
        let f: Vec<(String, String)> = [
            ("event", "temp"),
            ("url", "https://example.com/x"),
            ("requestType", "PUT"),
            ("body_kind", "json"),
            ("body_text", r#"{"t": "{{{t}}}"}"#),
            ("headers", r#"{"X-A": "1"}"#),
            ("products", "1"),
            ("products", "2"),
            ("rejectUnauthorized", "true"),
            ("auth_username", "u"),
            ("auth_password", "p"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = config_from_form(&f, org).unwrap();
        assert_eq!(
            Value::Object(c),
            serde_json::json!({"event": "temp", "url": "https://example.com/x", "requestType": "PUT",
                "headers": {"X-A": "1"}, "json": {"t": "{{{t}}}"}, "auth": {"username": "u", "password": "p"},
                "products": [1, 2]})
        );
        let bad = vec![("headers".to_owned(), "{nope".to_owned())];
        assert_eq!(config_from_form(&bad, org).unwrap_err().0, "headers");
        // JSON that is not JSON yet: refused as JSON, kept as a template
        // string when asked; a response template stays the type chosen.
        let body = |kind: &str| -> Vec<(String, String)> {
            [
                ("body_kind", kind),
                ("body_text", r#"{"t": {{{t}}}}"#),
                ("template_kind", "text"),
                ("responseTemplate", r#"{"a": 1}"#),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        assert_eq!(config_from_form(&body("json"), org).unwrap_err().0, "json");
        let c = config_from_form(&body("json_text"), org).unwrap();
        assert_eq!(c["json"], r#"{"t": {{{t}}}}"#);
        assert_eq!(c["responseTemplate"], r#"{"a": 1}"#);
        // What was posted comes back in the form's own shape.
        let again = echo(&body("json_text"));
        assert_eq!(body_kind_of(&again.0), "json_text");
        assert_eq!(again.text("json"), r#"{"t": {{{t}}}}"#);
        assert_eq!(template_kind_of(&again.0), "text");
    }
}
