//! Who is asking and where: the caller of a request and the place its path
//! names, admitted there, as typed extractors.
//!
//! In: the bearer token ([`Tokens::principal`](super::auth::Tokens)) and
//! the path's `{product}`, `{org}` and `{id}`. Out: [`At`] (any place of an
//! integration route), [`OrgAt`] (an org route), [`ProductAt`] (a product
//! route), [`ItemId`] and [`CatalogProduct`]; or the api's error, in the
//! order the api always checked: the path as axum reads it (400), the token
//! (401), the product of the path (404 when not a number), then access
//! ([`authorize`]: 403, or 404 for another org's product). A path axum
//! cannot read is answered as axum answers it.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::Deserialize;

use super::app::Api;
use super::auth::{authorize, Place, Principal};
use super::error::ApiError;

/// The caller and the place of the path, admitted there.
#[derive(Debug, Clone)]
pub(super) struct At {
    who: Principal,
    place: Place,
}

impl At {
    fn new(api: &Api, who: Principal, place: Place) -> Result<At, ApiError> {
        authorize(&who, &place, &api.log.state())?;
        Ok(At { who, place })
    }

    pub(super) fn who(&self) -> &Principal {
        &self.who
    }

    pub(super) fn place(&self) -> &Place {
        &self.place
    }
}

/// The place segments of a path: `{product}`, `{org}`, or neither for the
/// caller's sandbox. The console's pages name places the same way.
#[derive(Debug, Deserialize)]
pub(super) struct PlacePath {
    pub(super) product: Option<String>,
    pub(super) org: Option<String>,
}

impl PlacePath {
    /// `who` at this place, if they may be there.
    pub(super) fn enter(&self, api: &Api, who: Principal) -> Result<At, ApiError> {
        let place = match (&self.product, &self.org) {
            (Some(p), _) => Place::Product(product_id(p)?),
            (None, Some(org)) => Place::Org(org.clone()),
            (None, None) => Place::sandbox_of(&who)?,
        };
        At::new(api, who, place)
    }
}

impl FromRequestParts<Arc<Api>> for At {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<At, ApiError> {
        let Path(path) = Path::<PlacePath>::from_request_parts(parts, api).await?;
        let who = api.tokens.principal(&parts.headers)?;
        path.enter(api, who)
    }
}

/// The product of a path (`/v1/products/{product}/…`): not a number is no
/// product.
fn product_id(raw: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>()
        .map_err(|_| ApiError::not_found(format!("product {raw:?}")))
}

/// The caller at an org's path (`/v1/orgs/{org}…`), admitted there.
#[derive(Debug)]
pub(super) struct OrgAt {
    who: Principal,
    org: String,
}

#[derive(Deserialize)]
struct OrgPath {
    org: String,
}

impl OrgAt {
    pub(super) fn new(api: &Api, who: Principal, org: String) -> Result<OrgAt, ApiError> {
        authorize(&who, &Place::Org(org.clone()), &api.log.state())?;
        Ok(OrgAt { who, org })
    }

    pub(super) fn org(&self) -> &str {
        &self.org
    }

    /// The org, for the operator only; `keeps` says what the operator
    /// keeps, for the 403.
    pub(super) fn operator(&self, keeps: &str) -> Result<&str, ApiError> {
        if self.who != Principal::Operator {
            return Err(ApiError::forbidden(keeps));
        }
        Ok(&self.org)
    }
}

impl FromRequestParts<Arc<Api>> for OrgAt {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<OrgAt, ApiError> {
        let Path(OrgPath { org }) = Path::<OrgPath>::from_request_parts(parts, api).await?;
        let who = api.tokens.principal(&parts.headers)?;
        OrgAt::new(api, who, org)
    }
}

/// The caller at a product's path (`/v1/products/{product}/…`), admitted
/// there: [`At`] at [`Place::Product`] of `product`.
#[derive(Debug, Clone)]
pub(super) struct ProductAt {
    at: At,
    product: u32,
}

impl ProductAt {
    /// The caller admitted at the product.
    pub(super) fn at(&self) -> &At {
        &self.at
    }

    /// The caller admitted at the product, and the product.
    pub(super) fn into_parts(self) -> (At, u32) {
        (self.at, self.product)
    }
}

/// The product segment of a path, as given.
#[derive(Debug, Deserialize)]
pub(super) struct ProductPath {
    pub(super) product: String,
}

impl ProductPath {
    /// `who` at this product, if they may be there.
    pub(super) fn enter(&self, api: &Api, who: Principal) -> Result<ProductAt, ApiError> {
        let product = product_id(&self.product)?;
        let at = At::new(api, who, Place::Product(product))?;
        Ok(ProductAt { at, product })
    }
}

impl FromRequestParts<Arc<Api>> for ProductAt {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<ProductAt, ApiError> {
        let Path(path) = Path::<ProductPath>::from_request_parts(parts, api).await?;
        let who = api.tokens.principal(&parts.headers)?;
        path.enter(api, who)
    }
}

/// The `{id}` of a path, as given.
#[derive(Debug)]
pub(super) struct ItemId(pub(super) String);

#[derive(Deserialize)]
struct IdPath {
    id: String,
}

impl FromRequestParts<Arc<Api>> for ItemId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<ItemId, ApiError> {
        let Path(IdPath { id }) = Path::<IdPath>::from_request_parts(parts, api).await?;
        Ok(ItemId(id))
    }
}

/// The product `{id}` of a catalog path (`/v1/orgs/{org}/products/{id}`),
/// whichever org has it: a product id is a positive number, anything else
/// is no product (404).
#[derive(Debug)]
pub(super) struct CatalogProduct(pub(super) u32);

impl FromRequestParts<Arc<Api>> for CatalogProduct {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<Api>,
    ) -> Result<CatalogProduct, ApiError> {
        let ItemId(raw) = ItemId::from_request_parts(parts, api).await?;
        raw.parse::<u32>()
            .ok()
            .filter(|p| *p > 0)
            .map(CatalogProduct)
            .ok_or_else(|| ApiError::not_found(format!("product {raw:?}")))
    }
}
