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
    {
        let inner = inner.clone();
        let profile = profile.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = tcp.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                };
                let _ = s.set_nodelay(true);
                tokio::spawn(serve_tcp(inner.clone(), s, profile.clone(), answer));
            }
        });
    }
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = udp.recv_from(&mut buf).await else { continue };
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
}

async fn serve_tcp(inner: Arc<Inner>, mut s: TcpStream, profile: Arc<str>, answer: IpAddr) {
    loop {
        let len = match tokio::time::timeout(std::time::Duration::from_secs(10), s.read_u16()).await {
            Ok(Ok(l)) => usize::from(l),
            _ => return,
        };
        let mut raw = vec![0u8; len];
        if s.read_exact(&mut raw).await.is_err() {
            return;
        }
        let Some(out) = respond(&inner, &profile, answer, &raw, "tcp").await else { return };
        let mut framed = (out.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&out);
        if s.write_all(&framed).await.is_err() {
            return;
        }
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
                .record(
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
    let (rcode, rdata, decision, rule, reason): (u8, Option<Vec<u8>>, &str, Option<String>, &str) = if opcode != 0 {
        (dnswire::RCODE_NOTIMP, None, "deny", Some("protocol".into()), "only standard queries")
    } else {
        match (Host::parse(&q.name), inner.profile(profile)) {
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
    let details = json!({
        "name": q.name, "qtype": q.qtype, "transport": transport,
        "rcode": rcode, "answer": rdata.as_ref().map(|_| answer.to_string()), "reason": reason,
    });
    if inner.record("dns", profile, decision, rule.as_deref(), details).await.is_err() {
        return Some(dnswire::answer(raw, &q, dnswire::RCODE_REFUSED, None));
    }
    Some(dnswire::answer(raw, &q, rcode, rdata.as_deref()))
}
