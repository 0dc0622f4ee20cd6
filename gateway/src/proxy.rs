//! The request pipeline: every way into the gateway (absolute-form HTTP, CONNECT with
//! or without interception, transparent HTTP and TLS) ends in the same few functions,
//! so a request is decided, recorded and forwarded the same way whichever door it
//! used (ATTACKS.md class 1).
//!
//! Order for every request: refuse ambiguity → decide → budget spent? (deny or hold)
//! → (hold) → rate → resolve and SSRF-check → charge the budgets → append the audit
//! event and wait until it is durable → forward.
//! Any error before forwarding is a refusal, never a pass (class 6).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use gvm_policy::{Host, OnExhausted};

use crate::answer::{self, Described, RespBody};
use crate::body::{Completion, Counting, LeakWatch, Scanned};
use crate::budget::Admit;
use crate::decide::{ConnectRuling, Leak, Place, ProfileState, Ruling, Verdict};
use crate::holds::{HeldInfo, HoldOutcome};
use crate::limit::Slot;
use crate::stream::{sniff, Prefixed, Sniffed};
use crate::upstream::{PoolKey, Upstreams};
use crate::Inner;

/// Largest request head accepted from an agent.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// How long the head of a request may take to arrive.
pub(crate) const HEAD_TIMEOUT: std::time::Duration = crate::stream::STALL_LIMIT;
/// How long a tunnel waits for the client's first byte before assuming a
/// server-speaks-first protocol.
const FIRST_BYTE_WAIT: Duration = Duration::from_secs(1);

/// How the connection reached the gateway (recorded as `details.via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Proxy,
    Connect,
    Intercept,
    Transparent,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Proxy => "proxy",
            Via::Connect => "connect",
            Via::Intercept => "intercept",
            Via::Transparent => "transparent",
        }
    }
}

/// Why a decision was not recorded — and so nothing was forwarded.
#[derive(Debug)]
pub(crate) enum NotRecorded {
    /// The audit store failed: 503.
    Store(String),
    /// The profile is past one of its `[limits]`: 429.
    OverBudget { limit: &'static str, value: String },
}

impl NotRecorded {
    pub(crate) fn answer(&self, profile: &str, what: &Described) -> Response<RespBody> {
        match self {
            NotRecorded::Store(e) => answer::unavailable(profile, what, e),
            NotRecorded::OverBudget { limit, value } => answer::over_limit(profile, what, limit, value),
        }
    }
}

/// What a connection is allowed to name.
pub(crate) enum ConnKind {
    /// The explicit proxy listener: absolute-form requests and CONNECT.
    Proxy,
    /// Inside a CONNECT tunnel or a transparent TLS connection: every request must
    /// name exactly this host and port.
    Inner { host: Host, port: u16, tls: bool, via: Via },
    /// Transparent plain HTTP: the first Host header names the connection.
    TransparentHttp { port: u16, pinned: Mutex<Option<Host>> },
}

pub(crate) struct ConnCtx {
    pub profile: Arc<str>,
    pub kind: ConnKind,
    /// The connection's place in the profile's `[limits] connections`, kept by
    /// whatever outlives the HTTP exchange (a tunnel, a WebSocket) until it ends.
    pub _slot: Arc<Slot>,
}

/// Where a request goes.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub tls: bool,
    pub host: Host,
    pub port: u16,
}

impl Target {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
    fn default_port(&self) -> bool {
        self.port == if self.tls { 443 } else { 80 }
    }
    fn authority(&self) -> String {
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
fn remove_twins(headers: &mut HeaderMap, inject: &[(HeaderName, HeaderValue)]) {
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

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))).unwrap_or(false)
        })
}

fn strip_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
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

impl Inner {
    /// Serves HTTP/1.1 on one agent connection. (Boxed: tunnels serve HTTP inside
    /// connections that HTTP opened, and the recursion needs a named future type.)
    pub(crate) fn serve_http<S>(
        self: Arc<Self>,
        io: S,
        conn: Arc<ConnCtx>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Box::pin(async move {
            let this = self.clone();
            let svc = service_fn(move |req| {
                let this = this.clone();
                let conn = conn.clone();
                async move { Ok::<_, Infallible>(this.handle(conn, req).await) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            // A client that dribbles its request head (slowloris) is cut off: the head of
            // every request, also on a kept-alive connection, must arrive within 30 s.
            b.max_buf_size(MAX_HEAD)
                .keep_alive(true)
                .title_case_headers(false)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            if let Err(e) = b.serve_connection(TokioIo::new(io), svc).with_upgrades().await {
                tracing::debug!("agent connection ended: {e}");
            }
        })
    }

    async fn handle(self: Arc<Self>, conn: Arc<ConnCtx>, req: Request<Incoming>) -> Response<RespBody> {
        // Only refusals describe the request: built when one is needed.
        let described = || Described { method: req.method().to_string(), url: req.uri().to_string() };
        let head_len: usize =
            uri_len(req.uri()) + req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>();
        if head_len > MAX_HEAD {
            let reason = format!("request head larger than {} KiB", MAX_HEAD / 1024);
            return self
                .refuse(&conn.profile, "http", StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &described(), &reason, None)
                .await;
        }
        if let Err(reason) = check_method(req.method()).and_then(|()| check_framing(req.headers())) {
            return self.refuse(&conn.profile, "http", StatusCode::BAD_REQUEST, &described(), &reason, None).await;
        }
        let host_hdr = match req.headers().get(header::HOST) {
            None => None,
            Some(v) => match v.to_str().map_err(|_| "Host header is not ASCII".to_string()).and_then(split_authority) {
                Ok(h) => Some(h),
                Err(reason) => {
                    return self
                        .refuse(
                            &conn.profile,
                            "http",
                            StatusCode::BAD_REQUEST,
                            &described(),
                            &format!("bad Host header: {reason}"),
                            None,
                        )
                        .await
                }
            },
        };
        let uri_target = match uri_target(req.uri()) {
            Ok(t) => t,
            Err(reason) => {
                return self.refuse(&conn.profile, "http", StatusCode::BAD_REQUEST, &described(), &reason, None).await
            }
        };
        if req.method() == Method::CONNECT {
            return match &conn.kind {
                ConnKind::Proxy => self.connect(conn.clone(), req, host_hdr).await,
                _ => {
                    self.refuse(&conn.profile, "connect", StatusCode::FORBIDDEN, &described(),
                        "CONNECT inside a tunnel or a transparent connection is never allowed (relay through an allowed host)", None)
                        .await
                }
            };
        }
        // The target of the request, from what this connection may name.
        let (target, via) = match &conn.kind {
            ConnKind::Proxy => {
                let Some(t) = uri_target.clone() else {
                    return self
                        .refuse(
                            &conn.profile,
                            "http",
                            StatusCode::BAD_REQUEST,
                            &described(),
                            "the proxy needs absolute-form requests (`GET http://host/path`) or CONNECT",
                            None,
                        )
                        .await;
                };
                (t, Via::Proxy)
            }
            ConnKind::Inner { host, port, tls, via } => (Target { tls: *tls, host: host.clone(), port: *port }, *via),
            ConnKind::TransparentHttp { port, pinned } => {
                let Some((h, p)) = host_hdr.clone() else {
                    return self
                        .refuse(
                            &conn.profile,
                            "http",
                            StatusCode::BAD_REQUEST,
                            &described(),
                            "no Host header: the transparent gateway cannot tell which host this is for",
                            None,
                        )
                        .await;
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
                    return self
                        .refuse(
                            &conn.profile,
                            "http",
                            StatusCode::MISDIRECTED_REQUEST,
                            &described(),
                            "a second host on the same transparent connection",
                            None,
                        )
                        .await;
                }
                if p.is_some_and(|p| p != *port) {
                    return self
                        .refuse(
                            &conn.profile,
                            "http",
                            StatusCode::MISDIRECTED_REQUEST,
                            &described(),
                            "the Host header's port is not the port the connection went to",
                            None,
                        )
                        .await;
                }
                (Target { tls: false, host: h, port: *port }, Via::Transparent)
            }
        };
        // Everything that names a host must name the same one.
        if let Some((h, p)) = &host_hdr {
            let port_ok = p.is_none_or(|p| p == target.port);
            if *h != target.host || !port_ok {
                return self
                    .refuse(
                        &conn.profile,
                        "http",
                        StatusCode::MISDIRECTED_REQUEST,
                        &described(),
                        &format!("the Host header names `{}` but the request goes to `{}`", h, target.authority()),
                        None,
                    )
                    .await;
            }
        } else if !matches!(conn.kind, ConnKind::Proxy) {
            return self
                .refuse(
                    &conn.profile,
                    "http",
                    StatusCode::BAD_REQUEST,
                    &described(),
                    "HTTP/1.1 request without a Host header",
                    None,
                )
                .await;
        }
        if !matches!(conn.kind, ConnKind::Proxy) {
            if let Some(u) = &uri_target {
                if u.host != target.host || u.port != target.port || u.tls != target.tls {
                    return self
                        .refuse(
                            &conn.profile,
                            "http",
                            StatusCode::MISDIRECTED_REQUEST,
                            &described(),
                            &format!(
                                "the URL names `{}://{}` but this connection goes to `{}://{}`",
                                u.scheme(),
                                u.authority(),
                                target.scheme(),
                                target.authority()
                            ),
                            None,
                        )
                        .await;
                }
            }
        }
        self.forward(conn, target, via, req).await
    }

    /// Records a refusal and answers it (503 when even the refusal cannot be recorded).
    async fn refuse(
        &self,
        profile: &str,
        kind: &str,
        status: StatusCode,
        what: &Described,
        reason: &str,
        via: Option<Via>,
    ) -> Response<RespBody> {
        let details = json!({
            "method": what.method, "url": what.url, "status": status.as_u16(),
            "reason": reason, "via": via.map(Via::as_str),
        });
        if let Err(e) = self.note(kind, profile, "deny", Some("protocol"), details).await {
            return e.answer(profile, what);
        }
        answer::refused(status, profile, what, reason)
    }

    /// Records a decision that forwards something (allow, watch, hold) and waits until
    /// it is durable; its sequence number goes into the completion record. Past the
    /// profile's `[limits] decisions` it is refused instead: nothing is forwarded
    /// unrecorded. (`details` by value or by reference: rendered here, never cloned.)
    pub(crate) async fn record(
        &self,
        kind: &str,
        profile: &str,
        decision: &str,
        rule: Option<&str>,
        details: impl std::borrow::Borrow<Value>,
    ) -> Result<u64, NotRecorded> {
        match self.write(kind, profile, decision, rule, details.borrow()).await? {
            Some(seq) => Ok(seq),
            // Only decisions that forward nothing fold; fail closed if one did.
            None => Err(NotRecorded::Store(format!("a `{decision}` decision cannot be folded"))),
        }
    }

    /// Records a decision that forwards nothing (a refusal, a DNS answer, the
    /// `intercept` step): an identical repeat, or one past the budget, is only counted
    /// (`budget.rs`) and answered at once.
    pub(crate) async fn note(
        &self,
        kind: &str,
        profile: &str,
        decision: &str,
        rule: Option<&str>,
        details: impl std::borrow::Borrow<Value>,
    ) -> Result<(), NotRecorded> {
        self.write(kind, profile, decision, rule, details.borrow()).await.map(drop)
    }

    async fn write(
        &self,
        kind: &str,
        profile: &str,
        decision: &str,
        rule: Option<&str>,
        details: &Value,
    ) -> Result<Option<u64>, NotRecorded> {
        let key = match self.budgets.admit(profile, kind, decision, rule, details) {
            Admit::Record(key) => key,
            Admit::Folded => return Ok(None),
            Admit::OverBudget { limit, value } => return Err(NotRecorded::OverBudget { limit, value }),
        };
        let ev = gvm_audit::EventRef { profile: Some(profile), kind, decision: Some(decision), rule, details };
        let seq = crate::audit_glue::append_ref(&self.audit, ev).await.map_err(NotRecorded::Store)?;
        if let Some(key) = key {
            self.budgets.recorded(profile, key, seq, (kind, decision, rule, details));
        }
        Ok(Some(seq))
    }

    /// Decides a request on a known target, then (if allowed) forwards it.
    async fn forward(
        self: Arc<Self>,
        conn: Arc<ConnCtx>,
        target: Target,
        via: Via,
        mut req: Request<Incoming>,
    ) -> Response<RespBody> {
        let start = Instant::now();
        let profile = conn.profile.clone();
        let method = req.method().clone();
        let path_q = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let path = path_q.split('?').next().unwrap_or("/").to_string();
        let what = Described {
            method: method.to_string(),
            url: format!("{}://{}{}", target.scheme(), target.authority(), path_q),
        };
        let mut details = json!({
            "method": method.as_str(), "scheme": target.scheme(), "host": target.host.as_str(),
            "port": target.port, "path": path, "via": via.as_str(),
        });
        let Some(state) = self.profile(&profile) else {
            return self.deny_event("http", &profile, None, &what, details, "the profile is not loaded").await;
        };
        let ruling = state.decide(target.scheme(), &target.host, target.port, method.as_str(), &path);
        // The scan reads the agent's bytes as it sent them, before gvm adds anything:
        // an injected or swapped-in value is never flagged (ARCHITECTURE.md).
        if let Some(scan) = &state.scan {
            let swap = match check_head(&state, scan, &ruling, &target, &path_q, req.headers()) {
                Ok(s) => s,
                Err((leak, place)) => {
                    let what = if place == Place::Url {
                        Described {
                            method: what.method.clone(),
                            url: format!("{}://{}/[redacted]", target.scheme(), target.authority()),
                        }
                    } else {
                        what
                    };
                    return self.leak(&profile, ruling.rule.as_deref(), &what, details, &leak, place).await;
                }
            };
            if let Err(reason) = swap_placeholders(&state, &swap, req.headers_mut()) {
                return self
                    .deny_event("secret_egress", &profile, ruling.rule.as_deref(), &what, details, &reason)
                    .await;
            }
        }
        let body = body_summary(req.headers());
        let addr = match self.admit("http", &state, &ruling, &target, &what, &mut details, body).await {
            Ok(a) => a,
            Err(resp) => return resp,
        };
        // Durable before anything is forwarded.
        let seq = match self.record("http", &profile, ruling.audit_decision(), ruling.rule.as_deref(), &details).await {
            Ok(s) => s,
            Err(e) => return e.answer(&profile, &what),
        };
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let leak_details = state.scan.is_some().then(|| details.clone());
        let done = Arc::new(self.completion("http", &profile, &ruling, details, seq, start));

        let (mut parts, body) = req.into_parts();
        strip_hop(&mut parts.headers, upgrade);
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_str(&target.authority()).unwrap_or(HeaderValue::from_static("invalid")),
        );
        if !ruling.inject.is_empty() {
            remove_twins(&mut parts.headers, &ruling.inject);
        }
        // A priced host answers uncompressed, so that its usage can be read (usage.rs).
        let prices = self.prices.read().unwrap_or_else(|e| e.into_inner()).get(target.host.as_str()).cloned();
        if prices.is_some() {
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        for (name, value) in &ruling.inject {
            // A client-sent value never travels beside the injected one (class 9).
            parts.headers.remove(name);
            parts.headers.insert(name.clone(), value.clone());
        }
        parts.uri = match Uri::builder().path_and_query(path_q.as_str()).build() {
            Ok(u) => u,
            Err(_) => Uri::from_static("/"),
        };
        parts.version = http::Version::HTTP_11;
        let body = Counting::new(body, Some(done.clone()), true).throttled(state.body.clone());
        let mut swap = crate::body_swap::for_request(&state, target.tls, &target.host);
        crate::body_swap::BodySwap::prepare(&mut swap, http_body::Body::is_end_stream(&body), &mut parts.headers);
        let watch = match (&state.scan, &leak_details) {
            (Some(scan), Some(d)) => {
                let late =
                    self.clone().late_leak(state.clone(), ruling.clone(), target.clone(), what.clone(), d.clone());
                let allowed = swap.as_ref().map(|s| s.needles.clone()).unwrap_or_default();
                Some((scan.stream().allowing(allowed), Arc::new(LeakWatch::new(late))))
            }
            _ => None,
        };
        let watching = watch.as_ref().map(|(_, w)| w.clone());
        let up_req = Request::from_parts(parts, Scanned::new(body, watch).swapping(swap));

        let key = PoolKey {
            profile: profile.clone(),
            tls: target.tls,
            host: target.host.as_str().to_string(),
            port: target.port,
            addr,
        };
        let mut sender = match self.upstreams.checkout(&key) {
            Some(s) => s,
            None => match self.upstreams.connect(&key).await {
                Ok(s) => s,
                Err(e) => {
                    done.status.store(502, Ordering::Relaxed);
                    return answer::bad_gateway(&profile, &what, &e);
                }
            },
        };
        let sent = sender.send_request(up_req).await;
        if let Some(hit) = watching.as_ref().and_then(|w| w.respond()) {
            // The body failed at the chunk that completed the match: hyper aborted the
            // upstream request, and the connection is not returned to the pool.
            done.status.store(403, Ordering::Relaxed);
            let leak = state.judge(&hit, Place::Body, &ruling, target.tls, &target.host).err();
            let leak = leak.unwrap_or_else(|| Leak::Egress { secret: String::new(), reason: "unexpected".into() });
            let details = leak_details.unwrap_or_default();
            return self.leak(&profile, ruling.rule.as_deref(), &what, details, &leak, Place::Body).await;
        }
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                done.status.store(502, Ordering::Relaxed);
                return answer::bad_gateway(&profile, &what, &e.to_string());
            }
        };
        let mut resp = resp;
        done.status.store(resp.status().as_u16(), Ordering::Relaxed);
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let server_upgrade = hyper::upgrade::on(&mut resp);
                let done2 = done.clone();
                let conn = conn.clone();
                tokio::spawn(async move {
                    let _slot = conn; // the connection's slot, until the WebSocket ends
                    let (Ok(c), Ok(s)) = (client_upgrade.await, server_upgrade.await) else {
                        return;
                    };
                    let mut c = TokioIo::new(c);
                    let mut s = TokioIo::new(s);
                    if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                        done2.up.fetch_add(up, Ordering::Relaxed);
                        done2.down.fetch_add(down, Ordering::Relaxed);
                    }
                });
            }
        } else {
            Upstreams::checkin(&self.upstreams, key, sender);
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop(&mut parts.headers, parts.status == StatusCode::SWITCHING_PROTOCOLS);
        use http_body_util::BodyExt;
        let body = Counting::new(body, Some(done.clone()), false);
        match prices.filter(|_| parts.status != StatusCode::SWITCHING_PROTOCOLS) {
            Some(table) => {
                let charged_to = state.budgets(&ruling);
                let this = self.clone();
                let on_end: crate::usage::OnEnd = Box::new(move |kept| {
                    let usage = kept.and_then(crate::usage::parse);
                    let cost = crate::usage::cost(&table, usage.as_ref());
                    let money = gvm_policy::Money::from_f64(cost).unwrap_or(gvm_policy::Money(u64::MAX));
                    *done.usage.lock().unwrap_or_else(|e| e.into_inner()) = Some(match &usage {
                        Some(u) => json!({
                            "model": u.model, "input_tokens": u.input, "output_tokens": u.output, "cost": money.as_f64(),
                        }),
                        None => json!({ "unread": true, "cost": money.as_f64() }),
                    });
                    let now = time::OffsetDateTime::now_utc();
                    for n in this.spend.add_money(&profile, &charged_to, money, now) {
                        this.budget_notice(&n);
                    }
                });
                Response::from_parts(parts, crate::usage::UsageTap::new(body, on_end).boxed())
            }
            None => Response::from_parts(parts, body.boxed()),
        }
    }

    /// Hold, deny, rate and SSRF: everything between the decision and the durable
    /// allow event. `Ok(addr)`: go ahead and connect to exactly `addr`.
    #[allow(clippy::too_many_arguments)]
    async fn admit(
        &self,
        kind: &str,
        state: &ProfileState,
        ruling: &Ruling,
        target: &Target,
        what: &Described,
        details: &mut Value,
        body: Option<String>,
    ) -> Result<SocketAddr, Response<RespBody>> {
        state.stamp(details);
        let profile = state.name.clone();
        let rule = ruling.rule.as_deref();
        // Budgets are money: checked in watch mode too (spend.rs).
        let charged_to = if ruling.verdict == Verdict::Deny { Vec::new() } else { state.budgets(ruling) };
        let cost = state.cost(ruling);
        let mut verdict = ruling.verdict;
        if let Some(ex) = self.spend.exhausted(&profile, &charged_to, cost, time::OffsetDateTime::now_utc()) {
            match ex.budget.on_exhausted {
                OnExhausted::Deny => return Err(self.budget_spent(kind, &profile, rule, what, details, &ex).await),
                OnExhausted::Hold => {
                    details["budget_exhausted"] = json!(ex.name);
                    verdict = Verdict::Hold;
                }
            }
        }
        let mut approved = false;
        match verdict {
            Verdict::Deny => {
                return Err(self
                    .deny_event(kind, &profile, rule, what, details.clone(), "the profile's rules do not allow it")
                    .await)
            }
            Verdict::Hold => {
                let place = self.budgets.hold(&profile, || json!({"method": what.method, "url": what.url}));
                let _place = match place {
                    Ok(p) => p,
                    Err(value) => return Err(answer::over_limit(&profile, what, "held_requests", &value)),
                };
                let since = time::OffsetDateTime::now_utc();
                let info = HeldInfo {
                    profile: profile.to_string(),
                    method: what.method.clone(),
                    url: what.url.clone(),
                    rule: ruling.rule.clone(),
                    body,
                    since,
                    expires_at: since + ruling.hold_timeout,
                };
                let (id, wait) = match self.holds.hold(info, ruling.hold_timeout).await {
                    Ok(held) => held,
                    Err(e) => {
                        // Fail closed: nobody could be asked, so nothing goes out.
                        return Err(self
                            .deny_event(
                                kind,
                                &profile,
                                rule,
                                what,
                                details.clone(),
                                &format!("the request could not be queued for approval: {e}"),
                            )
                            .await);
                    }
                };
                details["hold_id"] = json!(id);
                if let Err(e) = self.record(kind, &profile, "hold", rule, &*details).await {
                    return Err(e.answer(&profile, what));
                }
                match wait.await {
                    HoldOutcome::Approved => {
                        details["hold"] = json!("approved");
                        approved = true;
                    }
                    HoldOutcome::Denied => {
                        details["hold"] = json!("denied");
                        return Err(self
                            .deny_event(
                                kind,
                                &profile,
                                rule,
                                what,
                                details.clone(),
                                &format!("held request {id} was denied by the operator"),
                            )
                            .await);
                    }
                    HoldOutcome::TimedOut => {
                        details["hold"] = json!("timeout");
                        return Err(self
                            .deny_event(
                                kind,
                                &profile,
                                rule,
                                what,
                                details.clone(),
                                &format!(
                                    "held request {id} was not approved within {} s",
                                    ruling.hold_timeout.as_secs()
                                ),
                            )
                            .await);
                    }
                }
            }
            Verdict::Allow => {}
        }
        if let Some((burst, per)) = ruling.rate {
            let rule_key = ruling.rule_index.map_or_else(|| "default".to_string(), |i| format!("network.rule[{i}]"));
            if let Err(wait) = self.rate.take(&profile, &rule_key, burst, per, Instant::now()) {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                details["status"] = json!(429);
                details["retry_after"] = json!(secs);
                if let Err(e) = self.note(kind, &profile, "limit", rule, &*details).await {
                    return Err(e.answer(&profile, what));
                }
                return Err(answer::rate_limited(&profile, &rule_key, what, secs));
            }
        }
        let port = target.port;
        match self.resolver.resolve(target.host.as_str(), port, &|ip| state.names_ip(ip, port)).await {
            Ok(addr) => {
                details["addr"] = json!(addr.to_string());
                // Charged last, all budgets or none: a request that gets this far is
                // forwarded unless its event cannot be recorded.
                match self.spend.charge(&profile, &charged_to, cost, time::OffsetDateTime::now_utc(), approved) {
                    Ok(crossed) => crossed.iter().for_each(|n| self.budget_notice(n)),
                    Err(ex) => return Err(self.budget_spent(kind, &profile, rule, what, details, &ex).await),
                }
                Ok(addr)
            }
            Err(e) => {
                details["ssrf"] = json!(true);
                Err(self
                    .deny_event(kind, &profile, Some("upstream-safety"), what, details.clone(), &e.to_string())
                    .await)
            }
        }
    }

    /// Records (decision `limit`) and answers (429) a request whose budget is spent.
    async fn budget_spent(
        &self,
        kind: &str,
        profile: &str,
        rule: Option<&str>,
        what: &Described,
        details: &mut Value,
        ex: &crate::spend::Exhausted,
    ) -> Response<RespBody> {
        details["status"] = json!(429);
        details["budget"] = json!(ex.name);
        details["limit"] = ex.limit_json();
        details["spent"] = ex.spent_json();
        details["resets_at"] = json!(ex.resets_at_rfc3339());
        if let Err(e) = self.note(kind, profile, "limit", rule, &*details).await {
            return e.answer(profile, what);
        }
        answer::budget_exhausted(profile, what, ex)
    }

    /// Records and answers a request refused for what it carries (`exfiltration` or
    /// `secret_egress`, decision deny). Names the secret or file, never the value.
    async fn leak(
        &self,
        profile: &str,
        rule: Option<&str>,
        what: &Described,
        mut details: Value,
        leak: &Leak,
        place: Place,
    ) -> Response<RespBody> {
        details["status"] = json!(403);
        details[leak.kind()] = json!(leak.label());
        details["place"] = json!(place.as_str());
        details["reason"] = json!(leak.reason());
        if let Leak::Egress { secret, .. } | Leak::Exfiltration { secret: Some(secret), .. } = leak {
            details["secret"] = json!(secret);
        }
        if place == Place::Url {
            details["path"] = json!("[redacted]");
        }
        if let Err(e) = self.note(leak.kind(), profile, "deny", rule, details).await {
            return e.answer(profile, what);
        }
        answer::leaked(profile, what, leak.kind(), &leak.label(), &leak.reason())
    }

    /// What records a body hit found after the response reached the agent.
    fn late_leak(
        self: Arc<Self>,
        state: Arc<ProfileState>,
        ruling: Ruling,
        target: Target,
        what: Described,
        details: Value,
    ) -> Box<dyn FnOnce(crate::exfil::Hit) + Send> {
        Box::new(move |hit| {
            let Err(leak) = state.judge(&hit, Place::Body, &ruling, target.tls, &target.host) else { return };
            tokio::spawn(async move {
                let profile = state.name.clone();
                let _ = self.leak(&profile, ruling.rule.as_deref(), &what, details, &leak, Place::Body).await;
            });
        })
    }

    async fn deny_event(
        &self,
        kind: &str,
        profile: &str,
        rule: Option<&str>,
        what: &Described,
        mut details: Value,
        reason: &str,
    ) -> Response<RespBody> {
        details["status"] = json!(403);
        details["reason"] = json!(reason);
        if let Err(e) = self.note(kind, profile, "deny", rule, details).await {
            return e.answer(profile, what);
        }
        answer::denied(profile, rule, what, reason)
    }

    /// The completion record, appended (not awaited by the agent) when the exchange ends.
    fn completion(
        &self,
        kind: &str,
        profile: &str,
        ruling: &Ruling,
        details: Value,
        seq: u64,
        start: Instant,
    ) -> Completion {
        let audit = self.audit.clone();
        let ev = gvm_audit::NewEvent {
            profile: Some(profile.to_string()),
            kind: format!("{kind}.done"),
            decision: Some(ruling.audit_decision().to_string()),
            rule: ruling.rule.clone(),
            details,
        };
        Completion {
            start,
            up: 0.into(),
            down: 0.into(),
            status: 0.into(),
            usage: Mutex::new(None),
            on_done: Some(Box::new(move |status, up, down, ms, usage| {
                let mut ev = ev;
                let details = &mut ev.details;
                details["decision_seq"] = json!(seq);
                details["status"] = json!(status);
                details["bytes_up"] = json!(up);
                details["bytes_down"] = json!(down);
                details["duration_ms"] = json!(ms);
                if let Some(u) = usage {
                    details["usage"] = u;
                }
                crate::audit_glue::append_nowait(&audit, ev);
            })),
        }
    }

    /// CONNECT on the explicit proxy.
    async fn connect(
        self: Arc<Self>,
        conn: Arc<ConnCtx>,
        mut req: Request<Incoming>,
        host_hdr: Option<(Host, Option<u16>)>,
    ) -> Response<RespBody> {
        let profile = conn.profile.clone();
        let raw = req.uri().authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let what = Described { method: "CONNECT".into(), url: raw.clone() };
        let (host, port) = match split_authority(&raw) {
            Ok((h, Some(p)))
                if req.uri().scheme().is_none()
                    && req.uri().path_and_query().is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/") =>
            {
                (h, p)
            }
            Ok(_) => {
                return self
                    .refuse(
                        &profile,
                        "connect",
                        StatusCode::BAD_REQUEST,
                        &what,
                        "CONNECT needs `host:port`",
                        Some(Via::Connect),
                    )
                    .await
            }
            Err(e) => {
                return self.refuse(&profile, "connect", StatusCode::BAD_REQUEST, &what, &e, Some(Via::Connect)).await
            }
        };
        if let Some((h, p)) = host_hdr {
            if h != host || p.is_some_and(|p| p != port) {
                return self
                    .refuse(
                        &profile,
                        "connect",
                        StatusCode::MISDIRECTED_REQUEST,
                        &what,
                        "the Host header does not name the CONNECT target",
                        Some(Via::Connect),
                    )
                    .await;
            }
        }
        let what = Described { method: "CONNECT".into(), url: format!("{}:{port}", host.url_form()) };
        let target = Target { tls: port != 80, host: host.clone(), port };
        let on_upgrade = hyper::upgrade::on(&mut req);
        match self.admit_tunnel(&profile, &target, Via::Connect, &what).await {
            Err(resp) => resp,
            Ok(plan) => {
                let this = self.clone();
                tokio::spawn(async move {
                    let Ok(up) = on_upgrade.await else { return };
                    this.tunnel(profile, TokioIo::new(up), target, plan, Via::Connect, conn._slot.clone()).await;
                });
                Response::new(answer::empty())
            }
        }
    }

    /// The host-level decision for a tunnel (CONNECT, transparent TLS).
    pub(crate) async fn admit_tunnel(
        &self,
        profile: &Arc<str>,
        target: &Target,
        via: Via,
        what: &Described,
    ) -> Result<TunnelPlan, Response<RespBody>> {
        let mut details = json!({
            "method": "CONNECT", "host": target.host.as_str(), "port": target.port, "via": via.as_str(),
        });
        let Some(state) = self.profile(profile) else {
            return Err(self.deny_event("connect", profile, None, what, details, "the profile is not loaded").await);
        };
        let ruling = match state.decide_connect(&target.host, target.port) {
            // A tunnel would carry any number of requests past a budget (or a priced
            // host's usage): look inside unless the rule says it cannot be
            // (`intercept = false`, then the tunnel is charged as one request).
            ConnectRuling::Decided(r) if r.verdict != Verdict::Deny && self.counts_inside(&state, &r, target) => {
                ConnectRuling::Intercept
            }
            other => other,
        };
        match ruling {
            ConnectRuling::Intercept => {
                state.stamp(&mut details);
                if let Err(e) = self.note("connect", profile, "intercept", None, details).await {
                    return Err(e.answer(profile, what));
                }
                Ok(TunnelPlan::Intercept)
            }
            ConnectRuling::Decided(ruling) => {
                let addr = self.admit("connect", &state, &ruling, target, what, &mut details, None).await?;
                let seq = match self
                    .record("connect", profile, ruling.audit_decision(), ruling.rule.as_deref(), &details)
                    .await
                {
                    Ok(s) => s,
                    Err(e) => return Err(e.answer(profile, what)),
                };
                let done = self.completion("connect", profile, &ruling, details, seq, Instant::now());
                Ok(TunnelPlan::Splice { addr, done: Arc::new(done) })
            }
        }
    }

    /// True when the requests inside a tunnel decided by `ruling` must be looked at
    /// one by one: a budget applies, or the host's LLM usage is priced, and the rule
    /// does not forbid interception.
    fn counts_inside(&self, state: &ProfileState, ruling: &Ruling, target: &Target) -> bool {
        let tunnel_only = ruling.rule_index.and_then(|i| state.rule_tunnel.get(i).copied()).unwrap_or(false);
        let priced = self.prices.read().unwrap_or_else(|e| e.into_inner()).contains_key(target.host.as_str());
        !tunnel_only && (priced || !state.budgets(ruling).is_empty())
    }

    /// After the tunnel is granted: look at the first bytes and apply the same policy
    /// to what is inside.
    pub(crate) async fn tunnel<S>(
        self: Arc<Self>,
        profile: Arc<str>,
        mut io: S,
        target: Target,
        plan: TunnelPlan,
        via: Via,
        slot: Arc<Slot>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let wait = match plan {
            TunnelPlan::Intercept => None,
            TunnelPlan::Splice { .. } => Some(FIRST_BYTE_WAIT),
        };
        let Ok((sniffed, prefix)) = sniff(&mut io, wait).await else { return };
        let io = Prefixed::new(prefix, io);
        match sniffed {
            Sniffed::Tls { sni } => {
                if let Some(sni) = sni {
                    if Host::parse(&sni).ok().as_ref() != Some(&target.host) {
                        let what = Described {
                            method: "CONNECT".into(),
                            url: format!("{}:{}", target.host.url_form(), target.port),
                        };
                        let details = json!({
                            "method": "CONNECT", "host": target.host.as_str(), "port": target.port,
                            "sni": sni, "via": via.as_str(), "status": 421,
                            "reason": "TLS SNI does not name the tunnel's host (domain fronting)",
                        });
                        let _ = self.note("connect", &profile, "deny", Some("protocol"), details).await;
                        drop(what);
                        return;
                    }
                }
                match plan {
                    TunnelPlan::Intercept => self.intercept_tls(profile, io, target, via, slot).await,
                    TunnelPlan::Splice { addr, done } => splice(io, addr, done).await,
                }
            }
            Sniffed::Http => {
                let kind = ConnKind::Inner {
                    host: target.host.clone(),
                    port: target.port,
                    tls: false,
                    via: if via == Via::Transparent { via } else { Via::Connect },
                };
                // Plain HTTP inside a tunnel: every request is decided on its own.
                self.serve_http(io, Arc::new(ConnCtx { profile, kind, _slot: slot })).await;
            }
            Sniffed::Other => match plan {
                TunnelPlan::Splice { addr, done } => splice(io, addr, done).await,
                TunnelPlan::Intercept => {
                    let details = json!({
                        "method": "CONNECT", "host": target.host.as_str(), "port": target.port,
                        "via": via.as_str(), "status": 403,
                        "reason": "rules for this host look at requests, but the tunnel carries neither TLS nor HTTP",
                    });
                    let _ = self.note("connect", &profile, "deny", Some("protocol"), details).await;
                }
            },
        }
    }

    /// Terminates TLS with a leaf for the target and serves the requests inside.
    pub(crate) async fn intercept_tls<S>(
        self: Arc<Self>,
        profile: Arc<str>,
        io: S,
        target: Target,
        via: Via,
        slot: Arc<Slot>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = match self.server_config(target.host.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot mint a certificate for {}: {e}", target.host);
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        // A client that stops in the middle of the handshake is cut off too.
        let Ok(Ok(tls)) = tokio::time::timeout(crate::stream::STALL_LIMIT, acceptor.accept(io)).await else { return };
        let kind = ConnKind::Inner {
            host: target.host,
            port: target.port,
            tls: true,
            via: if via == Via::Transparent { via } else { Via::Intercept },
        };
        self.serve_http(tls, Arc::new(ConnCtx { profile, kind, _slot: slot })).await;
    }
}

pub(crate) enum TunnelPlan {
    Intercept,
    Splice { addr: SocketAddr, done: Arc<Completion> },
}

async fn splice<S>(mut io: S, addr: SocketAddr, done: Arc<Completion>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut up = match Upstreams::connect_raw(addr).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!("tunnel upstream: {e}");
            done.status.store(502, Ordering::Relaxed);
            let _ = io.shutdown().await;
            return;
        }
    };
    done.status.store(200, Ordering::Relaxed);
    if let Ok((a, b)) = tokio::io::copy_bidirectional(&mut io, &mut up).await {
        done.up.fetch_add(a, Ordering::Relaxed);
        done.down.fetch_add(b, Ordering::Relaxed);
    }
}

/// Scans the URL and the headers as the agent sent them. `Ok`: the secrets whose
/// placeholders appear (as they are, in header values, bound to this request) and are
/// to be swapped for their values; `Err`: the first thing that must not leave.
fn check_head(
    state: &ProfileState,
    scan: &crate::exfil::Scanner,
    ruling: &Ruling,
    target: &Target,
    path_q: &str,
    headers: &HeaderMap,
) -> Result<Vec<String>, (Leak, Place)> {
    if let Some(hit) = scan.scan_once(path_q.as_bytes()) {
        state.judge(&hit, Place::Url, ruling, target.tls, &target.host).map_err(|l| (l, Place::Url))?;
    }
    let mut swap: Vec<String> = Vec::new();
    for (name, value) in headers {
        if let Some(hit) = scan.scan_once(name.as_str().as_bytes()) {
            state
                .judge(&hit, Place::HeaderName, ruling, target.tls, &target.host)
                .map_err(|l| (l, Place::HeaderName))?;
        }
        for hit in scan.scan_all(value.as_bytes()) {
            state.judge(&hit, Place::Header, ruling, target.tls, &target.host).map_err(|l| (l, Place::Header))?;
            if let Some(s) = &scan.needles()[hit.needle].secret {
                if !swap.iter().any(|x| **x == **s) {
                    swap.push(s.to_string());
                }
            }
        }
    }
    Ok(swap)
}

/// Puts the real values of `secrets` where their placeholders are, in header values.
fn swap_placeholders(state: &ProfileState, secrets: &[String], headers: &mut HeaderMap) -> Result<(), String> {
    for name in secrets {
        let (Some(ph), Some(value)) = (state.placeholders.get(name), state.secrets.get(name)) else { continue };
        let value = value.as_ref().map_err(|e| format!("secret {name} cannot be read by gvmd: {e}"))?;
        for v in headers.values_mut() {
            let bytes = v.as_bytes();
            if !bytes.windows(ph.len()).any(|w| w == ph.as_bytes()) {
                continue;
            }
            let text = String::from_utf8_lossy(bytes).replace(ph.as_str(), value);
            let mut new = HeaderValue::from_str(&text)
                .map_err(|_| format!("secret {name}'s value cannot travel in a header (control characters)"))?;
            new.set_sensitive(true);
            *v = new;
        }
    }
    Ok(())
}

/// The length of `uri` as written (without formatting it).
fn uri_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let auth = uri.authority().map_or(0, |a| a.as_str().len());
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + auth + pq
}

/// The target named by an absolute-form request URI (`None` for origin-form).
fn uri_target(uri: &Uri) -> Result<Option<Target>, String> {
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
fn body_summary(headers: &http::HeaderMap) -> Option<String> {
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
