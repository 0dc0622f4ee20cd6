//! A crash in the middle of an apply: a child process (this test binary, re-executed)
//! applies a few hundred 1 MB files and is SIGKILLed after a delay; `Review::open`
//! recovers. Every real file must be entirely old or entirely new, no temp file may
//! remain, and the state must be consistent: either the apply is recorded and every
//! file is new, or nothing is recorded, every file is old and still reviewable.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{files, sha, temps, write, Overlay};
use gvm_review::{PathSel, Review, Selection, Workspace};

const CHILD: &str = "GVM_REVIEW_CRASH_CHILD";
const MODIFIED: usize = 120;
const ADDED: usize = 120;

fn content(i: usize, new: bool) -> Vec<u8> {
    let mut v = vec![if new { b'N' } else { b'o' }; 1 << 20];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

fn child(spec: &str) {
    let mut parts = spec.split('|');
    let (real, upper, state) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let ws = Workspace { id: "ws".into(), real: PathBuf::from(real), upper: PathBuf::from(upper), owner: None };
    let review = Review::open(std::path::Path::new(state), vec![ws], &files(&[], &[], &[])).unwrap();
    let paths: Vec<PathSel> = review.changes().unwrap().into_iter().map(|c| PathSel::new(c.path)).collect();
    let report = review.apply(&Selection::Paths(paths), false).unwrap();
    eprintln!("child: applied {} files", report.applied.len());
}

#[test]
#[ignore = "needs root"]
fn crash_mid_apply_recovers() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
        return;
    }
    let mut outcomes = BTreeMap::new();
    // `None`: kill 20 ms after the start (scan or plan); `Some(ms)`: that long after the
    // journal appears (the renames are under way).
    for delay in [None, Some(0u64), Some(40), Some(150), Some(500), Some(1500), Some(4000)] {
        let mut o = Overlay::new();
        for i in 0..MODIFIED {
            write(&o.r(&format!("d{}/m{i}.bin", i % 4)), &content(i, false));
        }
        o.mount();
        for i in 0..MODIFIED {
            write(&o.m(&format!("d{}/m{i}.bin", i % 4)), &content(i, true));
        }
        for i in 0..ADDED {
            write(&o.m(&format!("new/sub{}/a{i}.bin", i % 3)), &content(1000 + i, true));
        }
        o.umount();
        let spec = format!("{}|{}|{}", o.real.display(), o.upper.display(), o.state.display());
        let mut kid = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_mid_apply_recovers", "--include-ignored", "--nocapture"])
            .env(CHILD, spec)
            .spawn()
            .unwrap();
        match delay {
            None => std::thread::sleep(Duration::from_millis(20)),
            Some(ms) => {
                let journal = o.state.join("journal.json");
                let start = std::time::Instant::now();
                while !journal.exists() && start.elapsed() < Duration::from_secs(60) {
                    if kid.try_wait().unwrap().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        let _ = kid.kill(); // SIGKILL
        let status = kid.wait().unwrap();
        let had_journal = o.state.join("journal.json").exists();

        let review = o.review(&files(&[], &[], &[]));
        assert!(!o.state.join("journal.json").exists(), "recovery removes the journal");
        assert!(temps(&o.real).is_empty(), "temp files left: {:?}", temps(&o.real));
        let records = review.applied().unwrap();
        let mut old = 0;
        let mut new = 0;
        for i in 0..MODIFIED {
            let got = std::fs::read(o.r(&format!("d{}/m{i}.bin", i % 4))).unwrap();
            if got == content(i, true) {
                new += 1;
            } else {
                assert_eq!(sha(&got), sha(&content(i, false)), "m{i} is neither old nor new");
                old += 1;
            }
        }
        for i in 0..ADDED {
            match std::fs::read(o.r(&format!("new/sub{}/a{i}.bin", i % 3))) {
                Ok(got) => {
                    assert_eq!(sha(&got), sha(&content(1000 + i, true)), "a{i} is partial");
                    new += 1;
                }
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
                    old += 1;
                }
            }
        }
        let changes = review.changes().unwrap();
        let outcome = if records.is_empty() {
            assert_eq!((old, new), (MODIFIED + ADDED, 0), "no record, so nothing may be applied");
            assert_eq!(changes.len(), MODIFIED + ADDED + 4, "all still reviewable (+ new/ and its 3 dirs)");
            assert!(!o.real.join("new").exists(), "directories the apply created are removed");
            "undone"
        } else {
            assert_eq!(records.len(), 1);
            assert_eq!((old, new), (0, MODIFIED + ADDED), "recorded, so everything is applied");
            assert!(changes.is_empty(), "{changes:?}");
            "committed"
        };
        eprintln!(
            "kill {delay:?} ms after the journal: child {status}, journal at kill: {had_journal}, outcome: {outcome}, {new} files new"
        );
        outcomes.insert(delay, (had_journal, outcome));
    }
    assert!(
        outcomes.values().any(|&(journal, outcome)| journal && outcome == "undone"),
        "no delay hit the apply in progress: {outcomes:?}"
    );
}
