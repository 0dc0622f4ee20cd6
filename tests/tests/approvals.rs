//! The approval queue inside a real gvmd: held requests get durable ids, are approved,
//! denied or left to time out (each audited with its id), `--always` writes a rule the
//! next request passes by, a request held across a gvmd crash expires audited and is
//! never forwarded, and the `[notify]` webhook gets a notice naming the command (or
//! its failure shows in `gvmctl status`).
//!
//! Hermetic, no root: the proxy is a host listener from `[gateway.listen]`, the
//! upstream and the webhook receiver are local servers on 127.0.0.1.

mod common;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::agent::Upstream;
use common::*;

/// One request through the proxy, absolute-form, with a JSON body; (status, body).
fn through_proxy(proxy: u16, method: &str, url: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", proxy))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let host = url.split('/').nth(2).unwrap_or("");
    write!(
        s,
        "{method} {url} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

const PROFILE: &str = r#"# invoices: the billing agent (this comment must survive --always)
[network]
default = "deny"
hold_timeout = "4s"

# Charges wait for a human.
[[network.rule]]
host = "api.test.example"
port = PORT
path = "/charges"
action = "hold"   # any method
"#;

fn setup(dirs: &Dirs, upstream: &Upstream, proxy: u16, notify: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(&dirs.config).unwrap();
    std::fs::write(
        dirs.config.join("gvmd.toml"),
        format!("[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n\n[gateway.listen]\ninvoices = \"127.0.0.1:{proxy}\"\n{notify}"),
    )
    .unwrap();
    dirs.write_profile("invoices", &PROFILE.replace("PORT", &upstream.port().to_string()))
}

fn pending(dirs: &Dirs) -> Vec<serde_json::Value> {
    let out = gvmctl(dirs, &["approvals", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until an item not in `seen` is pending; returns it.
fn next_pending(dirs: &Dirs, seen: &[u64]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = pending(dirs).into_iter().find(|a| !seen.contains(&a["id"].as_u64().unwrap())) {
            return a;
        }
        assert!(Instant::now() < deadline, "nothing new was held within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hold(proxy: u16, url: String) -> std::thread::JoinHandle<std::io::Result<(u16, String)>> {
    std::thread::spawn(move || through_proxy(proxy, "POST", &url, r#"{"amount": 12}"#))
}

#[test]
fn held_requests_are_approved_denied_and_time_out_each_audited_with_its_id_and_notified() {
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let hook = Webhook::start();
    let proxy = free_port();
    setup(
        &dirs,
        &upstream,
        proxy,
        &format!("\n[notify]\nwebhook = \"http://127.0.0.1:{}/hook\"\ntopic = \"gvm-test\"\n", hook.port),
    );
    let gvmd = Gvmd::start(&dirs);
    let url = format!("http://api.test.example:{}/charges", upstream.port());

    // Approved.
    let waiting = hold(proxy, url.clone());
    let a = next_pending(&dirs, &[]);
    let approved = a["id"].as_u64().unwrap();
    assert_eq!((a["kind"].as_str(), a["method"].as_str()), (Some("request"), Some("POST")));
    assert_eq!(a["url"], url.as_str());
    assert_eq!(a["body"], "14 B application/json", "what is known of the body at hold time: {a:#}");
    assert_eq!(a["command"], format!("gvmctl approve {approved}"));
    let table = stdout(&gvmctl(&dirs, &["approvals"]));
    assert!(
        table.contains("ID") && table.contains("PROFILE") && table.contains("AGE") && table.contains("WHAT"),
        "{table}"
    );
    assert!(table.contains(&format!("POST {url} (14 B application/json)")), "{table}");
    let status: serde_json::Value = serde_json::from_slice(&gvmctl(&dirs, &["status", "--json"]).stdout).unwrap();
    assert_eq!(status["profiles"][0]["pending_requests"], 1, "{status:#}");
    let out = gvmctl(&dirs, &["approve", &approved.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("request {approved} approved"));
    assert_eq!(waiting.join().unwrap().unwrap(), (200, "ok /charges".to_string()));

    // Denied.
    let waiting = hold(proxy, url.clone());
    let denied = next_pending(&dirs, &[approved])["id"].as_u64().unwrap();
    assert!(denied > approved);
    let out = gvmctl(&dirs, &["deny", &denied.to_string(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["outcome"], "denied");
    let (status, body) = waiting.join().unwrap().unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&format!("held request {denied} was denied")), "{body}");

    // Nobody answers: denied at the deadline, and the item ends as expired.
    let waiting = hold(proxy, url.clone());
    let timed_out = next_pending(&dirs, &[approved, denied])["id"].as_u64().unwrap();
    let (status, body) = waiting.join().unwrap().unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&format!("held request {timed_out} was not approved within 4 s")), "{body}");
    std::thread::sleep(Duration::from_millis(200));
    let out = gvmctl(&dirs, &["approve", &timed_out.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("approval {timed_out} already ended: expired by timeout at")),
        "{}",
        stderr(&out)
    );
    let out = gvmctl(&dirs, &["approve", &approved.to_string()]);
    assert!(stderr(&out).contains(&format!("approval {approved} already ended: approved by")), "{}", stderr(&out));
    let out = gvmctl(&dirs, &["deny", "999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no approval has id 999") && stderr(&out).contains("gvmctl approvals"),
        "{}",
        stderr(&out)
    );
    assert_eq!(upstream.seen.lock().unwrap().len(), 1, "only the approved request went out");
    assert!(pending(&dirs).is_empty());

    // Audit: the hold, the answer (who, with the id) and the outcome of each.
    let events = events_json(&dirs);
    let with_id = |id: u64, kind: &str, decision: &str| {
        events.iter().any(|e| e["kind"] == kind && e["decision"] == decision && e["details"]["hold_id"] == id)
    };
    for id in [approved, denied, timed_out] {
        assert!(with_id(id, "http", "hold"), "hold event of {id}");
    }
    assert!(with_id(approved, "hold_answered", "allow"));
    // The forwarded request's own event carries the id and how the hold ended.
    assert!(events
        .iter()
        .any(|e| e["kind"] == "http" && e["details"]["hold_id"] == approved && e["details"]["hold"] == "approved"));
    assert!(with_id(denied, "hold_answered", "deny") && with_id(denied, "http", "deny"));
    assert!(with_id(timed_out, "http", "deny"));
    assert!(events.iter().any(|e| e["details"]["hold_id"] == timed_out && e["details"]["hold"] == "timeout"));
    let answered: Vec<_> = events.iter().filter(|e| e["kind"] == "hold_answered").collect();
    assert_eq!(answered.len(), 2);
    assert_eq!(answered[0]["details"]["by_uid"], uid());

    // Each new item reached the webhook with the commands, and gvmd's log.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.got.lock().unwrap().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = hook.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:#?}");
    let first = got.iter().find(|n| n["id"] == approved).expect("a notice for the first hold");
    assert_eq!(first["approve"], format!("gvmctl approve {approved}"));
    assert_eq!(first["deny"], format!("gvmctl deny {approved}"));
    assert_eq!(
        (first["topic"].as_str(), first["profile"].as_str(), first["kind"].as_str()),
        (Some("gvm-test"), Some("invoices"), Some("request"))
    );
    assert!(first["message"].as_str().unwrap().contains(&format!("gvmctl approve {approved}")), "{first:#}");
    assert!(first["text"].as_str().unwrap().contains(&url), "{first:#}");
    assert!(first["expires_at"].is_string());
    let status: serde_json::Value = serde_json::from_slice(&gvmctl(&dirs, &["status", "--json"]).stdout).unwrap();
    assert_eq!(status["notify"]["sent"], 3, "{status:#}");
    assert!(gvmd.log_text().contains(&format!("approve with `gvmctl approve {timed_out}`")), "{}", gvmd.log_text());
    let out = gvmctl(&dirs, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    drop(gvmd);
}

#[test]
fn approve_always_writes_a_rule_the_next_request_passes_by() {
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let proxy = free_port();
    let file = setup(&dirs, &upstream, proxy, "");
    let before = std::fs::read_to_string(&file).unwrap();
    let gvmd = Gvmd::start(&dirs);
    let url = format!("http://api.test.example:{}/charges?customer=7", upstream.port());

    let waiting = hold(proxy, url.clone());
    let id = next_pending(&dirs, &[])["id"].as_u64().unwrap();
    let out = gvmctl(&dirs, &["approve", &id.to_string(), "--always"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("request {id} approved")) && text.contains("rule added to"), "{text}");
    assert!(text.contains("methods = [\"POST\"]") && text.contains("path = \"/charges\""), "{text}");
    assert!(text.contains(&format!("port = {}", upstream.port())) && text.contains("action = \"allow\""), "{text}");
    assert_eq!(waiting.join().unwrap().unwrap().0, 200);

    let after = std::fs::read_to_string(&file).unwrap();
    assert!(after.starts_with(&before), "the file keeps its text and comments:\n{after}");
    assert!(after.contains("# Written by `gvmctl approve --always`"), "{after}");
    assert_eq!(std::fs::read_to_string(file.with_extension("toml.bak")).unwrap(), before);
    let check = gvmctl(&dirs, &["policy", "check", file.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stdout(&check));

    // The same request again passes without waiting; another method still waits.
    let t = Instant::now();
    let (status, body) = through_proxy(proxy, "POST", &url, "{}").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok /charges?customer=7"));
    assert!(t.elapsed() < Duration::from_secs(2));
    let put = std::thread::spawn({
        let url = url.clone();
        move || through_proxy(proxy, "PUT", &url, "{}")
    });
    let next = next_pending(&dirs, &[id]);
    assert_eq!(next["method"], "PUT");
    let out = gvmctl(&dirs, &["deny", &next["id"].to_string(), "--always"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(put.join().unwrap().unwrap().0, 403);
    let (status, _) = through_proxy(proxy, "PUT", &url, "{}").unwrap();
    assert_eq!(status, 403, "the deny rule answers at once");
    assert!(pending(&dirs).is_empty());
    let events = events_json(&dirs);
    assert_eq!(events.iter().filter(|e| e["kind"] == "rule_added").count(), 2);
    // Each version the rules brought is kept and named: start, then two --always.
    let history = gvmctl(&dirs, &["policy", "history", "invoices", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let hows: Vec<&str> = history["entries"].as_array().unwrap().iter().map(|e| e["how"].as_str().unwrap()).collect();
    assert_eq!(hows, ["start", "always", "always"], "{history}");
    let now = gvm_policy::version_of(&std::fs::read(&file).unwrap());
    assert_eq!(history["in_force"], now.as_str());
    let put = events.iter().rev().find(|e| e["kind"] == "http" && e["details"]["method"] == "PUT").unwrap();
    assert_eq!(put["details"]["policy_version"], now.as_str(), "{put}");
    drop(gvmd);
}

#[test]
fn a_request_held_across_a_gvmd_crash_expires_audited_and_is_never_forwarded() {
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let proxy = free_port();
    setup(&dirs, &upstream, proxy, "");
    let gvmd = Gvmd::start(&dirs);
    let url = format!("http://api.test.example:{}/charges", upstream.port());

    let waiting = hold(proxy, url.clone());
    let id = next_pending(&dirs, &[])["id"].as_u64().unwrap();
    gvmd.kill();
    assert!(waiting.join().unwrap().map(|(s, _)| s != 200).unwrap_or(true), "the held request must not succeed");

    let gvmd = Gvmd::start(&dirs);
    assert!(pending(&dirs).is_empty(), "nothing of the old gvmd waits");
    let events = events_json(&dirs);
    let expired: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "http" && e["decision"] == "deny" && e["details"]["hold_id"] == id)
        .collect();
    assert_eq!(expired.len(), 1, "{events:#?}");
    assert_eq!(expired[0]["details"]["reason"], "gvmd restarted while the request was held");
    assert_eq!(expired[0]["details"]["method"], "POST");
    assert_eq!(expired[0]["details"]["url"], url.as_str());
    let out = gvmctl(&dirs, &["approve", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("approval {id} already ended: expired by gvmd restart")),
        "{}",
        stderr(&out)
    );

    // Ids are never reused: the next hold gets a new one.
    let waiting = hold(proxy, url);
    let next = next_pending(&dirs, &[])["id"].as_u64().unwrap();
    assert!(next > id, "{next} after {id}");
    let out = gvmctl(&dirs, &["deny", &next.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(waiting.join().unwrap().unwrap().0, 403);
    assert!(upstream.seen.lock().unwrap().is_empty(), "the upstream saw: {:?}", upstream.seen.lock().unwrap());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dirs.state.join("approvals.db")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    drop(gvmd);
}

#[test]
fn a_failing_webhook_shows_in_status_and_the_request_still_waits() {
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let proxy = free_port();
    let closed = free_port();
    setup(&dirs, &upstream, proxy, &format!("\n[notify]\nwebhook = \"http://127.0.0.1:{closed}/hook?token=secret\"\n"));
    let gvmd = Gvmd::start(&dirs);
    let url = format!("http://api.test.example:{}/charges", upstream.port());
    let waiting = hold(proxy, url);
    let id = next_pending(&dirs, &[])["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let notify = loop {
        let status: serde_json::Value = serde_json::from_slice(&gvmctl(&dirs, &["status", "--json"]).stdout).unwrap();
        if status["notify"]["last_error"].is_string() {
            break status["notify"].clone();
        }
        assert!(Instant::now() < deadline, "no webhook error in status: {status:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(notify["webhook"], format!("http://127.0.0.1:{closed}/hook"), "the query (a token) is not shown");
    assert!(notify["last_error"].as_str().unwrap().contains("cannot connect"), "{notify:#}");
    assert_eq!(notify["sent"], 0);
    let text = stdout(&gvmctl(&dirs, &["status"]));
    assert!(
        text.contains("notify: webhook") && text.contains("no success yet") && text.contains("last error at"),
        "{text}"
    );
    assert!(text.contains("Waiting for approval (invoices: 1 requests, 0 files)"), "{text}");
    let out = gvmctl(&dirs, &["approve", &id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(waiting.join().unwrap().unwrap().0, 200);

    // After 5 tries (1 + 2 + 4 + 8 s apart) the notice counts as failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: serde_json::Value = serde_json::from_slice(&gvmctl(&dirs, &["status", "--json"]).stdout).unwrap();
        if status["notify"]["failures"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the failure was not counted: {status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = stdout(&gvmctl(&dirs, &["status"]));
    assert!(text.contains("0 sent, 1 FAILED, 0 dropped"), "{text}");
    assert!(gvmd.log_text().contains("not delivered after 5 tries"), "{}", gvmd.log_text());
    drop(gvmd);
}

#[test]
fn the_webhook_speaks_https_verified_against_the_configured_roots() {
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let ca = common::agent::TestCa::new(&["localhost"]);
    let hook = Upstream::start(Some(ca.server.clone()));
    std::fs::create_dir_all(&dirs.config).unwrap();
    let roots = dirs.config.join("hook-ca.pem");
    std::fs::write(&roots, &ca.ca_pem).unwrap();
    let proxy = free_port();
    setup(
        &dirs,
        &upstream,
        proxy,
        &format!(
            "\n[notify]\nwebhook = \"https://localhost:{}/hook\"\nheaders = {{ Authorization = \"Bearer t0k\" }}\n",
            hook.port()
        ),
    );
    // extra_roots is under [gateway], which setup already wrote: append to that table.
    let toml = std::fs::read_to_string(dirs.config.join("gvmd.toml")).unwrap();
    let toml = toml.replacen(
        "[gateway.hosts]",
        &format!("[gateway]\nextra_roots = [\"{}\"]\n\n[gateway.hosts]", roots.display()),
        1,
    );
    std::fs::write(dirs.config.join("gvmd.toml"), toml).unwrap();
    let gvmd = Gvmd::start(&dirs);
    let waiting = hold(proxy, format!("http://api.test.example:{}/charges", upstream.port()));
    let id = next_pending(&dirs, &[])["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no HTTPS notice arrived:\n{}", gvmd.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hook.seen.lock().unwrap()[0], "POST /hook HTTP/1.1");
    // The hook has the request before gvmd has its answer: `sent` counts the answer.
    loop {
        let status: serde_json::Value = serde_json::from_slice(&gvmctl(&dirs, &["status", "--json"]).stdout).unwrap();
        if status["notify"]["sent"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the notice was not counted as sent: {status:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gvmctl(&dirs, &["deny", &id.to_string()]).status.success());
    assert_eq!(waiting.join().unwrap().unwrap().0, 403);
    drop(gvmd);
}

#[test]
fn a_bad_notify_section_stops_gvmd_with_file_line_and_fix() {
    let dirs = Dirs::new();
    std::fs::create_dir_all(&dirs.config).unwrap();
    std::fs::write(dirs.config.join("gvmd.toml"), "[notify]\nwebhook = \"http://hooks.example/x\"\n").unwrap();
    let out = std::process::Command::new(bin("gvmd"))
        .args(["--foreground", "--config-dir"])
        .arg(&dirs.config)
        .arg("--state-dir")
        .arg(&dirs.state)
        .arg("--runtime-dir")
        .arg(&dirs.runtime)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("gvmd.toml:2:1") && err.contains("notify.webhook") && err.contains("loopback"), "{err}");
}

#[test]
fn approvals_follow_prints_each_new_item_once_and_those_that_leave() {
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let proxy = free_port();
    setup(&dirs, &upstream, proxy, "");
    let gvmd = Gvmd::start(&dirs);
    let url = format!("http://api.test.example:{}/charges", upstream.port());
    let mut follow =
        gvmctl_cmd(&dirs, &["approvals", "--follow", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let _follow = Kill(follow);
    let waiting = hold(proxy, url.clone());
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["event"], "waiting");
    assert_eq!(first["url"], url.as_str());
    let id = first["id"].as_u64().unwrap();
    // Still waiting for 1.5 s: printed once only.
    std::thread::sleep(Duration::from_millis(1500));
    let out = gvmctl(&dirs, &["approve", &id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(waiting.join().unwrap().unwrap().0, 200);
    let next: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!((next["event"].as_str(), next["id"].as_u64()), (Some("left"), Some(id)), "{next}");
    drop(gvmd);
}

/// Under a real journald: the line for a new item is a NOTICE (priority 5) with the
/// command and the GVM_PROFILE / GVM_APPROVAL_ID fields.
#[test]
#[ignore = "needs root"]
fn a_new_item_is_a_journald_notice_with_the_command_and_fields() {
    assert_root();
    let bin_dir = bin("gvmd").parent().unwrap().to_path_buf();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let sd = common::systemd::Systemd::boot(&[&bin_dir, &repo.join("units")]);
    let unit = std::fs::read_to_string(repo.join("units/gvmd.service"))
        .unwrap()
        .replace("/usr/local/bin/gvmd", &bin("gvmd").display().to_string());
    std::fs::write(sd.root().join("etc/systemd/system/gvmd.service"), unit).unwrap();
    std::fs::create_dir_all(sd.root().join("etc/gvm/profiles")).unwrap();
    std::fs::write(
        sd.root().join("etc/gvm/gvmd.toml"),
        "[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n[gateway.listen]\ninvoices = \"127.0.0.1:3999\"\n",
    )
    .unwrap();
    std::fs::write(
        sd.root().join("etc/gvm/profiles/invoices.toml"),
        "[network]\ndefault = \"deny\"\nhold_timeout = \"30s\"\n[[network.rule]]\nhost = \"api.test.example\"\naction = \"hold\"\n",
    )
    .unwrap();
    sd.sh("systemctl daemon-reload && systemctl start gvmd.service");
    sd.sh("curl -s -m 20 -x http://127.0.0.1:3999 -X POST http://api.test.example/v1/x >/dev/null 2>&1 &");
    let line = sd.wait_for(
        "journalctl -u gvmd.service GVM_APPROVAL_ID=1 -o json --no-pager",
        "the approval's journal entry",
        Duration::from_secs(15),
        |t| t.contains("gvmctl approve 1"),
    );
    let entry: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(entry["PRIORITY"], "5", "{entry:#}");
    assert_eq!(entry["GVM_PROFILE"], "invoices");
    assert!(entry["MESSAGE"].as_str().unwrap().contains("approve with `gvmctl approve 1`"), "{entry:#}");
    let gvmctl = bin("gvmctl").display().to_string();
    sd.sh(&format!("{gvmctl} deny 1"));
    sd.sh("systemctl stop gvmd.service");
}
