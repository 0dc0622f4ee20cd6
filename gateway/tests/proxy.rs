//! The explicit proxy: absolute-form HTTP, CONNECT tunnels and intercepted CONNECT,
//! with policy, audit and the answers the agent reads.

mod common;

use std::time::{Duration, Instant};

use common::*;

const POLICY: &str = r#"
[network]
default = "deny"
hold_timeout = "1s"

[[network.rule]]
host = "api.test.example"
methods = ["GET"]
path = "/v1/**"
action = "allow"

[[network.rule]]
host = "api.test.example"
methods = ["POST"]
path = "/v1/charges/**"
action = "hold"

[[network.rule]]
host = "api.test.example"
methods = ["GET"]
path = "/limited"
action = "allow"
rate = "2/min"

[[network.rule]]
host = "api.test.example"
path = "/sse"
action = "allow"

[[network.rule]]
host = "other.test.example"
action = "allow"
"#;

#[tokio::test]
async fn plain_http_allow_and_deny_with_audit() {
    let env = env(POLICY).await;
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/v1/models?x=1", env.up_http);
    let r = send(&mut c, "GET", &url, &format!("{HOST}:{}", env.up_http), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["x-upstream"], "yes");
    assert_eq!(r.json()["path"], "/v1/models?x=1");
    // Same connection (keep-alive): a denied one.
    let url = format!("http://{HOST}:{}/admin", env.up_http);
    let r = send(&mut c, "GET", &url, &format!("{HOST}:{}", env.up_http), "").await;
    assert_eq!(r.status, 403);
    let j = r.json();
    assert!(j["error"].as_str().unwrap().starts_with("gvm denied this request: "), "{j}");
    assert_eq!(j["profile"], "agent");
    assert_eq!(j["rule"], "default");
    assert!(j["how_to_get_access"].as_str().unwrap().contains("/etc/gvm/profiles/agent.toml"));
    assert!(j["request"]["url"].as_str().unwrap().ends_with("/admin"));
    let ev = find_event(&env, "http", "/admin").expect("deny event");
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    assert_eq!(ev.details["via"], "proxy");
    let ev = find_event(&env, "http", "/v1/models").expect("allow event");
    assert_eq!(ev.decision.as_deref(), Some("allow"));
    assert!(ev.rule.as_deref().unwrap().starts_with("network.rule[0]"));
    // The completion record follows with status and bytes, naming its decision (and
    // not repeating it).
    let done = wait_event(&env, "http_done", &format!("\"decision_seq\":{}", ev.seq)).await;
    assert!(done.details.get("path").is_none() && done.details.get("host").is_none(), "{}", done.details);
    assert_eq!(done.details["status"], 200);
    assert!(done.details["bytes_down"].as_u64().unwrap() > 0);
    assert_eq!(done.details["decision_seq"], ev.seq);
}

#[tokio::test]
async fn connect_intercepted_allow_and_deny_parity() {
    let env = env(POLICY).await;
    let target = format!("{HOST}:{}", env.up_https);
    let mut c = connect_tls(&env, &target, HOST).await.unwrap();
    let r = send(&mut c, "GET", "/v1/models", &target, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/v1/models");
    let r = send(&mut c, "GET", "/admin", &target, "").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["rule"], "default");
    let ev = find_event(&env, "http", "/admin").unwrap();
    assert_eq!(ev.details["via"], "intercept");
    assert_eq!(ev.details["scheme"], "https");
    assert!(find_event(&env, "connect", "api.test.example").is_some());
}

/// A host no rule allows, over HTTPS through the proxy (a model provider missing from
/// the profile): the CONNECT is answered 200, the TLS handshake completes with gvm's
/// leaf, and a real TLS client reads the 403 body naming the request and the rule to
/// add. Nothing reaches the upstream (the name resolves to the test's TLS upstream).
#[tokio::test]
async fn connect_denied_host_is_answered_inside_tls_with_the_rule_to_add() {
    let env =
        env("[network]\ndefault = \"deny\"\n[[network.rule]]\nhost = \"api.test.example\"\naction = \"allow\"\n").await;
    let target = format!("{OTHER}:{}", env.up_https);
    let mut c = connect_tls(&env, &target, OTHER).await.expect("the refusal comes inside TLS, with gvm's leaf");
    let needle = "needle-refused-tunnel-5c1d";
    let r = send(&mut c, "POST", "/v1/chat/completions?stream=1", &target, needle).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.headers["x-gvm-decision"], "deny");
    let j = r.json();
    let url = format!("https://{target}/v1/chat/completions?stream=1");
    assert_eq!(j["error"], format!("gvm denied this request: POST {url}"), "{j}");
    assert_eq!(j["rule"], "default");
    let how = j["how_to_get_access"].as_str().unwrap();
    assert!(how.contains("/etc/gvm/profiles/agent.toml") && how.contains(&format!("`POST {url}`")), "{how}");
    // The same connection answers the next request the same way (an SDK's retry).
    let r = send(&mut c, "GET", "/v1/models", &target, "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["request"]["url"], format!("https://{target}/v1/models"));
    assert!(!upstream_saw(needle.as_bytes()), "the refused tunnel reached the upstream");
    // The audit log: the CONNECT's deny, and each request in it as an `http` deny.
    let ev = find_event(&env, "connect", OTHER).expect("the CONNECT's deny");
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    let ev = find_event(&env, "http", "/v1/chat/completions").expect("the request's deny");
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    assert_eq!(ev.rule, None, "the profile's default refused it");
    assert_eq!((ev.details["via"].as_str(), ev.details["tunnel"].as_str()), (Some("intercept"), Some("refused")));
    assert_eq!(ev.details["host"], OTHER);
    assert_eq!(ev.details["status"], 403);
    assert!(events(&env).iter().all(|e| e.decision.as_deref() != Some("allow")), "nothing was allowed");
}

/// Where a refused CONNECT cannot or need not be answered inside TLS, it is refused at
/// CONNECT level as before: port 80 (plain HTTP), and past the profile's budget of
/// handshakes for refusals (`[limits] decisions` per period).
#[tokio::test]
async fn connect_refusals_stay_at_connect_level_for_port_80_and_past_the_budget() {
    let env = env("[network]\ndefault = \"deny\"\n[[network.rule]]\nhost = \"api.test.example\"\naction = \"allow\"\n\
         [limits]\ndecisions = \"3/min\"\n")
    .await;
    let (mut tcp, status, head) = raw_connect(&env, "denied.test.example:80").await;
    assert_eq!(status, 403, "{head}");
    let mut body = vec![0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut body).await.unwrap();
    let j: serde_json::Value = serde_json::from_slice(&body[..n]).unwrap();
    assert_eq!(j["request"]["method"], "CONNECT");
    assert_eq!(j["request"]["url"], "denied.test.example:80");
    // Three refusals a minute are answered inside TLS, the fourth at CONNECT level.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(raw_connect(&env, "denied.test.example:443").await.1);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 403]);
    let ev = find_event(&env, "connect", "denied.test.example").unwrap();
    assert_eq!(ev.decision.as_deref(), Some("deny"));
}

#[tokio::test]
async fn connect_host_only_rule_is_spliced() {
    let env = env(POLICY).await;
    // other.test.example has a host-only rule: tunnelled, upstream cert seen directly.
    let target = format!("{OTHER}:{}", env.up_https);
    let (tcp, status, _) = raw_connect(&env, &target).await;
    assert_eq!(status, 200);
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(env.dir.path().join("test-ca.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from(OTHER).unwrap(), tcp)
        .await
        .expect("the upstream's own certificate, not the gateway's");
    let mut c = handshake(tls).await;
    let r = send(&mut c, "GET", "/anything", &target, "").await;
    assert_eq!(r.status, 200);
    let ev = find_event(&env, "connect", "other.test.example").unwrap();
    assert_eq!(ev.decision.as_deref(), Some("allow"));
}

#[tokio::test]
async fn sni_not_matching_connect_target_is_refused_and_audited() {
    let env = env(POLICY).await;
    let target = format!("{OTHER}:{}", env.up_https);
    // Domain fronting: CONNECT other (allowed host-only) but SNI names api.
    let err = connect_tls(&env, &target, HOST).await;
    assert!(err.is_err());
    let ev = wait_event(&env, "connect", "domain fronting").await;
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    // Same in an intercepted tunnel.
    let target = format!("{HOST}:{}", env.up_https);
    assert!(connect_tls(&env, &target, OTHER).await.is_err());
}

#[tokio::test]
async fn inner_host_must_match_tunnel() {
    let env = env(POLICY).await;
    let target = format!("{HOST}:{}", env.up_https);
    let mut c = connect_tls(&env, &target, HOST).await.unwrap();
    let r = send(&mut c, "GET", "/v1/x", &format!("{OTHER}:{}", env.up_https), "").await;
    assert_eq!(r.status, 421, "{}", r.body);
    assert!(find_event(&env, "http", "Host header names").is_some());
}

#[tokio::test]
async fn connect_inside_tunnel_is_refused() {
    let env = env(POLICY).await;
    // Plain HTTP inside a CONNECT to an allowed host: a second CONNECT is refused.
    let target = format!("{OTHER}:{}", env.up_http);
    let (mut tcp, status, _) = raw_connect(&env, &target).await;
    assert_eq!(status, 200);
    use tokio::io::AsyncWriteExt;
    tcp.write_all(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n").await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(find_event(&env, "connect", "CONNECT inside a tunnel").is_some());
}

#[tokio::test]
async fn plain_http_in_tunnel_gets_same_policy() {
    let env = env(POLICY).await;
    let target = format!("{HOST}:{}", env.up_http);
    let (tcp, status, _) = raw_connect(&env, &target).await;
    assert_eq!(status, 200);
    let mut c = handshake(tcp).await;
    assert_eq!(send(&mut c, "GET", "/v1/ok", &target, "").await.status, 200);
    assert_eq!(send(&mut c, "GET", "/admin", &target, "").await.status, 403);
    // An absolute URL naming another host inside the tunnel.
    let r = send(&mut c, "GET", &format!("http://{OTHER}:{}/x", env.up_http), &target, "").await;
    assert!(r.status == 421 || r.status == 400, "{}", r.status);
}

#[tokio::test]
async fn absolute_url_host_differs_from_host_header() {
    let env = env(POLICY).await;
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{OTHER}:{}/x", env.up_http);
    let r = send(&mut c, "GET", &url, &format!("{HOST}:{}", env.up_http), "").await;
    assert_eq!(r.status, 421);
}

#[tokio::test]
async fn hold_approve_deny_timeout() {
    let env = env(POLICY).await;
    let target = format!("{HOST}:{}", env.up_https);
    // Approve.
    let gw = env.gw.clone();
    let approver = tokio::spawn(async move {
        loop {
            if let Some(h) = gw.holds().first().cloned() {
                assert_eq!(h.method, "POST");
                assert!(h.url.contains("/v1/charges/1"));
                gw.resolve_hold(h.id, true).unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut c = connect_tls(&env, &target, HOST).await.unwrap();
    let r = send(&mut c, "POST", "/v1/charges/1", &target, "amount=1").await;
    approver.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["body_len"], 8);
    // Deny.
    let gw = env.gw.clone();
    let denier = tokio::spawn(async move {
        loop {
            if let Some(h) = gw.holds().first().cloned() {
                gw.resolve_hold(h.id, false).unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let r = send(&mut c, "POST", "/v1/charges/2", &target, "").await;
    denier.await.unwrap();
    assert_eq!(r.status, 403);
    assert!(r.json()["reason"].as_str().unwrap().contains("denied by the operator"));
    // Timeout (hold_timeout = 1s): denied, never forwarded.
    let t = Instant::now();
    let r = send(&mut c, "POST", "/v1/charges/3", &target, "").await;
    assert_eq!(r.status, 403);
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert!(r.json()["reason"].as_str().unwrap().contains("not approved within"));
    assert!(env.gw.holds().is_empty());
    assert!(env.gw.resolve_hold(9999, true).is_err());
    let ev = find_event(&env, "http", "\"timeout\"").unwrap();
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    assert!(find_event(&env, "http", "/v1/charges/1").is_some());
}

#[tokio::test]
async fn rate_limit_per_rule() {
    let env = env(POLICY).await;
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/limited", env.up_http);
    let host = format!("{HOST}:{}", env.up_http);
    assert_eq!(send(&mut c, "GET", &url, &host, "").await.status, 200);
    assert_eq!(send(&mut c, "GET", &url, &host, "").await.status, 200);
    let r = send(&mut c, "GET", &url, &host, "").await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // Another rule is not affected.
    let url2 = format!("http://{HOST}:{}/v1/x", env.up_http);
    assert_eq!(send(&mut c, "GET", &url2, &host, "").await.status, 200);
    let ev = find_event(&env, "http", "retry_after").unwrap();
    assert_eq!(ev.decision.as_deref(), Some("limit"));
}

#[tokio::test]
async fn sse_events_arrive_as_sent() {
    use http_body_util::BodyExt;
    let env = env(POLICY).await;
    let target = format!("{HOST}:{}", env.up_https);
    let mut c = connect_tls(&env, &target, HOST).await.unwrap();
    let req = hyper::Request::get("/sse")
        .header("host", &target)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let t0 = Instant::now();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: event 0\n\n");
    // The upstream sends the second event 100 ms after the first.
    assert!(t0.elapsed() < Duration::from_millis(90), "{:?}", t0.elapsed());
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&second[..], b"data: event 1\n\n");
}

#[tokio::test]
async fn ssrf_names_resolving_internally_are_refused() {
    // A catch-all allow: the only thing standing between the agent and the host's
    // loopback services or the metadata endpoint is the SSRF check.
    let env = env("[network]\ndefault = \"deny\"\n[[network.rule]]\nhost = \"*\"\naction = \"allow\"\n").await;
    let mut c = proxy_conn(&env).await;
    for (url, host) in [
        ("http://localhost:9/", "localhost:9"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://127.0.0.1:9/", "127.0.0.1:9"),
        ("http://[::ffff:127.0.0.1]:9/", "[::ffff:127.0.0.1]:9"),
    ] {
        let r = send(&mut c, "GET", url, host, "").await;
        assert_eq!(r.status, 403, "{url}: {}", r.body);
        assert!(r.json()["reason"].as_str().unwrap().contains("internal"), "{}", r.body);
    }
    let (_, status, _) = raw_connect(&env, "localhost:22").await;
    assert_eq!(status, 403);
    let ev = find_event(&env, "http", "169.254.169.254").unwrap();
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    assert_eq!(ev.rule.as_deref(), Some("upstream-safety"));
}

#[tokio::test]
async fn ssrf_rule_naming_the_ip_allows_it() {
    let env = env("[network]\ndefault = \"deny\"\n[[network.rule]]\nhost = \"127.0.0.1\"\naction = \"allow\"\n").await;
    let mut c = proxy_conn(&env).await;
    let url = format!("http://127.0.0.1:{}/x", env.up_http);
    let r = send(&mut c, "GET", &url, &format!("127.0.0.1:{}", env.up_http), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn audit_failure_means_503_and_nothing_forwarded() {
    let env = env(POLICY).await;
    env.audit.close().unwrap();
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/v1/x", env.up_http);
    let r = send(&mut c, "GET", &url, &format!("{HOST}:{}", env.up_http), "").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.headers.get("x-upstream").is_none());
    let (_, status, _) = raw_connect(&env, &format!("{OTHER}:{}", env.up_https)).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn unknown_profile_denies_everything() {
    let env = env(POLICY).await;
    env.gw.remove_profile("agent");
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/v1/x", env.up_http);
    let r = send(&mut c, "GET", &url, &format!("{HOST}:{}", env.up_http), "").await;
    assert_eq!(r.status, 403);
}

/// Records what the gateway tells the durable queue; fails every insert when `fail`.
#[derive(Default)]
struct Sink {
    fail: bool,
    held: std::sync::Mutex<Vec<gvm_gateway::HeldInfo>>,
    ended: std::sync::Mutex<Vec<(u64, gvm_gateway::HoldEnd)>>,
}

impl gvm_gateway::HoldSink for Sink {
    fn held(&self, info: &gvm_gateway::HeldInfo) -> Result<u64, String> {
        if self.fail {
            return Err("disk I/O error".into());
        }
        let mut h = self.held.lock().unwrap();
        h.push(info.clone());
        Ok(1000 + h.len() as u64)
    }
    fn ended(&self, id: u64, end: gvm_gateway::HoldEnd) {
        self.ended.lock().unwrap().push((id, end));
    }
}

#[tokio::test]
async fn holds_take_their_ids_from_the_sink_and_a_failing_sink_refuses() {
    let env = env(POLICY).await;
    let sink = std::sync::Arc::new(Sink::default());
    env.gw.set_hold_sink(sink.clone());
    let target = format!("{HOST}:{}", env.up_https);
    let mut c = connect_tls(&env, &target, HOST).await.unwrap();
    // Timeout: the sink's id is the one in the answer, and the sink hears how it ended.
    let r = send(&mut c, "POST", "/v1/charges/9", &target, "amount=1").await;
    assert_eq!(r.status, 403);
    assert!(r.json()["reason"].as_str().unwrap().contains("held request 1001 was not approved"), "{}", r.body);
    let info = sink.held.lock().unwrap()[0].clone();
    assert_eq!((info.method.as_str(), info.body.as_deref()), ("POST", Some("8 B")));
    assert!(info.url.ends_with("/v1/charges/9"), "{}", info.url);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.ended.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the sink was not told");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sink.ended.lock().unwrap()[0], (1001, gvm_gateway::HoldEnd::TimedOut));

    // A sink that cannot record: refused at once, never held, never forwarded.
    let failing = std::sync::Arc::new(Sink { fail: true, ..Sink::default() });
    env.gw.set_hold_sink(failing);
    let t = Instant::now();
    let r = send(&mut c, "POST", "/v1/charges/10", &target, "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(t.elapsed() < Duration::from_millis(900));
    assert!(
        r.json()["reason"].as_str().unwrap().contains("could not be queued for approval: disk I/O error"),
        "{}",
        r.body
    );
    let ev = find_event(&env, "http", "could not be queued").unwrap();
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    assert!(find_event(&env, "http_done", &format!("\"decision_seq\":{}", ev.seq)).is_none());
    assert!(find_event(&env, "http", "/v1/charges/10").is_some_and(|e| e.decision.as_deref() == Some("deny")));
}

/// Upstream connections are pooled: sequential requests ride one upstream connection,
/// handed out again once its response is read; one still streaming a response is never
/// handed to another request (which gets a connection of its own).
#[tokio::test]
async fn upstream_connections_are_reused_once_their_response_is_read() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let env = env(POLICY).await;
    let counted = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = counted.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = counted.accept().await.unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_upstream(s));
        }
    });
    let host = format!("{HOST}:{port}");
    let url = |p: &str| format!("http://{host}{p}");
    let mut a = proxy_conn(&env).await;
    for _ in 0..10 {
        assert_eq!(send(&mut a, "GET", &url("/v1/models"), &host, "").await.status, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "ten sequential requests, one upstream connection");

    // A streams its response (3 events, 100 ms apart) and reads none of it yet.
    let req = http::Request::get(url("/sse"))
        .header("host", &host)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let streaming = a.send_request(req).await.unwrap();
    assert_eq!(streaming.status(), 200);
    let mut b = proxy_conn(&env).await;
    assert_eq!(send(&mut b, "GET", &url("/v1/models"), &host, "").await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the busy connection was not handed out");
    use http_body_util::BodyExt;
    let body = streaming.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("event 2"));
    // Both are free again: no third connection.
    for c in [&mut a, &mut b] {
        assert_eq!(send(c, "GET", &url("/v1/models"), &host, "").await.status, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
