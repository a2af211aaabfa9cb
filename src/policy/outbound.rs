//! Outbound safety: webhooks cannot be aimed at the operator's own network.
//!
//! In: every address a delivery is about to connect to. Out: the connection,
//! or a [`RefusedAddress`] error when the address is loopback, private,
//! link-local, unique-local, multicast, unspecified or otherwise
//! non-public (IPv4 and IPv6, IPv4-mapped and NAT64 forms included, cloud
//! metadata `169.254.169.254` among them), unless a network the operator
//! allows (`outbound.allow_networks`) contains it.
//!
//! The check is made three times, so that neither an IP literal nor DNS
//! (rebinding included) can get past it: on IP literals before connecting, on
//! every address the resolver returns (refused ones are dropped, so they are
//! never dialled), and on the peer address of the connected socket.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// A destination refused by the address policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "destination {addr} is a {kind} address; refused unless outbound.allow_networks contains it"
)]
pub struct RefusedAddress {
    pub addr: IpAddr,
    pub kind: &'static str,
}

/// Which addresses deliveries may connect to.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(allow: Vec<IpNet>) -> AddressPolicy {
        AddressPolicy { allow }
    }

    pub fn check(&self, addr: IpAddr) -> Result<(), RefusedAddress> {
        let Some(kind) = non_public(addr) else {
            return Ok(());
        };
        // An allowed network may be written in either form of a mapped address.
        let canonical = addr.to_canonical();
        if self
            .allow
            .iter()
            .any(|n| n.contains(&addr) || n.contains(&canonical))
        {
            return Ok(());
        }
        Err(RefusedAddress { addr, kind })
    }
}

/// The kind of non-public address `addr` is, or `None` for a public one.
fn non_public(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 well-known prefix 64:ff9b::/96 embeds an IPv4 address.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return non_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            non_public_v6(v6)
        }
    }
}

fn non_public_v4(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    Some(match () {
        _ if a.is_loopback() => "loopback",
        _ if a.is_private() => "private",
        _ if a.is_link_local() => "link-local",
        _ if a.is_multicast() => "multicast",
        _ if a.is_unspecified() || o[0] == 0 => "unspecified",
        _ if a.is_broadcast() || o[0] >= 240 => "reserved",
        _ if o[0] == 100 && (64..128).contains(&o[1]) => "shared (carrier-grade NAT)",
        _ if o[0] == 192 && o[1] == 0 && o[2] == 0 => "IETF protocol",
        _ if o[0] == 198 && (18..20).contains(&o[1]) => "benchmarking",
        _ => return None,
    })
}

fn non_public_v6(a: Ipv6Addr) -> Option<&'static str> {
    let first = a.segments()[0];
    Some(match () {
        _ if a.is_loopback() => "loopback",
        _ if a.is_unspecified() => "unspecified",
        _ if a.is_multicast() => "multicast",
        _ if first & 0xfe00 == 0xfc00 => "unique-local",
        _ if first & 0xffc0 == 0xfe80 => "link-local",
        _ if first & 0xffc0 == 0xfec0 => "site-local",
        _ => return None,
    })
}

/// DNS through the system resolver, with refused addresses removed; a name
/// with nothing left fails with the first refusal.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = BoxFuture<Self::Response, io::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refusal.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refusal) {
                (true, Some(e)) => Err(io::Error::new(io::ErrorKind::PermissionDenied, e)),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// The TCP connector of every delivery: IP literals checked before
/// connecting, names resolved by [`GuardedResolver`], and the connected
/// peer checked again.
#[derive(Debug, Clone)]
pub struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    policy: Arc<AddressPolicy>,
}

impl GuardedConnector {
    /// `configure` sets timeouts and socket options on the inner connector.
    pub fn new(
        policy: AddressPolicy,
        configure: impl FnOnce(&mut HttpConnector<GuardedResolver>),
    ) -> GuardedConnector {
        let policy = Arc::new(policy);
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver {
            policy: policy.clone(),
        });
        configure(&mut inner);
        GuardedConnector { inner, policy }
    }
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let policy = self.policy.clone();
        let literal = dst
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        let connecting = self.inner.call(dst);
        Box::pin(async move {
            if let Some(ip) = literal {
                policy.check(ip)?;
            }
            let stream = connecting.await?;
            policy.check(stream.inner().peer_addr()?.ip())?;
            Ok(stream)
        })
    }
}

/// Finds a [`RefusedAddress`] in an error's chain of sources.
pub fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<RefusedAddress> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(r) = err.downcast_ref::<RefusedAddress>() {
            return Some(r.clone());
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(r) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<RefusedAddress>())
            {
                return Some(r.clone());
            }
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &AddressPolicy, addr: &str) -> Option<&'static str> {
        policy.check(addr.parse().unwrap()).err().map(|e| e.kind)
    }

    #[test]
    fn non_public_addresses_are_refused_by_default() {
        let p = AddressPolicy::default();
        let cases = [
            ("127.0.0.1", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.5.4", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a00:1", "private"),
        ];
        for (addr, kind) in cases {
            assert_eq!(refused(&p, addr), Some(kind), "{addr}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:2800:220:1:248:1893:25c8:1946",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(refused(&p, public), None, "{public}");
        }
    }

    #[test]
    fn allowed_networks_open_exactly_themselves() {
        let p = AddressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ]);
        assert_eq!(refused(&p, "127.0.0.1"), None);
        assert_eq!(
            refused(&p, "::ffff:127.0.0.1"),
            None,
            "the mapped form of an allowed address"
        );
        assert_eq!(refused(&p, "10.1.2.3"), None);
        assert_eq!(refused(&p, "10.2.0.1"), Some("private"));
        assert_eq!(refused(&p, "::1"), Some("loopback"));
    }

    #[test]
    fn the_message_says_what_to_do() {
        let e = AddressPolicy::default()
            .check("10.0.0.1".parse().unwrap())
            .unwrap_err();
        assert_eq!(e.to_string(), "destination 10.0.0.1 is a private address; refused unless outbound.allow_networks contains it");
    }
}
