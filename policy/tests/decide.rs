//! Decisions as the gateway sees them: precedence, defaults, paths, tunnels, watch.

use std::path::Path;
use std::time::{Duration, SystemTime};

use gvm_policy::{parse_profile, ConnectPlan, Host, Mode, Profile, Request, Scheme, Verdict};

fn profile(text: &str) -> Profile {
    parse_profile(Path::new("profiles/t.toml"), text).unwrap_or_else(|d| panic!("{d}"))
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// (verdict, deciding rule index)
fn decide(p: &Profile, method: &str, url_host: &str, port: u16, path: &str) -> (Verdict, Option<usize>) {
    let host = Host::parse(url_host).unwrap();
    let req = Request { scheme: Scheme::Https, host: &host, port, method, path };
    let d = p.compiled.decide(&req, now());
    // explain must always agree with decide.
    assert_eq!(p.compiled.explain(&req, now()).decision, d);
    (d.policy_verdict, d.rule.map(|r| r.index))
}

const MIXED: &str = r#"
[[network.rule]]            # 0
host = "*.example.com"
action = "allow"

[[network.rule]]            # 1
host = "api.example.com"
path = "/v1/**"
action = "hold"

[[network.rule]]            # 2
host = "api.example.com"
methods = ["GET"]
path = "/v1/public/**"
action = "allow"

[[network.rule]]            # 3
host = "*.example.com"
path = "/admin/**"
action = "deny"

[[network.rule]]            # 4
host = "*.internal.example.com"
action = "hold"

[[network.rule]]            # 5
host = "10.0.0.0/8"
action = "allow"

[[network.rule]]            # 6
host = "10.1.0.0/16"
port = 8443
action = "hold"

[[network.rule]]            # 7
host = "[2001:db8::1]"
action = "allow"
"#;

#[test]
fn deny_wins_over_every_allow() {
    let p = profile(MIXED);
    // Rule 3 (a suffix deny) beats the more specific exact-host rules 1 and 2.
    assert_eq!(decide(&p, "GET", "api.example.com", 443, "/admin/users"), (Verdict::Deny, Some(3)));
    assert_eq!(decide(&p, "GET", "www.example.com", 443, "/admin"), (Verdict::Deny, Some(3)));
}

#[test]
fn most_specific_allow_or_hold_wins() {
    let p = profile(MIXED);
    // Exact host + longer path + method beats exact host + prefix.
    assert_eq!(decide(&p, "GET", "api.example.com", 443, "/v1/public/x"), (Verdict::Allow, Some(2)));
    // Method differs: falls to the exact-host prefix hold.
    assert_eq!(decide(&p, "POST", "api.example.com", 443, "/v1/public/x"), (Verdict::Hold, Some(1)));
    // Exact host without matching path: the suffix allow.
    assert_eq!(decide(&p, "GET", "api.example.com", 443, "/v2"), (Verdict::Allow, Some(0)));
    // Longer suffix beats shorter suffix.
    assert_eq!(decide(&p, "GET", "db.internal.example.com", 443, "/"), (Verdict::Hold, Some(4)));
    assert_eq!(decide(&p, "GET", "a.b.example.com", 443, "/"), (Verdict::Allow, Some(0)));
    // Longer CIDR prefix (+ port) beats shorter.
    assert_eq!(decide(&p, "GET", "10.1.2.3", 8443, "/"), (Verdict::Hold, Some(6)));
    assert_eq!(decide(&p, "GET", "10.1.2.3", 443, "/"), (Verdict::Allow, Some(5)));
    assert_eq!(decide(&p, "GET", "10.2.2.3", 8443, "/"), (Verdict::Allow, Some(5)));
    // IPv6 literal, and the v4-mapped form of a v4 address.
    assert_eq!(decide(&p, "GET", "[2001:DB8::1]", 443, "/"), (Verdict::Allow, Some(7)));
    assert_eq!(decide(&p, "GET", "[::ffff:10.9.9.9]", 443, "/"), (Verdict::Allow, Some(5)));
}

#[test]
fn suffix_needs_a_label_below_it() {
    let p = profile(MIXED);
    assert_eq!(decide(&p, "GET", "example.com", 443, "/"), (Verdict::Deny, None));
    assert_eq!(decide(&p, "GET", "evilexample.com", 443, "/"), (Verdict::Deny, None));
    assert_eq!(decide(&p, "GET", "example.com.evil.net", 443, "/"), (Verdict::Deny, None));
}

#[test]
fn nothing_matches_means_the_default() {
    let p = profile(MIXED);
    assert_eq!(decide(&p, "GET", "other.org", 443, "/"), (Verdict::Deny, None));
    assert_eq!(decide(&p, "GET", "11.0.0.1", 443, "/"), (Verdict::Deny, None));
    let hold = profile("[network]\ndefault = \"hold\"\nhold_timeout = \"30s\"\n");
    let host = Host::parse("x.org").unwrap();
    let d = hold
        .compiled
        .decide(&Request { scheme: Scheme::Https, host: &host, port: 443, method: "GET", path: "/" }, now());
    assert_eq!(d.verdict, Verdict::Hold);
    assert_eq!(d.rule, None);
    assert_eq!(d.hold_timeout, Duration::from_secs(30));
    assert_eq!(d.hold_deadline(), Some(now() + Duration::from_secs(30)));
}

#[test]
fn ties_go_to_hold_then_to_the_earlier_rule() {
    let p = profile(
        "[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\n[[network.rule]]\nhost = \"a.com\"\naction = \"hold\"\n[[network.rule]]\nhost = \"b.com\"\naction = \"allow\"\n[[network.rule]]\nhost = \"b.com\"\naction = \"allow\"\nrate = \"1/sec\"\n",
    );
    assert_eq!(decide(&p, "GET", "a.com", 443, "/"), (Verdict::Hold, Some(1)));
    assert_eq!(decide(&p, "GET", "b.com", 443, "/"), (Verdict::Allow, Some(2)));
}

#[test]
fn methods_are_case_sensitive() {
    let p = profile("[[network.rule]]\nhost = \"a.com\"\nmethods = [\"POST\"]\naction = \"allow\"\n");
    assert_eq!(decide(&p, "POST", "a.com", 443, "/"), (Verdict::Allow, Some(0)));
    assert_eq!(decide(&p, "post", "a.com", 443, "/"), (Verdict::Deny, None));
}

#[test]
fn ambiguous_paths_fail_closed() {
    let p = profile(
        r#"
[[network.rule]]
host = "api.stripe.com"
path = "/v1/customers/**"
action = "allow"

[[network.rule]]
host = "api.stripe.com"
action = "allow"

[[network.rule]]
host = "api.stripe.com"
path = "/v1/charges/**"
action = "deny"
"#,
    );
    assert_eq!(decide(&p, "GET", "api.stripe.com", 443, "/v1/customers/1"), (Verdict::Allow, Some(0)));
    assert_eq!(decide(&p, "GET", "api.stripe.com", 443, "/v1/charges/1"), (Verdict::Deny, Some(2)));
    // Encoded ordinary characters are decoded, so the deny still applies.
    assert_eq!(decide(&p, "GET", "api.stripe.com", 443, "/v1/ch%61rges/1"), (Verdict::Deny, Some(2)));
    // Trailing slash and query do not escape it.
    assert_eq!(decide(&p, "GET", "api.stripe.com", 443, "/v1/charges/?x=1"), (Verdict::Deny, Some(2)));
    // Dot segments, `//`, encoded `/`, `;`: caught by the deny path rule, never
    // allowed by the path allow rule.
    for path in [
        "/v1/customers/../charges/1",
        "/v1/customers/./1",
        "//v1/customers/1",
        "/v1/customers%2f1",
        "/v1/customers;x/1",
        "/v1/%2e%2e/charges",
    ] {
        assert_eq!(decide(&p, "GET", "api.stripe.com", 443, path), (Verdict::Deny, Some(2)), "{path}");
    }
    // With no path deny rule, an ambiguous path only matches rules without a path.
    let q = profile("[[network.rule]]\nhost = \"a.com\"\npath = \"/v1/**\"\naction = \"allow\"\n");
    assert_eq!(decide(&q, "GET", "a.com", 443, "/v1/../v1/x"), (Verdict::Deny, None));
    assert_eq!(decide(&q, "GET", "a.com", 443, "/v1/x"), (Verdict::Allow, Some(0)));
}

#[test]
fn injection_never_over_plain_http() {
    let p = profile(
        "[secrets]\nk = { file = \"/s/k\" }\n[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\ninject = { header = \"Authorization\", value = \"Bearer {secret:k}\" }\nrate = \"60/min\"\n",
    );
    let host = Host::parse("a.com").unwrap();
    let mut req = Request { scheme: Scheme::Https, host: &host, port: 443, method: "GET", path: "/" };
    let d = p.compiled.decide(&req, now());
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.rate.unwrap().to_string(), "60/min");
    let inj = d.inject.expect("injection");
    assert_eq!(inj.render(|n| (n == "k").then_some("s3cret")).unwrap(), "Bearer s3cret");
    assert!(inj.render(|_| Some("a\r\nX: y")).is_err());
    assert!(inj.render(|_| None).is_err());
    req.scheme = Scheme::Http;
    assert_eq!(p.compiled.decide(&req, now()).verdict, Verdict::Deny);
    assert!(p.compiled.explain(&req, now()).to_string().contains("plain http"));
}

#[test]
fn connect_tunnel_or_intercept() {
    let p = profile(
        r#"
[[network.rule]]
host = "pinned.example.com"
port = 443
action = "allow"
intercept = false

[[network.rule]]
host = "plain.example.com"
action = "allow"

[[network.rule]]
host = "api.openai.com"
methods = ["POST"]
path = "/v1/chat/completions"
action = "allow"

[[network.rule]]
host = "*.blocked.com"
action = "deny"

[[network.rule]]
host = "x.blocked.com"
path = "/ok"
action = "allow"

[[network.rule]]
host = "deny-only.com"
path = "/admin/**"
action = "deny"
"#,
    );
    let c = |h: &str, port| p.compiled.decide_connect(&Host::parse(h).unwrap(), port, now());
    let decided = |plan: ConnectPlan| match plan {
        ConnectPlan::Decided(d) => (d.verdict, d.rule.map(|r| r.index)),
        ConnectPlan::Intercept => panic!("intercept"),
    };
    assert_eq!(decided(c("pinned.example.com", 443)), (Verdict::Allow, Some(0)));
    assert_eq!(decided(c("pinned.example.com", 8443)), (Verdict::Deny, None));
    assert_eq!(decided(c("plain.example.com", 443)), (Verdict::Allow, Some(1)));
    assert_eq!(c("api.openai.com", 443), ConnectPlan::Intercept);
    // A host-only deny wins before looking inside.
    assert_eq!(decided(c("x.blocked.com", 443)), (Verdict::Deny, Some(3)));
    // No rule could allow, default deny: refuse the tunnel outright.
    assert_eq!(decided(c("deny-only.com", 443)), (Verdict::Deny, None));
    assert_eq!(decided(c("unknown.org", 443)), (Verdict::Deny, None));
}

#[test]
fn watch_mode_allows_and_records() {
    let p = profile(
        "[agent]\nmode = \"watch\"\n[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\n[[network.rule]]\nhost = \"b.com\"\naction = \"hold\"\n",
    );
    assert_eq!(p.compiled.mode(), Mode::Watch);
    let d = |h: &str| {
        let host = Host::parse(h).unwrap();
        p.compiled.decide(&Request { scheme: Scheme::Https, host: &host, port: 443, method: "GET", path: "/" }, now())
    };
    let a = d("a.com");
    assert_eq!((a.verdict, a.policy_verdict, a.would_deny_in_watch()), (Verdict::Allow, Verdict::Allow, false));
    let b = d("b.com");
    assert_eq!((b.verdict, b.policy_verdict, b.would_deny_in_watch()), (Verdict::Allow, Verdict::Hold, true));
    assert_eq!(b.hold_deadline(), None);
    let x = d("x.com");
    assert_eq!(
        (x.verdict, x.policy_verdict, x.would_deny_in_watch(), x.rule),
        (Verdict::Allow, Verdict::Deny, true, None)
    );
    match p.compiled.decide_connect(&Host::parse("x.com").unwrap(), 443, now()) {
        ConnectPlan::Decided(d) => assert!(d.verdict == Verdict::Allow && d.would_deny_in_watch()),
        ConnectPlan::Intercept => panic!(),
    }
}

#[test]
fn explain_says_why() {
    let p = profile(MIXED);
    let host = Host::parse("api.example.com").unwrap();
    let e = p.compiled.explain(
        &Request { scheme: Scheme::Https, host: &host, port: 443, method: "GET", path: "/v1/public/x" },
        now(),
    );
    let text = e.to_string();
    assert!(text.starts_with("allow: network.rule[2] (profiles/t.toml:"), "{text}");
    assert!(text.contains("most specific of 3 matching rules"), "{text}");
    assert!(text.contains("network.rule[3]") && text.contains("path differs"), "{text}");
    let e = p
        .compiled
        .explain(&Request { scheme: Scheme::Https, host: &host, port: 443, method: "GET", path: "/admin" }, now());
    assert!(e.reason.contains("deny rule wins over every allow"), "{}", e.reason);
}

#[test]
fn rule_ref_points_at_the_file_and_line() {
    let p = profile(MIXED);
    let host = Host::parse("api.example.com").unwrap();
    let d = p
        .compiled
        .decide(&Request { scheme: Scheme::Https, host: &host, port: 443, method: "GET", path: "/admin" }, now());
    assert_eq!(d.rule.unwrap().to_string(), "network.rule[3] (profiles/t.toml:18)");
}
