//! Shared harness of the integration tests: find the built binaries, run gvmd in the
//! foreground on temporary directories, run gvmctl against it. Everything a test
//! starts is stopped in `Drop`, also when the test fails.
#![allow(dead_code)]

pub mod agent;
pub mod bench;
pub mod fake_llm;
pub mod hermes;
pub mod many;
pub mod openclaw;
pub mod systemd;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary built by this workspace (`gvmd`, `gvmctl`), next to the test's
/// own `deps/` directory. `cargo test --workspace` builds them: the daemon and ctl
/// packages have integration tests of their own, which makes cargo build their bins.
/// `GVM_TEST_BIN_DIR` points elsewhere (e.g. a bench built in the dev profile measuring
/// release binaries).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = match std::env::var_os("GVM_TEST_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => exe.parent().and_then(Path::parent).expect("target dir").to_path_buf(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built — run the suite with `cargo test --workspace` (it builds gvmd and gvmctl)",
        path.display()
    );
    path
}

pub fn is_root() -> bool {
    uid() == 0
}

pub fn uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        .unwrap_or(u32::MAX)
}

/// First line of every test marked `#[ignore = "needs root"]`: such a test run on purpose
/// (`--include-ignored`, as `.ci/run` does) without root fails with this reason instead
/// of passing without having tested anything.
pub fn assert_root() {
    assert!(is_root(), "this test needs root: run it as root (`.ci/run` does), or leave out --include-ignored");
}

/// A config, state and runtime directory for one gvmd, removed at the end.
pub struct Dirs {
    pub root: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
    pub runtime: PathBuf,
}

/// Whatever ended the test, gvmd's netns binds under `<runtime>/netns/` go with the
/// directories (gvmd keeps a prepared profile's netns across its own stop, by design:
/// a test that fails between prepare and teardown would leave them mounted).
impl Drop for Dirs {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.runtime.join("netns")) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl Dirs {
    pub fn new() -> Dirs {
        Self::new_in(&std::env::temp_dir())
    }

    /// The same under `parent` (e.g. outside /tmp, which every sandbox replaces with a
    /// private one: there the agent sees the directories only as gvm masks them).
    pub fn new_in(parent: &Path) -> Dirs {
        let root = tempfile::Builder::new().prefix("gvm-test-").tempdir_in(parent).expect("tempdir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = root.path().join("etc");
        let state = root.path().join("state");
        let runtime = root.path().join("run");
        Dirs { config, state, runtime, root }
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime.join("gvmd.sock")
    }

    pub fn profiles(&self) -> PathBuf {
        let p = self.config.join("profiles");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn write_profile(&self, name: &str, text: &str) -> PathBuf {
        let path = self.profiles().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn db(&self) -> PathBuf {
        self.state.join("audit.db")
    }
}

/// A gvmd running in the foreground; SIGTERM then SIGKILL on drop.
pub struct Gvmd {
    pub child: Child,
    pub log: PathBuf,
    socket: PathBuf,
}

impl Gvmd {
    pub fn start(dirs: &Dirs) -> Gvmd {
        Self::start_with_env(dirs, &[])
    }

    pub fn start_with_env(dirs: &Dirs, env: &[(&str, &str)]) -> Gvmd {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dirs.root.path().join(format!("gvmd-{n}.log"));
        let child = Command::new(bin("gvmd"))
            .arg("--foreground")
            .arg("--config-dir")
            .arg(&dirs.config)
            .arg("--state-dir")
            .arg(&dirs.state)
            .arg("--runtime-dir")
            .arg(&dirs.runtime)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn gvmd");
        let mut g = Gvmd { child, log, socket: dirs.socket() };
        g.wait_ready();
        g
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gvmd exited during start-up ({status}):\n{}", self.log_text());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gvmd did not listen on {} within 20 s:\n{}", self.socket.display(), self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // kill(1) keeps the tests free of unsafe code.
        let status = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(15);
        let status = wait_timeout(&mut self.child, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("gvmd did not stop within 20 s of SIGTERM:\n{}", self.log_text()));
        std::mem::forget(self);
        status
    }

    /// SIGKILL and wait (a crash).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Gvmd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").arg("-15").arg(self.child.id().to_string()).status();
            if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Runs gvmctl against `dirs`' socket.
pub fn gvmctl(dirs: &Dirs, args: &[&str]) -> Output {
    gvmctl_cmd(dirs, args).output().expect("run gvmctl")
}

pub fn gvmctl_cmd(dirs: &Dirs, args: &[&str]) -> Command {
    let mut c = Command::new(bin("gvmctl"));
    // Human output is cut to $COLUMNS: tests that read it see whole lines.
    c.args(args).env("GVM_SOCKET", dirs.socket()).env_remove("COLUMNS").stdin(Stdio::null());
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The events of the store as gvmctl shows them in JSON.
pub fn events_json(dirs: &Dirs) -> Vec<serde_json::Value> {
    let out = gvmctl(dirs, &["audit", "log", "--json"]);
    assert!(out.status.success(), "gvmctl audit log failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("audit log --json is JSON")
}

pub fn kinds(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().map(|e| e["kind"].as_str().unwrap_or("").to_string()).collect()
}

/// A free TCP port on 127.0.0.1 (for a host proxy listener in gvmd.toml).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A webhook receiver: answers 200 and keeps each POSTed body.
pub struct Webhook {
    pub port: u16,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        use std::io::{BufRead, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        log.lock().unwrap().push(v);
                    }
                }
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Webhook { port, got }
    }
}
