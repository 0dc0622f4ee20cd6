//! The HTTP/1 head checks: what a request head must look like before anything is
//! decided (one reading of its framing, one host named however many times), and which
//! target it names from the connection it came on. Pure functions: no I/O, no state.

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};

use gvm_policy::Host;

use crate::pipeline::{ConnCtx, ConnKind, Via};

/// Largest request head accepted from an agent.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// How long the head of a request may take to arrive.
pub(crate) const HEAD_TIMEOUT: std::time::Duration = crate::stream::STALL_LIMIT;

/// Where a request goes.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub tls: bool,
    pub host: Host,
    pub port: u16,
}

impl Target {
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
    fn default_port(&self) -> bool {
        self.port == if self.tls { 443 } else { 80 }
    }
    pub(crate) fn authority(&self) -> String {
        if self.default_port() {
            self.host.url_form().into_owned()
        } else {
            format!("{}:{}", self.host.url_form(), self.port)
        }
    }
}

/// Splits `host[:port]` (IPv6 in brackets) and normalises the host.
pub(crate) fn split_authority(s: &str) -> Result<(Host, Option<u16>), String> {
    let (h, p) = if s.starts_with('[') {
        match s.find(']') {
            Some(i) => {
                let rest = &s[i + 1..];
                if rest.is_empty() {
                    (s, None)
                } else if let Some(p) = rest.strip_prefix(':') {
                    (&s[..=i], Some(p))
                } else {
                    return Err(format!("`{s}` is not host[:port]"));
                }
            }
            None => return Err(format!("`{s}` is not host[:port]")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err(format!("`{s}`: IPv6 addresses must be in brackets")),
            None => (s, None),
        }
    };
    let port = match p {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("`{s}` has an invalid port"));
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("`{s}` has an invalid port")),
                Ok(n) => Some(n),
            }
        }
    };
    let host = Host::parse(h).map_err(|e| format!("`{h}`: {e}"))?;
    Ok((host, port))
}

/// Refuses requests whose framing two parsers could read differently.
/// Methods are case-sensitive (RFC 9110 §9.1) and every registered one (RFC 9110,
/// WebDAV, PATCH...) is upper case; rules must name them so. But upstreams disagree on
/// what `delete` means: Werkzeug and others upper-case the method they read, so a
/// `delete` would slip past a rule on `DELETE` and still run the DELETE handler. No
/// client sends lower-case methods, so one is ambiguity and is refused, whatever its
/// letters spell; the decision then only ever sees the canonical upper-case form.
pub(crate) fn check_method(method: &Method) -> Result<(), String> {
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "the method `{}` is not upper case: methods are case-sensitive and upstreams read case variants differently; send `{}`",
            method.as_str().escape_debug(),
            method.as_str().to_ascii_uppercase().escape_debug()
        ));
    }
    Ok(())
}

pub(crate) fn check_framing(headers: &HeaderMap) -> Result<(), String> {
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Err("more than one Host header".into());
    }
    let cl = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if cl > 1 {
        return Err("more than one Content-Length header".into());
    }
    let te: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if !te.is_empty() {
        if cl > 0 {
            return Err("both Content-Length and Transfer-Encoding".into());
        }
        if te.len() > 1 || !te[0].as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err("Transfer-Encoding other than one `chunked`".into());
        }
    }
    for (name, v) in headers {
        if v.as_bytes().iter().any(|b| *b == 0 || *b == b'\r' || *b == b'\n') {
            return Err(format!("control byte in header {name}"));
        }
    }
    Ok(())
}

/// Removes client headers that an upstream could read as one of the injected ones:
/// CGI, WSGI (Werkzeug, gunicorn before 22) and PHP map `x_api_key` and `x-api-key`
/// to the same variable, so an agent's `X_Api_Key` could stand in for the credential
/// gvm injects. (Header names are already case-insensitive in the map.)
pub(crate) fn remove_twins(headers: &mut HeaderMap, inject: &[(HeaderName, HeaderValue)]) {
    let dash = |b: &u8| if *b == b'_' { b'-' } else { *b };
    let twin = |n: &HeaderName| {
        let n = n.as_str().as_bytes();
        inject.iter().any(|(i, _)| {
            let i = i.as_str().as_bytes();
            i.len() == n.len() && i.iter().map(dash).eq(n.iter().map(dash))
        })
    };
    let twins: Vec<HeaderName> = headers.keys().filter(|n| twin(n)).cloned().collect();
    for n in &twins {
        headers.remove(n);
    }
}

/// Headers that describe one hop and are never forwarded.
const HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))).unwrap_or(false)
        })
}

pub(crate) fn strip_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Names the Connection header lists are hop-by-hop too (read before it is removed).
    let listed: Vec<HeaderName> = if headers.contains_key(header::CONNECTION) {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("upgrade"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for h in &HOP {
        headers.remove(h);
    }
    for h in &listed {
        headers.remove(h);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The length of `uri` as written (without formatting it).
pub(crate) fn uri_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let auth = uri.authority().map_or(0, |a| a.as_str().len());
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + auth + pq
}

/// The target named by an absolute-form request URI (`None` for origin-form).
pub(crate) fn uri_target(uri: &Uri) -> Result<Option<Target>, String> {
    let Some(auth) = uri.authority() else {
        return Ok(None);
    };
    if auth.as_str().contains('@') {
        return Err("userinfo (`user@host`) in the URL".into());
    }
    let tls = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        None => return Ok(None), // authority-form: CONNECT, handled elsewhere
        Some(s) => return Err(format!("scheme `{s}` is not proxied")),
    };
    let (host, port) = split_authority(auth.as_str())?;
    Ok(Some(Target { tls, host, port: port.unwrap_or(if tls { 443 } else { 80 }) }))
}

/// What a held request's body is, from its headers (the body itself is not read before
/// the decision): `1.2 kB application/json`, `chunked text/plain`, or `None` for none.
pub(crate) fn body_summary(headers: &http::HeaderMap) -> Option<String> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|t| {
        let t = t.split(';').next().unwrap_or("").trim();
        t.chars().take(80).collect::<String>()
    });
    let len =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let size = match (len, chunked) {
        (Some(0), false) | (None, false) => return ctype.filter(|t| !t.is_empty()).map(|t| format!("0 B {t}")),
        (Some(n), _) => gvm_api::human_bytes(n),
        (None, true) => "chunked".to_string(),
    };
    Some(match ctype.filter(|t| !t.is_empty()) {
        Some(t) => format!("{size} {t}"),
        None => size,
    })
}

/// What a request head asks for, once it passed the checks.
pub(crate) enum Head {
    /// CONNECT on the explicit proxy, with the Host header if it has one.
    Connect(Option<(Host, Option<u16>)>),
    /// A request for `target` that came `via`.
    Request(Target, Via),
}

/// A head refused before anything is decided: recorded as a `protocol` denial.
#[derive(Debug)]
pub(crate) struct BadHead {
    pub kind: &'static str,
    pub status: StatusCode,
    pub reason: String,
}

fn bad(status: StatusCode, reason: impl Into<String>) -> BadHead {
    BadHead { kind: "http", status, reason: reason.into() }
}

/// Checks a request head and finds its target from what the connection may name:
/// framing two parsers could read differently, a second host, a URL or Host header
/// naming another host than the connection's — each is refused here.
pub(crate) fn read_head<B>(conn: &ConnCtx, req: &Request<B>) -> Result<Head, BadHead> {
    let head_len: usize =
        uri_len(req.uri()) + req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>();
    if head_len > MAX_HEAD {
        let reason = format!("request head larger than {} KiB", MAX_HEAD / 1024);
        return Err(bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, reason));
    }
    check_method(req.method())
        .and_then(|()| check_framing(req.headers()))
        .map_err(|reason| bad(StatusCode::BAD_REQUEST, reason))?;
    let host_hdr = match req.headers().get(header::HOST) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| "Host header is not ASCII".to_string())
                .and_then(split_authority)
                .map_err(|reason| bad(StatusCode::BAD_REQUEST, format!("bad Host header: {reason}")))?,
        ),
    };
    let uri_target = uri_target(req.uri()).map_err(|reason| bad(StatusCode::BAD_REQUEST, reason))?;
    if req.method() == Method::CONNECT {
        return match &conn.kind {
            ConnKind::Proxy => Ok(Head::Connect(host_hdr)),
            _ => Err(BadHead {
                kind: "connect",
                status: StatusCode::FORBIDDEN,
                reason: "CONNECT inside a tunnel or a transparent connection is never allowed (relay through an allowed host)".into(),
            }),
        };
    }
    // The target of the request, from what this connection may name.
    let (target, via) = match &conn.kind {
        ConnKind::Proxy => {
            let Some(t) = uri_target.clone() else {
                return Err(bad(
                    StatusCode::BAD_REQUEST,
                    "the proxy needs absolute-form requests (`GET http://host/path`) or CONNECT",
                ));
            };
            (t, Via::Proxy)
        }
        ConnKind::Inner { host, port, tls, via, .. } => (Target { tls: *tls, host: host.clone(), port: *port }, *via),
        ConnKind::TransparentHttp { port, pinned } => {
            let Some((h, p)) = host_hdr.clone() else {
                return Err(bad(
                    StatusCode::BAD_REQUEST,
                    "no Host header: the transparent gateway cannot tell which host this is for",
                ));
            };
            let second_host = {
                let mut pin = pinned.lock().unwrap_or_else(|e| e.into_inner());
                match &*pin {
                    Some(prev) if *prev != h => true,
                    _ => {
                        *pin = Some(h.clone());
                        false
                    }
                }
            };
            if second_host {
                return Err(bad(StatusCode::MISDIRECTED_REQUEST, "a second host on the same transparent connection"));
            }
            if p.is_some_and(|p| p != *port) {
                return Err(bad(
                    StatusCode::MISDIRECTED_REQUEST,
                    "the Host header's port is not the port the connection went to",
                ));
            }
            (Target { tls: false, host: h, port: *port }, Via::Transparent)
        }
    };
    // Everything that names a host must name the same one.
    if let Some((h, p)) = &host_hdr {
        let port_ok = p.is_none_or(|p| p == target.port);
        if *h != target.host || !port_ok {
            return Err(bad(
                StatusCode::MISDIRECTED_REQUEST,
                format!("the Host header names `{}` but the request goes to `{}`", h, target.authority()),
            ));
        }
    } else if !matches!(conn.kind, ConnKind::Proxy) {
        return Err(bad(StatusCode::BAD_REQUEST, "HTTP/1.1 request without a Host header"));
    }
    if !matches!(conn.kind, ConnKind::Proxy) {
        if let Some(u) = &uri_target {
            if u.host != target.host || u.port != target.port || u.tls != target.tls {
                return Err(bad(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!(
                        "the URL names `{}://{}` but this connection goes to `{}://{}`",
                        u.scheme(),
                        u.authority(),
                        target.scheme(),
                        target.authority()
                    ),
                ));
            }
        }
    }
    Ok(Head::Request(target, via))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        let (h, p) = split_authority("API.Example.com.:8443").unwrap();
        assert_eq!((h.as_str(), p), ("api.example.com", Some(8443)));
        let (h, p) = split_authority("[::1]:443").unwrap();
        assert_eq!((h.as_str(), p), ("::1", Some(443)));
        for bad in [
            "a@b.com:443",
            "evil.com\0.allowed.com",
            "0x7f000001:80",
            "h:0",
            "h:+1",
            "h:99999",
            "::1:443",
            "2130706433",
        ] {
            assert!(split_authority(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn framing() {
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("a"));
        assert!(check_framing(&h).is_ok());
        h.append(header::HOST, HeaderValue::from_static("b"));
        assert!(check_framing(&h).is_err());
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
        h.append(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(check_framing(&h).is_err());
    }
}
