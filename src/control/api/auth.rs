//! Bearer tokens and what each may reach.
//!
//! In: the `Authorization` header and the place a path names. Out: the
//! caller's [`Principal`], or 401 (no or unknown token) / 403 (a path of
//! another scope) / 404 (a product of another org: its existence is not
//! revealed). Tokens are kept as SHA-256 digests, so the table holds no
//! token and a lookup does not compare secrets byte by byte.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::control::config_log::state::ConfigState;
use crate::runtime::config::TokenSettings;

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Org(String),
    /// A user: their sandbox integrations.
    User(String),
    /// The platform's operator: everything, and the product catalog.
    Operator,
}

impl Principal {
    /// A stable key for per-caller limits (`org:acme`, `user:u`, `operator`).
    pub fn key(&self) -> String {
        match self {
            Principal::Org(o) => format!("org:{o}"),
            Principal::User(u) => format!("user:{u}"),
            Principal::Operator => "operator".to_owned(),
        }
    }
}

/// What a path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A user's sandbox, by its owner: `/v1/integrations` is the caller's
    /// own ([`Place::sandbox_of`]).
    Sandbox(String),
    Product(u32),
    Org(String),
}

impl Place {
    /// The sandbox of `who`: a user has one, no other token does.
    pub fn sandbox_of(who: &Principal) -> Result<Place, ApiError> {
        match who {
            Principal::User(u) => Ok(Place::Sandbox(u.clone())),
            _ => Err(no_sandbox()),
        }
    }
}

fn no_sandbox() -> ApiError {
    ApiError::forbidden("/v1/integrations holds a user's sandbox integrations; use a user token")
}

pub struct Tokens(HashMap<[u8; 32], Principal>);

impl Tokens {
    pub fn new(tokens: &[TokenSettings]) -> Tokens {
        Tokens(
            tokens
                .iter()
                .map(|t| {
                    let who = match (&t.org, &t.user) {
                        (Some(o), _) => Principal::Org(o.clone()),
                        (_, Some(u)) => Principal::User(u.clone()),
                        _ => Principal::Operator,
                    };
                    (digest(&t.token), who)
                })
                .collect(),
        )
    }

    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing bearer token (Authorization: Bearer <token>)",
                )
            })?;
        self.0
            .get(&digest(token.trim()))
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `who` may use `place`; a sandbox is its owner's only.
pub fn authorize(who: &Principal, place: &Place, state: &ConfigState) -> Result<(), ApiError> {
    match (place, who) {
        (Place::Sandbox(owner), Principal::User(u)) if u == owner => Ok(()),
        (Place::Sandbox(_), _) => Err(no_sandbox()),
        (Place::Org(_), Principal::Operator) => Ok(()),
        (Place::Org(org), Principal::Org(mine)) if org == mine => Ok(()),
        (Place::Org(org), _) => Err(ApiError::forbidden(format!(
            "this token may not use org {org:?}"
        ))),
        (Place::Product(_), Principal::User(_)) => Err(ApiError::forbidden(
            "product integrations are managed with an org token",
        )),
        (Place::Product(p), who) => match state.product(*p) {
            Some(found)
                if *who == Principal::Operator || *who == Principal::Org(found.org.clone()) =>
            {
                Ok(())
            }
            _ => Err(ApiError::not_found(format!("product {p}"))),
        },
    }
}
