//! The control socket gives no one a descriptor for ever: a client that stays silent,
//! or dribbles a request head, is closed after the head deadline, while gvmctl goes on
//! being answered.

mod common;
use common::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Reads until the server closes the connection; returns how long that took.
fn until_closed(mut s: UnixStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) => panic!("the connection was still open after {:?} ({e})", start.elapsed()),
        }
    }
}

#[test]
fn silent_and_slow_control_clients_are_closed() {
    let dirs = Dirs::new();
    let gvmd = Gvmd::start(&dirs);
    let silent = UnixStream::connect(dirs.socket()).unwrap();
    let mut slow = UnixStream::connect(dirs.socket()).unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: gvmd\r\n").unwrap();
    // An idle keep-alive connection after one answered request.
    let mut idle = UnixStream::connect(dirs.socket()).unwrap();
    idle.write_all(b"GET /v1/status HTTP/1.1\r\nHost: gvmd\r\n\r\n").unwrap();

    // Meanwhile gvmctl is answered.
    let out = gvmctl(&dirs, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let limit = Duration::from_secs(20);
    let threads: Vec<_> = [("silent", silent), ("slow", slow), ("idle", idle)]
        .into_iter()
        .map(|(n, s)| (n, std::thread::spawn(move || until_closed(s, limit))))
        .collect();
    for (name, t) in threads {
        let took = t.join().unwrap_or_else(|_| panic!("the {name} connection was never closed"));
        assert!(took < limit, "{name}: {took:?}");
    }
    let out = gvmctl(&dirs, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    gvmd.stop();
}
