//! What an ephemeral run costs: 20 concurrent `POST /v1/runs` of `/bin/true` against one
//! profile, several rounds, through a real gvmd. Prints p50/p99 of the start time (gvmd's
//! `start_ms`: request to the command's exec, prepare and sandbox build included) and of
//! the total time per run (the client's wall clock: request to answer, teardown
//! included). Needs root:
//!
//!     cargo bench -p gvm-tests --bench ephemeral_runs
//!     GVM_TEST_BIN_DIR=$CARGO_TARGET_DIR/release cargo bench -p gvm-tests --bench ephemeral_runs
//!
//! (the second measures release builds of gvmd and gvmctl). `GVM_BENCH_ROUNDS` (default
//! 5) and `GVM_BENCH_CONCURRENCY` (default 20) change the shape.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::time::Instant;

use common::agent::Sandboxed;

fn post_run(socket: &std::path::Path, profile: &str) -> (u64, f64) {
    let body = serde_json::json!({ "profile": profile, "argv": ["/bin/true"], "timeout_secs": 60 }).to_string();
    let t = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "POST /v1/runs HTTP/1.1\r\nHost: gvmd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let total = t.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let json = &text[text.find('{').unwrap()..=text.rfind('}').unwrap()];
    let r: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(r["exit_code"], 0, "{r:#}");
    (r["start_ms"].as_u64().unwrap(), total)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn main() {
    common::assert_root();
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (rounds, concurrency) = (env("GVM_BENCH_ROUNDS", 5), env("GVM_BENCH_CONCURRENCY", 20));
    let mut sb = Sandboxed::new("eb");
    let profile = format!(
        "[agent]\nworkspaces = [{{ path = \"{}\", mode = \"overlay\" }}]\n\n[network]\ndefault = \"deny\"\n",
        sb.ws.display()
    );
    // gvmd logs where each run's start time went (prepare, dirs, audit, launch).
    sb.start("", &profile, &[("GVM_LOG", "info,gvm_daemon::supervisor::ephemeral=debug")]);
    let socket = sb.dirs.socket();
    // Warm-up: the first run creates the user, the netns and the gateway's listeners.
    let (first_start, first_total) = post_run(&socket, &sb.profile);
    let (mut starts, mut totals) = (Vec::new(), Vec::new());
    let wall = Instant::now();
    for _ in 0..rounds {
        let got: Vec<(u64, f64)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..concurrency).map(|_| s.spawn(|| post_run(&socket, &sb.profile))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (start, total) in got {
            starts.push(start as f64);
            totals.push(total);
        }
    }
    let wall = wall.elapsed().as_secs_f64();
    println!("ephemeral runs of /bin/true, {rounds} rounds of {concurrency} concurrent (first, alone: start {first_start} ms, total {first_total:.1} ms)");
    println!("| per run | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| start (request → exec) | {:.1} ms | {:.1} ms |",
        percentile(&mut starts, 0.5),
        percentile(&mut starts, 0.99)
    );
    println!(
        "| total (request → answer) | {:.1} ms | {:.1} ms |",
        percentile(&mut totals, 0.5),
        percentile(&mut totals, 0.99)
    );
    println!("throughput: {:.1} runs/s", (rounds * concurrency) as f64 / wall);
    // Where the start time went, from gvmd's log (medians of the concurrent rounds).
    let log = sb.gvmd().log_text();
    let parts = ["lease", "prepare", "dirs", "audit", "launch"];
    let mut by_part: Vec<Vec<f64>> = vec![Vec::new(); parts.len()];
    for line in log.lines().filter(|l| l.contains(" started in ")).skip(1) {
        for (i, part) in parts.iter().enumerate() {
            let v: Option<f64> =
                line.split(&format!("{part} ")).nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok());
            by_part[i].extend(v);
        }
    }
    let shown: Vec<String> = parts
        .iter()
        .zip(by_part.iter_mut())
        .filter(|(_, v)| !v.is_empty())
        .map(|(p, v)| format!("{p} {:.1} ms", percentile(v, 0.5)))
        .collect();
    println!("start, median of each part: {}", shown.join(", "));
}
