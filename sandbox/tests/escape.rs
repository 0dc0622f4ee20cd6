//! Escape probes that run *as the agent* and must fail (docs/attacks.md classes 8, 10-15, 17).
mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use gvm_sandbox::{Limits, Stdio};

/// A python probe that calls raw syscalls and prints `name errno` for each.
fn syscall_probe(calls: &[(&str, i64, &str)]) -> String {
    let mut s = String::from(
        "import ctypes, errno\nl = ctypes.CDLL(None, use_errno=True)\nl.syscall.restype = ctypes.c_long\n",
    );
    for (name, nr, args) in calls {
        s.push_str(&format!(
            "r = l.syscall({nr}{args}); print('{name}', 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()])\n"
        ));
    }
    s
}

#[test]
#[ignore = "needs root"]
fn identity_is_unprivileged() {
    assert_root();
    let fx = Fixture::new("ident");
    let o = fx.sh("id -u; id -G; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; cat /proc/self/cgroup; echo pid=$$");
    assert!(o.exit.success(), "{o:?}");
    let out = o.out();
    let mut lines = out.lines();
    assert_eq!(lines.next().unwrap(), fx.uid.to_string());
    assert_eq!(lines.next().unwrap(), fx.gid.to_string(), "no supplementary groups");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(out.contains(&format!("{cap}:\t0000000000000000")), "{cap}: {out}");
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // Own cgroup namespace, own pid namespace (the agent is pid 2, under our init).
    assert!(out.contains("0::/\n") || out.ends_with("0::/") || out.contains("::/\n"), "{out}");
    assert!(out.contains("pid=2"), "{out}");
    fx.assert_no_mounts_except_netns();
}

#[test]
#[ignore = "needs root"]
fn secrets_are_unreadable() {
    assert_root();
    let fx = Fixture::new("secret");
    // Stand-ins: gvmd's CA key and audit db under the state dir; a fake ~/.ssh under /root.
    let ca = fx.paths.state_dir.join("ca");
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::write(ca.join("ca.key"), "CA-KEY-SECRET").unwrap();
    std::fs::write(fx.paths.state_dir.join("audit.db"), "AUDIT-SECRET").unwrap();
    struct RmDir(std::path::PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let fake_root = RmDir(std::path::PathBuf::from(format!("/root/.gvm-test-{}", std::process::id())));
    std::fs::create_dir_all(fake_root.0.join(".ssh")).unwrap();
    std::fs::write(fake_root.0.join(".ssh/id_ed25519"), "SSH-SECRET").unwrap();
    std::fs::set_permissions(fake_root.0.join(".ssh/id_ed25519"), std::fs::Permissions::from_mode(0o644)).unwrap();
    // A .env in the workspace, world-readable on the host: only the mask stops it.
    std::fs::write(fx.workspace.join(".env"), "API_KEY=ENV-SECRET").unwrap();
    std::fs::set_permissions(fx.workspace.join(".env"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir_all(fx.workspace.join("keys")).unwrap();
    std::fs::write(fx.workspace.join("keys/a.pem"), "PEM-SECRET").unwrap();
    std::fs::write(fx.workspace.join("README"), "visible").unwrap();
    let mut spec = fx.spec("/bin/sh", &[]);
    spec.deny_read = vec!["**/.env".into(), "*.pem".into()];
    let script = format!(
        "for f in {ca}/ca.key {audit} {ssh}/.ssh/id_ed25519 /etc/shadow .env keys/a.pem /proc/1/environ /proc/1/mem; do \
         echo \"== $f\"; cat $f 2>&1; done; echo; cat README; echo; ls /proc | grep -c '^[0-9]'",
        ca = path_str(&ca),
        audit = path_str(&fx.paths.state_dir.join("audit.db")),
        ssh = path_str(&fake_root.0),
    );
    spec.args = vec!["-c".into(), script];
    // The launcher inherits this process's environment into init's /proc/1/environ.
    let o = run(spec);
    let out = o.out();
    for secret in ["CA-KEY-SECRET", "AUDIT-SECRET", "SSH-SECRET", "ENV-SECRET", "PEM-SECRET", "root:", "CARGO", "PATH="]
    {
        assert!(!out.contains(secret), "{secret} leaked: {out}");
    }
    assert!(out.contains("visible"), "{out}");
    // Only init and the agent's own processes are visible.
    let pids: usize = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(pids <= 4, "pid namespace shows {pids} processes: {out}");
    drop(o);
    fx.assert_no_mounts_except_netns();
}

#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "needs root"]
fn dangerous_syscalls_are_refused() {
    assert_root();
    let fx = Fixture::new("sysc");
    let probe = syscall_probe(&[
        ("ptrace", libc::SYS_ptrace, ", 0, 1, 0, 0"), // PTRACE_TRACEME on... pid 1 peek
        ("ptrace_attach", libc::SYS_ptrace, ", 16, 1, 0, 0"),
        ("mount", libc::SYS_mount, ", b'none', b'/tmp', b'tmpfs', 0, 0"),
        ("umount2", libc::SYS_umount2, ", b'/proc', 2"),
        ("unshare", libc::SYS_unshare, ", 0x10000000"), // CLONE_NEWUSER
        ("unshare_net", libc::SYS_unshare, ", 0x40000000"),
        ("setns", libc::SYS_setns, ", 0, 0"),
        ("clone_newuser", libc::SYS_clone, ", 0x10000000 | 17, 0, 0, 0, 0"),
        ("clone3", libc::SYS_clone3, ", 0, 0"),
        ("io_uring_setup", libc::SYS_io_uring_setup, ", 8, 0"),
        ("bpf", libc::SYS_bpf, ", 0, 0, 0"),
        ("keyctl", libc::SYS_keyctl, ", 0, -3, 0"),
        ("add_key", libc::SYS_add_key, ", b'user', b'x', b'y', 1, -3"),
        ("perf_event_open", libc::SYS_perf_event_open, ", 0, 0, -1, -1, 0"),
        ("userfaultfd", libc::SYS_userfaultfd, ", 0"),
        ("personality", libc::SYS_personality, ", 0x0040000"),
        ("process_vm_readv", libc::SYS_process_vm_readv, ", 1, 0, 0, 0, 0, 0"),
        ("open_by_handle_at", libc::SYS_open_by_handle_at, ", 0, 0, 0"),
        ("init_module", libc::SYS_init_module, ", 0, 0, b''"),
        ("kexec_load", libc::SYS_kexec_load, ", 0, 0, 0, 0"),
        ("chroot", libc::SYS_chroot, ", b'/tmp'"),
        ("sethostname", libc::SYS_sethostname, ", b'evil', 4"),
        ("pivot_root", libc::SYS_pivot_root, ", b'/tmp', b'/tmp'"),
    ]);
    let o = run(fx.spec("/usr/bin/python3", &["-c", &probe]));
    assert!(o.exit.success(), "{o:?}");
    for line in o.out().lines() {
        let (name, result) = line.split_once(' ').unwrap();
        let want = if name == "clone3" { "ENOSYS" } else { "EPERM" };
        assert_eq!(result, want, "{name}: {}", o.out());
    }
    assert_eq!(o.out().lines().count(), 23, "{}", o.out());
    // The same through the usual tools.
    let o = fx.sh("mount -t tmpfs none /tmp 2>&1; unshare -U true 2>&1; unshare -n true 2>&1; hostname evil 2>&1; \
                   echo '|/tmp/x' > /proc/sys/kernel/core_pattern 2>&1; echo b > /proc/sysrq-trigger 2>&1; hostname");
    let out = o.out();
    assert!(!out.contains("evil\n") && out.lines().last() == Some(&*fx.profile.unix_user()), "{out}");
    let cp = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    assert!(!cp.contains("/tmp/x"), "core_pattern was written: {cp}");
    fx.assert_no_mounts_except_netns();
}

#[test]
#[ignore = "needs root"]
fn setuid_binary_does_not_elevate() {
    assert_root();
    let fx = Fixture::new("suid");
    let id = fx.workspace.join("id");
    // Copied by cp(1), not std::fs::copy: a write descriptor open in this multi-threaded
    // test process could leak into another test's fork and make the exec fail (ETXTBSY).
    assert!(std::process::Command::new("cp").arg("/usr/bin/id").arg(&id).status().unwrap().success());
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let mut spec = fx.spec("/bin/sh", &[]);
    spec.workspaces[0].mode = gvm_sandbox::WorkspaceMode::Rw;
    spec.args = vec!["-c".into(), format!("{} -u; {} -ru", path_str(&id), path_str(&id))];
    let o = run(spec);
    assert!(o.exit.success(), "{o:?}");
    assert_eq!(o.out(), format!("{0}\n{0}", fx.uid), "{o:?}");
    fx.assert_no_mounts_except_netns();
}

#[test]
#[ignore = "needs root"]
fn tiocsti_is_refused_and_no_controlling_tty() {
    assert_root();
    let fx = Fixture::new("tty");
    let pty = nix::pty::openpty(None, None).unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let outf = std::fs::OpenOptions::new().write(true).open(out.path()).unwrap();
    let mut spec = fx.spec("/usr/bin/python3", &[]);
    let probe = "import fcntl, termios, errno, os\n\
        try:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x'); print('TIOCSTI ok')\n\
        except OSError as e:\n    print('TIOCSTI', errno.errorcode[e.errno])\n\
        try:\n    os.open('/dev/tty', os.O_RDWR); print('tty ok')\n\
        except OSError as e:\n    print('tty', errno.errorcode[e.errno])\n";
    spec.args = vec!["-c".into(), probe.into()];
    spec.stdio = Stdio::Fds {
        stdin: pty.slave.try_clone().unwrap(),
        stdout: outf.try_clone().unwrap().into(),
        stderr: outf.into(),
    };
    let mut sb = gvm_sandbox::launch(spec).unwrap();
    assert!(sb.wait().unwrap().success());
    let got = std::fs::read_to_string(out.path()).unwrap();
    assert!(got.contains("TIOCSTI EPERM"), "{got}");
    assert!(got.contains("tty ENXIO"), "{got}");
    // Nothing was injected into the terminal's input queue.
    nix::fcntl::fcntl(&pty.slave, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(nix::unistd::read(&pty.slave, &mut buf), Err(nix::errno::Errno::EAGAIN));
    fx.assert_no_mounts_except_netns();
}

#[test]
#[ignore = "needs root"]
fn overlay_writes_land_in_upper_only() {
    assert_root();
    let fx = Fixture::new("ovl");
    std::fs::set_permissions(&fx.workspace, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(fx.workspace.join("code.py"), "original\n").unwrap();
    std::fs::set_permissions(fx.workspace.join("code.py"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = fx.sh("echo changed > code.py && echo new > new.txt && cat code.py new.txt");
    assert!(o.exit.success(), "{o:?}");
    assert_eq!(o.out(), "changed\nnew");
    assert_eq!(std::fs::read_to_string(fx.workspace.join("code.py")).unwrap(), "original\n");
    assert!(!fx.workspace.join("new.txt").exists());
    let (upper, _) = fx.paths.overlay_dirs("ws").unwrap();
    assert_eq!(std::fs::read_to_string(upper.join("code.py")).unwrap(), "changed\n");
    assert_eq!(std::fs::read_to_string(upper.join("new.txt")).unwrap(), "new\n");
    fx.assert_no_mounts_except_netns();
}

#[test]
#[ignore = "needs root"]
fn sigkill_mid_write_keeps_the_work() {
    assert_root();
    let fx = Fixture::new("kill");
    std::fs::set_permissions(&fx.workspace, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (mut sb, _o, _e) =
        start(fx.spec("/bin/sh", &["-c", "i=0; while :; do echo line$i >> log.txt; i=$((i+1)); done"]));
    let (upper, _) = fx.paths.overlay_dirs("ws").unwrap();
    let log = upper.join("log.txt");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) < 4096 {
        assert!(std::time::Instant::now() < deadline, "the agent never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    let exit = sb.kill().unwrap();
    assert_eq!(exit, gvm_sandbox::Exit::Signaled(nix::sys::signal::Signal::SIGKILL));
    let kept = std::fs::read_to_string(&log).unwrap();
    assert!(kept.starts_with("line0\nline1\n") && kept.len() >= 4096, "{}", kept.len());
    assert!(!fx.workspace.join("log.txt").exists());
    drop(sb);
    // Everything died with the launcher: no process of the agent's uid is left.
    // (They have left the cgroup when `kill` returns; the host's init reaps the last
    // zombies a moment later.)
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = std::process::Command::new("pgrep").args(["-u", &fx.uid.to_string()]).output().unwrap();
        if left.stdout.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent processes left: {:?}",
            String::from_utf8_lossy(&left.stdout)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fx.assert_no_mounts_except_netns();
}

#[test]
#[ignore = "needs root"]
fn fork_bomb_is_stopped_by_the_tasks_limit() {
    assert_root();
    let fx = Fixture::new("bomb");
    let mut spec = fx.spec("/usr/bin/python3", &[]);
    spec.limits = Limits { tasks_max: Some(32), memory_max: Some(512 << 20), cpu_percent: Some(50) };
    let probe = "import os, errno, time\nn = 0\n\
        while True:\n    try:\n        pid = os.fork()\n    except OSError as e:\n        print('blocked', n, errno.errorcode[e.errno], flush=True); break\n\
        \x20   if pid == 0:\n        time.sleep(30); os._exit(0)\n    n += 1\n";
    spec.args = vec!["-c".into(), probe.into()];
    let (mut sb, out, _err) = start(spec);
    let cgs = sb.cgroup_dirs();
    // The host stays healthy meanwhile.
    let ok = std::process::Command::new("/bin/true").status().unwrap();
    assert!(ok.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sb.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "fork bomb still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = out.join().unwrap();
    assert!(got.starts_with("blocked") && got.contains("EAGAIN"), "{got}");
    let n: u64 = got.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n < 32, "{n} forks succeeded");
    drop(sb);
    for cg in cgs {
        assert!(!cg.exists(), "cgroup {} left", cg.display());
    }
    fx.assert_no_mounts_except_netns();
}
