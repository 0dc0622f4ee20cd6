//! Budgets against a real gvmd and a real sandbox: the spend of the current period is
//! kept in `<state>/spend.db` across a gvmd restart, so a restart does not hand an
//! agent a fresh budget; `gvmctl status --json` shows it.
//!
//! Privileged: `#[ignore = "needs root"]`, run with --include-ignored.

mod common;

use common::agent::*;
use common::*;

/// Sends `n` plain-HTTP requests through the proxy and prints each status line.
const AGENT: &str = r#"
import socket, sys
P = int(sys.argv[1])
for i in range(int(sys.argv[2])):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(("GET http://api.test.example:%d/spend/%s-%d HTTP/1.1\r\nHost: api.test.example:%d\r\n"
               "Connection: close\r\n\r\n" % (P, sys.argv[3], i, P)).encode())
    s.settimeout(15)
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    print(out.decode(errors="replace").split("\r\n")[0])
    if b"budget" in out:
        print(out.decode(errors="replace").split("\r\n\r\n", 1)[1])
"#;

fn budgets(sb: &Sandboxed) -> serde_json::Value {
    let out = gvmctl(&sb.dirs, &["status", &sb.profile, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    s["profiles"][0]["budgets"].clone()
}

#[test]
#[ignore = "needs root"]
fn spend_is_kept_across_a_gvmd_restart() {
    assert_root();
    let mut sb = Sandboxed::new("bud");
    let up = Upstream::start(None);
    let p = up.port();
    let gvmd = "[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n";
    let profile = format!(
        "[agent]\nworkspaces = [{{ path = \"{ws}\", mode = \"overlay\" }}]\n\n[network]\ndefault = \"deny\"\n\n\
         [[network.rule]]\nhost = \"api.test.example\"\nport = {p}\naction = \"allow\"\n\
         budget = {{ requests = 3, per = \"month\" }}\n",
        ws = sb.ws.display()
    );
    sb.start(gvmd, &profile, &[]);
    let port = p.to_string();
    let ran = sb.run(&["/usr/bin/python3", "-c", AGENT, &port, "2", "before"]);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert_eq!(ran.out.matches("HTTP/1.1 200").count(), 2, "{ran:#?}");
    let b = budgets(&sb);
    assert_eq!((b[0]["requests"].as_u64(), b[0]["requests_spent"].as_u64()), (Some(3), Some(2)), "{b}");

    // A clean restart: the two requests stay spent.
    let status = sb.gvmd.take().unwrap().stop();
    assert!(status.success(), "{status}");
    let db = sb.dirs.state.join("spend.db");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
    sb.gvmd = Some(Gvmd::start(&sb.dirs));
    assert_eq!(budgets(&sb)[0]["requests_spent"].as_u64(), Some(2));
    let ran = sb.run(&["/usr/bin/python3", "-c", AGENT, &port, "2", "after"]);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let lines: Vec<&str> = ran.out.lines().filter(|l| l.starts_with("HTTP/1.1")).collect();
    assert_eq!(lines.len(), 2, "{ran:#?}");
    assert!(lines[0].starts_with("HTTP/1.1 200"), "{ran:#?}");
    assert!(lines[1].starts_with("HTTP/1.1 429"), "the budget of 3 was spent across the restart: {ran:#?}");
    assert!(ran.out.contains("\"budget\": \"network.rule[0] ("), "{ran:#?}");
    let seen = up.seen();
    assert_eq!(seen.iter().filter(|l| l.contains("/spend/")).count(), 3, "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains("/spend/after-1")), "{seen:?}");
    assert_eq!(budgets(&sb)[0]["requests_spent"].as_u64(), Some(3));
}

/// A profile with two budgeted rules on the test upstream, in the order given.
fn two_rules(sb: &Sandboxed, p: u16, spend_first: bool, spend_per: &str) -> String {
    let spend = format!(
        "[[network.rule]]\nhost = \"api.test.example\"\nport = {p}\npath = \"/spend/*\"\naction = \"allow\"\n\
         budget = {{ requests = 3, per = \"{spend_per}\" }}\n"
    );
    let other = format!(
        "[[network.rule]]\nhost = \"api.test.example\"\nport = {p}\npath = \"/other/*\"\naction = \"allow\"\n\
         budget = {{ requests = 5, per = \"day\" }}\n"
    );
    let (a, b) = if spend_first { (&spend, &other) } else { (&other, &spend) };
    format!(
        "[agent]\nworkspaces = [{{ path = \"{ws}\", mode = \"overlay\" }}]\n\n[network]\ndefault = \"deny\"\n\n{a}\n{b}",
        ws = sb.ws.display()
    )
}

#[test]
#[ignore = "needs root"]
fn a_reload_that_reorders_rules_and_changes_per_gives_no_spend_back() {
    assert_root();
    let mut sb = Sandboxed::new("bdr");
    let up = Upstream::start(None);
    let p = up.port();
    let gvmd = "[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n";
    sb.start(gvmd, &two_rules(&sb, p, true, "month"), &[]);
    let port = p.to_string();
    let ran = sb.run(&["/usr/bin/python3", "-c", AGENT, &port, "2", "before"]);
    assert_eq!(ran.out.matches("HTTP/1.1 200").count(), 2, "{ran:#?}");
    let b = budgets(&sb);
    assert!(b[0]["budget"].as_str().unwrap().starts_with("network.rule[0] ("), "{b}");
    assert_eq!(b[0]["requests_spent"].as_u64(), Some(2), "{b}");

    // The /spend/ rule moves to second place and counts per day instead of per month.
    sb.dirs.write_profile(&sb.profile, &two_rules(&sb, p, false, "day"));
    let out = gvmctl(&sb.dirs, &["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = budgets(&sb);
    let spend = b.as_array().unwrap().iter().find(|x| x["per"] == "day" && x["requests"] == 3).expect("the /spend/ budget");
    assert!(spend["budget"].as_str().unwrap().starts_with("network.rule[1] ("), "{b}");
    assert_eq!(spend["requests_spent"].as_u64(), Some(2), "the month's spend carried into today: {b}");
    let other = b.as_array().unwrap().iter().find(|x| x["requests"] == 5).unwrap();
    assert_eq!(other["requests_spent"].as_u64(), Some(0), "the other rule was not given the moved spend: {b}");

    let ran = sb.run(&["/usr/bin/python3", "-c", AGENT, &port, "2", "after"]);
    let lines: Vec<&str> = ran.out.lines().filter(|l| l.starts_with("HTTP/1.1")).collect();
    assert_eq!(lines.len(), 2, "{ran:#?}");
    assert!(lines[0].starts_with("HTTP/1.1 200"), "{ran:#?}");
    assert!(lines[1].starts_with("HTTP/1.1 429"), "3 spent across the reload: {ran:#?}");
    assert!(ran.out.contains("\"budget\": \"network.rule[1] ("), "{ran:#?}");

    // And across a restart after the change: the counter written last is the one loaded.
    let status = sb.gvmd.take().unwrap().stop();
    assert!(status.success(), "{status}");
    sb.gvmd = Some(Gvmd::start(&sb.dirs));
    let b = budgets(&sb);
    let spend = b.as_array().unwrap().iter().find(|x| x["requests"] == 3).unwrap();
    assert_eq!(spend["requests_spent"].as_u64(), Some(3), "{b}");
    assert!(!up.seen().iter().any(|l| l.contains("/spend/after-1")));
}
