//! Hermes Agent (PyPI `hermes-agent`) for the tests and benches: installed once per
//! machine into a venv of Debian's /usr/bin/python3 under /var/cache/gvm-test-agents
//! (readable by the agents' users; a pyenv python under /root is not), under a lock,
//! bounded in time, and reused by later runs. Needs apt `python3-venv` and PyPI.

use std::path::PathBuf;
use std::process::Command;

pub const VERSION: &str = "0.19.0";
const CACHE: &str = "/var/cache/gvm-test-agents";

/// The venv's `hermes`, installed if missing (pip from PyPI, at most 15 minutes).
pub fn install() -> PathBuf {
    let dir = PathBuf::from(CACHE).join(format!("hermes-{VERSION}"));
    let bin = dir.join("bin/hermes");
    if dir.join(".gvm-complete").exists() {
        return bin;
    }
    std::fs::create_dir_all(CACHE).unwrap();
    std::fs::set_permissions(CACHE, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Under a lock: parallel tests install once. A half-made venv (a killed run) has no
    // marker and is made again. umask 022: the agents' users read it, cannot write it.
    let script = format!(
        "umask 022; [ -e {d}/.gvm-complete ] && exit 0; rm -rf {d}; \
         /usr/bin/python3 -m venv {d} && {d}/bin/pip install --disable-pip-version-check -q hermes-agent=={VERSION} \
         && touch {d}/.gvm-complete",
        d = dir.display()
    );
    let lock = format!("{CACHE}/hermes.lock");
    let out = Command::new("timeout")
        .args(["900", "flock", &lock, "sh", "-c", &script])
        .output()
        .expect("run the Hermes install (needs util-linux flock and coreutils timeout)");
    assert!(
        out.status.success() && dir.join(".gvm-complete").exists(),
        "installing hermes-agent {VERSION} into {} failed (needs apt python3-venv and PyPI): {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}
