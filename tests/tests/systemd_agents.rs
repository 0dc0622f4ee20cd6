//! Agents under a real systemd: `systemctl start gvm-agent@invoices` runs the profile's
//! command in its sandbox, its output is in `journalctl -u gvm-agent@invoices`, its
//! requests are decided and audited by gvmd, `systemctl stop` leaves no namespace, mount
//! or nft table behind, and a SIGKILL is followed by a restart with the agent's overlay
//! changes intact. Privileged (root): boots a throwaway systemd instance.

mod common;
use std::path::Path;
use std::time::Duration;

use common::systemd::Systemd;
use common::*;

/// How long a state change inside the instance may take before the test fails.
const SETTLE: Duration = Duration::from_secs(30);

#[test]
#[ignore = "needs root"]
fn agent_units_start_log_decide_stop_clean_and_survive_sigkill() {
    assert_root();
    let bin_dir = bin("gvmd").parent().unwrap().to_path_buf();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    // The agents' overlay upper dirs cannot live on the instance's root (itself an
    // overlay): gvmd's state dir is a real host directory bound in.
    let state = tempfile::Builder::new().prefix("gvm-sd-state-").tempdir().unwrap();
    let workspace = tempfile::Builder::new().prefix("gvm-sd-ws-").tempdir().unwrap();
    std::fs::set_permissions(workspace.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(workspace.path().join("ledger.csv"), "original\n").unwrap();
    // The agent writes as gvm-invoices: the real file must allow it (see ARCHITECTURE.md).
    std::fs::set_permissions(workspace.path().join("ledger.csv"), std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .unwrap();
    let sd = Systemd::boot(&[&bin_dir, state.path(), workspace.path()]);
    let gvmd = bin("gvmd").display().to_string();
    let gvmctl = bin("gvmctl").display().to_string();
    let root = sd.root();

    let install = |unit: &str| {
        let text =
            std::fs::read_to_string(repo.join("units").join(unit)).unwrap().replace("/usr/local/bin/gvmd", &gvmd);
        std::fs::write(root.join("etc/systemd/system").join(unit), text).unwrap();
    };
    install("gvmd.service");
    install("gvm-agent@.service");
    std::fs::create_dir_all(root.join("etc/systemd/system/gvmd.service.d")).unwrap();
    std::fs::write(
        root.join("etc/systemd/system/gvmd.service.d/test.conf"),
        format!("[Service]\nExecStart=\nExecStart={gvmd} --foreground --config-dir /etc/gvm --state-dir {} --runtime-dir /run/gvm\n", state.path().display()),
    )
    .unwrap();
    // The agent units must ask the same state dir's gvmd: they only talk to the socket.
    std::fs::create_dir_all(root.join("etc/gvm/profiles")).unwrap();
    std::fs::write(root.join("etc/gvm/gvmd.toml"), "[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n")
        .unwrap();
    std::fs::create_dir_all(root.join("srv/upstream")).unwrap();
    std::fs::write(root.join("srv/upstream/ok.txt"), "hello from upstream\n").unwrap();
    std::fs::write(root.join("srv/upstream/secret.txt"), "must not be read\n").unwrap();
    let ws = workspace.path().display();
    std::fs::write(
        root.join("etc/gvm/profiles/invoices.toml"),
        format!(
            r#"[agent]
command = ["/bin/sh", "-c", "curl -s http://api.test.example:8089/ok.txt; curl -s -o /dev/null -w 'secret: %{{http_code}}\n' http://api.test.example:8089/secret.txt; echo run >> {ws}/ledger.csv; echo q3 > {ws}/report.csv; echo agent-ready; exec sleep 1000"]
workspaces = [{{ path = "{ws}", mode = "overlay" }}]

[files]
auto_apply = ["*.csv"]

[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
port = 8089
methods = ["GET"]
path = "/ok.txt"
action = "allow"
"#
        ),
    )
    .unwrap();
    sd.sh("systemctl daemon-reload");
    // The local upstream, inside the instance's own network namespace.
    sd.sh("systemd-run --unit=upstream python3 -m http.server 8089 --bind 127.0.0.1 --directory /srv/upstream");
    sd.wait_for("curl -s http://127.0.0.1:8089/ok.txt || true", "the upstream", SETTLE, |t| t.contains("hello"));
    sd.sh("systemctl start gvmd.service");

    // Start the agent on its own, the way a user would.
    sd.sh("systemctl start gvm-agent@invoices.service");
    let journal =
        sd.wait_for("journalctl -u gvm-agent@invoices.service -o cat --no-pager", "the agent's output", SETTLE, |t| {
            t.contains("agent-ready")
        });
    assert!(journal.contains("hello from upstream"), "{journal}");
    assert!(journal.contains("secret: 403"), "{journal}");
    assert!(!journal.contains("must not be read"), "{journal}");

    // gvmd decided and audited both.
    let out = sd.sh(&format!("{gvmctl} audit log --profile invoices --json"));
    let events: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let http: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["kind"] == "http")
        .map(|e| {
            (e["details"]["path"].as_str().unwrap_or("").to_string(), e["decision"].as_str().unwrap_or("").to_string())
        })
        .collect();
    assert!(http.contains(&("/ok.txt".into(), "allow".into())), "{http:?}");
    assert!(http.contains(&("/secret.txt".into(), "deny".into())), "{http:?}");

    // The agent's write landed in the overlay upper dir, not in the real file.
    assert_eq!(std::fs::read_to_string(workspace.path().join("ledger.csv")).unwrap(), "original\n");
    let uppers = state.path().join("agents/invoices/overlay");
    let upper_ledger = std::fs::read_dir(&uppers).unwrap().next().unwrap().unwrap().path().join("upper/ledger.csv");
    let listing = sd.sh(&format!("find {} -ls", uppers.display()));
    assert_eq!(std::fs::read_to_string(&upper_ledger).ok().as_deref(), Some("original\nrun\n"), "{listing}\n{journal}");

    // gvmctl status shows the agent, from systemd, with its counters.
    sd.wait_for("systemctl is-active gvm-agent@invoices.service", "the agent running", SETTLE, |t| {
        t.trim() == "active"
    });
    let out = sd.sh(&format!("{gvmctl} status --json"));
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["supervisor"], "systemd");
    let agent = status["agents"].as_array().unwrap().iter().find(|a| a["profile"] == "invoices").unwrap().clone();
    let j = sd.sh("journalctl -u gvm-agent@invoices.service -u gvmd.service -o short-monotonic --no-pager | tail -30");
    assert_eq!(agent["state"], "running", "{agent:#}\n{j}");
    assert!(agent["main_pid"].as_u64().unwrap() > 0, "{agent:#}");
    assert_eq!((agent["allowed"].as_u64(), agent["denied"].as_u64()), (Some(1), Some(1)), "{agent:#}");
    let table = sd.sh(&format!("{gvmctl} status"));
    assert!(table.contains("Agents (supervised by systemd)") && table.contains("1/1/0"), "{table}");

    // journald: gvmd's denial carries the structured fields.
    let denials = sd.sh("journalctl -u gvmd.service GVM_PROFILE=invoices GVM_DECISION=deny -o cat --no-pager");
    assert!(denials.contains("/secret.txt"), "no denial in gvmd's journal:\n{denials}");

    // gvmd restarts; the agent keeps running, its requests fail closed meanwhile and
    // work again after.
    let agent_pid = sd.sh("systemctl show -p MainPID --value gvm-agent@invoices.service");
    sd.sh("systemctl stop gvmd.service");
    let probe = "nsenter --net=/run/gvm/netns/invoices curl -s -m 3 -x http://127.0.0.1:3128 \
                 http://api.test.example:8089/ok.txt; echo \" rc=$?\""
        .to_string();
    let down = sd.sh(&probe);
    assert!(!down.contains("hello") && down.contains("rc=7"), "with gvmd down the request must fail: {down}");
    sd.sh("systemctl start gvmd.service");
    assert_eq!(
        sd.sh("systemctl show -p MainPID --value gvm-agent@invoices.service"),
        agent_pid,
        "the agent kept running"
    );
    let up = sd.wait_for(&probe, "the gateway back", SETTLE, |t| t.contains("hello"));
    assert!(up.contains("rc=0"), "{up}");

    // A crash of gvmd: systemd restarts it (RestartSec=1s) and hands back the sockets
    // it kept in its fd store, so a request made while gvmd is dead waits and succeeds.
    sd.sh("systemctl kill -s KILL gvmd.service");
    let during = sd.sh(&probe.replace("-m 3", "-m 20"));
    assert!(during.contains("hello") && during.contains("rc=0"), "the request made during the restart: {during}");
    assert_eq!(sd.sh("systemctl show -p NRestarts --value gvmd.service").trim(), "1");
    let journal = sd.sh("journalctl -u gvmd.service -o cat --no-pager");
    assert!(journal.contains("sockets came back from systemd's fd store"), "{journal}");

    // SIGKILL: systemd restarts the agent; the overlay changes are intact.
    let pid_before = sd.sh("systemctl show -p MainPID --value gvm-agent@invoices.service");
    sd.sh("systemctl kill -s KILL gvm-agent@invoices.service");
    sd.wait_for("systemctl show -p NRestarts --value gvm-agent@invoices.service", "a restart", SETTLE, |t| {
        t.trim() == "1"
    });
    sd.wait_for(
        "journalctl -u gvm-agent@invoices.service -o cat --no-pager | grep -c agent-ready",
        "the second start",
        SETTLE,
        |t| t.trim() == "2",
    );
    assert_ne!(sd.sh("systemctl show -p MainPID --value gvm-agent@invoices.service"), pid_before);
    assert_eq!(std::fs::read_to_string(&upper_ledger).unwrap(), "original\nrun\nrun\n");
    // The unit ended once (ExecStopPost): its new file matching auto_apply went into the
    // real workspace; the modified ledger waits for review.
    let gvmd_log = sd.sh("journalctl -u gvmd -o cat --no-pager | tail -40");
    let report = std::fs::read_to_string(workspace.path().join("report.csv"));
    assert_eq!(report.ok().as_deref(), Some("q3\n"), "{gvmd_log}");
    assert_eq!(std::fs::read_to_string(workspace.path().join("ledger.csv")).unwrap(), "original\n");
    let applies = sd.sh(&format!("{gvmctl} audit log --profile invoices --json"));
    assert!(applies.contains("\"file_apply\"") && applies.contains("auto_apply"), "{applies}");

    // Stop (through gvmctl): no namespace, mount or nft table left behind, no process.
    let out = sd.sh(&format!("{gvmctl} stop invoices"));
    assert_eq!(out.trim(), "invoices: stop (agent is stopped)");
    let state = sd.exec(&["systemctl", "is-active", "gvm-agent@invoices.service"]).stdout;
    let status = sd.exec(&["systemctl", "status", "--no-pager", "gvm-agent@invoices.service"]).stdout;
    assert_eq!(String::from_utf8_lossy(&state), "inactive\n", "{}", String::from_utf8_lossy(&status));
    let netns = sd.sh("ls /run/gvm/netns/ 2>/dev/null || true");
    assert!(netns.trim().is_empty(), "netns left: {netns}");
    let mounts = sd.sh("cat /proc/self/mountinfo");
    assert!(!mounts.contains("/run/gvm/netns") && !mounts.contains("overlay/"), "mounts left:\n{mounts}");
    let procs = sd.exec(&["pgrep", "-u", "gvm-invoices"]);
    assert!(procs.stdout.is_empty(), "agent processes left: {}", String::from_utf8_lossy(&procs.stdout));
    let out = sd.sh(&format!("{gvmctl} changes invoices --json"));
    let changes: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> = changes.iter().filter_map(|c| c["path"].as_str()).collect();
    assert_eq!(paths, ["ledger.csv"], "{out}");
    let out = sd.sh(&format!("{gvmctl} audit verify"));
    assert!(out.starts_with("ok: "), "{out}");
}
