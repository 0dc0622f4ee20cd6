//! Bad profiles are refused with file:line:column while the others load; SIGHUP
//! reloads; a failed reload keeps the last good version in force.

mod common;
use common::*;

const GOOD: &str = r#"
[network]
default = "deny"

[[network.rule]]
host = "api.example.com"
methods = ["GET"]
path = "/v1/**"
action = "allow"
"#;

fn status_json(dirs: &Dirs) -> serde_json::Value {
    let out = gvmctl(dirs, &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn syntax_errors_and_unknown_fields_name_file_line_column_and_the_rest_load() {
    let dirs = Dirs::new();
    dirs.write_profile("good", GOOD);
    let syntax = dirs.write_profile("syntax", "[network]\ndefault = \"deny\n");
    let unknown = dirs.write_profile(
        "unknown",
        "[network]\ndefault = \"deny\"\n\n[[network.rule]]\nhost = \"a.example\"\nactoin = \"allow\"\n",
    );
    let gvmd = Gvmd::start(&dirs);

    let s = status_json(&dirs);
    let names: Vec<&str> = s["profiles"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["good"]);
    let refused = s["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "{refused:?}");
    let syntax_refusal = refused.iter().find(|r| r["file"] == syntax.display().to_string()).unwrap();
    assert_eq!((syntax_refusal["line"].as_u64(), syntax_refusal["column"].as_u64()), (Some(2), Some(16))); // where the closing quote is missing
    let unknown_refusal = refused.iter().find(|r| r["file"] == unknown.display().to_string()).unwrap();
    assert_eq!((unknown_refusal["line"].as_u64(), unknown_refusal["column"].as_u64()), (Some(6), Some(1)));
    assert!(unknown_refusal["message"].as_str().unwrap().contains("actoin"), "{unknown_refusal}");

    // The human view shows the same, as file:line:column.
    let text = stdout(&gvmctl(&dirs, &["status"]));
    assert!(text.contains(&format!("{}:6:1:", unknown.display())), "{text}");
    assert!(text.contains(&format!("{}:2:16:", syntax.display())), "{text}");

    // Each load and refusal is in the audit log.
    let events = events_json(&dirs);
    let k = kinds(&events);
    assert_eq!(k.iter().filter(|k| *k == "profile_loaded").count(), 1, "{k:?}");
    assert_eq!(k.iter().filter(|k| *k == "profile_refused").count(), 2, "{k:?}");
    drop(gvmd);
}

#[test]
fn sighup_reloads_and_a_refused_reload_keeps_the_last_good_version() {
    let dirs = Dirs::new();
    let file = dirs.write_profile("invoices", GOOD);
    let gvmd = Gvmd::start(&dirs);
    assert_eq!(status_json(&dirs)["profiles"][0]["rules"], 1);

    // A broken edit: refused, the good version stays and is marked stale.
    std::fs::write(&file, GOOD.replace("action = \"allow\"", "action = \"alow\"")).unwrap();
    gvmd.signal(1);
    let s = wait_for(&dirs, |s| !s["refused"].as_array().unwrap().is_empty());
    assert_eq!(s["profiles"][0]["name"], "invoices");
    assert_eq!(s["profiles"][0]["stale"], true);
    let refusal = &s["refused"][0];
    assert_eq!(refusal["line"], 9);
    assert!(refusal["fix"].as_str().unwrap_or("").contains("allow"), "{refusal}");

    // A good edit with a second rule, through `gvmctl reload` this time.
    std::fs::write(&file, format!("{GOOD}\n[[network.rule]]\nhost = \"*.example.org\"\naction = \"deny\"\n")).unwrap();
    let out = gvmctl(&dirs, &["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = status_json(&dirs);
    assert_eq!(s["profiles"][0]["rules"], 2);
    assert_eq!(s["profiles"][0]["stale"], false);
    assert!(s["refused"].as_array().unwrap().is_empty());

    // Removing the file removes the profile.
    std::fs::remove_file(&file).unwrap();
    gvmd.signal(1);
    wait_for(&dirs, |s| s["profiles"].as_array().unwrap().is_empty());
    let k = kinds(&events_json(&dirs));
    assert_eq!(k, ["daemon_start", "profile_loaded", "profile_refused", "profile_loaded", "profile_removed"]);
}

fn wait_for(dirs: &Dirs, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = status_json(dirs);
        if pred(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "condition not reached; last status: {s:#}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
