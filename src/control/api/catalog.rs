//! The product catalog and the orgs: an org's products, one product, an org
//! and its plan; the operator keeps them.
//!
//! In: the caller at an org's path ([`OrgAt`]), the product of a catalog
//! path ([`CatalogProduct`]) and a JSON body for a write. Out: the records
//! as the config log holds them (`product/<id>`, `org/<id>`), written
//! read-your-writes ([`Api::write`]). Another org's product is not found,
//! as a missing one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::app::{made_from, Api};
use super::error::ApiError;
use super::extract::{CatalogProduct, OrgAt};
use crate::control::config_log::state::{Key, Org, Plan, Product};

/// `{"products": […]}`: the org's products.
#[derive(Serialize)]
pub(super) struct Products {
    pub(super) products: Vec<Product>,
}

pub(super) async fn list_products(State(api): State<Arc<Api>>, at: OrgAt) -> Json<Products> {
    let state = api.log.state();
    let products = state
        .products()
        .filter(|p| p.org == at.org())
        .cloned()
        .collect();
    Json(Products { products })
}

pub(super) async fn get_product(
    State(api): State<Arc<Api>>,
    at: OrgAt,
    CatalogProduct(p): CatalogProduct,
) -> Result<Json<Product>, ApiError> {
    match api.log.state().product(p) {
        Some(x) if x.org == at.org() => Ok(Json(x.clone())),
        // Another org's product is not found either.
        _ => Err(ApiError::not_found(format!("product {p}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductBody {
    name: String,
    /// The version the edit was made from, if the caller checks.
    #[serde(default)]
    version: Option<u64>,
}

/// `PUT /v1/orgs/:org/products/:p`: the operator keeps the catalog.
pub(super) async fn put_product(
    State(api): State<Arc<Api>>,
    at: OrgAt,
    // Looked at once the body is read: the operator's 403 and a bad body's
    // 400 come first.
    product: Result<CatalogProduct, ApiError>,
    body: Bytes,
) -> Result<Json<Option<Product>>, ApiError> {
    let org = at.operator("the product catalog is kept by the operator")?;
    let b: ProductBody = serde_json::from_slice(&body).map_err(|err| {
        ApiError::invalid("body", format!("expected {{\"name\": \"...\"}}: {err}"))
    })?;
    let CatalogProduct(p) = product?;
    let current = api.log.state().product(p).cloned();
    if current.as_ref().is_some_and(|x| x.org != org) {
        return Err(ApiError::conflict(format!(
            "product {p} belongs to another org"
        )));
    }
    if api.log.state().org(org).is_none() {
        return Err(ApiError::invalid(
            "org",
            format!("org {org:?} has no record; create it first (PUT /v1/orgs/{org})"),
        ));
    }
    let version = current.as_ref().map_or(0, |c| c.version);
    made_from(b.version, version, || format!("product {p}"))?;
    let record = Product {
        id: p,
        name: b.name,
        org: org.to_owned(),
        version: version + 1,
    };
    api.write(&Key::Product(p), Some(&json!(record))).await?;
    let saved = api.log.state().product(p).cloned();
    Ok(Json(saved))
}

pub(super) async fn delete_product(
    State(api): State<Arc<Api>>,
    at: OrgAt,
    // Looked at once the caller is known to be the operator.
    product: Result<CatalogProduct, ApiError>,
) -> Result<StatusCode, ApiError> {
    let org = at.operator("the product catalog is kept by the operator")?;
    let CatalogProduct(p) = product?;
    let current = api.log.state().product(p).cloned();
    if current.is_none_or(|x| x.org != org) {
        return Err(ApiError::not_found(format!("product {p}")));
    }
    if let Some(i) = api.log.state().product_in_use(p) {
        return Err(ApiError::conflict(format!(
            "product {p} still has integration {:?}; delete it or separate the product from it first",
            &*i.id
        )));
    }
    api.write(&Key::Product(p), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get_org(State(api): State<Arc<Api>>, at: OrgAt) -> Result<Json<Org>, ApiError> {
    let found = api.log.state().org(at.org()).cloned();
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("org {:?}", at.org())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgBody {
    name: String,
    plan: Plan,
    #[serde(default)]
    version: Option<u64>,
}

/// `PUT /v1/orgs/:org`: the operator keeps orgs and their plans.
pub(super) async fn put_org(
    State(api): State<Arc<Api>>,
    at: Result<OrgAt, ApiError>,
    body: Bytes,
) -> Result<Json<Org>, ApiError> {
    let at = at?;
    let org = at.operator("orgs and their plans are kept by the operator")?;
    let b: OrgBody = serde_json::from_slice(&body).map_err(|err| {
        ApiError::invalid(
            "body",
            format!(
                "expected {{\"name\": \"...\", \"plan\": \"free|basic|growth|enterprise\"}}: {err}"
            ),
        )
    })?;
    let version = api.log.state().org(org).map_or(0, |o| o.version);
    made_from(b.version, version, || format!("org {org:?}"))?;
    let record = Org {
        id: org.to_owned(),
        name: b.name,
        plan: b.plan,
        version: version + 1,
    };
    api.write(&Key::Org(org.to_owned()), Some(&json!(record)))
        .await?;
    Ok(Json(record))
}
