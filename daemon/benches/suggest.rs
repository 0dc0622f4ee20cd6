//! `gvmctl suggest` over 100,000 watched events (a plain binary, not criterion):
//! `cargo bench -p gvm-daemon --bench suggest`. The target is under 2 s.
//!
//! The events go into a real audit store first (not timed: `synchronous=NORMAL`); then
//! what gvmd does for `GET /v1/agents/P/suggest` is timed: one scan of the window from
//! SQLite, folding each event into [`Observations`], deciding each distinct request
//! against the compiled profile, generalising the paths, editing the TOML and diffing.
//! The traffic: 20 hosts, each with id-bearing paths (`/v1/customers/cus_N`, numbers,
//! UUID-like), a `/docs/<word>` tree with many siblings, an `http_done` per request and
//! a DNS query every 10 requests. Size: GVM_BENCH_SUGGEST_EVENTS; GVM_BENCH_SHOW=1 prints
//! the diff.

// `is_multiple_of` is newer than the workspace's rust-version (1.85).
#![allow(clippy::manual_is_multiple_of)]

use std::path::Path;
use std::time::{Instant, SystemTime};

use gvm_audit::{Audit, AuditConfig, Durability, NewEvent};
use gvm_daemon::suggest::{plan, render, Observations};
use serde_json::json;

const PROFILE: &str =
    "# bench\n[network]\ndefault = \"deny\"\n\n[[network.rule]]\nhost = \"allowed.example\"\naction = \"allow\"\n";

fn events(n: u64) -> Vec<NewEvent> {
    let mut out = Vec::with_capacity(n as usize);
    let mut i = 0u64;
    while (out.len() as u64) < n {
        let host = format!("h{}.example", i % 20);
        let path = match (i / 20) % 4 {
            0 => format!("/v1/customers/cus_{i}"),
            1 => format!("/items/{i}/parts"),
            2 => format!("/jobs/{:08x}-1234-4abc-8def-{:012x}", i, i * 7),
            _ => format!("/docs/page{}", (i / 80) % 40),
        };
        let method = ["GET", "POST", "GET", "DELETE"][((i / 20) % 4) as usize];
        let details =
            json!({"method": method, "scheme": "https", "host": host, "port": 443, "path": path, "via": "connect"});
        let mut done = details.clone();
        done["decision_seq"] = json!(i);
        done["status"] = json!(200);
        done["bytes_up"] = json!(512);
        done["bytes_down"] = json!(2048);
        let ev = |kind: &str, d: serde_json::Value| NewEvent {
            profile: Some("bench".into()),
            kind: kind.into(),
            decision: Some("watch".into()),
            rule: None,
            details: d,
        };
        out.push(ev("http", details));
        out.push(ev("http_done", done));
        if i % 10 == 0 {
            out.push(ev("dns", json!({"name": host, "qtype": 1, "rcode": "NOERROR"})));
        }
        i += 1;
    }
    out.truncate(n as usize);
    out
}

fn main() {
    let n: u64 = std::env::var("GVM_BENCH_SUGGEST_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = Audit::open_with_durability(dir.path(), AuditConfig::default(), Durability::Normal).expect("audit");
    let t = Instant::now();
    for ev in events(n) {
        audit.append_nowait(ev).expect("append");
    }
    audit
        .append_blocking(NewEvent { profile: Some("other".into()), kind: "end".into(), ..Default::default() })
        .expect("append");
    println!("setup: {n} events written in {:.2} s (not timed below)", t.elapsed().as_secs_f64());

    let file = Path::new("/etc/gvm/profiles/bench.toml");
    for round in 1..=3 {
        let t = Instant::now();
        let mut obs = Observations::new();
        let q = gvm_api::EventsQuery { profile: Some("bench".into()), ..Default::default() };
        let read = audit.scan(&q, |e| obs.add(&e)).expect("scan");
        let t_scan = t.elapsed();
        let p = gvm_policy::parse_profile(file, PROFILE).expect("profile");
        let now = SystemTime::now();
        let pl = plan(&p.compiled, &obs, now);
        let out = render(file, PROFILE, pl, "2026-12-07T08:00:00Z", now).expect("render");
        let total = t.elapsed();
        let covered: u64 = out.plan.rules.iter().map(|r| r.requests).sum();
        println!(
            "round {round}: suggest over {read} events: {:.3} s (scan + fold {:.3} s, plan + render {:.3} s); {} rules covering {covered} requests, {} flagged, diff {} lines",
            total.as_secs_f64(),
            t_scan.as_secs_f64(),
            (total - t_scan).as_secs_f64(),
            out.plan.rules.len(),
            out.plan.flagged.len(),
            out.diff.lines().count()
        );
    }
    if std::env::var_os("GVM_BENCH_SHOW").is_some() {
        let mut obs = Observations::new();
        let q = gvm_api::EventsQuery { profile: Some("bench".into()), ..Default::default() };
        audit.scan(&q, |e| obs.add(&e)).expect("scan");
        let p = gvm_policy::parse_profile(file, PROFILE).expect("profile");
        let out = render(file, PROFILE, plan(&p.compiled, &obs, SystemTime::now()), "now", SystemTime::now());
        print!("{}", out.expect("render").diff);
    }
    audit.close().expect("close");
}
