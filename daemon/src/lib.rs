//! gvmd: the gvm daemon, as a library with a thin `main` (`src/bin/gvmd.rs`).
//!
//! One folder per part of the picture in docs/design.md: [`api`] (the control socket),
//! [`run`] (start, reload, stop), [`profiles`] (what is in force), [`sys`] (the one
//! door to the kernel and systemd). The audit chain is the `gvm-audit` crate, the
//! policy engine `gvm-policy`, the egress gateway `gvm-gateway`: separate crates so
//! each can be tested and benchmarked alone, and so gvmctl can verify a chain offline.

pub mod agent_calls;
pub mod api;
pub mod approvals;
pub mod config;
pub mod launch_command;
pub mod lifecycle;
pub mod logging;
pub mod profile_file;
pub mod profiles;
pub mod review;
pub mod secrets;
pub mod state;
pub mod suggest;
pub mod supervisor;
pub mod sys;
pub mod versions;
pub mod watch;

pub use config::Paths;
pub use lifecycle::{run, StartError};

/// RFC 3339 in UTC, the one time format of the API.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}
