//! `cargo bench -p gvm-review`: `changes` and `apply` on 10,000 small files, next to
//! the floor — a bare walk of the upper dir that reads and hashes every file.
//! Needs no overlay mount (the upper dir is built directly); `apply` needs root only
//! to chown, which it does to the owner the files already have.

use std::path::Path;
use std::time::{Duration, Instant};

use gvm_review::{Review, Selection, Workspace};
use sha2::Digest;

const FILES: usize = 10_000;
const DIRS: usize = 100;

fn build(root: &Path) -> Workspace {
    let real = root.join("real");
    let upper = root.join("upper");
    for d in 0..DIRS {
        std::fs::create_dir_all(real.join(format!("d{d}"))).unwrap();
        std::fs::create_dir_all(upper.join(format!("d{d}"))).unwrap();
        // Each directory of the workspace holds files the agent did not touch.
        for i in 0..10 {
            std::fs::write(real.join(format!("d{d}/keep{i}.txt")), format!("keep {d} {i}\n")).unwrap();
        }
    }
    for i in 0..FILES {
        let body = format!("file {i}\n").repeat(1 + i % 50);
        std::fs::write(upper.join(format!("d{}/f{i}.txt", i % DIRS)), body).unwrap();
    }
    Workspace { id: "bench".into(), real, upper, owner: None }
}

fn bare(dir: &Path, n: &mut usize) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            bare(&e.path(), n);
        } else if t.is_file() {
            let b = std::fs::read(e.path()).unwrap();
            std::hint::black_box(sha2::Sha256::digest(&b));
            *n += 1;
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = build(tmp.path());
    let files = gvm_policy::Files { auto_apply: vec!["**/*.txt".into()], ..Default::default() };
    let review = Review::open(&tmp.path().join("state"), vec![ws.clone()], &files).unwrap();

    let mut walk = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0;
        bare(&ws.upper, &mut n);
        assert_eq!(n, FILES);
        walk.push(t.elapsed());
    }
    let mut scan = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let c = review.changes().unwrap();
        assert_eq!(c.len(), FILES);
        scan.push(t.elapsed());
    }
    println!("bare walk + read + sha256 of {FILES} files: {:?} (median of 5)", median(walk));
    println!("changes() on {FILES} added files:           {:?} (median of 5)", median(scan));

    let t = Instant::now();
    let report = review.apply(&Selection::Auto, true).unwrap();
    println!("apply(Auto) dry run:                        {:?} ({} selected)", t.elapsed(), report.applied.len());
    let t = Instant::now();
    let report = review.apply(&Selection::Auto, false).unwrap();
    let took = t.elapsed();
    assert_eq!(report.applied.len(), FILES);
    println!(
        "apply(Auto) of {FILES} files:                 {took:?} ({:?} a file; an fsync per file, one per directory)",
        took / FILES as u32
    );
    let t = Instant::now();
    let rb = review.rollback_applied(report.id.as_deref().unwrap(), false).unwrap();
    assert_eq!(rb.removed.len(), FILES);
    println!("rollback_applied of it:                     {:?}", t.elapsed());

    // Modifications: every upper file lies over a real one, which is hashed too.
    let tmp = tempfile::tempdir().unwrap();
    let ws = build(tmp.path());
    for i in 0..FILES {
        std::fs::write(ws.real.join(format!("d{}/f{i}.txt", i % DIRS)), format!("before {i}\n")).unwrap();
    }
    let review = Review::open(&tmp.path().join("state"), vec![ws.clone()], &files).unwrap();
    let mut scan = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(review.changes().unwrap().len(), FILES);
        scan.push(t.elapsed());
    }
    println!("changes() on {FILES} modified files:        {:?} (median of 5)", median(scan));
    let t = Instant::now();
    let report = review
        .apply(
            &Selection::Paths(
                review.changes().unwrap().into_iter().map(|c| gvm_review::PathSel::new(c.path)).collect(),
            ),
            false,
        )
        .unwrap();
    assert_eq!(report.applied.len(), FILES);
    println!("apply(Paths) of {FILES} modifications:      {:?} (pre-images stored)", t.elapsed());
}
