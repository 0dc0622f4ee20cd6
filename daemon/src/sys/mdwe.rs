//! W^X for gvmd itself, not for what it starts.
//!
//! systemd's `MemoryDenyWriteExecute=` is a seccomp filter, inherited by every process
//! gvmd forks: `gvmctl run` sandboxes started by gvmd would then refuse the writable and
//! executable memory a JIT needs (V8 in Node — OpenClaw —, the JVM, LuaJIT), while the
//! same agent runs in a `gvm-agent@` unit, which does not have it. So the unit does not
//! set it, and gvmd asks the kernel for the same protection with `PR_SET_MDWE` and
//! `PR_MDWE_NO_INHERIT` (Linux 6.6): gvmd's own memory can never become writable and
//! executable, and children start without the restriction. Both paths into a sandbox
//! then confine identically. On older kernels gvmd runs without it (and says so): the
//! inheriting form of the flag is never used, it would bring back the difference.
#![allow(unsafe_code)]

/// Turns on W^X for this process only. `Err` names why not (kernel too old, mostly).
pub fn deny_write_execute_for_self() -> std::io::Result<()> {
    let flags = libc::PR_MDWE_REFUSE_EXEC_GAIN | libc::PR_MDWE_NO_INHERIT;
    // SAFETY: prctl with integer arguments only; PR_SET_MDWE reads no memory of ours.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_MDWE,
            libc::c_ulong::from(flags),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
