//! Refusal of ambiguity (ATTACKS.md class 3): requests two parsers could read
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
