//! `gvmctl policy check` (offline) and `gvmctl policy explain` (asks gvmd).

mod common;
use std::path::Path;

use common::*;

#[test]
fn every_shipped_policy_checks_clean_and_a_broken_one_names_its_line() {
    let dirs = Dirs::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(repo.join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = gvmctl(&dirs, &["policy", "check", path.to_str().unwrap()]);
            assert!(out.status.success(), "{}: {}", path.display(), stdout(&out));
            assert!(stdout(&out).contains(&format!("ok: {}: ", path.display())), "{}", stdout(&out));
            n += 1;
        }
    }
    assert!(n >= 1, "policies/ has no profiles");

    let bad = dirs.write_profile(
        "bad",
        "[network]\ndefault = \"deny\"\n\n[[network.rule]]\nhost = \"a.example\"\naction = \"permit\"\n",
    );
    let out = gvmctl(&dirs, &["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.starts_with(&format!("error: {}:6:10: `network.rule[0].action`: ", bad.display())), "{text}");
    assert!(text.contains("allow, deny, hold"), "{text}");
}

#[test]
fn check_lists_the_tools_an_mcp_rule_lets_the_agent_call() {
    let dirs = Dirs::new();
    let file = dirs.write_profile(
        "mcpcheck",
        "[[network.rule]]\nhost = \"mcp.test\"\naction = \"allow\"\nmcp = { tools = [\"search\", \"read_file\"], deny_tools = [\"delete_*\"], filter_list = true }\n\n[[network.rule]]\nhost = \"all.test\"\naction = \"allow\"\nmcp = { tools = [\"*\"] }\n",
    );
    let out = gvmctl(&dirs, &["policy", "check", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "mcp: network.rule[0] (line 2) mcp.test: tools search, read_file; never delete_*; tools/list filtered"
        ),
        "{text}"
    );
    assert!(text.contains("mcp: network.rule[1] (line 7) all.test: tools *\n"), "{text}");
    assert!(text.contains("`mcp.tools = [\"*\"]` lets the agent call every tool"), "{text}");
    let out = gvmctl(&dirs, &["policy", "check", "--json", file.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(j["mcp"][0]["deny_tools"][0], "delete_*");
    assert_eq!(j["mcp"][0]["filter_list"], true);
    assert_eq!(j["mcp"][1]["tools"][0], "*");
}

#[test]
fn explain_names_the_deciding_rule_and_its_line() {
    let dirs = Dirs::new();
    let file = dirs.write_profile(
        "invoices",
        "[network]\ndefault = \"deny\"\n\n[[network.rule]]\nhost = \"api.stripe.com\"\nmethods = [\"POST\"]\npath = \"/v1/charges/**\"\naction = \"hold\"\n",
    );
    let _gvmd = Gvmd::start(&dirs);
    let out = gvmctl(&dirs, &["policy", "explain", "invoices", "post", "https://api.stripe.com/v1/charges/ch_1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // The rule is located by its `host` line.
    assert!(text.starts_with(&format!("hold by network.rule[0] at {}:5", file.display())), "{text}");

    let out = gvmctl(&dirs, &["policy", "explain", "invoices", "GET", "https://api.stripe.com/v1/customers", "--json"]);
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["decision"], "deny");
    assert_eq!(e["rule"], serde_json::Value::Null);
    assert_eq!(e["considered"][0]["outcome"].as_str().map(|o| o != "matched"), Some(true), "{e:#}");

    let out = gvmctl(&dirs, &["policy", "explain", "nobody", "GET", "https://x.example/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no profile \"nobody\" is in force") && stderr(&out).contains("invoices"),
        "{}",
        stderr(&out)
    );
}
