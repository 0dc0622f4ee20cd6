//! The README's first command: `sudo ./install.sh` installs gvm, starts gvmd under
//! systemd and runs the demo agent — one request allowed, one denied, both in the audit
//! log — and `--uninstall --purge` takes it all away again. Runs in a throwaway real
//! systemd (root), with the debug binaries this test run built (GVM_PREBUILT) so it does
//! not spend minutes on a release build.

mod common;
use std::path::Path;

use common::systemd::Systemd;
use common::*;

#[test]
#[ignore = "needs root"]
fn install_runs_the_demo_and_uninstall_removes_everything() {
    assert_root();
    let bin_dir = bin("gvmd").parent().unwrap().to_path_buf();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let sd = Systemd::boot(&[&bin_dir, &repo]);
    let repo_s = repo.display().to_string();

    let out = sd.exec(&["env", &format!("GVM_PREBUILT={}", bin_dir.display()), &format!("{repo_s}/install.sh")]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "install.sh failed:\n{text}");
    assert!(text.contains("gvmd runs as gvmd.service"), "{text}");
    assert!(text.contains("allowed: hello from the allowed site"), "{text}");
    assert!(text.contains("denied:  HTTP 403 (the secret never left the machine)"), "{text}");
    assert!(text.contains("1 requests allowed, 1 denied"), "{text}");
    // The audit log table printed at the end shows both decisions.
    assert!(text.lines().any(|l| l.contains(" http ") && l.contains(" allow ")), "{text}");
    assert!(
        text.lines().any(|l| l.contains(" http ") && l.contains(" deny ") && l.contains("exfil.example")),
        "{text}"
    );
    assert_eq!(sd.sh("systemctl is-active gvmd.service").trim(), "active");
    assert_eq!(sd.sh("systemctl is-enabled gvmd.service").trim(), "enabled");
    assert!(sd.sh("getent group gvm-admin").starts_with("gvm-admin:"));

    // Idempotent: a second run works on the installed state.
    let out =
        sd.exec(&["env", &format!("GVM_PREBUILT={}", bin_dir.display()), &format!("{repo_s}/install.sh"), "--no-demo"]);
    assert!(out.status.success(), "second install.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let out = sd.exec(&[&format!("{repo_s}/install.sh"), "--uninstall", "--purge"]);
    assert!(out.status.success(), "uninstall failed:\n{}", String::from_utf8_lossy(&out.stderr));
    for gone in ["/usr/local/bin/gvmd", "/usr/local/bin/gvmctl", "/etc/systemd/system/gvmd.service", "/var/lib/gvm"] {
        assert!(sd.exec(&["test", "-e", gone]).status.code() == Some(1), "{gone} is still there");
    }
    assert_ne!(sd.exec(&["systemctl", "is-active", "gvmd.service"]).stdout, b"active\n");
    assert!(!sd.exec(&["getent", "passwd", "gvm-demo"]).status.success(), "the demo agent's user is left");
    assert!(!sd.exec(&["getent", "group", "gvm-admin"]).status.success(), "the gvm-admin group is left");
}
