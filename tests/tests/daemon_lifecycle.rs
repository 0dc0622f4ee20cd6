//! gvmd starts on empty directories, answers gvmctl, stops on SIGTERM and restarts on
//! the same state with its audit chain intact.

mod common;
use common::*;

#[test]
fn starts_empty_stops_on_sigterm_and_restarts_with_the_chain_intact() {
    let dirs = Dirs::new();
    let gvmd = Gvmd::start(&dirs);

    let out = gvmctl(&dirs, &["status"]);
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("running (pid"), "{text}");
    assert!(text.contains("No profiles in force"), "{text}");

    let status = gvmd.stop();
    assert!(status.success(), "gvmd exited with {status} on SIGTERM");
    assert!(!dirs.socket().exists(), "the socket file is removed on shutdown");

    let gvmd = Gvmd::start(&dirs);
    let events = events_json(&dirs);
    assert_eq!(kinds(&events), ["daemon_start", "daemon_stop", "daemon_start"]);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);

    let out = gvmctl(&dirs, &["audit", "verify"]);
    assert!(out.status.success(), "verify failed: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).starts_with("ok: 3 events, "), "{}", stdout(&out));

    let out = gvmctl(&dirs, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["audit"]["last_seq"], 3);
    assert_eq!(s["pid"], gvmd.pid());
    gvmd.stop();
}

#[test]
fn a_second_gvmd_on_the_same_socket_is_refused() {
    let dirs = Dirs::new();
    let _gvmd = Gvmd::start(&dirs);
    let out = std::process::Command::new(bin("gvmd"))
        .args(["--foreground", "--config-dir"])
        .arg(&dirs.config)
        .arg("--state-dir")
        .arg(dirs.root.path().join("other-state"))
        .arg("--runtime-dir")
        .arg(&dirs.runtime)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("another gvmd is already answering on"), "{err}");
    assert!(dirs.socket().exists(), "the running gvmd keeps its socket");
}

#[test]
fn gvmctl_says_what_to_do_when_gvmd_is_not_running() {
    let dirs = Dirs::new();
    let out = gvmctl(&dirs, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("gvmd is not running"), "{err}");
    assert!(err.contains("systemctl start gvmd") && err.contains("gvmd --foreground"), "{err}");
}

#[test]
fn a_broken_daemon_config_stops_start_up_with_file_line_column() {
    let dirs = Dirs::new();
    std::fs::create_dir_all(&dirs.config).unwrap();
    let file = dirs.config.join("gvmd.toml");
    std::fs::write(&file, "[audit]\ncheckpoint_every = \"many\"\n").unwrap();
    let out = std::process::Command::new(bin("gvmd"))
        .arg("--foreground")
        .arg("--config-dir")
        .arg(&dirs.config)
        .arg("--state-dir")
        .arg(&dirs.state)
        .arg("--runtime-dir")
        .arg(&dirs.runtime)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:2:", file.display())), "{err}");
    assert!(err.contains("checkpoint_every"), "{err}");
}
