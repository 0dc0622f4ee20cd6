//! What gvm costs OpenClaw: start-to-answer time of `openclaw agent exec` (one model
//! turn), its peak memory, and the added latency of each model request from Node's fetch,
//! each measured directly on the host and under `gvmctl run` (sandbox + gateway with TLS
//! interception and key injection), against the fake model server on this machine's
//! loopback. Prints a Markdown table (the README's). Needs root, the npm registry the
//! first time (OpenClaw and Node 24 are cached in /var/cache/gvm-test-agents), and
//! release builds of gvmd and gvmctl:
//!
//!     cargo build --release -p gvm-daemon -p gvmctl
//!     cargo bench -p gvm-tests --bench agent_openclaw
//!
//! Numbers are medians; the model answers at once, so the times are OpenClaw's and gvm's.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::agent::{output_within, Sandboxed, TestCa};
use common::bench::{median, timed};
use common::fake_llm::{FakeLlm, MODEL};

const STARTS: usize = 3;
const REQUESTS: usize = 50;

/// Streams `REQUESTS` chat completions with Node's fetch over one kept-alive dispatcher,
/// as OpenClaw's provider transport does; prints each request's seconds.
const CLIENT: &str = r#"
const [url, n] = [process.argv[2], +process.argv[3]];
const body = JSON.stringify({model: "gvm-fake-model", stream: true, messages: [{role: "user", content: "hi"}]});
for (let i = 0; i < n; i++) {
  const t = performance.now();
  const r = await fetch(url, {method: "POST", body, headers: {"content-type": "application/json", authorization: "Bearer not-the-key"}});
  const text = await r.text();
  if (!text.includes("data: [DONE]")) throw new Error("no answer: " + text.slice(0, 300));
  console.log(((performance.now() - t) / 1000).toFixed(6));
}
"#;

/// OpenClaw's config: the fake model as an OpenAI-compatible provider at `base`.
fn config(base: &str) -> String {
    serde_json::json!({
        "agents": {"defaults": {"model": {"primary": format!("bench/{MODEL}")}}},
        "models": {"mode": "merge", "providers": {"bench": {
            "baseUrl": base, "apiKey": "not-the-key", "api": "openai-completions",
            "models": [{"id": MODEL, "name": "bench", "reasoning": false, "input": ["text"],
                        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                        "contextWindow": 128000, "maxTokens": 4096}],
        }}},
    })
    .to_string()
}

fn main() {
    common::assert_root();
    let install = common::openclaw::install();
    let bin = install.join("node_modules/.bin");
    let (node, openclaw) = (bin.join("node").display().to_string(), bin.join("openclaw").display().to_string());
    let ca = TestCa::new(&["llm.test.example", "127.0.0.1"]);
    let llm = FakeLlm::start(Vec::new(), Some(ca.server.clone()));
    // Outside /tmp: the agent reads its config and the client from here.
    let mut sb = Sandboxed::outside_tmp("ob");
    let root = sb.dirs.root.path().to_path_buf();
    let ca_file = root.join("llm-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let key = root.join("llm.key");
    std::fs::write(&key, "sk-bench-injected-by-gvm").unwrap();
    let client = root.join("client.mjs");
    std::fs::write(&client, CLIENT).unwrap();
    let port = llm.port();
    let gvmd_toml = format!(
        "[gateway]\nextra_roots = [\"{}\"]\n\n[gateway.hosts]\n\"llm.test.example\" = [\"127.0.0.1\"]\n",
        ca_file.display()
    );
    let profile = format!(
        "[agent]\nworkspaces = [{{ path = \"{ws}\", mode = \"overlay\" }}]\nenv = {{ OPENCLAW_CHILD_OOM_SCORE_ADJ = \"0\" }}\n\n\
         [network]\ndefault = \"deny\"\n\n\
         [[network.rule]]\nhost = \"llm.test.example\"\nport = {port}\npath = \"/v1/**\"\naction = \"allow\"\n\
         inject = {{ header = \"Authorization\", value = \"Bearer {{secret:llm}}\" }}\n\n\
         [secrets]\nllm = {{ file = \"{key}\" }}\n",
        ws = sb.ws.display(),
        key = key.display()
    );
    sb.start(&gvmd_toml, &profile, &[]);
    let gated = format!("https://llm.test.example:{port}/v1");
    let direct = format!("https://127.0.0.1:{port}/v1");
    let gated_cfg = root.join("gated.json");
    std::fs::write(&gated_cfg, config(&gated)).unwrap();
    let direct_cfg = root.join("direct.json");
    std::fs::write(&direct_cfg, config(&direct)).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let home = tempfile::tempdir().unwrap();
    let host_cmd = |argv: &[&str]| {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..])
            .env("HOME", home.path())
            .env("NODE_EXTRA_CA_CERTS", &ca_file)
            .env("OPENCLAW_CHILD_OOM_SCORE_ADJ", "0")
            .env("NO_PROXY", "*")
            .current_dir(&sb.ws);
        for v in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
            c.env_remove(v);
        }
        c
    };
    let limit = Duration::from_secs(300);
    let ws = sb.ws.display().to_string();
    let task = |cfg: &std::path::Path| -> Vec<String> {
        [&node, &openclaw, "agent", "exec", "--config", cfg.to_str().unwrap(), "--cwd", &ws, "--json", "say hi"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let (host_task, gvm_task) = (task(&direct_cfg), task(&gated_cfg));
    let host_argv: Vec<&str> = host_task.iter().map(String::as_str).collect();
    let gvm_argv: Vec<&str> = gvm_task.iter().map(String::as_str).collect();
    let answered = |out: &str| out.contains("\"final\": \"All done.\"");

    // 1. Start to answer, one model turn (after one run each that creates ~/.openclaw).
    let r = output_within(host_cmd(&host_argv), limit);
    assert!(answered(&r.out), "{r:#?}");
    let r = sb.run(&gvm_argv);
    assert!(answered(&r.out), "{r:#?}");
    let mut host_start = Vec::new();
    let mut gvm_start = Vec::new();
    let mut sandbox_only = Vec::new();
    for _ in 0..STARTS {
        host_start.push(timed(|| {
            let r = output_within(host_cmd(&host_argv), limit);
            assert!(answered(&r.out), "{r:#?}");
        }));
        gvm_start.push(timed(|| {
            let r = sb.run(&gvm_argv);
            assert!(answered(&r.out), "{r:#?}");
        }));
        sandbox_only.push(timed(|| {
            let r = sb.run(&["/bin/true"]);
            assert_eq!(r.code, Some(0), "{r:#?}");
        }));
    }

    // 2. Peak memory (maximum resident set of OpenClaw's largest process).
    let rss = |out: &str| -> f64 {
        let kb: f64 =
            out.lines().rev().find_map(|l| l.strip_prefix("maxrss_kb=")).expect("maxrss").trim().parse().unwrap();
        kb / 1024.0
    };
    let timed_argv = |argv: &[&str]| -> Vec<String> {
        ["/usr/bin/time", "-f", "maxrss_kb=%M"].iter().chain(argv.iter()).map(|s| s.to_string()).collect()
    };
    let host_time = timed_argv(&host_argv);
    let gvm_time = timed_argv(&gvm_argv);
    let host_rss = rss(&output_within(host_cmd(&host_time.iter().map(String::as_str).collect::<Vec<_>>()), limit).err);
    let gvm_rss = rss(&sb.run(&gvm_time.iter().map(String::as_str).collect::<Vec<_>>()).err);

    // 3. Per model request (SSE streamed), Node's fetch, kept-alive.
    let lat = |out: &str| -> Vec<f64> { out.lines().filter_map(|l| l.trim().parse().ok()).collect() };
    let n = REQUESTS.to_string();
    let c = client.to_str().unwrap();
    let host_ran = output_within(host_cmd(&[&node, c, &format!("{direct}/chat/completions"), &n]), limit);
    let gvm_ran = sb.run(&[&node, c, &format!("{gated}/chat/completions"), &n]);
    let (host_lat, gvm_lat) = (lat(&host_ran.out), lat(&gvm_ran.out));
    assert_eq!((host_lat.len(), gvm_lat.len()), (REQUESTS, REQUESTS), "{host_ran:#?}\n{gvm_ran:#?}");
    let (hf, gf) = (host_lat[0], gvm_lat[0]);
    let (hm, gm) = (median(host_lat[1..].to_vec()), median(gvm_lat[1..].to_vec()));

    let (hs, gs, so) = (median(host_start), median(gvm_start), median(sandbox_only));
    println!(
        "OpenClaw {} on Node {} (`openclaw agent exec`, one model turn), fake model on loopback, medians:",
        common::openclaw::OPENCLAW_VERSION,
        common::openclaw::NODE_VERSION
    );
    println!();
    println!("| measure | on the host | under gvm | gvm adds |");
    println!("|---|---|---|---|");
    println!("| start to answer, `openclaw agent exec` ({STARTS} runs) | {hs:.2} s | {gs:.2} s | {:.2} s |", gs - hs);
    println!("| `gvmctl run -- /bin/true` (sandbox set-up and teardown) | – | {so:.2} s | {so:.2} s |");
    println!(
        "| peak memory of OpenClaw's largest process | {host_rss:.0} MiB | {gvm_rss:.0} MiB | {:.0} MiB |",
        gvm_rss - host_rss
    );
    println!(
        "| first model request (new TLS connection) | {:.1} ms | {:.1} ms | {:.1} ms |",
        hf * 1e3,
        gf * 1e3,
        (gf - hf) * 1e3
    );
    println!(
        "| each further model request, streamed ({} requests) | {:.1} ms | {:.1} ms | {:.1} ms |",
        REQUESTS - 1,
        hm * 1e3,
        gm * 1e3,
        (gm - hm) * 1e3
    );
}
