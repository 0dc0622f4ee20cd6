//! Helpers shared by the integration tests: real SQLite files in temp dirs.

#![allow(dead_code)]
// `is_multiple_of` is newer than the workspace's rust-version (1.85).
#![allow(clippy::manual_is_multiple_of)]

use std::path::Path;
use std::time::Duration;

use gvm_audit::{Audit, AuditConfig, NewEvent};

/// Checkpoints every 20 events, never by time (so tests are deterministic).
pub fn cfg20() -> AuditConfig {
    AuditConfig { checkpoint_every: 20, checkpoint_interval: Duration::from_secs(3600) }
}

pub fn event(i: u64) -> NewEvent {
    NewEvent {
        profile: Some(if i % 2 == 0 { "invoices" } else { "mail" }.to_owned()),
        kind: "net.decision".to_owned(),
        decision: Some(if i % 3 == 0 { "deny" } else { "allow" }.to_owned()),
        rule: (i % 5 == 0).then(|| format!("network.rule[{}]", i % 7)),
        details: serde_json::json!({
            "url": format!("https://api.example.com/v1/items/{i}"),
            "method": "POST",
            "n": i,
        }),
    }
}

/// A closed store with `n` events and checkpoints of 20 (the last one partial).
pub fn store_with(dir: &Path, n: u64) {
    let audit = Audit::open(dir, cfg20()).unwrap();
    for i in 1..=n {
        let a = audit.append_blocking(event(i)).unwrap();
        assert_eq!(a.seq, i);
    }
    audit.close().unwrap();
}

/// A second, independent connection to the database file (the "attacker").
pub fn raw(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(gvm_audit::db_path(dir)).unwrap()
}
