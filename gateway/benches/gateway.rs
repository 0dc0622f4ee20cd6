//! Gateway benchmarks (harness = false), everything on 127.0.0.1:
//!
//! 1. `append`: `Audit::append` alone — one async caller, nobody else writing —
//!    p50/p99 with `synchronous=NORMAL` and `FULL` (the floor under every request).
//! 2. `https`: added latency of a keep-alive intercepted HTTPS request.
//! 3. `http`: added latency of a keep-alive plain HTTP request through the explicit
//!    proxy (absolute-form), and its throughput ratio with 16 connections.
//! 4. `throughput`: intercepted HTTPS throughput ratio with 16 connections.
//! 5. `newconn`: new intercepted connection cost with a warm leaf cache.
//! 6. `refused`: a CONNECT the rules refuse, answered inside TLS (CONNECT, handshake
//!    with gvm's leaf, one request, its 403) beside the same refusal at CONNECT level
//!    (port 80): latency and CPU per refusal, repeats folded as an agent's retries are.
//!
//! `GVM_BENCH_DURABILITY=normal` opens the gateway's audit store with
//! `synchronous=NORMAL` (parts 2-5); `GVM_BENCH_ONLY=append,https,...` runs some parts;
//! `GVM_BENCH_VERBOSE=1` adds p99.9/max to part 1. Throughput lines also print CPU time
//! per request (all parties), which is steadier than req/s on a shared machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject;

const POLICY: &str = r#"
[network]
default = "deny"
[[network.rule]]
host = "api.test.example"
methods = ["GET"]
path = "/v1/**"
action = "allow"

# The bench sends thousands of requests a second: far past the default
# `decisions = "6000/min"`, which would answer 429 instead of measuring.
[limits]
decisions = "1000000/sec"
"#;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3
}

async fn direct(env: &Env) -> Sender {
    let pem = std::fs::read(env.dir.path().join("test-ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", env.up_https)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    handshake(tls).await
}

async fn direct_http(env: &Env) -> Sender {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", env.up_http)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    handshake(tcp).await
}

/// `n` sequential requests for `uri` (origin-form, or absolute-form through the proxy).
async fn lat(c: &mut Sender, uri: &str, host: &str, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = send(c, "GET", uri, host, "").await;
        assert_eq!(r.status, 200);
        v.push(t.elapsed());
    }
    v
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    DirectHttps,
    GatewayHttps,
    DirectHttp,
    ProxyHttp,
}

/// CPU time (user + system) this process used so far, in seconds (/proc/self/stat).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Requests per second, and CPU microseconds per request (client, server and gateway
/// together: on a loaded machine the CPU cost is the steadier measure).
async fn throughput(env: &Env, path: Path, conns: usize, dur: Duration) -> (f64, f64) {
    let target = format!("{HOST}:{}", env.up_https);
    let http_host = format!("{HOST}:{}", env.up_http);
    let mut tasks = Vec::new();
    let mut conns_ready = Vec::new();
    for _ in 0..conns {
        let (mut c, uri, host) = match path {
            Path::DirectHttps => (direct(env).await, "/v1/models".to_string(), target.clone()),
            Path::GatewayHttps => {
                (connect_tls(env, &target, HOST).await.unwrap(), "/v1/models".to_string(), target.clone())
            }
            Path::DirectHttp => (direct_http(env).await, "/v1/models".to_string(), http_host.clone()),
            Path::ProxyHttp => (proxy_conn(env).await, format!("http://{http_host}/v1/models"), http_host.clone()),
        };
        // Warm: the gateway's upstream pool, the TLS sessions.
        assert_eq!(send(&mut c, "GET", &uri, &host, "").await.status, 200);
        conns_ready.push((c, uri, host));
    }
    let cpu0 = cpu_seconds();
    let deadline = Instant::now() + dur;
    for (mut c, uri, host) in conns_ready {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r = send(&mut c, "GET", &uri, &host, "").await;
                assert_eq!(r.status, 200);
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let cpu = cpu_seconds() - cpu0;
    (total as f64 / dur.as_secs_f64(), cpu * 1e6 / total.max(1) as f64)
}

/// One caller appending alone: what one durable decision costs by itself.
async fn append_alone(durability: gvm_audit::Durability, n: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let audit =
        gvm_audit::Audit::open_with_durability(dir.path(), gvm_audit::AuditConfig::default(), durability).unwrap();
    let ev = gvm_audit::NewEvent {
        profile: Some("agent".into()),
        kind: "http".into(),
        decision: Some("allow".into()),
        rule: Some("network.rule[0]".into()),
        details: serde_json::json!({
            "method": "GET", "scheme": "https", "host": HOST, "port": 443, "path": "/v1/models",
            "via": "intercept", "addr": "127.0.0.1:443",
        }),
    };
    let mut v = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        audit.append(ev.clone()).await.unwrap();
        if i >= 200 {
            v.push(t.elapsed());
        }
    }
    audit.close().unwrap();
    let max = pct(&mut v, 1.0);
    let p999 = pct(&mut v, 0.999);
    if std::env::var_os("GVM_BENCH_VERBOSE").is_some() {
        println!("    (p99.9 {p999:.3} ms, max {max:.3} ms)");
    }
    (pct(&mut v, 0.5), pct(&mut v, 0.99))
}

/// `n` refused CONNECTs in a row: CPU per refusal (us, every party) and latencies.
async fn refusals(env: &Env, in_tls: bool, n: usize) -> (f64, Vec<Duration>) {
    let target = if in_tls { "denied.test.example:443" } else { "denied.test.example:80" };
    let mut times = Vec::new();
    let c0 = cpu_seconds();
    for _ in 0..n {
        let t = Instant::now();
        if in_tls {
            let mut c = connect_tls(env, target, "denied.test.example").await.unwrap();
            assert_eq!(send(&mut c, "POST", "/v1/chat/completions", target, "{}").await.status, 403);
        } else {
            assert_eq!(raw_connect(env, target).await.1, 403);
        }
        times.push(t.elapsed());
    }
    ((cpu_seconds() - c0) / n as f64 * 1e6, times)
}

fn main() {
    let only = std::env::var("GVM_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        if run("append") {
            println!("Audit::append alone, one async caller, 2000 appends:");
            for (name, d) in [("NORMAL", gvm_audit::Durability::Normal), ("FULL", gvm_audit::Durability::Full)] {
                let (p50, p99) = append_alone(d, 2000).await;
                println!("  synchronous={name:<6} p50 {p50:.3} ms  p99 {p99:.3} ms");
            }
        }

        let env = env(POLICY).await;
        let target = format!("{HOST}:{}", env.up_https);
        let n = 3000;
        if run("https") {
            let mut d = direct(&env).await;
            let _ = lat(&mut d, "/v1/models", &target, 200).await;
            let mut dl = lat(&mut d, "/v1/models", &target, n).await;
            let mut g = connect_tls(&env, &target, HOST).await.unwrap();
            let _ = lat(&mut g, "/v1/models", &target, 200).await;
            let mut gl = lat(&mut g, "/v1/models", &target, n).await;
            let (d50, d99) = (pct(&mut dl, 0.5), pct(&mut dl, 0.99));
            let (g50, g99) = (pct(&mut gl, 0.5), pct(&mut gl, 0.99));
            println!("keep-alive intercepted HTTPS request, {n} sequential (audited, durable before forwarding):");
            println!("  direct   p50 {d50:.3} ms  p99 {d99:.3} ms");
            println!("  gateway  p50 {g50:.3} ms  p99 {g99:.3} ms");
            println!("  added    p50 {:.3} ms  p99 {:.3} ms   (target p50 <= 0.15, p99 <= 1)", g50 - d50, g99 - d99);
        }

        if run("http") {
            let http_host = format!("{HOST}:{}", env.up_http);
            let abs = format!("http://{http_host}/v1/models");
            let mut d = direct_http(&env).await;
            let _ = lat(&mut d, "/v1/models", &http_host, 200).await;
            let mut dl = lat(&mut d, "/v1/models", &http_host, n).await;
            let mut g = proxy_conn(&env).await;
            let _ = lat(&mut g, &abs, &http_host, 200).await;
            let mut gl = lat(&mut g, &abs, &http_host, n).await;
            let (d50, d99) = (pct(&mut dl, 0.5), pct(&mut dl, 0.99));
            let (g50, g99) = (pct(&mut gl, 0.5), pct(&mut gl, 0.99));
            println!("keep-alive plain HTTP request through the explicit proxy (absolute-form), {n} sequential:");
            println!("  direct   p50 {d50:.3} ms  p99 {d99:.3} ms");
            println!("  gateway  p50 {g50:.3} ms  p99 {g99:.3} ms");
            println!("  added    p50 {:.3} ms  p99 {:.3} ms", g50 - d50, g99 - d99);
            let dur = Duration::from_secs(3);
            let (direct_rps, dcpu) = throughput(&env, Path::DirectHttp, 16, dur).await;
            let (gw_rps, gcpu) = throughput(&env, Path::ProxyHttp, 16, dur).await;
            println!(
                "  16 connections: direct {direct_rps:.0} req/s, gateway {gw_rps:.0} req/s, ratio {:.2}",
                gw_rps / direct_rps
            );
            println!("  CPU per request (all parties): direct {dcpu:.0} us, gateway {gcpu:.0} us");
        }

        if run("throughput") {
            let dur = Duration::from_secs(3);
            let (direct_rps, dcpu) = throughput(&env, Path::DirectHttps, 16, dur).await;
            let (gw_rps, gcpu) = throughput(&env, Path::GatewayHttps, 16, dur).await;
            println!("throughput, intercepted HTTPS, 16 keep-alive connections:");
            println!(
                "  direct {direct_rps:.0} req/s, gateway {gw_rps:.0} req/s, ratio {:.2} (target >= 0.5)",
                gw_rps / direct_rps
            );
            println!("  CPU per request (all parties): direct {dcpu:.0} us, gateway {gcpu:.0} us");
        }

        // For profiling: one side only, longer.
        if only == "profile-proxy-http" || only == "profile-https" {
            let p = if only == "profile-https" { Path::GatewayHttps } else { Path::ProxyHttp };
            let (rps, cpu) = throughput(&env, p, 16, Duration::from_secs(6)).await;
            println!("{only}: {rps:.0} req/s, {cpu:.0} us CPU per request");
        }

        if run("newconn") {
            let mut nc = Vec::new();
            for _ in 0..200 {
                let t = Instant::now();
                let mut c = connect_tls(&env, &target, HOST).await.unwrap();
                assert_eq!(send(&mut c, "GET", "/v1/models", &target, "").await.status, 200);
                nc.push(t.elapsed());
            }
            let mut dc = Vec::new();
            for _ in 0..200 {
                let t = Instant::now();
                let mut c = direct(&env).await;
                assert_eq!(send(&mut c, "GET", "/v1/models", &target, "").await.status, 200);
                dc.push(t.elapsed());
            }
            println!("new connection + first request (warm leaf cache), 200 runs:");
            println!("  direct  p50 {:.3} ms  p99 {:.3} ms", pct(&mut dc, 0.5), pct(&mut dc, 0.99));
            println!(
                "  gateway p50 {:.3} ms  p99 {:.3} ms (CONNECT + intercept + upstream TLS) (target p50 <= 3)",
                pct(&mut nc, 0.5),
                pct(&mut nc, 0.99)
            );
        }

        if run("refused") {
            let n = 300;
            let (plain_cpu, mut plain) = refusals(&env, false, n).await;
            let (tls_cpu, mut tls) = refusals(&env, true, n).await;
            println!("a refused CONNECT, {n} sequential (repeats folded in the audit log):");
            println!(
                "  at CONNECT level (403)    p50 {:.3} ms  p99 {:.3} ms  CPU {plain_cpu:.0} us",
                pct(&mut plain, 0.5),
                pct(&mut plain, 0.99)
            );
            println!(
                "  inside TLS (200, TLS, 403) p50 {:.3} ms  p99 {:.3} ms  CPU {tls_cpu:.0} us (all parties: the client's TLS too)",
                pct(&mut tls, 0.5),
                pct(&mut tls, 0.99)
            );
        }
    });
}
