//! The one door to the kernel for calls that have no safe wrapper.
//!
//! Everything else in this crate is `unsafe`-free (the crate denies `unsafe_code`); this
//! module allows it, and each block says why it is sound. Keep it small: a function here is
//! a thin wrapper over one system call, with no policy of its own. The policy (what to
//! drop, what to mount) lives in `rules.rs` and is applied by `build.rs`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) use nix::unistd::ForkResult;

/// `fork(2)`.
///
/// # Safety
///
/// The caller may be multi-threaded (gvmd runs tokio). In the child, until it calls
/// `execve` or [`exit_now`], the caller must restrict itself to system calls and heap
/// allocation: glibc's `fork` resets the malloc locks in the child, but no other lock
/// (stdio, the environment lock, a `Mutex` held by another thread) may be taken, and no
/// destructor that takes one may run. The launcher's child code follows that rule: it
/// never prints, never reads the environment, and reports errors through a pipe.
pub(crate) unsafe fn fork() -> nix::Result<ForkResult> {
    // SAFETY: forwarded to the caller (see `# Safety`).
    unsafe { nix::unistd::fork() }
}

/// `_exit(2)`: leave a forked child without running the parent's atexit handlers or
/// flushing stdio buffers that the parent owns.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Mount attribute bits for [`mount_setattr_recursive`] (linux/mount.h).
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)` with `AT_RECURSIVE`: change per-mount flags on a whole subtree (a
/// remount with `MS_BIND|MS_REMOUNT` only changes one mount). Only the vfsmount flags of
/// the caller's mount namespace change, never the superblock shared with the host.
pub(crate) fn mount_setattr_recursive(path: &Path, set: u64, clear: u64) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = MountAttr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
    // SAFETY: `c_path` is a valid NUL-terminated string and `attr` a valid `struct
    // mount_attr` whose size we pass; both outlive the call. The kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mount_setattr(2)` on the mount an `O_PATH` descriptor points at, that mount only (not
/// its children). Used to seal a tmpfs read-only after mount points were made in it,
/// even if other mounts were since stacked on paths inside or on top of it.
pub(crate) fn mount_setattr_fd(fd: std::os::fd::BorrowedFd<'_>, set: u64, clear: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = MountAttr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
    // SAFETY: `fd` is a valid open descriptor for the duration of the call (borrowed), the
    // path is the empty C string, and `attr` is a valid `struct mount_attr` of the size
    // passed; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `close_range(first, ~0, 0)`: close every descriptor from `first` on, so the agent
/// inherits nothing but its stdio.
pub(crate) fn close_fds_from(first: u32) -> io::Result<()> {
    // SAFETY: closing descriptors is memory-safe; this process owns no Rust object that
    // holds a descriptor >= `first` and is used after this call (the caller execs next).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Drops capability `cap` from the bounding set (`PR_CAPBSET_DROP`). `EINVAL` means the
/// kernel does not know that capability, which the caller treats as the end of the list.
pub(crate) fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Clears the ambient capability set (`PR_CAP_AMBIENT_CLEAR_ALL`).
pub(crate) fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `capset(2)` with every set empty (effective, permitted, inheritable).
pub(crate) fn clear_all_caps() -> io::Result<()> {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: `header` and `data` are valid v3 capability structs (v3 takes two data
    // elements) that outlive the call; the kernel only reads them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Resets every signal disposition to the default (SIGPIPE is ignored by the Rust runtime
/// of the caller, and an ignored disposition survives `execve`).
pub(crate) fn reset_signal_dispositions() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no handler code; no Rust handler is replaced that
        // anything in this (about to exec) process relies on.
        let _ = unsafe { sigaction(sig, &dfl) };
    }
}
