//! Egress from inside a sandbox (docs/attacks.md classes 4, 5, 16). A "test host" lives in a
//! network namespace of the test's own, reachable from the profile's netns over a veth pair
//! (10.203.N.0/24, fd00:203:N::/64), so only the nft rules stand between the agent and it.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use gvm_sandbox::Netns;
use nix::sched::{unshare, CloneFlags};

/// The test host: listeners in a namespace of its own, owned by this struct; dropping the
/// sockets frees the namespace, and the veth pair with it.
struct TestHost {
    tcp4: TcpListener,
    tcp6: TcpListener,
    udp4: UdpSocket,
    v4: String,
    v6: String,
}

impl TestHost {
    fn new(netns: &Netns, n: u8) -> TestHost {
        let (v4, v6) = (format!("10.203.{n}.2"), format!("fd00:203:{n}::2"));
        let (host_if, agent_if) = (format!("gvmth{n}"), format!("gvmta{n}"));
        let peer = netns.path().to_string_lossy().into_owned();
        let (tx, rx) = mpsc::channel();
        let (v4c, v6c) = (v4.clone(), v6.clone());
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).unwrap();
            let ip = |args: &[&str]| {
                let o = std::process::Command::new("ip").args(args).output().unwrap();
                assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            };
            ip(&["link", "set", "lo", "up"]);
            ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &agent_if, "netns", &peer]);
            ip(&["addr", "add", &format!("{v4c}/24"), "dev", &host_if]);
            ip(&["-6", "addr", "add", &format!("{v6c}/64"), "dev", &host_if, "nodad"]);
            ip(&["link", "set", &host_if, "up"]);
            let tcp4 = TcpListener::bind(format!("{v4c}:8080")).unwrap();
            let tcp6 = TcpListener::bind(format!("[{v6c}]:8080")).unwrap();
            let udp4 = UdpSocket::bind(format!("{v4c}:9999")).unwrap();
            for s in [&tcp4, &tcp6] {
                s.set_nonblocking(true).unwrap();
            }
            udp4.set_nonblocking(true).unwrap();
            tx.send((tcp4, tcp6, udp4)).unwrap();
        });
        let (tcp4, tcp6, udp4) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let (a4, a6, dev) = (format!("10.203.{n}.1/24"), format!("fd00:203:{n}::1/64"), format!("gvmta{n}"));
        for args in [
            vec!["addr", "add", a4.as_str(), "dev", dev.as_str()],
            vec!["-6", "addr", "add", a6.as_str(), "dev", dev.as_str(), "nodad"],
            vec!["link", "set", dev.as_str(), "up"],
        ] {
            let o = netns.command("ip", &args).unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        // The test host is routable from the profile's netns: only nft can stop the agent.
        let o = netns.command("ip", &["route", "get", &v4]).unwrap();
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("gvmta{n}")), "{o:?}");
        TestHost { tcp4, tcp6, udp4, v4, v6 }
    }

    /// Asserts that nothing reached the test host.
    fn assert_untouched(&self) {
        for l in [&self.tcp4, &self.tcp6] {
            match l.accept() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => panic!("the test host received a connection: {other:?}"),
            }
        }
        let mut buf = [0u8; 64];
        match self.udp4.recv_from(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the test host received a datagram: {other:?}"),
        }
    }
}

fn accept_within(l: &TcpListener, d: Duration) -> Option<TcpStream> {
    l.set_nonblocking(true).unwrap();
    let end = Instant::now() + d;
    while Instant::now() < end {
        match l.accept() {
            Ok((s, _)) => return Some(s),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

#[test]
#[ignore = "needs root"]
fn netns_create_is_idempotent_and_destroy_leaves_nothing() {
    assert_root();
    let dir = tempfile::tempdir().unwrap();
    let p = gvm_sandbox::ProfileName::parse(&format!("tnsidem{}", std::process::id() % 100_000)).unwrap();
    let a = Netns::create(dir.path(), &p, Default::default()).unwrap();
    let b = Netns::create(dir.path(), &p, Default::default()).unwrap();
    assert_eq!(a.path(), b.path());
    let o = a.command("nft", &["list", "table", "inet", "gvm"]).unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("redirect to :3129"), "{o:?}");
    // The host's ruleset is not touched.
    let host = std::process::Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&host.stdout).contains("inet gvm"));
    let path = a.path().to_path_buf();
    a.destroy().unwrap();
    drop(b);
    assert!(!path.exists());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains(&path.to_string_lossy().into_owned()));
}

#[test]
#[ignore = "needs root"]
fn tcp_to_test_host_is_redirected_to_transparent_listener() {
    assert_root();
    let fx = Fixture::new("redir");
    let host = TestHost::new(fx.netns(), 1);
    // Stand-in for the gateway's transparent listener.
    let gw: SocketAddr = format!("127.0.0.1:{}", fx.ports.transparent).parse().unwrap();
    let listener = fx.netns().open_listener(gw).unwrap();
    let script = format!(
        "import socket\ns=socket.create_connection(('{}',8080),timeout=5)\ns.sendall(b'hello from agent')\nprint(s.recv(100).decode())",
        host.v4
    );
    let (mut sb, out, _err) = start(fx.spec("/usr/bin/python3", &["-c", &script]));
    let mut conn = accept_within(&listener, Duration::from_secs(10)).expect("redirected connection");
    let orig = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::OriginalDst).unwrap();
    let orig_ip = std::net::Ipv4Addr::from(u32::from_be(orig.sin_addr.s_addr));
    assert_eq!(orig_ip.to_string(), host.v4, "SO_ORIGINAL_DST names the test host");
    assert_eq!(u16::from_be(orig.sin_port), 8080);
    let mut buf = [0u8; 16];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello from agent");
    conn.write_all(b"gateway").unwrap();
    drop(conn);
    assert!(sb.wait().unwrap().success());
    assert_eq!(out.join().unwrap().trim(), "gateway");
    host.assert_untouched();
    fx.assert_no_mounts_except_netns();
}

#[test]
#[ignore = "needs root"]
fn direct_egress_without_gateway_never_reaches_test_host() {
    assert_root();
    let fx = Fixture::new("egress");
    let host = TestHost::new(fx.netns(), 2);
    // A service on the host's own loopback.
    let host_lo = TcpListener::bind("127.0.0.1:0").unwrap();
    host_lo.set_nonblocking(true).unwrap();
    let lo_port = host_lo.local_addr().unwrap().port();
    // gvmd's resolver stand-in: a DNS query to any resolver must land here.
    let dns = fx.netns().udp(format!("127.0.0.1:{}", fx.ports.dns).parse().unwrap()).unwrap();
    dns.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let script = format!(
        r#"
import socket, errno
def tcp(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
    try:
        s.connect(addr); return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
print("tcp4", tcp(socket.AF_INET, ("{v4}", 8080)))
print("tcp6", tcp(socket.AF_INET6, ("{v6}", 8080)))
print("hostlo", tcp(socket.AF_INET, ("127.0.0.1", {lo_port})))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"udp-escape", ("{v4}", 9999)); print("udp sent")
except OSError as e:
    print("udp", errno.errorcode.get(e.errno))
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.sendto(b"dns-query-to-hardcoded", ("{v4}", 53))
for fam, typ, proto in [(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), (socket.AF_PACKET, socket.SOCK_RAW, 0), (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)]:
    try:
        socket.socket(fam, typ, proto); print("sock opened", fam, typ)
    except OSError as e:
        print("sock", errno.errorcode.get(e.errno))
"#,
        v4 = host.v4,
        v6 = host.v6,
    );
    let o = run(fx.spec("/usr/bin/python3", &["-c", &script]));
    assert!(o.exit.success(), "{o:?}");
    let out = o.out();
    // No gateway listening: the redirect lands on a closed port on loopback.
    assert!(out.contains("tcp4 ECONNREFUSED"), "{out}");
    // IPv6 beyond ::1 is dropped by the output filter: the SYN never leaves.
    assert!(!out.contains("tcp6 connected"), "{out}");
    assert!(out.contains("udp EPERM"), "{out}");
    assert!(out.contains("hostlo ECONNREFUSED"), "{out}");
    // UDP is dropped by nft (the send fails, or vanishes): either way it never arrives.
    // Raw and packet sockets are refused by seccomp; ICMP datagram sockets by the kernel.
    assert_eq!(out.matches("sock EPERM").count(), 2, "{out}");
    assert!(!out.contains("sock opened 2 1"), "{out}");
    let mut buf = [0u8; 512];
    let (n, _) = dns.recv_from(&mut buf).expect("the DNS query reached gvmd's resolver");
    assert_eq!(&buf[..n], b"dns-query-to-hardcoded");
    host.assert_untouched();
    assert!(host_lo.accept().is_err(), "the host's loopback service was reached");
    fx.assert_no_mounts_except_netns();
}
