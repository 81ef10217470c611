//! Who a request comes from, for the per-address limits: the peer's address, or, behind a proxy
//! the operator named (`microblog serve --trust-proxy ADDR`), the client address that proxy put
//! in `X-Forwarded-For`. IPv6 addresses count per /64 (what one host is usually given), so a
//! client cannot step around a limit by changing the low bits of its address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;

/// The address a request's limits are counted against.
pub fn client(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let mut addr = peer.ip();
    if trusted.contains(&addr) {
        // Each proxy appends the address it received from: read from the right, past the
        // trusted proxies, to the first address a trusted proxy vouches for.
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in forwarded.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if trusted.contains(&ip) => continue,
                Ok(ip) => {
                    addr = ip;
                    break;
                }
                // Something a trusted proxy would not write: stop at the proxy.
                Err(_) => break,
            }
        }
    }
    prefix(addr)
}

/// An IPv6 address's /64 (an IPv4-mapped one as the IPv4 address); an IPv4 address as it is.
fn prefix(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let peer = SocketAddr::new(proxy, 5000);
        let stranger = SocketAddr::new("192.0.2.7".parse().unwrap(), 5000);
        let h = headers(&["198.51.100.9, 203.0.113.5"]);
        // Not trusted: the header is anyone's to write.
        assert_eq!(client(stranger, &h, &[proxy]), stranger.ip());
        assert_eq!(client(peer, &h, &[]), proxy);
        // Trusted: the rightmost address the proxy appended.
        assert_eq!(
            client(peer, &h, &[proxy]),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        // Chained trusted proxies are skipped; garbage stops at the proxy.
        let inner: IpAddr = "10.0.0.2".parse().unwrap();
        let h = headers(&["203.0.113.5", "10.0.0.2"]);
        assert_eq!(
            client(peer, &h, &[proxy, inner]),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client(peer, &headers(&["not an address"]), &[proxy]), proxy);
        assert_eq!(client(peer, &HeaderMap::new(), &[proxy]), proxy);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = SocketAddr::new("2001:db8:1:2:aaaa::1".parse().unwrap(), 1);
        let b = SocketAddr::new("2001:db8:1:2:bbbb::9".parse().unwrap(), 1);
        let none = HeaderMap::new();
        assert_eq!(client(a, &none, &[]), client(b, &none, &[]));
        let mapped = SocketAddr::new("::ffff:192.0.2.1".parse().unwrap(), 1);
        assert_eq!(
            client(mapped, &none, &[]),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
