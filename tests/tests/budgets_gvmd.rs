//! Budgets against a real gvmd and a real sandbox: the spend of the current period is
//! kept in `<state>/spend.db` across a gvmd restart, so a restart does not hand an
//! agent a fresh budget; `gvmctl status --json` shows it.
//!
//! Also through a real gvmd (host proxy listeners, no sandbox, no root): LLM token
//! usage priced from gvmd.toml from a local fake LLM, the 80 % notice at a loopback
//! webhook, `[prices]` reloaded.
//!
//! Privileged ones: `#[ignore = "needs root"]`, run with --include-ignored.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    let spend =
        b.as_array().unwrap().iter().find(|x| x["per"] == "day" && x["requests"] == 3).expect("the /spend/ budget");
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

/// A fake OpenAI-compatible API on 127.0.0.1: `POST /v1/chat/completions` answers JSON
/// with `usage` (100 prompt, 200 completion tokens), or an SSE stream whose last chunk
/// carries `usage` (50, 150) when the body asks for `"stream": true`.
struct FakeLlm {
    port: u16,
    calls: Arc<Mutex<Vec<String>>>,
}

impl FakeLlm {
    fn start() -> FakeLlm {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    let Some((head, body)) = read_request(&mut conn) else { return };
                    log.lock().unwrap().push(head.lines().next().unwrap_or("").to_string());
                    let answer = if body.contains("\"stream\": true") {
                        let events = [
                            r#"{"model":"fake-model","choices":[{"delta":{"content":"hel"}}],"usage":null}"#,
                            r#"{"model":"fake-model","choices":[{"delta":{"content":"lo"}}],"usage":null}"#,
                            r#"{"model":"fake-model","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":150}}"#,
                            "[DONE]",
                        ];
                        let text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
                        format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{text}")
                    } else {
                        let json = r#"{"model":"fake-model","choices":[{"message":{"content":"hello"}}],"usage":{"prompt_tokens":100,"completion_tokens":200}}"#;
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                            json.len()
                        )
                    };
                    let _ = conn.write_all(answer.as_bytes());
                });
            }
        });
        FakeLlm { port, calls }
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body: (head, body).
fn read_request(conn: &mut TcpStream) -> Option<(String, String)> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = conn.read(&mut chunk).ok()?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some((head, String::from_utf8_lossy(&buf[end + 4..]).to_string()));
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One chat completion through gvmd's proxy listener: (status, body).
fn chat(proxy: u16, llm: u16, stream: bool) -> (u16, String) {
    let body = format!("{{\"model\": \"fake-model\", \"stream\": {stream}, \"messages\": []}}");
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST http://llm.test.example:{llm}/v1/chat/completions HTTP/1.1\r\nHost: llm.test.example:{llm}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// gvmd.toml with a proxy listener for `profile`, the fake LLM's host, its price and a
/// loopback webhook.
fn llm_gvmd_toml(profile: &str, proxy: u16, hook: u16, input: &str) -> String {
    format!(
        "[gateway.hosts]\n\"llm.test.example\" = [\"127.0.0.1\"]\n\n[gateway.listen]\n{profile} = \"127.0.0.1:{proxy}\"\n\n\
         [notify]\nwebhook = \"http://127.0.0.1:{hook}/hook\"\n\n\
         [prices.\"llm.test.example\"]\n\"fake-model\" = {{ input = {input}, output = 2000.0 }}\n"
    )
}

fn llm_profile(llm: u16) -> String {
    format!(
        "[network]\ndefault = \"deny\"\n\n[[network.rule]]\nhost = \"llm.test.example\"\nport = {llm}\naction = \"allow\"\n\n\
         [budget]\nmoney = 1.0\nper = \"day\"\n"
    )
}

fn money_spent(dirs: &Dirs, profile: &str) -> f64 {
    let out = gvmctl(dirs, &["status", profile, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &s["profiles"][0]["budgets"][0];
    assert_eq!((b["budget"].as_str(), b["money"].as_f64()), (Some("profile"), Some(1.0)), "{s}");
    b["money_spent"].as_f64().unwrap()
}

/// Waits until `gvmctl status P --json` shows `want` spent (usage is charged when the
/// response ends, just after the agent got it).
fn wait_spent(dirs: &Dirs, profile: &str, want: f64) {
    let mut got = 0.0;
    for _ in 0..100 {
        got = money_spent(dirs, profile);
        if (got - want).abs() < 1e-9 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("spent {got}, expected {want}");
}

/// Token usage priced from gvmd.toml, read from JSON and SSE answers of a local fake
/// LLM, spends a money budget: 80 % crossed → journald line and the webhook; spent →
/// 429 naming the budget, and the upstream hears nothing more.
#[test]
fn llm_token_usage_spends_the_budget_and_80_percent_reaches_the_webhook() {
    let dirs = Dirs::new();
    let profile = common::agent::unique_profile("llm");
    let (llm, hook, proxy) = (FakeLlm::start(), Webhook::start(), free_port());
    std::fs::create_dir_all(&dirs.config).unwrap();
    std::fs::write(dirs.config.join("gvmd.toml"), llm_gvmd_toml(&profile, proxy, hook.port, "1000.0")).unwrap();
    dirs.write_profile(&profile, &llm_profile(llm.port));
    let gvmd = Gvmd::start(&dirs);

    // JSON: 100 × 1000 + 200 × 2000 per million = 0.5.
    let (status, body) = chat(proxy, llm.port, false);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"prompt_tokens\":100"), "the answer reaches the agent unchanged: {body}");
    wait_spent(&dirs, &profile, 0.5);
    assert!(hook.got.lock().unwrap().is_empty(), "50 % is no notice");

    // SSE: 50 × 1000 + 150 × 2000 per million = 0.35 → 0.85, past 80 %.
    let (status, body) = chat(proxy, llm.port, true);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[DONE]"), "{body}");
    wait_spent(&dirs, &profile, 0.85);
    wait_for(Duration::from_secs(10), "the webhook's notice", || !hook.got.lock().unwrap().is_empty());
    let notice = hook.got.lock().unwrap()[0].clone();
    assert_eq!(
        (notice["kind"].as_str(), notice["profile"].as_str()),
        (Some("budget"), Some(profile.as_str())),
        "{notice}"
    );
    assert_eq!(
        (notice["of"].as_str(), notice["spent"].as_f64(), notice["limit"].as_f64()),
        (Some("money"), Some(0.85), Some(1.0))
    );
    let log = gvmd.log_text();
    assert!(
        log.contains(&format!("budget profile of profile {profile} is at 0.85 of 1 money per day (80 % crossed)")),
        "{log}"
    );

    // 0.85 < 1.0: one more is forwarded and takes the spend past the limit; the next is refused.
    assert_eq!(chat(proxy, llm.port, false).0, 200);
    wait_spent(&dirs, &profile, 1.35);
    let (status, body) = chat(proxy, llm.port, true);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("\"budget\": \"profile\"") && body.contains("resets_at"), "{body}");
    assert_eq!(llm.calls.lock().unwrap().len(), 3, "the refused request never reached the LLM");
    assert_eq!(hook.got.lock().unwrap().len(), 1, "80 % is announced once");
}

/// `[prices]` is read again by `gvmctl reload`; a bad price is refused with file:line
/// and the fix, and the prices in force stay.
#[test]
fn prices_are_reloaded_and_a_bad_price_keeps_the_last_good_ones() {
    let dirs = Dirs::new();
    let profile = common::agent::unique_profile("prc");
    let (llm, hook, proxy) = (FakeLlm::start(), Webhook::start(), free_port());
    std::fs::create_dir_all(&dirs.config).unwrap();
    let toml = dirs.config.join("gvmd.toml");
    std::fs::write(&toml, llm_gvmd_toml(&profile, proxy, hook.port, "1000.0")).unwrap();
    dirs.write_profile(&profile, &llm_profile(llm.port));
    let _gvmd = Gvmd::start(&dirs);
    assert_eq!(chat(proxy, llm.port, false).0, 200);
    wait_spent(&dirs, &profile, 0.5);

    // Input tokens now cost nothing: 200 × 2000 per million = 0.4.
    std::fs::write(&toml, llm_gvmd_toml(&profile, proxy, hook.port, "0.0")).unwrap();
    let out = gvmctl(&dirs, &["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(chat(proxy, llm.port, false).0, 200);
    wait_spent(&dirs, &profile, 0.9);

    // A negative price: refused, exit 1, file:line and the fix; 0.0 stays in force.
    std::fs::write(&toml, llm_gvmd_toml(&profile, proxy, hook.port, "-5.0")).unwrap();
    let out = gvmctl(&dirs, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:11:2: `prices.\"llm.test.example\".\"fake-model\"`: a price must be a number of 0 or more",
            toml.display()
        )),
        "{err}"
    );
    assert!(err.contains("write { input = 2.5, output = 10.0 }") && err.contains("[prices] in force stay"), "{err}");
    let refused = events_json(&dirs).into_iter().filter(|e| e["kind"] == "config_refused").count();
    assert_eq!(refused, 1);
    // 0.9 + 0.4 > 1.0 is only known after: forwarded at the kept price of 0.4.
    assert_eq!(chat(proxy, llm.port, false).0, 200);
    wait_spent(&dirs, &profile, 1.3);
}
