//! Audit store numbers (a plain binary, not criterion): `cargo bench -p gvm-audit`.
//!
//! 1. Append throughput with group commit: 64 tokio tasks append 200,000 events in
//!    total, with `synchronous=FULL` (what gvmd ships) and `NORMAL` for comparison.
//! 2. Latency of one append with nobody else writing (one fsync per event).
//! 3. Verify speed over a 1,000,000-event database.
//!
//! Sizes can be changed with GVM_BENCH_APPENDS and GVM_BENCH_VERIFY_EVENTS. Databases go
//! under Cargo's target tmp dir (a real disk, so fsync costs what it costs).

use std::path::Path;
use std::time::{Duration, Instant};

use gvm_audit::{db_path, public_key_path, verify_db, Audit, AuditConfig, Durability, NewEvent};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn event(i: u64) -> NewEvent {
    NewEvent {
        profile: Some("invoices".to_owned()),
        kind: "net.decision".to_owned(),
        decision: Some(["deny", "allow", "allow", "allow"][(i % 4) as usize].to_owned()),
        rule: Some("network.rule[3]".to_owned()),
        details: serde_json::json!({
            "method": "POST",
            "url": format!("https://api.openai.com/v1/chat/completions?n={i}"),
            "status": 200,
            "bytes_out": 1834,
        }),
    }
}

fn tmpdir() -> tempfile::TempDir {
    let base = option_env!("CARGO_TARGET_TMPDIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// `tasks` tasks append `total` events; returns events/s.
fn append_throughput(dir: &Path, durability: Durability, tasks: u64, total: u64) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let audit = Audit::open_with_durability(dir, AuditConfig::default(), durability).unwrap();
    let per_task = total / tasks;
    let start = Instant::now();
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let audit = audit.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        audit.append(event(t * per_task + i)).await.unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    });
    let elapsed = start.elapsed();
    audit.close().unwrap();
    (per_task * tasks) as f64 / elapsed.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let total = env_u64("GVM_BENCH_APPENDS", 200_000);
    let verify_events = env_u64("GVM_BENCH_VERIFY_EVENTS", 1_000_000);

    // GVM_BENCH_ONLY=append|latency|verify runs one part.
    let only = std::env::var("GVM_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only == part;

    let cases = [(64, "FULL", Durability::Full), (64, "NORMAL", Durability::Normal), (256, "FULL", Durability::Full)];
    for (tasks, name, durability) in cases {
        if !run("append") {
            break;
        }
        let dir = tmpdir();
        let rate = append_throughput(dir.path(), durability, tasks, total);
        println!("append, group commit, {tasks} tasks, {total} events, synchronous={name}: {rate:.0} events/s");
    }

    if run("latency") {
        let dir = tmpdir();
        let audit = Audit::open(dir.path(), AuditConfig::default()).unwrap();
        let n = 2000;
        let mut lat: Vec<Duration> = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let t = Instant::now();
            audit.append_blocking(event(i)).unwrap();
            lat.push(t.elapsed());
        }
        audit.close().unwrap();
        lat.sort();
        println!(
            "append, one caller alone, synchronous=FULL: p50 {:.3} ms, p99 {:.3} ms",
            lat[n / 2].as_secs_f64() * 1e3,
            lat[n * 99 / 100].as_secs_f64() * 1e3
        );
    }

    if run("verify") {
        // GVM_BENCH_VERIFY_DIR keeps (and reuses) the big database between runs.
        let kept = std::env::var_os("GVM_BENCH_VERIFY_DIR").map(std::path::PathBuf::from);
        let tmp = tmpdir();
        let dir = kept.as_deref().unwrap_or(tmp.path());
        if !db_path(dir).exists() {
            let build = Instant::now();
            let rate = append_throughput(dir, Durability::Normal, 64, verify_events);
            eprintln!(
                "(built a {verify_events}-event database in {:.1} s, {rate:.0} events/s)",
                build.elapsed().as_secs_f64()
            );
        }
        let size = std::fs::metadata(db_path(dir)).map(|m| m.len()).unwrap_or(0);
        // Warm the page cache once, then measure.
        let _ = verify_db(&db_path(dir), &public_key_path(dir));
        let start = Instant::now();
        let r = verify_db(&db_path(dir), &public_key_path(dir));
        let elapsed = start.elapsed();
        assert!(r.ok, "{r:?}");
        println!(
            "verify, {} events, {} checkpoints, {:.0} MB: {:.3} s, {:.0} events/s",
            r.events,
            r.checkpoints,
            size as f64 / 1e6,
            elapsed.as_secs_f64(),
            r.events as f64 / elapsed.as_secs_f64()
        );
    }
}
