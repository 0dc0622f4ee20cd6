//! The one door to the kernel and to systemd.
//!
//! Everything gvmd asks of the operating system beyond plain files and sockets goes
//! through here: the sd_notify protocol, peer credentials of control connections, the
//! group database. Later the launcher's privileged calls (setns, mount, seccomp) join
//! it. `unsafe` only where `nix` has no wrapper (`listenfds`, `fdpass`, `mdwe`), each
//! module saying why in its header.

pub mod creds;
pub mod fdpass;
pub mod freeze;
pub mod listenfds;
pub mod mdwe;
pub mod nofile;
pub mod notify;
