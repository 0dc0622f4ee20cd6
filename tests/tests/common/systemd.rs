//! A throwaway real systemd for tests, on a host whose PID 1 is not systemd.
//!
//! systemd runs as PID 1 of new pid, mount, uts, ipc, cgroup and net namespaces, with
//! an overlay of the host's `/` as its root whose upper layer is a tmpfs: host binaries
//! are all there, and everything the test does inside (unit files, users, the journal,
//! /var/lib/gvm) vanishes at the end. A gvm installed on the host (config, state,
//! units, binaries) is hidden inside, so the tests pass after `./install.sh`. It boots
//! only `gvm-test.target` (basic services and D-Bus), so nothing enabled on the host
//! starts. Booting takes about a second.
//!
//! Needs root and a cgroup2 hierarchy (the whole of /sys/fs/cgroup, or the hybrid
//! layout's /sys/fs/cgroup/unified). Teardown is in `Drop`: poweroff, then
//! `cgroup.kill` on the instance's cgroup, then the cgroup tree is removed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Mounts and pivots into the new root, then becomes systemd. Runs as PID 1 of the new
/// pid namespace. Arguments: the scratch dir, then `SRC:DST` bind mounts.
const INNER: &str = r#"
set -eu
S=$1; shift
R=$S/root
mount -t tmpfs -o mode=700 gvm-sd "$S"
mkdir -p "$S/upper" "$S/work" "$R"
mount -t overlay overlay -o "lowerdir=/,upperdir=$S/upper,workdir=$S/work" "$R"
# gvm may be installed on the host (./install.sh): the instance starts without its
# config, state, units and binaries (whiteouts in the tmpfs upper layer; the host's
# files are untouched), so every test brings its own.
rm -rf "$R/etc/gvm" "$R/var/lib/gvm" "$R/var/log/gvmd.log" "$R/usr/local/bin/gvmd" "$R/usr/local/bin/gvmctl" \
       "$R"/etc/systemd/system/gvm* "$R"/etc/systemd/system/*.wants/gvm* \
       "$R/usr/lib/sysusers.d/gvm.conf" "$R/usr/lib/tmpfiles.d/gvm.conf"
# Users made inside (gvmd's gvm-P, a test's own) get uids no host user has: the host's
# tests clean up by uid (pgrep -u, kill), and an instance's user with the uid of a host
# test's user would be killed with it. useradd reads its ranges from login.defs.
sed -i -E '/^[[:space:]]*(SYS_)?[UG]ID_(MIN|MAX)[[:space:]]/d' "$R/etc/login.defs"
printf '%s\n' 'SYS_UID_MIN 61000' 'SYS_UID_MAX 62999' 'SYS_GID_MIN 61000' 'SYS_GID_MAX 62999' \
    'UID_MIN 63000' 'UID_MAX 64999' 'GID_MIN 63000' 'GID_MAX 64999' >> "$R/etc/login.defs"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,ro "$R/proc/sys"
mount -o remount,bind,rw "$R/proc/sys/net"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid dev "$R/dev"
for d in null zero full random urandom tty net/tun fuse; do
    [ -e "/dev/$d" ] || continue
    mkdir -p "$(dirname "$R/dev/$d")"; touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd "$R/dev/fd"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
mount -t tmpfs -o mode=755,nosuid,nodev run "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$R/tmp"
for b in "$@"; do
    src=${b%%:*}; dst=${b#*:}
    if [ -d "$src" ]; then mkdir -p "$R$dst"; else mkdir -p "$(dirname "$R$dst")"; touch "$R$dst"; fi
    mount --bind "$src" "$R$dst"
done
tr -d - < /proc/sys/kernel/random/uuid > "$R/etc/machine-id"
mkdir -p "$R/run/systemd/system"
cat > "$R/run/systemd/system/gvm-test.target" <<'EOT'
[Unit]
Description=gvm test instance
Requires=sysinit.target
Wants=dbus.socket
After=sysinit.target dbus.socket
AllowIsolate=yes
EOT
for u in systemd-modules-load.service kmod-static-nodes.service sys-kernel-debug.mount \
         sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount \
         systemd-timesyncd.service systemd-pstore.service systemd-binfmt.service \
         proc-sys-fs-binfmt_misc.automount systemd-hwdb-update.service; do
    ln -sf /dev/null "$R/run/systemd/system/$u"
done
cd "$R"
pivot_root . .
umount -l .
cd /
export container=gvm-test
exec /lib/systemd/systemd --unit=gvm-test.target --show-status=no
"#;

fn cgroup2_root() -> PathBuf {
    for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if Path::new(p).join("cgroup.procs").exists() && Path::new(p).join("cgroup.subtree_control").exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified: the systemd tests need one");
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.split_whitespace().next() != Some("Z")))
        .unwrap_or(false)
}

/// A running systemd instance.
pub struct Systemd {
    pid: u32,
    cgroup: PathBuf,
    scratch: tempfile::TempDir,
}

impl Systemd {
    /// Boots an instance; `binds` are host paths mounted read-write at the same path
    /// inside (e.g. the cargo target dir, so freshly built binaries are visible).
    pub fn boot(binds: &[&Path]) -> Systemd {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let taken = passwd.lines().find(|l| {
            l.split(':').nth(2).and_then(|u| u.parse::<u32>().ok()).is_some_and(|u| (61000..65000).contains(&u))
        });
        assert!(
            taken.is_none(),
            "host user {taken:?} has a uid of the range the instances give their users (61000-64999, INNER)"
        );
        let scratch = tempfile::Builder::new().prefix("gvm-sd-").tempdir().unwrap();
        let ns_dir = scratch.path().join("ns");
        std::fs::create_dir(&ns_dir).unwrap();
        let root = cgroup2_root();
        static INSTANCES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cgroup = root.join(format!("gvm-test-sd.{}.{n}", std::process::id()));
        std::fs::create_dir(&cgroup).expect("create the instance's cgroup");
        let console = std::fs::File::create(scratch.path().join("console.log")).unwrap();

        let mut args = vec!["-c".to_string(), "echo $$ > \"$1/cgroup.procs\"; shift; exec \"$@\"".into(), "_".into()];
        args.push(cgroup.display().to_string());
        args.extend(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--uts",
                "--ipc",
                "--cgroup",
                "--net",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                INNER,
                "_",
            ]
            .map(String::from),
        );
        args.push(ns_dir.display().to_string());
        for b in binds {
            args.push(format!("{}:{}", b.display(), b.display()));
        }
        let launcher = Command::new("setsid")
            .arg("sh")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("spawn the systemd launcher");
        let launcher_pid = launcher.id();
        std::mem::forget(launcher); // reaped by nobody we care about; it exits with the instance

        let mut pid = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid.is_none() && Instant::now() < deadline {
            // `setsid` may fork once when we are a group leader; follow children down to
            // the process whose parent is `unshare`.
            pid = find_pid1(launcher_pid);
            if pid.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut sd = Systemd { pid: pid.unwrap_or(0), cgroup, scratch };
        assert!(sd.pid != 0, "the instance did not start:\n{}", sd.console());
        // Keep only the instance's processes in its cgroup.
        let _ = std::fs::write(root.join("cgroup.procs"), launcher_pid.to_string());
        sd.wait_booted();
        sd
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("console.log")).unwrap_or_default()
    }

    fn wait_booted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut state = String::new();
        while Instant::now() < deadline {
            let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid)).unwrap_or_default();
            if exe.ends_with("systemd") {
                state =
                    String::from_utf8_lossy(&self.exec(&["systemctl", "is-system-running"]).stdout).trim().to_string();
                if state == "running" || state == "degraded" {
                    return;
                }
            }
            assert!(alive(self.pid), "systemd died during boot:\n{}", self.console());
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the instance did not boot within 60 s (state {state:?}):\n{}", self.console());
    }

    /// Host PID of the instance's systemd.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The instance's `/`, seen from the host.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    /// Runs a command inside the instance (all its namespaces, its root).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a", "-r", "-w", "--", "env", "SYSTEMD_PAGER=cat", "SYSTEMD_COLORS=0"])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Polls a shell command inside the instance (every 100 ms, up to `limit`) until its
    /// stdout satisfies `pred`; on time-out panics with that output, the journal and the
    /// processes, so a failure says what the instance was doing.
    #[allow(dead_code)]
    pub fn wait_for(&self, script: &str, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.exec(&["sh", "-c", script]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if pred(&text) {
                return text;
            }
            if Instant::now() > deadline {
                let journal = self.exec(&["journalctl", "--no-pager", "-n", "80", "-o", "short-monotonic"]);
                let procs = self.exec(&["ps", "-eo", "pid,user,args"]);
                panic!(
                    "timed out waiting for {what}; last output of `{script}`:\n{text}{}\n--- journal ---\n{}\n--- processes ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&journal.stdout),
                    String::from_utf8_lossy(&procs.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a shell command inside; panics with its output unless it succeeds.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            let journal = self.exec(&["journalctl", "--no-pager", "-n", "40", "-o", "short-monotonic"]);
            panic!(
                "`{script}` failed inside the systemd instance:\n{text}\n--- the journal's last lines ---\n{}",
                String::from_utf8_lossy(&journal.stdout)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn find_pid1(launcher: u32) -> Option<u32> {
    let children = |p: u32| -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().trim().to_string();
    let mut frontier = vec![launcher];
    for _ in 0..4 {
        let mut next = Vec::new();
        for p in frontier {
            for c in children(p) {
                if comm(p) == "unshare" {
                    return Some(c);
                }
                next.push(c);
            }
        }
        frontier = next;
    }
    None
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if self.pid != 0 && alive(self.pid) {
            let _ = Command::new("kill").args(["-s", "RTMIN+4", &self.pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(self.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        if self.pid != 0 && alive(self.pid) {
            let _ = Command::new("kill").args(["-9", &self.pid.to_string()]).status();
        }
        for _ in 0..100 {
            remove_tree(&self.cgroup);
            if !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
