//! Request bodies: JSON written from a template straight into bytes, and
//! form bodies (`application/x-www-form-urlencoded`).

use bytes::Bytes;
use serde_json::Value;

use crate::model::integration::JsonTemplate;
use crate::model::request::RenderFailure;
use crate::model::variables::{json_value, EventContext};
use crate::template::Template;

pub(super) fn json_body(
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

pub(super) fn render_pairs(
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
pub(super) fn literal_keys(t: &JsonTemplate) -> bool {
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
pub(super) fn write_json_body(
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
#[inline]
fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("a string always serializes");
}

pub(super) fn render_json(
    ctx: &EventContext,
    field: &str,
    t: &JsonTemplate,
) -> Result<Value, RenderFailure> {
    json_value(t, &|s| ctx.render(field, s))
}

/// `application/x-www-form-urlencoded`, byte for byte as `form_urlencoded`
/// writes it (`A-Z a-z 0-9 * - . _` kept, space as `+`, the rest `%XX`),
/// into one buffer sized up front. Written out rather than through
/// `form_urlencoded::Serializer`, which made the default body's render 35 %
/// slower (BENCHMARKS.md, "Render"); a property test holds the two equal.
pub(super) fn encode_form<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> String {
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
