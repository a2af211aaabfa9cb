//! Changing an integration: edit (for every product a shared one executes
//! on) and, on a product's page of a shared one, separate (the product
//! gets its own integration with the edited config).
//!
//! In: a signed-in session at the integration's place; the posted form,
//! with the version it was made from. Out: the integration's page, or the
//! form again with the api's 400 (or, for an edit, 409 when someone saved
//! meanwhile) beside the field at fault.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use maud::html;
use serde_json::Value;

use super::form::{
    config_from_form, echo, form_error, integration_form, FormSpec, FormValues, KEPT_FIELDS,
};
use super::layout::{not_found, page, product_list, redirect, Failure, PageResult};
use super::request::{
    field, fields, posted, posted_at, product_names, session, session_at, shown, Here,
};
use crate::control::api::app::Api;
use crate::control::api::extract::{ItemId, PlacePath, ProductAt, ProductPath};
use crate::control::api::integrations;
use crate::control::api::sessions::Session;
use crate::control::api::views::IntegrationDetail;

pub(super) async fn edit_form(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<PlacePath>,
    ItemId(id): ItemId,
) -> PageResult {
    let (s, here) = session_at(&api, &headers, &path)?;
    let i = shown(&api, &here.at, &id).await?;
    let mut config = i.config.clone();
    if i.summary.shared {
        config.insert("products".into(), i.summary.products().into());
    }
    edit_page(&api, &s, &here, &id, &i, &FormValues(config), None).await
}

/// The edit form of integration `id` (`i` as the api shows it).
async fn edit_page(
    api: &Arc<Api>,
    s: &Session,
    here: &Here,
    id: &str,
    i: &IntegrationDetail,
    values: &FormValues,
    error: Option<(String, String)>,
) -> PageResult {
    let names = product_names(api, &here.at).await;
    let spec = FormSpec {
        version: Some(i.summary.version),
        action: format!("{}/integrations/{id}/edit", here.base),
        submit: "Save",
        error,
        products: here.is_org().then_some(&names),
        sandbox: here.base.is_empty(),
    };
    let status = if spec.error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let content = html! {
        @if i.summary.shared {
            div.banner role="note" {
                "Saving changes this integration for every product it executes on: "
                (product_list(i.summary.products(), &names)) "."
            }
        }
        (integration_form(s, values, &spec))
    };
    let title = format!("{} → Edit {}", here.title, i.summary.name);
    Ok((status, page(&title, Some(s), content)).into_response())
}

pub(super) async fn edit(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<PlacePath>,
    ItemId(id): ItemId,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    let (s, here) = posted_at(&api, &headers, &path, &f)?;
    let i = shown(&api, &here.at, &id).await?;
    let mut config = match config_from_form(&f, here.is_org()) {
        Ok(c) => c,
        Err(e) => return edit_page(&api, &s, &here, &id, &i, &echo(&f), Some(e)).await,
    };
    // The form holds the whole config: what it leaves out is removed.
    for k in i.config.keys() {
        if !KEPT_FIELDS.contains(&k.as_str()) {
            config.entry(k.clone()).or_insert(Value::Null);
        }
    }
    // The version the form was made from: a change saved meanwhile by
    // someone else is a conflict, not silently undone.
    let version = field(&f, "version")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(i.summary.version);
    config.insert("version".into(), version.into());
    match integrations::edit(
        State(api.clone()),
        Ok(here.at.clone()),
        ItemId(id.clone()),
        Bytes::from(Value::Object(config.clone()).to_string()),
    )
    .await
    {
        Ok(_) => Ok(redirect(&format!("{}/integrations/{id}", here.base))),
        Err(e) => {
            let error = form_error(e, &[StatusCode::BAD_REQUEST, StatusCode::CONFLICT])?;
            config.retain(|_, v| !v.is_null());
            edit_page(&api, &s, &here, &id, &i, &FormValues(config), Some(error)).await
        }
    }
}

/// A separate page's place: its product as the path gives it, and the
/// session's caller admitted there.
struct Separating {
    product: String,
    caller: ProductAt,
}

/// The product of `path` for `s`'s caller, which must be one they may
/// use: any other is not found.
fn separating(api: &Api, s: &Session, path: ProductPath) -> Result<Separating, Failure> {
    let caller = path.enter(api, s.who.clone()).map_err(|_| not_found())?;
    Ok(Separating {
        product: path.product,
        caller,
    })
}

pub(super) async fn separate_form(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<ProductPath>,
    ItemId(id): ItemId,
) -> PageResult {
    let s = session(&api, &headers)?;
    let leaving = separating(&api, &s, path)?;
    let i = shown(&api, leaving.caller.at(), &id).await?;
    // Only a shared integration has a product to separate.
    if !i.summary.shared {
        return Err(not_found());
    }
    let config = i.config.clone();
    separate_page(&api, &s, &leaving, &id, &i, &FormValues(config), None).await
}

/// The separate form of shared integration `id` (`i` as the api shows it
/// on the product's page).
async fn separate_page(
    api: &Arc<Api>,
    s: &Session,
    leaving: &Separating,
    id: &str,
    i: &IntegrationDetail,
    values: &FormValues,
    error: Option<(String, String)>,
) -> PageResult {
    let p = &leaving.product;
    let names = product_names(api, leaving.caller.at()).await;
    let spec = FormSpec {
        version: None,
        action: format!("/products/{p}/integrations/{id}/separate"),
        submit: "Separate",
        error,
        products: None,
        sandbox: false,
    };
    let status = if spec.error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let content = html! {
        div.banner role="note" {
            "Product " (p) " leaves the shared integration (which keeps executing on "
            (product_list(i.summary.products(), &names))
            " without it) and gets its own integration with this config. Change at least one field."
        }
        (integration_form(s, values, &spec))
    };
    Ok((
        status,
        page(
            &format!("Product {p} → Separate integration"),
            Some(s),
            content,
        ),
    )
        .into_response())
}

pub(super) async fn separate(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<ProductPath>,
    ItemId(id): ItemId,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    let s = posted(&api, &headers, &f)?;
    let leaving = separating(&api, &s, path)?;
    let i = shown(&api, leaving.caller.at(), &id).await?;
    // The product's own integration: it names no products.
    let mut config = match config_from_form(&f, false) {
        Ok(c) => c,
        Err(e) => return separate_page(&api, &s, &leaving, &id, &i, &echo(&f), Some(e)).await,
    };
    // Fields the form does not show come from the shared config.
    for (k, v) in &i.config {
        if KEPT_FIELDS.contains(&k.as_str()) && k != "created_at" {
            config.entry(k.clone()).or_insert(v.clone());
        }
    }
    match integrations::separate(
        State(api.clone()),
        Ok(leaving.caller.clone()),
        ItemId(id.clone()),
        Bytes::from(Value::Object(config.clone()).to_string()),
    )
    .await
    {
        Ok((_, Json(own))) => Ok(redirect(&format!(
            "/products/{}/integrations/{}",
            leaving.product, own.summary.id
        ))),
        Err(e) => {
            let error = form_error(e, &[StatusCode::BAD_REQUEST])?;
            separate_page(
                &api,
                &s,
                &leaving,
                &id,
                &i,
                &FormValues(config),
                Some(error),
            )
            .await
        }
    }
}
