//! A profile's network namespace: its only exits are gvmd's listeners.
//!
//! [`Netns::create`] unshares a network namespace on a short-lived thread and keeps it
//! alive with a bind mount at `<runtime-dir>/netns/<profile>` (the `ip netns` convention),
//! brings `lo` up, gives it a link-local address and makes it carry the default route
//! (without a route a locally generated packet fails before nft's nat/output hook could
//! redirect it; a `dummy` interface would do too, but not every kernel has that driver —
//! this VM's does not — and `lo` is always there), and
//! loads [`rules::NFT_RULESET`] with `nft -f -` run *inside* the namespace: the host's
//! ruleset is never read or written. gvmd then opens its listeners inside it with
//! [`Netns::open_listener`]: a thread joins the namespace, binds, and returns the socket,
//! which stays in that namespace. A connection accepted there can only come from the
//! profile's agent.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{io, run, sys, Error, Result};
use crate::rules;
use crate::user::ProfileName;

/// The gateway's ports on 127.0.0.1 inside every profile's netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayPorts {
    /// Explicit HTTP proxy (`HTTP_PROXY` points here).
    pub proxy: u16,
    /// Transparent catch-all: every other TCP connection is redirected here.
    pub transparent: u16,
    /// gvmd's DNS resolver (UDP and TCP).
    pub dns: u16,
}

impl Default for GatewayPorts {
    fn default() -> Self {
        Self { proxy: 3128, transparent: 3129, dns: 53 }
    }
}

impl GatewayPorts {
    fn validate(&self) -> Result<()> {
        let p = [self.proxy, self.transparent, self.dns];
        if p.contains(&0) || p[0] == p[1] || p[0] == p[2] || p[1] == p[2] {
            return Err(Error::Spec(format!("gateway ports must be distinct and non-zero, got {self:?}")));
        }
        Ok(())
    }

    /// The nft ruleset for these ports.
    pub fn nft_ruleset(&self) -> String {
        rules::NFT_RULESET
            .replace("{proxy}", &self.proxy.to_string())
            .replace("{transparent}", &self.transparent.to_string())
            .replace("{dns}", &self.dns.to_string())
            .replace("{mark}", &format!("{:#x}", rules::DIAL_MARK))
    }
}

/// Address added to `lo`: the source address of the agent's non-loopback packets (all of
/// which are redirected to the gateway on 127.0.0.1 or dropped).
pub const ROUTE_SRC: &str = "169.254.254.1";

/// A profile's network namespace, bound at `<runtime-dir>/netns/<profile>`.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
}

impl Netns {
    /// Creates (or, if the bind already exists, re-opens and re-applies the rules of) the
    /// network namespace of `profile`. Idempotent.
    pub fn create(runtime_dir: &Path, profile: &ProfileName, ports: GatewayPorts) -> Result<Self> {
        ports.validate()?;
        require_root("creating a network namespace")?;
        let dir = runtime_dir.join("netns");
        std::fs::create_dir_all(&dir).map_err(io("creating the netns directory", &dir))?;
        make_unshared(&dir)?;
        let path = dir.join(profile.as_str());
        let netns = Self { path };
        if netns.is_bound() {
            netns.configure(ports)?;
            return Ok(netns);
        }
        File::create(&netns.path).map_err(io("creating the netns bind file", &netns.path))?;
        let target = netns.path.clone();
        let made = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare(CLONE_NEWNET)"))?;
            let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            mount(Some(own.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(sys(format!("binding the new netns at {}", target.display())))
        })
        .join()
        .map_err(|_| Error::Setup("the netns thread panicked".into()))?;
        if let Err(e) = made.and_then(|()| netns.configure(ports)) {
            let _ = netns.destroy_ref();
            return Err(e);
        }
        Ok(netns)
    }

    /// Opens an existing bound namespace (gvmd after a restart).
    pub fn open(runtime_dir: &Path, profile: &ProfileName) -> Result<Self> {
        let netns = Self { path: runtime_dir.join("netns").join(profile.as_str()) };
        if !netns.is_bound() {
            return Err(Error::Setup(format!("no network namespace is bound at {}", netns.path.display())));
        }
        Ok(netns)
    }

    /// Where the namespace is bound (what `NetworkNamespacePath=` and the launcher join).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn is_bound(&self) -> bool {
        // A bound netns file is an nsfs inode; an unbound placeholder is a plain empty file.
        nix::sys::statfs::statfs(&self.path)
            .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
            .unwrap_or(false)
    }

    fn configure(&self, ports: GatewayPorts) -> Result<()> {
        // One `ip -batch` instead of three processes: a netns is made for every
        // `gvmctl run`, and each process spawn costs milliseconds.
        let setup = format!(
            "link set lo up\naddr replace {ROUTE_SRC}/32 dev lo\nroute replace default dev lo src {ROUTE_SRC}\n"
        );
        let ruleset = format!("table inet gvm\ndelete table inet gvm\n{}", ports.nft_ruleset());
        // `ip` and `nft` at once: neither needs the other's work (the rules match ports
        // and marks, not `lo`'s state), and each mostly waits (exec, then the kernel's
        // RCU grace periods on commit and on closing nft's socket): ~5-10 ms less per
        // netns made, which a lone ephemeral run pays at each start. Both must succeed.
        let (ip, nft) = std::thread::scope(|s| {
            let ip = s.spawn(|| self.run_in(|| run("ip", "iproute2", &["-batch", "-"], Some(&setup))));
            let nft = self.run_in(|| run("nft", "nftables", &["-f", "-"], Some(&ruleset)));
            (ip.join().unwrap_or_else(|_| Err(Error::Setup("the thread running `ip` panicked".into()))), nft)
        });
        ip??;
        nft?
    }

    /// Runs `f` on a thread that has joined this namespace; processes it spawns run in it.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = File::open(&self.path).map_err(io("opening the netns", &self.path))?;
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(sys("setns(CLONE_NEWNET)"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Setup("a thread inside the netns panicked".into()))?
        })
    }

    /// Runs a program inside the namespace and returns its output (diagnostics, tests).
    pub fn command(&self, program: &str, args: &[&str]) -> Result<Output> {
        let program = program.to_string();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let what = program.clone();
        self.run_in(move || Command::new(&program).args(&args).output())?.map_err(|source| Error::Spawn {
            program: what,
            package: "iproute2",
            source,
        })
    }

    /// A TCP listener bound at `addr` inside the namespace.
    pub fn open_listener(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.run_in(move || TcpListener::bind(addr))?
            .map_err(io("binding a TCP listener in the netns at", addr.to_string()))
    }

    /// A UDP socket bound at `addr` inside the namespace (gvmd's DNS resolver).
    pub fn udp(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.run_in(move || UdpSocket::bind(addr))?
            .map_err(io("binding a UDP socket in the netns at", addr.to_string()))
    }

    /// A TCP connection to `127.0.0.1:port` made from inside the namespace, marked
    /// [`rules::DIAL_MARK`] so that the namespace's nft rules let it reach the port
    /// instead of redirecting it to the gateway: how gvmd reaches a port an agent serves
    /// for another agent. The socket stays in this namespace; no route between
    /// namespaces exists. Loopback answers at once (connected, or refused).
    pub fn dial(&self, port: u16) -> std::io::Result<std::net::TcpStream> {
        use nix::sys::socket::{connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
        let made = self.run_in(move || -> std::io::Result<std::net::TcpStream> {
            let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
            setsockopt(&fd, sockopt::Mark, &rules::DIAL_MARK)?;
            connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(127, 0, 0, 1, port))?;
            Ok(std::net::TcpStream::from(fd))
        });
        made.map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// Unmounts and removes the bind. The namespace itself goes when the last process and
    /// socket in it are gone (gvmd must close its listeners; agents must have exited).
    pub fn destroy(self) -> Result<()> {
        self.destroy_ref()
    }

    fn destroy_ref(&self) -> Result<()> {
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(sys(format!("unmounting {}", self.path.display()))(e)),
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &self.path)(e)),
        }
    }
}

pub(crate) fn require_root(what: &'static str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot { what })
    }
}

/// A netns bind placed on a *shared* mount propagates into every peer mount namespace,
/// where it keeps the namespace alive and cannot be unmounted from here. When the mount
/// holding `dir` is shared (systemd makes `/` shared), bind `dir` onto itself and make that
/// private — what `ip netns` does, minus the re-sharing. On a host whose root is private
/// (this VM, containers) nothing is mounted.
fn make_unshared(dir: &Path) -> Result<()> {
    // gvmd prepares profiles at once: two threads seeing the same shared mount would
    // each bind the directory onto itself.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let canon = dir.canonicalize().map_err(io("resolving", dir))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(io("reading", "/proc/self/mountinfo"))?;
    // The mount holding `dir` is the last listed whose mount point is a prefix of it.
    let holder = info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let point = unescape_mountinfo(f.get(4)?);
        canon.starts_with(&point).then(|| (point, l.contains(" shared:")))
    });
    match holder {
        Some((point, shared)) if shared => {
            if point != canon {
                mount(Some(&canon), &canon, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(sys(format!("binding {} onto itself", canon.display())))?;
            }
            mount(None::<&str>, &canon, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(sys(format!("making {} a private mount", canon.display())))
        }
        _ => Ok(()),
    }
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_has_ports() {
        let r = GatewayPorts { proxy: 1, transparent: 2, dns: 3 }.nft_ruleset();
        assert!(r.contains("redirect to :2"));
        assert!(r.contains("{ 1, 2, 3 }"));
        assert!(!r.contains('{') || !r.contains("{proxy}"));
    }

    #[test]
    fn ports_must_differ() {
        assert!(GatewayPorts { proxy: 1, transparent: 1, dns: 3 }.validate().is_err());
        assert!(GatewayPorts::default().validate().is_ok());
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), PathBuf::from("/a b"));
    }
}
