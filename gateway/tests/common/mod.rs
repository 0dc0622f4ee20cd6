//! Hermetic test rig: a test CA, local upstream servers (plain and TLS) on 127.0.0.1,
//! a real audit store in a temp dir, and a gateway in front of them.
#![allow(dead_code)]

pub mod mcp_server;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use gvm_audit::{Audit, AuditConfig, EventsQuery};
use gvm_gateway::{Gateway, GatewayConfig};

pub const HOST: &str = "api.test.example";
pub const OTHER: &str = "other.test.example";

pub struct Env {
    pub gw: Gateway,
    pub audit: Audit,
    pub proxy: SocketAddr,
    pub up_http: u16,
    pub up_https: u16,
    pub agent_tls: Arc<rustls::ClientConfig>,
    pub dir: tempfile::TempDir,
    pub profile: String,
}

/// A body fed from a channel: one frame per message, sent as it arrives.
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);
impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Every request body byte the upstreams of this test binary received.
pub static SEEN: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// True when an upstream received `needle` in a request body.
pub fn upstream_saw(needle: &[u8]) -> bool {
    SEEN.lock().unwrap().windows(needle.len()).any(|w| w == needle)
}

async fn upstream(req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    if req.uri().path() == "/sse" {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for i in 0..3 {
                if tx.send(Bytes::from(format!("data: event {i}\n\n"))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut r = Response::new(ChanBody(rx).boxed());
        r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
        return Ok(r);
    }
    if req.uri().path() == "/mcp" && req.method() == http::Method::POST {
        let sse = req.uri().query().is_some_and(|q| q.contains("sse"));
        let gzip = req.uri().query().is_some_and(|q| q.contains("gzip"));
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let (status, ct, out) = mcp_server::handle(&body, sse);
        let mut r = Response::new(Full::new(Bytes::from(out)).boxed());
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r.headers_mut().insert("content-type", ct.parse().unwrap());
        if gzip {
            // Claims an encoding it does not use: what a filter must not pass on.
            r.headers_mut().insert("content-encoding", "gzip".parse().unwrap());
        }
        return Ok(r);
    }
    if req.uri().path() == "/llm/json" {
        let body = r#"{"id":"c1","model":"gpt-4o","usage":{"prompt_tokens":1000,"completion_tokens":200}}"#;
        return Ok(Response::new(Full::new(Bytes::from(body)).boxed()));
    }
    if req.uri().path() == "/llm/sse" {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let events = [
                "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
                "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":50}}\n\n",
                "data: [DONE]\n\n",
            ];
            for e in events {
                if tx.send(Bytes::from(e)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut r = Response::new(ChanBody(rx).boxed());
        r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
        return Ok(r);
    }
    let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let info = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()),
        "host": h("host"),
        "authorization": h("authorization"),
        "proxy_authorization": h("proxy-authorization"),
        // Every header as received, repeated names joined with "\n".
        "headers": req.headers().keys().map(|k| {
            let all: Vec<&str> = req.headers().get_all(k).iter().filter_map(|v| v.to_str().ok()).collect();
            (k.as_str().to_string(), serde_json::Value::from(all.join("\n")))
        }).collect::<serde_json::Map<_, _>>(),
    });
    let (_, mut body) = req.into_parts();
    // Every body byte that reached an upstream, frame by frame (a request the gateway
    // aborts part-way leaves what it did forward).
    let mut got = 0;
    while let Some(Ok(f)) = body.frame().await {
        if let Some(d) = f.data_ref() {
            got += d.len();
            SEEN.lock().unwrap().extend_from_slice(d);
        }
    }
    let mut info = info;
    info["body_len"] = serde_json::json!(got);
    let mut r = Response::new(Full::new(Bytes::from(info.to_string())).boxed());
    r.headers_mut().insert("x-upstream", "yes".parse().unwrap());
    Ok(r)
}

pub async fn serve_upstream<S>(io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service_fn(upstream))
        .with_upgrades()
        .await;
}

/// A test CA and a server certificate for HOST and OTHER signed by it.
fn test_pki(dir: &Path) -> (std::path::PathBuf, rustls::ServerConfig) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "test upstream CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![HOST.into(), OTHER.into()]).unwrap();
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    let pem = dir.join("test-ca.pem");
    std::fs::write(&pem, ca_cert.pem()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
        .unwrap();
    (pem, cfg)
}

pub async fn env(policy: &str) -> Env {
    env_named("agent", policy).await
}

pub async fn env_named(name: &str, policy: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, server_cfg) = test_pki(dir.path());
    // Upstreams.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_http = plain.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (s, _) = plain.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            tokio::spawn(serve_upstream(s));
        }
    });
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_https = tls.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    tokio::spawn(async move {
        loop {
            let (s, _) = tls.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(t) = acceptor.accept(s).await {
                    serve_upstream(t).await;
                }
            });
        }
    });
    // Gateway.
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // Benches compare the audit store's durability modes (GVM_BENCH_DURABILITY=normal).
    let durability = match std::env::var("GVM_BENCH_DURABILITY").as_deref() {
        Ok("normal") => gvm_audit::Durability::Normal,
        _ => gvm_audit::Durability::Full,
    };
    let audit = Audit::open_with_durability(&state, AuditConfig::default(), durability).unwrap();
    let mut static_hosts = HashMap::new();
    static_hosts.insert(HOST.to_string(), vec!["127.0.0.1".parse().unwrap()]);
    static_hosts.insert(OTHER.to_string(), vec!["127.0.0.1".parse().unwrap()]);
    let cfg = GatewayConfig { ca_dir: state.join("ca"), extra_roots: vec![ca_pem], static_hosts, fd_limit: None };
    let gw = Gateway::new(cfg, audit.clone()).unwrap();
    let text = policy.replace("{HTTP}", &up_http.to_string()).replace("{HTTPS}", &up_https.to_string());
    let file = dir.path().join(format!("{name}.toml"));
    let profile = gvm_policy::parse_profile(&file, &text).unwrap_or_else(|d| panic!("{d}"));
    gw.set_profile(&profile);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    gw.serve_proxy(l, &gvm_api::ProfileName::parse(name).unwrap());
    // What the agent trusts: the gateway's CA.
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(gw.ca_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let agent_tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    Env { gw, audit, proxy, up_http, up_https, agent_tls, dir, profile: name.to_string() }
}

use rustls::pki_types::pem::PemObject;

pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub async fn handshake<S>(io: S) -> Sender
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(c);
    s
}

/// A keep-alive connection to the explicit proxy (for absolute-form requests).
pub async fn proxy_conn(env: &Env) -> Sender {
    let tcp = TcpStream::connect(env.proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    handshake(tcp).await
}

pub async fn send(s: &mut Sender, method: &str, uri: &str, host: &str, body: &str) -> Resp {
    send_full(s, method, uri, host, &[], body).await
}

/// [`send`] with extra headers and no body.
pub async fn send_with(s: &mut Sender, method: &str, uri: &str, host: &str, headers: &[(&str, &str)]) -> Resp {
    send_full(s, method, uri, host, headers, "").await
}

pub async fn send_full(
    s: &mut Sender,
    method: &str,
    uri: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut req = Request::builder().method(method).uri(uri).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    s.ready().await.unwrap();
    let r = s.send_request(req).await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Resp { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// Sends raw CONNECT and returns the stream and the status code.
pub async fn raw_connect(env: &Env, target: &str) -> (TcpStream, u16, String) {
    let mut tcp = TcpStream::connect(env.proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap();
    (tcp, status, head)
}

/// Reads up to the end of a response head (byte by byte: nothing past it is consumed).
pub async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// CONNECT, then TLS to `sni` through the tunnel, trusting the gateway's CA.
pub async fn connect_tls(env: &Env, target: &str, sni: &str) -> Result<Sender, String> {
    let (tcp, status, head) = raw_connect(env, target).await;
    if status != 200 {
        return Err(head);
    }
    let c = tokio_rustls::TlsConnector::from(env.agent_tls.clone());
    let tls = c.connect(ServerName::try_from(sni.to_string()).unwrap(), tcp).await.map_err(|e| e.to_string())?;
    Ok(handshake(tls).await)
}

/// Reads the whole response to a raw request written on a new proxy connection.
pub async fn raw(env: &Env, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(env.proxy).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Every event the tests read is checked against gvm-api's vocabulary: the gateway
/// writes kinds and decisions as strings, and they must be the words readers parse.
pub fn events(env: &Env) -> Vec<gvm_audit::AuditEvent> {
    let all = env.audit.events(&EventsQuery { limit: Some(10_000), ..Default::default() }).unwrap();
    for e in &all {
        assert!(gvm_api::EventKind::parse(&e.kind).is_some(), "event kind {:?} is not in gvm-api's EventKind", e.kind);
        if let Some(d) = &e.decision {
            assert!(
                gvm_api::Decision::parse(d).is_some(),
                "decision {d:?} of a {} event is not a gvm-api Decision",
                e.kind
            );
        }
    }
    all
}

/// The newest event of `kind` whose details mention `needle`.
pub fn find_event(env: &Env, kind: &str, needle: &str) -> Option<gvm_audit::AuditEvent> {
    events(env).into_iter().rev().find(|e| e.kind == kind && e.details.to_string().contains(needle))
}

/// `find_event` for an event written after the response went out (completion records,
/// refusals on a connection the gateway closed): polls until it is stored, 5 s at most.
pub async fn wait_event(env: &Env, kind: &str, needle: &str) -> gvm_audit::AuditEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(ev) = find_event(env, kind, needle) {
            return ev;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {kind} event containing {needle:?} within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A transparent listener of the gateway for a connection the agent "dialled" to some
/// address on `port` (no nft on loopback: the original destination is injected; the
/// gateway uses only its port).
pub async fn transparent(env: &Env, port: u16) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let dst = gvm_gateway::OriginalDst::Fixed(SocketAddr::from(([127, 0, 0, 1], port)));
    env.gw.serve_transparent_with(l, &gvm_api::ProfileName::parse(&env.profile).unwrap(), dst);
    a
}

/// TLS through a transparent listener, with `sni`, trusting the gateway's CA.
pub async fn transparent_tls(env: &Env, port: u16, sni: &str) -> Sender {
    let tcp = TcpStream::connect(transparent(env, port).await).await.unwrap();
    let c = tokio_rustls::TlsConnector::from(env.agent_tls.clone());
    handshake(c.connect(ServerName::try_from(sni.to_string()).unwrap(), tcp).await.unwrap()).await
}
