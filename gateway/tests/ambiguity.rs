//! Refusal of ambiguity (docs/attacks.md class 3): requests two parsers could read
//! differently are refused, never guessed at, and audited.

mod common;

use common::*;

const POLICY: &str = r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
action = "allow"
"#;

fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let env = env(POLICY).await;
    let p = env.up_http;
    let cases: Vec<(String, &[u16])> = vec![
        // Duplicate Host.
        (format!("GET http://{HOST}:{p}/ HTTP/1.1\r\nHost: {HOST}:{p}\r\nHost: evil.example\r\n\r\n"), &[400]),
        // Transfer-Encoding other than chunked.
        (format!("POST http://{HOST}:{p}/ HTTP/1.1\r\nHost: {HOST}:{p}\r\nTransfer-Encoding: gzip, chunked, x\r\n\r\n0\r\n\r\n"), &[400]),
        // Differing duplicate Content-Length (identical ones are folded into one by
        // hyper: not ambiguous, so accepted).
        (format!("POST http://{HOST}:{p}/ HTTP/1.1\r\nHost: {HOST}:{p}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"), &[400]),
        // obs-fold.
        (format!("GET http://{HOST}:{p}/ HTTP/1.1\r\nHost: {HOST}:{p}\r\nX-A: a\r\n  folded\r\n\r\n"), &[400]),
        // Userinfo.
        (format!("GET http://{HOST}:{p}@evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n"), &[400]),
        // Host ≠ authority.
        (format!("GET http://{HOST}:{p}/ HTTP/1.1\r\nHost: evil.example\r\n\r\n"), &[421]),
        // IP encodings.
        ("GET http://2130706433/ HTTP/1.1\r\nHost: 2130706433\r\n\r\n".to_string(), &[400]),
        ("GET http://0x7f.1/ HTTP/1.1\r\nHost: 0x7f.1\r\n\r\n".to_string(), &[400]),
        ("GET http://0177.0.0.1/ HTTP/1.1\r\nHost: 0177.0.0.1\r\n\r\n".to_string(), &[400]),
        // Origin-form to the explicit proxy.
        (format!("GET / HTTP/1.1\r\nHost: {HOST}:{p}\r\n\r\n"), &[400]),
        // Oversize head (> 64 KiB).
        (format!("GET http://{HOST}:{p}/ HTTP/1.1\r\nHost: {HOST}:{p}\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000)), &[431, 400]),
        // CONNECT with userinfo / NUL.
        ("CONNECT api.test.example@evil.example:443 HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), &[400]),
    ];
    for (req, want) in &cases {
        let resp = raw(&env, req.as_bytes()).await;
        let got = status(&resp);
        assert!(want.contains(&got), "{want:?} != {got} for {:?}\n{resp}", &req[..req.len().min(120)]);
    }
    // Nothing reached the upstream; the refusals we answered are audited.
    let refusals = events(&env).into_iter().filter(|e| e.rule.as_deref() == Some("protocol")).count();
    assert!(refusals >= 8, "{refusals}");
}

#[tokio::test]
async fn nul_and_trailing_dot_hosts() {
    let env = env(POLICY).await;
    let p = env.up_http;
    // NUL in the host: hyper or the gateway refuses it, never forwarded.
    let resp = raw(&env, format!("GET http://evil.example\0.{HOST}:{p}/ HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(matches!(status(&resp), 400 | 0), "{resp}");
    // Trailing dot and case are normalised: the same host, allowed.
    let mut c = proxy_conn(&env).await;
    let url = format!("http://API.Test.Example.:{p}/ok");
    let r = send(&mut c, "GET", &url, &format!("api.test.example:{p}"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // And a Host header with the trailing dot agrees with the URL without it.
    let url = format!("http://{HOST}:{p}/ok");
    let r = send(&mut c, "GET", &url, &format!("{HOST}.:{p}"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn hop_by_hop_and_proxy_credentials_are_not_forwarded() {
    let env = env(POLICY).await;
    let p = env.up_http;
    let resp = raw(
        &env,
        format!("GET http://{HOST}:{p}/x HTTP/1.1\r\nHost: {HOST}:{p}\r\nProxy-Authorization: Basic Zm9v\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.contains("\"proxy_authorization\":null"), "{resp}");
}

#[tokio::test]
async fn te_before_cl_cannot_desync() {
    // hyper drops a Content-Length that follows Transfer-Encoding before the gateway
    // sees the headers; it frames by chunked and closes the connection afterwards, so
    // a smuggled second request is never read. Assert exactly that.
    let env = env(POLICY).await;
    let p = env.up_http;
    for hdrs in ["Transfer-Encoding: chunked\r\nContent-Length: 40", "Content-Length: 40\r\nTransfer-Encoding: chunked"]
    {
        let req = format!(
            "POST http://{HOST}:{p}/ HTTP/1.1\r\nHost: {HOST}:{p}\r\n{hdrs}\r\n\r\n0\r\n\r\nGET http://{HOST}:{p}/smuggled HTTP/1.1\r\nHost: {HOST}:{p}\r\n\r\n"
        );
        let resp = raw(&env, req.as_bytes()).await;
        assert!(resp.contains("connection: close"), "{resp}");
        assert!(!resp.contains("smuggled"), "{resp}");
        assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
    }
}

const METHOD_POLICY: &str = r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
action = "allow"

[[network.rule]]
host = "api.test.example"
methods = ["DELETE"]
action = "deny"
"#;

/// A method that is a case variant of a registered one must never reach an upstream:
/// Werkzeug-like servers upper-case what they read, so `delete` would run the DELETE
/// handler a rule denies. Refused (400, audited) on every door into the gateway.
#[tokio::test]
async fn method_case_variants_are_refused_on_every_path() {
    let env = env(METHOD_POLICY).await;
    let (p, s) = (env.up_http, env.up_https);
    let variants = ["delete", "dElEtE", "Delete", "get", "pOST"];
    let check = |door: &str, method: &str, r: &Resp| {
        let want = if method == "DELETE" { 403 } else { 400 };
        assert_eq!(r.status, want, "{door} {method}: {}", r.body);
        assert!(r.headers.get("x-upstream").is_none(), "{door} {method} reached the upstream");
    };

    // Explicit proxy, raw absolute-form request line.
    for m in ["DELETE"].iter().chain(&variants) {
        let resp = raw(
            &env,
            format!("{m} http://{HOST}:{p}/x HTTP/1.1\r\nHost: {HOST}:{p}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let want = if *m == "DELETE" { 403 } else { 400 };
        assert_eq!(status(&resp), want, "proxy {m}: {resp}");
        assert!(!resp.contains("x-upstream"), "proxy {m} reached the upstream: {resp}");
    }
    // A lower-case CONNECT is no CONNECT either.
    let resp = raw(&env, format!("connect {HOST}:{s} HTTP/1.1\r\nHost: {HOST}:{s}\r\n\r\n").as_bytes()).await;
    assert_eq!(status(&resp), 400, "{resp}");

    // CONNECT + interception, transparent plain HTTP and TLS; a refusal closes the
    // connection, so each request has its own.
    for m in ["DELETE"].iter().chain(&variants) {
        let mut c = connect_tls(&env, &format!("{HOST}:{s}"), HOST).await.unwrap();
        check("intercepted", m, &send(&mut c, m, "/x", &format!("{HOST}:{s}"), "").await);
        let mut c = handshake(tokio::net::TcpStream::connect(transparent(&env, p).await).await.unwrap()).await;
        check("transparent http", m, &send(&mut c, m, "/x", &format!("{HOST}:{p}"), "").await);
        let mut c = transparent_tls(&env, s, HOST).await;
        check("transparent https", m, &send(&mut c, m, "/x", &format!("{HOST}:{s}"), "").await);
    }
    // The upper-case forms still work where allowed.
    let mut c = transparent_tls(&env, s, HOST).await;
    assert_eq!(send(&mut c, "GET", "/x", &format!("{HOST}:{s}"), "").await.status, 200);

    // Every refusal is audited with the method as sent and a reason that names the fix.
    let ev = find_event(&env, "http", "dElEtE").expect("the refusal is audited");
    assert_eq!(ev.rule.as_deref(), Some("protocol"));
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    assert!(ev.details.to_string().contains("send `DELETE`"), "{}", ev.details);
    // Identical refusals (the same request through two doors) fold into one counted
    // event: every refusal is accounted for once the counts are written.
    env.gw.flush().await;
    let refused: u64 = events(&env)
        .into_iter()
        .filter(|e| e.rule.as_deref() == Some("protocol"))
        .map(|e| e.details["folded"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(refused, 1 + 4 * variants.len() as u64, "one lower-case CONNECT, four doors per variant");
}

/// An injected credential travels alone: no client-sent value of the same header, and
/// no `_` twin that CGI/WSGI/PHP upstreams read as the same variable.
#[tokio::test]
async fn injected_headers_have_no_client_twins() {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "real-key\n").unwrap();
    let policy = format!(
        r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
action = "allow"
inject = {{ header = "X-Api-Key", value = "{{secret:k}}" }}

[secrets]
k = {{ file = "{}" }}
"#,
        secret.path().display()
    );
    let env = env(&policy).await;
    let s = env.up_https;
    let resp = {
        let mut c = connect_tls(&env, &format!("{HOST}:{s}"), HOST).await.unwrap();
        let req = hyper::Request::builder()
            .method("GET")
            .uri("/x")
            .header("host", format!("{HOST}:{s}"))
            .header("x-api-key", "agent-own")
            .header("X_Api_Key", "agent-twin")
            .header("x_api-key", "agent-twin2")
            .header("x-api_key-extra", "kept")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        c.ready().await.unwrap();
        let r = c.send_request(req).await.unwrap();
        assert_eq!(r.status(), 200);
        let body = http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    let h = &resp["headers"];
    assert_eq!(h["x-api-key"], "real-key", "{resp}");
    assert!(h.get("x_api_key").is_none() && h.get("x_api-key").is_none(), "{resp}");
    assert_eq!(h["x-api_key-extra"], "kept", "{resp}");
}

/// Transfer-Encoding spellings: only one `chunked` (any case) frames a body; every
/// other spelling is refused rather than guessed at. What is forwarded is re-framed by
/// the gateway, so the upstream never sees the agent's framing.
#[tokio::test]
async fn transfer_encoding_variants() {
    let env = env(POLICY).await;
    let p = env.up_http;
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for (te, want) in [
        ("Transfer-Encoding: chunked", 200),
        ("Transfer-Encoding: Chunked", 200),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", 400),
        ("Transfer-Encoding: chunked, chunked", 400),
        ("Transfer-Encoding: identity, chunked", 400),
        ("Transfer-Encoding: xchunked", 400),
        ("Transfer-Encoding: chunked;q=1", 400),
        ("Transfer-Encoding: \"chunked\"", 400),
    ] {
        let req =
            format!("POST http://{HOST}:{p}/ HTTP/1.1\r\nHost: {HOST}:{p}\r\n{te}\r\nConnection: close\r\n\r\n{body}");
        let resp = raw(&env, req.as_bytes()).await;
        let got = status(&resp);
        // hyper itself refuses some spellings before the gateway sees them (no answer
        // or its own 400); either way nothing is forwarded.
        if want == 200 {
            assert_eq!(got, 200, "{te:?}: {resp}");
            assert!(resp.contains("\"body_len\":5"), "{te:?}: {resp}");
        } else {
            assert!(matches!(got, 400 | 0), "{te:?}: {resp}");
            assert!(!resp.contains("x-upstream"), "{te:?} was forwarded: {resp}");
        }
    }
}

/// Paths are case-sensitive, but Express, ASP.NET and IIS route without regard to
/// case: a deny rule on `/admin/**` also denies `/ADMIN/x` and `/%41dmin`.
#[tokio::test]
async fn deny_path_rules_ignore_case() {
    let policy = r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
action = "allow"

[[network.rule]]
host = "api.test.example"
path = "/admin/**"
action = "deny"
"#;
    let env = env(policy).await;
    let s = env.up_https;
    let mut c = connect_tls(&env, &format!("{HOST}:{s}"), HOST).await.unwrap();
    for path in ["/admin/x", "/ADMIN/x", "/Admin", "/%41dmin/users", "/aDmIn/"] {
        let r = send(&mut c, "GET", path, &format!("{HOST}:{s}"), "").await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(r.headers.get("x-upstream").is_none(), "{path} was forwarded");
    }
    assert_eq!(send(&mut c, "GET", "/administrator", &format!("{HOST}:{s}"), "").await.status, 200);
}
