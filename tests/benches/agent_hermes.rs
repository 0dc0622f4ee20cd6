//! What gvm costs Hermes Agent: start-to-answer time of `hermes -z` (one model turn),
//! its peak memory, and the added latency of each model request, each measured directly
//! on the host and under `gvmctl run` (sandbox + gateway with TLS interception and key
//! injection), against the fake model server on this machine's loopback. Prints a
//! Markdown table (the README's). Needs root and release builds of gvmd and gvmctl:
//!
//!     cargo build --release -p gvm-daemon -p gvmctl
//!     cargo bench -p gvm-tests --bench agent_hermes
//!
//! or, without building the test crate's dependencies in release (the fake model then
//! runs unoptimised, the same for both columns):
//!
//!     GVM_TEST_BIN_DIR=$CARGO_TARGET_DIR/release cargo test -p gvm-tests --bench agent_hermes
//!
//! Numbers are medians; the model answers at once, so the times are the agent's and
//! gvm's own.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::agent::{output_within, Sandboxed, TestCa};
use common::bench::{median, timed};
use common::fake_llm::{FakeLlm, MODEL};

const STARTS: usize = 5;
const REQUESTS: usize = 200;

/// Streams `REQUESTS` chat completions with the OpenAI SDK Hermes uses, over one
/// client (kept-alive connections, as Hermes does); prints each request's seconds.
const CLIENT: &str = r#"
import sys, time, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="no-key-required")
for i in range(int(sys.argv[2])):
    t = time.perf_counter()
    s = c.chat.completions.create(model="gvm-fake-model", stream=True,
                                  messages=[{"role": "user", "content": "hi"}])
    text = "".join((ch.choices[0].delta.content or "") for ch in s if ch.choices)
    assert text, "no answer"
    print("%.6f" % (time.perf_counter() - t))
"#;

fn config(base: &str) -> String {
    format!("model:\n  provider: custom\n  base_url: {base}\n  default: {MODEL}\n")
}

fn main() {
    common::assert_root();
    let hermes = common::hermes::install();
    let venv_python = hermes.parent().unwrap().join("python3");
    let ca = TestCa::new(&["llm.test.example", "127.0.0.1"]);
    let llm = FakeLlm::start(Vec::new(), Some(ca.server.clone()));
    let mut sb = Sandboxed::new("hb");
    let ca_file = sb.dirs.root.path().join("llm-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let key = sb.dirs.root.path().join("llm.key");
    std::fs::write(&key, "sk-bench").unwrap();
    let port = llm.port();
    let gvmd_toml = format!(
        "[gateway]\nextra_roots = [\"{}\"]\n\n[gateway.hosts]\n\"llm.test.example\" = [\"127.0.0.1\"]\n",
        ca_file.display()
    );
    let profile = format!(
        "[agent]\nworkspaces = [{{ path = \"{ws}\", mode = \"overlay\" }}]\n\n[network]\ndefault = \"deny\"\n\n\
         [[network.rule]]\nhost = \"llm.test.example\"\nport = {port}\npath = \"/v1/**\"\naction = \"allow\"\n\
         inject = {{ header = \"Authorization\", value = \"Bearer {{secret:llm}}\" }}\n\n\
         [secrets]\nllm = {{ file = \"{key}\" }}\n",
        ws = sb.ws.display(),
        key = key.display()
    );
    sb.start(&gvmd_toml, &profile, &[]);
    let gated = format!("https://llm.test.example:{port}/v1");
    let direct = format!("https://127.0.0.1:{port}/v1");
    let setup = sb.sh(&format!("mkdir -p ~/.hermes && printf '%s' '{}' > ~/.hermes/config.yaml", config(&gated)));
    assert_eq!(setup.code, Some(0), "{setup:#?}");
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("config.yaml"), config(&direct)).unwrap();
    let host_cmd = |argv: &[&str]| {
        let mut c = Command::new(argv[0]);
        // The model directly; every other host (Hermes asks PyPI and OpenRouter at
        // start) fails at once, as gvm's refusals do, through a proxy that is not there
        // (port 9) — not after DNS time-outs of a machine without a resolver.
        c.args(&argv[1..])
            .env("HERMES_HOME", home.path())
            .env("SSL_CERT_FILE", &ca_file)
            .env("NO_PROXY", "127.0.0.1")
            .env("no_proxy", "127.0.0.1")
            .current_dir(&sb.ws);
        for v in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
            c.env(v, "http://127.0.0.1:9");
        }
        c
    };
    let limit = Duration::from_secs(180);
    let h = hermes.to_str().unwrap();

    // 1. Start to answer, one model turn.
    let mut host_start = Vec::new();
    let mut gvm_start = Vec::new();
    let mut sandbox_only = Vec::new();
    for _ in 0..STARTS {
        host_start.push(timed(|| {
            let r = output_within(host_cmd(&[h, "-z", "say hi"]), limit);
            assert!(r.out.contains("All done."), "{r:#?}");
        }));
        gvm_start.push(timed(|| {
            let r = sb.run(&[h, "-z", "say hi"]);
            assert!(r.out.contains("All done."), "{r:#?}");
        }));
        sandbox_only.push(timed(|| {
            let r = sb.run(&["/bin/true"]);
            assert_eq!(r.code, Some(0), "{r:#?}");
        }));
    }

    // 2. Peak memory (maximum resident set of the hermes process).
    let rss = |out: &str| -> f64 {
        let kb: f64 =
            out.lines().rev().find_map(|l| l.strip_prefix("maxrss_kb=")).expect("maxrss").trim().parse().unwrap();
        kb / 1024.0
    };
    let host_rss =
        rss(&output_within(host_cmd(&["/usr/bin/time", "-f", "maxrss_kb=%M", h, "-z", "say hi"]), limit).err);
    let gvm_rss = rss(&sb.run(&["/usr/bin/time", "-f", "maxrss_kb=%M", h, "-z", "say hi"]).err);

    // 3. Per model request (SSE streamed), the SDK Hermes uses, kept-alive client.
    let lat = |out: &str| -> Vec<f64> { out.lines().filter_map(|l| l.trim().parse().ok()).collect() };
    let n = REQUESTS.to_string();
    let py = venv_python.to_str().unwrap();
    let host_lat = lat(&output_within(host_cmd(&[py, "-c", CLIENT, &direct, &n]), limit).out);
    let gvm_lat = lat(&sb.run(&[py, "-c", CLIENT, &gated, &n]).out);
    assert_eq!((host_lat.len(), gvm_lat.len()), (REQUESTS, REQUESTS));
    let (hf, gf) = (host_lat[0], gvm_lat[0]);
    let (hm, gm) = (median(host_lat[1..].to_vec()), median(gvm_lat[1..].to_vec()));

    let (hs, gs, so) = (median(host_start), median(gvm_start), median(sandbox_only));
    println!(
        "Hermes Agent {} (`hermes -z`, one model turn), fake model on loopback, medians:",
        common::hermes::VERSION
    );
    println!();
    println!("| measure | on the host | under gvm | gvm adds |");
    println!("|---|---|---|---|");
    println!("| start to answer, `hermes -z` ({STARTS} runs) | {hs:.2} s | {gs:.2} s | {:.2} s |", gs - hs);
    println!("| `gvmctl run -- /bin/true` (sandbox set-up and teardown) | – | {so:.2} s | {so:.2} s |");
    println!(
        "| peak memory of the hermes process | {host_rss:.0} MiB | {gvm_rss:.0} MiB | {:.0} MiB |",
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
