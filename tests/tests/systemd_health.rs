//! gvmd's health and confinement under a real systemd, as the units are installed.
//! - The watchdog is fed only through a round trip to the audit writer that commits:
//!   when the state dir's file system hangs (frozen), pings stop and systemd restarts
//!   gvmd once the disk answers again.
//! - A JIT's writable-then-executable memory works the same in a `gvm-agent@` unit and
//!   in a `gvmctl run` sandbox forked by gvmd.service.
//!
//! Privileged (root): boots a throwaway systemd instance (see common/systemd.rs).

mod common;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::systemd::Systemd;
use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Installs gvmd.service (and gvm-agent@.service) as shipped, pointing at the built
/// binary, with `state` as gvmd's state dir and the watchdog at `watchdog`.
fn install_units(sd: &Systemd, state: &Path, watchdog: &str) {
    let gvmd = bin("gvmd").display().to_string();
    let root = sd.root();
    for unit in ["gvmd.service", "gvm-agent@.service"] {
        let text =
            std::fs::read_to_string(repo().join("units").join(unit)).unwrap().replace("/usr/local/bin/gvmd", &gvmd);
        std::fs::write(root.join("etc/systemd/system").join(unit), text).unwrap();
    }
    std::fs::create_dir_all(root.join("etc/systemd/system/gvmd.service.d")).unwrap();
    std::fs::write(
        root.join("etc/systemd/system/gvmd.service.d/test.conf"),
        format!(
            "[Service]\nWatchdogSec={watchdog}\nExecStart=\nExecStart={gvmd} --foreground --config-dir /etc/gvm --state-dir {} --runtime-dir /run/gvm\n",
            state.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("etc/gvm/profiles")).unwrap();
}

/// A small ext4 file system on a loop device, mounted on a fresh directory; thawed,
/// unmounted and detached on drop, whatever the test did to it.
struct LoopFs {
    dir: tempfile::TempDir,
}

impl LoopFs {
    fn new() -> LoopFs {
        let dir = tempfile::Builder::new().prefix("gvm-loopfs-").tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let run = |c: &mut Command| {
            let out = c.output().unwrap();
            assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(Command::new("truncate").arg("-s").arg("64M").arg(&img));
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        run(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt));
        LoopFs { dir }
    }
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    fn freeze(&self, on: bool) -> bool {
        Command::new("fsfreeze").arg(if on { "-f" } else { "-u" }).arg(self.mnt()).status().is_ok_and(|s| s.success())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.freeze(false);
        // The loop device was set up with autoclear: it goes with the last unmount.
        let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
    }
}

#[test]
#[ignore = "needs root"]
fn a_hung_audit_store_stops_the_watchdog_and_systemd_restarts_gvmd() {
    assert_root();
    let fs = LoopFs::new();
    let state = fs.mnt().join("gvm");
    std::fs::create_dir(&state).unwrap();
    let bin_dir = bin("gvmd").parent().unwrap().to_path_buf();
    let sd = Systemd::boot(&[&bin_dir, &fs.mnt()]);
    install_units(&sd, &state, "2s");
    sd.sh("systemctl daemon-reload");
    sd.sh("systemctl start gvmd.service");
    let pid = sd.sh("systemctl show -p MainPID --value gvmd.service");

    // Fed while healthy: no restart over several watchdog periods.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(sd.sh("systemctl show -p NRestarts --value gvmd.service").trim(), "0");
    assert_eq!(sd.sh("systemctl is-active gvmd.service").trim(), "active");

    // The disk stops answering: the writer's probe hangs in its commit, the pings stop,
    // and systemd sees the watchdog expire (though `status` would still answer).
    assert!(fs.freeze(true), "fsfreeze");
    let journal = sd.wait_for(
        "journalctl -u gvmd.service -o cat --no-pager",
        "the watchdog to expire",
        Duration::from_secs(30),
        |t| t.contains("Watchdog timeout"),
    );
    assert!(journal.contains("the audit store is not healthy"), "gvmd says why it stopped feeding:\n{journal}");
    // The disk is back: the old process finishes dying and systemd starts a new one.
    assert!(fs.freeze(false), "fsfreeze -u");
    sd.wait_for("systemctl show -p NRestarts --value gvmd.service", "a restart", Duration::from_secs(60), |t| {
        t.trim().parse::<u32>().is_ok_and(|n| n >= 1)
    });
    sd.wait_for("systemctl is-active gvmd.service", "gvmd active again", Duration::from_secs(30), |t| {
        t.trim() == "active"
    });
    assert_ne!(sd.sh("systemctl show -p MainPID --value gvmd.service"), pid);
    let out = sd.sh(&format!("{} audit verify --state-dir {}", bin("gvmctl").display(), state.display()));
    assert!(out.starts_with("ok: "), "{out}");
}

/// Maps writable+executable memory, and makes a writable mapping executable, the two
/// things a JIT does; prints what the kernel said.
const WX_PROBE: &str = r#"
import ctypes, mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("wx-mmap: ok")
except OSError as e:
    print("wx-mmap: refused", e.errno)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
p = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
r = libc.mprotect(ctypes.c_void_p(p), 4096, mmap.PROT_READ | mmap.PROT_EXEC)
print("wx-mprotect:", "ok" if r == 0 else "refused %d" % ctypes.get_errno())
"#;

#[test]
#[ignore = "needs root"]
fn jit_memory_works_alike_in_agent_units_and_gvmctl_run() {
    assert_root();
    // Agents' overlay upper dirs cannot live on the instance's root (an overlay itself).
    let state = tempfile::Builder::new().prefix("gvm-sd-state-").tempdir().unwrap();
    let bin_dir = bin("gvmd").parent().unwrap().to_path_buf();
    let sd = Systemd::boot(&[&bin_dir, state.path()]);
    install_units(&sd, state.path(), "30s");
    let root = sd.root();
    std::fs::create_dir_all(root.join("srv")).unwrap();
    std::fs::write(root.join("srv/wx.py"), WX_PROBE).unwrap();
    std::fs::write(
        root.join("etc/gvm/profiles/jit.toml"),
        "[agent]\ncommand = [\"/usr/bin/python3\", \"/srv/wx.py\"]\n\n[network]\ndefault = \"deny\"\n",
    )
    .unwrap();
    sd.sh("systemctl daemon-reload");
    sd.sh("systemctl start gvmd.service");

    sd.sh("systemctl start gvm-agent@jit.service");
    let unit = sd.wait_for(
        "journalctl -u gvm-agent@jit.service -o cat --no-pager",
        "the unit's probe",
        Duration::from_secs(30),
        |t| t.contains("wx-mprotect:"),
    );
    let run = sd.sh(&format!("{} run --profile jit -- /usr/bin/python3 /srv/wx.py 2>&1", bin("gvmctl").display()));
    for (path, out) in [("gvm-agent@jit", &unit), ("gvmctl run", &run)] {
        assert!(out.contains("wx-mmap: ok") && out.contains("wx-mprotect: ok"), "{path}:\n{out}");
    }
}
