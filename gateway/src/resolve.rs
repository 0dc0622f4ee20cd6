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
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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

/// How long a name's addresses are reused. The system resolver (getaddrinfo) does
/// not say a record's TTL, so a bound below the TTLs APIs publish (60 s and more):
/// an address that changes is picked up within this much.
const POSITIVE_TTL: Duration = Duration::from_secs(30);
/// How long "does not resolve" is remembered: short, so a name that appears (or a
/// resolver that comes back) is seen almost at once, yet a loop of requests for a
/// missing name does not ask the resolver each time.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Most names remembered; past it, expired entries go, and if none had expired the
/// whole cache is dropped (an agent naming endless hosts cannot grow gvmd's memory).
const MAX_CACHED: usize = 4096;
/// How often the host's own addresses are read again (an interface may come up or
/// get a new address while gvmd runs; the SSRF check must know it).
const OWN_REFRESH: Duration = Duration::from_secs(5);

struct Cached {
    /// Empty: the name did not resolve.
    ips: Arc<[IpAddr]>,
    until: Instant,
}

/// Upstream resolution with the SSRF check. Resolutions are cached (the candidates,
/// before the check): the check runs on every request, on the addresses it connects to.
pub(crate) struct Resolver {
    static_hosts: HashMap<String, Vec<IpAddr>>,
    own: RwLock<(Arc<[IpAddr]>, Instant)>,
    cache: Mutex<HashMap<Box<str>, Cached>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("static_hosts", &self.static_hosts).finish_non_exhaustive()
    }
}

/// The addresses of this host's interfaces.
fn own_addresses() -> Arc<[IpAddr]> {
    nix::ifaddrs::getifaddrs()
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
        .unwrap_or_default()
}

impl Resolver {
    pub(crate) fn new(static_hosts: &HashMap<String, Vec<IpAddr>>) -> Self {
        let static_hosts =
            static_hosts.iter().map(|(k, v)| (k.trim_end_matches('.').to_ascii_lowercase(), v.clone())).collect();
        Self { static_hosts, own: RwLock::new((own_addresses(), Instant::now())), cache: Mutex::new(HashMap::new()) }
    }

    /// The host's own addresses, read again when older than [`OWN_REFRESH`].
    fn own(&self) -> Arc<[IpAddr]> {
        {
            let own = self.own.read().unwrap_or_else(|e| e.into_inner());
            if own.1.elapsed() < OWN_REFRESH {
                return own.0.clone();
            }
        }
        let fresh = own_addresses();
        *self.own.write().unwrap_or_else(|e| e.into_inner()) = (fresh.clone(), Instant::now());
        fresh
    }

    /// The addresses `host` resolves to (empty: none), from the cache when fresh.
    async fn lookup(&self, host: &str, port: u16) -> Arc<[IpAddr]> {
        let now = Instant::now();
        if let Some(c) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(host) {
            if c.until > now {
                return c.ips.clone();
            }
        }
        let ips: Arc<[IpAddr]> = match tokio::net::lookup_host((host, port)).await {
            Ok(it) => it.map(|sa| sa.ip()).collect(),
            Err(_) => Arc::from([]),
        };
        let ttl = if ips.is_empty() { NEGATIVE_TTL } else { POSITIVE_TTL };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(host.into(), Cached { ips: ips.clone(), until: Instant::now() + ttl });
        ips
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
        let candidates: Arc<[IpAddr]> = match host.parse::<IpAddr>() {
            Ok(ip) => Arc::from([ip]),
            Err(_) => self.lookup(host, port).await,
        };
        if candidates.is_empty() {
            return Err(ResolveError::NoAddress { host: host.to_string() });
        }
        let own = self.own();
        for ip in candidates.iter() {
            if !(is_internal(*ip) || own.contains(ip)) || named_by_rule(*ip) {
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
        // Cached: the second answer is the same check on the same addresses.
        let err = r.resolve("localhost", 80, &|_| false).await.unwrap_err();
        assert!(matches!(err, ResolveError::Internal { .. }), "{err}");
        let ok = r.resolve("localhost", 8080, &|ip| ip.is_loopback()).await.unwrap();
        assert!(ok.ip().is_loopback() && ok.port() == 8080, "{ok}");
    }

    #[tokio::test]
    async fn missing_names_are_remembered_briefly_and_the_cache_is_bounded() {
        let r = Resolver::new(&HashMap::new());
        let err = r.resolve("no-such-name.invalid", 80, &|_| true).await.unwrap_err();
        assert!(matches!(err, ResolveError::NoAddress { .. }), "{err}");
        let until = r.cache.lock().unwrap().get("no-such-name.invalid").map(|c| c.until).unwrap();
        assert!(until <= Instant::now() + NEGATIVE_TTL);
        {
            let mut cache = r.cache.lock().unwrap();
            for i in 0..MAX_CACHED {
                let until = Instant::now() + POSITIVE_TTL;
                cache.insert(format!("h{i}.example").into(), Cached { ips: Arc::from([]), until });
            }
        }
        let _ = r.resolve("localhost", 80, &|_| true).await.unwrap();
        let cache = r.cache.lock().unwrap();
        assert!(cache.len() <= MAX_CACHED && cache.contains_key("localhost"), "{}", cache.len());
    }
}
