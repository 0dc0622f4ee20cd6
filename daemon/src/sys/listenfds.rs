//! Descriptors systemd passes at start (`$LISTEN_FDS`, `$LISTEN_FDNAMES`, from 3 on):
//! here, the sockets gvmd left in systemd's fd store before a restart.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};

/// Takes every passed descriptor, by name, and clears the variables so that children
/// do not see them. Nothing is taken unless `$LISTEN_PID` is this process.
pub fn take() -> HashMap<String, Vec<OwnedFd>> {
    let mut out: HashMap<String, Vec<OwnedFd>> = HashMap::new();
    let for_us = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called once at start-up, before gvmd starts any thread that could
        // read the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
    if !for_us || count <= 0 {
        return out;
    }
    let mut names = names.split(':');
    for fd in 3..3 + count {
        // SAFETY: systemd passed descriptors 3..3+LISTEN_FDS to this process (checked by
        // LISTEN_PID) and nothing else in gvmd has touched them; each is owned once here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = names.next().unwrap_or("unknown").to_string();
        out.entry(name).or_default().push(owned);
    }
    out
}
