//! Hosts, normalised once at the edge.
//!
//! A [`Host`] is what every rule and every request is matched on: lowercase ASCII,
//! one trailing dot removed, IDNA labels as punycode A-labels, IP literals in their
//! canonical text form, an IPv4-mapped IPv6 address as the IPv4 address. Anything
//! ambiguous — control bytes, userinfo, ports, percent signs, IPv4 in decimal, octal or
//! hex, short IPv4 forms — is refused, never guessed at: two parsers that disagree on
//! a host are how egress filters get bypassed (docs/attacks.md class 3).
//!
//! This module trusts nothing about its input; it performs no DNS resolution.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A validated, normalised host name or IP address.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Host {
    /// Canonical text: an A-label name, a dotted-quad IPv4, or an RFC 5952 IPv6
    /// address without brackets.
    name: Box<str>,
    ip: Option<IpAddr>,
}

/// Why a host was refused. Each message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("empty host")]
    Empty,
    #[error("host contains {0}, which is never part of a host name")]
    ForbiddenChar(CharName),
    #[error("host contains `@` (userinfo); `a@b` means host `b` to some parsers and `a` to others")]
    Userinfo,
    #[error("host contains a port; write the port in the rule's `port` field")]
    Port,
    #[error("host has an empty label (`..`, a leading dot, or more than one trailing dot)")]
    EmptyLabel,
    #[error("`{0}` is not a canonical IPv4 address; only four decimal parts without leading zeros are accepted (no decimal, octal, hex or short forms)")]
    NonCanonicalIpv4(String),
    #[error("`{0}` is not a valid IPv6 address (zone ids are not accepted)")]
    BadIpv6(String),
    #[error(
        "label `{0}` is not a valid host name label (letters, digits, `-`, `_`; 1 to 63 bytes; no `-` at either end)"
    )]
    BadLabel(String),
    #[error("host name is longer than 253 bytes")]
    TooLong,
    #[error("host name is not valid IDNA (UTS 46)")]
    Idna,
}

/// A character named so that control bytes are visible in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharName(pub char);

impl fmt::Display for CharName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        if c.is_control() || c.is_whitespace() {
            write!(f, "the control or space character U+{:04X}", c as u32)
        } else {
            write!(f, "`{c}`")
        }
    }
}

const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

impl Host {
    /// Parses and normalises a host as written in a rule, a CONNECT target, an SNI or
    /// a Host header (without the port). See the module docs for what is refused.
    pub fn parse(input: &str) -> Result<Host, HostError> {
        if input.is_empty() {
            return Err(HostError::Empty);
        }
        for c in input.chars() {
            match c {
                '@' => return Err(HostError::Userinfo),
                c if c.is_control() || c.is_whitespace() => return Err(HostError::ForbiddenChar(CharName(c))),
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | ':' | '[' | ']' => {}
                c if c.is_ascii() => return Err(HostError::ForbiddenChar(CharName(c))),
                // Non-ASCII: left to IDNA below.
                _ => {}
            }
        }

        if let Some(rest) = input.strip_prefix('[') {
            let Some(inner) = rest.strip_suffix(']') else {
                return Err(if rest.contains("]:") { HostError::Port } else { HostError::BadIpv6(input.to_owned()) });
            };
            let v6: Ipv6Addr = inner.parse().map_err(|_| HostError::BadIpv6(inner.to_owned()))?;
            return Ok(Host::from_ip(IpAddr::V6(v6)));
        }
        if input.contains('[') || input.contains(']') {
            return Err(HostError::ForbiddenChar(CharName(if input.contains('[') { '[' } else { ']' })));
        }
        if input.contains(':') {
            if let Ok(v6) = input.parse::<Ipv6Addr>() {
                return Ok(Host::from_ip(IpAddr::V6(v6)));
            }
            // `name:443` or `1.2.3.4:443`: exactly one colon followed by digits.
            if let Some((_, port)) = input.split_once(':') {
                if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HostError::Port);
                }
            }
            return Err(HostError::BadIpv6(input.to_owned()));
        }

        let trimmed = input.strip_suffix('.').unwrap_or(input);
        if trimmed.is_empty() || trimmed.ends_with('.') || trimmed.starts_with('.') || trimmed.contains("..") {
            return Err(HostError::EmptyLabel);
        }

        // UTS 46: lowercases, maps compatibility forms, encodes U-labels as punycode
        // and validates existing `xn--` labels. Pure ASCII input is still passed
        // through so that bad `xn--` labels are caught.
        let ascii =
            idna::domain_to_ascii_cow(trimmed.as_bytes(), idna::AsciiDenyList::URL).map_err(|_| HostError::Idna)?;
        let ascii: &str = &ascii;
        // Mapping can produce new dots (U+3002 "。") and so new empty labels.
        if ascii.is_empty() || ascii.starts_with('.') || ascii.ends_with('.') || ascii.contains("..") {
            return Err(HostError::EmptyLabel);
        }
        if ascii.len() > MAX_NAME {
            return Err(HostError::TooLong);
        }

        // WHATWG: a name whose last label is numeric is an IPv4 address. Only the
        // canonical dotted quad is accepted; every other form is refused.
        let last = ascii.rsplit('.').next().unwrap_or(ascii);
        if looks_numeric(last) {
            return match parse_canonical_ipv4(ascii) {
                Some(v4) => Ok(Host::from_ip(IpAddr::V4(v4))),
                None => Err(HostError::NonCanonicalIpv4(input.to_owned())),
            };
        }
        for label in ascii.split('.') {
            if !valid_label(label) {
                return Err(HostError::BadLabel(label.to_owned()));
            }
        }
        Ok(Host { name: ascii.into(), ip: None })
    }

    /// The host for an IP address; an IPv4-mapped IPv6 address becomes IPv4.
    pub fn from_ip(ip: IpAddr) -> Host {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        Host { name: ip.to_string().into(), ip: Some(ip) }
    }

    /// Canonical text: an A-label name, a dotted quad, or an IPv6 address without
    /// brackets (use [`Host::url_form`] inside a URL or an authority).
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The IP address when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The host as it is written in a URL or `host:port` authority: IPv6 in brackets.
    pub fn url_form(&self) -> std::borrow::Cow<'_, str> {
        match self.ip {
            Some(IpAddr::V6(_)) => format!("[{}]", self.name).into(),
            _ => std::borrow::Cow::Borrowed(&self.name),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url_form())
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Host({})", self.name)
    }
}

impl std::str::FromStr for Host {
    type Err = HostError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Host::parse(s)
    }
}

/// True for a label a URL parser would read as a number: all decimal digits, or
/// `0x`/`0X` followed by hex digits (or nothing).
fn looks_numeric(label: &str) -> bool {
    if !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let lower = label.as_bytes();
    lower.len() >= 2
        && lower[0] == b'0'
        && (lower[1] == b'x' || lower[1] == b'X')
        && lower[2..].iter().all(u8::is_ascii_hexdigit)
}

/// Exactly `d.d.d.d`, each part 0–255 in decimal without leading zeros.
fn parse_canonical_ipv4(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
        *octet = p.parse::<u8>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An IP network, `10.0.0.0/8` or `fd00::/8`. Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("the address before `/` is not an IP address")]
    NotAnIp,
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("prefix length must be a number from 0 to {max}")]
    BadPrefix { max: u8 },
    #[error("host bits are set; the network is `{0}`")]
    HostBits(String),
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = s.split_once('/').ok_or(CidrError::NotAnIp)?;
        let host = Host::parse(addr)?;
        let ip = host.ip().ok_or(CidrError::NotAnIp)?;
        if let IpAddr::V6(v6) = addr.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().unwrap_or(ip) {
            // `::ffff:a.b.c.d/n` would silently become an IPv4 network with a
            // different prefix length; make the writer say what they mean.
            if v6.to_ipv4_mapped().is_some() {
                return Err(CidrError::NotAnIp);
            }
        }
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::BadPrefix { max });
        }
        let prefix: u8 = prefix.parse().map_err(|_| CidrError::BadPrefix { max })?;
        if prefix > max {
            return Err(CidrError::BadPrefix { max });
        }
        let net = Cidr { addr: ip, prefix };
        let masked = net.network();
        if masked != ip {
            return Err(CidrError::HostBits(format!("{}/{prefix}", Host::from_ip(masked).url_form())));
        }
        Ok(net)
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// True when `ip` is inside this network (an IPv4 network never contains an
    /// IPv6 address: hosts are normalised so a v4-mapped address is already IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(a) & mask == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(a) & mask == u128::from(n)
            }
            _ => false,
        }
    }

    /// True when every address of `other` is in `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        Host::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}")).as_str().to_owned()
    }
    fn err(s: &str) -> HostError {
        match Host::parse(s) {
            Ok(h) => panic!("{s:?} accepted as {h:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn case_and_one_trailing_dot_are_normalised() {
        assert_eq!(ok("API.OpenAI.com"), "api.openai.com");
        assert_eq!(ok("api.openai.com."), "api.openai.com");
        assert_eq!(err("api.openai.com.."), HostError::EmptyLabel);
        assert_eq!(err(".api.openai.com"), HostError::EmptyLabel);
        assert_eq!(err("api..openai.com"), HostError::EmptyLabel);
        assert_eq!(err("."), HostError::EmptyLabel);
        assert_eq!(err(""), HostError::Empty);
    }

    #[test]
    fn idna_becomes_punycode() {
        assert_eq!(ok("bücher.example"), "xn--bcher-kva.example");
        assert_eq!(ok("BÜCHER.example"), "xn--bcher-kva.example");
        assert_eq!(ok("xn--bcher-kva.example"), "xn--bcher-kva.example");
        // Ideographic full stop maps to a dot.
        assert_eq!(ok("bücher。example"), "xn--bcher-kva.example");
        // Full-width digits map to ASCII and then must be a canonical IPv4.
        assert_eq!(ok("１２７.０.０.１"), "127.0.0.1");
        assert!(Host::parse("xn--zz-.example").is_err());
    }

    #[test]
    fn nul_control_and_space_are_refused() {
        for s in [
            "evil.com\0.allowed.com",
            "allowed.com\0",
            "a\tb.com",
            "a b.com",
            "allowed.com\r\nX: y",
            "a\u{7f}.com",
            "a\u{85}.com",
            "a\u{a0}.com",
        ] {
            assert!(matches!(err(s), HostError::ForbiddenChar(_)), "{s:?}");
        }
        assert!(err("evil.com\0.allowed.com").to_string().contains("U+0000"));
    }

    #[test]
    fn userinfo_slashes_percent_and_ports_are_refused() {
        assert_eq!(err("allowed.com@evil.com"), HostError::Userinfo);
        assert_eq!(err("user:pw@evil.com"), HostError::Userinfo);
        assert!(matches!(err("evil.com/allowed.com"), HostError::ForbiddenChar(CharName('/'))));
        assert!(matches!(err("evil.com\\allowed.com"), HostError::ForbiddenChar(CharName('\\'))));
        assert!(matches!(err("evil%2ecom"), HostError::ForbiddenChar(CharName('%'))));
        assert!(matches!(err("evil.com#x"), HostError::ForbiddenChar(_)));
        assert!(matches!(err("evil.com?x"), HostError::ForbiddenChar(_)));
        assert!(matches!(err("*.evil.com"), HostError::ForbiddenChar(_)));
        assert_eq!(err("api.openai.com:443"), HostError::Port);
        assert_eq!(err("1.2.3.4:80"), HostError::Port);
        assert_eq!(err("[::1]:443"), HostError::Port);
    }

    #[test]
    fn ipv4_only_in_canonical_form() {
        assert_eq!(ok("127.0.0.1"), "127.0.0.1");
        assert_eq!(Host::parse("10.1.2.3").unwrap().ip(), Some("10.1.2.3".parse().unwrap()));
        for s in [
            "2130706433",
            "0177.0.0.1",
            "0x7f.1",
            "0x7f.0.0.1",
            "0X7F000001",
            "127.1",
            "127.0.1",
            "127.0.0.01",
            "256.0.0.1",
            "1.2.3.4.5",
            "1.2.3.",
            "example.0x10",
            "example.123",
        ] {
            if s == "1.2.3." {
                // One trailing dot is removed, leaving a short form.
                assert!(matches!(err(s), HostError::NonCanonicalIpv4(_)), "{s}");
                continue;
            }
            assert!(matches!(err(s), HostError::NonCanonicalIpv4(_)), "{s}");
        }
        // A numeric label that is not the last one is an ordinary name.
        assert_eq!(ok("1.2.3.example.com"), "1.2.3.example.com");
        assert_eq!(ok("0x7f.example.com"), "0x7f.example.com");
    }

    #[test]
    fn ipv6_with_or_without_brackets() {
        assert_eq!(ok("[::1]"), "::1");
        assert_eq!(ok("::1"), "::1");
        assert_eq!(ok("[2001:DB8:0:0::1]"), "2001:db8::1");
        assert_eq!(Host::parse("[::1]").unwrap().url_form(), "[::1]");
        assert_eq!(Host::parse("::1").unwrap().to_string(), "[::1]");
        assert!(matches!(err("[::1"), HostError::BadIpv6(_)));
        assert!(matches!(err("[fe80::1%eth0]"), HostError::ForbiddenChar(_)));
        assert!(matches!(err("[not-v6]"), HostError::BadIpv6(_)));
        assert!(matches!(err("a]b"), HostError::ForbiddenChar(_)));
    }

    #[test]
    fn v4_mapped_v6_is_the_v4_address() {
        let h = Host::parse("[::ffff:127.0.0.1]").unwrap();
        assert_eq!(h.as_str(), "127.0.0.1");
        assert_eq!(h.ip(), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ok("::ffff:7f00:1"), "127.0.0.1");
        assert_eq!(Host::parse("127.0.0.1").unwrap(), h);
    }

    #[test]
    fn labels_must_be_host_name_labels() {
        assert!(matches!(err("-a.com"), HostError::BadLabel(_)));
        assert!(matches!(err("a-.com"), HostError::BadLabel(_)));
        assert!(matches!(err(&format!("{}.com", "a".repeat(64))), HostError::BadLabel(_)));
        assert_eq!(ok(&format!("{}.com", "a".repeat(63))).len(), 67);
        let long = vec!["a".repeat(60); 5].join(".");
        assert_eq!(err(&long), HostError::TooLong);
        assert_eq!(ok("under_score.example"), "under_score.example");
        assert_eq!(ok("localhost"), "localhost");
    }

    #[test]
    fn cidr_parsing() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.200.1.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let c6 = Cidr::parse("[fd00::]/8").unwrap();
        assert!(c6.contains("fd12::1".parse().unwrap()));
        assert_eq!(Cidr::parse("fd00::/8").unwrap(), c6);
        assert_eq!(
            Cidr::parse("10.0.0.1/8").unwrap_err().to_string(),
            "host bits are set; the network is `10.0.0.0/8`"
        );
        assert!(matches!(Cidr::parse("10.0.0.0/33"), Err(CidrError::BadPrefix { max: 32 })));
        assert!(matches!(Cidr::parse("10.0.0.0/"), Err(CidrError::BadPrefix { .. })));
        assert!(matches!(Cidr::parse("example.com/8"), Err(CidrError::NotAnIp)));
        assert!(matches!(Cidr::parse("::ffff:10.0.0.0/104"), Err(CidrError::NotAnIp)));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(c.covers(&Cidr::parse("10.1.0.0/16").unwrap()));
    }
}
