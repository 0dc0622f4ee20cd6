//! OpenClaw for real under gvm: the npm package `openclaw` on Node 24 (the npm package
//! `node@24`), installed from the registry into a cache shared by runs on this machine,
//! configured with the shipped `policies/openclaw.toml`, driven by the fake
//! OpenAI-compatible model server over HTTPS (gvm intercepts it: Node trusts gvm's CA
//! through NODE_EXTRA_CA_CERTS, and swaps the key placeholder for the key). The model asks
//! OpenClaw's own tools to read a file, read `.env`, call an allowed API through the proxy,
//! call a denied one past the proxy, fetch from Node with the proxy variables ignored, and
//! write a report. Asserted as a user sees it: the task finished, the report waits in
//! `gvmctl changes`, the denial is in the audit log with its rule, `.env` and the key never
//! reached the model, and nothing else left the sandbox. Once under `gvmctl run`, once as
//! `gvm-agent@P` in a throwaway systemd. Privileged (root), and needs the npm registry
//! the first time (the install is cached in /var/cache/gvm-test-agents).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::agent::*;
use common::fake_llm::*;
use common::*;
use serde_json::{json, Value};

/// The key gvm injects; the agent only ever holds its placeholder.
const KEY: &str = "sk-test-openclaw-real-key-7f3a9c";
/// A value in the workspace's `.env`, which the profile masks.
const DOTENV_VALUE: &str = "sk-dotenv-must-not-leave-51c2e8";

/// What the test's model asks of OpenClaw (its tools are `read`, `write` and `exec`),
/// one tool call per turn, then the final answer.
fn script(api_port: u16, tls_api_port: u16, node: &Path) -> Vec<Turn> {
    let exec = |what: &str, command: String| {
        Turn::Tools(vec![Call::new(what, named(&["exec"]), move |t| json!({ t.param(&["command"]): command.clone() }))])
    };
    let read = |what: &str, path: &'static str| {
        Turn::Tools(vec![Call::new(what, named(&["read"]), move |t| json!({ t.param(&["path"]): path }))])
    };
    let node = node.display().to_string();
    vec![
        read("read the input", "input.txt"),
        read("read .env", ".env"),
        exec(
            "the key variable OpenClaw holds, and the allowed API through the proxy",
            format!(
                "v=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep '^OPENAI_API_KEY=' | sort -u); \
                 case \"$v\" in OPENAI_API_KEY=gvm-secret-openai-*) [ \"$(echo \"$v\" | wc -l)\" = 1 ] && echo key-is-a-placeholder;; \
                 *) echo key-is-not-a-placeholder;; esac; \
                 curl -s http://api.test.example:{api_port}/ok.txt"
            ),
        ),
        exec(
            "a denied API past the proxy",
            format!("curl -s --noproxy '*' -w ' status=%{{http_code}}' http://api.test.example:{api_port}/admin/users"),
        ),
        exec(
            "Node's fetch with the proxy variables ignored",
            format!(
                "env -u NODE_USE_ENV_PROXY -u HTTP_PROXY -u http_proxy {node} -e \
                 'fetch(\"http://api.test.example:{api_port}/ok.txt\").then(r => r.text()).then(t => console.log(\"node-fetch:\", t))'"
            ),
        ),
        exec(
            "Node trusting gvm's CA through OpenSSL's store instead of NODE_EXTRA_CA_CERTS",
            format!(
                "{node} --use-openssl-ca -e 'fetch(\"https://api.test.example:{tls_api_port}/ok.txt\").then(r => r.text()).then(t => console.log(\"openssl-ca:\", t))'; \
                 env -u NODE_EXTRA_CA_CERTS {node} --use-system-ca -e 'fetch(\"https://api.test.example:{tls_api_port}/ok.txt\").then(r => r.text()).then(t => console.log(\"system-ca:\", t))'"
            ),
        ),
        exec("a child process tree: git", "cd /tmp && git init -q g && cd g && git status --short && echo git-ok".into()),
        Turn::Tools(vec![Call::new("write the report", named(&["write"]), |t| {
            json!({ t.param(&["path"]): "report.md", t.param(&["content"]): "# Widgets\n42 widgets counted.\n" })
        })]),
        Turn::Text("Report written to report.md.".into()),
    ]
}

/// The shipped profile, made to run here: the cached install instead of /opt/openclaw,
/// the test's workspace, secret file and command, the fake model's host bound to the
/// key, and rules for the fake model and the test API.
fn profile(install: &Path, ws: &Path, secrets: &Path, command: &[String], llm_port: u16) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let shipped = std::fs::read_to_string(repo.join("policies/openclaw.toml")).unwrap();
    let mut out = String::new();
    for line in shipped.lines() {
        let line = if line.starts_with("command = ") {
            format!("command = {}", json!(command))
        } else if line.starts_with("workspaces = ") {
            format!("workspaces = [{{ path = \"{}\", mode = \"overlay\" }}]", ws.display())
        } else if line.starts_with("openai = ") {
            line.replace("/etc/gvm/secrets/", &format!("{}/", secrets.display()))
                .replace("hosts = [\"api.openai.com\"]", "hosts = [\"api.openai.com\", \"llm.test.example\"]")
        } else {
            line.replace("/opt/openclaw", &install.display().to_string())
        };
        out.push_str(&line);
        out.push('\n');
        if line == "# --- Model providers: keep the one you use, delete the others. ---------------------" {
            out.push_str(&format!(
                "\n[[network.rule]]\ncomment = \"the test's model\"\nhost = \"llm.test.example\"\nport = {llm_port}\n\
                 methods = [\"POST\"]\npath = \"/v1/chat/completions\"\naction = \"allow\"\n\n\
                 [[network.rule]]\ncomment = \"the test's allowed API (plain and TLS)\"\nhost = \"api.test.example\"\n\
                 methods = [\"GET\"]\npath = \"/ok.txt\"\naction = \"allow\"\n\n\
                 [[network.rule]]\ncomment = \"the test's forbidden API\"\nhost = \"api.test.example\"\n\
                 path = \"/admin/**\"\naction = \"deny\"\n"
            ));
        }
    }
    assert!(out.contains("llm.test.example\"]"), "the shipped profile's openai secret line changed:\n{out}");
    out
}

/// OpenClaw's config (in a file the agent reads): the fake model as an OpenAI-compatible
/// provider over HTTPS, its key from the placeholder variable gvm sets.
fn openclaw_config(llm_port: u16) -> String {
    json!({
        "agents": {"defaults": {"model": {"primary": format!("gvmtest/{MODEL}")}}},
        "models": {"mode": "merge", "providers": {"gvmtest": {
            "baseUrl": format!("https://llm.test.example:{llm_port}/v1"),
            "apiKey": "${OPENAI_API_KEY}",
            "api": "openai-completions",
            "models": [{"id": MODEL, "name": "gvm test model", "reasoning": false, "input": ["text"],
                        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                        "contextWindow": 128000, "maxTokens": 4096}],
        }}},
    })
    .to_string()
}

/// The workspace as the user left it: an input, and a `.env` the agent must not read.
fn fill_workspace(ws: &Path) {
    std::fs::write(ws.join("input.txt"), "42 widgets in the inventory\n").unwrap();
    std::fs::write(ws.join(".env"), format!("OPENAI_API_KEY={DOTENV_VALUE}\n")).unwrap();
}

/// The command of one headless OpenClaw task.
/// What an `agent exec` test writes before gvmd starts: the workspace, the key as a
/// secret file, the test CA for the fake model and OpenClaw's config. Returns the
/// secrets dir, the task's argv and gvmd.toml's `[gateway]` table trusting the CA.
fn stage(sb: &Sandboxed, install: &Path, ca_pem: &str, llm_port: u16) -> (PathBuf, Vec<String>, String) {
    let root = sb.dirs.root.path();
    fill_workspace(&sb.ws);
    let secrets = root.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("openai"), KEY).unwrap();
    std::fs::write(root.join("llm-ca.pem"), ca_pem).unwrap();
    let config = root.join("openclaw.json");
    std::fs::write(&config, openclaw_config(llm_port)).unwrap();
    let task = openclaw_task(install, &config, &sb.ws);
    let gateway = format!("[gateway]\nextra_roots = [\"{}\"]\n\n", root.join("llm-ca.pem").display());
    (secrets, task, gateway)
}

fn openclaw_task(install: &Path, config: &Path, ws: &Path) -> Vec<String> {
    let bin = install.join("node_modules/.bin");
    [
        bin.join("node").display().to_string(),
        bin.join("openclaw").display().to_string(),
        "agent".into(),
        "exec".into(),
        "--config".into(),
        config.display().to_string(),
        "--cwd".into(),
        ws.display().to_string(),
        "--json".into(),
        "Count the widgets in input.txt and write report.md.".into(),
    ]
    .to_vec()
}

/// What the model saw and what gvm recorded, asserted the same way for both supervisors.
/// `events`: the profile's audit events.
fn assert_task_seen_as_a_user_sees_it(llm: &FakeLlm, events: &[Value], api: &Upstream, tls_api: &Upstream) {
    assert!(llm.errors().is_empty(), "{:?}", llm.errors());
    let results = llm.tool_results();
    let text: Vec<&str> = results.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(results.len(), 8, "every tool call came back: {results:#?}");
    assert!(text[0].contains("42 widgets in the inventory"), "read input.txt: {}", text[0]);
    assert!(!text[1].contains(DOTENV_VALUE), ".env was readable: {}", text[1]);
    // (Printing the placeholder itself would put it in the next model request's body,
    // which gvm refuses as a placeholder smuggled out: class 9.)
    assert!(text[2].contains("key-is-a-placeholder") && text[2].contains("ok /ok.txt"), "{}", text[2]);
    assert!(text[3].contains("gvm denied this request") && text[3].contains("status=403"), "{}", text[3]);
    assert!(text[4].contains("node-fetch: ok /ok.txt"), "Node's fetch without the proxy: {}", text[4]);
    assert!(
        text[5].contains("openssl-ca: ok /ok.txt") && text[5].contains("system-ca: ok /ok.txt"),
        "Node's other CA stores: {}",
        text[5]
    );
    assert!(text[6].contains("git-ok"), "git in the exec tool: {}", text[6]);
    assert!(text[7].to_lowercase().contains("wrote"), "the write tool: {}", text[7]);

    // The model got the key from gvm on every request, never `.env`'s value.
    let chats = llm.chats();
    assert_eq!(chats.len(), 9, "one chat request per turn");
    for c in &chats {
        assert_eq!(c.header("authorization"), Some(format!("Bearer {KEY}").as_str()), "gvm swapped the placeholder");
        assert!(c.json["stream"] == true, "OpenClaw streams: {}", c.json);
    }
    assert!(!llm.received(DOTENV_VALUE), ".env's value reached the model");

    // The API saw the two allowed requests and never the denied one.
    let seen = api.seen();
    assert_eq!(seen.iter().filter(|l| l.starts_with("GET /ok.txt ")).count(), 2, "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains("/admin")), "{seen:?}");
    let seen = tls_api.seen();
    assert_eq!(seen.iter().filter(|l| l.starts_with("GET /ok.txt ")).count(), 2, "{seen:?}");

    // The audit log: the denial with its rule, the ways each request came.
    let http: Vec<&Value> = events.iter().filter(|e| e["kind"] == "http").collect();
    let denied: Vec<&&Value> = http.iter().filter(|e| e["decision"] == "deny").collect();
    assert_eq!(denied.len(), 1, "{denied:#?}");
    let d = denied[0];
    assert_eq!(d["details"]["path"], "/admin/users", "{d:#}");
    assert_eq!(d["details"]["via"], "transparent", "curl --noproxy is caught by the transparent listener: {d:#}");
    assert!(d["rule"].as_str().is_some_and(|r| r.starts_with("network.rule[") && r.contains(".toml:")), "{d:#}");
    let vias: Vec<(&str, &str)> = http
        .iter()
        .filter(|e| e["details"]["path"] == "/ok.txt")
        .map(|e| (e["decision"].as_str().unwrap_or(""), e["details"]["via"].as_str().unwrap_or("")))
        .collect();
    assert!(vias.contains(&("allow", "proxy")) && vias.contains(&("allow", "transparent")), "{vias:?}");
    let intercepted = vias.iter().filter(|v| **v == ("allow", "intercept")).count();
    assert_eq!(intercepted, 2, "HTTPS through the proxy, intercepted and decided per request: {vias:?}");
    // Nothing else left the sandbox: every decided request went to the model or the API.
    for e in events.iter().filter(|e| ["http", "connect"].contains(&e["kind"].as_str().unwrap_or(""))) {
        let host = e["details"]["host"].as_str().unwrap_or("");
        assert!(host == "llm.test.example" || host == "api.test.example", "unexpected egress: {e:#}");
    }
    let chats_audited = http.iter().filter(|e| e["details"]["path"] == "/v1/chat/completions").count();
    assert_eq!(chats_audited, chats.len(), "every model request is audited");
}

#[test]
#[ignore = "needs root"]
fn openclaw_runs_its_task_under_gvmctl_run() {
    assert_root();
    let install = common::openclaw::install();
    let api = Upstream::start(None);
    let ca = TestCa::new(&["llm.test.example", "api.test.example"]);
    let tls_api = Upstream::start(Some(ca.server.clone()));
    let node = install.join("node_modules/.bin/node");
    let llm = FakeLlm::start(script(api.port(), tls_api.port(), &node), Some(ca.server.clone()));
    // Outside /tmp: the agent gets a private /tmp, and reads its config from here.
    let mut sb = Sandboxed::outside_tmp("oc");
    let (secrets, task, gateway) = stage(&sb, &install, &ca.ca_pem, llm.port());
    let gvmd_toml = format!(
        "{gateway}[gateway.hosts]\n\"llm.test.example\" = [\"127.0.0.1\"]\n\"api.test.example\" = [\"127.0.0.1\"]\n"
    );
    let text = profile(&install, &sb.ws, &secrets, &task, llm.port());
    sb.start(&gvmd_toml, &text, &[]);

    let argv: Vec<&str> = task.iter().map(String::as_str).collect();
    let ran = sb.run(&argv);
    assert_eq!(ran.code, Some(0), "{ran:#?}\n{}", sb.gvmd().log_text());
    let out: Value = serde_json::from_str(ran.out.trim()).unwrap_or_else(|e| panic!("{e}: {ran:#?}"));
    assert_eq!(out["status"], "ok", "{out:#}");
    assert_eq!(out["final"], "Report written to report.md.", "{out:#}");
    assert_task_seen_as_a_user_sees_it(&llm, &sb.events(""), &api, &tls_api);

    // The report waits for review; the real workspace is untouched.
    assert!(!sb.ws.join("report.md").exists());
    let changes = gvmctl(&sb.dirs, &["changes", &sb.profile, "--json"]);
    let changes: Vec<Value> = serde_json::from_slice(&changes.stdout).unwrap();
    let report: Vec<&Value> =
        changes.iter().filter(|c| c["path"].as_str().is_some_and(|p| p.ends_with("report.md"))).collect();
    assert_eq!(report.len(), 1, "{changes:#?}");
    assert_eq!(report[0]["class"], "review", "{changes:#?}");
    assert_eq!(std::fs::read_to_string(sb.upper().join("report.md")).unwrap(), "# Widgets\n42 widgets counted.\n");
    let summary = ran.summary().to_string();
    assert!(summary.contains("1 denied") && summary.contains("gvmctl changes"), "{summary}");
}

/// A model provider missing from the profile, over HTTPS: gvm refuses the tunnel inside
/// TLS, so what OpenClaw prints carries the 403 naming the request to allow (not just
/// "Connection error"), the model is never reached, and the audit log has the refusal.
/// (OpenClaw's own summary calls any 403 "authentication failed"; its log lines give
/// the body's error as `rawError=403 "gvm denied this request: POST …"`.)
#[test]
#[ignore = "needs root"]
fn openclaw_names_a_model_provider_missing_from_the_profile() {
    assert_root();
    let install = common::openclaw::install();
    let ca = TestCa::new(&["llm.test.example"]);
    let llm = FakeLlm::start(vec![Turn::Text("never asked".into())], Some(ca.server.clone()));
    let mut sb = Sandboxed::outside_tmp("om");
    let (secrets, task, gateway) = stage(&sb, &install, &ca.ca_pem, llm.port());
    let gvmd_toml = format!("{gateway}[gateway.hosts]\n\"llm.test.example\" = [\"127.0.0.1\"]\n");
    // The shipped profile with the test's rules, less the one for the model.
    let full = profile(&install, &sb.ws, &secrets, &task, llm.port());
    let model_rule = format!(
        "[[network.rule]]\ncomment = \"the test's model\"\nhost = \"llm.test.example\"\nport = {}\n\
         methods = [\"POST\"]\npath = \"/v1/chat/completions\"\naction = \"allow\"\n",
        llm.port()
    );
    assert!(full.contains(&model_rule), "the test's model rule changed:\n{full}");
    sb.start(&gvmd_toml, &full.replace(&model_rule, ""), &[]);

    let argv: Vec<&str> = task.iter().map(String::as_str).collect();
    let ran = sb.run(&argv);
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    let printed = format!("{}{}", ran.out, ran.err);
    let url = format!("https://llm.test.example:{}/v1/chat/completions", llm.port());
    assert!(
        printed.contains(&format!("rawError=403 \"gvm denied this request: POST {url}\"")),
        "what OpenClaw prints names the request to allow: {ran:#?}"
    );
    assert!(llm.seen().is_empty(), "the model was reached: {:#?}", llm.seen());
    let events = sb.events("http");
    assert!(
        events.iter().any(|e| e["decision"] == "deny"
            && e["details"]["path"] == "/v1/chat/completions"
            && e["details"]["tunnel"] == "refused"),
        "the refused model request is not in the audit log: {events:#?}"
    );
}

/// A throwaway systemd with the built binaries, gvmd's state and a workspace bound in:
/// host directories, as the overlay upper dirs cannot live on the instance's overlay root.
/// Bind the three in this order (`let (state, workspace, sd)`): the instance, declared
/// last, is dropped first, before the directories it has mounted.
fn boot_instance() -> (tempfile::TempDir, tempfile::TempDir, common::systemd::Systemd) {
    let bin_dir = bin("gvmd").parent().unwrap().to_path_buf();
    let state = tempfile::Builder::new().prefix("gvm-sd-state-").tempdir().unwrap();
    let workspace = tempfile::Builder::new().prefix("gvm-sd-ws-").tempdir().unwrap();
    std::fs::set_permissions(workspace.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let sd = common::systemd::Systemd::boot(&[&bin_dir, state.path(), workspace.path()]);
    (state, workspace, sd)
}

/// gvmd and the agent units installed in the instance `sd` as a user would, gvmd's state
/// in `state` (a host directory bound in), the key's secret file, the test CA trusted
/// upstream and the test hosts named. Returns the instance's /etc/gvm.
fn install_gvm(sd: &common::systemd::Systemd, state: &Path, ca_pem: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let gvmd = bin("gvmd").display().to_string();
    let root = sd.root();
    for unit in ["gvmd.service", "gvm-agent@.service"] {
        let text =
            std::fs::read_to_string(repo.join("units").join(unit)).unwrap().replace("/usr/local/bin/gvmd", &gvmd);
        std::fs::write(root.join("etc/systemd/system").join(unit), text).unwrap();
    }
    std::fs::create_dir_all(root.join("etc/systemd/system/gvmd.service.d")).unwrap();
    std::fs::write(
        root.join("etc/systemd/system/gvmd.service.d/test.conf"),
        format!(
            "[Service]\nExecStart=\nExecStart={gvmd} --foreground --config-dir /etc/gvm --state-dir {} --runtime-dir /run/gvm\n",
            state.display()
        ),
    )
    .unwrap();
    let etc = root.join("etc/gvm");
    std::fs::create_dir_all(etc.join("profiles")).unwrap();
    std::fs::create_dir_all(etc.join("secrets")).unwrap();
    std::fs::write(etc.join("secrets/openai"), KEY).unwrap();
    std::fs::set_permissions(etc.join("secrets/openai"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(etc.join("llm-ca.pem"), ca_pem).unwrap();
    std::fs::write(
        etc.join("gvmd.toml"),
        "[gateway]\nextra_roots = [\"/etc/gvm/llm-ca.pem\"]\n\n[gateway.hosts]\n\"llm.test.example\" = [\"127.0.0.1\"]\n\"api.test.example\" = [\"127.0.0.1\"]\n",
    )
    .unwrap();
    etc
}

#[test]
#[ignore = "needs root"]
fn openclaw_runs_its_task_as_gvm_agent_unit_under_systemd() {
    assert_root();
    let install = common::openclaw::install();
    let (state, workspace, sd) = boot_instance();
    fill_workspace(workspace.path());
    let root = sd.root();
    let gvmctl = bin("gvmctl").display().to_string();

    // The fake model and the API listen on the instance's loopback (its own netns), where
    // its gvmd's gateway reaches 127.0.0.1.
    let netns = std::fs::File::open(format!("/proc/{}/ns/net", sd.pid())).unwrap();
    let ca = TestCa::new(&["llm.test.example", "api.test.example"]);
    let node = install.join("node_modules/.bin/node");
    let server = ca.server.clone();
    let (llm, api, tls_api) = std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let (api, tls_api) = (Upstream::start(None), Upstream::start(Some(server.clone())));
        (FakeLlm::start(script(api.port(), tls_api.port(), &node), Some(server)), api, tls_api)
    })
    .join()
    .unwrap();

    let etc = install_gvm(&sd, state.path(), &ca.ca_pem);
    // OpenClaw's config where the agent can read it (not under /etc/gvm, which is hidden).
    std::fs::create_dir_all(root.join("srv/openclaw")).unwrap();
    std::fs::write(root.join("srv/openclaw/openclaw.json"), openclaw_config(llm.port())).unwrap();
    let task = openclaw_task(&install, Path::new("/srv/openclaw/openclaw.json"), workspace.path());
    let text = profile(&install, workspace.path(), Path::new("/etc/gvm/secrets"), &task, llm.port());
    std::fs::write(etc.join("profiles/openclaw.toml"), text).unwrap();
    sd.sh("systemctl daemon-reload && systemctl start gvmd.service");

    // The way a user starts it; the unit ends when OpenClaw's task does.
    let started = std::time::Instant::now();
    sd.sh("systemctl start gvm-agent@openclaw.service");
    let settle = Duration::from_secs(180);
    sd.wait_for(
        "systemctl show -p ActiveState,SubState --value gvm-agent@openclaw.service",
        "the task to end",
        settle,
        |t| t.lines().next() == Some("inactive") || t.lines().next() == Some("failed"),
    );
    let took = started.elapsed();
    let journal = sd.sh("journalctl -u gvm-agent@openclaw.service -o cat --no-pager");
    let status = sd.sh("systemctl show -p ExecMainStatus --value gvm-agent@openclaw.service");
    let gvmd_log = sd.sh("journalctl -u gvmd.service -o cat --no-pager | tail -30");
    assert_eq!(status.trim(), "0", "OpenClaw's exit status\n{journal}\n{gvmd_log}");
    assert!(journal.contains("\"final\": \"Report written to report.md.\""), "{journal}");
    eprintln!("openclaw task as gvm-agent@openclaw: {took:?} from systemctl start to the unit's end");

    let out = sd.sh(&format!("{gvmctl} audit log --profile openclaw --json --limit 100000"));
    let events: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_task_seen_as_a_user_sees_it(&llm, &events, &api, &tls_api);

    // The report waits for review; the real workspace is untouched.
    assert!(!workspace.path().join("report.md").exists());
    let out = sd.sh(&format!("{gvmctl} changes openclaw --json"));
    let changes: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(
        changes.iter().any(|c| c["path"].as_str().is_some_and(|p| p.ends_with("report.md")) && c["class"] == "review"),
        "{out}"
    );
    // gvmd's useradd inside the instance took a uid of the instance's own range
    // (common/systemd.rs), none of the host's: host tests that clean up by uid miss it.
    let uid: u32 = sd.sh("id -u gvm-openclaw").trim().parse().unwrap();
    assert!((61000..63000).contains(&uid), "gvm-openclaw has uid {uid}");
    // The unit's stop left no namespace behind.
    let netns = sd.sh("ls /run/gvm/netns/ 2>/dev/null || true");
    assert!(netns.trim().is_empty(), "netns left: {netns}");
    let out = sd.sh(&format!("{gvmctl} audit verify"));
    assert!(out.starts_with("ok: "), "{out}");
}

#[test]
#[ignore = "needs root"]
fn openclaw_crashing_at_start_shows_why_in_its_journal_and_gvmctl_status() {
    assert_root();
    let install = common::openclaw::install();
    let (state, workspace, sd) = boot_instance();
    let gvmctl = bin("gvmctl").display().to_string();
    let ca = TestCa::new(&["llm.test.example"]);
    let etc = install_gvm(&sd, state.path(), &ca.ca_pem);
    // A config file cut short: OpenClaw stops at once, saying where.
    std::fs::create_dir_all(sd.root().join("srv/openclaw")).unwrap();
    std::fs::write(sd.root().join("srv/openclaw/openclaw.json"), "{ \"models\": { \"providers\": \n").unwrap();
    let task = openclaw_task(&install, Path::new("/srv/openclaw/openclaw.json"), workspace.path());
    std::fs::write(
        etc.join("profiles/openclaw.toml"),
        profile(&install, workspace.path(), Path::new("/etc/gvm/secrets"), &task, 443),
    )
    .unwrap();
    sd.sh("systemctl daemon-reload && systemctl start gvmd.service");
    sd.sh("systemctl start gvm-agent@openclaw.service");

    // systemd restarts it (Restart=on-failure); the journal says why it ended.
    let settle = Duration::from_secs(120);
    sd.wait_for("systemctl show -p NRestarts --value gvm-agent@openclaw.service", "a restart", settle, |t| {
        t.trim().parse::<u32>().unwrap_or(0) >= 1
    });
    let journal = sd.sh("journalctl -u gvm-agent@openclaw.service -o cat --no-pager");
    assert!(journal.contains("JSON5: invalid end of input"), "{journal}");

    // gvmctl status: the restart count and how the agent last ended.
    let out = sd.sh(&format!("{gvmctl} status --json"));
    let status: Value = serde_json::from_str(&out).unwrap();
    let agent = status["agents"].as_array().unwrap().iter().find(|a| a["profile"] == "openclaw").unwrap().clone();
    assert!(agent["restarts"].as_u64().unwrap() >= 1, "{agent:#}");
    assert_eq!(agent["last_exit"], "exit 1", "{agent:#}");
    let table = sd.sh(&format!("{gvmctl} status"));
    assert!(table.contains("LAST EXIT") && table.contains("exit 1"), "{table}");
    sd.sh(&format!("{gvmctl} stop openclaw"));
}

/// The shipped profile's own command (`openclaw gateway run --allow-unconfigured --bind
/// loopback`), as
/// policies/openclaw.toml has it but for where OpenClaw is installed: under gvm, with no
/// config of its own yet, OpenClaw's Gateway starts and listens on the loopback of the
/// agent's network namespace (seen from that namespace: nothing outside it can connect),
/// then stops on SIGTERM relayed by `gvmctl run`, exiting cleanly.
#[test]
#[ignore = "needs root"]
fn the_shipped_openclaw_command_starts_its_gateway_and_stops_cleanly() {
    assert_root();
    let install = common::openclaw::install();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let shipped = std::fs::read_to_string(repo.join("policies/openclaw.toml")).unwrap();
    let line = shipped.lines().find(|l| l.starts_with("command = ")).expect("the shipped command");
    let command: Vec<String> =
        serde_json::from_str(&line["command = ".len()..].replace("/opt/openclaw", &install.display().to_string()))
            .unwrap();
    assert_eq!(command[2..], ["gateway", "run", "--allow-unconfigured", "--bind", "loopback"], "{line}");
    let mut sb = Sandboxed::outside_tmp("og");
    fill_workspace(&sb.ws);
    let secrets = sb.dirs.root.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("openai"), KEY).unwrap();
    let text = profile(&install, &sb.ws, &secrets, &command, 443);
    sb.start("", &text, &[]);

    let argv: Vec<&str> = command.iter().map(String::as_str).collect();
    let running = sb.spawn(&argv);
    let gvm_ports = [":3128", ":3129", ":53"];
    let listening_now = || {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", sb.netns_path().display()))
            .args(["ss", "-Hltn"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
            .filter(|a| !gvm_ports.iter().any(|p| a.ends_with(p)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut listening = listening_now();
    while listening.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        listening = listening_now();
    }
    let pid = running.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let ran = running.finish(Duration::from_secs(60));
    assert!(!listening.is_empty(), "OpenClaw's Gateway never listened in the agent's netns: {ran:#?}");
    assert!(
        listening.split(' ').all(|a| a.starts_with("127.0.0.1:") || a.starts_with("[::1]:")),
        "OpenClaw listens on loopback only: {listening}"
    );
    assert_eq!(ran.code, Some(0), "OpenClaw's Gateway stops cleanly on SIGTERM: {ran:#?}");
    eprintln!("openclaw gateway run under gvm listened on {listening}; {}", ran.summary());
}
