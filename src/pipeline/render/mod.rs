//! Render: an integration and an event become the HTTP request to send.
//!
//! In: a resolved [`Integration`] and the [`EventContext`] of one event (built
//! once per event, shared by every integration it fans out to). Out: a
//! [`RenderedRequest`] with the complete URL, every header that will be sent
//! and the body, or a [`RenderFailure`] saying which field failed and why; a
//! failure is an error outcome of that delivery, never a panic.
//!
//! The `body` encoders and the `urls` each have a module; this one puts a
//! request together from the event's template variables
//! ([`crate::model::variables`]).

mod body;
mod urls;

pub(crate) use urls::url_host;

use body::{encode_form, json_body, literal_keys, render_json, render_pairs, write_json_body};
use urls::build_url;

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use crate::model::event::DeviceEvent;
use crate::model::integration::{BodyTemplate, Integration, Method};
use crate::model::request::{
    idempotency_key, RenderFailure, RenderedRequest, IDEMPOTENCY_HEADER, USER_AGENT,
};
use crate::model::variables::EventContext;
use crate::template::Template;

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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use super::body::{encode_form, json_body, literal_keys, render_json, write_json_body};
    use super::urls::plain_path_after;
    use crate::model::variables::{SecretMode, PREDEFINED};
    use serde_json::Map;

    use super::*;
    use crate::model::event::Origin;
    use crate::model::secrets::{Secrets, SENSITIVE};
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
        fn form_encoding_matches_form_urlencoded(k in "(?s).{0,20}", v in "(?s).{0,60}") {
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
