//! Tunnels: CONNECT on the explicit proxy and transparent TLS. The host-level decision
//! grants a tunnel; then its first bytes say what it carries: TLS is intercepted (every
//! request inside decided like any other) or spliced, plain HTTP is served request by
//! request, anything else is spliced only where a rule allows the host outright.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use gvm_policy::Host;

use crate::answer::{self, Described, RespBody};
use crate::body::Completion;
use crate::decide::{ConnectRuling, ProfileState, Ruling, Verdict};
use crate::head::{split_authority, Target};
use crate::limit::Slot;
use crate::pipeline::{ConnCtx, ConnKind, Refusal, Via};
use crate::stream::{sniff, Prefixed, Sniffed};
use crate::upstream::Upstreams;
use crate::Inner;

/// How long a tunnel waits for the client's first byte before assuming a
/// server-speaks-first protocol.
const FIRST_BYTE_WAIT: Duration = Duration::from_secs(1);

/// A tunnel refused by the rules, answered inside TLS: what each request in it is told.
#[derive(Debug)]
pub(crate) struct DeniedTunnel {
    rule: Option<String>,
    reason: String,
}

pub(crate) enum TunnelPlan {
    Intercept,
    Splice { addr: SocketAddr, done: Arc<Completion> },
}

impl Inner {
    /// CONNECT on the explicit proxy.
    pub(crate) async fn connect(
        self: Arc<Self>,
        conn: Arc<ConnCtx>,
        mut req: Request<Incoming>,
        host_hdr: Option<(Host, Option<u16>)>,
    ) -> Response<RespBody> {
        let profile = conn.profile.clone();
        let raw = req.uri().authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let refused =
            |status, reason: String| Refusal::Protocol { kind: "connect", status, reason, via: Some(Via::Connect) };
        let named = match split_authority(&raw) {
            Ok((h, Some(p)))
                if req.uri().scheme().is_none()
                    && req.uri().path_and_query().is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/") =>
            {
                match host_hdr {
                    Some((hh, hp)) if hh != h || hp.is_some_and(|hp| hp != p) => Err(refused(
                        StatusCode::MISDIRECTED_REQUEST,
                        "the Host header does not name the CONNECT target".into(),
                    )),
                    _ => Ok((h, p)),
                }
            }
            Ok(_) => Err(refused(StatusCode::BAD_REQUEST, "CONNECT needs `host:port`".into())),
            Err(e) => Err(refused(StatusCode::BAD_REQUEST, e)),
        };
        let (host, port) = match named {
            Ok(hp) => hp,
            Err(r) => return self.refuse(&profile, &Described { method: "CONNECT".into(), url: raw }, r).await,
        };
        let target = Target { tls: port != 80, host, port };
        let on_upgrade = hyper::upgrade::on(&mut req);
        match self.admit_tunnel(&profile, &target, Via::Connect).await {
            Err(r) => {
                let Some(denied) = self.answerable(&profile, &target, Via::Connect, &r) else {
                    return self.refuse(&profile, &connect_described(&target), r).await;
                };
                let answer = self.refuse(&profile, &connect_described(&target), r).await;
                if answer.status() != StatusCode::FORBIDDEN {
                    return answer; // not recorded (503, or 429 past [limits]): that answer stands
                }
                let this = self.clone();
                tokio::spawn(async move {
                    let Ok(up) = on_upgrade.await else { return };
                    this.refused_tunnel(profile, TokioIo::new(up), target, denied, conn._slot.clone()).await;
                });
                Response::new(answer::empty())
            }
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

    /// The host-level decision for a tunnel (CONNECT, transparent TLS). `Err`: what
    /// [`Inner::refuse`] records and answers.
    pub(crate) async fn admit_tunnel(
        &self,
        profile: &Arc<str>,
        target: &Target,
        via: Via,
    ) -> Result<TunnelPlan, Refusal> {
        let mut details = json!({
            "method": "CONNECT", "host": target.host.as_str(), "port": target.port, "via": via.as_str(),
        });
        crate::agents::name_parties(&mut details, profile, &target.host);
        let Some(state) = self.profile(profile) else {
            return Err(Refusal::denied("connect", None, details, "the profile is not loaded"));
        };
        let ruling = match state.decide_connect(&target.host, target.port) {
            // A tunnel would carry any number of requests past a budget (or a priced
            // host's usage): look inside unless the rule says it cannot be
            // (`intercept = false`, then the tunnel is charged as one request).
            // A tunnel to another agent is always intercepted: its [ingress] decides each request.
            ConnectRuling::Decided(r)
                if r.verdict != Verdict::Deny
                    && (crate::agents::agent_host(target.host.as_str()).is_some()
                        || self.counts_inside(&state, &r, target)) =>
            {
                ConnectRuling::Intercept
            }
            other => other,
        };
        match ruling {
            ConnectRuling::Intercept => {
                state.stamp(&mut details);
                self.note("connect", profile, "intercept", None, details).await.map_err(Refusal::Unrecorded)?;
                Ok(TunnelPlan::Intercept)
            }
            ConnectRuling::Decided(ruling) => {
                let what = || connect_described(target);
                let addr = self.admit("connect", &state, &ruling, target, &what, &mut details, None).await?;
                let seq = self
                    .record("connect", profile, ruling.audit_decision(), ruling.rule.as_deref(), &details)
                    .await
                    .map_err(Refusal::Unrecorded)?;
                let done = self.completion(gvm_api::EventKind::ConnectDone, profile, &ruling, seq, Instant::now());
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
            Sniffed::Tls { sni, .. } => {
                if let Some(sni) = sni {
                    if Host::parse(&sni).ok().as_ref() != Some(&target.host) {
                        let details = json!({
                            "method": "CONNECT", "host": target.host.as_str(), "port": target.port,
                            "sni": sni, "via": via.as_str(), "status": 421,
                            "reason": "TLS SNI does not name the tunnel's host (domain fronting)",
                        });
                        let _ = self.note("connect", &profile, "deny", Some("protocol"), details).await;
                        return;
                    }
                }
                match plan {
                    TunnelPlan::Intercept => self.intercept_tls(profile, io, target, via, slot, None).await,
                    TunnelPlan::Splice { addr, done } => splice(io, addr, done).await,
                }
            }
            Sniffed::Http => {
                let kind = ConnKind::Inner {
                    host: target.host.clone(),
                    port: target.port,
                    tls: false,
                    via: if via == Via::Transparent { via } else { Via::Connect },
                    refused: None,
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

    /// Terminates TLS with a leaf for the target and serves the requests inside; with
    /// `refused`, every request inside is answered with that refusal, none decided.
    pub(crate) async fn intercept_tls<S>(
        self: Arc<Self>,
        profile: Arc<str>,
        io: S,
        target: Target,
        via: Via,
        slot: Arc<Slot>,
        refused: Option<Arc<DeniedTunnel>>,
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
            refused,
        };
        self.serve_http(tls, Arc::new(ConnCtx { profile, kind, _slot: slot })).await;
    }

    /// The refusal of a tunnel to `target`, when it is to be answered inside TLS: the
    /// rules (or the operator, for a held one) said no, the profile is loaded and within
    /// its budgets for it ([`crate::budget::Budgets::refusal_handshake`]). Everything
    /// else stays refused at CONNECT level: malformed or ambiguous CONNECTs, rate
    /// limits, spent budgets, SSRF (`upstream-safety`: no certificate for an internal
    /// address), and CONNECTs to port 80, which carry plain HTTP.
    pub(crate) fn answerable(&self, profile: &str, target: &Target, via: Via, why: &Refusal) -> Option<DeniedTunnel> {
        let Refusal::Denied { rule, reason, .. } = why else { return None };
        let plain = via == Via::Connect && target.port == 80;
        if plain || rule.as_deref() == Some("upstream-safety") || self.profile(profile).is_none() {
            return None;
        }
        self.budgets.refusal_handshake(profile).then(|| DeniedTunnel { rule: rule.clone(), reason: reason.clone() })
    }

    /// After the 200 to a refused CONNECT: a TLS ClientHello for the tunnel's host (no
    /// ECH) gets the refusal inside TLS; anything else is closed (the CONNECT's `deny`
    /// is recorded already).
    async fn refused_tunnel<S>(
        self: Arc<Self>,
        profile: Arc<str>,
        mut io: S,
        target: Target,
        d: DeniedTunnel,
        slot: Arc<Slot>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok((sniffed, prefix)) = sniff(&mut io, Some(FIRST_BYTE_WAIT)).await else { return };
        let for_target =
            |sni: &Option<String>| sni.as_deref().is_none_or(|s| Host::parse(s).ok().as_ref() == Some(&target.host));
        if let Sniffed::Tls { sni, ech: false } = &sniffed {
            if for_target(sni) {
                let io = Prefixed::new(prefix, io);
                self.intercept_tls(profile, io, target, Via::Connect, slot, Some(Arc::new(d))).await;
            }
        }
    }

    /// One request inside a refused tunnel: recorded as a `deny` of the tunnel's rule and
    /// answered with the 403 a plain-HTTP request gets (naming this request).
    pub(crate) async fn refuse_inside(
        &self,
        profile: &str,
        target: &Target,
        via: Via,
        d: &DeniedTunnel,
        req: &Request<Incoming>,
    ) -> Response<RespBody> {
        let mut path_q = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let state = self.profile(profile);
        // A secret in the URL is not written to the log (nor repeated to the agent).
        if state.as_ref().and_then(|s| s.scan.as_ref()).is_some_and(|s| s.scan_once(path_q.as_bytes()).is_some()) {
            path_q = "/[redacted]";
        }
        let what = Described {
            method: req.method().to_string(),
            url: format!("{}://{}{}", target.scheme(), target.authority(), path_q),
        };
        let mut details = json!({
            "method": what.method, "scheme": target.scheme(), "host": target.host.as_str(), "port": target.port,
            "path": path_q.split('?').next().unwrap_or("/"), "via": via.as_str(), "tunnel": "refused",
        });
        if let Some(state) = state {
            state.stamp(&mut details);
        }
        self.refuse(profile, &what, Refusal::denied("http", d.rule.as_deref(), details, d.reason.clone())).await
    }
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

/// A tunnel as refusals and held requests describe it: `CONNECT host:port`.
pub(crate) fn connect_described(target: &Target) -> Described {
    Described { method: "CONNECT".into(), url: format!("{}:{}", target.host.url_form(), target.port) }
}
