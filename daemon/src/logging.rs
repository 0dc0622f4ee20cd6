//! Where gvmd's logs go: journald with structured fields when stderr is connected to
//! the journal (systemd sets `$JOURNAL_STREAM` to the device and inode of that stream),
//! readable lines on stderr otherwise.
//!
//! Structured fields: an event logged with `gvm_profile`, `gvm_decision`, `gvm_rule`,
//! `gvm_event_seq` fields reaches journald as `GVM_PROFILE=`, `GVM_DECISION=`, ... so
//! `journalctl -u gvmd GVM_DECISION=deny` works. `$GVM_LOG` (EnvFilter syntax, default
//! `info`) sets the level.

use std::os::fd::AsFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Is stderr the journal stream systemd gave us?
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else { return false };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = || EnvFilter::try_from_env("GVM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            let layer = journald.with_field_prefix(None).with_filter(filter());
            let _ = tracing_subscriber::registry().with(layer).try_init();
            return;
        }
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_filter(filter());
    let _ = tracing_subscriber::registry().with(fmt).try_init();
}
