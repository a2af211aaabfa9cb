//! Outbound safety through the real sender: loopback, private, link-local,
//! IPv6 loopback, IPv4-mapped and a hostname resolving to 127.0.0.1 are all
//! refused by default and reachable once the operator allows them.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Receiver;
use hookd::model::integration::Method;
use hookd::model::outcome::DeliveryError;
use hookd::model::request::RenderedRequest;
use hookd::pipeline::deliver::Deliverer;
use hookd::runtime::config::Settings;

fn deliverer(allow: &[&str]) -> Deliverer {
    let mut s = Settings::load_from(None, vec![]).unwrap();
    s.outbound.allow_networks = allow.iter().map(|n| n.parse().unwrap()).collect();
    s.delivery.connect_timeout = Duration::from_millis(300);
    s.delivery.timeout = Duration::from_millis(600);
    Deliverer::new(&s.delivery, &s.outbound)
}

fn get(url: String) -> RenderedRequest {
    RenderedRequest {
        method: Method::Get,
        url,
        headers: vec![],
        body: Bytes::new(),
    }
}

#[tokio::test]
async fn non_public_destinations_are_refused_unless_allowed() {
    let r = Receiver::start().await;
    let port = r.addr.port();
    // One IPv6 listener too, for [::1] and the mapped form.
    let v6 = tokio::net::TcpListener::bind("[::1]:0").await.ok();
    let v6_port = v6.as_ref().map(|l| l.local_addr().unwrap().port());

    let refused = deliverer(&[]);
    let mut urls = vec![
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://10.0.0.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ];
    if let Some(p) = v6_port {
        urls.push(format!("http://[::1]:{p}/"));
    }
    for url in &urls {
        let out = refused.send(&get(url.clone()), true).await;
        match out.result {
            Err(DeliveryError::Refused(msg)) => assert!(
                msg.contains("refused unless outbound.allow_networks"),
                "{url}: {msg}"
            ),
            other => panic!("{url}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(r.arrived(), 0, "nothing reached the loopback receiver");

    // Allowed: the loopback receiver answers; the others are attempted (and
    // fail only because nothing is there), no longer refused.
    let allowed = deliverer(&["127.0.0.0/8", "::1/128", "10.0.0.0/8", "169.254.169.254/32"]);
    for url in &urls {
        let out = allowed.send(&get(url.clone()), true).await;
        assert!(
            !matches!(out.result, Err(DeliveryError::Refused(_))),
            "{url}: {:?}",
            out.result
        );
    }
    assert_eq!(
        r.arrived(),
        3,
        "127.0.0.1, localhost and the mapped form reached the receiver"
    );
    drop(v6);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let svc = service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(
                hyper::Response::builder()
                    .status(302)
                    .header("location", "http://169.254.169.254/")
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap(),
            )
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(socket), svc)
            .await;
    });
    let out = deliverer(&["127.0.0.0/8"])
        .send(&get(format!("http://{addr}/")), true)
        .await;
    assert_eq!(
        out.result,
        Err(DeliveryError::Status(302)),
        "a redirect is an error outcome, not followed"
    );
}
