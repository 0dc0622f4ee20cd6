//! The agent's resolver. It answers from policy only and never forwards a query (DNS
//! is egress: a lookup of `<secret>.attacker.com` must not leave the host).
//!
//! A name some allow/hold rule could match gets an A record pointing at the gateway
//! (`answer_addr`); AAAA gets an empty NOERROR (or `answer_addr` when it is IPv6);
//! other types for such names get an empty NOERROR; anything else is NXDOMAIN. Every
//! query is one audit event; when the event cannot be recorded the answer is REFUSED.

use std::net::IpAddr;
use std::sync::Arc;

use gvm_policy::Host;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::dnswire::{self, Query};
use crate::Inner;

pub(crate) async fn serve(inner: Arc<Inner>, udp: UdpSocket, tcp: TcpListener, profile: Arc<str>, answer: IpAddr) {
    let udp = Arc::new(udp);
    // One task for both: when the profile's listeners are stopped, both stop.
    let tcp = crate::accept::serve(inner.clone(), tcp, profile.clone(), crate::accept::Door::DnsTcp(answer));
    let udp_loop = async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf).await else { continue };
            // Past `[limits] dns_queries`: REFUSED at once, counted, no task, no event.
            if let Some(refused) = over_rate(&inner, &profile, &buf[..n]) {
                if !refused.is_empty() {
                    let _ = udp.try_send_to(&refused, peer);
                }
                continue;
            }
            let raw = buf[..n].to_vec();
            let inner = inner.clone();
            let profile = profile.clone();
            let udp = udp.clone();
            tokio::spawn(async move {
                if let Some(out) = respond(&inner, &profile, answer, &raw, "udp").await {
                    let _ = udp.send_to(&out, peer).await;
                }
            });
        }
    };
    tokio::select! {
        () = tcp => {}
        () = udp_loop => {}
    }
}

pub(crate) async fn serve_tcp(inner: Arc<Inner>, mut s: TcpStream, profile: Arc<str>, answer: IpAddr) {
    loop {
        let len = match tokio::time::timeout(std::time::Duration::from_secs(10), s.read_u16()).await {
            Ok(Ok(l)) => usize::from(l),
            _ => return,
        };
        let mut raw = vec![0u8; len];
        if s.read_exact(&mut raw).await.is_err() {
            return;
        }
        let out = match over_rate(&inner, &profile, &raw) {
            Some(refused) if refused.is_empty() => return,
            Some(refused) => refused,
            None => match respond(&inner, &profile, answer, &raw, "tcp").await {
                Some(out) => out,
                None => return,
            },
        };
        let mut framed = (out.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&out);
        if s.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// `Some(REFUSED answer)` when the query is past the profile's `[limits]
/// dns_queries` (counted in a `limits_exceeded` event, with the first names as
/// samples; an empty answer: send nothing); `None` to answer it normally.
fn over_rate(inner: &Inner, profile: &str, raw: &[u8]) -> Option<Vec<u8>> {
    let mut parsed = None;
    let within = inner.budgets.dns_query(profile, || {
        let q = dnswire::parse_query(raw);
        let sample = match &q {
            Ok(q) => json!({"name": q.name, "qtype": q.qtype}),
            Err(_) => json!({"reason": "malformed query"}),
        };
        parsed = Some(q);
        sample
    });
    if within {
        return None;
    }
    let q = parsed.unwrap_or_else(|| dnswire::parse_query(raw));
    match q {
        Ok(q) => Some(dnswire::answer(raw, &q, dnswire::RCODE_REFUSED, None)),
        Err(Some(id)) => Some(dnswire::error_answer(id, dnswire::RCODE_REFUSED)),
        Err(None) => Some(Vec::new()), // not a query: nothing to answer
    }
}

/// The answer to one query (`None`: drop it silently — not a query at all).
pub(crate) async fn respond(
    inner: &Inner,
    profile: &str,
    answer: IpAddr,
    raw: &[u8],
    transport: &str,
) -> Option<Vec<u8>> {
    let q: Query = match dnswire::parse_query(raw) {
        Ok(q) => q,
        Err(None) => return None,
        Err(Some(id)) => {
            let _ = inner
                .note(
                    "dns",
                    profile,
                    "deny",
                    Some("protocol"),
                    json!({"transport": transport, "reason": "malformed query", "rcode": "FORMERR"}),
                )
                .await;
            return Some(dnswire::error_answer(id, dnswire::RCODE_FORMERR));
        }
    };
    let opcode = (q.flags >> 11) & 0x0f;
    // One snapshot decides and names its version.
    let state = inner.profile(profile);
    let (rcode, rdata, decision, rule, reason): (u8, Option<Vec<u8>>, &str, Option<String>, &str) = if opcode != 0 {
        (dnswire::RCODE_NOTIMP, None, "deny", Some("protocol".into()), "only standard queries")
    } else {
        match (Host::parse(&q.name), state.as_deref()) {
            (Err(_), _) => (dnswire::RCODE_NXDOMAIN, None, "deny", Some("protocol".into()), "not a valid host name"),
            (_, None) => (dnswire::RCODE_REFUSED, None, "deny", None, "the profile is not loaded"),
            (Ok(host), Some(state)) => {
                let (ok, rule) = state.dns_answer(&host);
                if !ok {
                    (dnswire::RCODE_NXDOMAIN, None, "deny", rule, "no rule lets this name through")
                } else {
                    let rdata = match (q.qtype, answer) {
                        (dnswire::TYPE_A, IpAddr::V4(a)) => Some(a.octets().to_vec()),
                        (dnswire::TYPE_AAAA, IpAddr::V6(a)) => Some(a.octets().to_vec()),
                        _ => None,
                    };
                    (dnswire::RCODE_NOERROR, rdata, "allow", rule, "answered with the gateway's address")
                }
            }
        }
    };
    let mut details = json!({
        "name": q.name, "qtype": q.qtype, "transport": transport,
        "rcode": rcode, "answer": rdata.as_ref().map(|_| answer.to_string()), "reason": reason,
    });
    if let Some(state) = state.as_deref().filter(|_| rule.as_deref() != Some("protocol")) {
        state.stamp(&mut details);
    }
    if inner.note("dns", profile, decision, rule.as_deref(), details).await.is_err() {
        return Some(dnswire::answer(raw, &q, dnswire::RCODE_REFUSED, None));
    }
    Some(dnswire::answer(raw, &q, rcode, rdata.as_deref()))
}
