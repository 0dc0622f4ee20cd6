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
use std::time::Instant;

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use gvm_policy::{Host, OnExhausted};

use crate::answer::{self, Described, RespBody};
use crate::body::{Completion, Counting, LeakWatch, Scanned};
use crate::budget::Admit;
use crate::decide::{Leak, Place, ProfileState, Ruling, Verdict};
use crate::head::{self, Head, Target, HEAD_TIMEOUT, MAX_HEAD};
use crate::holds::{HeldInfo, HoldOutcome};
use crate::limit::Slot;
use crate::upstream::PoolKey;
use crate::Inner;

/// How the connection reached the gateway (recorded as `details.via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Proxy,
    Connect,
    Intercept,
    Transparent,
}

impl Via {
    pub(crate) fn as_str(self) -> &'static str {
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
    /// name exactly this host and port. `refused`: the rules refused the tunnel, and
    /// every request in it is answered with that refusal (`tunnel.rs`).
    Inner { host: Host, port: u16, tls: bool, via: Via, refused: Option<Arc<crate::tunnel::DeniedTunnel>> },
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

impl ConnCtx {
    /// The refusal every request on this connection gets, when its tunnel was refused.
    fn refused(&self) -> Option<&crate::tunnel::DeniedTunnel> {
        match &self.kind {
            ConnKind::Inner { refused, .. } => refused.as_deref(),
            _ => None,
        }
    }
}

/// Why a request (or a tunnel) is not forwarded. Every refusal leaves the pipeline as
/// one of these and is recorded and answered in one place, [`Inner::refuse`].
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The head or the connection is wrong (framing, a second host...): decision `deny`,
    /// rule `protocol`.
    Protocol { kind: &'static str, status: StatusCode, reason: String, via: Option<Via> },
    /// The rules (or a failure on the way, fail closed) deny it: 403.
    Denied { kind: &'static str, rule: Option<String>, details: Value, reason: String },
    /// A budget it would be charged to is spent: decision `limit`, 429.
    BudgetSpent { kind: &'static str, rule: Option<String>, details: Value, ex: crate::spend::Exhausted },
    /// The rule's `rate` is used up: decision `limit`, 429 with Retry-After.
    RateLimited { kind: &'static str, rule: Option<String>, details: Value, rule_key: String, secs: u64 },
    /// It carries a secret or a protected file's content where it must not go.
    Leaked { rule: Option<String>, details: Value, leak: Leak, place: Place },
    /// Its decision could not be recorded (store down, past `[limits]`): nothing more
    /// is recorded, the answer says why.
    Unrecorded(NotRecorded),
    /// Past the profile's `[limits] held_requests`: answered, not recorded (counted).
    TooManyHeld { value: String },
    /// An MCP body the rule's `mcp` refuses: 403 (or a JSON-RPC error, `mcp.rs`).
    Mcp { rule: Option<String>, details: Value, answer: Response<RespBody> },
    /// The called agent's `[ingress]` refuses the call (`agents.rs`): 403.
    Ingress(Box<crate::agents::IngressRefusal>),
}

impl Refusal {
    pub(crate) fn denied(kind: &'static str, rule: Option<&str>, details: Value, reason: impl Into<String>) -> Self {
        Refusal::Denied { kind, rule: rule.map(str::to_owned), details, reason: reason.into() }
    }
}

impl From<head::BadHead> for Refusal {
    fn from(b: head::BadHead) -> Self {
        Refusal::Protocol { kind: b.kind, status: b.status, reason: b.reason, via: None }
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
        match head::read_head(&conn, &req) {
            Ok(Head::Connect(host_hdr)) => self.connect(conn, req, host_hdr).await,
            Ok(Head::Request(target, via)) => match conn.refused() {
                // A refused tunnel: nothing in it goes anywhere.
                Some(denied) => self.refuse_inside(&conn.profile, &target, via, denied, &req).await,
                None => match self.clone().forward(conn.clone(), &target, via, req).await {
                    Ok(resp) => resp,
                    Err(Refused { why, what }) => self.refuse(&conn.profile, &what, why).await,
                },
            },
            Err(bad) => {
                // Only refusals describe the request: built when one is needed.
                let what = Described { method: req.method().to_string(), url: req.uri().to_string() };
                self.refuse(&conn.profile, &what, bad.into()).await
            }
        }
    }

    /// The one exit of every refusal: records it (503 when even that fails) and
    /// renders the answer the agent sees.
    pub(crate) async fn refuse(&self, profile: &str, what: &Described, why: Refusal) -> Response<RespBody> {
        let (kind, decision, rule, details, answer) = match why {
            Refusal::Unrecorded(e) => return e.answer(profile, what),
            Refusal::TooManyHeld { value } => return answer::over_limit(profile, what, "held_requests", &value),
            Refusal::Protocol { kind, status, reason, via } => {
                let details = json!({
                    "method": what.method, "url": what.url, "status": status.as_u16(),
                    "reason": reason, "via": via.map(Via::as_str),
                });
                let a = answer::refused(status, profile, what, &reason);
                (kind, "deny", Some("protocol".to_string()), details, a)
            }
            Refusal::Denied { kind, rule, mut details, reason } => {
                details["status"] = json!(403);
                details["reason"] = json!(reason);
                let a = answer::denied(profile, rule.as_deref(), what, &reason);
                (kind, "deny", rule, details, a)
            }
            Refusal::Ingress(r) => {
                let a = crate::agents::refused(profile, what, &r);
                let crate::agents::IngressRefusal { callee, rule, mut details, reason, .. } = *r;
                details["status"] = json!(403);
                details["reason"] = json!(reason);
                let rule = rule.unwrap_or_else(|| format!("ingress of {callee} (default)"));
                ("http", "deny", Some(rule), details, a)
            }
            Refusal::Mcp { rule, mut details, answer } => {
                details["status"] = json!(answer.status().as_u16());
                ("http", "deny", rule, details, answer)
            }
            Refusal::BudgetSpent { kind, rule, mut details, ex } => {
                details["status"] = json!(429);
                details["budget"] = json!(ex.name);
                details["limit"] = ex.limit_json();
                details["spent"] = ex.spent_json();
                details["resets_at"] = json!(ex.resets_at_rfc3339());
                (kind, "limit", rule, details, answer::budget_exhausted(profile, what, &ex))
            }
            Refusal::RateLimited { kind, rule, mut details, rule_key, secs } => {
                details["status"] = json!(429);
                details["retry_after"] = json!(secs);
                (kind, "limit", rule, details, answer::rate_limited(profile, &rule_key, what, secs))
            }
            Refusal::Leaked { rule, mut details, leak, place } => {
                // Names the secret or file, never the value.
                details["status"] = json!(403);
                details[leak.kind()] = json!(leak.label());
                details["place"] = json!(place.as_str());
                details["reason"] = json!(leak.reason());
                if let Leak::Egress { secret, .. } | Leak::Exfiltration { secret: Some(secret), .. } = &leak {
                    details["secret"] = json!(secret);
                }
                if place == Place::Url {
                    details["path"] = json!("[redacted]");
                }
                let a = answer::leaked(profile, what, leak.kind(), &leak.label(), &leak.reason());
                (leak.kind(), "deny", rule, details, a)
            }
        };
        if let Err(e) = self.note(kind, profile, decision, rule.as_deref(), details).await {
            return e.answer(profile, what);
        }
        answer
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
        self.write_charged(profile, kind, profile, decision, rule, details).await
    }

    /// [`Inner::write`] of an event about `profile`, counted against `charged`'s
    /// `[limits] decisions` (a callee's `ingress` event is charged to its caller, so that
    /// no caller can spend the callee's budget). `None`: folded.
    pub(crate) async fn write_charged(
        &self,
        charged: &str,
        kind: &str,
        profile: &str,
        decision: &str,
        rule: Option<&str>,
        details: &Value,
    ) -> Result<Option<u64>, NotRecorded> {
        let key = match self.budgets.admit(charged, kind, decision, rule, details) {
            Admit::Record(key) => key,
            Admit::Folded => return Ok(None),
            Admit::OverBudget { limit, value } => return Err(NotRecorded::OverBudget { limit, value }),
        };
        let ev = gvm_audit::EventRef { profile: Some(profile), kind, decision: Some(decision), rule, details };
        let seq = crate::audit_glue::append_ref(&self.audit, ev).await.map_err(NotRecorded::Store)?;
        if let Some(key) = key {
            let about = (charged != profile).then_some(profile);
            self.budgets.recorded_about(charged, about, key, seq, (kind, decision, rule, details));
        }
        Ok(Some(seq))
    }

    /// Decides a request on a known target, then (if allowed) forwards it. `Err`: the
    /// refusal, with the part of the URL it may show.
    async fn forward(
        self: Arc<Self>,
        conn: Arc<ConnCtx>,
        target: &Target,
        via: Via,
        mut req: Request<Incoming>,
    ) -> Result<Response<RespBody>, Refused> {
        let start = Instant::now();
        let profile = conn.profile.clone();
        let method = req.method().clone();
        let path_q = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let path = path_q.split('?').next().unwrap_or("/").to_string();
        // Only refusals, holds and failures describe the request: built when needed.
        let what = || Described {
            method: method.to_string(),
            url: format!("{}://{}{}", target.scheme(), target.authority(), path_q),
        };
        let refused = |why: Refusal| Refused { why, what: what() };
        let mut details = json!({
            "method": method.as_str(), "scheme": target.scheme(), "host": target.host.as_str(),
            "port": target.port, "path": path, "via": via.as_str(),
        });
        crate::agents::name_parties(&mut details, &profile, &target.host);
        let Some(state) = self.profile(&profile) else {
            return Err(refused(Refusal::denied("http", None, details, "the profile is not loaded")));
        };
        let mut ruling = state.decide(target.scheme(), &target.host, target.port, method.as_str(), &path);
        // The scan reads the agent's bytes as it sent them, before gvm adds anything:
        // an injected or swapped-in value is never flagged (ARCHITECTURE.md).
        if let Some(scan) = &state.scan {
            let swap = match check_head(&state, scan, &ruling, target, &path_q, req.headers()) {
                Ok(s) => s,
                Err((leak, place)) => {
                    let why = Refusal::Leaked { rule: ruling.rule.as_deref().map(str::to_owned), details, leak, place };
                    // A secret in the URL: the answer does not repeat the URL.
                    let what = if place == Place::Url {
                        let url = format!("{}://{}/[redacted]", target.scheme(), target.authority());
                        Described { method: method.to_string(), url }
                    } else {
                        what()
                    };
                    return Err(Refused { why, what });
                }
            };
            if let Err(reason) = swap_placeholders(&state, &swap, req.headers_mut()) {
                return Err(refused(Refusal::denied("secret_egress", ruling.rule.as_deref(), details, reason)));
            }
        }
        let mut req = req.map(crate::mcp::ReqBody::Stream);
        let checked = match crate::mcp::check_request(&state, &mut ruling, &mut req, &mut details).await {
            Ok(c) => c,
            Err(why) => return Err(refused(why)),
        };
        let body = head::body_summary(req.headers());
        let addr = match self.admit("http", &state, &ruling, target, &what, &mut details, body).await {
            Ok(a) => a,
            Err(why) => return Err(refused(why)),
        };
        // Durable before anything is forwarded.
        let seq = match self.record("http", &profile, ruling.audit_decision(), ruling.rule.as_deref(), &details).await {
            Ok(s) => s,
            Err(e) => return Err(refused(Refusal::Unrecorded(e))),
        };
        let upgrade = head::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let leak_details = state.scan.is_some().then_some(details);
        let done = Arc::new(self.completion(gvm_api::EventKind::HttpDone, &profile, &ruling, seq, start));

        let (mut parts, body) = req.into_parts();
        head::strip_hop(&mut parts.headers, upgrade);
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_str(&target.authority()).unwrap_or(HeaderValue::from_static("invalid")),
        );
        if !ruling.inject.is_empty() {
            head::remove_twins(&mut parts.headers, &ruling.inject);
        }
        // A priced host answers uncompressed, so that its usage can be read (usage.rs).
        let prices = self.prices.read().unwrap_or_else(|e| e.into_inner()).get(target.host.as_str()).cloned();
        if prices.is_some() {
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        crate::mcp::prepare_request(&checked, &mut parts.headers);
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
                let late = self.clone().late_leak(state.clone(), ruling.clone(), target.clone(), what(), d.clone());
                let allowed = swap.as_ref().map(|s| s.needles.clone()).unwrap_or_default();
                Some((scan.stream().allowing(allowed), Arc::new(LeakWatch::new(late))))
            }
            _ => None,
        };
        let watching = watch.as_ref().map(|(_, w)| w.clone());
        let up_req = Request::from_parts(parts, Scanned::new(body, watch).swapping(swap));

        let key = PoolKey {
            profile: profile.clone(),
            // Another agent is spoken to in plain HTTP inside its own netns (agents.rs).
            tls: target.tls && crate::agents::agent_host(target.host.as_str()).is_none(),
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
                    return Ok(answer::bad_gateway(&profile, &what(), &e));
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
            return Err(refused(Refusal::Leaked {
                rule: ruling.rule.as_deref().map(str::to_owned),
                details,
                leak,
                place: Place::Body,
            }));
        }
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                done.status.store(502, Ordering::Relaxed);
                return Ok(answer::bad_gateway(&profile, &what(), &e.to_string()));
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
            self.upstreams.checkin(key, sender);
        }
        let (mut parts, body) = resp.into_parts();
        head::strip_hop(&mut parts.headers, parts.status == StatusCode::SWITCHING_PROTOCOLS);
        use http_body_util::BodyExt;
        let body = crate::mcp::filter_response(&checked, &mut parts, body);
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
                Ok(Response::from_parts(parts, crate::usage::UsageTap::new(body, on_end).boxed()))
            }
            None => Ok(Response::from_parts(parts, body.boxed())),
        }
    }

    /// Hold, deny, rate and SSRF: everything between the decision and the durable
    /// allow event. `Ok(addr)`: go ahead and connect to exactly `addr`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn admit(
        &self,
        kind: &'static str,
        state: &ProfileState,
        ruling: &Ruling,
        target: &Target,
        what: &(dyn Fn() -> Described + Sync),
        details: &mut Value,
        body: Option<String>,
    ) -> Result<SocketAddr, Refusal> {
        state.stamp(details);
        let profile = state.name.clone();
        let rule = ruling.rule.as_deref();
        // Budgets are money: checked in watch mode too (spend.rs).
        let charged_to = if ruling.verdict == Verdict::Deny { Vec::new() } else { state.budgets(ruling) };
        let cost = state.cost(ruling);
        let mut verdict = ruling.verdict;
        if let Some(ex) = self.spend.exhausted(&profile, &charged_to, cost, time::OffsetDateTime::now_utc()) {
            match ex.budget.on_exhausted {
                OnExhausted::Deny => {
                    let details = std::mem::take(details);
                    return Err(Refusal::BudgetSpent { kind, rule: rule.map(str::to_owned), details, ex });
                }
                OnExhausted::Hold => {
                    details["budget_exhausted"] = json!(ex.name);
                    verdict = Verdict::Hold;
                }
            }
        }
        let mut approved = false;
        match verdict {
            Verdict::Deny => {
                let details = std::mem::take(details);
                return Err(Refusal::denied(kind, rule, details, "the profile's rules do not allow it"));
            }
            Verdict::Hold => {
                let what = what();
                let place = self.budgets.hold(&profile, || json!({"method": what.method, "url": what.url}));
                let _place = match place {
                    Ok(p) => p,
                    Err(value) => return Err(Refusal::TooManyHeld { value }),
                };
                let since = time::OffsetDateTime::now_utc();
                let info = HeldInfo {
                    profile: profile.to_string(),
                    method: what.method.clone(),
                    url: what.url.clone(),
                    rule: ruling.rule.as_deref().map(str::to_owned),
                    body,
                    since,
                    expires_at: since + ruling.hold_timeout,
                };
                let (id, wait) = match self.holds.hold(info, ruling.hold_timeout).await {
                    Ok(held) => held,
                    Err(e) => {
                        // Fail closed: nobody could be asked, so nothing goes out.
                        let reason = format!("the request could not be queued for approval: {e}");
                        return Err(Refusal::denied(kind, rule, std::mem::take(details), reason));
                    }
                };
                details["hold_id"] = json!(id);
                self.record(kind, &profile, "hold", rule, &*details).await.map_err(Refusal::Unrecorded)?;
                match wait.await {
                    HoldOutcome::Approved => {
                        details["hold"] = json!("approved");
                        approved = true;
                    }
                    HoldOutcome::Denied => {
                        details["hold"] = json!("denied");
                        let reason = format!("held request {id} was denied by the operator");
                        return Err(Refusal::denied(kind, rule, std::mem::take(details), reason));
                    }
                    HoldOutcome::TimedOut => {
                        details["hold"] = json!("timeout");
                        let reason =
                            format!("held request {id} was not approved within {} s", ruling.hold_timeout.as_secs());
                        return Err(Refusal::denied(kind, rule, std::mem::take(details), reason));
                    }
                }
            }
            Verdict::Allow => {}
        }
        if let Some((burst, per)) = ruling.rate {
            if let Err(wait) = self.rate.take(&profile, ruling.rule_index, burst, per, Instant::now()) {
                let rule_key =
                    ruling.rule_index.map_or_else(|| "default".to_string(), |i| format!("network.rule[{i}]"));
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let details = std::mem::take(details);
                return Err(Refusal::RateLimited { kind, rule: rule.map(str::to_owned), details, rule_key, secs });
            }
        }
        let port = target.port;
        // `agent.<name>` is never resolved: the callee's [ingress] decides, and the
        // connection is made inside its netns (agents.rs).
        let resolved = match crate::agents::agent_host(target.host.as_str()) {
            Some(callee) => Ok(self.ingress(kind, state, ruling, callee, target, details).await?),
            None => self.resolver.resolve(target.host.as_str(), port, &|ip| state.names_ip(ip, port)).await,
        };
        match resolved {
            Ok(addr) => {
                details["addr"] = json!(addr.to_string());
                // Charged last, all budgets or none: a request that gets this far is
                // forwarded unless its event cannot be recorded.
                match self.spend.charge(&profile, &charged_to, cost, time::OffsetDateTime::now_utc(), approved) {
                    Ok(crossed) => crossed.iter().for_each(|n| self.budget_notice(n)),
                    Err(ex) => {
                        let details = std::mem::take(details);
                        return Err(Refusal::BudgetSpent { kind, rule: rule.map(str::to_owned), details, ex });
                    }
                }
                Ok(addr)
            }
            Err(e) => {
                details["ssrf"] = json!(true);
                Err(Refusal::denied(kind, Some("upstream-safety"), std::mem::take(details), e.to_string()))
            }
        }
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
                let why = Refusal::Leaked {
                    rule: ruling.rule.as_deref().map(str::to_owned),
                    details,
                    leak,
                    place: Place::Body,
                };
                let _ = self.refuse(&profile, &what, why).await;
            });
        })
    }

    /// The completion record, appended (not awaited by the agent) when the exchange
    /// ends: the decision's seq and what the exchange counted. The request itself is in
    /// the decision event that `decision_seq` names, not copied here.
    pub(crate) fn completion(
        &self,
        kind: gvm_api::EventKind,
        profile: &str,
        ruling: &Ruling,
        seq: u64,
        start: Instant,
    ) -> Completion {
        let audit = self.audit.clone();
        let ev = gvm_audit::NewEvent {
            profile: Some(profile.to_string()),
            kind: kind.as_str().to_string(),
            decision: Some(ruling.audit_decision().to_string()),
            rule: ruling.rule.as_deref().map(str::to_owned),
            details: Value::Null,
        };
        Completion {
            start,
            up: 0.into(),
            down: 0.into(),
            status: 0.into(),
            usage: Mutex::new(None),
            on_done: Some(Box::new(move |status, up, down, ms, usage| {
                let mut ev = ev;
                ev.details = json!({
                    "decision_seq": seq, "status": status, "bytes_up": up, "bytes_down": down, "duration_ms": ms,
                });
                if let Some(u) = usage {
                    ev.details["usage"] = u;
                }
                crate::audit_glue::append_nowait(&audit, ev);
            })),
        }
    }
}

/// A refusal out of [`Inner::forward`], with how its answer names the request.
pub(crate) struct Refused {
    why: Refusal,
    what: Described,
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
