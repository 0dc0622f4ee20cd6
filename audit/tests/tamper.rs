//! Tampering with a closed database is found by verification, which names the first
//! bad event; a store whose head no longer matches refuses to open.
//!
//! Each test builds a fresh database of 50 events with checkpoints over 1..=20, 21..=40
//! and (signed by close) 41..=50, then edits the file with a separate connection.

mod common;

use std::path::Path;

use common::{raw, store_with};
use gvm_audit::{db_path, public_key_path, verify_db, Audit, AuditError, VerifyProblemKind, VerifyReport};

/// Both verification paths: offline (`verify_db`) and through an opened store when the
/// store still opens.
fn verify_offline(dir: &Path) -> VerifyReport {
    verify_db(&db_path(dir), &public_key_path(dir))
}

fn assert_problem(r: &VerifyReport, kind: VerifyProblemKind, seq: u64, words: &str) {
    assert!(!r.ok, "expected a {kind} problem, got {r:?}");
    let p = r.problem.as_ref().unwrap();
    assert_eq!((p.kind, p.seq), (kind, seq), "{p:?}");
    assert!(p.detail.contains(words), "detail {:?} should contain {words:?}", p.detail);
}

fn fresh() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 50);
    dir
}

/// Offline and online verification agree and report `kind` at `seq`.
fn assert_both(dir: &Path, kind: VerifyProblemKind, seq: u64, words: &str) {
    assert_problem(&verify_offline(dir), kind, seq, words);
    let audit = Audit::open(dir, common::cfg20()).expect("the head is intact, so it opens");
    assert_problem(&audit.verify(), kind, seq, words);
    audit.close().unwrap();
}

#[test]
fn untouched_database_verifies_with_counts() {
    let dir = fresh();
    let r = verify_offline(dir.path());
    assert_eq!(r, VerifyReport { ok: true, events: 50, checkpoints: 3, problem: None });
    let audit = Audit::open(dir.path(), common::cfg20()).unwrap();
    assert_eq!(audit.verify(), r);
    let st = audit.status().unwrap();
    assert_eq!((st.last_seq, st.checkpoints, st.last_checkpoint_seq), (50, 3, 50));
}

#[test]
fn one_changed_byte_in_details_is_a_hash_mismatch_at_that_event() {
    let dir = fresh();
    let n = raw(dir.path())
        .execute("UPDATE events SET details = replace(details, 'POST', 'POSt') WHERE seq = 17", [])
        .unwrap();
    assert_eq!(n, 1);
    assert_both(dir.path(), VerifyProblemKind::HashMismatch, 17, "event 17: stored hash does not match its contents");
}

#[test]
fn a_deleted_event_is_a_gap_at_its_seq() {
    let dir = fresh();
    raw(dir.path()).execute("DELETE FROM events WHERE seq = 20", []).unwrap();
    assert_both(dir.path(), VerifyProblemKind::Gap, 20, "event 20 is missing");
}

#[test]
fn two_swapped_events_fail_at_the_first_of_them() {
    let dir = fresh();
    raw(dir.path())
        .execute_batch(
            "CREATE TEMP TABLE t AS SELECT * FROM events WHERE seq IN (10, 11);
             UPDATE events SET (time, profile, kind, decision, rule, details, prev_hash, hash) =
               (SELECT time, profile, kind, decision, rule, details, prev_hash, hash
                  FROM t WHERE t.seq = 21 - events.seq)
             WHERE seq IN (10, 11);",
        )
        .unwrap();
    assert_both(dir.path(), VerifyProblemKind::BrokenLink, 10, "event 10: prev_hash");
}

#[test]
fn deleting_the_last_events_is_truncation_and_the_store_refuses_to_open() {
    let dir = fresh();
    raw(dir.path()).execute("DELETE FROM events WHERE seq > 47", []).unwrap();
    let r = verify_offline(dir.path());
    assert_problem(&r, VerifyProblemKind::Truncated, 48, "deleted");
    assert_eq!(r.events, 47);

    let err = Audit::open(dir.path(), common::cfg20()).unwrap_err();
    assert!(matches!(err, AuditError::BrokenChain { seq: 48, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("refusing to extend the audit chain"), "{msg}");
    assert!(msg.contains("gvmctl audit verify"), "{msg}");
}

#[test]
fn deleting_events_after_the_last_checkpoint_is_truncation_too() {
    let dir = tempfile::tempdir().unwrap();
    {
        // 50 events, checkpoints up to 40; no close(): 41..=50 are covered only by the head.
        let audit = Audit::open(dir.path(), common::cfg20()).unwrap();
        for i in 1..=50 {
            audit.append_blocking(common::event(i)).unwrap();
        }
        assert_eq!(audit.status().unwrap().last_checkpoint_seq, 40);
    }
    raw(dir.path()).execute("DELETE FROM events WHERE seq > 47", []).unwrap();
    assert_problem(&verify_offline(dir.path()), VerifyProblemKind::Truncated, 48, "48..=50");
    assert!(Audit::open(dir.path(), common::cfg20()).is_err());
}

#[test]
fn a_missing_head_with_events_present_fails() {
    let dir = fresh();
    raw(dir.path()).execute("DELETE FROM head", []).unwrap();
    assert_problem(&verify_offline(dir.path()), VerifyProblemKind::Truncated, 51, "signed head record is missing");
    let err = Audit::open(dir.path(), common::cfg20()).unwrap_err();
    assert!(err.to_string().contains("signed head record is missing"), "{err}");
}

#[test]
fn a_replaced_checkpoint_signature_is_a_bad_signature_at_its_first_event() {
    let dir = fresh();
    raw(dir.path()).execute("UPDATE checkpoints SET signature = zeroblob(64) WHERE first_seq = 21", []).unwrap();
    assert_both(dir.path(), VerifyProblemKind::BadSignature, 21, "signature does not verify");
}

#[test]
fn a_deleted_middle_checkpoint_leaves_uncovered_events() {
    let dir = fresh();
    raw(dir.path()).execute("DELETE FROM checkpoints WHERE first_seq = 21", []).unwrap();
    assert_problem(&verify_offline(dir.path()), VerifyProblemKind::Gap, 21, "no checkpoint covers events 21..=40");
    // The head counts checkpoints, so the store refuses to extend this chain.
    let err = Audit::open(dir.path(), common::cfg20()).unwrap_err();
    assert!(err.to_string().contains("checkpoints were deleted or added"), "{err}");
}

#[test]
fn a_deleted_last_checkpoint_is_caught_by_the_head() {
    let dir = fresh();
    raw(dir.path()).execute("DELETE FROM checkpoints WHERE first_seq = 41", []).unwrap();
    assert_problem(&verify_offline(dir.path()), VerifyProblemKind::Truncated, 41, "checkpoints were deleted");
    assert!(Audit::open(dir.path(), common::cfg20()).is_err());
}

#[test]
fn an_altered_newest_event_is_refused_at_open() {
    let dir = fresh();
    raw(dir.path()).execute("UPDATE events SET kind = 'nothing to see' WHERE seq = 50", []).unwrap();
    assert_problem(&verify_offline(dir.path()), VerifyProblemKind::HashMismatch, 50, "event 50");
    let err = Audit::open(dir.path(), common::cfg20()).unwrap_err();
    assert!(matches!(err, AuditError::BrokenChain { seq: 50, .. }), "{err:?}");
}

#[test]
fn a_wrong_public_key_fails_every_checkpoint() {
    let dir = fresh();
    let other = tempfile::tempdir().unwrap();
    store_with(other.path(), 1);
    let r = verify_db(&db_path(dir.path()), &public_key_path(other.path()));
    assert_problem(&r, VerifyProblemKind::BadSignature, 1, "signature does not verify");
}

#[test]
fn unreadable_inputs_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let r = verify_db(&dir.path().join("nope.db"), &dir.path().join("nope.pub"));
    assert_eq!(r.problem.as_ref().unwrap().kind, VerifyProblemKind::Unreadable);
    assert!(r.problem.unwrap().detail.contains("nope.pub"));

    store_with(dir.path(), 3);
    let r = verify_db(&dir.path().join("nope.db"), &public_key_path(dir.path()));
    assert_eq!(r.problem.as_ref().unwrap().kind, VerifyProblemKind::Unreadable);
    assert!(r.problem.unwrap().detail.contains("no audit database"));

    raw(dir.path()).execute("UPDATE events SET hash = x'00' WHERE seq = 2", []).unwrap();
    let r = verify_offline(dir.path());
    assert_problem(&r, VerifyProblemKind::Unreadable, 2, "column `hash`");
}

/// A bigger chain (verification hands rows between threads in chunks of 1024).
fn big(dir: &Path, n: u64) {
    let audit = Audit::open_with_durability(dir, common::cfg20(), gvm_audit::Durability::Normal).unwrap();
    for i in 1..=n {
        audit.append_blocking(common::event(i)).unwrap();
    }
    audit.close().unwrap();
}

#[test]
fn problems_beyond_the_first_chunks_name_the_right_event() {
    let dir = tempfile::tempdir().unwrap();
    big(dir.path(), 2500);
    assert_eq!(verify_offline(dir.path()).events, 2500);
    raw(dir.path())
        .execute("UPDATE events SET details = replace(details, 'POST', 'POSt') WHERE seq = 2049", [])
        .unwrap();
    let r = verify_offline(dir.path());
    assert_problem(&r, VerifyProblemKind::HashMismatch, 2049, "event 2049");
    assert_eq!((r.events, r.checkpoints), (2048, 102));

    let dir = tempfile::tempdir().unwrap();
    big(dir.path(), 2500);
    raw(dir.path()).execute("DELETE FROM events WHERE seq = 1025", []).unwrap();
    assert_problem(&verify_offline(dir.path()), VerifyProblemKind::Gap, 1025, "event 1025 is missing");
}

#[test]
fn verify_while_appending_sees_a_consistent_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open_with_durability(dir.path(), common::cfg20(), gvm_audit::Durability::Normal).unwrap();
    let writer = {
        let audit = audit.clone();
        std::thread::spawn(move || {
            for i in 1..=3000 {
                audit.append_blocking(common::event(i)).unwrap();
            }
        })
    };
    let mut last = 0;
    while !writer.is_finished() {
        let r = audit.verify();
        assert!(r.ok, "{r:?}");
        assert!(r.events >= last);
        last = r.events;
    }
    writer.join().unwrap();
    audit.close().unwrap();
    assert_eq!(audit.verify().events, 3000);
}
