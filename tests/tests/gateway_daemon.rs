//! The gateway inside a real gvmd: requests through a profile's listener are decided
//! by the profile in force, held ones wait for `gvmctl approve`, every decision is in
//! the audit log, and a SIGKILL of gvmd under load loses no answered request's event.
//!
//! The listener is a host listener from `[gateway.listen]` in gvmd.toml (the sandbox
//! puts the same listener inside the agent's netns); the upstream is a local server on
//! 127.0.0.1 that gvmd reaches through a `[gateway.hosts]` override.

mod common;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::agent::Upstream;
use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One request through the proxy, absolute-form; returns (status, body).
fn through_proxy(proxy: u16, method: &str, url: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", proxy))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let host = url.split('/').nth(2).unwrap_or("");
    write!(s, "{method} {url} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn setup(dirs: &Dirs, upstream: &Upstream, proxy: u16) {
    std::fs::create_dir_all(&dirs.config).unwrap();
    std::fs::write(
        dirs.config.join("gvmd.toml"),
        format!("[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n\n[gateway.listen]\ninvoices = \"127.0.0.1:{proxy}\"\n"),
    )
    .unwrap();
    dirs.write_profile(
        "invoices",
        &format!(
            r#"[network]
default = "deny"
hold_timeout = "30s"

[[network.rule]]
host = "api.test.example"
port = {port}
methods = ["GET"]
path = "/ok/**"
action = "allow"

[[network.rule]]
host = "api.test.example"
port = {port}
methods = ["POST"]
path = "/charges"
action = "hold"
"#,
            port = upstream.port()
        ),
    );
}

#[test]
fn allow_deny_and_hold_through_gvmd_are_decided_and_audited() {
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let proxy = free_port();
    setup(&dirs, &upstream, proxy);
    let gvmd = Gvmd::start(&dirs);
    let base = format!("http://api.test.example:{}", upstream.port());

    let (status, body) = through_proxy(proxy, "GET", &format!("{base}/ok/1")).unwrap();
    assert_eq!((status, body.as_str()), (200, "ok /ok/1"));

    let (status, body) = through_proxy(proxy, "GET", &format!("{base}/secret")).unwrap();
    assert_eq!(status, 403, "{body}");
    let denial: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(denial["profile"], "invoices", "{denial:#}");

    // A held request waits until root approves it through gvmctl.
    let held = std::thread::spawn({
        let url = format!("{base}/charges");
        move || through_proxy(proxy, "POST", &url)
    });
    let id = loop {
        let out = gvmctl(&dirs, &["approvals", "--json"]);
        let holds: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(h) = holds.first() {
            assert_eq!(h["method"], "POST");
            break h["id"].as_u64().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let table = stdout(&gvmctl(&dirs, &["approvals"]));
    assert!(table.contains("POST") && table.contains("/charges") && table.contains("gvmctl approve ID"), "{table}");
    let out = gvmctl(&dirs, &["approve", &id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("request {id} approved"));
    let (status, body) = held.join().unwrap().unwrap();
    assert_eq!((status, body.as_str()), (200, "ok /charges"));

    let out = gvmctl(&dirs, &["deny", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("approval {id} already ended: approved by")), "{}", stderr(&out));

    let events = events_json(&dirs);
    let http: Vec<_> = events.iter().filter(|e| e["kind"] == "http").collect();
    let decisions: Vec<(&str, &str)> = http
        .iter()
        .map(|e| (e["details"]["path"].as_str().unwrap_or(""), e["decision"].as_str().unwrap_or("")))
        .collect();
    assert!(decisions.contains(&("/ok/1", "allow")), "{decisions:?}");
    assert!(decisions.contains(&("/secret", "deny")), "{decisions:?}");
    assert!(decisions.contains(&("/charges", "hold")), "{decisions:?}");
    let answered: Vec<_> = events.iter().filter(|e| e["kind"] == "hold_answered").collect();
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0]["details"]["by_uid"], uid(), "the approver is recorded");
    assert_eq!(answered[0]["details"]["outcome"], "approved");
    let out = gvmctl(&dirs, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    drop(gvmd);
}

#[test]
fn sigkill_under_load_loses_no_answered_request() {
    sigkill_under_load(None);
}

/// Both `[audit] sync` settings keep every answered request's event across a SIGKILL
/// (WAL: a commit is in the kernel's hands before the answer goes out).
#[test]
fn sigkill_under_load_loses_no_answered_request_with_sync_full() {
    sigkill_under_load(Some("full"));
}

fn sigkill_under_load(sync: Option<&str>) {
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let proxy = free_port();
    setup(&dirs, &upstream, proxy);
    if let Some(sync) = sync {
        let toml = dirs.config.join("gvmd.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        std::fs::write(&toml, format!("[audit]\nsync = \"{sync}\"\n\n{text}")).unwrap();
    }
    let gvmd = Gvmd::start(&dirs);
    let base = format!("http://api.test.example:{}", upstream.port());

    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let answered = answered.clone();
            let base = base.clone();
            std::thread::spawn(move || {
                for n in 0..100_000 {
                    let path = format!("/ok/{c}/{n}");
                    match through_proxy(proxy, "GET", &format!("{base}{path}")) {
                        Ok((200, _)) => answered.lock().unwrap().push(path),
                        Ok((status, body)) => panic!("unexpected {status}: {body}"),
                        Err(_) => return, // gvmd is gone
                    }
                }
            })
        })
        .collect();
    // Let load build up, then crash gvmd in the middle of it.
    while answered.lock().unwrap().len() < 200 {
        std::thread::sleep(Duration::from_millis(10));
    }
    gvmd.kill();
    for c in clients {
        c.join().unwrap();
    }
    let answered = answered.lock().unwrap().clone();

    let gvmd = Gvmd::start(&dirs);
    let out = gvmctl(&dirs, &["audit", "log", "--json", "--limit", "10000"]);
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let recorded: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e["kind"] == "http" && e["decision"] == "allow")
        .filter_map(|e| e["details"]["path"].as_str())
        .collect();
    let missing: Vec<&String> = answered.iter().filter(|p| !recorded.contains(p.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no event, e.g. {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );
    let out = gvmctl(&dirs, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    eprintln!(
        "sync={}: {} answered requests before SIGKILL, all recorded; {}",
        sync.unwrap_or("default"),
        answered.len(),
        stdout(&out).trim()
    );
    drop(gvmd);
}
