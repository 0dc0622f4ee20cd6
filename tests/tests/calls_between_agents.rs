//! Agents calling agents through a real gvmd (root): B serves a port inside its own
//! sandbox (`[agent] serve`); A reaches it as `http://agent.B:PORT` and
//! `https://agent.B:PORT`, by its proxy and by the transparent path (gvmd's DNS), because
//! A's rules allow `agent.B` *and* B's `[ingress]` allows A; C's rules allow `agent.B`
//! but B's ingress refuses C (403 naming the rule); D has no rule for `agent.B` (403 by
//! D's own default, B never asked). The audit log shows both sides of every call.

mod common;
use std::time::Duration;

use common::agent::{output_within, unique_profile, wait_for, Leftovers, Ran};
use common::*;

/// B's server: answers every request with what it saw, so the caller can tell it
/// really reached B (and what Host and path arrived).
const SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n).decode()
        text = f"B answers {self.command} {self.path} host={self.headers.get('host')} body={body}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)
    do_GET = do_POST = answer
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

const PORT: u16 = 8080;

fn run(dirs: &Dirs, profile: &str, script: &str) -> Ran {
    let cmd = gvmctl_cmd(dirs, &["run", "--profile", profile, "--", "sh", "-c", script]);
    output_within(cmd, Duration::from_secs(60))
}

fn events(dirs: &Dirs, profile: &str, kind: &str) -> Vec<serde_json::Value> {
    common::events_json(dirs).into_iter().filter(|e| e["profile"] == profile && e["kind"] == kind).collect()
}

#[test]
#[ignore = "needs root"]
fn a_calls_b_b_refuses_c_and_d_has_no_rule_both_sides_audited() {
    assert_root();
    let dirs = Dirs::new();
    let (a, b, c, d) = (unique_profile("ca"), unique_profile("cb"), unique_profile("cc"), unique_profile("cd"));
    let mut left = Leftovers::default();
    left.users = [&a, &b, &c, &d].iter().map(|p| format!("gvm-{p}")).collect();
    let caller = format!("[[network.rule]]\nhost = \"agent.{b}\"\nport = {PORT}\naction = \"allow\"\n");
    dirs.write_profile(&a, &caller);
    dirs.write_profile(&c, &caller);
    dirs.write_profile(&d, "[network]\ndefault = \"deny\"\n");
    let b_file = dirs.write_profile(
        &b,
        &format!(
            r#"[agent]
command = ["/usr/bin/python3", "-c", {server:?}, "{PORT}"]
serve = [{PORT}]

[[ingress.allow]]
from = "{a}"
port = {PORT}
methods = ["POST"]
path = "/tasks/**"

[[ingress.allow]]
from = "{d}"

[[ingress.deny]]
from = "{c}"
"#,
            server = SERVER
        ),
    );
    let gvmd = Gvmd::start(&dirs);
    let out = gvmctl(&dirs, &["start", &b]);
    assert!(out.status.success(), "{}", stderr(&out));
    // B's server listens inside B's netns (nothing on the host's loopback).
    let netns = dirs.runtime.join("netns").join(&b);
    wait_for(Duration::from_secs(20), "B's server to listen in its netns", || {
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["ss", "-Hltn", &format!("sport = :{PORT}")])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    });
    let url = format!("http://agent.{b}:{PORT}");

    // A, through its proxy, plain and HTTPS (gvm's leaf for agent.B), and through the
    // transparent path (gvmd's DNS answers agent.B, nft redirects the connection).
    let ran = run(
        &dirs,
        &a,
        &format!(
            "curl -sS -X POST -d hello {url}/tasks/1; \
             curl -sS -X POST -d tls https://agent.{b}:{PORT}/tasks/2; \
             curl -sS --noproxy '*' -X POST -d direct {url}/tasks/3; \
             curl -sS --noproxy '*' -X POST -d tlsdirect https://agent.{b}:{PORT}/tasks/6; \
             curl -sS -w ' status=%{{http_code}}' {url}/tasks/4"
        ),
    );
    let host = format!("host=agent.{b}:{PORT}");
    for want in [
        format!("B answers POST /tasks/1 {host} body=hello"),
        format!("B answers POST /tasks/2 {host} body=tls"),
        format!("B answers POST /tasks/3 {host} body=direct"),
        format!("B answers POST /tasks/6 {host} body=tlsdirect"),
    ] {
        assert!(ran.out.contains(&want), "missing {want:?} in {ran:#?}");
    }
    // GET is not in B's [ingress.allow] for A: B's default refuses, and says what to add where.
    assert!(ran.out.contains("status=403"), "{ran:#?}");
    assert!(ran.out.contains(&format!("ingress of {b} (default: nobody may call)")), "{ran:#?}");
    assert!(ran.out.contains(&b_file.display().to_string()), "the fix names B's file: {ran:#?}");

    // C: its own rule allows agent.B, B's [[ingress.deny]] refuses it: 403 naming the rule.
    let ran = run(&dirs, &c, &format!("curl -sS -w ' status=%{{http_code}}' -X POST {url}/tasks/1"));
    assert!(ran.out.contains("status=403"), "{ran:#?}");
    let rule = format!("ingress.deny[0] ({}:15)", b_file.display());
    assert!(ran.out.contains(&rule), "the answer names {rule}: {ran:#?}");

    // D: B would let it in, but D's own rules do not let it out. B is never asked.
    let ran = run(&dirs, &d, &format!("curl -sS -w ' status=%{{http_code}}' {url}/x"));
    assert!(ran.out.contains("status=403") && !ran.out.contains("B answers"), "{ran:#?}");

    // Both sides of every call in the audit log, each naming caller and callee.
    let ingress = events(&dirs, &b, "ingress");
    let from = |who: &str, decision: &str| {
        ingress.iter().filter(|e| e["details"]["caller"] == who && e["decision"] == decision).count()
    };
    assert_eq!(from(&a, "allow"), 4, "{ingress:#?}");
    assert_eq!(from(&a, "deny"), 1, "{ingress:#?}");
    assert_eq!(from(&c, "deny"), 1, "{ingress:#?}");
    assert_eq!(from(&d, "allow") + from(&d, "deny"), 0, "B was asked about D's call: {ingress:#?}");
    assert!(ingress.iter().all(|e| e["details"]["callee"] == b.as_str()), "{ingress:#?}");
    let http = |p: &str| -> Vec<serde_json::Value> {
        events(&dirs, p, "http").into_iter().filter(|e| e["details"]["host"] == format!("agent.{b}")).collect()
    };
    let a_http = http(&a);
    assert_eq!(a_http.iter().filter(|e| e["decision"] == "allow").count(), 4, "{a_http:#?}");
    assert_eq!(a_http.iter().filter(|e| e["decision"] == "deny").count(), 1, "{a_http:#?}");
    assert!(a_http.iter().all(|e| e["details"]["callee"] == b.as_str() && e["details"]["caller"] == a.as_str()));
    let vias: Vec<&str> = a_http.iter().filter_map(|e| e["details"]["via"].as_str()).collect();
    assert!(vias.contains(&"proxy") && vias.contains(&"intercept") && vias.contains(&"transparent"), "{vias:?}");
    let c_http = http(&c);
    assert_eq!(c_http.len(), 1, "{c_http:#?}");
    assert_eq!(
        (c_http[0]["decision"].as_str(), c_http[0]["details"]["callee"].as_str()),
        (Some("deny"), Some(b.as_str()))
    );
    assert_eq!(c_http[0]["rule"], rule.as_str());
    let d_http = http(&d);
    assert_eq!(d_http.len(), 1, "{d_http:#?}");
    assert_eq!(d_http[0]["decision"], "deny");
    assert_eq!(d_http[0]["details"]["callee"], b.as_str(), "{d_http:#?}");
    assert!(d_http[0]["details"]["ingress_rule"].is_null(), "D's own rules refused it before B was asked: {d_http:#?}");

    // The mark that lets gvmd's socket past B's nft rules cannot be set by an agent
    // (SO_MARK needs CAP_NET_ADMIN): A cannot reach B's port around the gateway.
    const MARK: &str = "import socket\ntry:\n    socket.socket().setsockopt(socket.SOL_SOCKET, 36, 0x67766d61)\n    print('mark set')\nexcept PermissionError:\n    print('mark refused')\n";
    let cmd = gvmctl_cmd(&dirs, &["run", "--profile", &a, "--", "/usr/bin/python3", "-c", MARK]);
    let ran = output_within(cmd, Duration::from_secs(60));
    assert!(ran.out.contains("mark refused"), "{ran:#?}");

    let out = gvmctl(&dirs, &["stop", &b]);
    assert!(out.status.success(), "{}", stderr(&out));
    // B stopped: A's call is allowed by both, but nothing can answer it: 502 saying so.
    let ran = run(&dirs, &a, &format!("curl -sS -w ' status=%{{http_code}}' -X POST {url}/tasks/5"));
    assert!(ran.out.contains("status=502"), "{ran:#?}");
    assert!(ran.out.contains(&format!("gvmctl start {b}")), "{ran:#?}");
    drop(gvmd);
    drop(left);
}
