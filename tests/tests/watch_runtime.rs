//! `gvmctl watch P on|off [--for D]` against a real gvmd and real sandboxes: one profile
//! switched to watch mode lets its agent's requests through (recorded as `watch`) while
//! another profile of the same gvmd stays enforced; the sandbox itself stays enforced
//! (`deny_read`); `off` and the end of `--for` bring enforcement back; every switch is
//! audited and `gvmctl status` shows the time left.
//!
//! Privileged: needs root (`#[ignore = "needs root"]`, run with --include-ignored).

mod common;

use std::time::Duration;

use common::agent::*;
use common::*;

fn profile(ws: &std::path::Path) -> String {
    format!(
        "[agent]\nworkspaces = [{{ path = \"{}\", mode = \"overlay\" }}]\n\n[network]\ndefault = \"deny\"\n\n[files]\ndeny_read = [\"**/.env\"]\n",
        ws.display()
    )
}

/// The HTTP status the agent of `profile` gets for GET `path` on the test upstream.
fn status_of(sb: &Sandboxed, profile: &str, port: u16, path: &str) -> String {
    let args = [
        "run",
        "--profile",
        profile,
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://api.test.example:{port}{path}"),
    ];
    let ran = output_within(gvmctl_cmd(&sb.dirs, &args), Duration::from_secs(60));
    ran.out.trim().to_string()
}

#[test]
#[ignore = "needs root"]
fn one_profile_watches_at_run_time_while_another_stays_enforced() {
    assert_root();
    let up = Upstream::start(None);
    let mut sb = Sandboxed::new("wa");
    std::fs::write(sb.ws.join(".env"), "SECRET=1\n").unwrap();
    let other = format!("{}q", sb.profile);
    sb.leftovers.users.push(format!("gvm-{other}"));
    sb.dirs.write_profile(&other, &profile(&sb.ws));
    sb.start("[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n", &profile(&sb.ws), &[]);
    let p = sb.profile.clone();
    let port = up.port();

    assert_eq!(status_of(&sb, &p, port, "/before"), "403", "enforced by default");
    let o = gvmctl(&sb.dirs, &["watch", &p, "on", "--for", "1h"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("watching until"), "{}", stdout(&o));
    let status = stdout(&gvmctl(&sb.dirs, &["status", &p]));
    assert!(status.contains("WATCHING for 59m") || status.contains("WATCHING for 1h"), "{status}");
    let json: serde_json::Value = serde_json::from_slice(&gvmctl(&sb.dirs, &["status", "--json"]).stdout).unwrap();
    let mine = json["profiles"].as_array().unwrap().iter().find(|x| x["name"] == p.as_str()).unwrap().clone();
    assert_eq!(mine["mode"], "watch");
    assert_eq!(mine["watch"]["file_mode"], "enforce");
    let theirs = json["profiles"].as_array().unwrap().iter().find(|x| x["name"] == other.as_str()).unwrap().clone();
    assert_eq!(theirs["mode"], "enforce");

    assert_eq!(status_of(&sb, &p, port, "/watched"), "200", "watch lets the request through");
    assert_eq!(status_of(&sb, &other, port, "/other"), "403", "the other profile stays enforced");
    assert_eq!(up.seen(), vec!["GET /watched HTTP/1.1"]);
    let http = sb.events("http");
    assert!(
        http.iter().any(|e| e["decision"] == "watch" && e["details"].to_string().contains("/watched")),
        "{http:#?}"
    );
    // Watching is about the network only: the sandbox keeps its masks.
    let ran = sb.sh(&format!("cat {}/.env || echo masked", sb.ws.display()));
    assert!(!ran.out.contains("SECRET"), "{ran:#?}");

    let o = gvmctl(&sb.dirs, &["watch", &p, "off"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(status_of(&sb, &p, port, "/after-off"), "403");

    // --for ends by itself.
    let o = gvmctl(&sb.dirs, &["watch", &p, "on", "--for", "2s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(status_of(&sb, &p, port, "/timed"), "200");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status_of(&sb, &p, port, "/expired"), "403", "the switch ended with its --for");
    assert_eq!(up.seen(), vec!["GET /watched HTTP/1.1", "GET /timed HTTP/1.1"]);

    let on = sb.events("watch_on");
    let off = sb.events("watch_off");
    assert_eq!(on.len(), 2, "{on:#?}");
    assert!(off.iter().any(|e| e["details"]["by"] == "timer"), "{off:#?}");
    assert!(off.iter().any(|e| e["details"]["by"] != "timer"), "{off:#?}");

    // Bad input: an unknown profile, --for with off, a bad duration.
    let o = gvmctl(&sb.dirs, &["watch", "nosuch", "on"]);
    assert!(!o.status.success() && stderr(&o).contains("nosuch"), "{}", stderr(&o));
    let o = gvmctl(&sb.dirs, &["watch", &p, "off", "--for", "1h"]);
    assert!(!o.status.success() && stderr(&o).contains("--for"), "{}", stderr(&o));
    let o = gvmctl(&sb.dirs, &["watch", &p, "on", "--for", "soon"]);
    assert!(!o.status.success() && stderr(&o).contains("soon"), "{}", stderr(&o));
}
