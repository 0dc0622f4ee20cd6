//! Tampering with the audit database — one changed byte, a deleted row, two swapped
//! rows, a truncated tail, a replaced checkpoint signature — makes `gvmctl audit
//! verify` fail and name the first bad sequence number; an untouched database verifies.
//!
//! The chain is written by the real store (60 events, a checkpoint every 10), the
//! database file is then edited the way an attacker with disk access would, and the
//! verdict is read from gvmctl's output.

mod common;
use common::*;
use gvm_audit::{Audit, AuditConfig, NewEvent};

/// A state dir holding 60 events; event n has details {"n": n, "note": "marker-NNNN"}.
fn chain(dirs: &Dirs) {
    let audit = Audit::open(&dirs.state, AuditConfig { checkpoint_every: 10, ..AuditConfig::default() }).unwrap();
    for n in 1..=60u32 {
        audit
            .append_blocking(NewEvent {
                profile: Some("invoices".into()),
                kind: "http".into(),
                decision: Some(if n % 3 == 0 { "deny" } else { "allow" }.into()),
                rule: Some(format!("rule #{}", n % 4)),
                details: serde_json::json!({ "n": n, "note": format!("marker-{n:04}") }),
            })
            .unwrap();
    }
    audit.close().unwrap();
}

fn sql(dirs: &Dirs, statements: &str) {
    let db = rusqlite::Connection::open(dirs.db()).unwrap();
    db.execute_batch(statements).unwrap();
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
}

/// Runs `gvmctl audit verify --state-dir` and returns (exit code, stdout).
fn verify_offline(dirs: &Dirs) -> (i32, String) {
    let out = gvmctl(dirs, &["audit", "verify", "--state-dir", dirs.state.to_str().unwrap()]);
    (out.status.code().unwrap_or(-1), stdout(&out) + &stderr(&out))
}

fn assert_fails_at(dirs: &Dirs, seq: u64, kind: &str) {
    let (code, text) = verify_offline(dirs);
    assert_eq!(code, 1, "verify should fail: {text}");
    assert!(text.starts_with(&format!("FAILED at seq {seq}: {kind} — ")), "expected seq {seq} {kind}, got: {text}");
    let out = gvmctl(dirs, &["audit", "verify", "--json", "--state-dir", dirs.state.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["problem"]["seq"], seq);
    assert_eq!(report["problem"]["kind"], kind.replace(' ', "_"));
}

#[test]
fn an_untouched_chain_verifies() {
    let dirs = Dirs::new();
    chain(&dirs);
    let (code, text) = verify_offline(&dirs);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.trim(), "ok: 60 events, 6 checkpoints");
}

#[test]
fn one_changed_byte_in_the_file_is_a_hash_mismatch_at_that_event() {
    let dirs = Dirs::new();
    chain(&dirs);
    // Fold the WAL into the main file. SQLite may keep stale copies of a page past the
    // live ones, so the byte is changed wherever event 17's details appear: the live
    // record then differs from what was hashed by exactly one byte.
    sql(&dirs, "");
    let mut bytes = std::fs::read(dirs.db()).unwrap();
    let needle = b"marker-0017";
    let found: Vec<usize> =
        bytes.windows(needle.len()).enumerate().filter(|(_, w)| w == needle).map(|(i, _)| i).collect();
    assert!(!found.is_empty(), "event 17's details are in the file");
    for at in found {
        bytes[at + needle.len() - 1] = b'8'; // marker-0017 → marker-0018
    }
    std::fs::write(dirs.db(), bytes).unwrap();
    assert_fails_at(&dirs, 17, "hash mismatch");
}

#[test]
fn a_deleted_row_is_a_gap() {
    let dirs = Dirs::new();
    chain(&dirs);
    sql(&dirs, "DELETE FROM events WHERE seq = 23;");
    assert_fails_at(&dirs, 23, "gap");
}

#[test]
fn two_swapped_rows_fail_at_the_first_of_them() {
    let dirs = Dirs::new();
    chain(&dirs);
    sql(
        &dirs,
        "CREATE TEMP TABLE a AS SELECT * FROM events WHERE seq = 31;
         CREATE TEMP TABLE b AS SELECT * FROM events WHERE seq = 32;
         UPDATE events SET (time, profile, kind, decision, rule, details, prev_hash, hash) =
             (SELECT time, profile, kind, decision, rule, details, prev_hash, hash FROM b) WHERE seq = 31;
         UPDATE events SET (time, profile, kind, decision, rule, details, prev_hash, hash) =
             (SELECT time, profile, kind, decision, rule, details, prev_hash, hash FROM a) WHERE seq = 32;",
    );
    let (code, text) = verify_offline(&dirs);
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("FAILED at seq 31: "), "{text}");
}

#[test]
fn a_truncated_tail_is_detected_even_after_the_last_checkpoint() {
    let dirs = Dirs::new();
    chain(&dirs);
    sql(&dirs, "DELETE FROM events WHERE seq > 57;");
    let (code, text) = verify_offline(&dirs);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("truncated"), "{text}");
    assert!(text.starts_with("FAILED at seq 58: ") || text.starts_with("FAILED at seq 60: "), "{text}");
}

#[test]
fn a_replaced_checkpoint_signature_is_a_bad_signature() {
    let dirs = Dirs::new();
    chain(&dirs);
    // Checkpoint 3 covers events 21..=30; give it the signature of checkpoint 4.
    sql(&dirs, "UPDATE checkpoints SET signature = (SELECT signature FROM checkpoints WHERE id = 4) WHERE id = 3;");
    assert_fails_at(&dirs, 21, "bad signature");
}

#[test]
fn a_running_gvmd_reports_tampering_through_the_socket() {
    let dirs = Dirs::new();
    chain(&dirs);
    sql(&dirs, "UPDATE events SET decision = 'allow' WHERE seq = 12;");
    let gvmd = Gvmd::start(&dirs);
    let out = gvmctl(&dirs, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("FAILED at seq 12: hash mismatch — "), "{}", stdout(&out));
    drop(gvmd);
}
