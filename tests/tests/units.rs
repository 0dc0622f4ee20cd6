//! The systemd units and the sysusers/tmpfiles snippets pass systemd's own checkers
//! without a single warning. Runs without a running systemd (offline checks).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Copies a unit into a temp dir with ExecStart pointing at binaries that exist here
/// (the installed paths do not exist on a build machine; `verify` checks them).
fn staged(unit: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("units").join(unit)).unwrap();
    let text = text.replace("/usr/local/bin/gvmd", "/bin/true").replace("/usr/local/bin/gvmctl", "/bin/true");
    let path = dir.join(unit);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_unit_verifies_without_warnings() {
    assert!(have("systemd-analyze"), "systemd-analyze is missing: apt-get install systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("units")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".service") {
            continue;
        }
        let unit = staged(&name, dir.path());
        let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify {name}:\n{err}");
        checked += 1;
    }
    assert!(checked >= 1, "no unit files found in units/");
}

#[test]
fn tmpfiles_and_sysusers_snippets_apply_to_an_empty_root() {
    let root = tempfile::tempdir().unwrap();
    let tmpfiles = repo().join("units/tmpfiles.d/gvm.conf");
    let out = Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.path().display()))
        .arg(&tmpfiles)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    for d in ["etc/gvm/profiles", "var/lib/gvm", "run/gvm"] {
        assert!(root.path().join(d).is_dir(), "{d} not created");
    }

    let sysusers = repo().join("units/sysusers.d/gvm.conf");
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(&sysusers)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("gvm-admin:")), "{group}");
}
