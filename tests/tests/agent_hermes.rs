//! Hermes Agent (PyPI `hermes-agent`), the real program, under gvm: driven by the fake
//! OpenAI-compatible model server over HTTPS through gvm's interception, it reads a
//! file, tries to read `.env`, calls an allowed API and a denied one from its shell
//! tool, and writes a report. What a user sees is asserted: the agent finished, the
//! report waits in `gvmctl changes`, the denied call is in the audit log with its rule,
//! `.env`'s value never reached the model, the key was added by gvm (the agent held
//! none), and nothing but the model and the allowed API was reached. Under `gvmctl run`
//! and under `gvm-agent@P` in a throwaway systemd.
//!
//! Hermes is installed once per machine (`common::hermes::install`).
//!
//! Privileged: `#[ignore = "needs root"]`, run with --include-ignored.

mod common;

use std::path::{Path, PathBuf};

use common::agent::*;
use common::fake_llm::*;
use common::systemd::Systemd;
use common::*;
use serde_json::json;

/// What the notes file says: the report must carry it, so the agent really read it.
const NOTES: &str = "quarterly figures: 4242 widgets";
const KEY: &str = "sk-test-REALKEY-hermes-7f3a9c";

/// A file path argument, named as the tool's schema names it.
fn path_arg(t: &Tool) -> String {
    t.param(&["path", "file_path", "filename"]).to_string()
}

/// Hermes's `read_file` on `file`.
fn read(what: &str, file: &'static str) -> Turn {
    Turn::Tools(vec![Call::new(what, named(&["read_file"]), move |t| json!({ path_arg(t): file }))])
}

/// Hermes's `write_file`: the report, carrying the notes.
fn write_report() -> Turn {
    Turn::Tools(vec![Call::new(
        "write the report",
        named(&["write_file"]),
        |t| json!({ path_arg(t): "report.md", t.param(&["content", "text"]): format!("# Report\n\n{NOTES}\n") }),
    )])
}

/// The task, as the model plays it with Hermes's tools (picked by name from the tools
/// Hermes advertises, arguments named as its schemas name them).
fn script(api_port: u16) -> Vec<Turn> {
    vec![
        read("read the notes", "notes.txt"),
        read("read .env", ".env"),
        Turn::Tools(vec![Call::new("shell: the allowed API, the denied one, .env", named(&["terminal"]), move |_| {
            json!({"command": format!(
                "curl -sS http://api.test.example:{api_port}/status; echo; \
                 curl -sS -X POST -d upload=1 http://api.test.example:{api_port}/upload; echo; \
                 cat .env; echo cat-exit=$?; getent hosts api.test.example; echo getent-exit=$?"
            )})
        })]),
        write_report(),
        Turn::Text("Report written to report.md.".into()),
    ]
}

/// What both ways of running share: the model, the allowed API, the files, the texts.
struct World {
    llm: FakeLlm,
    api: Upstream,
    ca_file: PathBuf,
    key_file: PathBuf,
    dotenv: String,
}

impl World {
    /// The model and the API listen on 127.0.0.1 of `netns` (the host's when None).
    fn new(dir: &Path, ws: &Path, netns: Option<&Path>) -> World {
        let ca = TestCa::new(&["llm.test.example"]);
        let server = ca.server.clone();
        let start = move || {
            let api = Upstream::start(None);
            let llm = FakeLlm::start(script(api.port()), Some(server));
            (api, llm)
        };
        let (api, llm) = match netns {
            Some(n) => in_netns(n, start),
            None => start(),
        };
        let ca_file = dir.join("llm-ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem).unwrap();
        let key_file = dir.join("llm.key");
        std::fs::write(&key_file, KEY).unwrap();
        std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let dotenv = format!("dotenv-S3cret-{}", std::process::id());
        std::fs::write(ws.join("notes.txt"), format!("{NOTES}\n")).unwrap();
        std::fs::write(ws.join(".env"), format!("API_TOKEN={dotenv}\n")).unwrap();
        for f in ["notes.txt", ".env"] {
            std::fs::set_permissions(ws.join(f), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        }
        World { llm, api, ca_file, key_file, dotenv }
    }

    fn gvmd_toml(&self) -> String {
        format!(
            "[gateway]\nextra_roots = [\"{}\"]\n\n[gateway.hosts]\n\"llm.test.example\" = [\"127.0.0.1\"]\n\
             \"api.test.example\" = [\"127.0.0.1\"]\n",
            self.ca_file.display()
        )
    }

    /// The profile: hermes.toml's shape with the test's hosts (the shipped one allows
    /// real providers; a test reaches nothing outside the machine).
    fn profile(&self, ws: &Path, command: Option<&[String]>) -> String {
        let command = command.map(|c| format!("command = {}\n", json!(c))).unwrap_or_default();
        format!(
            r#"[agent]
{command}workspaces = [{{ path = "{ws}", mode = "overlay" }}]
memory_max = "1G"
tasks_max = 256

[network]
default = "deny"

[[network.rule]]
comment = "the model: chat completions, with the key added by gvm"
host = "llm.test.example"
port = {llm}
methods = ["POST"]
path = "/v1/chat/completions"
action = "allow"
inject = {{ header = "Authorization", value = "Bearer {{secret:llm}}" }}

[[network.rule]]
host = "llm.test.example"
port = {llm}
methods = ["GET"]
path = "/v1/models/**"
action = "allow"
inject = {{ header = "Authorization", value = "Bearer {{secret:llm}}" }}

[[network.rule]]
comment = "the allowed API"
host = "api.test.example"
port = {api}
methods = ["GET"]
path = "/status"
action = "allow"

[[network.rule]]
comment = "uploads are refused"
host = "api.test.example"
path = "/upload"
action = "deny"

[secrets]
llm = {{ file = "{key}" }}

[files]
deny_read = ["**/.env", "**/.hermes/auth.json"]
review = ["**"]
"#,
            ws = ws.display(),
            llm = self.llm.port(),
            api = self.api.port(),
            key = self.key_file.display(),
        )
    }

    /// Hermes's config: the fake model over HTTPS; the key is gvm's business.
    fn hermes_config(&self) -> String {
        format!(
            "model:\n  provider: custom\n  base_url: https://llm.test.example:{}/v1\n  default: {MODEL}\n",
            self.llm.port()
        )
    }

    /// What the model saw and did, as a user would check it.
    fn assert_task_done(&self) {
        assert!(self.llm.errors().is_empty(), "{:?}", self.llm.errors());
        assert!(self.llm.played() >= 5, "the model played {} of 5 turns", self.llm.played());
        let results = self.llm.tool_results();
        let text: String = results.iter().map(|(n, r)| format!("[{n}] {r}\n")).collect();
        if std::env::var_os("GVMT_VERBOSE").is_some() {
            eprintln!("tool results:\n{text}");
        }
        assert!(results.iter().any(|(n, r)| n == "read_file" && r.contains(NOTES)), "notes not read:\n{text}");
        assert!(text.contains("ok /status"), "the allowed API's answer is missing:\n{text}");
        assert!(text.contains("gvm denied this request"), "the refusal (gvm's 403) is missing:\n{text}");
        // Hermes's own read_file refuses .env by name; the shell's `cat` is what gvm stops.
        assert!(text.contains("cat-exit="), "the shell tool did not run to its end:\n{text}");
        // getaddrinfo inside the sandbox is answered by gvmd's resolver.
        assert!(text.contains("getent-exit=0"), "the shell tool could not resolve the API's name:\n{text}");
        assert!(!self.llm.received(&self.dotenv), ".env's value reached the model:\n{text}");
        assert!(!self.llm.received(KEY) || self.llm_key_only_in_auth(), "the key reached the model outside its header");
        let chats = self.llm.chats();
        assert!(!chats.is_empty());
        for c in &chats {
            assert_eq!(c.header("authorization"), Some(format!("Bearer {KEY}").as_str()), "gvm injects the key");
        }
        assert!(chats.iter().any(|c| c.json["stream"] == true), "Hermes streams (SSE) through the gateway");
        let seen = self.api.seen();
        assert!(seen.iter().any(|l| l.starts_with("GET /status")), "{seen:?}");
        assert!(!seen.iter().any(|l| l.contains("/upload")), "the denied call reached the API: {seen:?}");
    }

    fn llm_key_only_in_auth(&self) -> bool {
        self.llm.seen().iter().all(|s| !s.body.contains(KEY))
    }
}

/// Decision events of the profile: the denied upload names its rule; everything
/// forwarded went to the model or the allowed API.
fn assert_audit(events: &[serde_json::Value], llm: u16, api: u16) {
    let upload: Vec<_> = events.iter().filter(|e| e["details"]["path"] == "/upload").collect();
    assert!(
        upload.iter().any(|e| e["decision"] == "deny" && e["rule"].as_str().unwrap_or("").contains("network.rule[3]")),
        "the denied upload with its rule is not in the audit log: {upload:#?}"
    );
    for e in events.iter().filter(|e| e["decision"] == "allow") {
        let host = e["details"]["host"].as_str().unwrap_or("");
        let port = e["details"]["port"]
            .as_u64()
            .or_else(|| e["details"]["addr"].as_str().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok()));
        if host.is_empty() {
            continue; // not a network event (run_started, files, ...)
        }
        assert!(
            (host == "llm.test.example" && port.is_none_or(|p| p == u64::from(llm)))
                || (host == "api.test.example" && port.is_none_or(|p| p == u64::from(api))),
            "something else left the sandbox: {e:#}"
        );
    }
}

/// The paths `gvmctl changes P --json` lists.
fn changed_paths(json: &[u8]) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(json)));
    v.as_array()
        .unwrap_or_else(|| panic!("gvmctl changes --json: {v}"))
        .iter()
        .map(|c| c["path"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Writes Hermes's config.yaml from inside the sandbox, as a user would (the file
/// belongs to the agent's user, in its persistent home); then runs `after` there too.
fn configure(sb: &Sandboxed, conf: &str, after: &str) -> Ran {
    let setup = sb.sh(&format!("mkdir -p ~/.hermes && cat > ~/.hermes/config.yaml <<'EOF'\n{conf}EOF\n{after}"));
    assert_eq!(setup.code, Some(0), "{setup:#?}");
    setup
}

#[test]
#[ignore = "needs root"]
fn hermes_under_gvmctl_run_does_its_task_and_nothing_else() {
    assert_root();
    let hermes = common::hermes::install();
    let mut sb = Sandboxed::new("hm");
    let world = World::new(sb.dirs.root.path(), &sb.ws, None);
    let gvmd_toml = world.gvmd_toml();
    let profile = world.profile(&sb.ws, None);
    sb.start(&gvmd_toml, &profile, &[]);

    let conf = world.hermes_config();
    let setup = configure(&sb, &conf, "env");
    assert!(!setup.out.contains(KEY), "the key is in the agent's environment");

    let started = std::time::Instant::now();
    let ran = sb.run(&[hermes.to_str().unwrap(), "-z", "Summarise notes.txt into report.md."]);
    let took = started.elapsed();
    assert_eq!(ran.code, Some(0), "{ran:#?}\nfake model: {:#?}", world.llm.errors());
    assert!(ran.out.contains("Report written to report.md."), "{ran:#?}");
    eprintln!("hermes -z under gvmctl run: {:.1} s, {}", took.as_secs_f64(), ran.summary());
    world.assert_task_done();
    assert_audit(&sb.events(""), world.llm.port(), world.api.port());
    let out = gvmctl(&sb.dirs, &["changes", &sb.profile, "--json"]);
    assert!(out.status.success(), "gvmctl changes: {}", stderr(&out));
    let changed = changed_paths(&out.stdout);
    assert!(changed.iter().any(|p| p.ends_with("report.md")), "report.md does not wait in gvmctl changes: {changed:?}");
    assert!(!sb.ws.join("report.md").exists(), "the report reached the real workspace before review");
}

#[test]
#[ignore = "needs root"]
fn hermes_as_a_gvm_agent_unit_does_its_task_and_nothing_else() {
    assert_root();
    let hermes = common::hermes::install();
    let bin_dir = bin("gvmd").parent().unwrap().to_path_buf();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    // Host directories bound into the instance at the same paths: gvmd's state (overlay
    // upper dirs cannot live on the instance's own overlay root), the workspace, and the
    // test's CA and key files.
    let state = tempfile::Builder::new().prefix("gvm-sd-state-").tempdir().unwrap();
    let ws = tempfile::Builder::new().prefix("gvm-sd-ws-").tempdir().unwrap();
    std::fs::set_permissions(ws.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let files = tempfile::Builder::new().prefix("gvm-sd-files-").tempdir().unwrap();
    let sd = Systemd::boot(&[&bin_dir, state.path(), ws.path(), files.path()]);
    let netns = PathBuf::from(format!("/proc/{}/ns/net", sd.pid()));
    let world = World::new(files.path(), ws.path(), Some(&netns));
    let (gvmd, gvmctl) = (bin("gvmd").display().to_string(), bin("gvmctl").display().to_string());
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
            state.path().display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("etc/gvm/profiles")).unwrap();
    std::fs::write(root.join("etc/gvm/gvmd.toml"), world.gvmd_toml()).unwrap();
    let command: Vec<String> =
        vec![hermes.display().to_string(), "-z".into(), "Summarise notes.txt into report.md.".into()];
    std::fs::write(root.join("etc/gvm/profiles/hermes.toml"), world.profile(ws.path(), Some(&command))).unwrap();
    sd.sh("systemctl daemon-reload && systemctl start gvmd.service");

    // Configured from inside its sandbox, then started as a unit, the way a user would.
    let conf = world.hermes_config();
    sd.sh(&format!(
        "{gvmctl} run --profile hermes -- sh -c \"mkdir -p ~/.hermes && printf '%s' '{conf}' > ~/.hermes/config.yaml\""
    ));
    let started = std::time::Instant::now();
    sd.sh("systemctl start gvm-agent@hermes.service");
    let settle = std::time::Duration::from_secs(180);
    sd.wait_for("systemctl is-active gvm-agent@hermes.service || true", "Hermes to finish", settle, |t| {
        t.trim() == "inactive" || t.trim() == "failed"
    });
    let took = started.elapsed();
    let journal = sd.sh("journalctl -u gvm-agent@hermes.service -o cat --no-pager");
    let result = sd.sh("systemctl show -p Result -p ExecMainStatus --value gvm-agent@hermes.service");
    assert_eq!(result.split_whitespace().collect::<Vec<_>>(), ["success", "0"], "{journal}");
    assert!(journal.contains("Report written to report.md."), "{journal}");
    eprintln!("hermes -z as gvm-agent@hermes: {:.1} s from systemctl start to inactive", took.as_secs_f64());
    world.assert_task_done();

    let events: Vec<serde_json::Value> =
        serde_json::from_str(&sd.sh(&format!("{gvmctl} audit log --profile hermes --json --limit 100000"))).unwrap();
    assert_audit(&events, world.llm.port(), world.api.port());
    let changed = changed_paths(sd.sh(&format!("{gvmctl} changes hermes --json")).as_bytes());
    assert!(changed.iter().any(|p| p.ends_with("report.md")), "report.md does not wait in gvmctl changes: {changed:?}");
    assert!(!ws.path().join("report.md").exists(), "the report reached the real workspace before review");
    let journal = sd.sh("journalctl -u gvmd.service -o cat --no-pager | tail -20");
    let verify = sd.sh(&format!("{gvmctl} audit verify"));
    assert!(verify.starts_with("ok: "), "{verify}\n{journal}");
}

/// The shipped profile as `gvmctl init --from hermes` writes it, with the one edit a
/// user makes (where the key file is) and OpenRouter played by the fake model (gvmd's
/// `[gateway.hosts]` sends openrouter.ai to this machine's loopback, on a test port:
/// Hermes's `openrouter` provider always goes to port 443, so the test names the port
/// with `provider: custom`). Hermes finishes its task with the key as a placeholder that
/// gvm swaps for the real one on the way out.
#[test]
#[ignore = "needs root"]
fn the_shipped_hermes_profile_runs_hermes_with_its_key_as_a_placeholder() {
    assert_root();
    let hermes = common::hermes::install();
    let mut sb = Sandboxed::new("hs");
    let ca = TestCa::new(&["openrouter.ai"]);
    let llm = FakeLlm::start(
        vec![read("read the notes", "notes.txt"), write_report(), Turn::Text("Report written to report.md.".into())],
        Some(ca.server.clone()),
    );
    let dir = sb.dirs.root.path().to_path_buf();
    std::fs::write(dir.join("ca.pem"), &ca.ca_pem).unwrap();
    std::fs::write(dir.join("openrouter.key"), KEY).unwrap();
    std::fs::set_permissions(dir.join("openrouter.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(sb.ws.join("notes.txt"), format!("{NOTES}\n")).unwrap();
    std::fs::set_permissions(sb.ws.join("notes.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    let init = gvmctl(
        &sb.dirs,
        &[
            "init",
            &sb.profile,
            "--from",
            "hermes",
            "--workspace",
            sb.ws.to_str().unwrap(),
            "--config-dir",
            sb.dirs.config.to_str().unwrap(),
        ],
    );
    assert!(init.status.success(), "{}", stderr(&init));
    let file = sb.dirs.config.join("profiles").join(format!("{}.toml", sb.profile));
    let profile = std::fs::read_to_string(&file)
        .unwrap()
        .replace("/etc/gvm/secrets/openrouter", dir.join("openrouter.key").to_str().unwrap());
    let gvmd_toml = format!(
        "[gateway]\nextra_roots = [\"{}\"]\n\n[gateway.hosts]\n\"openrouter.ai\" = [\"127.0.0.1\"]\n",
        dir.join("ca.pem").display()
    );
    sb.start(&gvmd_toml, &profile, &[]);

    let conf = format!(
        "model:\n  provider: custom\n  base_url: https://openrouter.ai:{}/api/v1\n  default: {MODEL}\n",
        llm.port()
    );
    let setup = configure(&sb, &conf, "echo key=$OPENROUTER_API_KEY");
    assert!(setup.out.contains("key=gvm-secret-openrouter-") && !setup.out.contains(KEY), "{setup:#?}");

    let ran = sb.run(&[hermes.to_str().unwrap(), "-z", "Summarise notes.txt into report.md."]);
    assert_eq!(ran.code, Some(0), "{ran:#?}\nfake model: {:#?}", llm.errors());
    assert!(ran.out.contains("Report written to report.md."), "{ran:#?}");
    assert!(llm.errors().is_empty(), "{:?}", llm.errors());
    let chats = llm.chats();
    assert!(chats.len() >= 3, "{chats:#?}");
    for c in &chats {
        assert_eq!(c.header("authorization"), Some(format!("Bearer {KEY}").as_str()), "the placeholder was swapped");
    }
    assert!(!llm.received("gvm-secret-openrouter-"), "a placeholder reached the provider");
    let out = gvmctl(&sb.dirs, &["changes", &sb.profile, "--json"]);
    let changed = changed_paths(&out.stdout);
    assert!(changed.iter().any(|p| p.ends_with("report.md")), "{changed:?}");
}

/// A model server missing from the profile: what Hermes prints (the unit's journal)
/// carries gvm's 403, whose first line names the request to allow (Hermes prints the
/// first 300 characters of an error body), and the model is never reached. Over
/// `scheme`: plain HTTP (a local Ollama or vLLM), or HTTPS, where gvm refuses the tunnel
/// inside TLS so that the body reaches Hermes (a refused CONNECT would only make it
/// print "Connection error").
fn missing_provider_is_named(tag: &str, scheme: &str) {
    assert_root();
    let hermes = common::hermes::install();
    let mut sb = Sandboxed::new(tag);
    let world = World::new(sb.dirs.root.path(), &sb.ws, None);
    let profile = format!(
        "[agent]\nworkspaces = [{{ path = \"{}\", mode = \"overlay\" }}]\n\n[network]\ndefault = \"deny\"\n",
        sb.ws.display()
    );
    sb.start(&world.gvmd_toml(), &profile, &[]);
    let conf = world.hermes_config().replace("https://", &format!("{scheme}://"));
    configure(&sb, &conf, "");
    let ran = sb.run(&[hermes.to_str().unwrap(), "-z", "Summarise notes.txt into report.md."]);
    let printed = format!("{}{}", ran.out, ran.err);
    let url = format!("{scheme}://llm.test.example:{}/v1/chat/completions", world.llm.port());
    assert!(
        printed.contains(&format!("HTTP 403: {{\n  \"error\": \"gvm denied this request: POST {url}\"")),
        "what Hermes prints names the request to allow: {ran:#?}"
    );
    assert!(world.llm.seen().is_empty(), "the model was reached: {:#?}", world.llm.seen());
    let events = sb.events("");
    let denied: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["decision"] == "deny" && e["details"]["path"] == "/v1/chat/completions").collect();
    assert!(!denied.is_empty(), "the refused model request is not in the audit log: {events:#?}");
    assert!(denied.iter().all(|e| e["details"]["scheme"] == scheme), "{denied:#?}");
    assert!(events.iter().all(|e| e["decision"] != "allow"), "something was allowed: {events:#?}");
}

#[test]
#[ignore = "needs root"]
fn a_model_provider_missing_from_the_profile_is_named_in_what_hermes_prints() {
    missing_provider_is_named("hn", "http");
}

#[test]
#[ignore = "needs root"]
fn a_model_provider_missing_from_the_profile_over_https_is_named_in_what_hermes_prints() {
    missing_provider_is_named("ht", "https");
}
