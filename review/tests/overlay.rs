//! Privileged tests on a real overlayfs: what the agent writes through the merged view
//! is listed, classified, applied, rolled back and checkpointed as a user would see it.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{files, sha, temps, write, Overlay};
use gvm_review::{ChangeKind, Error, FileClass, PathSel, Selection};

fn by_path(changes: &[gvm_review::Change]) -> BTreeMap<String, gvm_review::Change> {
    changes.iter().map(|c| (c.path.clone(), c.clone())).collect()
}

fn seed(o: &Overlay) {
    write(&o.r("keep.txt"), b"keep\n");
    write(&o.r("modify.txt"), b"old line 1\nold line 2\n");
    std::os::unix::fs::chown(o.r("modify.txt"), Some(1234), Some(2345)).unwrap();
    std::fs::set_permissions(o.r("modify.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    write(&o.r("delete.txt"), b"gone\n");
    write(&o.r("rename_me.txt"), b"rename content\n");
    write(&o.r("olddir/a.txt"), b"a\n");
    write(&o.r("olddir/b.txt"), b"b\n");
    write(&o.r("re/x.txt"), b"x old\n");
    write(&o.r("re/y.txt"), b"y old\n");
    write(&o.r("secret.txt"), b"secret\n");
}

/// The agent's session: every kind of write, through the merged view.
fn agent_writes(o: &Overlay) {
    let m = |p: &str| o.m(p);
    write(&m("new.txt"), b"hello\n");
    write(&m("out/report.csv"), b"a,b\n1,2\n");
    write(&m("tmp/junk"), b"junk");
    write(&m("modify.txt"), b"old line 1\nnew line 2\n");
    std::fs::remove_file(m("delete.txt")).unwrap();
    std::fs::rename(m("rename_me.txt"), m("renamed.txt")).unwrap();
    std::fs::remove_dir_all(m("olddir")).unwrap();
    std::fs::remove_dir_all(m("re")).unwrap();
    write(&m("re/x.txt"), b"x new\n");
    std::os::unix::fs::symlink("/etc/passwd", m("evil")).unwrap();
    std::fs::hard_link(m("secret.txt"), m("secret-link.txt")).unwrap();
    nix::unistd::mkfifo(&m("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    write(&m("suid.bin"), b"\x7fELF");
    std::fs::set_permissions(m("suid.bin"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    write(&m("weird\nname.txt"), b"newline in the name\n");
}

#[test]
#[ignore = "needs root"]
fn classify_apply_and_roll_back() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let mut o = Overlay::new();
    seed(&o);
    o.mount();
    agent_writes(&o);
    o.umount();

    let review = o.review(&files(&["new*.txt", "out/**"], &[], &["tmp/**"]));
    let changes = review.changes().unwrap();
    let c = by_path(&changes);
    let expect: &[(&str, &str, &str, FileClass)] = &[
        ("delete.txt", "deleted", "file", FileClass::Review),
        ("evil", "added", "symlink", FileClass::Refused),
        ("fifo", "added", "fifo", FileClass::Refused),
        ("modify.txt", "modified", "file", FileClass::Review),
        ("new.txt", "added", "file", FileClass::AutoApply),
        ("olddir", "deleted", "dir", FileClass::Review),
        ("out", "added", "dir", FileClass::Review),
        ("out/report.csv", "added", "file", FileClass::AutoApply),
        ("re/x.txt", "modified", "file", FileClass::Review),
        ("re/y.txt", "deleted", "file", FileClass::Review),
        ("renamed.txt", "renamed", "file", FileClass::Review),
        ("secret-link.txt", "added", "file", FileClass::Refused),
        ("secret.txt", "modified", "file", FileClass::Refused),
        ("suid.bin", "added", "file", FileClass::Refused),
        ("tmp", "added", "dir", FileClass::Discard),
        ("tmp/junk", "added", "file", FileClass::Discard),
        ("weird\nname.txt", "added", "file", FileClass::Review),
    ];
    let got: Vec<(&str, &str, &str, FileClass)> =
        changes.iter().map(|c| (c.path.as_str(), c.kind.as_str(), c.file_type.as_str(), c.class)).collect();
    assert_eq!(got, expect, "{changes:#?}");
    assert_eq!(c["renamed.txt"].kind, ChangeKind::Renamed { from: "rename_me.txt".into() });
    assert_eq!(c["evil"].reason.as_deref(), Some("symlink to \"/etc/passwd\""));
    assert!(
        c["secret-link.txt"].reason.as_deref().unwrap().starts_with("hard link (2 links)"),
        "{:?}",
        c["secret-link.txt"]
    );
    assert_eq!(c["suid.bin"].reason.as_deref(), Some("setuid bit"));
    assert_eq!(c["fifo"].reason.as_deref(), Some("fifo"));
    assert_eq!(c["modify.txt"].before_hash.as_deref(), Some(sha(b"old line 1\nold line 2\n").as_str()));
    assert_eq!(c["new.txt"].hash.as_deref(), Some(sha(b"hello\n").as_str()));
    // Stable ids, newline-safe JSON.
    assert_eq!(review.changes().unwrap(), changes);
    let json = serde_json::to_string(&changes).unwrap();
    assert!(json.contains(r#""path":"weird\nname.txt""#));
    let diff = review.diff(Some("modify.txt")).unwrap();
    assert!(diff.contains("-old line 2\n+new line 2\n"), "{diff}");
    let diff = review.diff(None).unwrap();
    assert!(diff.contains("\"weird\\nname.txt\""), "{diff}");
    assert!(!diff.contains("weird\nname"), "a name must not break the diff's lines");

    // Dry run, then All: new additions only; planted ones refused.
    let dry = review.apply(&Selection::All, true).unwrap();
    assert!(dry.id.is_none() && dry.dry_run);
    let report = review.apply(&Selection::All, false).unwrap();
    let applied: Vec<&str> = report.applied.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(applied, ["new.txt", "out", "out/report.csv", "weird\nname.txt"]);
    let refused: BTreeMap<&str, &str> = report.refused.iter().map(|r| (r.path.as_str(), r.reason.as_str())).collect();
    for planted in ["evil", "fifo", "secret-link.txt", "secret.txt", "suid.bin", "tmp", "tmp/junk"] {
        assert!(refused.contains_key(planted), "{planted} not refused: {refused:?}");
    }
    assert!(refused["modify.txt"].contains("explicit approval"), "{refused:?}");
    let first = report.id.clone().unwrap();
    assert_eq!(std::fs::read(o.r("new.txt")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read(o.r("out/report.csv")).unwrap(), b"a,b\n1,2\n");
    assert!(!o.r("evil").exists() && !o.r("fifo").exists() && !o.r("suid.bin").exists());
    assert!(!o.r("secret-link.txt").exists() && !o.r("tmp").exists());
    assert!(!o.upper.join("new.txt").exists(), "applied entries leave the upper dir");
    assert!(!o.upper.join("out").exists());
    let left = by_path(&review.changes().unwrap());
    assert!(!left.contains_key("new.txt") && !left.contains_key("out") && left.contains_key("modify.txt"));

    // An explicit path that has no change is an error naming it.
    let err = review.apply(&Selection::Paths(vec![PathSel::new("nope.txt")]), false).unwrap_err();
    assert_eq!(err.to_string(), "no change at nope.txt; see `gvmctl changes`");

    // Explicit approval of a modification keeps the real file's owner and mode.
    let reviewed = left["modify.txt"].hash.clone();
    let sel =
        Selection::Paths(vec![PathSel { path: o.r("modify.txt").display().to_string(), expected_hash: reviewed }]);
    let report = review.apply(&sel, false).unwrap();
    assert_eq!(report.applied.len(), 1, "{report:?}");
    let second = report.id.clone().unwrap();
    let md = std::fs::metadata(o.r("modify.txt")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1234, 2345, 0o640));
    assert_eq!(std::fs::read(o.r("modify.txt")).unwrap(), b"old line 1\nnew line 2\n");

    // Deletions, the rename and an opaque dir's deletion, explicitly.
    let sel = Selection::Paths(
        ["delete.txt", "renamed.txt", "re/y.txt", "re/x.txt", "olddir"].iter().map(|p| PathSel::new(*p)).collect(),
    );
    let report = review.apply(&sel, false).unwrap();
    let applied: Vec<&str> = report.applied.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(applied, ["delete.txt", "re/x.txt", "re/y.txt", "renamed.txt"], "{report:?}");
    assert_eq!(report.refused.len(), 1);
    assert_eq!(report.refused[0].path, "olddir");
    assert!(report.refused[0].reason.contains("still holds 2 entries"), "{:?}", report.refused);
    assert!(!o.r("delete.txt").exists() && !o.r("rename_me.txt").exists() && !o.r("re/y.txt").exists());
    assert_eq!(std::fs::read(o.r("renamed.txt")).unwrap(), b"rename content\n");
    assert_eq!(std::fs::read(o.r("re/x.txt")).unwrap(), b"x new\n");
    // re/ is opaque in upper: its applied file stays there (the merged view shows only it).
    assert!(o.upper.join("re/x.txt").exists());
    let left = by_path(&review.changes().unwrap());
    for gone in ["delete.txt", "renamed.txt", "re/x.txt", "re/y.txt", "modify.txt"] {
        assert!(!left.contains_key(gone), "{gone} still listed: {left:#?}");
    }

    // Records, newest first; rolling back the first apply removes what it created.
    let records = review.applied().unwrap();
    assert_eq!(records.len(), 3);
    assert!(records.iter().any(|r| r.id == first));
    let rb = review.rollback_applied(&first, false).unwrap();
    assert!(rb.refused.is_empty(), "{rb:?}");
    assert!(!o.r("new.txt").exists() && !o.r("out").exists());
    assert!(matches!(review.rollback_applied(&first, false), Err(Error::AlreadyRolledBack { .. })));
    assert!(matches!(review.rollback_applied("a-nope", false), Err(Error::UnknownApply(_))));

    // The modification: someone edits the file after the apply → refused unless forced.
    std::fs::write(o.r("modify.txt"), b"edited by the user\n").unwrap();
    let rb = review.rollback_applied(&second, false).unwrap();
    assert_eq!(rb.refused.len(), 1, "{rb:?}");
    assert_eq!(std::fs::read(o.r("modify.txt")).unwrap(), b"edited by the user\n");
    let rb = review.rollback_applied(&second, true).unwrap();
    assert!(rb.refused.is_empty(), "{rb:?}");
    assert_eq!(std::fs::read(o.r("modify.txt")).unwrap(), b"old line 1\nold line 2\n");
    let md = std::fs::metadata(o.r("modify.txt")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1234, 2345, 0o640));

    // The third: deleted files come back byte for byte, the renamed one goes.
    let third = &review.applied().unwrap()[0];
    let rb = review.rollback_applied(&third.id, false).unwrap();
    assert!(rb.refused.is_empty(), "{rb:?}");
    assert_eq!(std::fs::read(o.r("delete.txt")).unwrap(), b"gone\n");
    assert_eq!(std::fs::read(o.r("rename_me.txt")).unwrap(), b"rename content\n");
    assert_eq!(std::fs::read(o.r("re/y.txt")).unwrap(), b"y old\n");
    assert_eq!(std::fs::read(o.r("re/x.txt")).unwrap(), b"x old\n");
    assert!(!o.r("renamed.txt").exists());
    assert!(temps(&o.real).is_empty());
    // Store permissions.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&o.state), 0o700);
    assert_eq!(mode(&o.state.join("objects")), 0o700);
    for e in std::fs::read_dir(o.state.join("objects")).unwrap() {
        assert_eq!(mode(&e.unwrap().path()), 0o600);
    }
}

#[test]
#[ignore = "needs root"]
fn changed_after_review_is_refused_and_discard_drops() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let mut o = Overlay::new();
    write(&o.r("doc.txt"), b"v1\n");
    o.mount();
    write(&o.m("doc.txt"), b"v2\n");
    write(&o.m("planted.sh"), b"#!/bin/sh\n");
    write(&o.m("blob.bin"), b"\x00\x01binary");
    let review = o.review(&files(&[], &[], &[]));
    let reviewed = by_path(&review.changes().unwrap())["doc.txt"].hash.clone();
    let d = review.diff(Some("blob.bin")).unwrap();
    assert!(d.contains(&format!("Binary files differ: size 0 -> 8, none -> {}", sha(b"\x00\x01binary"))), "{d}");
    write(&o.m("doc.txt"), b"v3 sneaked in after the review\n");
    let sel = Selection::Paths(vec![PathSel { path: "doc.txt".into(), expected_hash: reviewed }]);
    let report = review.apply(&sel, false).unwrap();
    assert!(report.applied.is_empty() && report.id.is_none());
    assert!(report.refused[0].reason.starts_with("changed since it was reviewed"), "{report:?}");
    assert_eq!(std::fs::read(o.r("doc.txt")).unwrap(), b"v1\n");

    let dropped = review.discard(&[PathSel::new("planted.sh")]).unwrap();
    assert_eq!(dropped.len(), 1);
    assert!(!o.upper.join("planted.sh").exists());
    assert!(matches!(review.discard(&[PathSel::new("planted.sh")]), Err(Error::NoChange(_))));
    o.umount();
}

/// An apply while the overlay is mounted (the agent frozen, not stopped). Removing the
/// applied upper entries under a mounted overlay loses the agent's later writes: the
/// overlay keeps its dentry on the unlinked upper inode. With `set_overlays_mounted`
/// the entries stay and nothing is lost.
#[test]
#[ignore = "needs root"]
fn apply_while_mounted() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    for live in [false, true] {
        let mut o = Overlay::new();
        write(&o.r("m.txt"), b"old\n");
        o.mount();
        write(&o.m("m.txt"), b"new\n");
        write(&o.m("a.txt"), b"added\n");
        // The agent holds the file open, as a running agent may.
        let held = std::fs::File::open(o.m("a.txt")).unwrap();
        let mut review = o.review(&files(&["*.txt"], &[], &[]));
        review.set_overlays_mounted(live);
        let sel = Selection::Paths(vec![PathSel::new("m.txt"), PathSel::new("a.txt")]);
        let report = review.apply(&sel, false).unwrap();
        assert_eq!(report.applied.len(), 2, "{report:?}");
        assert_eq!(o.upper.join("a.txt").exists(), live);
        assert!(review.changes().unwrap().is_empty(), "applied entries kept in upper are not changes");
        assert_eq!(std::fs::read(o.m("a.txt")).unwrap(), b"added\n");
        assert_eq!(std::fs::read(o.m("m.txt")).unwrap(), b"new\n");
        // The agent writes to the applied file again, through the same path.
        std::fs::write(o.m("a.txt"), b"agent again\n").unwrap();
        assert_eq!(std::fs::read(o.m("a.txt")).unwrap(), b"agent again\n", "the agent sees its write");
        drop(held);
        o.remount();
        let after = std::fs::read(o.m("a.txt")).unwrap();
        eprintln!("live={live}: after remount a.txt = {:?}", String::from_utf8_lossy(&after));
        if live {
            assert_eq!(after, b"agent again\n");
            let c = review.changes().unwrap();
            assert_eq!(c.len(), 1);
            assert_eq!((c[0].path.as_str(), c[0].kind.as_str()), ("a.txt", "modified"));
        } else {
            // The write went to the unlinked upper inode: lost.
            assert_eq!(after, b"added\n");
            assert!(review.changes().unwrap().is_empty());
        }
    }
}

#[test]
#[ignore = "needs root"]
fn checkpoint_and_roll_back() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let mut o = Overlay::new();
    write(&o.r("keep.txt"), b"keep\n");
    write(&o.r("gone.txt"), b"gone\n");
    write(&o.r("d/old.txt"), b"old\n");
    o.mount();
    std::fs::remove_file(o.m("gone.txt")).unwrap();
    write(&o.m("a.txt"), b"1\n");
    std::os::unix::fs::symlink("a.txt", o.m("link")).unwrap();
    std::fs::remove_dir_all(o.m("d")).unwrap();
    write(&o.m("d/new.txt"), b"new\n");
    std::fs::set_permissions(o.m("a.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let review = o.review(&files(&[], &[], &[]));
    let before = review.changes().unwrap();
    let cp = review.checkpoint(Some("first")).unwrap();
    assert_eq!(cp.name.as_deref(), Some("first"));
    assert!(cp.files >= 4, "{cp:?}");
    assert!(matches!(review.checkpoint(Some("first")), Err(Error::CheckpointNameTaken(_))));

    write(&o.m("a.txt"), b"2\n");
    write(&o.m("b.txt"), b"b\n");
    std::fs::remove_file(o.m("keep.txt")).unwrap();
    std::fs::remove_file(o.m("link")).unwrap();
    o.umount();
    let rb = review.rollback_to(Some("first")).unwrap();
    assert!(rb.removed.iter().any(|p| p.ends_with("/b.txt")), "{rb:?}");
    assert_eq!(review.changes().unwrap(), before);
    o.mount();
    assert_eq!(std::fs::read(o.m("a.txt")).unwrap(), b"1\n");
    assert_eq!(std::fs::metadata(o.m("a.txt")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(o.m("keep.txt")).unwrap(), b"keep\n");
    assert!(!o.m("b.txt").exists());
    assert!(!o.m("gone.txt").exists(), "the whiteout came back");
    assert_eq!(std::fs::read_link(o.m("link")).unwrap().to_str(), Some("a.txt"));
    assert!(!o.m("d/old.txt").exists(), "the opaque mark came back");
    assert_eq!(std::fs::read(o.m("d/new.txt")).unwrap(), b"new\n");
    assert_eq!(review.checkpoints().unwrap().len(), 1);
    o.umount();

    review.rollback_to(None).unwrap();
    assert!(review.changes().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(&o.upper).unwrap().count(), 0);
    o.mount();
    assert!(!o.m("a.txt").exists());
    assert_eq!(std::fs::read(o.m("d/old.txt")).unwrap(), b"old\n");
    o.umount();
}

#[test]
#[ignore = "needs root"]
fn full_disk_fails_cleanly() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let mut o = Overlay::with_tmpfs_real("256k");
    write(&o.r("big.bin"), &vec![1u8; 100 << 10]);
    o.mount();
    write(&o.m("big.bin"), &vec![2u8; 1 << 20]);
    o.umount();
    let review = o.review(&files(&[], &[], &[]));
    let err = review.apply(&Selection::Paths(vec![PathSel::new("big.bin")]), false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("cannot apply ") && msg.contains("big.bin"), "{msg}");
    assert_eq!(std::fs::read(o.r("big.bin")).unwrap(), vec![1u8; 100 << 10]);
    assert!(temps(&o.real).is_empty(), "{:?}", temps(&o.real));
    assert!(!o.state.join("journal.json").exists());
    assert_eq!(review.changes().unwrap().len(), 1, "still reviewable");
    assert!(review.applied().unwrap().is_empty());
}

#[test]
#[ignore = "needs root"]
fn symlinks_in_the_workspace_are_never_followed() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let outside = tempfile::tempdir().unwrap();
    let mut o = Overlay::new();
    std::os::unix::fs::symlink(outside.path(), o.r("link")).unwrap();
    write(&o.r("d/keep.txt"), b"keep\n");
    o.mount();
    // The agent replaces the symlink by a directory and writes into it.
    std::fs::remove_file(o.m("link")).unwrap();
    write(&o.m("link/x.txt"), b"x\n");
    write(&o.m("d/new.txt"), b"new\n");
    o.umount();
    let review = o.review(&files(&["**"], &[], &[]));
    let c = by_path(&review.changes().unwrap());
    assert_eq!(c["link"].class, FileClass::Refused);
    assert_eq!(c["link"].reason.as_deref(), Some("replaces a symlink of the workspace with a directory"));
    assert_eq!(c["link/x.txt"].class, FileClass::Refused);
    assert_eq!(c["d/new.txt"].class, FileClass::AutoApply);
    // After the scan, the workspace's `d` becomes a symlink to somewhere else.
    std::fs::rename(o.r("d"), o.r("d.moved")).unwrap();
    std::os::unix::fs::symlink(outside.path(), o.r("d")).unwrap();
    let report = review.apply(&Selection::All, false).unwrap();
    assert!(report.applied.is_empty(), "{report:?}");
    let r = report.refused.iter().find(|r| r.path == "d/new.txt").unwrap();
    // The rescan at apply time sees it (the openat2 walk would refuse it too).
    assert!(r.reason.contains("replaces a symlink"), "{r:?}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside");
}

#[test]
#[ignore = "needs root"]
fn discard_under_an_opaque_dir_puts_the_workspace_version_back() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let mut o = Overlay::new();
    write(&o.r("re/x.txt"), b"x old\n");
    write(&o.r("re/y.txt"), b"y old\n");
    write(&o.r("re/sub/z.txt"), b"z old\n");
    write(&o.r("gone.txt"), b"gone\n");
    o.mount();
    std::fs::remove_dir_all(o.m("re")).unwrap();
    write(&o.m("re/x.txt"), b"x new\n");
    std::fs::remove_file(o.m("gone.txt")).unwrap();
    o.umount();
    let review = o.review(&files(&[], &[], &[]));
    let got: Vec<(String, &str)> =
        review.changes().unwrap().iter().map(|c| (c.path.clone(), c.kind.as_str())).collect();
    let want = [("gone.txt", "deleted"), ("re/sub", "deleted"), ("re/x.txt", "modified"), ("re/y.txt", "deleted")];
    assert_eq!(got, want.map(|(p, k)| (p.to_string(), k)));
    let dropped = review.discard(&want.map(|(p, _)| PathSel::new(p))).unwrap();
    assert_eq!(dropped.len(), 4);
    assert_eq!(review.changes().unwrap(), vec![]);
    o.mount();
    assert_eq!(std::fs::read(o.m("re/x.txt")).unwrap(), b"x old\n");
    assert_eq!(std::fs::read(o.m("re/y.txt")).unwrap(), b"y old\n");
    assert_eq!(std::fs::read(o.m("re/sub/z.txt")).unwrap(), b"z old\n");
    assert_eq!(std::fs::read(o.m("gone.txt")).unwrap(), b"gone\n");
    o.umount();
}
