//! What Particle's own tools (the `particle-api-js` SDK, the `particle`
//! CLI) need of the api beyond its paths: the access token also as
//! `access_token` in the query string or a form body, form-encoded request
//! bodies, and the older webhooks API (`/v1/webhooks`,
//! `/v1/products/:p/webhooks`) over the same integrations.
//!
//! In: requests as those tools send them. Out: the same requests as the
//! api's own handlers take them (a Bearer header, a JSON body), and the
//! webhooks API's answers in its shapes (`{"ok": true, "id": …}`, a bare
//! list). The tenant rules are the handlers' and their extractors';
//! nothing here decides access.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};

use super::app::Api;
use super::error::ApiError;
use super::extract::{At, ItemId};
use super::integrations;
use super::views::{IntegrationDetail, IntegrationSummary};

/// The largest form body taken (as axum's JSON bodies).
const MAX_FORM_BYTES: usize = 2 * 1024 * 1024;

/// Fields whose form values are booleans.
const BOOLEAN_FIELDS: &[&str] = &[
    "noDefaults",
    "rejectUnauthorized",
    "mydevices",
    "disabled",
    "unchunked",
    "dataUrlResponseEvent",
];

/// Moves an `access_token` from the query string or a form body into the
/// `Authorization` header (a header already there wins) and turns a form
/// body into the JSON object it stands for. The token leaves the URI, so
/// nothing downstream can log it.
pub(super) async fn particle_clients(request: Request, next: Next) -> Response {
    // The api's paths only: the console's forms are its own.
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    // Particle's SDK lists integrations as a bare array.
    let bare_list = parts.method == axum::http::Method::GET
        && is_integration_list(parts.uri.path())
        && parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.starts_with("particle-api-js"));
    let mut token = take_query_token(&mut parts.uri);
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let body = if is_form {
        let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
            Ok(b) => b,
            Err(_) => {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a form body is at most {MAX_FORM_BYTES} bytes"),
                )
                .into_response()
            }
        };
        let (form_token, object) = match form_to_json(&bytes) {
            Ok(found) => found,
            Err(e) => return e.into_response(),
        };
        token = token.or(form_token);
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts.headers.remove(CONTENT_LENGTH);
        if object.is_empty() {
            Body::empty()
        } else {
            Body::from(Value::Object(object).to_string())
        }
    } else {
        body
    };
    if let Some(token) = token {
        if !parts.headers.contains_key(AUTHORIZATION) {
            match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(v) => {
                    parts.headers.insert(AUTHORIZATION, v);
                }
                Err(_) => {
                    return ApiError::new(StatusCode::UNAUTHORIZED, "unknown token").into_response()
                }
            }
        }
    }
    let response = next.run(Request::from_parts(parts, body)).await;
    if !bare_list || response.status() != StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    let listed = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => serde_json::from_slice::<Value>(&b).ok(),
        Err(_) => None,
    };
    match listed {
        Some(mut v) => {
            let mut r = Json(v["integrations"].take()).into_response();
            *r.status_mut() = parts.status;
            r
        }
        None => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the list could not be read",
        )
        .into_response(),
    }
}

/// `/v1/integrations`, `/v1/products/<p>/integrations`,
/// `/v1/orgs/<org>/integrations`.
fn is_integration_list(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["", "v1", "integrations"] | ["", "v1", "products" | "orgs", _, "integrations"]
    )
}

/// Removes `access_token` from `uri`'s query, returning it.
fn take_query_token(uri: &mut Uri) -> Option<String> {
    let query = uri.query()?;
    let mut token = None;
    let kept: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter_map(|(k, v)| {
            if k == "access_token" {
                token = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    token.as_ref()?;
    let mut rebuilt = uri.path().to_owned();
    if !kept.is_empty() {
        rebuilt.push('?');
        rebuilt.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kept)
                .finish(),
        );
    }
    *uri = rebuilt.parse().ok()?;
    token
}

/// A form body as a JSON object, the way Particle's API reads one:
/// `a=1` a field, `a[b]=1` a field of an object, `a[]=1` an item of a list;
/// booleans for the boolean fields, numbers for `products` and `version`.
/// Its `access_token` is returned apart.
fn form_to_json(body: &[u8]) -> Result<(Option<String>, Map<String, Value>), ApiError> {
    let mut token = None;
    let mut object = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        if key == "access_token" {
            token = Some(value.into_owned());
            continue;
        }
        let path = key_path(&key)
            .ok_or_else(|| ApiError::invalid(&key, format!("{key:?} is not a form field name")))?;
        let typed = typed(&path[0], &value);
        insert(&mut object, &path, typed)
            .map_err(|why| ApiError::invalid(&key, format!("{key}: {why}")))?;
    }
    Ok((token, object))
}

/// `a[b][]` as `["a", "b", ""]`; `None` for an unbalanced name.
fn key_path(key: &str) -> Option<Vec<String>> {
    let (head, mut rest) = match key.find('[') {
        Some(at) => (&key[..at], &key[at..]),
        None => (key, ""),
    };
    if head.is_empty() {
        return None;
    }
    let mut path = vec![head.to_owned()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let close = inner.find(']')?;
        path.push(inner[..close].to_owned());
        rest = &inner[close + 1..];
    }
    // As deep as any integration field goes.
    (path.len() <= 8).then_some(path)
}

fn typed(field: &str, value: &str) -> Value {
    if BOOLEAN_FIELDS.contains(&field) {
        match value {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    if matches!(field, "products" | "version") {
        if let Ok(n) = value.parse::<u64>() {
            return n.into();
        }
    }
    Value::String(value.to_owned())
}

/// The largest list index a form may name (as qs's `arrayLimit`).
const MAX_FORM_INDEX: usize = 1000;

fn insert(object: &mut Map<String, Value>, path: &[String], value: Value) -> Result<(), String> {
    let (first, rest) = path.split_first().expect("a path has a head");
    if rest.is_empty() {
        if object
            .get(first)
            .is_some_and(|v| v.is_object() || v.is_array())
        {
            return Err("given both as a value and as a list or object".into());
        }
        object.insert(first.clone(), value);
        return Ok(());
    }
    let segment = &rest[0];
    if segment.is_empty() || segment.bytes().all(|b| b.is_ascii_digit()) {
        // `a[]=v` or `a[0]=v` (qs's default): an item of a list, in order.
        let list = object
            .entry(first.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(items) = list else {
            return Err("given both as a value and as a list".into());
        };
        let at = if segment.is_empty() {
            items.len()
        } else {
            match segment.parse::<usize>() {
                Ok(i) if i <= MAX_FORM_INDEX => i.min(items.len()),
                _ => return Err(format!("a list index is at most {MAX_FORM_INDEX}")),
            }
        };
        if rest.len() == 1 {
            if at == items.len() {
                items.push(value);
            } else {
                items[at] = value;
            }
            return Ok(());
        }
        if at == items.len() {
            items.push(Value::Object(Map::new()));
        }
        return match &mut items[at] {
            Value::Object(map) => insert(map, &rest[1..], value),
            _ => Err("given both as a value and as an object".into()),
        };
    }
    let inner = object
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    match inner {
        Value::Object(map) => insert(map, rest, value),
        _ => Err("given both as a value and as an object".into()),
    }
}

/// A webhook created: `{"ok": true}` and the integration.
#[derive(Serialize)]
pub(super) struct Created {
    ok: bool,
    #[serde(flatten)]
    integration: IntegrationDetail,
}

/// `POST /v1/webhooks`: an integration created, answered as the webhooks
/// API does (`{"ok": true, "id": …}` and the integration).
pub(super) async fn create_webhook(
    state: State<Arc<Api>>,
    at: Result<At, ApiError>,
    body: Bytes,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let (status, Json(integration)) = integrations::create(state, at, body).await?;
    Ok((
        status,
        Json(Created {
            ok: true,
            integration,
        }),
    ))
}

/// `GET /v1/webhooks`: the integrations as a bare list.
pub(super) async fn list_webhooks(state: State<Arc<Api>>, at: At) -> Json<Vec<IntegrationSummary>> {
    let Json(listed) = integrations::list(state, at).await;
    Json(listed.integrations)
}

/// `{"ok": true}`.
#[derive(Serialize)]
pub(super) struct Deleted {
    ok: bool,
}

/// `DELETE /v1/webhooks/:id`: `{"ok": true}`.
pub(super) async fn delete_webhook(
    state: State<Arc<Api>>,
    at: At,
    id: ItemId,
) -> Result<Json<Deleted>, ApiError> {
    integrations::delete(state, at, id).await?;
    Ok(Json(Deleted { ok: true }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_bodies_become_the_json_they_stand_for() {
        let body = b"access_token=t0k&event=temp&url=https%3A%2F%2Fexample.com%2Fx&noDefaults=true\
                     &headers[X-Key]=v&json[a][b]=1&products[]=1&products[]=2&name=a+b";
        let (token, object) = form_to_json(body).unwrap();
        assert_eq!(token.as_deref(), Some("t0k"));
        assert_eq!(
            Value::Object(object),
            json!({"event": "temp", "url": "https://example.com/x", "noDefaults": true,
                   "headers": {"X-Key": "v"}, "json": {"a": {"b": "1"}}, "products": [1, 2],
                   "name": "a b"})
        );
        // qs's default list form, in order, nested too.
        let (_, object) =
            form_to_json(b"products[0]=3&products[1]=4&json[items][0][k]=a&json[items][1][k]=b")
                .unwrap();
        assert_eq!(
            Value::Object(object),
            json!({"products": [3, 4], "json": {"items": [{"k": "a"}, {"k": "b"}]}})
        );
        for bad in [
            &b"[a]=1"[..],
            b"a[b=1",
            b"a=1&a[b]=2",
            b"a=1&a[]=2",
            b"a[b]=1&a=2",
            b"a[]=1&a=2",
            b"a[5000]=1",
        ] {
            let e = form_to_json(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
        }
    }

    #[test]
    fn a_query_token_leaves_the_uri() {
        let mut uri: Uri = "/v1/webhooks?access_token=secret-t&days=3".parse().unwrap();
        assert_eq!(take_query_token(&mut uri).as_deref(), Some("secret-t"));
        assert_eq!(uri.to_string(), "/v1/webhooks?days=3");
        let mut bare: Uri = "/v1/webhooks?access_token=x".parse().unwrap();
        assert_eq!(take_query_token(&mut bare).as_deref(), Some("x"));
        assert_eq!(bare.to_string(), "/v1/webhooks");
        let mut none: Uri = "/v1/webhooks?days=3".parse().unwrap();
        assert_eq!(take_query_token(&mut none), None);
        assert_eq!(none.to_string(), "/v1/webhooks?days=3");
    }
}
