//! `cargo bench -p gvm-policy`: ns per decision over a 1,000-rule profile.
//! Target (docs/design.md): ≤ 1 µs per decision. Plain `Instant` timing, no harness.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Instant, SystemTime};

use gvm_policy::{parse_profile, Host, Request, Scheme};

fn profile_text() -> String {
    let mut t = String::from("[network]\ndefault = \"deny\"\n");
    let mut n = 0;
    let mut rule = |t: &mut String, body: String| {
        writeln!(t, "\n[[network.rule]]\n{body}").unwrap();
        n += 1;
    };
    for i in 0..400 {
        // Exact hosts, half with methods + paths.
        let body = if i % 2 == 0 {
            format!("host = \"api{i}.service{}.com\"\naction = \"allow\"", i % 37)
        } else {
            format!("host = \"api{i}.service{}.com\"\nmethods = [\"POST\"]\npath = \"/v1/items/*/detail\"\naction = \"allow\"", i % 37)
        };
        rule(&mut t, body);
    }
    for i in 0..300 {
        let body =
            format!("host = \"*.zone{i}.example.net\"\naction = \"{}\"", if i % 10 == 0 { "deny" } else { "allow" });
        rule(&mut t, body);
    }
    for i in 0..200 {
        let body = format!("host = \"10.{}.{}.0/24\"\naction = \"allow\"", i / 250, i % 250);
        rule(&mut t, body);
    }
    for i in 0..100 {
        // Many path rules on one busy host.
        let action = if i % 25 == 0 { "deny" } else { "allow" };
        let body = format!("host = \"api.busy.com\"\npath = \"/v{i}/**\"\naction = \"{action}\"");
        rule(&mut t, body);
    }
    assert_eq!(n, 1000);
    t
}

fn main() {
    let text = profile_text();
    let p = parse_profile(Path::new("bench.toml"), &text).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(p.network.rules.len(), 1000);
    let policy = &*p.compiled;
    let now = SystemTime::now();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("exact host hit", "api200.service15.com", "GET", "/"),
        ("exact host + path hit", "api201.service16.com", "POST", "/v1/items/42/detail"),
        ("suffix hit (deep name)", "a.b.c.zone151.example.net", "GET", "/x"),
        ("suffix deny", "x.zone10.example.net", "GET", "/"),
        ("CIDR hit", "10.0.199.7", "GET", "/"),
        ("busy host, 100 path rules, last", "api.busy.com", "GET", "/v99/a/b"),
        ("busy host, ambiguous path", "api.busy.com", "GET", "/v3/../v50/x"),
        ("miss: unknown name", "nothing.here.org", "GET", "/"),
        ("miss: unknown IP", "192.168.1.1", "GET", "/"),
    ];
    let iters: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    println!("gvm-policy decide, 1,000 rules, {iters} iterations per case");
    let mut worst = 0.0f64;
    for (name, host, method, path) in cases {
        let host = Host::parse(host).unwrap();
        let req = Request { scheme: Scheme::Https, host: &host, port: 443, method, path };
        // Warm up.
        for _ in 0..10_000 {
            black_box(policy.decide(black_box(&req), now));
        }
        let start = Instant::now();
        for _ in 0..iters {
            black_box(policy.decide(black_box(&req), now));
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
        let d = policy.decide(&req, now);
        worst = worst.max(ns);
        println!(
            "{name:<36} {ns:>8.1} ns/decision   -> {} ({})",
            d.verdict,
            d.rule.map_or("default".to_string(), |r| format!("rule {}", r.index))
        );
    }
    let host = Host::parse("a.b.c.zone151.example.net").unwrap();
    let start = Instant::now();
    for _ in 0..iters {
        black_box(policy.decide_connect(black_box(&host), 443, now));
    }
    println!(
        "{:<36} {:>8.1} ns/decision",
        "decide_connect (suffix)",
        start.elapsed().as_nanos() as f64 / f64::from(iters)
    );
    let start = Instant::now();
    let n = 20;
    for _ in 0..n {
        black_box(parse_profile(Path::new("bench.toml"), &text).unwrap());
    }
    println!("{:<36} {:>8.2} ms", "parse + validate + compile", start.elapsed().as_secs_f64() * 1000.0 / f64::from(n));
    println!("worst case: {worst:.1} ns/decision (target ≤ 1000 ns)");
}
