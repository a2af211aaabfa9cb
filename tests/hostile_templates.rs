//! Hostile templates and events, generated: fragments of mustache and of
//! other template languages in any order, sections nested far past the
//! limit, device data with large and nested arrays, and event records that
//! are not UTF-8 or not events at all. Whatever comes, compiling and
//! rendering never panic, never recurse without a bound, and never produce
//! more than the configured output; what is refused is refused with an
//! error.
//!
//! CI runs proptest's default number of cases. The long run is the same
//! properties with more cases (RELIABILITY.md):
//! `PROPTEST_CASES=1000000 cargo test --release --test hostile_templates`.

use std::sync::Arc;

use hookd::model::event::{DeviceEvent, Origin};
use hookd::model::integration::Integration;
use hookd::model::variables::{EventContext, SecretMode};
use hookd::pipeline::render::render;
use hookd::template::{Template, TemplateLimits};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Pieces of template syntax, well formed or not, from mustache and from
/// the languages whose features hookd refuses.
const FRAGMENTS: &[&str] = &[
    "{{",
    "}}",
    "{{{",
    "}}}",
    "{{{{",
    "}}}}",
    "{{#a}}",
    "{{/a}}",
    "{{^a}}",
    "{{#b}}",
    "{{/b}}",
    "{{^b}}",
    "{{#c}}",
    "{{/c}}",
    "{{a}}",
    "{{{a}}}",
    "{{& a}}",
    "{{a.0}}",
    "{{a.0.b}}",
    "{{.}}",
    "{{{.}}}",
    "{{this}}",
    "{{! note }}",
    "{{!-- x --}}",
    "{{> p}}",
    "{{#> p}}",
    "{{#*inline \"p\"}}",
    "{{/inline}}",
    "{{*d}}",
    "{{~a~}}",
    "{{else}}",
    "{{#each a}}",
    "{{/each}}",
    "{{lookup a 'b'}}",
    "{{a (b c)}}",
    "{{../a}}",
    "{{@root.a}}",
    "{{[a b]}}",
    "{{=<% %>=}}",
    "<% a %>",
    "\\{{a}}",
    "{{{{raw}}}}",
    "{{{{/raw}}}}",
    "(",
    ")",
    "{",
    "}",
    "#",
    "^",
    "/",
    "~",
    ".",
    "x",
    " ",
    "é",
    "\u{0}",
    "\u{10ffff}",
    "\n",
];

fn template() -> impl Strategy<Value = String> {
    prop_oneof![
        // Fragments in any order.
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..120).prop_map(|f| f.concat()),
        // Sections nested from shallow to far past any limit.
        (0usize..400, prop::sample::select(&["a", "b", "c"][..])).prop_map(|(depth, name)| {
            format!(
                "{}{{{{{name}}}}}{}",
                format!("{{{{#{name}}}}}").repeat(depth),
                format!("{{{{/{name}}}}}").repeat(depth)
            )
        }),
        // Anything at all.
        "\\PC{0,200}",
    ]
}

/// Device data: scalars, strings of any characters, arrays up to 60 long,
/// nested a few levels, under the names the templates use.
fn data() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::from),
    ];
    let tree = leaf.prop_recursive(4, 400, 60, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..60).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]),
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    (tree.clone(), tree.clone(), tree).prop_map(|(a, b, c)| json!({"a": a, "b": b, "c": c}))
}

/// Small limits, so that the bounds themselves are what the cases reach.
fn limits() -> TemplateLimits {
    TemplateLimits {
        max_template_bytes: std::num::NonZero::new(4096).unwrap(),
        max_integration_bytes: std::num::NonZero::new(16384).unwrap(),
        max_section_depth: std::num::NonZero::new(8).unwrap(),
        max_output_bytes: std::num::NonZero::new(64 * 1024).unwrap(),
        max_render_steps: std::num::NonZero::new(20_000).unwrap(),
        max_event_render_steps: std::num::NonZero::new(50_000).unwrap(),
        max_event_output_bytes: std::num::NonZero::new(128 * 1024).unwrap(),
    }
}

proptest! {
    /// Compiling any text either refuses it with an error or gives a
    /// template whose every render stays within the output bound.
    #[test]
    fn any_template_over_any_data_stays_within_its_bounds(source in template(), data in data()) {
        let limits = limits();
        if let Ok(t) = Template::compile_with(&source, &limits) {
            match t.render(&data) {
                Ok(out) => prop_assert!(out.len() <= limits.max_output_bytes.get(), "{} bytes", out.len()),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    /// Any bytes on the events topic decode to an event or an error, and a
    /// decoded event renders through integrations that go into its data
    /// (sections over its arrays, every predefined variable) without a
    /// panic and within the output bound.
    #[test]
    fn any_record_decodes_or_is_refused_and_renders_within_bounds(
        record in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..600),
            (data(), "\\PC{0,30}").prop_map(|(d, name)| {
                json!({"name": name, "data": d.to_string(), "coreid": "e00fce68aaaaaaaaaaaaaaaa",
                       "productID": 1, "published_at": "2024-05-13T10:55:40.306Z"})
                    .to_string()
                    .into_bytes()
            }),
        ],
        body in template(),
    ) {
        let origin = Origin { topic: "t".into(), partition: 0, offset: 0 };
        let Ok(event) = DeviceEvent::decode(&record, &origin, chrono::Utc::now()) else {
            return Ok(());
        };
        let limits = limits();
        let integrations = [
            json!({"id": "sections", "product_id": 1, "event": "", "url": "https://example.com/{{{PARTICLE_DEVICE_ID}}}",
                   "json": {"x": "{{#a}}{{#b}}{{#c}}{{{.}}}{{/c}}{{/b}}{{/a}}", "all": "{{{PARTICLE_EVENT_JSON}}}"}}),
            json!({"id": "generated", "product_id": 1, "event": "", "url": "https://example.com/in", "body": body}),
        ];
        for spec in integrations {
            // An event prefix of "" is refused; any event name starts with
            // its first character.
            let mut spec = spec;
            spec["event"] = Value::from(event.name.chars().next().map(String::from).unwrap_or_default());
            let Ok(i) = Integration::from_value_with(spec, &limits) else { continue };
            let ctx = EventContext::new(event.clone(), Arc::default(), SecretMode::Reveal);
            let ctx = ctx.with_limits(&limits);
            if let Ok(request) = render(&i, &ctx) {
                // The event's bound, plus what the integration holds
                // literally and the defaults (the data, 16 KiB at most,
                // escaped).
                prop_assert!(request.body.len() <= limits.max_event_output_bytes.get() + 3 * 16384 + 1024);
            }
        }
    }
}
