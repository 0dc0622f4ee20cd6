//! Name resolution for upstream connections and the SSRF check.
//!
//! The gateway resolves names itself (static_hosts first, then the system resolver),
//! checks every candidate address, and returns the one address it checked: the caller
//! connects to exactly that address, so a second resolution (DNS rebinding) cannot
//! swap it. Must never: hand out an internal address (loopback, private, link-local,
//! CGNAT, multicast, unspecified, metadata, the host's own) unless the admin vouched
//! for it (static_hosts) or a rule names that IP/CIDR explicitly.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why no upstream address could be used.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("`{host}` does not resolve")]
    NoAddress { host: String },
    #[error(
        "`{host}` resolves only to internal addresses ({addrs}); the gateway refuses them \
         unless a rule names the address or CIDR, or gvmd's static_hosts lists the name"
    )]
    Internal { host: String, addrs: String },
}

/// Classifies an address as unsafe to reach from an agent when nobody vouched for it.
#[must_use]
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || o[0] >= 240 // reserved
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_internal_v4(v4);
    }
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
}

/// The IPv4 address an IPv6 address carries (v4-mapped, v4-compatible, NAT64, 6to4).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// Upstream resolution with the SSRF check.
#[derive(Debug, Clone)]
pub(crate) struct Resolver {
    static_hosts: HashMap<String, Vec<IpAddr>>,
    own: Vec<IpAddr>,
}

impl Resolver {
    pub(crate) fn new(static_hosts: &HashMap<String, Vec<IpAddr>>) -> Self {
        let static_hosts =
            static_hosts.iter().map(|(k, v)| (k.trim_end_matches('.').to_ascii_lowercase(), v.clone())).collect();
        let own = nix::ifaddrs::getifaddrs()
            .map(|it| {
                it.filter_map(|i| {
                    let a = i.address?;
                    if let Some(v4) = a.as_sockaddr_in() {
                        Some(IpAddr::V4(v4.ip()))
                    } else {
                        a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                    }
                })
                .collect()
            })
            .unwrap_or_default();
        Self { static_hosts, own }
    }

    fn forbidden(&self, ip: IpAddr) -> bool {
        is_internal(ip) || self.own.contains(&ip)
    }

    /// One checked address for `host:port`. `named_by_rule` says whether a rule of the
    /// agent's profile names that exact address (IP or CIDR rule).
    pub(crate) async fn resolve(
        &self,
        host: &str,
        port: u16,
        named_by_rule: &(dyn Fn(IpAddr) -> bool + Send + Sync),
    ) -> Result<SocketAddr, ResolveError> {
        if let Some(addrs) = self.static_hosts.get(host) {
            return addrs
                .first()
                .map(|ip| SocketAddr::new(*ip, port))
                .ok_or_else(|| ResolveError::NoAddress { host: host.to_string() });
        }
        let candidates: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match tokio::net::lookup_host((host, port)).await {
                Ok(it) => it.map(|sa| sa.ip()).collect(),
                Err(_) => Vec::new(),
            },
        };
        if candidates.is_empty() {
            return Err(ResolveError::NoAddress { host: host.to_string() });
        }
        for ip in &candidates {
            if !self.forbidden(*ip) || named_by_rule(*ip) {
                return Ok(SocketAddr::new(*ip, port));
            }
        }
        Err(ResolveError::Internal {
            host: host.to_string(),
            addrs: candidates.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "ff02::1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }

    #[tokio::test]
    async fn localhost_is_refused_without_a_rule() {
        let r = Resolver::new(&HashMap::new());
        let err = r.resolve("localhost", 80, &|_| false).await.unwrap_err();
        assert!(matches!(err, ResolveError::Internal { .. }), "{err}");
        let err = r.resolve("169.254.169.254", 80, &|_| false).await.unwrap_err();
        assert!(matches!(err, ResolveError::Internal { .. }), "{err}");
        let ok = r.resolve("127.0.0.1", 80, &|ip| ip == IpAddr::from([127, 0, 0, 1])).await.unwrap();
        assert_eq!(ok.port(), 80);
    }
}
