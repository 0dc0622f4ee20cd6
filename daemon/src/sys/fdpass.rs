//! Receiving file descriptors over the control socket (SCM_RIGHTS): how `gvmctl run`
//! hands its terminal to the sandboxed command without gvmd ever opening it.
#![allow(unsafe_code)]

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// At most this many descriptors are accepted in one message; more are closed.
pub const MAX_FDS: usize = 3;

/// Reads up to `buf.len()` bytes and whatever descriptors came with them. Received
/// descriptors are close-on-exec until handed to a child explicitly.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel installed `fd` in this process's table for this very
                // message; nothing else in the process knows the number, so this
                // OwnedFd is its only owner and closes it exactly once.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let bytes = msg.bytes;
    if fds.len() > MAX_FDS {
        fds.truncate(MAX_FDS);
    }
    Ok((bytes, fds))
}
