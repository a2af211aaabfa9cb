//! The secrets vocabulary: what a secret's name may be, how a secret is
//! shown (`[[SENSITIVE]]`), and every form its value may take in text a
//! device or a person sees, so that what is displayed can be masked.
//!
//! Which secrets a tenant's templates may use is [`crate::model::secret_scopes`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};

/// What `{{{SECRET}}}` shows wherever a request is displayed.
pub const SENSITIVE: &str = "[[SENSITIVE]]";

/// Named secret values from config, usable as `{{{NAME}}}` in any field.
pub type Secrets = Arc<BTreeMap<String, String>>;

/// Secret names are `[A-Z_][A-Z0-9_]*` (docs/behaviour.md, "Secrets and
/// `[[SENSITIVE]]`").
pub fn is_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Every form a secret value may appear in, in text a device or a person
/// sees: raw, form-encoded, percent-encoded, JSON-escaped, and inside
/// base64 (standard or URL-safe) at any offset, as a Basic `Authorization`
/// header or a data URL carries it; longest first, so a form containing
/// another is masked whole. Values under 4 bytes are left out: they would
/// mask innocent text.
pub fn secret_forms(secrets: &Secrets) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let mut forms = Vec::new();
    for value in secrets.values().filter(|v| v.len() >= 4) {
        forms.push(value.clone());
        // As a URL's host carries it: hosts are lowercased.
        forms.push(value.to_ascii_lowercase());
        forms.push(form_urlencoded::byte_serialize(value.as_bytes()).collect());
        for set in [
            URI_COMPONENT,
            URL_PATH,
            URL_QUERY,
            URL_USERINFO,
            URL_FRAGMENT,
        ] {
            forms.push(utf8_percent_encode(value, set).to_string());
        }
        let json = serde_json::to_string(value).expect("a string always serializes");
        forms.push(json[1..json.len() - 1].to_owned());
        for engine in [&STANDARD, &URL_SAFE] {
            forms.extend((0..3).map(|offset| base64_core(engine, value.as_bytes(), offset)));
        }
    }
    forms.retain(|f| f.len() >= 4);
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// The base64 characters that depend only on `value` when it starts
/// `offset` bytes (0-2) into a 3-byte group of a longer encoded text: the
/// same wherever in that text it sits, whatever surrounds it.
fn base64_core(engine: &base64::engine::GeneralPurpose, value: &[u8], offset: usize) -> String {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(value);
    let encoded = engine.encode(&padded);
    // A character holds 6 bits: the first whose bits are all the value's
    // follows the offset's 8 bits each; the last ends at the value's end.
    let first = (8 * offset).div_ceil(6);
    let end = 8 * padded.len() / 6;
    encoded[first..end].to_owned()
}

/// What `encodeURIComponent` encodes: all but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// What a URL's path encodes (the `url` crate's path set).
const URL_PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// What a URL's userinfo encodes (the `url` crate's userinfo set).
const URL_USERINFO: &AsciiSet = &URL_PATH
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'|');

/// What a URL's fragment encodes (the `url` crate's fragment set).
const URL_FRAGMENT: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'<').add(b'>').add(b'`');

/// What a URL's query encodes (the `url` crate's special-query set).
const URL_QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\'');

/// `text` with each of `forms` replaced by `[[SENSITIVE]]`; borrowed back
/// when none occurs.
pub fn mask_forms<'t>(text: Cow<'t, str>, forms: &[String]) -> Cow<'t, str> {
    let mut text = text;
    for form in forms {
        if text.contains(form.as_str()) {
            text = Cow::Owned(text.replace(form.as_str(), SENSITIVE));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret in a URL's userinfo or fragment, as the URL parser encodes
    /// it there (each with a set of its own, unlike any other form), is
    /// masked.
    #[test]
    fn a_secret_in_a_urls_userinfo_or_fragment_is_masked() {
        for (value, url) in [
            ("pa=ss$w+rd", "https://u:{}@h.example/p"),
            ("x`{y}z$", "https://h.example/p#{}"),
        ] {
            let secrets: Secrets = Arc::new([("PW".to_owned(), value.to_owned())].into());
            let url = url.replace("{}", value);
            let shown = url::Url::parse(&url).unwrap().to_string();
            assert!(!shown.contains(value), "{shown}");
            let masked = mask_forms(shown.as_str().into(), &secret_forms(&secrets));
            assert_eq!(masked.matches(SENSITIVE).count(), 1, "{shown} -> {masked}");
            assert!(!masked.contains('$'), "{shown} -> {masked}");
        }
    }
}
