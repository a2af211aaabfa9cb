//! Who a console request is from and where it is: the session of its
//! cookie, the CSRF token of a form post, a form's fields, the page's place
//! for the session's caller, and what the REST handlers show that caller
//! there (an integration, the names of the org's products).
//!
//! In: the request's cookies, form body and path. Out: the [`Session`] and
//! [`Here`], the caller admitted at the path's place by the api's own rules
//! ([`PlacePath::enter`]); or a [`Failure`]: not signed in (to sign-in), a
//! wrong CSRF token (403), a place the caller may not use (404, as if it
//! did not exist: the api's 403 for another org's path is a 404 here).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::COOKIE;
use axum::http::{HeaderMap, HeaderValue};
use axum::Json;

use super::layout::{not_found, Failure};
use crate::control::api::app::Api;
use crate::control::api::auth::{Place, Principal};
use crate::control::api::error::ApiError;
use crate::control::api::extract::{At, ItemId, OrgAt, PlacePath};
use crate::control::api::sessions::Session;
use crate::control::api::views::IntegrationDetail;
use crate::control::api::{catalog, integrations};

pub(super) const SESSION_COOKIE: &str = "hookd_session";
pub(super) const SIGN_IN_COOKIE: &str = "hookd_sign_in";

/// The value of cookie `name`; none when the request carries it twice (a
/// cookie planted for a narrower path would come first).
pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned());
    let first = found.next();
    match found.next() {
        Some(_) => None,
        None => first,
    }
}

/// A cookie's name: `__Host-` prefixed when cookies are `Secure`.
pub(super) fn cookie_name(api: &Api, name: &str) -> String {
    if api.secure_cookies {
        format!("__Host-{name}")
    } else {
        name.to_owned()
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path `/`, `Secure`
/// when configured.
pub(super) fn set_cookie(api: &Api, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict",
        cookie_name(api, name)
    );
    if api.secure_cookies {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).expect("cookie values are hex")
}

/// The signed-in session of a request.
pub(super) fn session(api: &Api, headers: &HeaderMap) -> Result<Session, Failure> {
    let id = cookie(headers, &cookie_name(api, SESSION_COOKIE)).ok_or(Failure::SignIn)?;
    api.console.get(&id).ok_or(Failure::SignIn)
}

/// The session of a request for a page at `path`, and the page's place.
pub(super) fn session_at(
    api: &Api,
    headers: &HeaderMap,
    path: &PlacePath,
) -> Result<(Session, Here), Failure> {
    let s = session(api, headers)?;
    let here = here(api, &s, path)?;
    Ok((s, here))
}

/// The session of a form post whose CSRF token is the session's.
pub(super) fn posted(
    api: &Api,
    headers: &HeaderMap,
    fields: &[(String, String)],
) -> Result<Session, Failure> {
    let s = session(api, headers)?;
    let given = field(fields, "csrf").unwrap_or_default();
    if !same(given, &s.csrf) {
        return Err(Failure::Api(ApiError::forbidden(
            "the form's CSRF token is missing or wrong; reload the page and try again",
        )));
    }
    Ok(s)
}

/// [`posted`] for a page at `path`, and the page's place.
pub(super) fn posted_at(
    api: &Api,
    headers: &HeaderMap,
    path: &PlacePath,
    fields: &[(String, String)],
) -> Result<(Session, Here), Failure> {
    let s = posted(api, headers, fields)?;
    let here = here(api, &s, path)?;
    Ok((s, here))
}

/// Equal, in time that does not depend on where they differ.
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A form body's fields, in order (a multi-select gives one per choice).
pub(super) fn fields(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub(super) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Where a page is: the session's caller admitted at the path's place, the
/// console path of that place (`/orgs/acme`, `/products/1`, ``) and its
/// title.
pub(super) struct Here {
    pub(super) at: At,
    pub(super) base: String,
    pub(super) title: String,
    /// A product's page: the product as the path gives it.
    pub(super) product: Option<String>,
}

impl Here {
    pub(super) fn is_org(&self) -> bool {
        matches!(self.at.place(), Place::Org(_))
    }
}

/// The place of `path` for `s`'s caller, which must be one they may use:
/// any other is not found.
fn here(api: &Api, s: &Session, path: &PlacePath) -> Result<Here, Failure> {
    let at = path.enter(api, s.who.clone()).map_err(|_| not_found())?;
    let segment = |s: &str| -> String { form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    let (base, title) = match (&path.org, &path.product) {
        (Some(org), _) => (
            format!("/orgs/{}", segment(org)),
            format!("Organization {org}"),
        ),
        (None, Some(p)) => (format!("/products/{}", segment(p)), format!("Product {p}")),
        (None, None) => (String::new(), "Sandbox".to_owned()),
    };
    Ok(Here {
        at,
        base,
        title,
        product: path.product.clone(),
    })
}

/// The org whose products a page at `at` names: the path's, or the
/// product's.
fn org_of(api: &Api, at: &At) -> Option<String> {
    match at.place() {
        Place::Org(org) => Some(org.clone()),
        Place::Product(p) => match at.who() {
            Principal::Org(o) => Some(o.clone()),
            _ => api.log.state().product(*p).map(|x| x.org.clone()),
        },
        Place::Sandbox(_) => None,
    }
}

/// Product names of the org of a page at `at`, by id, as the api lists
/// them to its caller (empty when the caller may not list them).
pub(super) async fn product_names(api: &Arc<Api>, at: &At) -> HashMap<u64, String> {
    let Some(org) = org_of(api, at) else {
        return HashMap::new();
    };
    let Ok(org_at) = OrgAt::new(api, at.who().clone(), org) else {
        return HashMap::new();
    };
    let Json(listed) = catalog::list_products(State(api.clone()), org_at).await;
    listed
        .products
        .into_iter()
        .map(|p| (u64::from(p.id), p.name))
        .collect()
}

/// Integration `id` as the REST `get` shows it to the caller at `at`.
pub(super) async fn shown(api: &Arc<Api>, at: &At, id: &str) -> Result<IntegrationDetail, Failure> {
    let Json(i) = integrations::get(State(api.clone()), at.clone(), ItemId(id.to_owned())).await?;
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }
}
