//! Templates: mustache, as a closed and bounded language.
//!
//! In: a template string as users wrote it for Particle (mustache) and the
//! [`TemplateLimits`] in force. Out: a [`Template`] compiled once at load and
//! rendered per event against its [`Variables`] (looked up by name as the
//! template asks for them).
//!
//! The language is mustache's and nothing else: variables `{{x}}` (escaped)
//! and `{{{x}}}` / `{{& x}}` (raw), dot paths with array indices (`c.0.ca`),
//! the implicit iterator `{{.}}`, sections `{{#x}}…{{/x}}`, inverted sections
//! `{{^x}}…{{/x}}` and comments `{{! … }}`. Anything else a template engine
//! might run (partials, inline partials, decorators, raw blocks, helper calls,
//! subexpressions, delimiter changes, `{{else}}`) is refused at compile time
//! with the tag and the feature named: tenants write these templates and
//! devices fill them, so nothing in them may recurse, call out or grow
//! without a bound.
//!
//! Failure modes:
//! - compile ([`TemplateError`]): bad syntax, an unsupported feature, a
//!   template over `max_template_bytes`, sections nested deeper than
//!   `max_section_depth`. Compiling is one pass over the source, linear in
//!   its size.
//! - render ([`RenderError`]): output over `max_output_bytes`, or more than
//!   `max_render_steps` steps (a tag or text piece visited, a section's
//!   repetition, a scope or path segment looked through, an array item
//!   shown): the work device data can cause. The same bounds hold for all the
//!   renders of one event together ([`Budget`], `max_event_*`), so many
//!   fields or many integrations cannot multiply them. Missing data never
//!   fails: a missing variable renders empty, as in mustache.
//!
//! Standalone lines are mustache's: a line holding only a section, inverted
//! section, closing or comment tag (and whitespace) is left out whole, so a
//! template laid out one tag per line renders no blank lines.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::Deserialize;
use serde_json::{Map, Value};
use std::num::{NonZeroU32, NonZeroUsize};

/// Config `[templates]`: the bounds every integration's templates are
/// compiled and rendered under. Checked where records are validated (the
/// api, the config log, the file source, `hookd render`), so a template
/// over a bound is refused before any worker runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateLimits {
    /// Bytes of one template (one field, one key or value of an object).
    #[serde(deserialize_with = "at_least_one")]
    pub max_template_bytes: NonZeroUsize,
    /// Bytes of all of one integration's templates together.
    #[serde(deserialize_with = "at_least_one")]
    pub max_integration_bytes: NonZeroUsize,
    /// Sections inside sections. Rendering recurses once per level, so this
    /// also bounds the stack a render uses.
    #[serde(deserialize_with = "at_least_one")]
    pub max_section_depth: NonZeroUsize,
    /// Bytes one template may render to.
    #[serde(deserialize_with = "at_least_one")]
    pub max_output_bytes: NonZeroUsize,
    /// Steps one render may take: every tag and text piece visited, every
    /// repetition of a section over an array, every scope and path segment
    /// looked through, every array item shown. The work a device's data can
    /// cause.
    #[serde(deserialize_with = "at_least_one")]
    pub max_render_steps: NonZeroUsize,
    /// Steps all the renders of one event may take together (every field of
    /// every integration it fires).
    #[serde(deserialize_with = "at_least_one")]
    pub max_event_render_steps: NonZeroUsize,
    /// Bytes all the renders of one event may produce together.
    #[serde(deserialize_with = "at_least_one")]
    pub max_event_output_bytes: NonZeroUsize,
}

impl Default for TemplateLimits {
    fn default() -> TemplateLimits {
        TemplateLimits {
            max_template_bytes: nonzero(64 * 1024),
            max_integration_bytes: nonzero(256 * 1024),
            max_section_depth: nonzero(16),
            max_output_bytes: nonzero(1024 * 1024),
            max_render_steps: nonzero(100_000),
            max_event_render_steps: nonzero(1_000_000),
            max_event_output_bytes: nonzero(4 * 1024 * 1024),
        }
    }
}

/// `n`, known not to be zero.
const fn nonzero(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => panic!("a default limit is never 0"),
    }
}

/// A count that must be at least 1: refused at load, naming the value, in
/// the words the config's own checks use.
pub(crate) fn at_least_one<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<NonZeroUsize, D::Error> {
    let n = usize::deserialize(d)?;
    NonZeroUsize::new(n)
        .ok_or_else(|| serde::de::Error::custom(format!("must be at least 1, got {n}")))
}

/// As [`at_least_one`], for a `u32`.
pub(crate) fn at_least_one_u32<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<NonZeroU32, D::Error> {
    let n = u32::deserialize(d)?;
    NonZeroU32::new(n)
        .ok_or_else(|| serde::de::Error::custom(format!("must be at least 1, got {n}")))
}

/// Hard ceiling on `max_section_depth`: the renderer recurses once per level
/// on a runtime thread's stack.
pub(crate) const MAX_SECTION_DEPTH_CEILING: usize = 128;

/// Segments one variable name may have (`a.b.0` has 3).
pub(crate) const MAX_PATH_SEGMENTS: usize = 32;

/// A template that cannot be compiled, with what was wrong. Tags are quoted
/// cut to `QUOTE_LIMIT` characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("section {{{{#{0}}}}} is never closed")]
    Unclosed(String),
    #[error("{{{{/{found}}}}} closes a section that was not opened (expected {expected})")]
    Mismatched { found: String, expected: String },
    #[error("{0}")]
    Parse(String),
    #[error("{tag}: {feature} are not supported (templates are mustache: variables, sections, inverted sections and comments)")]
    Unsupported { tag: String, feature: &'static str },
    #[error(
        "{tag}: {name:?} is not a variable name (letters, digits and _ - $ @ : separated by dots, at most 32 segments)"
    )]
    BadName { tag: String, name: String },
    #[error("sections are nested deeper than {max} levels (templates.max_section_depth)")]
    TooDeep { max: usize },
    #[error("{bytes} bytes is over the limit of {max} bytes per template (templates.max_template_bytes)")]
    TooLarge { bytes: usize, max: usize },
}

/// A render stopped at one of its bounds. The messages never quote data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("the output would exceed {max} bytes (templates.max_output_bytes)")]
    OutputTooLarge { max: usize },
    #[error("the template takes more than {max} steps over the event's data (templates.max_render_steps): sections repeat too often")]
    TooManySteps { max: usize },
    #[error("the event's templates together would produce more than {max} bytes (templates.max_event_output_bytes)")]
    EventOutputTooLarge { max: usize },
    #[error("the event's templates together take more than {max} steps (templates.max_event_render_steps)")]
    EventTooManySteps { max: usize },
}

/// What the renders of one event have spent together, against the event's
/// bounds (`max_event_render_steps`, `max_event_output_bytes`). Shared by
/// every render against one event's [`Variables`]. Atomics, for `Sync`; but charged with a
/// load and a store rather than a locked add: an event's renders run in its
/// one task, one at a time, and a locked add per template rendered cost
/// 15 % of a 10-field JSON body.
#[derive(Debug)]
pub struct Budget {
    steps: AtomicUsize,
    bytes: AtomicUsize,
    max_steps: usize,
    max_bytes: usize,
}

impl Budget {
    pub fn new(limits: &TemplateLimits) -> Budget {
        Budget {
            steps: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_steps: limits.max_event_render_steps.get(),
            max_bytes: limits.max_event_output_bytes.get(),
        }
    }

    fn left(&self) -> (usize, usize) {
        (
            self.max_steps
                .saturating_sub(self.steps.load(Ordering::Relaxed)),
            self.max_bytes
                .saturating_sub(self.bytes.load(Ordering::Relaxed)),
        )
    }

    fn charge(&self, steps: usize, bytes: usize) {
        let add = |spent: &AtomicUsize, n: usize| {
            spent.store(
                spent.load(Ordering::Relaxed).saturating_add(n),
                Ordering::Relaxed,
            )
        };
        add(&self.steps, steps);
        add(&self.bytes, bytes);
    }
}

/// Characters of a tag quoted in an error.
const QUOTE_LIMIT: usize = 40;

/// A compiled template. Text without tags is kept as it is.
#[derive(Debug, Clone)]
pub enum Template {
    Literal(String),
    /// Shared: integrations repeat the same templates (the defaults, common
    /// variables), and within a config ([`TemplateCache`]) each distinct
    /// source is compiled once while in use.
    Compiled(Arc<Compiled>),
}

/// The parsed nodes of a template with tags, and the bounds it renders under.
#[derive(Debug)]
pub struct Compiled {
    nodes: Box<[Node]>,
    /// Bytes of text, to size the output once.
    text_len: usize,
    max_output_bytes: usize,
    max_render_steps: usize,
}

#[derive(Debug)]
enum Node {
    Text(Box<str>),
    /// `{{x}}` escapes HTML (`escape`); `{{{x}}}` and `{{& x}}` do not.
    Variable {
        path: VarPath,
        escape: bool,
    },
    Section {
        path: VarPath,
        inverted: bool,
        body: Box<[Node]>,
    },
}

/// The segments of `a.b.0`; none for the implicit iterator `.`.
#[derive(Debug)]
struct VarPath(Box<[Box<str>]>);

/// Where template variables come from: the value of a top-level name, and
/// the budget the renders in this scope share (an event's).
pub trait Variables {
    fn lookup(&self, name: &str) -> Option<Found<'_>>;

    /// `None`: only each template's own bounds apply.
    fn budget(&self) -> Option<&Budget> {
        None
    }
}

/// A variable's value: text, or JSON (event data keys) to go into.
pub enum Found<'a> {
    Text(Cow<'a, str>),
    Json(&'a Value),
}

/// A JSON object's keys as variables (tests, response templates).
impl Variables for Map<String, Value> {
    fn lookup(&self, name: &str) -> Option<Found<'_>> {
        self.get(name).map(Found::Json)
    }
}

impl Variables for Value {
    fn lookup(&self, name: &str) -> Option<Found<'_>> {
        match self {
            Value::Object(map) => map.lookup(name),
            _ => None,
        }
    }
}

impl Template {
    /// Compiles `source` under the default [`TemplateLimits`].
    pub fn compile(source: &str) -> Result<Template, TemplateError> {
        Template::compile_with(source, &TemplateLimits::default())
    }

    /// Compiles `source` under `limits`, on its own.
    pub fn compile_with(source: &str, limits: &TemplateLimits) -> Result<Template, TemplateError> {
        Template::compile_cached(source, limits, None)
    }

    fn compile_cached(
        source: &str,
        limits: &TemplateLimits,
        cache: Option<&TemplateCache>,
    ) -> Result<Template, TemplateError> {
        if source.len() > limits.max_template_bytes.get() {
            return Err(TemplateError::TooLarge {
                bytes: source.len(),
                max: limits.max_template_bytes.get(),
            });
        }
        if !source.contains("{{") {
            return Ok(Template::Literal(source.to_owned()));
        }
        let key = (*limits, source.to_owned());
        if let Some(c) = cache.and_then(|c| c.get(&key)) {
            return Ok(Template::Compiled(c));
        }
        let nodes = parse(source, limits.max_section_depth.get())?;
        if nodes.is_empty() {
            return Ok(Template::Literal(String::new()));
        }
        if let [Node::Text(t)] = &nodes[..] {
            // Only comments besides the text.
            return Ok(Template::Literal(t.to_string()));
        }
        let compiled = Arc::new(Compiled {
            text_len: text_len(&nodes),
            nodes: nodes.into_boxed_slice(),
            max_output_bytes: limits.max_output_bytes.get(),
            max_render_steps: limits.max_render_steps.get(),
        });
        if let Some(c) = cache {
            c.insert(key, &compiled);
        }
        Ok(Template::Compiled(compiled))
    }

    /// True when the output does not depend on the event.
    pub fn is_literal(&self) -> bool {
        matches!(self, Template::Literal(_))
    }

    /// The text every output starts with (the text before the first tag).
    pub fn leading_text(&self) -> Option<&str> {
        match self {
            Template::Compiled(c) => match c.nodes.first() {
                Some(Node::Text(t)) => Some(t),
                _ => None,
            },
            Template::Literal(_) => None,
        }
    }

    pub fn render(&self, scope: &(impl Variables + ?Sized)) -> Result<String, RenderError> {
        match self {
            Template::Literal(s) => Ok(s.clone()),
            Template::Compiled(c) => {
                let budget = scope.budget();
                let (steps_left, bytes_left) =
                    budget.map_or((usize::MAX, usize::MAX), Budget::left);
                let mut r = Renderer {
                    scope,
                    out: String::with_capacity(c.text_len + 32),
                    steps: 0,
                    max_steps: c.max_render_steps.min(steps_left),
                    max_output: c.max_output_bytes.min(bytes_left),
                };
                let rendered = r.nodes(&c.nodes, None);
                if let Some(b) = budget {
                    b.charge(r.steps, r.out.len());
                }
                match rendered {
                    Ok(()) => Ok(r.out),
                    // Which bound ran out: the template's or the event's.
                    Err(RenderError::TooManySteps { .. }) if steps_left < c.max_render_steps => {
                        Err(RenderError::EventTooManySteps {
                            max: budget.map_or(0, |b| b.max_steps),
                        })
                    }
                    Err(RenderError::OutputTooLarge { .. }) if bytes_left < c.max_output_bytes => {
                        Err(RenderError::EventOutputTooLarge {
                            max: budget.map_or(0, |b| b.max_bytes),
                        })
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

fn text_len(nodes: &[Node]) -> usize {
    nodes
        .iter()
        .map(|n| match n {
            Node::Text(t) => t.len(),
            Node::Variable { .. } | Node::Section { .. } => 0,
        })
        .sum()
}

/// A section being filled: its nodes so far, and how it was opened.
struct Open {
    nodes: Vec<Node>,
    name: String,
    path: VarPath,
    inverted: bool,
}

/// One pass over the source; sections are kept on an explicit stack, so
/// parsing never recurses.
fn parse(source: &str, max_depth: usize) -> Result<Vec<Node>, TemplateError> {
    let max_depth = max_depth.min(MAX_SECTION_DEPTH_CEILING);
    let mut open: Vec<Open> = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut text = String::new();
    let mut rest = source;
    // Whether the current line holds only whitespace so far: a section,
    // closing or comment tag alone on its line is standalone.
    let mut line_blank = true;
    while let Some(start) = rest.find("{{") {
        let before = &rest[..start];
        line_blank = match before.rfind('\n') {
            Some(nl) => is_blank(&before[nl + 1..]),
            None => line_blank && is_blank(before),
        };
        text.push_str(before);
        let tag_and_rest = &rest[start..];
        let (tag, inner, raw) = if tag_and_rest.starts_with("{{{{") {
            return Err(unsupported(tag_and_rest, "raw blocks"));
        } else if let Some(body) = tag_and_rest.strip_prefix("{{{") {
            let end = body
                .find("}}}")
                .ok_or_else(|| unterminated(tag_and_rest, "}}}"))?;
            (&tag_and_rest[..3 + end + 3], &body[..end], true)
        } else {
            let body = &tag_and_rest[2..];
            let end = body
                .find("}}")
                .ok_or_else(|| unterminated(tag_and_rest, "}}"))?;
            (&tag_and_rest[..2 + end + 2], &body[..end], false)
        };
        rest = &tag_and_rest[tag.len()..];
        let sigil = inner.chars().next();
        let standalone = !raw
            && matches!(sigil, Some('!' | '#' | '^' | '/'))
            && line_blank
            && line_end(rest).is_some();
        if standalone {
            // The line goes whole: its indentation and its line break.
            let indent = text.trim_end_matches([' ', '\t']).len();
            text.truncate(indent);
            let after = rest.trim_start_matches([' ', '\t']);
            rest = &after[line_end(rest).unwrap_or(0)..];
        }
        line_blank = standalone;
        if raw {
            flush(&mut text, &mut nodes);
            nodes.push(Node::Variable {
                path: var_path(tag, inner)?,
                escape: false,
            });
            continue;
        }
        let after = inner.get(1..).unwrap_or("");
        match sigil {
            Some('!') => {} // A comment renders nothing.
            Some('>') => return Err(unsupported(tag, "partials")),
            Some('=') => return Err(unsupported(tag, "delimiter changes")),
            Some('*') => return Err(unsupported(tag, "decorators")),
            Some('#') if after.starts_with('*') => {
                return Err(unsupported(tag, "decorators and inline partials"))
            }
            Some('#') if after.starts_with('>') => return Err(unsupported(tag, "partial blocks")),
            Some('#' | '^') => {
                if open.len() >= max_depth {
                    return Err(TemplateError::TooDeep { max: max_depth });
                }
                let name = after.trim();
                let path = var_path(tag, after)?;
                flush(&mut text, &mut nodes);
                open.push(Open {
                    nodes: std::mem::take(&mut nodes),
                    name: name.to_owned(),
                    path,
                    inverted: sigil == Some('^'),
                });
            }
            Some('/') => {
                let name = after.trim();
                let Some(section) = open.pop() else {
                    return Err(TemplateError::Mismatched {
                        found: quote(name),
                        expected: "no closing tag".to_owned(),
                    });
                };
                if section.name != name {
                    return Err(TemplateError::Mismatched {
                        found: quote(name),
                        expected: format!("{{{{/{}}}}}", quote(&section.name)),
                    });
                }
                flush(&mut text, &mut nodes);
                let body = std::mem::replace(&mut nodes, section.nodes);
                nodes.push(Node::Section {
                    path: section.path,
                    inverted: section.inverted,
                    body: body.into_boxed_slice(),
                });
            }
            Some('&') => {
                flush(&mut text, &mut nodes);
                nodes.push(Node::Variable {
                    path: var_path(tag, after)?,
                    escape: false,
                });
            }
            _ => {
                flush(&mut text, &mut nodes);
                nodes.push(Node::Variable {
                    path: var_path(tag, inner)?,
                    escape: true,
                });
            }
        }
    }
    text.push_str(rest);
    if let Some(section) = open.pop() {
        return Err(TemplateError::Unclosed(quote(&section.name)));
    }
    flush(&mut text, &mut nodes);
    Ok(nodes)
}

/// Only spaces and tabs.
fn is_blank(s: &str) -> bool {
    s.bytes().all(|b| b == b' ' || b == b'\t')
}

/// When `rest` (what follows a tag) is blank up to the end of its line: the
/// length of the line break after the blanks (0 at the end of the template).
fn line_end(rest: &str) -> Option<usize> {
    let after = rest.trim_start_matches([' ', '\t']);
    if after.is_empty() {
        Some(0)
    } else if after.starts_with("\r\n") {
        Some(2)
    } else if after.starts_with('\n') {
        Some(1)
    } else {
        None
    }
}

/// Ends the text run so far as a node.
fn flush(text: &mut String, nodes: &mut Vec<Node>) {
    if !text.is_empty() {
        nodes.push(Node::Text(std::mem::take(text).into_boxed_str()));
    }
}

fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_LIMIT) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn unsupported(tag: &str, feature: &'static str) -> TemplateError {
    TemplateError::Unsupported {
        tag: quote(tag),
        feature,
    }
}

fn unterminated(tag: &str, close: &str) -> TemplateError {
    TemplateError::Parse(format!("{} is never closed with {close}", quote(tag)))
}

/// The path a tag names: `.` (or `this`) for the current item, else dot
/// separated segments. A name with spaces is a helper call or a block
/// parameter in other engines; `else` is handlebars' inverse.
fn var_path(tag: &str, inner: &str) -> Result<VarPath, TemplateError> {
    let name = inner.trim();
    if name == "." || name == "this" {
        return Ok(VarPath(Box::new([])));
    }
    if name == "else" {
        return Err(unsupported(
            tag,
            "{{else}} blocks (use an inverted section {{^x}})",
        ));
    }
    if name.contains(char::is_whitespace) || name.contains('(') {
        return Err(unsupported(tag, "helpers and arguments"));
    }
    if name.starts_with('~') || name.ends_with('~') {
        return Err(unsupported(tag, "whitespace controls (~)"));
    }
    let bad = || TemplateError::BadName {
        tag: quote(tag),
        name: quote(name),
    };
    // Handlebars' `this.x` is the current scope's `x`: mustache's lookup
    // finds it there first.
    let name = name.strip_prefix("this.").unwrap_or(name);
    if name.split('.').count() > MAX_PATH_SEGMENTS {
        return Err(bad());
    }
    let segments: Vec<Box<str>> = name.split('.').map(Box::from).collect();
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '$' | '@' | ':'))
    };
    if !segments.iter().all(|s| plain(s)) {
        return Err(bad());
    }
    Ok(VarPath(segments.into_boxed_slice()))
}

/// One value a section entered: what `{{.}}` and names inside it see first.
#[derive(Clone, Copy)]
enum Frame<'v> {
    Json(&'v Value),
    Text(&'v str),
}

/// The sections entered, innermost first, as a list on the call stack.
struct Stack<'v> {
    frame: Frame<'v>,
    parent: Option<&'v Stack<'v>>,
}

struct Renderer<'s, S: ?Sized> {
    scope: &'s S,
    out: String,
    steps: usize,
    max_steps: usize,
    max_output: usize,
}

impl<'s, S: Variables + ?Sized> Renderer<'s, S> {
    fn step(&mut self) -> Result<(), RenderError> {
        self.steps += 1;
        if self.steps > self.max_steps {
            return Err(RenderError::TooManySteps {
                max: self.max_steps,
            });
        }
        Ok(())
    }

    fn write(&mut self, text: &str, escape: bool) -> Result<(), RenderError> {
        // Checked before escaping too: escaping at most sextuples the text,
        // so a huge value is refused before it is copied.
        if self.out.len() + text.len() > self.max_output {
            return Err(RenderError::OutputTooLarge {
                max: self.max_output,
            });
        }
        if escape {
            escape_html_into(&mut self.out, text);
        } else {
            self.out.push_str(text);
        }
        if self.out.len() > self.max_output {
            return Err(RenderError::OutputTooLarge {
                max: self.max_output,
            });
        }
        Ok(())
    }

    /// A JSON value as a variable shows it: strings as they are, numbers
    /// and booleans as JSON writes them, null as nothing, arrays as
    /// `[a, b]`, objects as `[object]`. Each array item is a step, and the
    /// output bound is checked as it grows. Recursion follows the value's
    /// nesting, which JSON parsing bounds (128 levels).
    fn write_value(&mut self, v: &Value, escape: bool) -> Result<(), RenderError> {
        match v {
            Value::String(s) => self.write(s, escape),
            Value::Null => Ok(()),
            Value::Bool(b) => self.write(if *b { "true" } else { "false" }, escape),
            Value::Number(n) => self.write(&n.to_string(), escape),
            Value::Object(_) => self.write("[object]", escape),
            Value::Array(items) => {
                self.write("[", escape)?;
                for (i, item) in items.iter().enumerate() {
                    self.step()?;
                    if i > 0 {
                        self.write(", ", escape)?;
                    }
                    self.write_value(item, escape)?;
                }
                self.write("]", escape)
            }
        }
    }

    fn nodes<'v>(&mut self, nodes: &[Node], stack: Option<&Stack<'v>>) -> Result<(), RenderError>
    where
        's: 'v,
    {
        for node in nodes {
            self.step()?;
            match node {
                Node::Text(t) => self.write(t, false)?,
                Node::Variable { path, escape } => match self.lookup(path, stack)? {
                    None => {}
                    Some(Found::Text(s)) => self.write(&s, *escape)?,
                    Some(Found::Json(v)) => self.write_value(v, *escape)?,
                },
                Node::Section {
                    path,
                    inverted,
                    body,
                } => {
                    let found = self.lookup(path, stack)?;
                    let truthy = match &found {
                        None => false,
                        Some(Found::Text(s)) => !s.is_empty(),
                        Some(Found::Json(v)) => truthy(v),
                    };
                    if *inverted || !truthy {
                        if *inverted && !truthy {
                            self.nodes(body, stack)?;
                        }
                        continue;
                    }
                    match &found {
                        Some(Found::Json(Value::Array(items))) => {
                            for item in items {
                                self.step()?;
                                let inner = Stack {
                                    frame: Frame::Json(item),
                                    parent: stack,
                                };
                                self.nodes(body, Some(&inner))?;
                            }
                        }
                        // `true` renders the block once in the same scope.
                        Some(Found::Json(Value::Bool(_))) => self.nodes(body, stack)?,
                        Some(Found::Json(v)) => {
                            let inner = Stack {
                                frame: Frame::Json(v),
                                parent: stack,
                            };
                            self.nodes(body, Some(&inner))?;
                        }
                        Some(Found::Text(s)) => {
                            let inner = Stack {
                                frame: Frame::Text(s),
                                parent: stack,
                            };
                            self.nodes(body, Some(&inner))?;
                        }
                        None => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Mustache's lookup: the whole path is tried in the innermost section's
    /// value first, then outwards, and last in the scope's variables. Every
    /// scope tried and every segment followed is a step: a deep path inside
    /// deep sections costs what it does.
    fn lookup<'v>(
        &mut self,
        path: &VarPath,
        stack: Option<&Stack<'v>>,
    ) -> Result<Option<Found<'v>>, RenderError>
    where
        's: 'v,
    {
        let segments = &path.0[..];
        if segments.is_empty() {
            return Ok(stack.map(|s| match s.frame {
                Frame::Json(v) => Found::Json(v),
                Frame::Text(t) => Found::Text(Cow::Borrowed(t)),
            }));
        }
        let mut at = stack;
        while let Some(s) = at {
            self.step()?;
            if let Frame::Json(v) = s.frame {
                if let Some(found) = self.navigate(v, segments)? {
                    return Ok(Some(Found::Json(found)));
                }
            }
            at = s.parent;
        }
        let scope: &'s S = self.scope;
        Ok(match scope.lookup(&segments[0]) {
            None => None,
            Some(Found::Text(t)) if segments.len() == 1 => Some(Found::Text(t)),
            // There is nothing inside a string.
            Some(Found::Text(_)) => None,
            Some(Found::Json(v)) => self.navigate(v, &segments[1..])?.map(Found::Json),
        })
    }

    fn navigate<'v>(
        &mut self,
        mut at: &'v Value,
        path: &[Box<str>],
    ) -> Result<Option<&'v Value>, RenderError> {
        for segment in path {
            self.step()?;
            let next = match at {
                Value::Object(map) => map.get(&**segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(v) => at = v,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }
}

/// Mustache truthiness: false, null, 0, "" and [] are falsy (as mustache.js);
/// an object, even empty, is truthy.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(_) => true,
    }
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

/// Compiled templates by limits and source, shared by the integrations of
/// one config (a config log's readers, a file source), so that a template
/// many integrations repeat is compiled and held once. Entries are weak: a
/// template no integration uses any more is freed with its last
/// integration, and its entry pruned on a later insert. Clones share the
/// cache.
#[derive(Clone, Default)]
pub struct TemplateCache(Arc<Mutex<Cache>>);

#[derive(Default)]
struct Cache {
    entries: HashMap<(TemplateLimits, String), Weak<Compiled>>,
    /// Entries left after the last prune; the next prune comes when the map
    /// has doubled, so pruning costs O(1) per insert.
    live_after_prune: usize,
}

impl std::fmt::Debug for TemplateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (live, all) = self.stats();
        f.debug_struct("TemplateCache")
            .field("live", &live)
            .field("entries", &all)
            .finish()
    }
}

impl TemplateCache {
    /// Compiles `source` under `limits`, or gives back the copy compiled
    /// earlier while some integration still holds it.
    pub fn compile(
        &self,
        source: &str,
        limits: &TemplateLimits,
    ) -> Result<Template, TemplateError> {
        Template::compile_cached(source, limits, Some(self))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &(TemplateLimits, String)) -> Option<Arc<Compiled>> {
        self.lock().entries.get(key).and_then(Weak::upgrade)
    }

    fn insert(&self, key: (TemplateLimits, String), compiled: &Arc<Compiled>) {
        let mut cache = self.lock();
        if cache.entries.len() >= (2 * cache.live_after_prune).max(1024) {
            cache.entries.retain(|_, w| w.strong_count() > 0);
            cache.live_after_prune = cache.entries.len();
        }
        cache.entries.insert(key, Arc::downgrade(compiled));
    }

    /// Entries whose template is still in use, and all entries.
    pub fn stats(&self) -> (usize, usize) {
        let cache = self.lock();
        let live = cache
            .entries
            .values()
            .filter(|w| w.strong_count() > 0)
            .count();
        (live, cache.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn render(template: &str, data: Value) -> String {
        Template::compile(template)
            .unwrap_or_else(|e| panic!("{template}: {e}"))
            .render(&data)
            .unwrap()
    }

    fn particle_data() -> Value {
        json!({"a": {"aa": "x&y"}, "b": true, "c": [{"ca": "first"}, {"ca": "second"}], "n": 0, "s": ""})
    }

    fn refusal(template: &str) -> String {
        Template::compile(template)
            .map(|_| ())
            .expect_err(template)
            .to_string()
    }

    #[test]
    fn double_stache_escapes_the_five_html_characters() {
        assert_eq!(
            render("{{v}}", json!({"v": "<a href=\"x\">'&'</a> / ` ="})),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt; / ` ="
        );
    }

    #[test]
    fn triple_stache_and_ampersand_insert_raw() {
        assert_eq!(render("{{{v}}}", json!({"v": "<b>&</b>"})), "<b>&</b>");
        assert_eq!(render("{{& v}}", json!({"v": "<b>&</b>"})), "<b>&</b>");
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
    fn values_that_are_not_text() {
        let data = json!({"n": 2.5, "t": true, "z": null, "a": [1, "x", [2]], "o": {"k": 1}});
        assert_eq!(
            render("{{n}}|{{t}}|{{z}}|{{a}}|{{o}}", data),
            "2.5|true||[1, x, [2]]|[object]"
        );
    }

    #[test]
    fn a_full_path_falls_back_to_outer_scopes() {
        // Inside `c`'s items, `a.aa` is not found in the item, so the
        // lookup goes on outwards, as mustache.js does.
        assert_eq!(
            render("{{#c}}{{a.aa}};{{/c}}", particle_data()),
            "x&amp;y;x&amp;y;"
        );
    }

    #[test]
    fn names_of_other_engines_helpers_are_plain_variables() {
        assert_eq!(
            render(
                "{{len}}/{{log}}/{{if}}/{{each}}",
                json!({"len": 3, "log": "x", "if": "y", "each": "z"})
            ),
            "3/x/y/z"
        );
    }

    #[test]
    fn comments_render_nothing() {
        let t = Template::compile("a{{! a note }}b").unwrap();
        assert!(t.is_literal());
        assert_eq!(t.render(&json!({})).unwrap(), "ab");
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

    #[test]
    fn every_other_engine_feature_is_refused_by_name() {
        for (template, feature) in [
            (
                r#"{{#*inline "p"}}{{> p}}{{~/inline}}{{> p}}"#,
                "inline partials",
            ),
            ("{{> p}}", "partials are not supported"),
            ("{{#> layout}}x{{/layout}}", "partial blocks"),
            ("{{> (lookup . 'x')}}", "partials"),
            ("{{*decorator}}", "decorators"),
            ("{{{{raw}}}}{{x}}{{{{/raw}}}}", "raw blocks"),
            ("{{#each items}}{{this}}{{/each}}", "helpers and arguments"),
            ("{{#if a}}x{{/if}}", "helpers and arguments"),
            ("{{lookup a 'b'}}", "helpers and arguments"),
            ("{{x (y z)}}", "helpers and arguments"),
            ("{{(y)}}", "helpers and arguments"),
            ("{{#a}}x{{else}}y{{/a}}", "{{else}}"),
            ("{{=<% %>=}}", "delimiter changes"),
            ("{{~x~}}", "whitespace controls"),
            ("{{#with a as |b|}}{{/with}}", "helpers and arguments"),
        ] {
            let message = refusal(template);
            assert!(message.contains(feature), "{template}: {message}");
            assert!(message.contains("not supported"), "{template}: {message}");
        }
        assert!(refusal("{{../x}}").contains("is not a variable name"));
        assert!(refusal("{{a..b}}").contains("is not a variable name"));
        assert!(refusal("{{[a b]}}").contains("not supported"));
    }

    #[test]
    fn size_and_depth_are_bounded_at_compile() {
        let limits = TemplateLimits {
            max_template_bytes: nonzero(100),
            max_section_depth: nonzero(3),
            ..TemplateLimits::default()
        };
        let big = "x".repeat(101);
        assert_eq!(
            Template::compile_with(&big, &limits).unwrap_err(),
            TemplateError::TooLarge {
                bytes: 101,
                max: 100
            }
        );
        assert!(Template::compile_with("{{#a}}{{#b}}{{#c}}x{{/c}}{{/b}}{{/a}}", &limits).is_ok());
        assert_eq!(
            Template::compile_with("{{#a}}{{#b}}{{#c}}{{#d}}x{{/d}}{{/c}}{{/b}}{{/a}}", &limits)
                .unwrap_err()
                .to_string(),
            "sections are nested deeper than 3 levels (templates.max_section_depth)"
        );
        // Ten thousand nested sections: refused at once, parsing never recurses.
        let deep = "{{#a}}".repeat(10_000) + &"{{/a}}".repeat(10_000);
        let limits = TemplateLimits {
            max_template_bytes: NonZeroUsize::MAX,
            ..TemplateLimits::default()
        };
        assert!(matches!(
            Template::compile_with(&deep, &limits),
            Err(TemplateError::TooDeep { max: 16 })
        ));
    }

    #[test]
    fn nested_sections_over_device_arrays_stop_at_the_step_budget() {
        let limits = TemplateLimits {
            max_render_steps: nonzero(10_000),
            ..TemplateLimits::default()
        };
        let t = Template::compile_with("{{#a}}{{#a}}{{#a}}x{{/a}}{{/a}}{{/a}}", &limits).unwrap();
        let items: Vec<Value> = (0..100).map(|i| json!({ "i": i })).collect();
        // 100³ repetitions: stopped, not rendered.
        assert_eq!(
            t.render(&json!({ "a": items })).unwrap_err(),
            RenderError::TooManySteps { max: 10_000 }
        );
        // 10³ = 1000 fit.
        let items: Vec<Value> = (0..10).map(|i| json!({ "i": i })).collect();
        assert_eq!(t.render(&json!({ "a": items })).unwrap().len(), 1000);
    }

    #[test]
    fn output_is_bounded() {
        let limits = TemplateLimits {
            max_output_bytes: nonzero(1000),
            ..TemplateLimits::default()
        };
        let t = Template::compile_with("{{#a}}{{{v}}}{{/a}}", &limits).unwrap();
        let ok = json!({"a": [1, 2], "v": "x".repeat(400)});
        assert_eq!(t.render(&ok).unwrap().len(), 800);
        let too_much = json!({"a": [1, 2, 3], "v": "x".repeat(400)});
        assert_eq!(
            t.render(&too_much).unwrap_err(),
            RenderError::OutputTooLarge { max: 1000 }
        );
    }

    /// A scope with an event's budget over `data`.
    struct Event(Value, Budget);

    impl Variables for Event {
        fn lookup(&self, name: &str) -> Option<Found<'_>> {
            self.0.lookup(name)
        }
        fn budget(&self) -> Option<&Budget> {
            Some(&self.1)
        }
    }

    #[test]
    fn the_renders_of_one_event_share_its_budget() {
        let limits = TemplateLimits {
            max_output_bytes: nonzero(1000),
            max_event_output_bytes: nonzero(2500),
            ..TemplateLimits::default()
        };
        let t = Template::compile_with("{{{v}}}", &limits).unwrap();
        let event = Event(json!({"v": "x".repeat(900)}), Budget::new(&limits));
        // Each render fits its own bound; the third passes the event's.
        assert!(t.render(&event).is_ok());
        assert!(t.render(&event).is_ok());
        assert_eq!(
            t.render(&event).unwrap_err(),
            RenderError::EventOutputTooLarge { max: 2500 }
        );
        let limits = TemplateLimits {
            max_render_steps: nonzero(1000),
            max_event_render_steps: nonzero(1500),
            ..TemplateLimits::default()
        };
        let t = Template::compile_with("{{#a}}.{{/a}}", &limits).unwrap();
        let event = Event(json!({"a": vec![1; 300]}), Budget::new(&limits));
        assert!(t.render(&event).is_ok(), "about 600 steps");
        assert!(t.render(&event).is_ok(), "about 1200 steps in all");
        assert_eq!(
            t.render(&event).unwrap_err(),
            RenderError::EventTooManySteps { max: 1500 }
        );
    }

    #[test]
    fn lookups_and_shown_arrays_are_charged_as_steps() {
        let limits = TemplateLimits {
            max_render_steps: nonzero(1000),
            ..TemplateLimits::default()
        };
        // A 30-segment path inside 10 sections: a few lookups cost the lot.
        let mut nested = json!({"z": 1});
        for _ in 0..30 {
            nested = json!({ "a": nested });
        }
        let path = vec!["a"; 30].join(".");
        let source = format!(
            "{}{{{{{path}.q}}}}{}",
            "{{#r}}".repeat(3),
            "{{/r}}".repeat(3)
        );
        let t = Template::compile_with(&source, &limits).unwrap();
        let data = json!({"r": [{"r": [{"r": vec![1; 100]}]}], "a": nested["a"].clone()});
        assert_eq!(
            t.render(&data).unwrap_err(),
            RenderError::TooManySteps { max: 1000 }
        );
        // An array shown whole: an item a step.
        let t = Template::compile_with("{{a}}", &limits).unwrap();
        assert!(t.render(&json!({"a": vec![0; 900]})).is_ok());
        assert_eq!(
            t.render(&json!({"a": vec![0; 1100]})).unwrap_err(),
            RenderError::TooManySteps { max: 1000 }
        );
        assert!(refusal(&format!("{{{{{}}}}}", vec!["a"; 33].join(".")))
            .contains("at most 32 segments"));
    }

    #[test]
    fn standalone_tag_lines_are_left_out() {
        let data = json!({"r": [{"t": 1, "v": "a"}, {"t": 2, "v": "b"}]});
        assert_eq!(
            render(
                "head\n{{#r}}\n  {{t}},{{v}}\n{{/r}}\n{{! end }}\ntail\n",
                data.clone()
            ),
            "head\n  1,a\n  2,b\ntail\n"
        );
        // Indented, and with CRLF line breaks.
        assert_eq!(
            render("  {{#r}}\r\n{{t}}\r\n  {{/r}}\r\n", data.clone()),
            "1\r\n2\r\n"
        );
        // Not alone on its line: kept as it is.
        assert_eq!(render("a {{#r}}{{t}}{{/r}}\n", data.clone()), "a 12\n");
        assert_eq!(render("{{#r}}{{/r}}\n", json!({})), "\n");
        assert_eq!(render("x{{! c }}\ny", json!({})), "x\ny");
    }

    #[test]
    fn this_dot_names_the_current_scope() {
        assert_eq!(
            render("{{#c}}{{this.ca}};{{/c}}", particle_data()),
            "first;second;"
        );
    }

    #[test]
    fn templates_no_integration_holds_leave_the_cache() {
        let source = "{{a}}-only-in-this-test-{{b}}";
        let cache = TemplateCache::default();
        let limits = TemplateLimits::default();
        let t = cache.compile(source, &limits).unwrap();
        let again = cache.compile(source, &limits).unwrap();
        let (Template::Compiled(x), Template::Compiled(y)) = (&t, &again) else {
            panic!("compiled");
        };
        assert!(Arc::ptr_eq(x, y), "one compiled copy while in use");
        let weak = Arc::downgrade(x);
        drop((t, again));
        assert!(weak.upgrade().is_none(), "freed with its last holder");
        assert_eq!(cache.stats(), (0, 1), "an entry left to prune, none live");
        let alone = Template::compile(source).unwrap();
        assert_eq!(
            cache.stats(),
            (0, 1),
            "compiled on its own, outside the cache"
        );
        drop(alone);
    }

    proptest! {
        /// Text without tags renders to itself.
        #[test]
        fn plain_text_is_unchanged(s in "[^{}]{0,64}") {
            prop_assert_eq!(render(&s, json!({})), s);
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
