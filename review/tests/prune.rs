//! Privileged tests on a real overlayfs: `Review::prune` removes from the upper dir what
//! an apply left there while the overlay was mounted, so that a later edit of the real
//! file is what the agent sees; what still differs stays; nothing is removed, discarded
//! or rolled back while the overlay is mounted.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use common::{files, write, Overlay};
use gvm_review::{Error, PathSel, Selection};

fn in_upper(o: &Overlay, rel: &str) -> bool {
    o.upper.join(rel).symlink_metadata().is_ok()
}

fn listed(review: &gvm_review::Review) -> Vec<(String, &'static str)> {
    review.changes().unwrap().iter().map(|c| (c.path.clone(), c.kind.as_str())).collect()
}

#[test]
#[ignore = "needs root"]
fn prune_after_a_live_apply_unshadows_later_real_edits() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let mut o = Overlay::new();
    write(&o.r("m.txt"), b"old\n");
    write(&o.r("d/keep.txt"), b"keep\n");
    write(&o.r("del.txt"), b"del\n");
    write(&o.r("gone.txt"), b"gone\n");
    write(&o.r("diff.txt"), b"v1\n");
    write(&o.r("mode.txt"), b"mode\n");
    std::fs::set_permissions(o.r("mode.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    write(&o.r("touched.txt"), b"t\n");
    write(&o.r("re/x.txt"), b"x old\n");
    write(&o.r("re/y.txt"), b"y old\n");
    o.mount();
    // The agent's session.
    write(&o.m("m.txt"), b"new\n");
    write(&o.m("a.txt"), b"added\n");
    write(&o.m("d/n.txt"), b"n\n");
    std::fs::remove_file(o.m("del.txt")).unwrap();
    std::fs::remove_file(o.m("gone.txt")).unwrap();
    write(&o.m("diff.txt"), b"v2\n");
    std::fs::set_permissions(o.m("mode.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    drop(std::fs::OpenOptions::new().append(true).open(o.m("touched.txt")).unwrap()); // copied up, unchanged
    std::fs::remove_dir_all(o.m("re")).unwrap();
    write(&o.m("re/x.txt"), b"x new\n");
    assert!(in_upper(&o, "touched.txt"));

    // Applied while the agent runs (frozen): the applied entries stay in upper.
    let mut review = o.review(&files(&[], &[], &[]));
    review.set_overlays_mounted(true);
    let sel = Selection::Paths(["m.txt", "a.txt", "d/n.txt", "del.txt", "re/x.txt"].map(PathSel::new).to_vec());
    let report = review.apply(&sel, false).unwrap();
    assert_eq!(report.applied.len(), 5, "{report:?}");
    for kept in ["m.txt", "a.txt", "d/n.txt", "del.txt", "re/x.txt"] {
        assert!(in_upper(&o, kept), "{kept} left upper under a mounted overlay");
    }
    assert!(std::fs::symlink_metadata(o.upper.join("del.txt")).unwrap().file_type().is_char_device());
    let before = listed(&review);
    let want = [("diff.txt", "modified"), ("gone.txt", "deleted"), ("mode.txt", "modified"), ("re/y.txt", "deleted")];
    assert_eq!(before, want.map(|(p, k)| (p.to_string(), k)));

    // The agent stops.
    o.umount();
    review.set_overlays_mounted(false);
    let pruned = review.prune().unwrap();
    // m.txt, a.txt, d/n.txt, d, the whiteout del.txt, touched.txt.
    assert_eq!(pruned.removed, 6, "{pruned:?}");
    for gone in ["m.txt", "a.txt", "d/n.txt", "d", "del.txt", "touched.txt"] {
        assert!(!in_upper(&o, gone), "{gone} still in upper");
    }
    // Still differs (content, mode), a whiteout over a real file, an opaque dir and
    // what it holds (the merged view shows only upper there).
    for kept in ["diff.txt", "mode.txt", "gone.txt", "re", "re/x.txt"] {
        assert!(in_upper(&o, kept), "{kept} pruned");
    }
    assert_eq!(listed(&review), before, "prune changes no listed change");
    assert_eq!(review.prune().unwrap().removed, 0);

    // The user edits the real files; the agent's next session sees the edits.
    std::fs::write(o.r("m.txt"), b"user edit\n").unwrap();
    std::fs::write(o.r("a.txt"), b"user a\n").unwrap();
    o.mount();
    assert_eq!(std::fs::read(o.m("m.txt")).unwrap(), b"user edit\n", "the stale upper copy shadows the real file");
    assert_eq!(std::fs::read(o.m("a.txt")).unwrap(), b"user a\n");
    assert_eq!(std::fs::read(o.m("d/n.txt")).unwrap(), b"n\n");
    assert_eq!(std::fs::read(o.m("d/keep.txt")).unwrap(), b"keep\n");
    assert_eq!(std::fs::read(o.m("touched.txt")).unwrap(), b"t\n");
    assert!(!o.m("del.txt").exists() && !o.m("gone.txt").exists());
    assert_eq!(std::fs::read(o.m("diff.txt")).unwrap(), b"v2\n");
    assert_eq!(std::fs::metadata(o.m("mode.txt")).unwrap().permissions().mode() & 0o7777, 0o600);
    assert_eq!(std::fs::read(o.m("re/x.txt")).unwrap(), b"x new\n");
    assert!(!o.m("re/y.txt").exists());
    o.umount();
    assert_eq!(listed(&review), before);
}

#[test]
#[ignore = "needs root"]
fn nothing_leaves_upper_while_mounted() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let mut o = Overlay::new();
    write(&o.r("a.txt"), b"a\n");
    o.mount();
    write(&o.m("b.txt"), b"b\n");
    drop(std::fs::OpenOptions::new().append(true).open(o.m("a.txt")).unwrap());
    let mut review = o.review(&files(&[], &[], &[]));
    review.set_overlays_mounted(true);
    review.checkpoint(Some("c")).unwrap();
    let msg = "the agent's overlay is mounted (the agent runs); stop the agent first (gvmctl stop)";
    let err = review.prune().unwrap_err();
    assert!(matches!(err, Error::Mounted), "{err:?}");
    assert_eq!(err.to_string(), msg);
    assert!(err.is_user_error());
    assert!(matches!(review.discard(&[PathSel::new("b.txt")]), Err(Error::Mounted)));
    assert!(matches!(review.rollback_to(None), Err(Error::Mounted)));
    assert!(matches!(review.rollback_to(Some("c")), Err(Error::Mounted)));
    assert!(in_upper(&o, "a.txt") && in_upper(&o, "b.txt"));
    assert_eq!(std::fs::read(o.m("b.txt")).unwrap(), b"b\n");
    assert_eq!(listed(&review), [("b.txt".to_string(), "added")]);

    o.umount();
    review.set_overlays_mounted(false);
    assert_eq!(review.prune().unwrap().removed, 1, "the unchanged copy-up of a.txt");
    assert!(!in_upper(&o, "a.txt") && in_upper(&o, "b.txt"));
    assert_eq!(review.discard(&[PathSel::new("b.txt")]).unwrap().len(), 1);
    assert!(review.changes().unwrap().is_empty());
}
