use std::path::Path;

use serde_json::json;

use super::*;

fn ev(seq: u64, kind: &str, decision: &str, details: serde_json::Value) -> AuditEvent {
    AuditEvent {
        seq,
        time: "2026-12-07T08:00:00Z".into(),
        profile: Some("p".into()),
        kind: kind.into(),
        decision: Some(decision.into()),
        rule: None,
        details,
        prev_hash: String::new(),
        hash: String::new(),
    }
}

fn http(seq: u64, method: &str, host: &str, port: u16, path: &str) -> AuditEvent {
    let d = json!({"method": method, "scheme": "http", "host": host, "port": port, "path": path, "via": "proxy"});
    ev(seq, "http", "watch", d)
}

fn profile(text: &str) -> gvm_policy::Profile {
    gvm_policy::parse_profile(Path::new("/etc/gvm/profiles/p.toml"), text).unwrap()
}

fn run(text: &str, events: &[AuditEvent]) -> (Plan, Outcome) {
    let p = profile(text);
    let mut obs = Observations::new();
    for e in events {
        obs.add(e);
    }
    let now = SystemTime::now();
    let plan = plan(&p.compiled, &obs, now);
    let shown = Plan {
        rules: plan.rules.clone(),
        flagged: plan.flagged.clone(),
        already_allowed: plan.already_allowed,
        files: plan.files.clone(),
        covers: plan.covers.clone(),
    };
    let out = render(Path::new("/etc/gvm/profiles/p.toml"), text, plan, "2026-12-07T08:00:00Z", now).unwrap();
    (shown, out)
}

#[test]
fn ids_are_recognised() {
    for id in [
        "cus_123",
        "cus_0",
        "ch_3NxAbc9Zq",
        "42",
        "0",
        "123e4567-e89b-12d3-a456-426614174000",
        "deadbeef01",
        "a1b2c3d4",
        "dGhpcyBpcyBhIHRva2Vu9w",
        "aGVsbG8td29ybGQtMTIzNDU_",
    ] {
        assert!(is_id(id), "{id} is an id");
    }
    for name in [
        "customers",
        "v1",
        "user_settings",
        "items",
        "deadbeef",
        "charges.json",
        "authentication-settings",
        "cus_",
        "_123",
        "repos",
        "",
    ] {
        assert!(!is_id(name), "{name} is a name");
    }
}

const BASE: &str = "# the billing agent\n[network]\ndefault = \"deny\"   # keep\n\n[[network.rule]]\nhost = \"ok.example\"\naction = \"allow\"\n";

#[test]
fn paths_differing_by_an_id_share_one_rule() {
    let evs = [
        http(1, "GET", "a.test.example", 8080, "/v1/customers/cus_123"),
        http(2, "GET", "a.test.example", 8080, "/v1/customers/cus_456"),
        http(3, "POST", "a.test.example", 8080, "/v1/customers/cus_789"),
        http(4, "GET", "b.test.example", 8081, "/items/42"),
        http(5, "GET", "b.test.example", 8081, "/items/43?x=1"),
        http(6, "DELETE", "c.test.example", 8082, "/jobs/123e4567-e89b-12d3-a456-426614174000"),
    ];
    let (plan, out) = run(BASE, &evs);
    type Row = (String, u16, Vec<String>, Option<String>, u64);
    let rules: Vec<Row> =
        plan.rules.iter().map(|r| (r.host.clone(), r.port, r.methods.clone(), r.path.clone(), r.requests)).collect();
    assert_eq!(
        rules,
        vec![
            ("a.test.example".into(), 8080, vec!["GET".into(), "POST".into()], Some("/v1/customers/*".into()), 3),
            ("b.test.example".into(), 8081, vec!["GET".into()], Some("/items/*".into()), 2),
            ("c.test.example".into(), 8082, vec!["DELETE".into()], Some("/jobs/*".into()), 1),
        ]
    );
    assert!(plan.rules[0].reason.contains("cus_123"), "{}", plan.rules[0].reason);
    // Comments and layout kept; the new text loads and allows all of it.
    assert!(out.new_text.starts_with(BASE), "{}", out.new_text);
    assert!(out.new_text.contains("# 3 request(s) (GET, POST) to a.test.example:8080 fell to the default"));
    let p = profile(&out.new_text);
    assert_eq!(p.network.rules.len(), 4);
    let (again, _) = run(&out.new_text, &evs);
    assert!(again.rules.is_empty());
    assert_eq!(again.already_allowed, 6);
    assert!(out.diff.starts_with("--- /etc/gvm/profiles/p.toml\n+++ "), "{}", out.diff);
    assert!(out.diff.contains("+path = \"/v1/customers/*\""), "{}", out.diff);
    assert!(!out.diff.lines().any(|l| l.starts_with('-') && !l.starts_with("---")), "{}", out.diff);
}

#[test]
fn many_siblings_collapse_below_the_threshold_they_do_not() {
    let names = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    let few: Vec<AuditEvent> = names[..SIBLINGS - 1]
        .iter()
        .enumerate()
        .map(|(i, n)| http(i as u64, "GET", "docs.example", 443, &format!("/pages/{n}")))
        .collect();
    let (plan, _) = run("", &few);
    assert_eq!(plan.rules.len(), SIBLINGS - 1, "{:?}", plan.rules);
    let many: Vec<AuditEvent> = names
        .iter()
        .enumerate()
        .map(|(i, n)| http(i as u64, "GET", "docs.example", 443, &format!("/pages/{n}/x")))
        .collect();
    let (plan, out) = run("", &many);
    assert_eq!(plan.rules.len(), 1, "{:?}", plan.rules);
    assert_eq!(plan.rules[0].path.as_deref(), Some("/pages/**"));
    assert_eq!(plan.rules[0].requests, 6);
    assert!(plan.rules[0].reason.contains("6 distinct segments under /pages"), "{}", plan.rules[0].reason);
    profile(&out.new_text);
}

#[test]
fn allowed_and_rule_decided_requests_are_skipped() {
    let text = "[[network.rule]]\nhost = \"a.example\"\npath = \"/ok/**\"\naction = \"allow\"\n[[network.rule]]\nhost = \"a.example\"\npath = \"/admin/**\"\naction = \"deny\"\n[[network.rule]]\nhost = \"a.example\"\npath = \"/pay\"\naction = \"hold\"\n";
    let evs = [
        http(1, "GET", "a.example", 80, "/ok/1"),
        http(2, "GET", "a.example", 80, "/admin/users"),
        http(3, "POST", "a.example", 80, "/pay"),
        http(4, "GET", "a.example", 80, "/new"),
    ];
    let (plan, out) = run(text, &evs);
    assert_eq!(plan.already_allowed, 1);
    assert_eq!(plan.rules.len(), 1);
    assert_eq!(plan.rules[0].path.as_deref(), Some("/new"));
    let by_rule: Vec<&Flagged> = plan.flagged.iter().filter(|f| f.kind == "decided_by_rule").collect();
    assert_eq!(by_rule.len(), 1);
    assert_eq!(by_rule[0].requests, 2);
    assert!(out.new_text.contains("decided_by_rule"), "{}", out.new_text);
}

#[test]
fn exfiltration_and_broad_hosts_are_flagged_never_allowed() {
    let mut big = http(3, "POST", "paste.example", 443, "/upload");
    big.details["scheme"] = json!("https");
    // Completion records name their decision by seq only (the gateway's form).
    let done = ev(4, "http.done", "watch", json!({"decision_seq": 3, "bytes_up": LARGE_UPLOAD + 1, "status": 200}));
    let small_done = ev(6, "http.done", "watch", json!({"decision_seq": 5, "bytes_up": 100, "status": 200}));
    let evs = vec![
        http(1, "GET", "10.1.2.3", 8080, "/x"),
        http(2, "GET", "localhost", 8080, "/x"),
        big,
        done,
        http(5, "POST", "once.example", 443, "/x"),
        small_done,
        ev(7, "dns", "allow", json!({"name": "lookup-only.example", "qtype": 1})),
        ev(8, "dns", "allow", json!({"name": "once.example", "qtype": 1})),
        {
            let mut e = http(9, "GET", "169.254.169.254", 80, "/latest/meta-data");
            e.decision = Some("deny".into());
            e.rule = Some("upstream-safety".into());
            e
        },
    ];
    let (plan, out) = run("", &evs);
    let kinds: Vec<(&str, &str)> = plan.flagged.iter().map(|f| (f.host.as_str(), f.kind.as_str())).collect();
    assert!(kinds.contains(&("10.1.2.3", "ip_address")), "{kinds:?}");
    assert!(kinds.contains(&("localhost", "top_level_domain")), "{kinds:?}");
    assert!(kinds.contains(&("paste.example", "large_upload_once")), "{kinds:?}");
    assert!(kinds.contains(&("lookup-only.example", "dns_only")), "{kinds:?}");
    assert!(kinds.contains(&("169.254.169.254", "ssrf_refused")), "{kinds:?}");
    assert!(!kinds.iter().any(|(h, _)| *h == "once.example"), "{kinds:?}");
    let hosts: Vec<&str> = plan.rules.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(hosts, vec!["once.example"]);
    // Flags are comments, never rules.
    let p = profile(&out.new_text);
    assert_eq!(p.network.rules.len(), 1);
    assert!(out.new_text.contains("#   paste.example (large_upload_once, 1 seen)"), "{}", out.new_text);
    for r in p.network.rules {
        assert!(!r.host.to_string().contains('*'));
    }
}

#[test]
fn tunnels_get_host_and_port_rules_and_folded_repeats_count() {
    let mut c =
        ev(1, "connect", "deny", json!({"method": "CONNECT", "host": "pinned.example", "port": 443, "via": "connect"}));
    c.details["folded"] = json!(4);
    let (plan, out) = run("", &[c]);
    assert_eq!(plan.rules.len(), 1);
    assert_eq!((plan.rules[0].path.clone(), plan.rules[0].requests), (None, 4));
    assert!(plan.rules[0].methods.is_empty());
    assert!(out.new_text.contains("host = \"pinned.example\"\nport = 443\naction = \"allow\""), "{}", out.new_text);
}

#[test]
fn nothing_seen_changes_nothing() {
    let (plan, out) = run(BASE, &[]);
    assert!(plan.rules.is_empty() && plan.flagged.is_empty());
    assert_eq!(out.new_text, BASE);
    assert!(out.diff.is_empty());
}

#[test]
fn odd_paths_are_never_written_literally() {
    let evs =
        [http(1, "GET", "a.example", 80, "/a//b"), http(2, "GET", "a.example", 80, "/files/r%C3%A9sum%C3%A9.pdf")];
    let (plan, out) = run("", &evs);
    assert!(plan.flagged.iter().any(|f| f.kind == "unwritable_path" && f.requests == 1), "{:?}", plan.flagged);
    assert_eq!(plan.rules.len(), 1);
    assert_eq!(plan.rules[0].path.as_deref(), Some("/files/*"));
    profile(&out.new_text);
}

#[test]
fn file_globs_by_directory_and_extension() {
    let files: Vec<String> = ["reports/q3/a.csv", "reports/b.csv", "notes.md", "Makefile", "out/x.tar.gz"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let g: Vec<(String, u64)> = file_globs(&files).into_iter().map(|f| (f.glob, f.files)).collect();
    assert_eq!(g, vec![("*.md".into(), 1), ("out/**/*.gz".into(), 1), ("reports/**/*.csv".into(), 2)]);
}

#[test]
fn diffs_are_unified() {
    let d = unified_diff("f", "a\nb\nc\nd\ne\nf\ng\nh\n", "a\nb\nc\nd\nX\nf\ng\nh\ni\n");
    assert_eq!(d, "--- f\n+++ f (suggested)\n@@ -2,7 +2,8 @@\n b\n c\n d\n-e\n+X\n f\n g\n h\n+i\n");
}

#[test]
fn rules_land_in_a_profile_whose_rules_are_not_last() {
    let text = "[network]\ndefault = \"deny\"\n\n[[network.rule]]\nhost = \"ok.example\"\naction = \"allow\"\n\n[files]\nauto_apply = [\"out/*.txt\"]   # ours\n";
    let (plan, out) = run(text, &[http(1, "GET", "api.example", 443, "/v1/x")]);
    assert_eq!(plan.rules.len(), 1);
    let p = profile(&out.new_text);
    assert_eq!(p.network.rules.len(), 2);
    assert!(out.new_text.contains("auto_apply = [\"out/*.txt\"]   # ours"), "{}", out.new_text);
}

#[test]
fn new_files_become_comment_only_globs() {
    let mut obs = Observations::new();
    obs.add_new_file("reports/q3.csv");
    obs.add(&ev(
        1,
        "file_apply",
        "",
        json!({"by": "root", "applied": [{"path": "reports/2026/q4.csv", "kind": "added"}, {"path": "x.py", "kind": "modified"}]}),
    ));
    obs.add(&ev(2, "file_apply", "", json!({"by": "auto_apply", "applied": [{"path": "a.log", "kind": "added"}]})));
    let p = profile("");
    let plan = plan(&p.compiled, &obs, SystemTime::now());
    assert_eq!(plan.files.len(), 1);
    assert_eq!((plan.files[0].glob.as_str(), plan.files[0].files), ("reports/**/*.csv", 2));
    let out = render(Path::new("/etc/gvm/profiles/p.toml"), "", plan, "now", SystemTime::now()).unwrap();
    assert!(out.new_text.contains("#   auto_apply = [\"reports/**/*.csv\"]"), "{}", out.new_text);
    // A comment only: the profile's [files] is unchanged.
    assert!(profile(&out.new_text).files.auto_apply.is_empty());
}

#[test]
fn siblings_under_an_id_collapse_to_a_valid_pattern() {
    let evs: Vec<AuditEvent> = ["a", "b", "c", "d", "e"]
        .iter()
        .enumerate()
        .map(|(i, leaf)| http(i as u64, "GET", "api.example", 443, &format!("/items/{i}/{leaf}")))
        .collect();
    let (plan, out) = run("", &evs);
    assert_eq!(plan.rules.len(), 1, "{:?}", plan.rules);
    assert_eq!(plan.rules[0].path.as_deref(), Some("/items/*/**"));
    assert_eq!(profile(&out.new_text).network.rules.len(), 1);
    let (again, _) = run(&out.new_text, &evs);
    assert_eq!((again.rules.len(), again.already_allowed), (0, 5));
}

#[test]
fn completion_events_count_in_either_spelling() {
    // Logs from before the one-spelling vocabulary hold `http.done`; newer ones
    // `http_done`. Both carry the bytes sent that flag a large upload.
    for kind in ["http.done", "http_done"] {
        let mut big = http(1, "POST", "paste.example", 443, "/upload");
        big.details["scheme"] = json!("https");
        let mut done = ev(2, kind, "watch", big.details.clone());
        done.details["bytes_up"] = json!(LARGE_UPLOAD + 1);
        done.details["decision_seq"] = json!(1);
        let (plan, _) = run("", &[big, done]);
        let kinds: Vec<(&str, &str)> = plan.flagged.iter().map(|f| (f.host.as_str(), f.kind.as_str())).collect();
        assert!(kinds.contains(&("paste.example", "large_upload_once")), "{kind}: {kinds:?}");
    }
}
