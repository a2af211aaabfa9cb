//! The config state every reader of `hookd.config` computes alike.
//!
//! In: the log's records in order, each a key (`integration/<id>`,
//! `product/<id>`) and a JSON value or `None` (deleted). Out: the current
//! integrations and product catalog, and for each record whether it was
//! [`Applied`] or refused ([`RecordRefused`]). The decision depends only on
//! the record and the current record of the same key, so every worker and
//! every api that replays the log converges on the same config, also once
//! compaction has dropped older records; a refused record changes nothing
//! and the previous version keeps running.
//!
//! Rules, per key:
//! - a record's `version` must be the current version + 1; a record equal to
//!   the current one is a harmless restatement ([`Applied::Unchanged`]);
//! - a key with no current record takes any version: it is new, or it is the
//!   first record compaction kept; but a key deleted earlier in this reader's
//!   view takes only version 1 (a stale edit does not bring it back);
//! - an integration keeps its scope (owner, product, or org) for life; only an
//!   org integration's product list changes; a product never changes org;
//! - an org integration record may carry `separated`: the product it gives up
//!   and the new product integration made for it, applied together, so no
//!   reader ever sees the product in both or in neither.
//!
//! Compaction keeps only the last record of a key, so the last record must be
//! the one that applied: after a refused record, the api restates the
//! current record of its key ([`ConfigState::restatement`]). Rules across keys
//! (catalog products, products in use) cannot survive compaction's reordering
//! and are the api's to check before writing ([`ConfigState::check_references`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::integration::{Integration, IntegrationSpec, InvalidIntegration, Scope};
use crate::pipeline::resolve::Index;
use crate::template::{TemplateCache, TemplateLimits};

/// A product of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    pub id: u32,
    pub name: String,
    pub org: String,
    #[serde(default)]
    pub version: u64,
}

/// An organization. Its plan decides whether it may have organization
/// integrations (docs/behaviour.md, "Scope").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub plan: Plan,
    #[serde(default)]
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Basic,
    /// Basic's former name, accepted as it.
    Growth,
    Enterprise,
}

impl Plan {
    pub fn has_org_integrations(self) -> bool {
        !matches!(self, Plan::Free)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Basic => "basic",
            Plan::Growth => "growth",
            Plan::Enterprise => "enterprise",
        }
    }
}

/// The key of a config record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Integration(String),
    Product(u32),
    Org(String),
}

impl Key {
    pub fn parse(raw: &str) -> Result<Key, RecordRefused> {
        if let Some(id) = raw.strip_prefix("integration/") {
            return Ok(Key::Integration(id.to_owned()));
        }
        if let Some(id) = raw.strip_prefix("org/") {
            return Ok(Key::Org(id.to_owned()));
        }
        if let Some(id) = raw.strip_prefix("product/") {
            if let Ok(id) = id.parse::<u32>() {
                if id > 0 {
                    return Ok(Key::Product(id));
                }
            }
        }
        Err(RecordRefused::Key(raw.to_owned()))
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Integration(id) => write!(f, "integration/{id}"),
            Key::Product(id) => write!(f, "product/{id}"),
            Key::Org(id) => write!(f, "org/{id}"),
        }
    }
}

/// The separation carried by an org integration record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Separation {
    /// The product leaving the org integration.
    pub product: u32,
    /// The product integration made for it (version 1).
    pub into: IntegrationSpec,
}

/// What applying a record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Deleted,
    /// A restatement of the current record, or a delete of nothing.
    Unchanged,
}

/// Why a record was not applied. Every reader refuses the same records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordRefused {
    #[error("key {0:?} is not integration/<id>, product/<positive id> or org/<id>")]
    Key(String),
    #[error("{0}")]
    Invalid(InvalidIntegration),
    /// Concurrent writers: the record was made from a version that is no
    /// longer current.
    #[error("conflict: {0}")]
    Conflict(String),
}

impl RecordRefused {
    fn invalid(field: &str, reason: impl Into<String>) -> RecordRefused {
        RecordRefused::Invalid(InvalidIntegration {
            field: field.to_owned(),
            reason: reason.into(),
        })
    }

    /// The field at fault, for API errors.
    pub fn field(&self) -> Option<&str> {
        match self {
            RecordRefused::Invalid(i) => Some(&i.field),
            _ => None,
        }
    }
}

impl From<InvalidIntegration> for RecordRefused {
    fn from(e: InvalidIntegration) -> RecordRefused {
        RecordRefused::Invalid(e)
    }
}

/// A validated record, ready to commit.
enum Change {
    PutIntegration {
        integration: Arc<Integration>,
        separated: Option<Arc<Integration>>,
    },
    DeleteIntegration(String),
    PutProduct(Product),
    DeleteProduct(u32),
    PutOrg(Org),
    DeleteOrg(String),
    Nothing,
}

/// Integrations and products as of some position in the log.
#[derive(Debug, Default, Clone)]
pub struct ConfigState {
    integrations: HashMap<Arc<str>, Arc<Integration>>,
    products: BTreeMap<u32, Product>,
    orgs: BTreeMap<String, Org>,
    /// Keys deleted while this reader watched: they take only version 1.
    deleted: HashSet<String>,
    /// (org integration, product) pairs separated while this reader
    /// watched: a retry pending there is dropped as `separated`.
    separations: HashSet<(Arc<str>, u32)>,
    /// What every integration's templates are compiled under.
    limits: TemplateLimits,
    /// Templates compiled once for every integration that repeats them.
    templates: TemplateCache,
}

impl ConfigState {
    /// An empty state whose integrations compile under `limits`.
    pub fn with_limits(limits: TemplateLimits) -> ConfigState {
        ConfigState {
            limits,
            ..ConfigState::default()
        }
    }

    /// The template limits records are validated under.
    pub fn limits(&self) -> &TemplateLimits {
        &self.limits
    }

    /// Decides and applies one record.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) -> Result<Applied, RecordRefused> {
        let (change, applied) = self.check(key, value)?;
        if applied == Applied::Deleted {
            self.deleted.insert(key.to_owned());
        } else if applied == Applied::Created {
            self.deleted.remove(key);
        }
        match change {
            Change::PutIntegration {
                integration,
                separated,
            } => {
                // A product listed again is no longer separated.
                if let Scope::Org { products, .. } = &integration.scope {
                    self.separations
                        .retain(|(from, p)| *from != integration.id || !products.ids().contains(p));
                }
                if let Some(s) = separated {
                    if let Scope::Product { product } = s.scope {
                        self.separations.insert((integration.id.clone(), product));
                    }
                    self.integrations.insert(s.id.clone(), s);
                }
                self.integrations
                    .insert(integration.id.clone(), integration);
            }
            Change::DeleteIntegration(id) => {
                self.integrations.remove(id.as_str());
                self.separations.retain(|(from, _)| **from != *id);
            }
            Change::PutProduct(p) => {
                self.products.insert(p.id, p);
            }
            Change::DeleteProduct(id) => {
                self.products.remove(&id);
            }
            Change::PutOrg(o) => {
                self.orgs.insert(o.id.clone(), o);
            }
            Change::DeleteOrg(id) => {
                self.orgs.remove(&id);
            }
            Change::Nothing => {}
        }
        Ok(applied)
    }

    /// Decides a record without applying it: the api checks a write with
    /// this before producing it, to answer with the reason at once.
    pub fn validate(&self, key: &str, value: Option<&[u8]>) -> Result<Applied, RecordRefused> {
        self.check(key, value).map(|(_, applied)| applied)
    }

    pub fn integration(&self, id: &str) -> Option<&Arc<Integration>> {
        self.integrations.get(id)
    }

    pub fn integrations(&self) -> impl Iterator<Item = &Arc<Integration>> {
        self.integrations.values()
    }

    pub fn product(&self, id: u32) -> Option<&Product> {
        self.products.get(&id)
    }

    pub fn org(&self, id: &str) -> Option<&Org> {
        self.orgs.get(id)
    }

    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.values()
    }

    /// The dispatch index of the current integrations (no recompiling).
    pub fn index(&self) -> Index {
        Index::from_shared(self.integrations.values().cloned())
            .expect("ids are the keys of a map, so they are distinct")
            .with_separations(self.separations.clone())
    }

    fn check(&self, key: &str, value: Option<&[u8]>) -> Result<(Change, Applied), RecordRefused> {
        match (Key::parse(key)?, value) {
            (Key::Integration(id), None) => Ok(if self.integrations.contains_key(id.as_str()) {
                (Change::DeleteIntegration(id), Applied::Deleted)
            } else {
                (Change::Nothing, Applied::Unchanged)
            }),
            (Key::Product(id), None) => Ok(if self.products.contains_key(&id) {
                (Change::DeleteProduct(id), Applied::Deleted)
            } else {
                (Change::Nothing, Applied::Unchanged)
            }),
            (Key::Product(id), Some(bytes)) => {
                self.check_product(id, bytes, self.deleted.contains(key))
            }
            (Key::Integration(id), Some(bytes)) => {
                self.check_integration(&id, bytes, self.deleted.contains(key))
            }
            (Key::Org(id), None) => Ok(if self.orgs.contains_key(&id) {
                (Change::DeleteOrg(id), Applied::Deleted)
            } else {
                (Change::Nothing, Applied::Unchanged)
            }),
            (Key::Org(id), Some(bytes)) => self.check_org(&id, bytes, self.deleted.contains(key)),
        }
    }

    fn check_product(
        &self,
        id: u32,
        bytes: &[u8],
        was_deleted: bool,
    ) -> Result<(Change, Applied), RecordRefused> {
        let product: Product = serde_json::from_slice(bytes)
            .map_err(|e| RecordRefused::invalid("product", format!("not a product record: {e}")))?;
        if product.id != id {
            return Err(RecordRefused::invalid(
                "id",
                format!("{} does not match the key product/{id}", product.id),
            ));
        }
        check_name(&product.name)?;
        crate::model::integration::validate_plain_id("org", &product.org)?;
        let current = self.products.get(&id);
        if let Some(c) = current {
            if c.org != product.org {
                return Err(RecordRefused::invalid(
                    "org",
                    format!(
                        "product {id} belongs to org {:?}; a product never changes org",
                        c.org
                    ),
                ));
            }
        }
        let version = product.version;
        decide(
            current.map(|c| (c, c.version)),
            was_deleted,
            (product, version),
            ("product", &id.to_string()),
            Change::PutProduct,
        )
    }

    fn check_org(
        &self,
        id: &str,
        bytes: &[u8],
        was_deleted: bool,
    ) -> Result<(Change, Applied), RecordRefused> {
        let org: Org = serde_json::from_slice(bytes)
            .map_err(|e| RecordRefused::invalid("org", format!("not an org record: {e}")))?;
        if org.id != id {
            return Err(RecordRefused::invalid(
                "id",
                format!("{:?} does not match the key org/{id}", org.id),
            ));
        }
        crate::model::integration::validate_plain_id("id", &org.id)?;
        check_name(&org.name)?;
        let version = org.version;
        decide(
            self.orgs.get(id).map(|c| (c, c.version)),
            was_deleted,
            (org, version),
            ("org", id),
            Change::PutOrg,
        )
    }

    fn check_integration(
        &self,
        id: &str,
        bytes: &[u8],
        was_deleted: bool,
    ) -> Result<(Change, Applied), RecordRefused> {
        let mut value: Value = serde_json::from_slice(bytes)
            .map_err(|e| RecordRefused::invalid("record", format!("not JSON: {e}")))?;
        let separated = match value.as_object_mut().and_then(|o| o.remove("separated")) {
            Some(s) => Some(serde_json::from_value::<Separation>(s).map_err(|e| {
                RecordRefused::invalid("separated", format!("not a separation: {e}"))
            })?),
            None => None,
        };
        let integration = Integration::from_value_in(value, &self.limits, Some(&self.templates))?;
        if &*integration.id != id {
            return Err(RecordRefused::invalid(
                "id",
                format!(
                    "{:?} does not match the key integration/{id}",
                    &*integration.id
                ),
            ));
        }
        if integration.version == 0 {
            return Err(RecordRefused::invalid(
                "version",
                "is required in the config log (1 for a new integration)",
            ));
        }

        let current = self.integrations.get(id);
        if let Some(c) = current {
            if !same_scope_owner(&c.scope, &integration.scope) {
                return Err(RecordRefused::invalid(
                    "scope",
                    format!(
                        "integration {id:?} is {}; an integration never changes owner",
                        describe_scope(&c.scope)
                    ),
                ));
            }
        }
        let applied = match next_version(
            current.map(|c| c.version),
            was_deleted,
            integration.version,
            "integration",
            id,
        )? {
            Next::Same
                if separated.is_none() && current.is_some_and(|c| c.spec == integration.spec) =>
            {
                return Ok((Change::Nothing, Applied::Unchanged))
            }
            Next::Same => {
                return Err(same_version_conflict(
                    "integration",
                    id,
                    integration.version,
                ))
            }
            Next::Create => Applied::Created,
            Next::Update => Applied::Updated,
        };
        let separated = match separated {
            None => None,
            Some(s) => Some(Arc::new(self.check_separation(current, &integration, s)?)),
        };
        Ok((
            Change::PutIntegration {
                integration: Arc::new(integration),
                separated,
            },
            applied,
        ))
    }

    /// The api's checks across keys before it writes `i`: the products it
    /// names exist, and an org integration's belong to its org.
    pub fn check_references(&self, i: &Integration) -> Result<(), RecordRefused> {
        match &i.scope {
            Scope::Sandbox { .. } => Ok(()),
            Scope::Product { product } => match self.products.get(product) {
                Some(_) => Ok(()),
                None => Err(RecordRefused::invalid(
                    "product_id",
                    format!("product {product} is not in the catalog"),
                )),
            },
            Scope::Org { org, products } => {
                match self.orgs.get(org) {
                    Some(o) if o.plan.has_org_integrations() => {}
                    Some(o) => {
                        return Err(RecordRefused::invalid(
                            "org",
                            format!("org {org:?} is on the {} plan; organization integrations come with the basic (formerly growth) and enterprise plans", o.plan.as_str()),
                        ))
                    }
                    None => {
                        return Err(RecordRefused::invalid(
                            "org",
                            format!("org {org:?} has no record; the operator creates it (PUT /v1/orgs/{org})"),
                        ))
                    }
                }
                for (n, p) in products.ids().iter().enumerate() {
                    match self.products.get(p) {
                        Some(found) if &found.org == org => {}
                        // The same message whether it is unknown or another
                        // org's: a tenant learns nothing of other orgs.
                        _ => {
                            return Err(RecordRefused::invalid(
                                &format!("products[{n}]"),
                                format!("product {p} is not a product of org {org:?}"),
                            ))
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn check_separation(
        &self,
        current: Option<&Arc<Integration>>,
        shared: &Integration,
        s: Separation,
    ) -> Result<Integration, RecordRefused> {
        let Scope::Org {
            products: after, ..
        } = &shared.scope
        else {
            return Err(RecordRefused::invalid(
                "separated",
                "only an org integration can be separated",
            ));
        };
        let p = s.product;
        if after.ids().contains(&p) {
            return Err(RecordRefused::invalid(
                "separated.product",
                format!("product {p} must leave the integration's products with this record"),
            ));
        }
        // With no current record (compaction kept only this one) there is
        // no list to compare with; the record stands for itself.
        if let Some(Scope::Org {
            products: before, ..
        }) = current.map(|c| &c.scope)
        {
            let mut rest: Vec<u32> = before.ids().iter().copied().filter(|x| *x != p).collect();
            let mut now = after.ids().to_vec();
            rest.sort_unstable();
            now.sort_unstable();
            if !before.ids().contains(&p) || rest != now {
                return Err(RecordRefused::invalid(
                    "separated",
                    format!("a separation removes product {p}, one of the integration's products, and changes nothing else in the list"),
                ));
            }
        }
        let new = Integration::compile_in(s.into, &self.limits, Some(&self.templates))?;
        if new.version != 1 || new.scope != (Scope::Product { product: p }) {
            return Err(RecordRefused::invalid(
                "separated.into",
                format!("must be a new (version 1) product integration of product {p}"),
            ));
        }
        if self.integrations.contains_key(&new.id) || new.id == shared.id {
            return Err(RecordRefused::Conflict(format!(
                "integration id {:?} already exists",
                &*new.id
            )));
        }
        Ok(new)
    }

    /// The record that restates the current value of `key` (`None`: it has
    /// none, so a delete), for the api to write after a refused record so
    /// that compaction keeps the truth.
    pub fn restatement(&self, key: &str) -> Option<Vec<u8>> {
        match Key::parse(key).ok()? {
            Key::Integration(id) => self
                .integrations
                .get(id.as_str())
                .map(|i| serde_json::to_vec(&i.spec).expect("a spec serializes")),
            Key::Product(id) => self
                .products
                .get(&id)
                .map(|p| serde_json::to_vec(p).expect("a product serializes")),
            Key::Org(id) => self
                .orgs
                .get(&id)
                .map(|o| serde_json::to_vec(o).expect("an org serializes")),
        }
    }

    /// An integration that executes on product `id`, if any.
    pub fn product_in_use(&self, id: u32) -> Option<&Arc<Integration>> {
        self.integrations.values().find(|i| uses_product(i, id))
    }
}

/// A catalog name, shown in lists and links.
fn check_name(name: &str) -> Result<(), RecordRefused> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.len() > 128 {
        return Err(RecordRefused::invalid(
            "name",
            format!("{name:?} must be 1-128 characters"),
        ));
    }
    Ok(())
}

/// The version rule for a plain record (`current` with its version):
/// created, updated, restated unchanged, or a conflict.
fn decide<T: PartialEq>(
    current: Option<(&T, u64)>,
    was_deleted: bool,
    (record, version): (T, u64),
    (what, id): (&str, &str),
    put: fn(T) -> Change,
) -> Result<(Change, Applied), RecordRefused> {
    match next_version(current.map(|c| c.1), was_deleted, version, what, id)? {
        Next::Same if current.is_some_and(|c| *c.0 == record) => {
            Ok((Change::Nothing, Applied::Unchanged))
        }
        Next::Same => Err(same_version_conflict(what, id, version)),
        Next::Create => Ok((put(record), Applied::Created)),
        Next::Update => Ok((put(record), Applied::Updated)),
    }
}

enum Next {
    Create,
    Update,
    Same,
}

fn next_version(
    current: Option<u64>,
    was_deleted: bool,
    given: u64,
    what: &str,
    id: &str,
) -> Result<Next, RecordRefused> {
    match current {
        Some(c) if given == c + 1 => Ok(Next::Update),
        Some(c) if given == c => Ok(Next::Same),
        Some(c) => Err(RecordRefused::Conflict(format!(
            "{what} {id:?} is at version {c}; a record at version {given} was not made from it (expected {})",
            c + 1
        ))),
        None if was_deleted && given != 1 => Err(RecordRefused::Conflict(format!(
            "{what} {id:?} was deleted; a record at version {given} was made before that"
        ))),
        None => Ok(Next::Create),
    }
}

fn same_version_conflict(what: &str, id: &str, version: u64) -> RecordRefused {
    RecordRefused::Conflict(format!(
        "{what} {id:?} already has a different version {version}"
    ))
}

fn uses_product(i: &Integration, id: u32) -> bool {
    match &i.scope {
        Scope::Product { product } => *product == id,
        Scope::Org { products, .. } => products.ids().contains(&id),
        Scope::Sandbox { .. } => false,
    }
}

fn same_scope_owner(a: &Scope, b: &Scope) -> bool {
    match (a, b) {
        (Scope::Sandbox { owner: x }, Scope::Sandbox { owner: y }) => x == y,
        (Scope::Product { product: x }, Scope::Product { product: y }) => x == y,
        (Scope::Org { org: x, .. }, Scope::Org { org: y, .. }) => x == y,
        _ => false,
    }
}

fn describe_scope(s: &Scope) -> String {
    match s {
        Scope::Sandbox { owner } => format!("user {owner:?}'s sandbox integration"),
        Scope::Product { product } => format!("an integration of product {product}"),
        Scope::Org { org, .. } => format!("an integration of org {org:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(state: &mut ConfigState, key: &str, value: Value) -> Result<Applied, RecordRefused> {
        state.apply(key, Some(value.to_string().as_bytes()))
    }

    fn catalog() -> ConfigState {
        let mut s = ConfigState::default();
        for (id, plan) in [
            ("acme", "enterprise"),
            ("other", "growth"),
            ("cheap", "free"),
        ] {
            let o = json!({"id": id, "name": id, "plan": plan, "version": 1});
            assert_eq!(put(&mut s, &format!("org/{id}"), o), Ok(Applied::Created));
        }
        for (id, org) in [(1, "acme"), (2, "acme"), (3, "acme"), (9, "other")] {
            let p = json!({"id": id, "name": format!("P{id}"), "org": org, "version": 1});
            assert_eq!(
                put(&mut s, &format!("product/{id}"), p),
                Ok(Applied::Created)
            );
        }
        s
    }

    fn org_hook(version: u64, products: Value) -> Value {
        json!({"id": "shared", "version": version, "org": "acme", "products": products,
               "event": "t", "url": "http://h.example/x"})
    }

    fn message(r: Result<Applied, RecordRefused>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn versions_must_follow_one_another() {
        let mut s = catalog();
        assert_eq!(
            put(&mut s, "integration/shared", org_hook(1, json!([1, 2]))),
            Ok(Applied::Created)
        );
        assert_eq!(
            put(&mut s, "integration/shared", org_hook(2, json!([1]))),
            Ok(Applied::Updated)
        );
        assert_eq!(
            message(put(
                &mut s,
                "integration/shared",
                org_hook(2, json!([1, 3]))
            )),
            "conflict: integration \"shared\" already has a different version 2"
        );
        assert_eq!(
            message(put(&mut s, "integration/shared", org_hook(4, json!([1])))),
            "conflict: integration \"shared\" is at version 2; a record at version 4 was not made from it (expected 3)"
        );
        assert_eq!(
            put(&mut s, "integration/shared", org_hook(2, json!([1]))),
            Ok(Applied::Unchanged)
        );
        assert_eq!(s.integration("shared").unwrap().version, 2);
        let unversioned = json!({"id": "n", "product_id": 1, "event": "t", "url": "http://h/"});
        assert_eq!(
            message(put(&mut s, "integration/n", unversioned)),
            "version: is required in the config log (1 for a new integration)"
        );
    }

    #[test]
    fn compaction_keeps_the_decisions_the_same() {
        // The full log: v1, v2, a conflicting v2, then the api's restatement.
        let mut full = catalog();
        put(&mut full, "integration/shared", org_hook(1, json!([1, 2]))).unwrap();
        put(&mut full, "integration/shared", org_hook(2, json!([1]))).unwrap();
        assert!(put(&mut full, "integration/shared", org_hook(2, json!([2]))).is_err());
        let restated = full.restatement("integration/shared").unwrap();
        assert_eq!(
            full.apply("integration/shared", Some(&restated)),
            Ok(Applied::Unchanged)
        );
        // Compacted: only the restatement of the key is left.
        let mut compacted = catalog();
        assert_eq!(
            compacted.apply("integration/shared", Some(&restated)),
            Ok(Applied::Created)
        );
        let products = |s: &ConfigState| match &s.integration("shared").unwrap().scope {
            Scope::Org { products, .. } => products.ids().to_vec(),
            _ => unreachable!(),
        };
        assert_eq!(products(&full), [1]);
        assert_eq!(products(&compacted), [1]);
    }

    #[test]
    fn a_stale_edit_does_not_bring_a_deleted_integration_back() {
        let mut s = catalog();
        put(&mut s, "integration/shared", org_hook(1, json!([1]))).unwrap();
        assert_eq!(s.apply("integration/shared", None), Ok(Applied::Deleted));
        assert_eq!(
            message(put(&mut s, "integration/shared", org_hook(2, json!([1])))),
            "conflict: integration \"shared\" was deleted; a record at version 2 was made before that"
        );
        assert_eq!(
            s.restatement("integration/shared"),
            None,
            "the api restates a delete"
        );
        assert_eq!(
            put(&mut s, "integration/shared", org_hook(1, json!([1]))),
            Ok(Applied::Created)
        );
    }

    #[test]
    fn references_are_checked_for_the_api() {
        let s = catalog();
        let refs = |v: Value| {
            s.check_references(&Integration::from_value(v).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refs(org_hook(1, json!([1, 9]))),
            "products[1]: product 9 is not a product of org \"acme\""
        );
        assert_eq!(
            refs(org_hook(1, json!([1, 77]))),
            "products[1]: product 77 is not a product of org \"acme\""
        );
        assert_eq!(
            refs(
                json!({"id": "p", "version": 1, "product_id": 77, "event": "t", "url": "http://h/"})
            ),
            "product_id: product 77 is not in the catalog"
        );
        let cheap = json!({"id": "c", "version": 1, "org": "cheap", "products": [1], "event": "t", "url": "http://h/"});
        assert_eq!(
            refs(cheap),
            "org: org \"cheap\" is on the free plan; organization integrations come with the basic (formerly growth) and enterprise plans"
        );
        let nowhere = json!({"id": "n", "version": 1, "org": "ghost", "products": [1], "event": "t", "url": "http://h/"});
        assert_eq!(
            refs(nowhere),
            "org: org \"ghost\" has no record; the operator creates it (PUT /v1/orgs/ghost)"
        );
        let mut s2 = s.clone();
        assert!(put(
            &mut s2,
            "org/acme",
            json!({"id": "acme", "name": "A", "plan": "gold", "version": 2})
        )
        .unwrap_err()
        .to_string()
        .contains("unknown variant `gold`"));
    }

    #[test]
    fn an_integration_never_changes_owner_and_keys_match() {
        let mut s = catalog();
        put(&mut s, "integration/shared", org_hook(1, json!([1]))).unwrap();
        let theft = json!({"id": "shared", "version": 2, "org": "other", "products": [9], "event": "t", "url": "http://h/"});
        assert_eq!(
            message(put(&mut s, "integration/shared", theft)),
            "scope: integration \"shared\" is an integration of org \"acme\"; an integration never changes owner"
        );
        assert_eq!(
            message(put(&mut s, "integration/other", org_hook(1, json!([1])))),
            "id: \"shared\" does not match the key integration/other"
        );
        assert_eq!(
            message(s.apply("webhook/x", Some(b"{}"))),
            "key \"webhook/x\" is not integration/<id>, product/<positive id> or org/<id>"
        );
        assert_eq!(
            message(s.apply("integration/x", Some(b"{nope")))
                .split(':')
                .next(),
            Some("record")
        );
    }

    #[test]
    fn products_keep_their_org() {
        let mut s = catalog();
        put(&mut s, "integration/shared", org_hook(1, json!([1, 2]))).unwrap();
        assert_eq!(s.product_in_use(2).map(|i| &*i.id), Some("shared"));
        assert!(s.product_in_use(3).is_none());
        let moved = json!({"id": 1, "name": "P1", "org": "other", "version": 2});
        assert_eq!(
            message(put(&mut s, "product/1", moved)),
            "org: product 1 belongs to org \"acme\"; a product never changes org"
        );
        assert_eq!(s.apply("product/3", None), Ok(Applied::Deleted));
        assert_eq!(s.apply("product/3", None), Ok(Applied::Unchanged));
    }

    fn separation(version: u64, left: Value, product: u32, new_id: &str) -> Value {
        let mut v = org_hook(version, left);
        v["separated"] = json!({"product": product, "into": {
            "id": new_id, "version": 1, "product_id": product, "name": "mine",
            "event": "t", "url": "http://h.example/x"}});
        v
    }

    /// The index knows which product left which org integration by a
    /// separation (a pending retry there is dropped as `separated`) until
    /// the product is listed again or the integration deleted.
    #[test]
    fn the_index_remembers_separations_until_the_product_returns() {
        let mut s = catalog();
        put(&mut s, "integration/shared", org_hook(1, json!([1, 2, 3]))).unwrap();
        assert!(!s.index().was_separated("shared", Some(2)));
        put(
            &mut s,
            "integration/shared",
            separation(2, json!([1, 3]), 2, "own2"),
        )
        .unwrap();
        let index = s.index();
        assert!(index.was_separated("shared", Some(2)));
        assert!(!index.was_separated("shared", Some(1)));
        assert!(!index.was_separated("own2", Some(2)));
        put(&mut s, "integration/shared", org_hook(3, json!([1, 2, 3]))).unwrap();
        assert!(!s.index().was_separated("shared", Some(2)));
    }

    #[test]
    fn a_separation_moves_one_product_in_one_record() {
        let mut s = catalog();
        put(&mut s, "integration/shared", org_hook(1, json!([1, 2, 3]))).unwrap();
        assert_eq!(
            put(
                &mut s,
                "integration/shared",
                separation(2, json!([1, 3]), 2, "mine")
            ),
            Ok(Applied::Updated)
        );
        let index = s.index();
        let ids = |p: u32| {
            let ev = crate::model::event::DeviceEvent::decode(
                format!(r#"{{"name":"t","data":"","published_at":"2024-05-13T10:55:40.306Z","coreid":"e00fce68aaaaaaaaaaaaaaaa","productID":{p}}}"#).as_bytes(),
                &crate::model::event::Origin { topic: "e".into(), partition: 0, offset: 0 },
                chrono::Utc::now(),
            ).unwrap();
            index
                .resolve(&ev)
                .into_iter()
                .map(|m| m.integration.id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(1), ["shared"]);
        assert_eq!(ids(2), ["mine"]);
        assert_eq!(ids(3), ["shared"]);
        // The api restates the new integration under its own key, so the log
        // stays right once compaction drops the separation record.
        let restated = json!({"id": "mine", "version": 1, "product_id": 2, "name": "mine", "event": "t", "url": "http://h.example/x"});
        assert_eq!(
            put(&mut s, "integration/mine", restated.clone()),
            Ok(Applied::Unchanged)
        );
        let mut compacted = catalog();
        put(&mut compacted, "integration/mine", restated).unwrap();
        put(
            &mut compacted,
            "integration/shared",
            org_hook(2, json!([1, 3])),
        )
        .unwrap();
        assert_eq!(compacted.index().len(), 2);
    }

    #[test]
    fn separations_that_do_not_add_up_are_refused_whole() {
        let mut s = catalog();
        put(&mut s, "integration/shared", org_hook(1, json!([1, 2, 3]))).unwrap();
        assert_eq!(
            message(put(
                &mut s,
                "integration/shared",
                separation(2, json!([1, 2, 3]), 2, "mine")
            )),
            "separated.product: product 2 must leave the integration's products with this record"
        );
        assert_eq!(
            message(put(
                &mut s,
                "integration/shared",
                separation(2, json!([1]), 2, "mine")
            )),
            "separated: a separation removes product 2, one of the integration's products, and changes nothing else in the list"
        );
        assert_eq!(
            message(put(
                &mut s,
                "integration/shared",
                separation(2, json!([1, 3]), 2, "shared")
            )),
            "conflict: integration id \"shared\" already exists"
        );
        assert!(s.integration("mine").is_none());
        assert_eq!(s.integration("shared").unwrap().version, 1);
    }
}
