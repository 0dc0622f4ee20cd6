//! Helpers of the gvmd-level escape tests: a profile's sandbox driven through
//! `gvmctl run` (the agent's view), upstreams on the host's loopback that record what
//! reached them (plain HTTP, and TLS under a test CA of their own), test hosts in network
//! namespaces of the test's own wired into the profile's netns, and a guard that removes
//! what gvmd leaves behind on stop (the profile's netns bind, the `gvm-<profile>` user).
//!
//! Network rule of these tests: every address they touch is loopback or a test host in a
//! namespace they created themselves.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::unix::fs::PermissionsExt;

use super::{gvmctl, gvmctl_cmd, stderr, wait_timeout, Dirs, Gvmd};

/// A profile name unique to this process and `tag` (`esc<pid%1000><tag>`).
pub fn unique_profile(tag: &str) -> String {
    let name = format!("esc{}{tag}", std::process::id() % 1000);
    assert!(name.len() <= 27, "profile name {name} is too long");
    name
}

fn retry_locked(what: &str, args: &[&str]) {
    for attempt in 0..60 {
        let Ok(o) = Command::new(what).args(args).output() else { return };
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.success() || !(err.contains("lock") || err.contains("try again")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20 + attempt * 10));
    }
}

fn user_exists(name: &str) -> bool {
    nix::unistd::User::from_name(name).ok().flatten().is_some()
}

fn group_exists(name: &str) -> bool {
    nix::unistd::Group::from_name(name).ok().flatten().is_some()
}

/// What a test leaves on the host, removed in `Drop` (also when the test fails): users
/// (after killing their processes one pid at a time), groups, and stray paths. Drop it
/// after gvmd (the netns binds go with the test's `Dirs`).
#[derive(Default)]
pub struct Leftovers {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub paths: Vec<PathBuf>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for user in &self.users {
            if !user_exists(user) {
                continue;
            }
            if let Ok(o) = Command::new("pgrep").args(["-u", user]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).stderr(Stdio::null()).status();
                }
            }
        }
        for user in &self.users {
            if user_exists(user) {
                retry_locked("userdel", &[user]);
            }
        }
        for group in &self.groups {
            if group_exists(group) {
                retry_locked("groupdel", &[group]);
            }
        }
        for p in &self.paths {
            let _ = std::fs::remove_dir_all(p);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What `gvmctl run` gave back.
#[derive(Debug)]
pub struct Ran {
    /// gvmctl's exit code (the command's, when it ran).
    pub code: Option<i32>,
    /// The command's stdout (gvmctl hands its own stdout to the sandbox).
    pub out: String,
    /// The command's stderr followed by gvmctl's summary line.
    pub err: String,
}

impl Ran {
    /// gvmctl's one-line summary (`gvm: P: exit N in X s; ...`).
    pub fn summary(&self) -> &str {
        self.err.lines().rev().find(|l| l.starts_with("gvm: ")).unwrap_or("")
    }
}

/// Reads a pipe to its end on a thread of its own (so a full pipe never blocks the child).
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// Runs `cmd` with stdout and stderr piped, killed (and the test failed) after `limit`.
pub fn output_within(mut cmd: Command, limit: Duration) -> Ran {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_timeout(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let ran = Ran { code: status.and_then(|s| s.code()), out: out.join().unwrap(), err: err.join().unwrap() };
    assert!(status.is_some(), "{cmd:?} did not end within {limit:?}: {ran:#?}");
    ran
}

/// One gvmd with one profile `P` whose agent is probed through `gvmctl run`. Field order
/// is drop order: gvmd stops first, then the leftovers go, then the directories.
pub struct Sandboxed {
    pub gvmd: Option<Gvmd>,
    pub leftovers: Leftovers,
    pub profile: String,
    /// The profile's workspace (0777: the agent writes as gvm-P).
    pub ws: PathBuf,
    pub dirs: Dirs,
}

impl Sandboxed {
    /// Directories, a workspace and a unique profile name; nothing started yet.
    pub fn new(tag: &str) -> Sandboxed {
        Self::with_dirs(tag, Dirs::new())
    }

    /// With gvmd's directories under /var/lib instead of /tmp: the agent's private /tmp
    /// then does not hide them by accident, gvm's masks must.
    pub fn outside_tmp(tag: &str) -> Sandboxed {
        Self::with_dirs(tag, Dirs::new_in(Path::new("/var/lib")))
    }

    fn with_dirs(tag: &str, dirs: Dirs) -> Sandboxed {
        let profile = unique_profile(tag);
        let ws = dirs.root.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut leftovers = Leftovers::default();
        leftovers.users.push(format!("gvm-{profile}"));
        Sandboxed { gvmd: None, leftovers, profile, ws, dirs }
    }

    /// Writes gvmd.toml and the profile, starts gvmd with `env` added to its environment.
    pub fn start(&mut self, gvmd_toml: &str, profile_toml: &str, env: &[(&str, &str)]) {
        std::fs::create_dir_all(&self.dirs.config).unwrap();
        std::fs::write(self.dirs.config.join("gvmd.toml"), gvmd_toml).unwrap();
        self.dirs.write_profile(&self.profile, profile_toml);
        self.gvmd = Some(Gvmd::start_with_env(&self.dirs, env));
    }

    pub fn gvmd(&self) -> &Gvmd {
        self.gvmd.as_ref().expect("gvmd started")
    }

    /// `gvmctl run --profile P -- argv...` as root.
    pub fn run(&self, argv: &[&str]) -> Ran {
        let mut args = vec!["run", "--profile", &self.profile, "--"];
        args.extend_from_slice(argv);
        let ran = output_within(gvmctl_cmd(&self.dirs, &args), Duration::from_secs(120));
        if std::env::var_os("GVMT_VERBOSE").is_some() {
            eprintln!("{argv:?} -> {ran:#?}");
        }
        ran
    }

    pub fn sh(&self, script: &str) -> Ran {
        self.run(&["sh", "-c", script])
    }

    pub fn py(&self, code: &str) -> Ran {
        self.run(&["/usr/bin/python3", "-c", code])
    }

    /// Starts `gvmctl run --profile P -- argv...` with a pipe as the agent's stdin and
    /// returns once the agent runs (its user has processes and the profile's netns is
    /// up: gvmd makes a fresh one per run and removes it afterwards).
    pub fn spawn(&self, argv: &[&str]) -> Running {
        let mut args = vec!["run", "--profile", &self.profile, "--"];
        args.extend_from_slice(argv);
        let mut cmd = gvmctl_cmd(&self.dirs, &args);
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let out = drain(child.stdout.take().unwrap());
        let err = drain(child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        let running = Running { child, stdin, out: Some(out), err: Some(err) };
        let user = format!("gvm-{}", self.profile);
        let netns = self.netns_path();
        wait_for(Duration::from_secs(30), "the agent to run in its netns", || {
            let procs = Command::new("pgrep").args(["-u", &user]).output().map(|o| !o.stdout.is_empty());
            procs.unwrap_or(false)
                && Command::new("nsenter")
                    .arg(format!("--net={}", netns.display()))
                    .arg("true")
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
        });
        running
    }

    /// The events of this profile, of `kind` (all kinds when empty), oldest first.
    pub fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        let out = gvmctl(&self.dirs, &["audit", "log", "--json", "--limit", "100000"]);
        assert!(out.status.success(), "gvmctl audit log failed: {}", stderr(&out));
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
        all.into_iter()
            .filter(|e| e["profile"] == self.profile.as_str() && (kind.is_empty() || e["kind"] == kind))
            .collect()
    }

    /// Where gvmd bound the profile's network namespace (exists after the first run).
    pub fn netns_path(&self) -> PathBuf {
        self.dirs.runtime.join("netns").join(&self.profile)
    }

    /// The overlay upper dir of the (single) workspace.
    pub fn upper(&self) -> PathBuf {
        let overlay = self.dirs.state.join("agents").join(&self.profile).join("overlay");
        let mut ids: Vec<PathBuf> = std::fs::read_dir(&overlay)
            .unwrap_or_else(|e| panic!("{}: {e}", overlay.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        ids.remove(0).join("upper")
    }
}

/// A `gvmctl run` in progress (see [`Sandboxed::spawn`]); killed if dropped unfinished.
pub struct Running {
    pub child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Writes a line to the agent's stdin (its cue to go on).
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).expect("write to the agent's stdin");
    }

    /// Closes the agent's stdin and waits for the end (at most `limit`).
    pub fn finish(mut self, limit: Duration) -> Ran {
        self.stdin = None;
        let status = wait_timeout(&mut self.child, limit);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let ran = Ran {
            code: status.and_then(|s| s.code()),
            out: self.out.take().unwrap().join().unwrap(),
            err: self.err.take().unwrap().join().unwrap(),
        };
        assert!(status.is_some(), "gvmctl run did not end within {limit:?}: {ran:#?}");
        if std::env::var_os("GVMT_VERBOSE").is_some() {
            eprintln!("{ran:#?}");
        }
        ran
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.1 server answering `ok <path>`, over plain TCP or TLS; it records
/// the request line of everything that reached it.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Every header line and body byte that reached it (bodies chunk by chunk, as they
    /// arrive: a request the gateway aborts part-way leaves what was forwarded).
    pub got: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
}

/// What reached an [`Upstream`] besides request lines.
#[derive(Default)]
pub struct Received {
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

/// A test CA and a server config for `names`, signed by it.
pub struct TestCa {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new(names: &[&str]) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "gvm escape tests upstream CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, names[0]);
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
            leaf_key.serialize_der(),
        ));
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)
            .unwrap();
        TestCa { ca_pem: ca_cert.pem(), server: Arc::new(server) }
    }
}

fn serve_http<S: Read + Write>(conn: S, seen: &Mutex<Vec<String>>, got: &Mutex<Received>) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        seen.lock().unwrap().push(line.trim_end().to_string());
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            got.lock().unwrap().headers.push(h.trim_end().to_string());
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if h.to_ascii_lowercase().starts_with("transfer-encoding:") && h.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return; // aborted mid-body
                }
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                got.lock().unwrap().body.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            got.lock().unwrap().body.extend_from_slice(&body);
        }
        let text = format!("ok {path}");
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len());
        let conn = reader.get_mut();
        if conn.write_all(answer.as_bytes()).and_then(|()| conn.flush()).is_err() {
            return;
        }
    }
}

impl Upstream {
    /// Plain HTTP on 127.0.0.1 (`tls`: None) or TLS with the given server config.
    pub fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::new(Mutex::new(Received::default()));
        let (flag, log, got2) = (stop.clone(), seen.clone(), got.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let (log, tls, got) = (log.clone(), tls.clone(), got2.clone());
                std::thread::spawn(move || match tls {
                    None => serve_http(conn, &log, &got),
                    Some(cfg) => {
                        let Ok(server) = rustls::ServerConnection::new(cfg) else { return };
                        serve_http(rustls::StreamOwned::new(server, conn), &log, &got);
                    }
                });
            }
        });
        Upstream { addr, seen, got, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// True when `needle` reached it in a header line or a body.
    pub fn received(&self, needle: &str) -> bool {
        let g = self.got.lock().unwrap();
        g.headers.iter().any(|h| h.contains(needle)) || g.body.windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// A host service on the host's loopback that must never hear from an agent.
pub struct LoopbackService {
    pub listener: TcpListener,
    pub port: u16,
}

impl LoopbackService {
    pub fn start() -> LoopbackService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        LoopbackService { listener, port }
    }

    pub fn assert_untouched(&self) {
        match self.listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the host's loopback service received a connection: {other:?}"),
        }
    }
}

struct HostSockets {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

/// A test host in a network namespace of the test's own, held by a `sleep` child of the
/// test (`unshare --net`; no name under /run/netns, nothing left on the host when it
/// goes), joined to the profile's netns by a veth pair made inside that netns with its
/// peer sent straight to the test host's (nothing appears in the host's netns):
/// 10.203.N.2 / fd00:203:N::2 here, 10.203.N.1 / fd00:203:N::1 on the agent's side. It
/// listens on TCP 8080 and 53 (v4), TCP 8080 (v6), UDP 9999 and 53 (v4), and asserts
/// that nothing arrived.
pub struct TestHost {
    holder: std::process::Child,
    pub v4: String,
    pub v6: String,
    sockets: Option<HostSockets>,
}

fn ip_in(netns: &str, args: &[&str]) -> String {
    let o = Command::new("nsenter").arg(format!("--net={netns}")).arg("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {args:?} in {netns}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl TestHost {
    /// The test host's (v4, v6) addresses.
    pub fn addrs(n: u8) -> (String, String) {
        (format!("10.203.{n}.2"), format!("fd00:203:{n}::2"))
    }

    /// Wires a test host into the netns bound at `profile_netns`; `n` (1..=250) names
    /// its addresses and links.
    pub fn new(profile_netns: &Path, n: u8) -> TestHost {
        let (v4, v6) = Self::addrs(n);
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare --net sleep");
        // From here on, Drop ends the holder (and with the sockets the namespace goes,
        // and the veth pair with it).
        let mut host = TestHost { holder, v4: v4.clone(), v6: v6.clone(), sockets: None };
        let pid = host.holder.id().to_string();
        let own = format!("/proc/{pid}/ns/net");
        wait_for(Duration::from_secs(10), "the test host's netns", || {
            std::fs::read_link(&own).ok() != std::fs::read_link("/proc/self/ns/net").ok()
        });
        let (hif, aif) = (format!("gvt{n}h"), format!("gvt{n}a"));
        let peer = profile_netns.to_str().unwrap();
        ip_in(peer, &["link", "add", &aif, "type", "veth", "peer", "name", &hif, "netns", &pid]);
        ip_in(&own, &["link", "set", "lo", "up"]);
        ip_in(&own, &["addr", "add", &format!("{v4}/24"), "dev", &hif]);
        ip_in(&own, &["-6", "addr", "add", &format!("{v6}/64"), "dev", &hif, "nodad"]);
        ip_in(&own, &["link", "set", &hif, "up"]);
        ip_in(peer, &["addr", "add", &format!("10.203.{n}.1/24"), "dev", &aif]);
        ip_in(peer, &["-6", "addr", "add", &format!("fd00:203:{n}::1/64"), "dev", &aif, "nodad"]);
        ip_in(peer, &["link", "set", &aif, "up"]);
        // The test host is routable from the agent's netns: only gvm stands in between.
        let route = ip_in(peer, &["route", "get", &v4]);
        assert!(route.contains(&aif), "{route}");
        let route = ip_in(peer, &["-6", "route", "get", &v6]);
        assert!(route.contains(&aif), "{route}");

        let netns_file = std::fs::File::open(&own).unwrap();
        let (a4, a6) = (v4.clone(), v6.clone());
        let sockets = std::thread::spawn(move || -> std::io::Result<HostSockets> {
            nix::sched::setns(&netns_file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            let tcp = vec![
                TcpListener::bind(format!("{a4}:8080"))?,
                TcpListener::bind(format!("[{a6}]:8080"))?,
                TcpListener::bind(format!("{a4}:53"))?,
            ];
            let udp = vec![UdpSocket::bind(format!("{a4}:9999"))?, UdpSocket::bind(format!("{a4}:53"))?];
            for t in &tcp {
                t.set_nonblocking(true)?;
            }
            for u in &udp {
                u.set_nonblocking(true)?;
            }
            Ok(HostSockets { tcp, udp })
        })
        .join()
        .unwrap()
        .unwrap();
        host.sockets = Some(sockets);
        host
    }

    /// Panics if any connection or datagram reached the test host.
    pub fn assert_untouched(&self) {
        let s = self.sockets.as_ref().unwrap();
        for l in &s.tcp {
            match l.accept() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => panic!("the test host received a connection on {:?}: {other:?}", l.local_addr()),
            }
        }
        let mut buf = [0u8; 512];
        for u in &s.udp {
            match u.recv_from(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => panic!("the test host received a datagram on {:?}: {other:?}", u.local_addr()),
            }
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.sockets = None;
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Runs `f` on a thread that joined the network namespace at `netns` (e.g. a throwaway
/// systemd's `/proc/PID/ns/net`): sockets `f` makes live there, also the listeners of
/// servers it starts (their threads inherit the namespace).
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(netns).unwrap_or_else(|e| panic!("{}: {e}", netns.display()));
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap()
}

/// Waits until `f` holds (polling), or panics with `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Splits output made of `@@name` marker lines into name → text.
pub fn sections(out: &str) -> std::collections::BTreeMap<String, String> {
    let mut map = std::collections::BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            if let Some((n, t)) = current.take() {
                map.insert(n, t);
            }
            current = Some((name.trim().to_string(), String::new()));
        } else if let Some((_, t)) = current.as_mut() {
            t.push_str(line);
            t.push('\n');
        }
    }
    if let Some((n, t)) = current {
        map.insert(n, t);
    }
    map
}

pub fn section<'a>(s: &'a std::collections::BTreeMap<String, String>, name: &str, ran: &Ran) -> &'a str {
    s.get(name).map(String::as_str).unwrap_or_else(|| panic!("no section {name}: {ran:#?}"))
}
