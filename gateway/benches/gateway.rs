//! Gateway benchmarks (harness = false): added latency of a keep-alive intercepted
//! HTTPS request, throughput ratio with 16 connections, new intercepted connection
//! cost with a warm leaf cache. Everything on 127.0.0.1.

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

async fn lat(c: &mut Sender, host: &str, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = send(c, "GET", "/v1/models", host, "").await;
        assert_eq!(r.status, 200);
        v.push(t.elapsed());
    }
    v
}

async fn throughput(env: &Env, via_gw: bool, conns: usize, dur: Duration) -> f64 {
    let target = format!("{HOST}:{}", env.up_https);
    let mut tasks = Vec::new();
    let deadline = Instant::now() + dur;
    for _ in 0..conns {
        let mut c = if via_gw { connect_tls(env, &target, HOST).await.unwrap() } else { direct(env).await };
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r = send(&mut c, "GET", "/v1/models", &target, "").await;
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
    total as f64 / dur.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let env = env(POLICY).await;
        let target = format!("{HOST}:{}", env.up_https);
        let n = 3000;
        let mut d = direct(&env).await;
        let _ = lat(&mut d, &target, 200).await;
        let mut dl = lat(&mut d, &target, n).await;
        let mut g = connect_tls(&env, &target, HOST).await.unwrap();
        let _ = lat(&mut g, &target, 200).await;
        let mut gl = lat(&mut g, &target, n).await;
        let (d50, d99) = (pct(&mut dl, 0.5), pct(&mut dl, 0.99));
        let (g50, g99) = (pct(&mut gl, 0.5), pct(&mut gl, 0.99));
        println!("keep-alive intercepted HTTPS request, {n} sequential (audited, durable before forwarding):");
        println!("  direct   p50 {d50:.3} ms  p99 {d99:.3} ms");
        println!("  gateway  p50 {g50:.3} ms  p99 {g99:.3} ms");
        println!("  added    p50 {:.3} ms  p99 {:.3} ms   (target p50 <= 0.15, p99 <= 1)", g50 - d50, g99 - d99);

        let dur = Duration::from_secs(3);
        let direct_rps = throughput(&env, false, 16, dur).await;
        let gw_rps = throughput(&env, true, 16, dur).await;
        println!("throughput, 16 keep-alive connections:");
        println!(
            "  direct {direct_rps:.0} req/s, gateway {gw_rps:.0} req/s, ratio {:.2} (target >= 0.5)",
            gw_rps / direct_rps
        );

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
    });
}
