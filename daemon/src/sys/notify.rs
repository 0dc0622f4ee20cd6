//! The sd_notify protocol (`man sd_notify`), spoken directly: one datagram per message
//! to the socket named by `$NOTIFY_SOCKET`. Under systemd with `Type=notify` this tells
//! systemd when gvmd is ready, what it is doing and that it is alive; without systemd
//! every call is a no-op.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A handle on systemd's notification socket, or nothing when not under systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`/`$WATCHDOG_PID` from the environment.
    /// A malformed or unreachable socket disables notification with a warning rather
    /// than failing start-up: systemd then times the unit out, which names the cause.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = if let Some(name) = path.strip_prefix('@') {
                SocketAddr::from_abstract_name(name.as_bytes())
            } else {
                SocketAddr::from_pathname(&path)
            };
            match (addr, UnixDatagram::unbound()) {
                (Ok(addr), Ok(sock)) => Some((sock, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("NOTIFY_SOCKET={path} is unusable ({e}); not notifying systemd");
                    None
                }
            }
        });
        let pid_matches = std::env::var("WATCHDOG_PID")
            .ok()
            .map(|p| p.parse::<u32>().ok() == Some(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0 && pid_matches)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// True when running under a service manager that listens.
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the configured watchdog interval.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
                tracing::warn!("sd_notify({}) failed: {e}", msg.replace('\n', " "));
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id()));
    }
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }
    pub fn reloading(&self) {
        self.send("RELOADING=1\nSTATUS=reloading profiles");
    }
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=shutting down");
    }
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Hands `fds` to systemd's file-descriptor store under `name` (`FDSTORE=1`): they
    /// come back in `$LISTEN_FDS` when gvmd restarts, so sockets bound inside agents'
    /// network namespaces outlive gvmd. Returns false without a service manager.
    pub fn store_fds(&self, name: &str, fds: &[BorrowedFd<'_>]) -> bool {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        let Some((sock, addr)) = &self.target else { return false };
        let to = match (addr.as_abstract_name(), addr.as_pathname()) {
            (Some(n), _) => UnixAddr::new_abstract(n),
            (None, Some(p)) => UnixAddr::new(p),
            (None, None) => return false,
        };
        let msg = format!("FDSTORE=1\nFDNAME={name}");
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let sent = to.and_then(|to| {
            sendmsg(
                sock.as_raw_fd(),
                &[IoSlice::new(msg.as_bytes())],
                &[ControlMessage::ScmRights(&raw)],
                MsgFlags::empty(),
                Some(&to),
            )
        });
        match sent {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("cannot store {name} in systemd's fd store: {e}");
                false
            }
        }
    }

    /// Drops what `store_fds` stored under `name`.
    pub fn remove_fds(&self, name: &str) {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), SocketAddr::from_pathname(&path).unwrap())),
            watchdog: Some(Duration::from_secs(10)),
        };
        n.ready("serving");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(msg.starts_with("READY=1\nSTATUS=serving\nMAINPID="), "{msg}");
        assert_eq!(n.watchdog_period(), Some(Duration::from_secs(5)));
    }
}
