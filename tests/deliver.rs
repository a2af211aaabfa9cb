//! The HTTP sender against real servers on loopback: TLS verification and
//! `rejectUnauthorized: false`, HTTP/2 by ALPN, the response-body cap, the
//! timeout.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Mode, Receiver};
use hookd::model::integration::Method;
use hookd::model::outcome::DeliveryError;
use hookd::model::request::RenderedRequest;
use hookd::pipeline::deliver::Deliverer;
use hookd::runtime::config::Settings;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

fn request(url: String) -> RenderedRequest {
    RenderedRequest {
        method: Method::Post,
        url,
        headers: vec![(
            "User-Agent".into(),
            hookd::model::request::USER_AGENT.into(),
        )],
        body: Bytes::from_static(b"hello"),
    }
}

fn deliverer(adjust: impl FnOnce(&mut Settings)) -> Deliverer {
    let mut s = Settings::load_from(None, vec![]).unwrap();
    s.outbound.allow_networks = vec!["127.0.0.0/8".parse().unwrap()];
    adjust(&mut s);
    Deliverer::new(&s.delivery, &s.outbound)
}

/// An HTTPS server with a self-signed certificate for `localhost`, offering
/// h2 and http/1.1; answers with the HTTP version it spoke.
async fn tls_server() -> u16 {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(socket).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(format!("{:?}", req.version())),
                        )))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn tls_is_verified_unless_reject_unauthorized_is_false() {
    let port = tls_server().await;
    let d = deliverer(|_| {});
    let url = format!("https://localhost:{port}/in");

    let refused = d.send(&request(url.clone()), true).await;
    match &refused.result {
        Err(DeliveryError::Connect(msg)) => {
            assert!(msg.to_lowercase().contains("certificate"), "{msg}")
        }
        other => panic!("a self-signed certificate must fail verification, got {other:?}"),
    }

    let accepted = d.send(&request(url), false).await;
    assert_eq!(accepted.result, Ok(200));
    assert_eq!(accepted.body, "HTTP/2.0", "h2 negotiated by ALPN");
}

#[tokio::test]
async fn plain_http_keeps_alive_and_caps_the_response_body() {
    let r = Receiver::start().await;
    r.set_mode(Mode::Big(1_000_000));
    let d = deliverer(|s| s.delivery.max_response_bytes = std::num::NonZero::new(1000).unwrap());
    let out = d.send(&request(r.url("/big")), true).await;
    assert_eq!(out.result, Ok(200));
    assert_eq!(out.body.len(), 1000);
    r.set_mode(Mode::Status(200));
    let before = r.connections();
    for _ in 0..5 {
        let out = d.send(&request(r.url("/in")), true).await;
        assert_eq!((out.result, out.body), (Ok(200), Bytes::from_static(b"ok")));
    }
    assert_eq!(
        r.connections() - before,
        1,
        "five requests over one kept-alive connection"
    );
    let seen = r.seen();
    assert_eq!(seen[1].version, "HTTP/1.1");
    assert_eq!(
        seen[1].headers["user-agent"],
        hookd::model::request::USER_AGENT
    );
    assert_eq!(seen[1].body, "hello");
}

#[tokio::test]
async fn statuses_timeouts_and_refused_connections_are_errors() {
    let r = Receiver::start().await;
    let d = deliverer(|s| s.delivery.timeout = Duration::from_millis(300));
    r.set_mode(Mode::Status(503));
    assert_eq!(
        d.send(&request(r.url("/")), true).await.result,
        Err(DeliveryError::Status(503))
    );
    r.set_mode(Mode::Status(204));
    assert_eq!(d.send(&request(r.url("/")), true).await.result, Ok(204));
    r.set_mode(Mode::Hang);
    assert_eq!(
        d.send(&request(r.url("/")), true).await.result,
        Err(DeliveryError::Timeout(Duration::from_millis(300)))
    );
    // Nothing listens on a port just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = d
        .send(&request(format!("http://127.0.0.1:{port}/")), true)
        .await;
    assert!(
        matches!(out.result, Err(DeliveryError::Connect(_))),
        "{:?}",
        out.result
    );
}
