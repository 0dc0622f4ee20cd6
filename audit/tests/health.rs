//! `Audit::ping`, the store's health: a round trip through the writer with a real
//! commit, so it fails while the store cannot write and recovers when it can again.

mod common;

use std::time::{Duration, Instant};

use common::{cfg20, event};
use gvm_audit::{db_path, Audit, AuditError};

#[tokio::test]
async fn ping_commits_fails_while_the_store_cannot_write_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    audit.append(event(1)).await.unwrap();
    audit.ping().await.expect("a healthy store answers the ping");

    // Another process holds the database's write lock: the writer cannot commit, and
    // the ping says so (after the busy timeout), although `status()` still answers.
    let other = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let start = Instant::now();
    let err = audit.ping().await.expect_err("a store that cannot write is not healthy");
    assert!(matches!(err, AuditError::Write { .. }), "{err}");
    assert!(start.elapsed() >= Duration::from_secs(1), "the ping really waited for the lock");
    assert!(audit.status().is_ok(), "the snapshot alone would have said healthy");

    other.execute_batch("ROLLBACK").unwrap();
    audit.ping().await.expect("healthy again once the lock is gone");
    // The probe changed nothing in the chain.
    assert_eq!(audit.status().unwrap().last_seq, 1);
    assert!(audit.verify().ok, "{:?}", audit.verify());

    audit.close().unwrap();
    assert!(matches!(audit.ping().await, Err(AuditError::Closed)));
}
