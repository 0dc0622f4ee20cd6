//! Agents in gvmd's foreground mode (no systemd): `gvmctl start|stop|restart`, restart
//! on failure, rule changes applied to a running agent at once by `gvmctl reload`, and
//! "restart required" when the [agent] section changes. Privileged (root).

mod common;
use std::time::{Duration, Instant};

use common::agent::Upstream;
use common::*;

fn profile(upstream: u16, allow_secret: bool, tag: &str) -> String {
    let secret_rule = if allow_secret {
        format!(
            "[[network.rule]]\nhost = \"127.0.0.1\"\nport = {upstream}\npath = \"/secret.txt\"\naction = \"allow\"\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"[agent]
command = ["/bin/sh", "-c", "echo start-{tag}; while true; do curl -s -o /dev/null -w '%{{http_code}}\n' http://127.0.0.1:{upstream}/secret.txt; sleep 0.2; done"]

[network]
default = "deny"

{secret_rule}"#
    )
}

fn agent(dirs: &Dirs, name: &str) -> serde_json::Value {
    let out = gvmctl(dirs, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    s["agents"].as_array().unwrap().iter().find(|a| a["profile"] == name).cloned().unwrap_or_default()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root"]
fn start_reload_live_restart_required_crash_restart_and_stop() {
    assert_root();
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let name = format!("fg{}", std::process::id() % 100_000);
    let file = dirs.write_profile(&name, &profile(port, false, "a"));
    let gvmd = Gvmd::start(&dirs);
    let log = dirs.state.join("agents").join(&name).join("agent.log");
    let cleanup = Cleanup { name: name.clone(), runtime: dirs.runtime.clone() };

    let out = gvmctl(&dirs, &["start", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("{name}: start (agent is running)"));
    wait_until("403s in the agent's log", || std::fs::read_to_string(&log).unwrap_or_default().contains("403"));
    let a = agent(&dirs, &name);
    assert_eq!(a["state"], "running");
    let pid = a["main_pid"].as_u64().unwrap();

    // A rule change reaches the running agent at once: same process, now 200s.
    std::fs::write(&file, profile(port, true, "a")).unwrap();
    assert!(gvmctl(&dirs, &["reload"]).status.success());
    wait_until("200s after the reload", || std::fs::read_to_string(&log).unwrap_or_default().contains("200"));
    assert_eq!(agent(&dirs, &name)["main_pid"].as_u64(), Some(pid), "the agent was not restarted");
    assert_eq!(agent(&dirs, &name)["restart_required"], false);

    // An [agent] change needs a restart, and says so.
    std::fs::write(&file, profile(port, true, "b")).unwrap();
    assert!(gvmctl(&dirs, &["reload"]).status.success());
    assert_eq!(agent(&dirs, &name)["restart_required"], true);
    assert!(stdout(&gvmctl(&dirs, &["status"])).contains("running (restart required)"));
    let out = gvmctl(&dirs, &["restart", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("the new command", || std::fs::read_to_string(&log).unwrap_or_default().contains("start-b"));
    let a = agent(&dirs, &name);
    assert_eq!(a["restart_required"], false, "{a:#}");
    assert_ne!(a["main_pid"].as_u64(), Some(pid));

    // A crash (SIGKILL of the launcher) is followed by a restart.
    let pid = agent(&dirs, &name)["main_pid"].as_u64().unwrap();
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    wait_until("the restart", || {
        let a = agent(&dirs, &name);
        a["restarts"] == 1 && a["state"] == "running" && a["main_pid"].as_u64() != Some(pid)
    });

    // Stop: stopped, and the netns is gone.
    let out = gvmctl(&dirs, &["stop", &name]);
    assert_eq!(stdout(&out).trim(), format!("{name}: stop (agent is stopped)"), "{}", stderr(&out));
    assert!(!dirs.runtime.join("netns").join(&name).exists(), "the netns bind is left");
    // Nothing of any generation of the agent is left, the SIGKILLed one included.
    let left = std::process::Command::new("pgrep").args(["-f", "--", &format!("--profile {name} ")]).output().unwrap();
    assert!(left.stdout.is_empty(), "processes left: {}", String::from_utf8_lossy(&left.stdout));
    let kinds = kinds(&events_json(&dirs));
    for k in ["agent_start", "agent_restart", "agent_stop"] {
        assert!(kinds.iter().any(|x| x == k), "{k} not audited: {kinds:?}");
    }
    drop(gvmd);
    drop(cleanup);
}

/// Removes what a failed run may leave: the profile's user and netns bind.
struct Cleanup {
    name: String,
    runtime: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ns = self.runtime.join("netns").join(&self.name);
        let _ = std::process::Command::new("umount").arg("-l").arg(&ns).status();
        let _ = std::fs::remove_file(&ns);
        let _ = std::process::Command::new("userdel").arg(format!("gvm-{}", self.name)).output();
    }
}

/// gvmd dies (SIGKILL) while a `gvmctl run` is going on: the sandbox goes with it
/// instead of running on unsupervised, and gvmctl says gvmd went away.
#[test]
#[ignore = "needs root"]
fn a_run_does_not_outlive_a_killed_gvmd() {
    assert_root();
    let dirs = Dirs::new();
    let name = format!("rk{}", std::process::id() % 100_000);
    dirs.write_profile(&name, "[network]\ndefault = \"deny\"\n");
    let gvmd = Gvmd::start(&dirs);
    let cleanup = Cleanup { name: name.clone(), runtime: dirs.runtime.clone() };
    let run = gvmctl_cmd(&dirs, &["run", "--profile", &name, "--", "/bin/sleep", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let user = format!("gvm-{name}");
    let pgrep = || std::process::Command::new("pgrep").args(["-u", &user]).output().unwrap().stdout;
    wait_until("the sleeping agent", || !pgrep().is_empty());
    // A foreground agent of another profile, started by gvmd, must go too.
    let fg = format!("rkfg{}", std::process::id() % 100_000);
    dirs.write_profile(&fg, "[agent]\ncommand = [\"/bin/sleep\", \"30\"]\n");
    assert!(gvmctl(&dirs, &["reload"]).status.success());
    assert!(gvmctl(&dirs, &["start", &fg]).status.success());
    let fg_user = format!("gvm-{fg}");
    let fg_pgrep = || std::process::Command::new("pgrep").args(["-u", &fg_user]).output().unwrap().stdout;
    let fg_cleanup = Cleanup { name: fg.clone(), runtime: dirs.runtime.clone() };
    wait_until("the foreground agent", || !fg_pgrep().is_empty());
    gvmd.kill();
    wait_until("the sandbox to go with gvmd", || pgrep().is_empty());
    wait_until("the foreground agent to go with gvmd", || fg_pgrep().is_empty());
    drop(fg_cleanup);
    let out = run.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gvmd closed the session"), "{out:?}");
    // The next gvmd removes what the killed one left (its netns binds).
    let gvmd = Gvmd::start(&dirs);
    wait_until("the stale netns removed", || !dirs.runtime.join("netns").join(&name).exists());
    drop(gvmd);
    drop(cleanup);
}

/// `gvmctl run --watch`: what the rules would refuse goes through, recorded as `watch`
/// with what enforce mode would have done; without --watch it is refused.
#[test]
#[ignore = "needs root"]
fn watch_mode_runs_allow_and_record_what_enforce_would_do() {
    assert_root();
    let dirs = Dirs::new();
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let name = format!("wm{}", std::process::id() % 100_000);
    dirs.write_profile(
        &name,
        &format!("[network]\ndefault = \"deny\"\n\n[[network.rule]]\nhost = \"127.0.0.1\"\nport = {port}\npath = \"/ok\"\naction = \"allow\"\n"),
    );
    let _gvmd = Gvmd::start(&dirs);
    let _cleanup = Cleanup { name: name.clone(), runtime: dirs.runtime.clone() };
    let probe = format!("curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/secret");
    let out = gvmctl(&dirs, &["run", "--profile", &name, "--", "sh", "-c", &probe]);
    assert_eq!(stdout(&out), "403", "{}", stderr(&out));
    let out = gvmctl(&dirs, &["run", "--profile", &name, "--watch", "--", "sh", "-c", &probe]);
    assert_eq!(stdout(&out), "200", "{}", stderr(&out));
    assert!(stderr(&out).contains("1 requests allowed, 0 denied"), "{}", stderr(&out));
    let events = events_json(&dirs);
    let decisions: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "http" && e["details"]["path"] == "/secret")
        .map(|e| e["decision"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(decisions, ["deny", "watch"]);
    // After the watched run the profile is enforced again.
    let out = gvmctl(&dirs, &["run", "--profile", &name, "--", "sh", "-c", &probe]);
    assert_eq!(stdout(&out), "403");
}
