//! One agent must not hurt another, nor fill the disk (docs/attacks.md class 17): a profile's
//! `[limits]` bound its connections on every listener (tunnels included), its held
//! requests, its DNS queries, its audit events and its upload bandwidth; identical
//! refusals fold into one counted event, and every decision stays accounted for.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.extend_from_slice(&[0, 0, 1, 0, 1]);
    b
}

/// Every decision of `kind` the audit log accounts for: events count once, folded
/// events for their count, `limits_exceeded` events for the requests they refused.
fn accounted(env: &Env, kind: &str) -> u64 {
    events(env)
        .iter()
        .filter(|e| e.kind == kind || (e.kind == "limits_exceeded" && e.details["of"] == kind))
        .map(|e| e.details["folded"].as_u64().unwrap_or(1))
        .sum()
}

#[tokio::test]
async fn a_dns_flood_is_folded_rate_limited_and_still_counted_exactly() {
    let env = env(r#"
[network]
default = "deny"

[limits]
dns_queries = "500/min"
decisions = "100/min"
"#)
    .await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = udp.local_addr().unwrap();
    env.gw.serve_dns(udp, tcp, &gvm_api::ProfileName::parse("agent").unwrap(), "127.0.0.53".parse().unwrap());
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rcodes = [0u32; 16];
    let started = std::time::Instant::now();
    // The same exfiltration lookup, 400 times; then 300 different ones.
    let names =
        (0..400).map(|_| "c2VjcmV0.exfil.example".to_string()).chain((0..300).map(|i| format!("n{i}.exfil.example")));
    for (id, name) in (0u16..).zip(names) {
        c.send_to(&query(id, &name), server).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf)).await.unwrap().unwrap();
        assert!(n >= 12 && buf[..2] == id.to_be_bytes(), "an answer to query {id}");
        rcodes[usize::from(buf[3] & 0x0f)] += 1;
    }
    env.gw.flush().await;

    // Every query got an answer: NXDOMAIN within the rate, REFUSED past it.
    let (nx, refused) = (rcodes[3], rcodes[5]);
    assert_eq!(nx + refused, 700, "{rcodes:?}");
    // 500/min: the 200 queries past the burst are refused, less what the bucket refilled
    // (500/min = 8.3 a second) while the loop ran — seconds on a loaded machine.
    let refilled = (started.elapsed().as_secs_f64() * 500.0 / 60.0).ceil() as u32;
    let expected = 200u32.saturating_sub(refilled + 5)..=205;
    assert!(expected.contains(&refused), "refused {refused}, expected {expected:?} ({refilled} refilled): {rcodes:?}");
    // Few events, every query accounted for.
    let all = events(&env);
    assert!(all.len() < 120, "{} events for 700 queries", all.len());
    assert_eq!(accounted(&env, "dns"), 700);
    let folded = all.iter().find(|e| e.kind == "dns" && e.details["folded"].is_u64()).expect("a folded event");
    assert_eq!(folded.details["name"], "c2vjcmv0.exfil.example");
    assert_eq!(folded.details["folded"], 399, "{:?}", folded.details);
    let first = all.iter().find(|e| e.kind == "dns").unwrap();
    assert_eq!(folded.details["of_seq"], first.seq, "a fold points at the event it repeats");
    let limits: Vec<_> = all.iter().filter(|e| e.kind == "limits_exceeded").collect();
    let by = |limit: &str| limits.iter().find(|e| e.details["limit"] == limit).map(|e| e.details.clone());
    let dns = by("dns_queries").expect("the DNS rate was exceeded");
    assert_eq!((dns["value"].as_str(), dns["folded"].as_u64()), (Some("500/min"), Some(u64::from(refused))));
    assert!(dns["samples"][0]["name"].as_str().unwrap().ends_with(".exfil.example"), "{dns}");
    assert!(by("decisions").is_some(), "past the decision budget, refusals are counted, not recorded one by one");
    let noisy = env.gw.noisy("agent").expect("the profile shows as noisy");
    assert_eq!(noisy.refused.get("dns_queries"), Some(&u64::from(refused)));
    assert!(noisy.folded >= 399);
    assert!(env.audit.verify().ok, "the chain stays exact");
}

/// Connections on every listener count against one ceiling, a tunnel for as long as it
/// is open; another profile is not affected.
#[tokio::test]
async fn connections_are_capped_per_profile_across_listeners_and_tunnels() {
    let env = env(r#"
[network]
default = "deny"

[[network.rule]]
host = "other.test.example"
action = "allow"

[[network.rule]]
host = "api.test.example"
action = "allow"

[limits]
connections = 6
"#)
    .await;
    let quiet_profile = gvm_policy::parse_profile(
        &env.dir.path().join("quiet.toml"),
        "[[network.rule]]\nhost = \"api.test.example\"\naction = \"allow\"\n",
    )
    .unwrap();
    env.gw.set_profile(&quiet_profile);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let quiet_proxy = l.local_addr().unwrap();
    env.gw.serve_proxy(l, &gvm_api::ProfileName::parse("quiet").unwrap());
    assert_eq!(env.gw.connections_cap("agent"), 6);

    // Six tunnels (spliced: the host has host-only rules); their HTTP side is over.
    let mut tunnels = Vec::new();
    for _ in 0..6 {
        let (tcp, status, head) = raw_connect(&env, &format!("{OTHER}:{}", env.up_http)).await;
        assert_eq!(status, 200, "{head}");
        tunnels.push(tcp);
    }
    // The seventh connection, on the proxy or on the transparent listener, is closed.
    let t = transparent(&env, env.up_http).await;
    for addr in [env.proxy, t] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let _ = c
            .write_all(
                format!("GET http://{HOST}:{}/x HTTP/1.1\r\nHost: {HOST}:{}\r\n\r\n", env.up_http, env.up_http)
                    .as_bytes(),
            )
            .await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "closed at once: {}", String::from_utf8_lossy(&buf[..n]));
    }
    // Another profile is served as usual.
    let mut q = handshake(TcpStream::connect(quiet_proxy).await.unwrap()).await;
    let r =
        send(&mut q, "GET", &format!("http://{HOST}:{}/q", env.up_http), &format!("{HOST}:{}", env.up_http), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A tunnel that ends gives its place back.
    drop(tunnels.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (mut tcp, status, _) = raw_connect(&env, &format!("{OTHER}:{}", env.up_http)).await;
        if status == 200 {
            let _ = tcp.shutdown().await;
            break;
        }
        assert!(Instant::now() < deadline, "the closed tunnel's place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.gw.flush().await;
    let ev = find_event(&env, "limits_exceeded", "connections").expect("refused connections are audited");
    assert_eq!(ev.details["of"], "connect");
    assert!(ev.details["folded"].as_u64().unwrap() >= 2, "{}", ev.details);
    assert_eq!(ev.profile.as_deref(), Some("agent"));
}

#[tokio::test]
async fn held_requests_past_the_limit_are_refused() {
    let env = env(r#"
[network]
default = "deny"
hold_timeout = "30s"

[[network.rule]]
host = "api.test.example"
action = "hold"

[limits]
held_requests = 2
"#)
    .await;
    let url = format!("http://{HOST}:{}/charge", env.up_http);
    let host = format!("{HOST}:{}", env.up_http);
    // Two requests wait for a human; both are denied at the end.
    let hold_two = || async {
        let mut waiting = Vec::new();
        for _ in 0..2 {
            let mut c = proxy_conn(&env).await;
            let (url, host) = (url.clone(), host.clone());
            waiting.push(tokio::spawn(async move { send(&mut c, "GET", &url, &host, "").await.status }));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while env.gw.holds().len() < 2 {
            assert!(Instant::now() < deadline, "two requests held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        waiting
    };
    let deny_all = |waiting: Vec<tokio::task::JoinHandle<u16>>| async {
        for h in env.gw.holds() {
            env.gw.resolve_hold(h.id, false).unwrap();
        }
        for w in waiting {
            assert_eq!(w.await.unwrap(), 403);
        }
    };
    let waiting = hold_two().await;
    let r = send(&mut proxy_conn(&env).await, "GET", &url, &host, "").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["rule"], "limits.held_requests");
    assert_eq!(env.gw.holds().len(), 2, "the third was never held");
    // Answered holds give their places back.
    deny_all(waiting).await;
    deny_all(hold_two().await).await;
    env.gw.flush().await;
    let ev = find_event(&env, "limits_exceeded", "held_requests").expect("the refusal is audited");
    assert_eq!((ev.details["value"].as_str(), ev.details["folded"].as_u64()), (Some("2"), Some(1)));
}

/// Past `[limits] decisions`, a request that would be forwarded is refused (429): it
/// could not be recorded on its own, and nothing leaves unrecorded.
#[tokio::test]
async fn past_the_decision_budget_nothing_is_forwarded() {
    let env = env(r#"
[[network.rule]]
host = "api.test.example"
action = "allow"

[limits]
decisions = "5/hour"
"#)
    .await;
    let url = format!("http://{HOST}:{}/ok", env.up_http);
    let host = format!("{HOST}:{}", env.up_http);
    let mut c = proxy_conn(&env).await;
    for _ in 0..5 {
        assert_eq!(send(&mut c, "GET", &url, &host, "").await.status, 200);
    }
    let r = send(&mut c, "GET", &url, &host, "").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.headers.get("x-upstream").is_none(), "not forwarded");
    let body = r.json();
    assert_eq!((body["limit"]["name"].as_str(), body["limit"]["value"].as_str()), (Some("decisions"), Some("5/hour")));
    env.gw.flush().await;
    let ev = find_event(&env, "limits_exceeded", "decisions").unwrap();
    assert_eq!((ev.details["of"].as_str(), ev.details["folded"].as_u64()), (Some("http"), Some(1)));
    assert_eq!(accounted(&env, "http"), 6, "five allowed, one refused");
}

/// Uploads are slowed to `[limits] request_body_per_sec`, not refused.
#[tokio::test]
async fn request_bodies_are_slowed_to_the_profile_rate() {
    let env = env(r#"
[[network.rule]]
host = "api.test.example"
action = "allow"

[limits]
request_body_per_sec = "64K"
"#)
    .await;
    let body = "x".repeat(256 * 1024);
    let start = Instant::now();
    let mut c = proxy_conn(&env).await;
    let r =
        send(&mut c, "POST", &format!("http://{HOST}:{}/up", env.up_http), &format!("{HOST}:{}", env.up_http), &body)
            .await;
    let took = start.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["body_len"], 256 * 1024, "the whole body arrived");
    // A frame that puts the bucket in debt passes, the next one waits: at least
    // (256 KiB - one second of bucket - one frame of at most 64 KiB) / 64 KiB/s = 2 s.
    // Unthrottled, this upload takes milliseconds.
    assert!(took >= Duration::from_millis(1900), "256 KiB at 64 KiB/s took only {took:?}");
}
