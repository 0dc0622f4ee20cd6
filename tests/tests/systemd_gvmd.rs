//! gvmd under a real systemd: `systemctl start gvmd` returns only once gvmd is ready
//! (socket listening, database open), STATUS= is shown, the watchdog is fed, reload
//! and stop work, and the journal carries the structured GVM_* fields.
//! Privileged (root): boots a throwaway systemd instance (see common/systemd.rs).

mod common;
use std::path::Path;

use common::systemd::Systemd;
use common::*;

#[test]
#[ignore = "needs root"]
fn gvmd_service_under_systemd() {
    assert_root();
    let bin_dir = bin("gvmd").parent().unwrap().to_path_buf();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let sd = Systemd::boot(&[&bin_dir, &repo.join("units")]);
    let gvmd = bin("gvmd").display().to_string();
    let gvmctl = bin("gvmctl").display().to_string();

    // The unit as installed, pointing at the freshly built binary, with a short
    // watchdog so the test sees it fed.
    let unit = std::fs::read_to_string(repo.join("units/gvmd.service")).unwrap().replace("/usr/local/bin/gvmd", &gvmd);
    std::fs::write(sd.root().join("etc/systemd/system/gvmd.service"), unit).unwrap();
    std::fs::create_dir_all(sd.root().join("etc/systemd/system/gvmd.service.d")).unwrap();
    std::fs::write(sd.root().join("etc/systemd/system/gvmd.service.d/test.conf"), "[Service]\nWatchdogSec=2s\n")
        .unwrap();
    std::fs::create_dir_all(sd.root().join("etc/gvm/profiles")).unwrap();
    std::fs::write(
        sd.root().join("etc/gvm/profiles/invoices.toml"),
        "[network]\ndefault = \"deny\"\n\n[[network.rule]]\nhost = \"api.example.com\"\naction = \"allow\"\n",
    )
    .unwrap();
    sd.sh("systemctl daemon-reload");

    // Type=notify: `start` returns once READY=1 arrived, and by then the socket listens.
    sd.sh("systemctl start gvmd.service");
    sd.sh("test -S /run/gvm/gvmd.sock");
    assert_eq!(sd.sh("systemctl is-active gvmd.service").trim(), "active");
    let status = sd.sh("systemctl show -p StatusText --value gvmd.service");
    assert!(status.contains("1 profiles in force, 0 refused"), "STATUS= not shown: {status}");
    let out = sd.sh(&format!("{gvmctl} status"));
    assert!(out.contains("invoices") && out.contains("enforce"), "{out}");

    // The watchdog (2 s) is fed: after 5 s gvmd has not been restarted.
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(sd.sh("systemctl show -p NRestarts --value gvmd.service").trim(), "0");
    assert_eq!(sd.sh("systemctl is-active gvmd.service").trim(), "active");

    // Reload through systemd re-reads the profiles.
    std::fs::write(sd.root().join("etc/gvm/profiles/invoices.toml"), "[network]\ndefault = \"hold\"\nbogus = 1\n")
        .unwrap();
    sd.sh("systemctl reload gvmd.service");
    let out = sd.sh(&format!("{gvmctl} status --json"));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["profiles"][0]["stale"], true, "{s:#}");
    assert_eq!(s["refused"][0]["line"], 3, "{s:#}");

    // The journal has gvmd's events with their structured fields.
    let journal = sd.sh("journalctl -u gvmd.service GVM_EVENT_KIND=profile_refused -o json --no-pager");
    let entry: serde_json::Value =
        serde_json::from_str(journal.lines().next().expect("a profile_refused entry")).unwrap();
    assert_eq!(entry["GVM_PROFILE"], "invoices");
    assert!(entry["GVM_EVENT_SEQ"].as_str().unwrap().parse::<u64>().unwrap() >= 3);
    let journal = sd.sh("journalctl -u gvmd.service GVM_EVENT_SEQ=1 -o cat --no-pager");
    assert!(journal.contains("daemon_start"), "{journal}");

    // Stop: clean exit, the stop event is the last, and the chain verifies.
    sd.sh("systemctl stop gvmd.service");
    assert_eq!(sd.exec(&["systemctl", "is-active", "gvmd.service"]).stdout, b"inactive\n");
    let out = sd.sh(&format!("{gvmctl} audit verify --state-dir /var/lib/gvm"));
    assert!(out.starts_with("ok: "), "{out}");
    let _ = gvmd;
}
