//! Resolve: which integrations an event fires.
//!
//! In: a [`DeviceEvent`]. Out: the [`Match`]es, one per integration that fires,
//! each with the product its traffic counts under. The [`Index`] maps a product
//! to its product and organization integrations and an owner to their sandbox
//! integrations, so a lookup touches only the event's product and user, never
//! other products' integrations. [`IndexHandle`] holds the current snapshot
//! behind an `ArcSwap`: readers load it without locking, a writer builds a whole
//! new snapshot and swaps it in while events flow.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::model::event::DeviceEvent;
use crate::model::integration::{Integration, Scope};

/// One integration fired by one event.
#[derive(Debug, Clone)]
pub struct Match {
    pub integration: Arc<Integration>,
    /// The event's product, when it has one: traffic counts per product.
    pub product: Option<u32>,
}

/// An immutable snapshot of every integration, indexed for lookup.
#[derive(Debug, Default)]
pub struct Index {
    /// Product integrations and the org integrations executing on the product.
    by_product: HashMap<u32, Vec<Arc<Integration>>>,
    /// Sandbox integrations by owning user.
    by_owner: HashMap<String, Vec<Arc<Integration>>>,
    /// All integrations by id, for the control plane and the demo.
    by_id: HashMap<Arc<str>, Arc<Integration>>,
    /// (org integration, product) pairs separated (config log only).
    separations: HashSet<(Arc<str>, u32)>,
}

/// Two records with the same id cannot be loaded together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("integration id {0:?} is defined twice")]
pub struct DuplicateId(pub String);

impl Index {
    pub fn build(
        integrations: impl IntoIterator<Item = Integration>,
    ) -> Result<Index, DuplicateId> {
        Index::from_shared(integrations.into_iter().map(Arc::new))
    }

    /// As [`Index::build`], from integrations already shared with another
    /// snapshot (the config log rebuilds its index without recompiling).
    pub fn from_shared(
        integrations: impl IntoIterator<Item = Arc<Integration>>,
    ) -> Result<Index, DuplicateId> {
        let mut index = Index::default();
        for integration in integrations {
            if index
                .by_id
                .insert(integration.id.clone(), integration.clone())
                .is_some()
            {
                return Err(DuplicateId(integration.id.to_string()));
            }
            match &integration.scope {
                Scope::Sandbox { owner } => index
                    .by_owner
                    .entry(owner.clone())
                    .or_default()
                    .push(integration.clone()),
                Scope::Product { product } => index
                    .by_product
                    .entry(*product)
                    .or_default()
                    .push(integration.clone()),
                Scope::Org { products, .. } => {
                    for p in products.ids() {
                        index
                            .by_product
                            .entry(*p)
                            .or_default()
                            .push(integration.clone());
                    }
                }
            }
        }
        Ok(index)
    }

    /// This index, knowing which products were separated from which org
    /// integrations.
    pub fn with_separations(mut self, separations: HashSet<(Arc<str>, u32)>) -> Index {
        self.separations = separations;
        self
    }

    /// Whether `product` was separated from org integration `id`.
    pub fn was_separated(&self, id: &str, product: Option<u32>) -> bool {
        product.is_some_and(|p| self.separations.contains(&(Arc::from(id), p)))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Integration>> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Integration>> {
        self.by_id.values()
    }

    /// Every integration `event` fires (docs/behaviour.md, "Which
    /// integrations an event fires"). A claimed product device fires both
    /// its product's and its user's integrations.
    pub fn resolve(&self, event: &DeviceEvent) -> Vec<Match> {
        let mut out = Vec::new();
        self.resolve_into(event, &mut out);
        out
    }

    /// As [`Index::resolve`], reusing `out`'s allocation.
    pub fn resolve_into(&self, event: &DeviceEvent, out: &mut Vec<Match>) {
        out.clear();
        if event.is_response_event() {
            return;
        }
        let fires = |i: &&Arc<Integration>| !i.disabled && i.trigger.matches(&event.name);
        if let Some(p) = event.product_id {
            if let Some(list) = self.by_product.get(&p) {
                out.extend(list.iter().filter(fires).map(|i| Match {
                    integration: i.clone(),
                    product: Some(p),
                }));
            }
        }
        if let Some(user) = &event.user_id {
            if let Some(list) = self.by_owner.get(user) {
                out.extend(
                    list.iter()
                        .filter(fires)
                        .filter(|i| match &i.device_id {
                            Some(d) => d.eq_ignore_ascii_case(&event.device_id),
                            None => true,
                        })
                        .map(|i| Match {
                            integration: i.clone(),
                            product: event.product_id,
                        }),
                );
            }
        }
    }
}

/// Why an integration does not fire for an event (the `render` command's
/// answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Miss {
    #[error("the integration is disabled")]
    Disabled,
    #[error("{0:?} is a response event (hook-sent/hook-response/hook-error), which never triggers integrations")]
    ResponseEvent(String),
    #[error("event name {name:?} does not start with the integration's event prefix {prefix:?} (case-sensitive)")]
    Prefix { name: String, prefix: String },
    #[error("the event's product {event:?} is not the integration's product(s) {scope:?}")]
    Product { event: Option<u32>, scope: Vec<u32> },
    #[error(
        "the event's device is claimed by {event:?}, not by the integration's owner {owner:?}"
    )]
    Owner {
        event: Option<String>,
        owner: String,
    },
    #[error("the event's device {event:?} is not the integration's deviceID {device:?}")]
    Device { event: String, device: String },
}

/// Decides one integration against one event; the reference the [`Index`]
/// must agree with (a property test holds them together).
pub fn check(i: &Integration, event: &DeviceEvent) -> Result<(), Miss> {
    if event.is_response_event() {
        return Err(Miss::ResponseEvent(event.name.clone()));
    }
    if i.disabled {
        return Err(Miss::Disabled);
    }
    if !i.trigger.matches(&event.name) {
        return Err(Miss::Prefix {
            name: event.name.clone(),
            prefix: i.trigger.as_str().to_owned(),
        });
    }
    match &i.scope {
        Scope::Product { product } if event.product_id != Some(*product) => Err(Miss::Product {
            event: event.product_id,
            scope: vec![*product],
        }),
        Scope::Org { products, .. }
            if !event
                .product_id
                .is_some_and(|p| products.ids().contains(&p)) =>
        {
            Err(Miss::Product {
                event: event.product_id,
                scope: products.ids().to_vec(),
            })
        }
        Scope::Sandbox { owner } => {
            if event.user_id.as_deref() != Some(owner.as_str()) {
                return Err(Miss::Owner {
                    event: event.user_id.clone(),
                    owner: owner.clone(),
                });
            }
            match &i.device_id {
                Some(d) if !d.eq_ignore_ascii_case(&event.device_id) => Err(Miss::Device {
                    event: event.device_id.clone(),
                    device: d.clone(),
                }),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// The live index: cheap lock-free reads, whole-snapshot swaps.
#[derive(Debug, Clone)]
pub struct IndexHandle(Arc<ArcSwap<Index>>);

impl IndexHandle {
    pub fn new(index: Index) -> IndexHandle {
        IndexHandle(Arc::new(ArcSwap::from_pointee(index)))
    }

    /// The current snapshot; holding it never blocks a writer.
    pub fn load(&self) -> Arc<Index> {
        self.0.load_full()
    }

    /// Replaces the whole snapshot; readers see the old or the new, never a
    /// mix. The old one is dropped on a background thread: freeing a large
    /// index is work the send path should not wait for.
    pub fn swap(&self, index: Index) {
        let old = self.0.swap(Arc::new(index));
        if old.len() > 1000 {
            crate::runtime::background::drop_later(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::Origin;
    use serde_json::{json, Value};

    fn integration(v: Value) -> Integration {
        Integration::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn event(name: &str, product: Option<u32>, user: &str, device: &str) -> DeviceEvent {
        let mut v = json!({"name": name, "data": "1", "coreid": device, "userid": user});
        if let Some(p) = product {
            v["productID"] = json!(p);
        }
        DeviceEvent::decode(
            v.to_string().as_bytes(),
            &Origin {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            chrono::DateTime::UNIX_EPOCH,
        )
        .unwrap()
    }

    const DEV_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
    const DEV_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbb";

    fn index() -> Index {
        Index::build([
            integration(json!({"id": "org", "org": "acme", "products": [1, 2], "event": "temp", "url": "http://h/o"})),
            integration(json!({"id": "p1", "product_id": 1, "event": "temp", "url": "http://h/p"})),
            integration(json!({"id": "p3", "product_id": 3, "event": "t", "url": "http://h/p3"})),
            integration(json!({"id": "off", "product_id": 1, "event": "t", "url": "http://h/off", "disabled": true})),
            integration(json!({"id": "sb", "owner": "u1", "event": "temp", "url": "http://h/s"})),
            integration(json!({"id": "sb-dev", "owner": "u1", "event": "temp", "url": "http://h/s", "deviceID": DEV_A.to_uppercase()})),
        ])
        .unwrap()
    }

    fn ids(matches: &[Match]) -> Vec<(String, Option<u32>)> {
        let mut v: Vec<_> = matches
            .iter()
            .map(|m| (m.integration.id.to_string(), m.product))
            .collect();
        v.sort();
        v
    }

    fn pairs(v: &[(&str, Option<u32>)]) -> Vec<(String, Option<u32>)> {
        v.iter().map(|(s, p)| (s.to_string(), *p)).collect()
    }

    #[test]
    fn org_integrations_fire_on_listed_products_only() {
        let idx = index();
        assert_eq!(
            ids(&idx.resolve(&event("temperature", Some(1), "", DEV_B))),
            pairs(&[("org", Some(1)), ("p1", Some(1))])
        );
        assert_eq!(
            ids(&idx.resolve(&event("temperature", Some(2), "", DEV_B))),
            pairs(&[("org", Some(2))])
        );
        assert_eq!(
            ids(&idx.resolve(&event("temperature", Some(3), "", DEV_B))),
            pairs(&[("p3", Some(3))])
        );
    }

    #[test]
    fn claimed_product_devices_fire_product_and_sandbox_integrations() {
        let idx = index();
        assert_eq!(
            ids(&idx.resolve(&event("temp", Some(2), "u1", DEV_A))),
            pairs(&[("org", Some(2)), ("sb", Some(2)), ("sb-dev", Some(2))])
        );
        assert_eq!(
            ids(&idx.resolve(&event("temp", None, "u1", DEV_B))),
            pairs(&[("sb", None)]),
            "deviceID filter"
        );
        assert_eq!(
            ids(&idx.resolve(&event("temp", None, "u2", DEV_A))),
            pairs(&[]),
            "another user's sandbox"
        );
    }

    #[test]
    fn prefix_disabled_and_response_events() {
        let idx = index();
        assert_eq!(
            ids(&idx.resolve(&event("high_temp", Some(1), "", DEV_A))),
            pairs(&[])
        );
        assert_eq!(
            ids(&idx.resolve(&event("tick", Some(1), "", DEV_A))),
            pairs(&[]),
            "disabled never fires"
        );
        assert_eq!(
            ids(&idx.resolve(&event("hook-response/temp/0", Some(3), "u1", DEV_A))),
            pairs(&[])
        );
        assert_eq!(
            ids(&idx.resolve(&event("hook-sent/temp", Some(3), "u1", DEV_A))),
            pairs(&[])
        );
    }

    proptest::proptest! {
        /// The index fires exactly the integrations `check` accepts.
        #[test]
        fn index_agrees_with_check(
            name in proptest::sample::select(vec!["temp", "temperature", "t", "high_temp", "hook-sent/temp", "tick"]),
            product in proptest::option::of(1u32..5),
            user in proptest::sample::select(vec!["", "u1", "u2"]),
            device in proptest::sample::select(vec![DEV_A, DEV_B]),
        ) {
            let idx = index();
            let e = event(name, product, user, device);
            let mut fired: Vec<String> = idx.resolve(&e).iter().map(|m| m.integration.id.to_string()).collect();
            fired.sort();
            let mut expected: Vec<String> = idx.iter().filter(|i| check(i, &e).is_ok()).map(|i| i.id.to_string()).collect();
            expected.sort();
            proptest::prop_assert_eq!(fired, expected);
        }
    }

    #[test]
    fn misses_say_why() {
        let idx = index();
        let p1 = idx.get("p1").unwrap();
        assert_eq!(
            check(p1, &event("high_temp", Some(1), "", DEV_A)).unwrap_err().to_string(),
            "event name \"high_temp\" does not start with the integration's event prefix \"temp\" (case-sensitive)"
        );
        assert_eq!(
            check(idx.get("org").unwrap(), &event("temp", Some(3), "", DEV_A))
                .unwrap_err()
                .to_string(),
            "the event's product Some(3) is not the integration's product(s) [1, 2]"
        );
        assert_eq!(
            check(idx.get("off").unwrap(), &event("t", Some(1), "", DEV_A)).unwrap_err(),
            Miss::Disabled
        );
        assert!(matches!(
            check(
                idx.get("sb-dev").unwrap(),
                &event("temp", None, "u1", DEV_B)
            ),
            Err(Miss::Device { .. })
        ));
        assert!(matches!(
            check(idx.get("sb").unwrap(), &event("temp", None, "u2", DEV_B)),
            Err(Miss::Owner { .. })
        ));
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let i = integration(json!({"id": "x", "product_id": 1, "event": "t", "url": "http://h/"}));
        assert_eq!(
            Index::build([i.clone(), i]).unwrap_err(),
            DuplicateId("x".into())
        );
    }

    #[test]
    fn swapping_while_a_reader_holds_the_old_snapshot() {
        let handle = IndexHandle::new(index());
        let old = handle.load();
        handle.swap(Index::default());
        assert_eq!(old.len(), 6, "a held snapshot stays whole");
        assert!(handle.load().is_empty());
    }
}
