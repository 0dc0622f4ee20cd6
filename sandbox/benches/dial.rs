//! `Netns::dial`: what gvmd pays to open a connection to a port an agent serves (a thread
//! that enters the callee's netns, a marked socket, a loopback connect), once per new
//! upstream connection of an agent-to-agent call; pooled connections skip it. Needs
//! root (a real netns with the nft rules); prints p50/p99 of 2000 dials.

use std::io::Read;
use std::time::{Duration, Instant};

use gvm_sandbox::{GatewayPorts, Netns, ProfileName};

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("dial bench: needs root (a network namespace with nft rules); skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = ProfileName::parse(&format!("dialbench{}", std::process::id() % 100_000)).unwrap();
    let netns = Netns::create(dir.path(), &name, GatewayPorts::default()).unwrap();
    let listener = netns.open_listener("127.0.0.1:8080".parse().unwrap()).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.read(&mut [0u8; 1]);
        }
    });
    let mut v: Vec<Duration> = Vec::with_capacity(2000);
    for i in 0..2200 {
        let t = Instant::now();
        let s = netns.dial(8080).unwrap();
        if i >= 200 {
            v.push(t.elapsed());
        }
        drop(s);
    }
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
    println!("Netns::dial (thread + setns + marked socket + loopback connect), 2000 dials:");
    println!("  p50 {:.0} us  p99 {:.0} us", p(0.5), p(0.99));
    netns.destroy().unwrap();
}
