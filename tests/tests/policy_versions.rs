//! Policy versions in a real gvmd: every version that comes into force is kept and
//! named in the audit log (`profile_loaded.version`, `policy_version` of each
//! decision); `gvmctl policy history | diff | rollback`, `reload --dry-run`, drift in
//! `status`, and `audit log --explain SEQ` under the version a decision was made under.

mod common;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::*;

const V1: &str = r#"[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
path = "/a/**"
action = "deny"
"#;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One plain-HTTP request through the profile's listener; returns the status.
fn request(proxy: u16, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET http://api.test.example{path} HTTP/1.1\r\nHost: api.test.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn start(dirs: &Dirs, proxy: u16) -> Gvmd {
    std::fs::create_dir_all(&dirs.config).unwrap();
    std::fs::write(dirs.config.join("gvmd.toml"), format!("[gateway.listen]\ninvoices = \"127.0.0.1:{proxy}\"\n"))
        .unwrap();
    Gvmd::start(dirs)
}

fn status(dirs: &Dirs) -> serde_json::Value {
    let out = gvmctl(dirs, &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ok(dirs: &Dirs, args: &[&str]) -> String {
    let out = gvmctl(dirs, args);
    assert!(out.status.success(), "gvmctl {args:?}: {}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

/// The last `http` decision event.
fn last_http(dirs: &Dirs) -> serde_json::Value {
    events_json(dirs).into_iter().rev().find(|e| e["kind"] == "http").expect("an http event")
}

#[test]
fn a_rule_change_is_versioned_diffed_explained_and_rolled_back() {
    let dirs = Dirs::new();
    let file = dirs.write_profile("invoices", V1);
    let proxy = free_port();
    let gvmd = start(&dirs, proxy);
    let (h1, h2) = (gvm_policy::version_of(V1.as_bytes()), gvm_policy::version_of(v2().as_bytes()));

    let s = status(&dirs);
    assert_eq!(s["profiles"][0]["version"], h1.as_str());
    assert_eq!(s["profiles"][0]["drift"], false);
    assert_eq!(request(proxy, "/a/x"), 403);
    let first = last_http(&dirs);
    assert_eq!(first["details"]["policy_version"], h1.as_str(), "{first}");
    assert_eq!(first["rule"].as_str().unwrap_or("").split(' ').next(), Some("network.rule[0]"), "{first}");
    let first_seq = first["seq"].as_u64().unwrap();

    // Edited, not reloaded: drift; the dry run shows the change and applies nothing.
    std::fs::write(&file, v2()).unwrap();
    assert_eq!(status(&dirs)["profiles"][0]["drift"], true);
    let text = ok(&dirs, &["status"]);
    assert!(text.contains("file on disk differs from the version in force: gvmctl policy diff invoices"), "{text}");
    let dry = ok(&dirs, &["reload", "--dry-run"]);
    assert!(
        dry.contains("invoices: changed") && dry.contains("-path = \"/a/**\"") && dry.contains("+path = \"/b/**\""),
        "{dry}"
    );
    assert!(dry.contains("nothing was applied"), "{dry}");
    assert_eq!(status(&dirs)["profiles"][0]["version"], h1.as_str(), "a dry run applies nothing");
    let diff = ok(&dirs, &["policy", "diff", "invoices"]);
    assert!(diff.contains("-path = \"/a/**\"") && diff.contains("+path = \"/b/**\""), "{diff}");

    // Reloaded: the new version in force, drift gone, decisions name it.
    ok(&dirs, &["reload"]);
    let s = status(&dirs);
    assert_eq!(
        (s["profiles"][0]["version"].as_str(), &s["profiles"][0]["drift"]),
        (Some(h2.as_str()), &serde_json::json!(false))
    );
    assert!(!ok(&dirs, &["status"]).contains("differs"));
    assert_eq!(request(proxy, "/a/x"), 403);
    let second = last_http(&dirs);
    assert_eq!(second["details"]["policy_version"], h2.as_str(), "a new event, not folded into the old: {second}");
    assert!(second["rule"].is_null(), "the default decides now: {second}");

    let diff = ok(&dirs, &["policy", "diff", "invoices", &h1[..6], &h2[..8].to_uppercase()]);
    assert!(diff.contains("-path = \"/a/**\"") && diff.contains("+path = \"/b/**\""), "{diff}");

    let h: serde_json::Value = serde_json::from_str(&ok(&dirs, &["policy", "history", "invoices", "--json"])).unwrap();
    let entries = h["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{h}");
    assert_eq!((entries[0]["version"].as_str(), entries[0]["how"].as_str()), (Some(h1.as_str()), Some("start")));
    assert_eq!((entries[1]["version"].as_str(), entries[1]["how"].as_str()), (Some(h2.as_str()), Some("reload")));
    assert_eq!(entries[0]["until"], entries[1]["at"]);
    assert_eq!(h["in_force"], h2.as_str());
    let table = ok(&dirs, &["policy", "history", "invoices"]);
    assert!(table.contains(&h1[..12]) && table.contains(&h2[..12]) && table.contains("now (in force)"), "{table}");

    // The first decision, explained under the version it was made under.
    let explained = ok(&dirs, &["audit", "log", "--explain", &first_seq.to_string()]);
    assert!(explained.contains(&format!("under version {}", &h1[..12])), "{explained}");
    assert!(explained.contains(&format!("deny by network.rule[0] at {}:", file.display())), "{explained}");
    assert!(explained.contains("decided differently"), "{explained}");
    assert_eq!(ok(&dirs, &["policy", "explain", "--at", &first_seq.to_string()]), explained, "one implementation");

    // Rollback: the old bytes back, the previous text in .bak, v1 in force again.
    let out = ok(&dirs, &["policy", "rollback", "invoices"]);
    assert!(out.contains(&format!("version {} back in force", &h1[..12])), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), V1);
    assert_eq!(std::fs::read_to_string(file.with_extension("toml.bak")).unwrap(), v2());
    assert_eq!(status(&dirs)["profiles"][0]["version"], h1.as_str());
    // (Another path: a repeat of the first request would be folded into its event.)
    assert_eq!(request(proxy, "/a/y"), 403);
    assert_eq!(last_http(&dirs)["details"]["policy_version"], h1.as_str());
    let h: serde_json::Value = serde_json::from_str(&ok(&dirs, &["policy", "history", "invoices", "--json"])).unwrap();
    assert_eq!(h["entries"][2]["how"], "rollback");
    assert_eq!(h["entries"][2]["by"], user_name());

    // The chain: each version loaded, the rollback, and still intact.
    let events = events_json(&dirs);
    let loaded: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "profile_loaded")
        .map(|e| e["details"]["version"].as_str().unwrap())
        .collect();
    assert_eq!(loaded, [h1.as_str(), h2.as_str(), h1.as_str()]);
    let rb = events.iter().find(|e| e["kind"] == "policy_rollback").expect("a policy_rollback event");
    assert_eq!((rb["details"]["from"].as_str(), rb["details"]["to"].as_str()), (Some(h2.as_str()), Some(h1.as_str())));
    ok(&dirs, &["audit", "verify"]);

    // Stored content-addressed, 0600.
    use std::os::unix::fs::MetadataExt;
    let stored = dirs.state.join(format!("policy/invoices/{h1}.toml"));
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), V1);
    assert_eq!(std::fs::metadata(&stored).unwrap().mode() & 0o777, 0o600);
    drop(gvmd);
}

fn v2() -> String {
    V1.replace("/a/**", "/b/**")
}

fn user_name() -> String {
    let out = std::process::Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn bad_versions_and_refused_files_say_what_to_do() {
    let dirs = Dirs::new();
    let file = dirs.write_profile("invoices", V1);
    let gvmd = start(&dirs, free_port());
    let h1 = gvm_policy::version_of(V1.as_bytes());

    let out = gvmctl(&dirs, &["policy", "history", "nobody"]);
    assert!(!out.status.success() && stderr(&out).contains("never loaded"), "{}", stderr(&out));
    let out = gvmctl(&dirs, &["policy", "diff", "invoices", "abcdef"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains(&format!("known versions: {}", &h1[..12])), "{}", stderr(&out));
    let out = gvmctl(&dirs, &["policy", "rollback", "invoices"]);
    assert!(stderr(&out).contains("nothing to roll back to"), "{}", stderr(&out));

    // A stored version the schema no longer accepts is refused, the file untouched.
    let old = "f".repeat(64);
    let dir = dirs.state.join("policy/invoices");
    std::fs::write(dir.join(format!("{old}.toml")), "[network]\ndefault = \"allow\"\n").unwrap();
    let mut index = std::fs::OpenOptions::new().append(true).open(dir.join("index.jsonl")).unwrap();
    writeln!(index, r#"{{"version":"{old}","at":"2026-01-01T00:00:00Z","how":"start","rules":0}}"#).unwrap();
    let out = gvmctl(&dirs, &["policy", "rollback", "invoices", "--to", "ffffff"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no longer validates") && stderr(&out).contains("default"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), V1);

    // A file a reload would refuse: the dry run says so, exits 1, applies nothing.
    std::fs::write(&file, V1.replace("\"deny\"\n\n", "\"dny\"\n\n")).unwrap();
    let out = gvmctl(&dirs, &["reload", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("would refuse") && stderr(&out).contains("invoices.toml:2:"), "{}", stderr(&out));
    assert!(status(&dirs)["refused"].as_array().unwrap().is_empty(), "nothing applied");
    drop(gvmd);
}
