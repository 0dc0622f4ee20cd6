//! The store as gvmd and gvmctl see it: appends, durability across close, drop and a
//! real crash, queries, keys, and the errors a user gets.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{cfg20, event, raw, store_with};
use gvm_audit::{
    db_path, key_dir, private_key_path, public_key_path, verify_db, Audit, AuditConfig, AuditError, EventsQuery,
    NewEvent,
};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_unique_contiguous_seqs_and_are_all_stored() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..50u64 {
                got.push(audit.append(event(t * 1000 + i)).await.unwrap());
            }
            got
        }));
    }
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    let seqs: BTreeSet<u64> = answered.iter().map(|a| a.seq).collect();
    assert_eq!(seqs.len(), 3200, "every seq is unique");
    assert_eq!(seqs.iter().copied().collect::<Vec<_>>(), (1..=3200).collect::<Vec<_>>());
    audit.close().unwrap();

    let stored = audit.events(&EventsQuery::default()).unwrap();
    assert_eq!(stored.len(), 3200);
    for a in &answered {
        let e = &stored[(a.seq - 1) as usize];
        assert_eq!(e.seq, a.seq);
        assert_eq!(e.hash, hex::encode(a.hash));
    }
    let r = audit.verify();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.events, r.checkpoints), (3200, 160));
}

#[test]
fn events_survive_dropping_every_handle_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let answered: Vec<_> = {
        let audit = Audit::open(dir.path(), cfg20()).unwrap();
        (1..=45).map(|i| audit.append_blocking(event(i)).unwrap()).collect()
        // dropped here: no close(), no final checkpoint
    };
    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    let st = audit.status().unwrap();
    assert_eq!((st.last_seq, st.checkpoints, st.last_checkpoint_seq), (45, 2, 40));
    let stored = audit.events(&EventsQuery::default()).unwrap();
    for a in &answered {
        assert_eq!(stored[(a.seq - 1) as usize].hash, hex::encode(a.hash));
    }
    assert!(audit.verify().ok);

    // The chain goes on where it stopped; the next checkpoints cover the old tail.
    assert_eq!(audit.append_blocking(event(46)).unwrap().seq, 46);
    audit.close().unwrap();
    let r = verify_db(&db_path(dir.path()), &public_key_path(dir.path()));
    assert_eq!((r.ok, r.events, r.checkpoints), (true, 46, 3));
}

const CRASH_DIR: &str = "GVM_AUDIT_CRASH_DIR";

/// The child half of `a_crash_loses_nothing_that_was_answered`: appends from eight
/// threads, prints each answered seq, and aborts mid-stream. Never returns.
fn crash_child(dir: &Path) -> ! {
    let audit = Audit::open(dir, cfg20()).unwrap();
    for t in 0..8 {
        let audit = audit.clone();
        std::thread::spawn(move || loop {
            let a = audit.append_blocking(event(t)).unwrap();
            println!("answered {}", a.seq);
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    std::process::abort();
}

#[test]
fn a_crash_loses_nothing_that_was_answered() {
    // Re-executed as the crashing child: this same test, with the directory in the env.
    if let Some(dir) = std::env::var_os(CRASH_DIR) {
        crash_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_crash_loses_nothing_that_was_answered", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR, dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child aborts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answered: Vec<u64> =
        stdout.lines().filter_map(|l| l.strip_prefix("answered ")).filter_map(|n| n.trim().parse().ok()).collect();
    assert!(answered.len() > 10, "the child answered too little: {stdout}");

    let audit = Audit::open(dir.path(), cfg20()).expect("a crashed store reopens");
    let last = audit.status().unwrap().last_seq;
    for seq in &answered {
        assert!(*seq <= last, "answered event {seq} is lost (last stored {last})");
    }
    let r = audit.verify();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.events, last);
}

#[test]
fn events_query_filters_and_returns_the_newest_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 30);
    let audit = Audit::open(dir.path(), cfg20()).unwrap();

    let all = audit.events(&EventsQuery::default()).unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=30).collect::<Vec<_>>());
    let e7 = &all[6];
    assert_eq!(e7.profile.as_deref(), Some("mail"));
    assert_eq!(e7.details["n"], 7);
    assert_eq!(all[0].prev_hash, "0".repeat(64));
    assert_eq!(all[1].prev_hash, all[0].hash);
    assert!(e7.time.ends_with('Z') && e7.time.len() == "2026-11-23T10:00:00.123456789Z".len());

    let newest = audit.events(&EventsQuery { limit: Some(5), ..Default::default() }).unwrap();
    assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![26, 27, 28, 29, 30]);

    let inv = audit
        .events(&EventsQuery { profile: Some("invoices".into()), after_seq: Some(20), ..Default::default() })
        .unwrap();
    assert_eq!(inv.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![22, 24, 26, 28, 30]);

    let future =
        audit.events(&EventsQuery { since: Some("2999-01-01T00:00:00Z".into()), ..Default::default() }).unwrap();
    assert!(future.is_empty());
    let since = audit.events(&EventsQuery { since: Some(all[9].time.clone()), ..Default::default() }).unwrap();
    assert_eq!(since.first().map(|e| e.seq), Some(10));

    let err = audit.events(&EventsQuery { since: Some("yesterday".into()), ..Default::default() }).unwrap_err();
    assert!(matches!(err, AuditError::BadQuery { field: "since", .. }));
    assert!(err.to_string().contains("RFC 3339"), "{err}");
}

#[test]
fn scan_reads_a_whole_window_oldest_first_and_last_of_kind_finds_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 30);
    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    let mut seen = Vec::new();
    let q = EventsQuery { profile: Some("invoices".into()), after_seq: Some(20), limit: Some(1), ..Default::default() };
    let n = audit.scan(&q, |e| seen.push(e.seq)).unwrap();
    assert_eq!((n, seen), (5, vec![22, 24, 26, 28, 30]), "the limit is ignored, oldest first");
    let all = audit.events(&EventsQuery::default()).unwrap();
    let mut scanned = Vec::new();
    audit.scan(&EventsQuery::default(), |e| scanned.push(e)).unwrap();
    assert_eq!(scanned, all);
    let last = audit.last_of_kind("mail", "net.decision").unwrap().unwrap();
    assert_eq!(last.seq, 29);
    assert!(audit.last_of_kind("mail", "profile_loaded").unwrap().is_none());
}

#[test]
fn details_are_stored_as_canonical_json() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    audit
        .append_blocking(NewEvent {
            kind: "daemon.start".into(),
            details: serde_json::json!({"z": 1, "a": {"y": [true, null], "b": "é"}}),
            ..Default::default()
        })
        .unwrap();
    audit.close().unwrap();
    let text: String = raw(dir.path()).query_row("SELECT details FROM events WHERE seq = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(text, r#"{"a":{"b":"é","y":[true,null]},"z":1}"#);
}

#[test]
fn the_key_is_private_and_reused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 25); // checkpoints 1..=20, 21..=25
    assert_eq!(mode(&private_key_path(dir.path())), 0o600);
    assert_eq!(mode(&public_key_path(dir.path())), 0o644);
    assert_eq!(mode(&key_dir(dir.path())), 0o700);
    assert_eq!(mode(&db_path(dir.path())), 0o600);
    let key_before = std::fs::read(private_key_path(dir.path())).unwrap();
    assert!(String::from_utf8_lossy(&key_before).starts_with("-----BEGIN PRIVATE KEY-----"));

    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    for i in 26..=60 {
        audit.append_blocking(event(i)).unwrap();
    }
    audit.close().unwrap();
    assert_eq!(std::fs::read(private_key_path(dir.path())).unwrap(), key_before);
    // Checkpoints from before and after the restart verify with the one public key.
    let r = verify_db(&db_path(dir.path()), &public_key_path(dir.path()));
    assert_eq!((r.ok, r.events, r.checkpoints), (true, 60, 4), "{r:?}");
}

#[test]
fn a_group_readable_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 1);
    std::fs::set_permissions(private_key_path(dir.path()), std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = Audit::open(dir.path(), cfg20()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("audit.key") && msg.contains("chmod 600"), "{msg}");
}

#[test]
fn a_missing_key_with_events_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 3);
    std::fs::remove_file(private_key_path(dir.path())).unwrap();
    let err = Audit::open(dir.path(), cfg20()).unwrap_err();
    assert!(err.to_string().contains("restore the key from a backup"), "{err}");
    assert!(!private_key_path(dir.path()).exists(), "no new key was made");
}

#[test]
fn a_database_from_a_newer_gvm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 1);
    raw(dir.path()).pragma_update(None, "user_version", 99).unwrap();
    let err = Audit::open(dir.path(), cfg20()).unwrap_err();
    assert!(matches!(err, AuditError::SchemaTooNew { found: 99, .. }), "{err:?}");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn an_unwritable_state_dir_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let err = Audit::open(&file.join("state"), cfg20()).unwrap_err();
    assert!(matches!(err, AuditError::StateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("not-a-dir/state"), "{err}");
    assert!(err.to_string().contains("--state-dir"), "{err}");
}

#[tokio::test]
async fn a_failed_write_is_an_error_and_consumes_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    assert_eq!(audit.append(event(1)).await.unwrap().seq, 1);

    // Make every insert fail, as a full disk would.
    raw(dir.path())
        .execute_batch("CREATE TRIGGER fail BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END;")
        .unwrap();
    let err = audit.append(event(2)).await.unwrap_err();
    assert!(matches!(err, AuditError::Write { .. }), "{err:?}");
    assert!(err.to_string().contains("was not recorded"), "{err}");
    assert!(audit.append_blocking(event(2)).is_err());

    // A failure after the events were inserted (the head) rolls the whole batch back.
    raw(dir.path())
        .execute_batch(
            "DROP TRIGGER fail;
             CREATE TRIGGER fail BEFORE UPDATE ON head BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        )
        .unwrap();
    assert!(audit.append(event(2)).await.is_err());
    assert_eq!(audit.events(&EventsQuery::default()).unwrap().len(), 1);

    raw(dir.path()).execute_batch("DROP TRIGGER fail;").unwrap();
    assert_eq!(audit.append(event(2)).await.unwrap().seq, 2, "no seq was consumed");
    audit.close().unwrap();
    let r = audit.verify();
    assert_eq!((r.ok, r.events), (true, 2), "{r:?}");
}

#[tokio::test]
async fn appends_after_close_fail_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    let other = audit.clone();
    audit.append(event(1)).await.unwrap();
    audit.close().unwrap();
    audit.close().unwrap();
    assert!(matches!(other.append(event(2)).await, Err(AuditError::Closed)));
    assert!(matches!(other.append_blocking(event(2)), Err(AuditError::Closed)));
    let st = other.status().unwrap();
    assert_eq!((st.last_seq, st.checkpoints, st.last_checkpoint_seq), (1, 1, 1));
}

#[test]
fn checkpoints_are_signed_by_time_when_traffic_is_low() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(
        dir.path(),
        AuditConfig { checkpoint_every: 1000, checkpoint_interval: Duration::from_millis(100) },
    )
    .unwrap();
    for i in 1..=3 {
        audit.append_blocking(event(i)).unwrap();
    }
    assert_eq!(audit.status().unwrap().checkpoints, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while audit.status().unwrap().checkpoints == 0 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint after the interval");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = audit.status().unwrap();
    assert_eq!((st.checkpoints, st.last_checkpoint_seq), (1, 3));
    // Idle: no empty checkpoints.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(audit.status().unwrap().checkpoints, 1);
    assert!(audit.verify().ok);
}

#[test]
fn an_empty_store_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), AuditConfig::default()).unwrap();
    let r = audit.verify();
    assert_eq!((r.ok, r.events, r.checkpoints), (true, 0, 0));
    audit.close().unwrap();
    let audit = Audit::open(dir.path(), AuditConfig::default()).unwrap();
    assert_eq!(audit.status().unwrap().last_seq, 0);
}

/// Unawaited events ride along with the next awaited append (before it, in seq order),
/// or are committed on their own within a short delay, or by `close()`, or when the last
/// handle is dropped; the chain stays whole either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unawaited_events_are_committed_with_the_next_append_or_soon_after() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    let count = |a: &Audit| a.events(&EventsQuery::default()).unwrap().len();

    let first = audit.append(event(1)).await.unwrap();
    audit.append_nowait(event(2)).unwrap();
    audit.append_nowait(event(3)).unwrap();
    let next = audit.append(event(4)).await.unwrap();
    assert_eq!((first.seq, next.seq), (1, 4), "the queued events went first, in one commit");
    assert_eq!(count(&audit), 4);

    // Alone: committed within the delay, without any awaited append to carry it.
    audit.append_nowait(event(5)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while count(&audit) < 5 {
        assert!(std::time::Instant::now() < deadline, "the unawaited event was never committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Many at once: nothing is lost, seqs stay contiguous.
    for i in 0..3000 {
        audit.append_nowait(event(100 + i)).unwrap();
    }
    audit.append_nowait(event(9999)).unwrap();
    audit.close().unwrap();
    assert_eq!(count(&audit), 5 + 3001, "close() commits what is queued");
    assert!(matches!(audit.append_nowait(event(7)), Err(AuditError::Closed)));
    let r = audit.verify();
    assert!(r.ok, "{r:?}");

    // Dropping every handle without close() commits what is queued too.
    let dir = tempfile::tempdir().unwrap();
    {
        let audit = Audit::open(dir.path(), cfg20()).unwrap();
        audit.append(event(1)).await.unwrap();
        audit.append_nowait(event(2)).unwrap();
    }
    let r = verify_db(&db_path(dir.path()), &public_key_path(dir.path()));
    assert!(r.ok, "{r:?}");
    assert_eq!(r.events, 2);
}

/// `gvmctl run` and `status` count a profile's decisions with this: exact past the
/// `MAX_EVENTS` that one `events` query returns (a flood once read as "0 denied").
#[test]
fn decisions_are_counted_exactly_beyond_one_page_of_events() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    let n = 2 * u64::from(gvm_audit::MAX_EVENTS) + 2_000; // half of them are "invoices"
    for i in 1..n {
        audit.append_nowait(event(i)).unwrap();
    }
    audit.append_blocking(event(n)).unwrap();
    let q = EventsQuery { profile: Some("invoices".into()), ..Default::default() };
    let expect = |deny: bool| (1..=n).filter(|i| i % 2 == 0 && (i % 3 == 0) == deny).count() as u64;
    let counts = audit.count_decisions(&q).unwrap();
    let count = |d: &str| counts.iter().find(|c| c.decision.as_deref() == Some(d)).map(|c| c.count);
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.iter().all(|c| c.kind == "net.decision"));
    assert_eq!((count("allow"), count("deny")), (Some(expect(false)), Some(expect(true))));
    assert!(expect(false) + expect(true) > u64::from(gvm_audit::MAX_EVENTS), "the test spans more than a page");
    // The filters are those of `events`.
    let after = EventsQuery { after_seq: Some(n - 10), ..Default::default() };
    assert_eq!(audit.count_decisions(&after).unwrap().iter().map(|c| c.count).sum::<u64>(), 10);
    let bad = EventsQuery { since: Some("yesterday".into()), ..Default::default() };
    assert!(matches!(audit.count_decisions(&bad), Err(AuditError::BadQuery { field: "since", .. })));
}

/// An event with `details.folded = N` stands for N decisions (identical refusals the
/// gateway folded, or refusals past a limit), and `details.of` names the requests a
/// `limits_exceeded` event counts: a flood is counted exactly from a few events.
#[test]
fn folded_events_count_for_the_decisions_they_stand_for() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), cfg20()).unwrap();
    let ev = |kind: &str, decision: &str, details: serde_json::Value| NewEvent {
        profile: Some("p".into()),
        kind: kind.into(),
        decision: Some(decision.into()),
        rule: None,
        details,
    };
    audit.append_blocking(ev("dns", "deny", serde_json::json!({"name": "x.example"}))).unwrap();
    audit.append_blocking(ev("dns", "deny", serde_json::json!({"name": "x.example", "folded": 41_000}))).unwrap();
    audit.append_blocking(ev("limits_exceeded", "limit", serde_json::json!({"of": "dns", "folded": 900_000}))).unwrap();
    audit.append_blocking(ev("http", "allow", serde_json::json!({}))).unwrap();
    let counts = audit.count_decisions(&EventsQuery::default()).unwrap();
    let get =
        |kind: &str, of: Option<&str>| counts.iter().find(|c| c.kind == kind && c.of.as_deref() == of).map(|c| c.count);
    assert_eq!(get("dns", None), Some(41_001));
    assert_eq!(get("limits_exceeded", Some("dns")), Some(900_000));
    assert_eq!(get("http", None), Some(1));
}
