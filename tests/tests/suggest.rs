//! `gvmctl suggest` end to end, as a user meets it: an agent in a `gvmctl run --watch`
//! sandbox calls three test hosts (mapped to local upstreams) with id-bearing paths;
//! `gvmctl suggest` shows a diff and changes nothing, `--apply` writes it (comments kept,
//! `.bak`, `policy check` passes, one rule per path that differs only by an id), and the
//! same workload in enforce mode then has zero denials while a host never seen is denied.
//! Also: a profile edited between the dry run and the apply is not written; a window
//! without traffic says so.
//!
//! Privileged: `#[ignore = "needs root"]`, run with --include-ignored (after
//! `cargo build --bins`: these tests run the built gvmd and gvmctl).

mod common;

use std::time::Duration;

use common::agent::*;
use common::*;
use serde_json::Value;

const UUID1: &str = "123e4567-e89b-12d3-a456-426614174000";
const UUID2: &str = "9b2c1f70-0d6e-4a8b-9c3d-2e5f6a7b8c9d";

fn curl(name: &str, method: &str, url: &str) -> String {
    format!("echo @@{name}; curl -sS -X {method} -w '\\nstatus=%{{http_code}}\\n' '{url}' 2>&1; echo \"exit=$?\"; ")
}

/// A POST of `bytes` zero bytes.
fn upload(name: &str, url: &str, bytes: u64) -> String {
    format!(
        "echo @@{name}; head -c {bytes} /dev/zero | curl -sS -X POST -H 'Content-Type: application/octet-stream' --data-binary @- -w '\\nstatus=%{{http_code}}\\n' '{url}' 2>&1; echo \"exit=$?\"; "
    )
}

/// The workload: three hosts, paths that differ by ids; `d` optionally.
fn workload(a: u16, b: u16, c: u16, with_d: bool) -> String {
    let mut s = [
        curl("a1", "GET", &format!("http://a.test.example:{a}/v1/customers/cus_123")),
        curl("a2", "GET", &format!("http://a.test.example:{a}/v1/customers/cus_456")),
        curl("a3", "POST", &format!("http://a.test.example:{a}/v1/customers/cus_789")),
        curl("b1", "GET", &format!("http://b.test.example:{b}/items/42")),
        curl("b2", "GET", &format!("http://b.test.example:{b}/items/43")),
        curl("c1", "GET", &format!("http://c.test.example:{c}/jobs/{UUID1}")),
        curl("c2", "DELETE", &format!("http://c.test.example:{c}/jobs/{UUID2}")),
    ]
    .concat();
    if with_d {
        s.push_str(&curl("d1", "GET", &format!("http://d.test.example:{a}/v1/customers/cus_1")));
    }
    s
}

const PROFILE: &str = "# suggest test: the billing agent\n[network]\ndefault = \"deny\"   # nothing unless a rule says so\n\n# a rule of ours, kept as written\n[[network.rule]]\nhost = \"ok.test.example\"\naction = \"allow\"\n";

fn run_watch(sb: &Sandboxed, script: &str, watch: bool) -> Ran {
    let mut args = vec!["run"];
    if watch {
        args.push("--watch");
    }
    args.extend(["--profile", &sb.profile, "--", "sh", "-c", script]);
    output_within(gvmctl_cmd(&sb.dirs, &args), Duration::from_secs(120))
}

fn suggest(sb: &Sandboxed, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["suggest", sb.profile.as_str()];
    args.extend_from_slice(extra);
    gvmctl(&sb.dirs, &args)
}

fn last_run_seq(sb: &Sandboxed) -> u64 {
    sb.events("run_started").last().and_then(|e| e["seq"].as_u64()).expect("a run_started event")
}

#[test]
#[ignore = "needs root"]
fn watch_suggest_enforce() {
    assert_root();
    let mut sb = Sandboxed::new("sg");
    let (ua, ub, uc) = (Upstream::start(None), Upstream::start(None), Upstream::start(None));
    let hosts = "[gateway.hosts]\n\"a.test.example\" = [\"127.0.0.1\"]\n\"b.test.example\" = [\"127.0.0.1\"]\n\"c.test.example\" = [\"127.0.0.1\"]\n\"d.test.example\" = [\"127.0.0.1\"]\n";
    sb.start(hosts, PROFILE, &[]);
    let file = sb.dirs.profiles().join(format!("{}.toml", sb.profile));

    // Nothing seen yet: it says so.
    let out = suggest(&sb, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("No network traffic in this window"), "{}", stdout(&out));

    // 1. Watch: everything goes through, and is recorded.
    let ran = run_watch(&sb, &workload(ua.port(), ub.port(), uc.port(), false), true);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let s = sections(&ran.out);
    for name in ["a1", "a2", "a3", "b1", "b2", "c1", "c2"] {
        assert!(section(&s, name, &ran).contains("status=200"), "{name} in watch mode: {ran:#?}");
    }
    let run = last_run_seq(&sb).to_string();

    // 2. Dry run: a diff, the file unchanged.
    let out = suggest(&sb, &["--run", &run]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    if std::env::var_os("GVMT_VERBOSE").is_some() {
        eprintln!("{text}");
    }
    assert!(text.contains("+path = \"/v1/customers/*\""), "{text}");
    assert!(text.contains("+path = \"/items/*\"") && text.contains("+path = \"/jobs/*\""), "{text}");
    assert!(text.contains("Nothing was written"), "{text}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), PROFILE);
    assert!(!file.with_extension("toml.bak").exists());
    let out = suggest(&sb, &["--run", &run, "--json"]);
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rules = j["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3, "{j:#}");
    let a = rules.iter().find(|r| r["host"] == "a.test.example").unwrap();
    assert_eq!((a["requests"].as_u64(), a["methods"].clone()), (Some(3), serde_json::json!(["GET", "POST"])), "{a:#}");
    let base = j["base_sha256"].as_str().unwrap().to_string();
    // The other windows see the same run: since the profile was loaded, and by age.
    for extra in [&["--json"][..], &["--since", "1h", "--json"][..]] {
        let out = suggest(&sb, extra);
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
        let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(j["rules"].as_array().map(Vec::len), Some(3), "{extra:?}: {j:#}");
    }
    let out = suggest(&sb, &["--run", "1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not a run_started event of profile"), "{}", stderr(&out));

    // 3. The file changes between the dry run and the apply: refused, nothing written.
    let edited = format!("{PROFILE}# edited by hand meanwhile\n");
    std::fs::write(&file, &edited).unwrap();
    let out = suggest(&sb, &["--run", &run, "--apply", "--expect", &base]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("changed since the suggestion you reviewed"), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing was written"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), edited);
    assert!(!file.with_extension("toml.bak").exists());
    std::fs::write(&file, PROFILE).unwrap();

    // 4. Apply: comments kept, .bak, policy check passes, one rule per id-differing path.
    let out = suggest(&sb, &["--run", &run, "--apply", "--expect", &base]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Profiles reloaded"), "{}", stdout(&out));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.starts_with(PROFILE), "{written}");
    assert_eq!(std::fs::read_to_string(file.with_extension("toml.bak")).unwrap(), PROFILE);
    assert_eq!(written.matches("[[network.rule]]").count(), 4, "{written}");
    assert_eq!(written.matches("path = \"/v1/customers/*\"").count(), 1, "{written}");
    assert!(written.contains("# 3 request(s) (GET, POST) to a.test.example:"), "{written}");
    let check = gvmctl(&sb.dirs, &["policy", "check", file.to_str().unwrap()]);
    assert!(check.status.success(), "{}{}", stdout(&check), stderr(&check));
    let added = sb.events("rule_added");
    let last = added.last().expect("a rule_added event");
    assert_eq!(last["details"]["source"], "suggest");
    assert_eq!(last["details"]["by_user"], "root");
    assert_eq!(last["details"]["rules"].as_array().map(Vec::len), Some(3));

    // 5. Enforce: the same workload passes without one denial; d (never seen) is denied.
    let ran = run_watch(&sb, &workload(ua.port(), ub.port(), uc.port(), true), false);
    let s = sections(&ran.out);
    for name in ["a1", "a2", "a3", "b1", "b2", "c1", "c2"] {
        assert!(section(&s, name, &ran).contains("status=200"), "{name} in enforce mode: {ran:#?}");
    }
    assert!(section(&s, "d1", &ran).contains("status=403"), "{ran:#?}");
    let enforce_run = last_run_seq(&sb);
    let denied: Vec<Value> = sb
        .events("http")
        .into_iter()
        .filter(|e| e["seq"].as_u64() > Some(enforce_run) && e["decision"] != "allow")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert_eq!(denied[0]["details"]["host"], "d.test.example", "{denied:#?}");

    // And now nothing is left to suggest for that run's known hosts.
    let out = suggest(&sb, &["--run", &enforce_run.to_string(), "--json"]);
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(j["already_allowed"].as_u64(), Some(7), "{j:#}");
    let hosts: Vec<&str> = j["rules"].as_array().unwrap().iter().filter_map(|r| r["host"].as_str()).collect();
    assert_eq!(hosts, vec!["d.test.example"], "{j:#}");
}

#[test]
#[ignore = "needs root"]
fn a_large_upload_to_a_new_host_and_dns_only_names_are_flagged_not_allowed() {
    assert_root();
    let mut sb = Sandboxed::new("sx");
    let up = Upstream::start(None);
    let hosts = "[gateway.hosts]\n\"e.test.example\" = [\"127.0.0.1\"]\n\"a.test.example\" = [\"127.0.0.1\"]\n";
    sb.start(hosts, PROFILE, &[]);
    let file = sb.dirs.profiles().join(format!("{}.toml", sb.profile));
    let p = up.port();
    let script = format!(
        "{}{}python3 -c \"import socket\ntry: socket.getaddrinfo('lookup-only.test.example', 80)\nexcept Exception: pass\"; true",
        upload("e", &format!("http://e.test.example:{p}/upload"), 400_000),
        curl("a", "GET", &format!("http://a.test.example:{p}/v1/ping")),
    );
    let ran = run_watch(&sb, &script, true);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let s = sections(&ran.out);
    assert!(section(&s, "e", &ran).contains("status=200"), "{ran:#?}");
    let run = last_run_seq(&sb).to_string();
    let out = suggest(&sb, &["--run", &run, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let hosts: Vec<&str> = j["rules"].as_array().unwrap().iter().filter_map(|r| r["host"].as_str()).collect();
    assert_eq!(hosts, vec!["a.test.example"], "{j:#}");
    let flags: Vec<(&str, &str)> = j["flagged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["host"].as_str().unwrap_or(""), f["kind"].as_str().unwrap_or("")))
        .collect();
    assert!(flags.contains(&("e.test.example", "large_upload_once")), "{j:#}");
    assert!(flags.contains(&("lookup-only.test.example", "dns_only")), "{j:#}");
    let out = suggest(&sb, &["--run", &run, "--apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(!written.contains("host = \"e.test.example\""), "{written}");
    assert!(written.contains("#   e.test.example (large_upload_once, 1 seen)"), "{written}");
}
