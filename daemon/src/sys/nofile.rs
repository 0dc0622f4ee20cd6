//! gvmd's descriptor limit: every agent connection through the gateway costs one or two
//! descriptors, so gvmd raises its soft `RLIMIT_NOFILE` to the hard limit at start (it
//! uses epoll, never select, so a high limit is safe). A gvmd started from a shell with
//! the usual soft limit of 1,024 otherwise ran out of descriptors under one noisy agent
//! and failed the others' `gvmctl run` (ENOBUFS). The gateway shares out what it gets
//! (`gvm_gateway::GatewayConfig::fd_limit`, ARCHITECTURE.md).

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raises the soft limit to the hard one; returns the soft limit in force afterwards.
pub fn raise_to_hard() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}
