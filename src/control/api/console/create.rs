//! Creating an integration at a place: the webhook builder (every
//! Particle field) or a custom template (a whole Particle JSON export).
//!
//! In: a signed-in session at an org's, a product's or the sandbox's page;
//! the posted form or export. Out: the new integration's page, or the form
//! again with the api's 400 beside the field at fault.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use maud::{html, Markup};
use serde_json::Value;

use super::form::{
    config_from_form, echo, form_error, integration_form, values_of, FormSpec, FormValues,
};
use super::layout::{csrf_input, page, redirect, PageResult};
use super::request::{field, fields, posted_at, product_names, session_at, Here};
use crate::control::api::app::Api;
use crate::control::api::error::ApiError;
use crate::control::api::extract::PlacePath;
use crate::control::api::integrations;
use crate::control::api::sessions::Session;

pub(super) async fn new(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<PlacePath>,
) -> PageResult {
    // The place is one the caller may use (`session_at`): a foreign place
    // is not found here.
    let (s, here) = session_at(&api, &headers, &path)?;
    create_page(&api, &s, &here, &FormValues::default(), None, None).await
}

/// The create page: the builder with `values` and `error`, and the custom
/// template form with `template`'s text and error.
async fn create_page(
    api: &Arc<Api>,
    s: &Session,
    here: &Here,
    values: &FormValues,
    error: Option<(String, String)>,
    template: Option<(&str, &str)>,
) -> PageResult {
    let names = if here.is_org() {
        Some(product_names(api, &here.at).await)
    } else {
        None
    };
    let spec = FormSpec {
        version: None,
        action: format!("{}/integrations", here.base),
        submit: "Create",
        error,
        products: names.as_ref(),
        sandbox: here.base.is_empty(),
    };
    let status = if spec.error.is_some() || template.is_some_and(|t| !t.1.is_empty()) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let content = html! {
        nav.tabs { a href="#builder" { "Webhook builder" } a href="#custom-template" { "Custom template" } }
        h2 id="builder" { "Webhook builder" }
        (integration_form(s, values, &spec))
        (custom_template_form(s, here, template.map_or("", |t| t.0), template.map(|t| t.1).filter(|e| !e.is_empty())))
    };
    Ok((
        status,
        page(
            &format!("{} → New integration", here.title),
            Some(s),
            content,
        ),
    )
        .into_response())
}

fn custom_template_form(s: &Session, here: &Here, text: &str, error: Option<&str>) -> Markup {
    html! {
        h2 id="custom-template" { "Custom template" }
        p { "A whole integration as Particle's console exports it (JSON)." }
        form method="post" action={ (here.base) "/integrations/template" } {
            (csrf_input(s))
            label for="template" { "Integration JSON" }
            textarea id="template" name="template" rows="14" { (text) }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            button type="submit" { "Create from template" }
        }
    }
}

/// Creates an integration from `body` (a JSON object) at the page's place:
/// to its page.
async fn create_at(api: &Arc<Api>, here: &Here, body: Bytes) -> Result<Response, ApiError> {
    let (_, Json(created)) =
        integrations::create(State(api.clone()), Ok(here.at.clone()), body).await?;
    Ok(redirect(&format!(
        "{}/integrations/{}",
        here.base, created.summary.id
    )))
}

/// `POST …/integrations`: the builder's form.
pub(super) async fn create(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<PlacePath>,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    let (s, here) = posted_at(&api, &headers, &path, &f)?;
    let config = match config_from_form(&f, here.is_org()) {
        Ok(c) => c,
        Err(e) => {
            let values = echo(&f);
            return create_page(&api, &s, &here, &values, Some(e), None).await;
        }
    };
    let json = Bytes::from(Value::Object(config.clone()).to_string());
    match create_at(&api, &here, json).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let error = form_error(e, &[StatusCode::BAD_REQUEST])?;
            create_page(&api, &s, &here, &values_of(&config), Some(error), None).await
        }
    }
}

/// `POST …/integrations/template`: a Particle export as it is; the text
/// again beside the api's 400.
pub(super) async fn create_from_template(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<PlacePath>,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    let (s, here) = posted_at(&api, &headers, &path, &f)?;
    let text = field(&f, "template").unwrap_or_default().to_owned();
    match create_at(&api, &here, Bytes::from(text.clone())).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let (_, message) = form_error(e, &[StatusCode::BAD_REQUEST])?;
            create_page(
                &api,
                &s,
                &here,
                &FormValues::default(),
                None,
                Some((&text, &message)),
            )
            .await
        }
    }
}
