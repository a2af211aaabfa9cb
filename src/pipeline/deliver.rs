//! Deliver: send one rendered request and classify what came back.
//!
//! In: a [`RenderedRequest`] and whether its TLS certificate must verify. Out:
//! an [`Outcome`]: success for any 2xx, otherwise a [`DeliveryError`] (status,
//! timeout, connect, TLS or protocol failure), with the response body read up
//! to a cap and the time taken. Sending never panics and never fails the
//! caller: every request ends as an outcome.
//!
//! One pooled hyper-util client per TLS mode keeps HTTP/1.1 connections alive
//! and speaks HTTP/2 where the server offers it by ALPN.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::model::integration::Method;
use crate::model::outcome::{DeliveryError, Outcome};
use crate::model::request::RenderedRequest;
use crate::policy::outbound::{refusal_in, AddressPolicy, GuardedConnector};
use crate::runtime::config::{DeliverySettings, OutboundSettings};

type HttpsClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// The HTTP sender: pooled clients and the limits every request runs under.
#[derive(Clone)]
pub struct Deliverer {
    verified: HttpsClient,
    /// For `rejectUnauthorized: false` integrations only.
    unverified: HttpsClient,
    timeout: Duration,
    max_response_bytes: usize,
}

impl Deliverer {
    pub fn new(settings: &DeliverySettings, outbound: &OutboundSettings) -> Deliverer {
        let policy = AddressPolicy::new(outbound.allow_networks.clone());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let verified_tls = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let unverified_tls = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        Deliverer {
            verified: client(settings, &policy, verified_tls),
            unverified: client(settings, &policy, unverified_tls),
            timeout: settings.timeout,
            max_response_bytes: settings.max_response_bytes.get(),
        }
    }

    /// Sends `request`; the whole exchange, body included, runs under the timeout.
    pub async fn send(&self, request: &RenderedRequest, verify_tls: bool) -> Outcome {
        let started = Instant::now();
        let client = if verify_tls {
            &self.verified
        } else {
            &self.unverified
        };
        let built = match build(request) {
            Ok(r) => r,
            Err(e) => return Outcome::not_sent(e),
        };
        let exchange = async {
            let response = client.request(built).await.map_err(classify)?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v.to_str().ok()?));
            let content_type = response.headers().get(http::header::CONTENT_TYPE).cloned();
            let body = read_capped(response.into_body(), self.max_response_bytes).await;
            Ok::<_, DeliveryError>((status, body, (retry_after, content_type)))
        };
        let (result, body, (retry_after, content_type)) =
            match tokio::time::timeout(self.timeout, exchange).await {
                Err(_) => (
                    Err(DeliveryError::Timeout(self.timeout)),
                    Bytes::new(),
                    (None, None),
                ),
                Ok(Err(e)) => (Err(e), Bytes::new(), (None, None)),
                Ok(Ok((status, body, h))) if (200..300).contains(&status) => (Ok(status), body, h),
                Ok(Ok((status, body, h))) => (Err(DeliveryError::Status(status)), body, h),
            };
        Outcome {
            result,
            body,
            elapsed: started.elapsed(),
            retry_after,
            content_type,
        }
    }
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    let ms = (at.timestamp_millis() - chrono::Utc::now().timestamp_millis()).max(0);
    Some(Duration::from_millis(ms as u64))
}

fn client(settings: &DeliverySettings, policy: &AddressPolicy, tls: ClientConfig) -> HttpsClient {
    let http = GuardedConnector::new(policy.clone(), |http| {
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
    });
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .pool_idle_timeout(settings.pool_idle_timeout)
        .build(connector)
}

/// The hyper request of `r`. Set part by part rather than through
/// `http::request::Builder`, which moves its whole state on every call.
fn build(r: &RenderedRequest) -> Result<http::Request<Full<Bytes>>, DeliveryError> {
    let invalid = |e: &dyn std::fmt::Display| DeliveryError::Invalid(e.to_string());
    let mut request = http::Request::new(Full::new(r.body.clone()));
    *request.method_mut() = match r.method {
        Method::Get => http::Method::GET,
        Method::Post => http::Method::POST,
        Method::Put => http::Method::PUT,
        Method::Delete => http::Method::DELETE,
    };
    *request.uri_mut() = http::Uri::try_from(r.url.as_str()).map_err(|e| invalid(&e))?;
    let headers = request.headers_mut();
    headers.reserve(r.headers.len());
    for (name, value) in &r.headers {
        let name = http::HeaderName::try_from(name.as_str()).map_err(|e| invalid(&e))?;
        let value = http::HeaderValue::try_from(value.as_str()).map_err(|e| invalid(&e))?;
        headers.append(name, value);
    }
    Ok(request)
}

/// Reads at most `cap` bytes of the body; the rest is left unread (the
/// connection is then closed rather than reused).
async fn read_capped(mut body: hyper::body::Incoming, cap: usize) -> Bytes {
    let mut buf = BytesMut::new();
    while buf.len() < cap {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = cap - buf.len();
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            // A body cut short still leaves the status, which decides the outcome.
            Some(Err(_)) | None => break,
        }
    }
    buf.freeze()
}

fn classify(e: hyper_util::client::legacy::Error) -> DeliveryError {
    if let Some(refused) = refusal_in(&e) {
        return DeliveryError::Refused(refused.to_string());
    }
    let detail = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    if e.is_connect() {
        DeliveryError::Connect(detail)
    } else {
        DeliveryError::Request(detail)
    }
}

/// `rejectUnauthorized: false`: any certificate is accepted, but the
/// handshake signatures are still checked so the session itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 5 "), Some(Duration::from_secs(5)));
        let in_a_minute = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc2822();
        let d = parse_retry_after(&in_a_minute).unwrap();
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a past date"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
