//! Risk tiers through the real binaries: `gvmctl policy check` warns about each
//! override, gvmd refuses a profile beyond its tier and logs what an override unlocks,
//! an L3 profile holds unknown hosts, and an L0 agent has no network and a read-only
//! workspace (root). `gvmctl status --json` carries each profile's tier.

mod common;

use std::process::Command;
use std::time::Duration;

use common::agent::*;
use common::*;

#[test]
fn policy_check_warns_about_each_override_and_refuses_what_none_covers() {
    let dirs = Dirs::new();
    let over = dirs.write_profile(
        "tierover",
        "[agent]\ntier = \"L1\"\ntier_override = [\"network\", \"budget\"]\n\n[[network.rule]]\nhost = \"api.test.example\"\nmethods = [\"POST\"]\naction = \"allow\"\n",
    );
    let out = gvmctl(&dirs, &["policy", "check", over.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "warning: {}:6:8: `network.rule[0]`: this allow rule for api.test.example matches POST, not only GET and HEAD: beyond tier L1 (allow rules: named hosts, GET and HEAD only); allowed by tier_override \"network\"",
            over.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "warning: {}:3:29: `agent.tier_override`: tier_override \"budget\" unlocks nothing",
            over.display()
        )),
        "{text}"
    );
    assert!(text.contains(": 1 rules, 2 warnings"), "{text}");
    assert!(
        text.contains("\ntier: L1: reads from named hosts, read-only workspaces (docs/policy.md, Risk tiers)\n"),
        "{text}"
    );
    let out = gvmctl(&dirs, &["policy", "check", "--json", over.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["warnings"][0]["field"], "network.rule[0]", "{j:#}");
    assert_eq!(j["warnings"][0]["line"], 6);
    assert_eq!(j["tier"], "L1");

    let beyond = dirs.write_profile("tierbeyond", "[agent]\ntier = \"L4\"\n");
    let out = gvmctl(&dirs, &["policy", "check", beyond.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out).trim(),
        format!("error: {}:2:8: `budget`: tier L4 requires a [budget] — add [budget] (e.g. requests = 1000, per = \"day\"), or add \"budget\" to [agent] tier_override", beyond.display())
    );
}

/// One request through the profile's host listener, by curl; returns the HTTP status.
fn curl_via(proxy: u16, method: &str, url: &str) -> std::thread::JoinHandle<String> {
    let (method, url) = (method.to_string(), url.to_string());
    std::thread::spawn(move || {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60", "-X", &method])
            .args(["-x", &format!("http://127.0.0.1:{proxy}"), &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

#[test]
fn gvmd_holds_unknown_hosts_at_l3_refuses_a_profile_beyond_its_tier_and_logs_overrides() {
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let proxy = free_port();
    std::fs::create_dir_all(&dirs.config).unwrap();
    std::fs::write(
        dirs.config.join("gvmd.toml"),
        format!("[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n\n[gateway.listen]\ntierthree = \"127.0.0.1:{proxy}\"\n"),
    )
    .unwrap();
    dirs.write_profile(
        "tierthree",
        &format!("[agent]\ntier = \"L3\"\n\n[network]\nhold_timeout = \"30s\"\n\n[[network.rule]]\nhost = \"api.test.example\"\nport = {port}\naction = \"allow\"\n"),
    );
    let beyond = dirs.write_profile(
        "tiertwo",
        "[agent]\ntier = \"L2\"\n\n[[network.rule]]\nhost = \"api.test.example\"\nmethods = [\"POST\"]\naction = \"allow\"\n",
    );
    dirs.write_profile(
        "tiertwoover",
        "[agent]\ntier = \"L2\"\ntier_override = [\"network\"]\n\n[[network.rule]]\nhost = \"api.test.example\"\nmethods = [\"POST\"]\naction = \"allow\"\n",
    );
    let gvmd = Gvmd::start(&dirs);

    // Named host: any method goes through at L3.
    let status = curl_via(proxy, "POST", &format!("http://api.test.example:{port}/ok/1")).join().unwrap();
    assert_eq!(status, "200");
    // An unknown host waits for a human: the tier made `[network] default` hold.
    let held = curl_via(proxy, "GET", "http://unknown.test.example/x");
    let id = loop {
        let out = gvmctl(&dirs, &["approvals", "--json"]);
        let holds: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(h) = holds.iter().find(|h| h["profile"] == "tierthree") {
            break h["id"].as_u64().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(gvmctl(&dirs, &["deny", &id.to_string()]).status.success());
    assert_eq!(held.join().unwrap(), "403");
    let events = events_json(&dirs);
    let http: Vec<_> = events.iter().filter(|e| e["kind"] == "http").collect();
    let unknown: Vec<_> = http
        .iter()
        .filter(|e| e["details"]["host"] == "unknown.test.example")
        .map(|e| (e["decision"].as_str().unwrap_or(""), e["rule"].clone()))
        .collect();
    let null = serde_json::Value::Null;
    assert_eq!(unknown, [("hold", null.clone()), ("deny", null)], "held by the default, then denied: {http:#?}");
    assert!(!upstream.received("/x"));
    let loaded: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "profile_loaded")
        .map(|e| {
            (e["profile"].as_str().unwrap_or(""), e["details"]["tier"].clone(), e["details"]["tier_override"].clone())
        })
        .collect();
    assert_eq!(
        loaded,
        [
            ("tierthree", "L3".into(), serde_json::json!([])),
            ("tiertwoover", "L2".into(), serde_json::json!(["network"]))
        ],
        "the audit log says which tier each version was loaded under"
    );

    // Beyond its tier: refused with file, line, field and fix; with the override:
    // loaded, and the log says what the override unlocked.
    let out = gvmctl(&dirs, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = s["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{s:#}");
    assert_eq!(refused[0]["file"], beyond.display().to_string());
    assert_eq!((refused[0]["line"].as_u64(), refused[0]["field"].as_str()), (Some(5), Some("network.rule[0]")));
    assert!(refused[0]["fix"].as_str().unwrap().contains("add \"network\" to [agent] tier_override"), "{s:#}");
    let tiers: Vec<(&str, &str)> = s["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["tier"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(tiers, [("tierthree", "L3"), ("tiertwoover", "L2")]);
    let table = stdout(&gvmctl(&dirs, &["status"]));
    let row = table.lines().find(|l| l.starts_with("tierthree ")).unwrap_or_else(|| panic!("{table}"));
    assert_eq!(row.split_whitespace().nth(2), Some("L3"), "{table}");
    let log = gvmd.log_text();
    let warned = log.lines().find(|l| l.contains("WARN") && l.contains("profile tiertwoover: "));
    assert!(
        warned.is_some_and(|l| l.contains("`network.rule[0]`: this allow rule for api.test.example matches POST")
            && l.contains("allowed by tier_override \"network\"")),
        "{log}"
    );
}

/// L0 through a real gvmd and sandbox: the agent's requests to a host that would be
/// reachable under another profile get 403, DNS answers NXDOMAIN, nothing reaches the
/// upstream, and the workspace (no mode written) is mounted read-only.
#[test]
#[ignore = "needs root"]
fn an_l0_agent_has_no_network_no_dns_and_a_read_only_workspace() {
    assert_root();
    let mut sb = Sandboxed::new("l0");
    let upstream = Upstream::start(None);
    let port = upstream.port();
    std::fs::write(sb.ws.join("in.txt"), "input\n").unwrap();
    let profile = format!(
        "[agent]\ntier = \"L0\"\ncommand = [\"/bin/true\"]\nworkspaces = [{{ path = \"{}\" }}]\n",
        sb.ws.display()
    );
    sb.start("[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n", &profile, &[]);

    let script = format!(
        r#"cat {ws}/in.txt
if echo x > {ws}/new.txt 2>/dev/null; then echo write=ok; else echo write=refused; fi
if getent hosts api.test.example; then echo dns=answered; else echo dns=none; fi
echo proxy=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 http://api.test.example:{port}/ok/1)
echo direct=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 --noproxy '*' http://127.0.0.1:{port}/ok/2)
"#,
        ws = sb.ws.display()
    );
    let ran = sb.sh(&script);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let lines: Vec<&str> = ran.out.lines().collect();
    assert_eq!(lines[..3], ["input", "write=refused", "dns=none"], "{ran:#?}");
    assert_eq!(lines[3], "proxy=403", "{ran:#?}");
    assert_eq!(lines[4], "direct=403", "the transparent listener refuses too: {ran:#?}");
    assert!(ran.err.contains("new.txt: Read-only file system"), "{ran:#?}");
    assert!(upstream.seen().is_empty(), "the upstream was reached: {:?}", upstream.seen());
    assert!(!sb.ws.join("new.txt").exists());

    let dns: Vec<_> = sb.events("dns").into_iter().filter(|e| e["details"]["name"] == "api.test.example").collect();
    assert!(!dns.is_empty() && dns.iter().all(|e| e["details"]["rcode"] == 3), "NXDOMAIN only: {dns:#?}");

    let out = gvmctl(&sb.dirs, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent = s["agents"].as_array().unwrap().iter().find(|a| a["profile"] == sb.profile.as_str()).cloned();
    assert_eq!(agent.map(|a| a["tier"].clone()), Some("L0".into()), "{s:#}");
}
