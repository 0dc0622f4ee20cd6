//! The agent never holds a real key and cannot smuggle one out: placeholders swapped
//! only where bound, and the exfiltration scan of URL, headers and streamed bodies
//! (docs/attacks.md classes 8 and 9), on the explicit proxy and through interception.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REAL: &str = "sk-real-value-0123456789";
const DB_PASSWORD: &str = "correct-horse-battery";

struct Rig {
    env: Env,
    placeholder: String,
    _secret: tempfile::NamedTempFile,
}

async fn rig() -> Rig {
    rig_with("").await
}

/// [`rig`], with `more` added to the secret's table (e.g. `, body = true`).
async fn rig_with(more: &str) -> Rig {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), format!("{REAL}\n")).unwrap();
    let policy = format!(
        r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
path = "/**"
action = "allow"

[[network.rule]]
host = "other.test.example"
path = "/**"
action = "allow"

[[network.rule]]
host = "other.test.example"
path = "/inject/**"
action = "allow"
inject = {{ header = "Authorization", value = "Bearer {{secret:openai}}" }}

[secrets]
openai = {{ file = "{}", env = "OPENAI_API_KEY", hosts = ["api.test.example"]{more} }}
"#,
        secret.path().display()
    );
    let env = env(&policy).await;
    let file = env.dir.path().join("agent.toml");
    let profile = gvm_policy::parse_profile(&file, &policy).unwrap();
    let agent_env = env.gw.agent_env(&profile);
    assert_eq!(agent_env.len(), 1);
    assert_eq!(agent_env[0].0, "OPENAI_API_KEY");
    let placeholder = agent_env[0].1.clone();
    assert!(placeholder.starts_with("gvm-secret-openai-") && placeholder.len() == "gvm-secret-openai-".len() + 24);
    assert!(!placeholder.contains(REAL));
    let (values, short) = gvm_gateway::file_values(
        std::path::Path::new("/ws/.env"),
        format!("# db\nDB_PASSWORD=\"{DB_PASSWORD}\"\nexport SHORT=abc\n").as_bytes(),
        &[],
    );
    assert_eq!(short, 1, "SHORT=abc is too short to scan for");
    env.gw.set_file_values("agent", values);
    Rig { env, placeholder, _secret: secret }
}

fn b64(data: &[u8], url: bool) -> String {
    let mut s = String::new();
    let alphabet: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[tokio::test]
async fn a_masked_file_value_in_any_form_is_refused_on_the_proxy_and_audited() {
    let rig = rig().await;
    let env = &rig.env;
    let p = env.up_http;
    let host = format!("{HOST}:{p}");
    let pct: String = DB_PASSWORD.bytes().map(|b| format!("%{b:02X}")).collect();
    let hex: String = DB_PASSWORD.bytes().map(|b| format!("{b:02x}")).collect();
    let mut cases: Vec<(String, String)> = vec![
        ("/up?x=1".to_string(), format!("{{\"password\": \"{DB_PASSWORD}\"}}")),
        (format!("/up?password={DB_PASSWORD}"), String::new()),
        (format!("/up?password={pct}"), String::new()),
        ("/up".to_string(), format!("data={hex}")),
        ("/up".to_string(), format!("data={}", hex.to_uppercase())),
    ];
    for prefix in ["", "a", "ab"] {
        for url in [false, true] {
            let enc = b64(format!("{prefix}{DB_PASSWORD}!").as_bytes(), url);
            cases.push(("/up".to_string(), format!("blob={enc}")));
        }
    }
    for (path, body) in &cases {
        let mut c = proxy_conn(env).await;
        let r = send(&mut c, "POST", &format!("http://{host}{path}"), &host, body).await;
        assert_eq!(r.status, 403, "{path} {body}: {}", r.body);
        let j = r.json();
        let said = j["exfiltration"].as_str().unwrap();
        assert!(said.starts_with(".env value DB_PASSWORD from /ws/.env"), "{said}");
        assert!(!r.body.contains(DB_PASSWORD), "the answer repeats the value: {}", r.body);
    }
    let ev = wait_event(env, "exfiltration", "DB_PASSWORD").await;
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    let all = events(env);
    assert!(all.iter().all(|e| !e.details.to_string().contains(DB_PASSWORD)), "the value is in the audit log");
    assert!(!upstream_saw(DB_PASSWORD.as_bytes()));
    // The same request without it goes through.
    let mut c = proxy_conn(env).await;
    let r = send(&mut c, "POST", &format!("http://{host}/up"), &host, "{\"password\": \"hunter\"}").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A chunked body whose second chunk completes the value: the first chunk reached the
/// upstream, the second never does, the agent gets 403 and the event names the key.
#[tokio::test]
async fn a_value_split_across_two_chunks_is_stopped_before_the_completing_chunk() {
    let rig = rig().await;
    let env = &rig.env;
    let p = env.up_http;
    let (a, b) = DB_PASSWORD.split_at(9);
    let first = format!("chunk-one-marker-{a}");
    let second = format!("{b}-chunk-two-marker");
    let mut tcp = tokio::net::TcpStream::connect(env.proxy).await.unwrap();
    let head = format!(
        "POST http://{HOST}:{p}/split HTTP/1.1\r\nHost: {HOST}:{p}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{first}\r\n",
        first.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Until the first chunk reached the upstream.
    for _ in 0..200 {
        if upstream_saw(b"chunk-one-marker-") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(upstream_saw(b"chunk-one-marker-"), "the first chunk should stream through");
    tcp.write_all(format!("{:x}\r\n{second}\r\n0\r\n\r\n", second.len()).as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains(".env value DB_PASSWORD"), "{out}");
    let ev = wait_event(env, "exfiltration", "/split").await;
    assert_eq!(ev.details["place"], "body");
    assert!(!upstream_saw(b"-chunk-two-marker"), "the completing chunk reached the upstream");
}

async fn tls_get(env: &Env, host: &str, path: &str, auth: &str) -> (u16, serde_json::Value) {
    let s = env.up_https;
    let mut c = connect_tls(env, &format!("{host}:{s}"), host).await.unwrap();
    let req = hyper::Request::builder()
        .method("GET")
        .uri(path)
        .header("host", format!("{host}:{s}"))
        .header("authorization", auth)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    c.ready().await.unwrap();
    let r = c.send_request(req).await.unwrap();
    let status = r.status().as_u16();
    let body = http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&body))))
}

#[tokio::test]
async fn a_placeholder_is_swapped_for_its_bound_host_and_refused_elsewhere() {
    let rig = rig().await;
    let env = &rig.env;
    let ph = &rig.placeholder;
    // Bound host, over intercepted TLS: the upstream sees the real value.
    let (status, j) = tls_get(env, HOST, "/v1/chat", &format!("Bearer {ph}")).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["authorization"], format!("Bearer {REAL}"));
    // Another host: refused, named, audited.
    let (status, j) = tls_get(env, OTHER, "/v1/chat", &format!("Bearer {ph}")).await;
    assert_eq!(status, 403, "{j}");
    assert_eq!(j["secret_egress"], "placeholder of secret openai");
    let ev = wait_event(env, "secret_egress", "other.test.example").await;
    assert_eq!(ev.decision.as_deref(), Some("deny"));
    assert_eq!(ev.details["secret"], "openai");
    // A rule that injects the secret binds it too (and its header replaces the agent's).
    let (status, j) = tls_get(env, OTHER, "/inject/x", &format!("Bearer {ph}")).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["authorization"], format!("Bearer {REAL}"));
    // In the URL, even to the bound host: refused, and the URL is not repeated.
    let (status, j) = tls_get(env, HOST, &format!("/v1?key={ph}"), "none").await;
    assert_eq!(status, 403, "{j}");
    assert!(!j.to_string().contains(ph.as_str()), "{j}");
    // Plain HTTP to the bound host: refused (a secret never travels in clear).
    let p = env.up_http;
    let mut c = proxy_conn(env).await;
    let req = hyper::Request::builder()
        .method("GET")
        .uri(format!("http://{HOST}:{p}/v1"))
        .header("host", format!("{HOST}:{p}"))
        .header("authorization", format!("Bearer {ph}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    c.ready().await.unwrap();
    let r = c.send_request(req).await.unwrap();
    assert_eq!(r.status(), 403);
    let ev = wait_event(env, "secret_egress", "http").await;
    assert!(ev.details["reason"].as_str().unwrap().contains("plain HTTP"), "{}", ev.details);
    // The real value sent by the agent itself, even to the bound host: exfiltration.
    let (status, j) = tls_get(env, HOST, "/v1/chat", &format!("Bearer {REAL}")).await;
    assert_eq!(status, 403, "{j}");
    assert!(j["exfiltration"].as_str().unwrap().starts_with("secret openai"), "{j}");
    assert!(!j.to_string().contains(REAL));
}

/// One pipeline for every way in (docs/attacks.md class 1): the same masked value in a body
/// is refused on the proxy (plain and intercepted CONNECT) and on the transparent
/// listener (plain and TLS), each refusal audited with its `via`; the bound placeholder
/// is swapped on transparent TLS as on intercepted CONNECT.
#[tokio::test]
async fn every_way_in_is_scanned() {
    let rig = rig().await;
    let env = &rig.env;
    let (p, s) = (env.up_http, env.up_https);
    let body = format!("leak={DB_PASSWORD}");
    let mut proxy = proxy_conn(env).await;
    let r = send(&mut proxy, "POST", &format!("http://{HOST}:{p}/w1"), &format!("{HOST}:{p}"), &body).await;
    assert_eq!(r.status, 403, "proxy: {}", r.body);
    let mut tunnel = connect_tls(env, &format!("{HOST}:{s}"), HOST).await.unwrap();
    let r = send(&mut tunnel, "POST", "/w2", &format!("{HOST}:{s}"), &body).await;
    assert_eq!(r.status, 403, "intercept: {}", r.body);
    let mut t_http = handshake(tokio::net::TcpStream::connect(transparent(env, p).await).await.unwrap()).await;
    let r = send(&mut t_http, "POST", "/w3", &format!("{HOST}:{p}"), &body).await;
    assert_eq!(r.status, 403, "transparent http: {}", r.body);
    let mut t_tls = transparent_tls(env, s, HOST).await;
    let r = send(&mut t_tls, "POST", "/w4", &format!("{HOST}:{s}"), &body).await;
    assert_eq!(r.status, 403, "transparent tls: {}", r.body);
    for (path, via) in [("/w1", "proxy"), ("/w2", "intercept"), ("/w3", "transparent"), ("/w4", "transparent")] {
        let ev = wait_event(env, "exfiltration", path).await;
        assert_eq!(ev.details["via"], via, "{path}");
    }
    assert!(!upstream_saw(DB_PASSWORD.as_bytes()));
    // The placeholder through transparent TLS to its bound host.
    let req = hyper::Request::builder()
        .method("GET")
        .uri("/v1/t")
        .header("host", format!("{HOST}:{s}"))
        .header("x-api-key", rig.placeholder.as_str())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    t_tls.ready().await.unwrap();
    let r = t_tls.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["headers"]["x-api-key"], REAL, "{j}");
}

/// `.env` values that are not secrets (`NODE_ENV=production`) would make the scan refuse
/// an ordinary word; `[files] scan_ignore` names their keys, and only those are let go.
#[tokio::test]
async fn scan_ignore_lets_ordinary_words_through_and_still_stops_the_secrets() {
    let rig = rig().await;
    let env = &rig.env;
    let host = format!("{HOST}:{}", env.up_http);
    let dotenv = format!("NODE_ENV=production\nDB_PASSWORD=\"{DB_PASSWORD}\"\n");
    let body = "{\"mode\": \"production\"}";
    let post = |body: &'static str| {
        let host = host.clone();
        async move {
            let mut c = proxy_conn(env).await;
            send(&mut c, "POST", &format!("http://{host}/up"), &host, body).await
        }
    };
    let (values, _) = gvm_gateway::file_values(std::path::Path::new("/ws/.env"), dotenv.as_bytes(), &[]);
    env.gw.set_file_values("agent", values);
    let r = post(body).await;
    assert_eq!(r.status, 403, "without scan_ignore the word is refused: {}", r.body);
    assert!(r.json()["exfiltration"].as_str().unwrap().starts_with(".env value NODE_ENV"), "{}", r.body);

    let ignore = ["NODE_ENV".to_string()];
    let (values, _) = gvm_gateway::file_values(std::path::Path::new("/ws/.env"), dotenv.as_bytes(), &ignore);
    env.gw.set_file_values("agent", values);
    assert_eq!(post(body).await.status, 200);
    let r = post("{\"password\": \"correct-horse-battery\"}").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["exfiltration"].as_str().unwrap().starts_with(".env value DB_PASSWORD"), "{}", r.body);
    let r = post("NODE_ENV=production").await;
    assert_eq!(r.status, 403, "the whole line is still scanned for: {}", r.body);
}

/// A POST of `body` over intercepted TLS to `host`: (status, answer as JSON).
async fn tls_post(env: &Env, host: &str, body: &str) -> (u16, serde_json::Value) {
    let s = env.up_https;
    let mut c = connect_tls(env, &format!("{host}:{s}"), host).await.unwrap();
    let r = send(&mut c, "POST", "/v1/files", &format!("{host}:{s}"), body).await;
    (r.status, r.json())
}

/// `body = true`: the placeholder is swapped in request bodies to the bound host over
/// intercepted TLS — across the body's frames, the length changed, sent chunked — and
/// still refused anywhere else or in another form.
#[tokio::test]
async fn with_body_true_a_placeholder_in_a_body_is_swapped_for_its_bound_host_only() {
    let swapping = rig_with(", body = true").await;
    let env = &swapping.env;
    let ph = &swapping.placeholder;
    // ~200 KiB of placeholders 7 bytes apart: the TLS records and frames the gateway
    // reads split some of them.
    let unit = format!("swap-{}:{ph}\n", std::process::id());
    let n = 200 * 1024 / unit.len();
    let body = unit.repeat(n);
    let (status, j) = tls_post(env, HOST, &body).await;
    assert_eq!(status, 200, "{j}");
    let want = body.len() - n * ph.len() + n * REAL.len();
    assert_eq!(j["body_len"].as_u64(), Some(want as u64), "every placeholder swapped: {j}");
    assert_eq!(j["headers"].get("content-length"), None, "{j}");
    assert_eq!(j["headers"]["transfer-encoding"], "chunked", "{j}");
    assert!(upstream_saw(format!("swap-{}:{REAL}\n", std::process::id()).as_bytes()));
    assert!(!upstream_saw(ph.as_bytes()), "a placeholder reached the upstream");

    // A chunked upload is swapped too; a request without a body goes as it came.
    let s = env.up_https;
    let mut c = connect_tls(env, &format!("{HOST}:{s}"), HOST).await.unwrap();
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/v1/chunked")
        .header("host", format!("{HOST}:{s}"))
        .header("transfer-encoding", "chunked")
        .body(http_body_util::Full::new(bytes::Bytes::from(format!("chunked={ph}"))))
        .unwrap();
    c.ready().await.unwrap();
    let r = c.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let j: serde_json::Value =
        serde_json::from_slice(&http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes()).unwrap();
    assert_eq!(j["body_len"].as_u64(), Some(("chunked=".len() + REAL.len()) as u64), "{j}");
    assert!(upstream_saw(format!("chunked={REAL}").as_bytes()));
    let (status, j) = tls_get(env, HOST, "/v1/models", "none").await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["headers"].get("transfer-encoding"), None, "a GET stays without a body: {j}");

    // Anywhere else: refused as ever.
    let (status, j) = tls_post(env, OTHER, &format!("key={ph}")).await;
    assert_eq!((status, j["secret_egress"].as_str()), (403, Some("placeholder of secret openai")), "{j}");
    let mut c = proxy_conn(env).await;
    let p = env.up_http;
    let r = send(&mut c, "POST", &format!("http://{HOST}:{p}/v1"), &format!("{HOST}:{p}"), &format!("key={ph}")).await;
    assert_eq!(r.status, 403, "plain HTTP: {}", r.body);
    // Encoded, even to the bound host: only the placeholder as it is is swapped.
    let hex: String = ph.bytes().map(|b| format!("{b:02x}")).collect();
    let (status, j) = tls_post(env, HOST, &format!("key={hex}")).await;
    assert_eq!((status, j["secret_egress"].as_str()), (403, Some("placeholder of secret openai")), "{j}");
    // The real value sent by the agent in a body: exfiltration, as ever.
    let (status, j) = tls_post(env, HOST, &format!("key={REAL}")).await;
    assert!(status == 403 && j["exfiltration"].as_str().unwrap().starts_with("secret openai"), "{j}");

    // Without `body = true`, the same body to the bound host is refused.
    let plain = rig().await;
    let (status, j) = tls_post(&plain.env, HOST, &format!("key={}", plain.placeholder)).await;
    assert_eq!((status, j["secret_egress"].as_str()), (403, Some("placeholder of secret openai")), "{j}");
}
