//! Request URLs: the rendered URL checked and its query added, and the host
//! a rendered URL names.

use crate::model::integration::RequestTemplate;
use crate::model::request::RenderFailure;

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

pub(super) fn build_url(
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
pub(super) fn plain_path_after(url: &str, prefix: usize) -> bool {
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
