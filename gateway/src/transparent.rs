//! The transparent listener: connections nft redirected from inside the agent's netns.
//!
//! The port is the original destination's (`SO_ORIGINAL_DST`); the host is the TLS SNI
//! or the HTTP Host header, normalised and decided like a CONNECT target. The address
//! the agent dialled is never used upstream: the gateway resolves the name itself, so
//! a hard-coded IP cannot route around the name's rules. No name → denied, audited.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use gvm_policy::Host;
use serde_json::json;
use tokio::net::TcpStream;

use crate::head::Target;
use crate::limit::Slot;
use crate::pipeline::{ConnCtx, ConnKind, Via};
use crate::stream::{sniff, Prefixed, Sniffed};
use crate::tunnel::{connect_described, TunnelPlan};
use crate::Inner;

/// Where the original destination of a redirected connection comes from.
#[derive(Debug, Clone, Copy)]
pub enum OriginalDst {
    /// `getsockopt(SO_ORIGINAL_DST)` (IPv4) — production.
    SoOriginalDst,
    /// Always this address (tests on loopback, where there is no nft redirect).
    Fixed(SocketAddr),
}

impl OriginalDst {
    fn get(&self, tcp: &TcpStream) -> Option<SocketAddr> {
        match self {
            OriginalDst::Fixed(a) => Some(*a),
            OriginalDst::SoOriginalDst => {
                let v = nix::sys::socket::getsockopt(tcp, nix::sys::socket::sockopt::OriginalDst).ok()?;
                let ip = std::net::Ipv4Addr::from(u32::from_be(v.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(v.sin_port))))
            }
        }
    }
}

/// How long to wait for the agent's first bytes (SNI / request line).
const NAME_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves one redirected connection (from [`crate::accept`]).
pub(crate) async fn one(inner: Arc<Inner>, mut tcp: TcpStream, profile: Arc<str>, dst: OriginalDst, slot: Arc<Slot>) {
    let Some(orig) = dst.get(&tcp) else {
        let _ = inner
            .note("connect", &profile, "deny", Some("protocol"),
                json!({"via": "transparent", "status": 403, "reason": "no original destination (not an nft-redirected connection)"}))
            .await;
        return;
    };
    let port = orig.port();
    let Ok((sniffed, prefix)) = sniff(&mut tcp, Some(NAME_WAIT)).await else { return };
    let io = Prefixed::new(prefix, tcp);
    match sniffed {
        Sniffed::Http => {
            let conn = Arc::new(ConnCtx {
                profile,
                kind: ConnKind::TransparentHttp { port, pinned: Mutex::new(None) },
                _slot: slot,
            });
            inner.serve_http(io, conn).await;
        }
        Sniffed::Tls { sni: Some(sni), ech } => {
            let host = match Host::parse(&sni) {
                Ok(h) => h,
                Err(e) => {
                    let _ = inner
                        .note(
                            "connect",
                            &profile,
                            "deny",
                            Some("protocol"),
                            json!({"via": "transparent", "sni": sni, "port": port, "status": 400,
                                   "reason": format!("bad TLS SNI: {e}")}),
                        )
                        .await;
                    return;
                }
            };
            let target = Target { tls: true, host, port };
            match inner.admit_tunnel(&profile, &target, Via::Transparent).await {
                Err(why) => {
                    // Refused by the rules: answered inside TLS (`tunnel.rs`), unless the
                    // hello offers ECH (its SNI is only a public name). Otherwise
                    // recorded, and the agent sees the connection close.
                    let denied = if ech { None } else { inner.answerable(&profile, &target, Via::Transparent, &why) };
                    let answer = inner.refuse(&profile, &connect_described(&target), why).await;
                    if let (Some(d), http::StatusCode::FORBIDDEN) = (denied, answer.status()) {
                        inner.intercept_tls(profile, io, target, Via::Transparent, slot, Some(Arc::new(d))).await;
                    }
                }
                Ok(TunnelPlan::Intercept) => {
                    inner.intercept_tls(profile, io, target, Via::Transparent, slot, None).await;
                }
                Ok(plan @ TunnelPlan::Splice { .. }) => {
                    inner.tunnel(profile, io, target, plan, Via::Transparent, slot).await;
                }
            }
        }
        Sniffed::Tls { sni: None, .. } | Sniffed::Other => {
            let _ = inner
                .note("connect", &profile, "deny", Some("protocol"),
                    json!({"via": "transparent", "dst": orig.to_string(), "port": port, "status": 403,
                           "reason": "no host name (neither TLS SNI nor an HTTP Host header): the transparent gateway refuses nameless connections"}))
                .await;
        }
    }
}
