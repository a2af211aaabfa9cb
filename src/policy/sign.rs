//! Standard Webhooks signing (<https://www.standardwebhooks.com/>).
//!
//! In: a rendered request, its message id (the idempotency key) and the
//! time. Out: the request with `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`. The
//! key is a configured secret (`whsec_<base64>`, or plain base64) named by the
//! integration's `signingSecret`; it never appears in what is shown.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::request::RenderedRequest;
use crate::model::secrets::SENSITIVE;

/// Why a request could not be signed. Never carries a byte of the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("signingSecret names {0:?}, which is not a configured secret")]
    NotConfigured(String),
    #[error("the signing secret is not base64 (whsec_<base64>)")]
    NotBase64,
    #[error("the signing secret is {0} bytes; use at least 16 (24-64 recommended)")]
    TooShort(usize),
}

/// A signing key, decoded once.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({SENSITIVE})")
    }
}

impl Signer {
    /// `secret` as Standard Webhooks writes it: `whsec_` and base64.
    pub fn try_new(secret: &str) -> Result<Signer, SigningError> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = STANDARD
            .decode(encoded)
            // The decoder's message quotes the offending byte: it would put a
            // piece of the secret in the dead letter and the log.
            .map_err(|_| SigningError::NotBase64)?;
        if key.len() < 16 {
            return Err(SigningError::TooShort(key.len()));
        }
        Ok(Signer { key })
    }

    /// `v1,<base64 signature>` of `id.timestamp.body`.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Signs `request` for `integration` if it names a signing secret, with
    /// the event's idempotency key as the message id; the error says which
    /// secret is missing or unusable (never a byte of it).
    pub fn sign_for(
        integration: &crate::model::integration::Integration,
        ctx: &crate::model::variables::EventContext,
        request: &mut RenderedRequest,
    ) -> Result<(), SigningError> {
        let Some(name) = &integration.signing_secret else {
            return Ok(());
        };
        let signer = ctx
            .secret(name)
            .ok_or_else(|| SigningError::NotConfigured(name.clone()))
            .and_then(Signer::try_new)?;
        let id = crate::model::request::idempotency_key(&ctx.event().id, &integration.id);
        signer.sign(request, &id, chrono::Utc::now().timestamp());
        Ok(())
    }

    /// Adds the three headers to `request`.
    pub fn sign(&self, request: &mut RenderedRequest, id: &str, timestamp: i64) {
        let signature = self.signature(id, timestamp, &request.body);
        request
            .headers
            .retain(|(n, _)| !n.to_ascii_lowercase().starts_with("webhook-"));
        request.headers.push(("webhook-id".into(), id.to_owned()));
        request
            .headers
            .push(("webhook-timestamp".into(), timestamp.to_string()));
        request
            .headers
            .push(("webhook-signature".into(), signature));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_secrets() {
        assert!(Signer::try_new("whsec_%%%")
            .unwrap_err()
            .to_string()
            .contains("not base64"));
        assert!(Signer::try_new("whsec_c2hvcnQ=")
            .unwrap_err()
            .to_string()
            .contains("5 bytes"));
        assert_eq!(
            format!(
                "{:?}",
                Signer::try_new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ),
            "Signer([[SENSITIVE]])"
        );
    }

    /// The example of the Standard Webhooks specification's reference
    /// libraries.
    #[test]
    fn matches_the_reference_example() {
        let s = Signer::try_new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = s.signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
