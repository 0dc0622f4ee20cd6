//! What a call of another agent costs over a call of an ordinary host (harness = false,
//! everything on 127.0.0.1): keep-alive plain HTTP through the explicit proxy, 2000
//! sequential requests each, to `api.test.example` and to `agent.researcher` (the
//! callee's `[ingress]` decided and its `ingress` event made durable first; the dialer
//! here connects to the local upstream, gvmd's opens a socket inside the callee's netns —
//! see `cargo bench -p gvm-sandbox --bench dial` for that part, once per new connection).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const CALLER: &str = r#"
[[network.rule]]
host = "api.test.example"
action = "allow"

[[network.rule]]
host = "agent.researcher"
action = "allow"

[limits]
decisions = "1000000/sec"
"#;

struct LocalDialer;

impl gvm_gateway::AgentDialer for LocalDialer {
    fn dial(&self, _profile: &str, port: u16) -> Result<std::net::TcpStream, String> {
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3
}

async fn lat(c: &mut Sender, uri: &str, host: &str, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = send(c, "GET", uri, host, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        v.push(t.elapsed());
    }
    v
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let env = env_named("planner", CALLER).await;
        env.gw.set_agent_dialer(Arc::new(LocalDialer));
        let callee = format!(
            "[agent]\nserve = [{}]\n\n[[ingress.allow]]\nfrom = \"planner\"\n\n[limits]\ndecisions = \"1000000/sec\"\n",
            env.up_http
        );
        let file = env.dir.path().join("researcher.toml");
        env.gw.set_profile(&gvm_policy::parse_profile(&file, &callee).unwrap());
        let n = 2000;
        println!("keep-alive plain HTTP through the explicit proxy, {n} sequential requests:");
        for host in [HOST, "agent.researcher"] {
            let authority = format!("{host}:{}", env.up_http);
            let url = format!("http://{authority}/v1/models");
            let mut c = proxy_conn(&env).await;
            let _ = lat(&mut c, &url, &authority, 200).await;
            let mut v = lat(&mut c, &url, &authority, n).await;
            let (p50, p99) = (pct(&mut v, 0.5), pct(&mut v, 0.99));
            println!("  {host:<18} p50 {p50:.3} ms  p99 {p99:.3} ms");
        }
    });
}
