//! Templates with mustache semantics, rendered by handlebars.
//!
//! In: a template string as users wrote it for Particle (mustache). Out: a
//! [`Template`] compiled once at load, rendered per event in a [`Scope`]:
//! templates of text and plain variables (most of them) by looking each
//! variable up, the rest by handlebars over the scope's whole context.
//! Failure modes: a template that does not parse is
//! refused at load ([`TemplateError`]); rendering itself cannot fail on missing
//! data (a missing variable renders empty, as in mustache).
//!
//! Handlebars parses mustache variables, triple-staches and dot paths with
//! indices the same way, but not sections: `{{#c}}…{{/c}}` is a call of a
//! helper named `c` and `{{^z}}` does not parse. So before compiling, sections
//! are rewritten into calls of two block helpers registered here,
//! `{{#hookd_section c}}` and `{{#hookd_inverted z}}`, which implement the
//! mustache rules (iterate arrays, enter objects, render truthy values once,
//! inverted when falsy). All handlebars built-in helpers are unregistered, so a
//! data key named `if` or `len` is just a variable, as in mustache.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use handlebars::template::{Parameter, TemplateElement};
use handlebars::{
    BlockContext, Context, Handlebars, Helper, HelperDef, HelperResult, JsonTruthy, Output, Path,
    RenderContext, RenderError, RenderErrorReason, Renderable, StringOutput,
};
use serde_json::Value;

const SECTION_HELPER: &str = "hookd_section";
const INVERTED_HELPER: &str = "hookd_inverted";

/// A template that failed to compile, with the reason handlebars gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("section {{{{#{0}}}}} is never closed")]
    Unclosed(String),
    #[error("{{{{/{found}}}}} closes a section that was not opened (expected {expected})")]
    Mismatched { found: String, expected: String },
    #[error("{0}")]
    Parse(String),
}

/// A compiled template. Plain text without tags skips handlebars entirely.
#[derive(Debug, Clone)]
pub enum Template {
    Literal(String),
    /// Shared: integrations repeat the same templates (the defaults, common
    /// variables), and each distinct source is compiled once.
    Compiled(Arc<handlebars::Template>),
    /// Text and plain variable tags only, `{{{a.b.0}}}` or `{{a}}`: most
    /// fields of Particle webhooks (`{{{t}}}`, `https://x/{{{PRODUCT_ID}}}`,
    /// the default response topic). Rendered by direct lookups in a
    /// [`Scope`], without building the handlebars context; a value that is
    /// not a string, number or boolean sends the whole template through
    /// handlebars, so the output is always what handlebars would give.
    Direct(Arc<Direct>),
}

/// Where template variables come from: names looked up one at a time (an
/// event's variables, without building them all), or a whole handlebars
/// context for what only handlebars renders.
pub trait Scope {
    /// The value of a top-level name.
    fn lookup(&self, name: &str) -> Option<Found<'_>>;
    /// Every variable, as handlebars needs them.
    fn context(&self) -> &Context;
}

/// A variable's value: text, or JSON (event data keys) to go into.
pub enum Found<'a> {
    Text(Cow<'a, str>),
    Json(&'a Value),
}

impl Scope for Context {
    fn lookup(&self, name: &str) -> Option<Found<'_>> {
        match self.data() {
            Value::Object(map) => map.get(name).map(Found::Json),
            _ => None,
        }
    }

    fn context(&self) -> &Context {
        self
    }
}

#[derive(Debug)]
pub struct Direct {
    parts: Vec<Part>,
    /// Bytes of text, to size the output once.
    text_len: usize,
    compiled: Arc<handlebars::Template>,
}

#[derive(Debug)]
enum Part {
    Text(String),
    /// `{{{x}}}` (`raw`): inserted as is; `{{x}}`: HTML-escaped.
    Variable {
        path: Vec<String>,
        raw: bool,
    },
}

impl Direct {
    /// The parts of a compiled template made only of text and plain
    /// variable tags, if it is one. Taken from handlebars' own parse, so
    /// escapes (`\{{`) and whitespace control are as handlebars reads them.
    fn from_compiled(source: &str, compiled: &Arc<handlebars::Template>) -> Option<Direct> {
        if source.contains('~') {
            // Whitespace control trims the text around a tag.
            return None;
        }
        let mut parts = Vec::with_capacity(compiled.elements.len());
        for element in &compiled.elements {
            let (h, raw) = match element {
                TemplateElement::RawString(s) => {
                    parts.push(Part::Text(s.clone()));
                    continue;
                }
                TemplateElement::HtmlExpression(h) => (h, true),
                TemplateElement::Expression(h) => (h, false),
                _ => return None,
            };
            if !h.params.is_empty() || !h.hash.is_empty() || h.block || h.template.is_some() {
                return None;
            }
            let name = match &h.name {
                Parameter::Name(n) => n.as_str(),
                Parameter::Path(Path::Relative((_, raw))) => raw.as_str(),
                _ => return None,
            };
            parts.push(Part::Variable {
                path: plain_path(name)?,
                raw,
            });
        }
        let text_len = parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Variable { .. } => 0,
            })
            .sum();
        Some(Direct {
            parts,
            text_len,
            compiled: compiled.clone(),
        })
    }

    fn render(&self, scope: &(impl Scope + ?Sized)) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.text_len + 32);
        for part in &self.parts {
            let (path, raw) = match part {
                Part::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Part::Variable { path, raw } => (path, *raw),
            };
            let text: Cow<'_, str> = match scope.lookup(&path[0]) {
                // A missing name renders empty, as in mustache.
                None => continue,
                Some(Found::Text(s)) if path.len() == 1 => s,
                // There is nothing inside a string.
                Some(Found::Text(_)) => continue,
                Some(Found::Json(v)) => match navigate(v, &path[1..]) {
                    None => continue,
                    Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
                    Some(Value::Number(n)) => Cow::Owned(n.to_string()),
                    Some(Value::Bool(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
                    Some(_) => return render_compiled(&self.compiled, scope.context()),
                },
            };
            if raw {
                out.push_str(&text);
            } else {
                escape_html_into(&mut out, &text);
            }
        }
        Ok(out)
    }
}

/// The segments of `a.b.0`, if the name is a plain path: letters, digits
/// and `_`, not starting with a digit, not `this`.
fn plain_path(name: &str) -> Option<Vec<String>> {
    let path: Vec<String> = name.split('.').map(str::to_owned).collect();
    let plain =
        |s: &String| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let first = &path[0];
    let ok = path.iter().all(plain)
        && !first.starts_with(|c: char| c.is_ascii_digit())
        && first != "this";
    ok.then_some(path)
}

fn navigate<'v>(mut at: &'v Value, path: &[String]) -> Option<&'v Value> {
    for segment in path {
        at = match at {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

impl Template {
    pub fn compile(source: &str) -> Result<Template, TemplateError> {
        if !source.contains("{{") {
            return Ok(Template::Literal(source.to_owned()));
        }
        if let Some(t) = cache()
            .lock()
            .expect("cache lock is never poisoned")
            .get(source)
        {
            return Ok(t.clone());
        }
        let translated = translate_sections(source)?;
        let compiled = Arc::new(
            handlebars::Template::compile(&translated)
                .map_err(|e| TemplateError::Parse(describe_parse_error(&e)))?,
        );
        let template = match Direct::from_compiled(&translated, &compiled) {
            Some(direct) => Template::Direct(Arc::new(direct)),
            None => Template::Compiled(compiled),
        };
        let mut cache = cache().lock().expect("cache lock is never poisoned");
        if cache.len() >= CACHE_LIMIT {
            // Bounded memory; a config with this many distinct templates
            // only loses the sharing, not correctness.
            cache.clear();
        }
        cache.insert(source.to_owned(), template.clone());
        Ok(template)
    }

    /// True when the output does not depend on the event.
    pub fn is_literal(&self) -> bool {
        matches!(self, Template::Literal(_))
    }

    /// The text every output of a text-and-variables template starts with
    /// (the text before its first tag).
    pub fn leading_text(&self) -> Option<&str> {
        match self {
            Template::Direct(d) => match d.parts.first() {
                Some(Part::Text(t)) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn render(&self, scope: &(impl Scope + ?Sized)) -> Result<String, RenderError> {
        match self {
            Template::Literal(s) => Ok(s.clone()),
            Template::Compiled(t) => render_compiled(t, scope.context()),
            Template::Direct(d) => d.render(scope),
        }
    }
}

fn render_compiled(t: &handlebars::Template, ctx: &Context) -> Result<String, RenderError> {
    let registry = registry();
    let mut rc = RenderContext::new(None);
    let mut out = StringOutput::new();
    t.render(registry, ctx, &mut rc, &mut out)?;
    out.into_string().map_err(RenderError::from)
}

/// Distinct template sources kept compiled.
const CACHE_LIMIT: usize = 65_536;

/// Compiled templates by source, shared across integrations and reloads.
fn cache() -> &'static Mutex<HashMap<String, Template>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Template>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn describe_parse_error(e: &handlebars::TemplateError) -> String {
    e.to_string()
}

/// The one registry every template renders with: no built-in helpers, the two
/// section helpers, mustache's escaping and non-strict lookups.
fn registry() -> &'static Handlebars<'static> {
    static REGISTRY: OnceLock<Handlebars<'static>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r = Handlebars::new();
        for builtin in [
            "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt",
            "lte", "and", "or", "not", "len",
        ] {
            r.unregister_helper(builtin);
        }
        r.register_helper(SECTION_HELPER, Box::new(Section));
        r.register_helper(INVERTED_HELPER, Box::new(Inverted));
        r.register_escape_fn(escape_html);
        r.set_strict_mode(false);
        r
    })
}

/// Mustache's escaping for `{{x}}`: `& < > " '`, nothing else.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_html_into(&mut out, s);
    out
}

fn escape_html_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Rewrites mustache sections into the helper calls handlebars understands.
/// Tags other than `{{#name}}`, `{{^name}}` and `{{/name}}` pass through.
fn translate_sections(source: &str) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(source.len() + 32);
    let mut open: Vec<(String, bool)> = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // Triple-staches and anything that is not a section are copied verbatim.
        let Some(end) = tag.find("}}") else {
            out.push_str(tag);
            rest = "";
            break;
        };
        let inner = &tag[2..end];
        let sigil = inner.chars().next();
        let name = inner.get(1..).map(str::trim).unwrap_or("");
        let is_plain_name = !name.is_empty()
            && !inner.starts_with("{")
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '$' | '@'));
        match sigil {
            Some('#') if is_plain_name => {
                out.push_str(&format!("{{{{#{SECTION_HELPER} {name}}}}}"));
                open.push((name.to_owned(), false));
            }
            Some('^') if is_plain_name => {
                out.push_str(&format!("{{{{#{INVERTED_HELPER} {name}}}}}"));
                open.push((name.to_owned(), true));
            }
            Some('/') if is_plain_name => match open.pop() {
                Some((opened, inverted)) if opened == name => {
                    let helper = if inverted {
                        INVERTED_HELPER
                    } else {
                        SECTION_HELPER
                    };
                    out.push_str(&format!("{{{{/{helper}}}}}"));
                }
                Some((opened, _)) => {
                    return Err(TemplateError::Mismatched {
                        found: name.to_owned(),
                        expected: format!("{{{{/{opened}}}}}"),
                    })
                }
                None => {
                    return Err(TemplateError::Mismatched {
                        found: name.to_owned(),
                        expected: "no closing tag".to_owned(),
                    })
                }
            },
            // Mustache's implicit iterator `{{.}}` is handlebars' `this`.
            _ if inner.trim() == "." => out.push_str("{{this}}"),
            _ if inner.trim() == "{." && tag[end + 2..].starts_with('}') => {
                out.push_str("{{{this}}}");
                rest = &tag[end + 3..];
                continue;
            }
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    if let Some((name, _)) = open.pop() {
        return Err(TemplateError::Unclosed(name));
    }
    Ok(out)
}

/// Mustache truthiness: false, null, 0, "" and [] are falsy (as mustache.js).
fn truthy(v: &Value) -> bool {
    v.is_truthy(false)
}

/// `{{#x}}…{{/x}}`: arrays iterate with each element as the context, objects
/// become the context, other truthy values render the block once.
struct Section;

impl HelperDef for Section {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let param = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex(SECTION_HELPER, 0))?;
        let Some(template) = h.template() else {
            return Ok(());
        };
        let value = param.value();
        if !truthy(value) {
            return Ok(());
        }
        match value {
            Value::Array(items) => {
                for item in items {
                    let block = scope_block(ctx, rc, item);
                    rc.push_block(block);
                    let res = template.render(r, ctx, rc, out);
                    rc.pop_block();
                    res?;
                }
                Ok(())
            }
            Value::Object(_) => {
                let block = scope_block(ctx, rc, value);
                rc.push_block(block);
                let res = template.render(r, ctx, rc, out);
                rc.pop_block();
                res
            }
            _ => template.render(r, ctx, rc, out),
        }
    }
}

/// The block a section enters. Mustache looks a name up in the innermost
/// scope first and then outwards; handlebars looks only in the current one.
/// So an object's block is the enclosing scope's names overlaid with the
/// object's own; other values (array scalars) are the scope as they are.
fn scope_block<'rc>(ctx: &Context, rc: &RenderContext<'_, 'rc>, item: &Value) -> BlockContext<'rc> {
    let mut block = BlockContext::new();
    let Value::Object(own) = item else {
        block.set_base_value(item.clone());
        return block;
    };
    let enclosing = rc.block().and_then(|b| match b.base_value() {
        Some(v) => Some(v.clone()),
        None => {
            let mut v = ctx.data();
            for seg in b.base_path() {
                v = match v {
                    Value::Object(m) => m.get(seg)?,
                    Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(v.clone())
        }
    });
    let mut scope = match enclosing.unwrap_or_else(|| ctx.data().clone()) {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    scope.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    block.set_base_value(Value::Object(scope));
    block
}

/// `{{^x}}…{{/x}}`: renders the block once when `x` is missing or falsy.
struct Inverted;

impl HelperDef for Inverted {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let param = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex(INVERTED_HELPER, 0))?;
        match h.template() {
            Some(t) if !truthy(param.value()) => t.render(r, ctx, rc, out),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn render(template: &str, data: Value) -> String {
        let ctx = Context::wraps(data).unwrap();
        Template::compile(template)
            .unwrap_or_else(|e| panic!("{template}: {e}"))
            .render(&ctx)
            .unwrap()
    }

    fn particle_data() -> Value {
        json!({"a": {"aa": "x&y"}, "b": true, "c": [{"ca": "first"}, {"ca": "second"}], "n": 0, "s": ""})
    }

    #[test]
    fn double_stache_escapes_the_five_html_characters() {
        assert_eq!(
            render("{{v}}", json!({"v": "<a href=\"x\">'&'</a> / ` ="})),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt; / ` ="
        );
    }

    #[test]
    fn triple_stache_inserts_raw() {
        assert_eq!(render("{{{v}}}", json!({"v": "<b>&</b>"})), "<b>&</b>");
    }

    #[test]
    fn dot_paths_with_indices() {
        assert_eq!(
            render("{{{a.aa}}}|{{{c.0.ca}}}|{{{c.1.ca}}}", particle_data()),
            "x&y|first|second"
        );
    }

    #[test]
    fn sections_iterate_arrays() {
        assert_eq!(
            render("{{#c}}{{{ca}}}~{{/c}}", particle_data()),
            "first~second~"
        );
    }

    #[test]
    fn sections_render_truthy_values_once_and_enter_objects() {
        assert_eq!(render("{{#b}}yes{{/b}}", particle_data()), "yes");
        assert_eq!(render("{{#a}}{{{aa}}}{{/a}}", particle_data()), "x&y");
        assert_eq!(
            render(
                "{{#z}}no{{/z}}{{#n}}no{{/n}}{{#s}}no{{/s}}",
                particle_data()
            ),
            ""
        );
        // Outer names stay visible inside a section, as in mustache.
        assert_eq!(
            render("{{#c}}{{{ca}}}{{{b}}},{{/c}}", particle_data()),
            "firsttrue,secondtrue,"
        );
    }

    #[test]
    fn inverted_sections() {
        assert_eq!(render("{{^z}}Missing{{/z}}", particle_data()), "Missing");
        assert_eq!(render("{{^b}}Missing{{/b}}", particle_data()), "");
        assert_eq!(render("{{^c}}none{{/c}}", json!({"c": []})), "none");
    }

    #[test]
    fn nested_sections() {
        let data = json!({"rows": [{"cells": [1, 2]}, {"cells": [3]}]});
        assert_eq!(
            render("{{#rows}}[{{#cells}}{{.}}{{/cells}}]{{/rows}}", data),
            "[12][3]"
        );
    }

    #[test]
    fn missing_variables_render_empty() {
        assert_eq!(render("a{{nope}}b{{{no.pe.0}}}c", json!({})), "abc");
    }

    #[test]
    fn builtin_helper_names_are_plain_variables() {
        assert_eq!(
            render(
                "{{len}}/{{log}}/{{if}}",
                json!({"len": 3, "log": "x", "if": "y"})
            ),
            "3/x/y"
        );
    }

    #[test]
    fn literal_templates_skip_the_engine() {
        let t = Template::compile("https://example.com/plain").unwrap();
        assert!(t.is_literal());
        assert!(!Template::compile("{{x}}").unwrap().is_literal());
    }

    #[test]
    fn broken_sections_are_refused_with_the_reason() {
        assert_eq!(
            Template::compile("{{#a}}x").unwrap_err(),
            TemplateError::Unclosed("a".into())
        );
        assert_eq!(
            Template::compile("{{#a}}x{{/b}}").unwrap_err().to_string(),
            "{{/b}} closes a section that was not opened (expected {{/a}})"
        );
        assert!(matches!(
            Template::compile("{{x"),
            Err(TemplateError::Parse(_))
        ));
    }

    proptest! {
        /// Text without tags renders to itself.
        #[test]
        fn plain_text_is_unchanged(s in "[^{}]{0,64}") {
            prop_assert_eq!(render(&s, json!({})), s);
        }

        /// Templates of text and plain variables (looked up directly) render
        /// exactly as handlebars renders them, whatever the values; text
        /// with braces or backslashes either takes the same path or goes to
        /// handlebars.
        #[test]
        fn the_direct_path_agrees_with_handlebars(
            pieces in prop::collection::vec((
                "[a-z /:&]{0,4}|[a-z{}\\\\~.!]{0,4}",
                any::<bool>(),
                prop::sample::select(vec!["v", "a.aa", "c.0.ca", "c.1", "c", "n", "f", "b", "z", "c.9", "a.aa.x", "nul", "len", "v.0"]),
            ), 1..4),
            tail in "[a-z /]{0,4}",
            v in "\\PC{0,16}",
        ) {
            let data = json!({"v": v, "a": {"aa": "x&y"}, "c": [{"ca": "<1>"}, 7], "n": 0,
                              "f": 2.5, "b": false, "nul": null, "len": [1, 2]});
            let mut source = String::new();
            let mut plain = true;
            for (text, raw, path) in &pieces {
                plain &= text.chars().all(|c| c.is_ascii_lowercase() || " /:&".contains(c));
                source.push_str(text);
                source.push_str(&if *raw { format!("{{{{{{{path}}}}}}}") } else { format!("{{{{{path}}}}}") });
            }
            source.push_str(&tail);
            let Ok(t) = Template::compile(&source) else { return Ok(()) };
            if plain {
                prop_assert!(matches!(t, Template::Direct(_)), "{} takes the direct path", source);
            }
            let ctx = Context::wraps(data).unwrap();
            let by_handlebars = match &t {
                Template::Direct(d) => render_compiled(&d.compiled, &ctx).unwrap(),
                Template::Compiled(c) => render_compiled(c, &ctx).unwrap(),
                Template::Literal(s) => s.clone(),
            };
            prop_assert_eq!(t.render(&ctx).unwrap(), by_handlebars);
        }

        /// Any string value inserted with a triple-stache comes out unchanged,
        /// and with a double-stache comes out escaped.
        #[test]
        fn values_are_inserted_exactly(v in "\\PC{0,64}") {
            prop_assert_eq!(render("{{{v}}}", json!({"v": v.clone()})), v.clone());
            prop_assert_eq!(render("{{v}}", json!({"v": v.clone()})), escape_html(&v));
        }
    }
}
