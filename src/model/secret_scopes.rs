//! Which secrets an integration's templates may use (`[secret_scopes]`).
//!
//! In: `[secrets]` (name → value) and `[secret_scopes]` (name → the scopes
//! that may use it: `"org:<id>"`, `"user:<id>"`, `"product:<id>"` or `"*"`).
//! Out: for each integration, the secrets its templates see. Integrations
//! from the config log belong to tenants, so they see only the secrets
//! granted to their scope (or to `"*"`): a tenant can never have another
//! tenant's secret rendered into a request it controls, whatever its record
//! says. Integrations from a file are the operator's own and see every
//! secret.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::integration::Integration;
use crate::model::secrets::Secrets;

/// The secrets each scope sees, computed once at start.
#[derive(Debug, Clone)]
pub struct SecretPolicy {
    /// Every secret: what file-sourced integrations see.
    all: Secrets,
    /// `None`: every integration sees every secret (file source).
    scoped: Option<Scoped>,
}

#[derive(Debug, Clone)]
struct Scoped {
    /// Secrets granted to `"*"`: what a scope with no grant of its own sees.
    common: Secrets,
    by_scope: HashMap<String, Secrets>,
}

impl SecretPolicy {
    /// Every integration sees every secret (a single box's own file).
    pub fn unscoped(secrets: &BTreeMap<String, String>) -> SecretPolicy {
        SecretPolicy {
            all: Arc::new(secrets.clone()),
            scoped: None,
        }
    }

    /// Each integration sees the secrets granted to its scope or to `"*"`.
    pub fn scoped(
        secrets: &BTreeMap<String, String>,
        scopes: &BTreeMap<String, Vec<String>>,
    ) -> SecretPolicy {
        let granted = |want: &str| -> BTreeMap<String, String> {
            secrets
                .iter()
                .filter(|(name, _)| {
                    scopes
                        .get(*name)
                        .is_some_and(|s| s.iter().any(|g| g == "*" || g == want))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut by_scope = HashMap::new();
        for grants in scopes.values() {
            for g in grants.iter().filter(|g| *g != "*") {
                by_scope
                    .entry(g.clone())
                    .or_insert_with(|| Arc::new(granted(g)));
            }
        }
        SecretPolicy {
            all: Arc::new(secrets.clone()),
            scoped: Some(Scoped {
                common: Arc::new(granted("*")),
                by_scope,
            }),
        }
    }

    /// Every configured secret, for masking what is shown.
    pub fn all(&self) -> &Secrets {
        &self.all
    }

    /// The secrets `i`'s templates see.
    pub fn for_integration(&self, i: &Integration) -> &Secrets {
        match &self.scoped {
            None => &self.all,
            Some(s) => s.by_scope.get(&i.tenant).unwrap_or(&s.common),
        }
    }

    /// The first configured secret `i`'s record names that its scope may
    /// not use, for the api to refuse with a clear error.
    pub fn forbidden_in(&self, i: &Integration) -> Option<String> {
        let allowed = self.for_integration(i);
        self.all
            .keys()
            .filter(|name| !allowed.contains_key(*name))
            .find(|name| i.spec.any_text(&|text| names(text, name)))
            .cloned()
    }
}

/// Whether `name` occurs in `text` as a whole identifier.
fn names(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hook(scope: serde_json::Value) -> Integration {
        let mut v = json!({"id": "h", "event": "t", "url": "https://e.example/{{{ACME_KEY}}}"});
        v.as_object_mut()
            .unwrap()
            .extend(scope.as_object().unwrap().clone());
        Integration::from_value(v).unwrap()
    }

    #[test]
    fn a_scope_sees_only_its_grants_and_the_common_ones() {
        let secrets: BTreeMap<String, String> = [
            ("ACME_KEY", "a"),
            ("OTHER_KEY", "o"),
            ("SHARED", "s"),
            ("LOOSE", "l"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let scopes: BTreeMap<String, Vec<String>> = [
            ("ACME_KEY", vec!["org:acme", "user:alice"]),
            ("OTHER_KEY", vec!["org:other"]),
            ("SHARED", vec!["*"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
        .collect();
        let policy = SecretPolicy::scoped(&secrets, &scopes);
        let names = |i: &Integration| {
            policy
                .for_integration(i)
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        let acme = hook(json!({"org": "acme", "products": [1]}));
        let other = hook(json!({"org": "other", "products": [2]}));
        let alice = hook(json!({"owner": "alice"}));
        let product = hook(json!({"product_id": 3}));
        assert_eq!(names(&acme), ["ACME_KEY", "SHARED"]);
        assert_eq!(names(&alice), ["ACME_KEY", "SHARED"]);
        assert_eq!(names(&other), ["OTHER_KEY", "SHARED"]);
        assert_eq!(
            names(&product),
            ["SHARED"],
            "an ungranted secret is nobody's"
        );
        assert_eq!(policy.forbidden_in(&acme), None);
        assert_eq!(policy.forbidden_in(&other).as_deref(), Some("ACME_KEY"));
        assert_eq!(
            SecretPolicy::unscoped(&secrets)
                .for_integration(&other)
                .len(),
            4
        );
    }

    #[test]
    fn names_match_whole_identifiers_only() {
        assert!(names("{{{KEY}}}", "KEY"));
        assert!(!names("{{{MY_KEY}}}", "KEY"));
        assert!(!names("{{{KEY2}}}", "KEY"));
        assert!(names("\"signingSecret\":\"KEY\"", "KEY"));
    }
}
