//! Scanning the upper layers: what did the agent change, and may it be applied?
//!
//! Everything under an upper dir is written by the agent and untrusted: names may hold
//! any byte, entries may be swapped while we look. The walk opens each directory by
//! descriptor without following symlinks, re-checks each file's identity after opening
//! it, and hashes content from the descriptor it keeps. The real workspace (the overlay's
//! lower layer) is walked in step, by descriptor too.
//!
//! The same walk prunes (see [`prune`]): an upper entry is removed exactly where the
//! scan decides it is not a change, so a pruned entry can never be one the scan lists.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use gvm_api::review::{Change, ChangeKind, FileClass};
use rustix::fs::{AtFlags, FileType, Stat};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::fsx;
use crate::glob::FileRules;
use crate::{Error, IoCtx, Workspace};

/// What the upper layer holds at a change's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upper {
    File,
    Dir,
    /// A whiteout (character device 0/0, or the xattr form).
    Whiteout,
    /// Symlink, FIFO, socket, device: never applied.
    Other,
    /// Nothing: a lower entry hidden by an opaque upper directory.
    Absent,
}

/// One change with what apply and discard need to know about its upper side.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub change: Change,
    pub ws: usize,
    pub upper: Upper,
    /// An upper directory on the way is opaque: the merged view shows only upper
    /// there, so the upper entry must stay after it is applied.
    pub opaque_above: bool,
    /// For a rename: what the upper layer holds at the old path.
    pub from_upper: Option<(Upper, bool)>,
}

struct Raw {
    path: String,
    kind: ChangeKind,
    file_type: &'static str,
    size: Option<u64>,
    hash: Option<String>,
    before_hash: Option<String>,
    mode: Option<u32>,
    refused: Option<String>,
    upper: Upper,
    opaque_above: bool,
}

/// Scans every workspace's upper dir. Sorted by (workspace, path).
pub(crate) fn scan(workspaces: &[Workspace], rules: &FileRules) -> Result<Vec<Found>, Error> {
    let mut out = Vec::new();
    for (wsi, ws) in workspaces.iter().enumerate() {
        let raws = walk_workspace(ws, "scan", None)?;
        out.extend(finish(ws, wsi, raws, rules));
    }
    out.sort_by(|a, b| {
        (a.change.workspace.as_str(), a.change.path.as_str())
            .cmp(&(b.change.workspace.as_str(), b.change.path.as_str()))
    });
    Ok(out)
}

/// Removes from every upper dir what the scan finds is not a change, where the workspace
/// shows through the same without it: a regular file equal to its real counterpart in
/// content and mode (whatever its owner), a whiteout with nothing below it, and then a
/// directory left empty that the workspace has too. Nothing under an opaque directory
/// (the merged view shows only upper there) or under a refused directory; never a
/// directory with an overlay redirect; never the upper root. Only while no overlay is
/// mounted on these upper dirs. Returns how many entries were removed.
pub(crate) fn prune(workspaces: &[Workspace]) -> Result<u64, Error> {
    let mut removed = 0;
    for ws in workspaces {
        walk_workspace(ws, "prune", Some(&mut removed))?;
    }
    Ok(removed)
}

/// Walks one workspace; with `pruned`, removes the unchanged upper entries as it goes.
fn walk_workspace(ws: &Workspace, action: &'static str, pruned: Option<&mut u64>) -> Result<Vec<Raw>, Error> {
    let up = fsx::open_root(&ws.upper).ctx("open the upper dir", &ws.upper)?;
    let low = crate::apply::open_real(ws).ctx("open the workspace", &ws.real)?;
    let mut raws = Vec::new();
    walk(&mut raws, up.as_fd(), Some(low), "", None, false, pruned).map_err(|(path, source)| Error::Io {
        action,
        path: join_display(&ws.real.to_string_lossy(), &path),
        source,
    })?;
    Ok(raws)
}

/// The overlay's mark on a renamed directory (`redirect_dir`): its content comes from
/// elsewhere in the lower layer, so it is not "the same directory" as the workspace's.
const REDIRECT: &str = "trusted.overlay.redirect";

/// Prune mode: removes upper entry `name`, still the inode `st`, which the scan found is
/// not a change. Anything else now at that name (it should not be: no overlay is
/// mounted) stays.
fn remove_unchanged(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat, pruned: &mut u64) -> std::io::Result<()> {
    match lstat(dir, name)? {
        Some(now) if now.st_ino == st.st_ino && now.st_dev == st.st_dev => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            *pruned += 1;
        }
        _ => {}
    }
    Ok(())
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

pub(crate) fn join_display(root: &str, rel: &str) -> String {
    format!("{}/{}", root.trim_end_matches('/'), rel)
}

type WalkErr = (String, std::io::Error);

fn walk(
    out: &mut Vec<Raw>,
    up: BorrowedFd<'_>,
    low: Option<OwnedFd>,
    rel: &str,
    refused_above: Option<&str>,
    opaque_above: bool,
    mut pruned: Option<&mut u64>,
) -> Result<(), WalkErr> {
    let opaque = fsx::is_opaque(up);
    let hidden_lower = opaque_above || opaque;
    let names = fsx::list(up).map_err(|e| (rel.to_string(), e))?;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for raw_name in names {
        let os = OsStr::from_bytes(&raw_name);
        let (name, mut refused) = match std::str::from_utf8(&raw_name) {
            Ok(n) => (n.to_string(), refused_above.map(str::to_string)),
            Err(_) => (String::from_utf8_lossy(&raw_name).into_owned(), Some("the name is not UTF-8".to_string())),
        };
        if fsx::check_name(&name).is_err() {
            refused = Some("unsafe name".to_string());
        }
        let path = join(rel, &name);
        let err = |e: std::io::Error| (path.clone(), e);
        if opaque {
            seen.insert(raw_name.clone());
        }
        let Some(st) = lstat(up, os).map_err(err)? else { continue };
        let lower_st = match &low {
            Some(l) => lstat(l.as_fd(), os).map_err(err)?,
            None => None,
        };
        let lower_type = lower_st.as_ref().map(fsx::file_type);
        let existed_kind = if lower_st.is_some() { ChangeKind::Modified } else { ChangeKind::Added };
        let mode = Some(st.st_mode & 0o7777);
        let mut raw = Raw {
            path: path.clone(),
            kind: existed_kind.clone(),
            file_type: fsx::type_name(fsx::file_type(&st)),
            size: None,
            hash: None,
            before_hash: None,
            mode,
            refused,
            upper: Upper::Other,
            opaque_above: hidden_lower,
        };
        match fsx::file_type(&st) {
            FileType::Directory => {
                let sub = match rustix::fs::openat(
                    up,
                    os,
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(err(e.into())),
                };
                raw.upper = Upper::Dir;
                let (child_low, child_refusal) = match lower_type {
                    Some(FileType::Directory) => match open_lower_dir(low.as_ref(), os) {
                        Ok(fd) => (Some(fd), None),
                        Err(e) => {
                            (None, Some(format!("its directory `{path}` cannot be opened in the workspace ({e})")))
                        }
                    },
                    None => (None, None),
                    Some(t) => {
                        let what = fsx::type_name(t);
                        raw.refused.get_or_insert(format!("replaces a {what} of the workspace with a directory"));
                        (None, Some(format!("the workspace has a {what} at `{path}`, not a directory")))
                    }
                };
                let changed = !matches!(lower_type, Some(FileType::Directory)) || child_refusal.is_some();
                let below = raw.refused.clone().or(child_refusal);
                if changed {
                    out.push(raw);
                }
                walk(out, sub.as_fd(), child_low, &path, below.as_deref(), hidden_lower, pruned.as_deref_mut())?;
                // Not a change, nothing left below: the workspace's directory shows through alike.
                if let Some(n) = pruned.as_deref_mut() {
                    if !changed
                        && below.is_none()
                        && !hidden_lower
                        && !fsx::is_opaque(sub.as_fd())
                        && fsx::get_xattr(sub.as_fd(), REDIRECT).is_none()
                    {
                        match rustix::fs::unlinkat(up, os, AtFlags::REMOVEDIR) {
                            Ok(()) => *n += 1,
                            Err(Errno::NOTEMPTY | Errno::EXIST) => {}
                            Err(e) => return Err(err(e.into())),
                        }
                    }
                }
            }
            FileType::CharacterDevice if fsx::is_char_whiteout(&st) => {
                match deleted(low.as_ref(), os, &path, lower_st.as_ref(), hidden_lower, Upper::Whiteout).map_err(err)? {
                    Some(d) => out.push(d),
                    None => {
                        if let (Some(n), None, false) = (pruned.as_deref_mut(), refused_above, hidden_lower) {
                            remove_unchanged(up, os, &st, n).map_err(err)?;
                        }
                    }
                }
            }
            FileType::RegularFile => {
                let Ok((mut f, fst)) = fsx::open_file(up, os) else { continue };
                if fst.st_ino != st.st_ino || fst.st_dev != st.st_dev {
                    continue; // swapped while we looked; the next scan sees it
                }
                if fst.st_size == 0 && fsx::get_xattr(f.as_fd(), "trusted.overlay.whiteout").is_some() {
                    match deleted(low.as_ref(), os, &path, lower_st.as_ref(), hidden_lower, Upper::Whiteout)
                        .map_err(err)?
                    {
                        Some(d) => out.push(d),
                        None => {
                            if let (Some(n), None, false) = (pruned.as_deref_mut(), refused_above, hidden_lower) {
                                remove_unchanged(up, os, &fst, n).map_err(err)?;
                            }
                        }
                    }
                    continue;
                }
                let (hash, size) = fsx::hash_reader(&mut f, fst.st_size as u64).map_err(err)?;
                raw.upper = Upper::File;
                raw.hash = Some(hash);
                raw.size = Some(size);
                raw.mode = Some(fst.st_mode & 0o7777);
                if fst.st_nlink > 1 {
                    raw.refused.get_or_insert(format!(
                        "hard link ({} links): its content is shared with another file",
                        fst.st_nlink
                    ));
                }
                let special = fst.st_mode & 0o7000;
                if special & 0o4000 != 0 {
                    raw.refused.get_or_insert("setuid bit".to_string());
                } else if special & 0o2000 != 0 {
                    raw.refused.get_or_insert("setgid bit".to_string());
                } else if special & 0o1000 != 0 {
                    raw.refused.get_or_insert("sticky bit on a file".to_string());
                }
                match lower_type {
                    None => {}
                    Some(FileType::RegularFile) => {
                        let l = low.as_ref().map(|l| l.as_fd());
                        let (lf, lst) = fsx::open_file(l.unwrap_or(up), os).map_err(err)?;
                        let mut lf = lf;
                        let (before, _) = fsx::hash_reader(&mut lf, lst.st_size as u64).map_err(err)?;
                        if Some(&before) == raw.hash.as_ref()
                            && lst.st_mode & 0o7777 == fst.st_mode & 0o7777
                            && raw.refused.is_none()
                        {
                            // Copied up unchanged (touch, chown, same-mode chmod). Under an
                            // opaque directory it is all the merged view has: it stays.
                            if let (Some(n), false) = (pruned.as_deref_mut(), hidden_lower) {
                                remove_unchanged(up, os, &fst, n).map_err(err)?;
                            }
                            continue;
                        }
                        raw.before_hash = Some(before);
                    }
                    Some(t) => {
                        raw.refused
                            .get_or_insert(format!("replaces a {} of the workspace with a file", fsx::type_name(t)));
                    }
                }
                out.push(raw);
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(up, os, Vec::new()).map_err(|e| err(e.into()))?;
                let t = target.as_bytes();
                raw.hash = Some(fsx::sha256_hex(t));
                raw.refused.get_or_insert(format!("symlink to {:?}", String::from_utf8_lossy(t)));
                out.push(raw);
            }
            t => {
                raw.refused.get_or_insert(fsx::type_name(t).replace('_', " "));
                out.push(raw);
            }
        }
    }
    // An opaque directory hides every lower entry it does not hold itself.
    if let (true, Some(l)) = (opaque, low.as_ref()) {
        for raw_name in fsx::list(l.as_fd()).map_err(|e| (rel.to_string(), e))? {
            if seen.contains(&raw_name) {
                continue;
            }
            let os = OsStr::from_bytes(&raw_name);
            let path = join(rel, &String::from_utf8_lossy(&raw_name));
            let st = lstat(l.as_fd(), os).map_err(|e| (path.clone(), e))?;
            if let Some(d) =
                deleted(Some(l), os, &path, st.as_ref(), hidden_lower, Upper::Absent).map_err(|e| (path.clone(), e))?
            {
                out.push(d);
            }
        }
    }
    Ok(())
}

fn lstat(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn open_lower_dir(low: Option<&OwnedFd>, name: &OsStr) -> std::io::Result<OwnedFd> {
    let Some(l) = low else { return Err(std::io::Error::other("no lower directory")) };
    Ok(rustix::fs::openat(
        l,
        name,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// A lower entry the agent deleted; `None` for a stale whiteout (nothing below it).
fn deleted(
    low: Option<&OwnedFd>,
    name: &OsStr,
    path: &str,
    lower_st: Option<&Stat>,
    opaque_above: bool,
    upper: Upper,
) -> std::io::Result<Option<Raw>> {
    let (Some(l), Some(lst)) = (low, lower_st) else { return Ok(None) };
    let t = fsx::file_type(lst);
    let mut before_hash = None;
    if t == FileType::RegularFile {
        if let Ok((mut f, fst)) = fsx::open_file(l.as_fd(), name) {
            before_hash = Some(fsx::hash_reader(&mut f, fst.st_size as u64)?.0);
        }
    }
    let refused = match std::str::from_utf8(name.as_bytes()) {
        Ok(_) => None,
        Err(_) => Some("the name is not UTF-8".to_string()),
    };
    Ok(Some(Raw {
        path: path.to_string(),
        kind: ChangeKind::Deleted,
        file_type: fsx::type_name(t),
        size: None,
        hash: None,
        before_hash,
        mode: None,
        refused,
        upper,
        opaque_above,
    }))
}

/// Pairs renames, classifies, names each change.
fn finish(ws: &Workspace, wsi: usize, raws: Vec<Raw>, rules: &FileRules) -> Vec<Found> {
    let workspace = ws.real.to_string_lossy().into_owned();
    // Renames: a deleted file whose content reappears, unchanged, as an added file.
    let mut deleted_by_hash: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut order: Vec<usize> = (0..raws.len()).collect();
    order.sort_by(|&a, &b| raws[a].path.cmp(&raws[b].path));
    for &i in &order {
        let r = &raws[i];
        if r.kind == ChangeKind::Deleted && r.file_type == "file" && r.refused.is_none() {
            if let Some(h) = r.before_hash.as_deref() {
                deleted_by_hash.entry(h).or_default().push(i);
            }
        }
    }
    let mut renamed_from: BTreeMap<usize, usize> = BTreeMap::new();
    let mut consumed = HashSet::new();
    for &i in &order {
        let r = &raws[i];
        if r.kind != ChangeKind::Added || r.upper != Upper::File || r.refused.is_some() || r.size == Some(0) {
            continue;
        }
        let Some(h) = r.hash.as_deref() else { continue };
        if let Some(cands) = deleted_by_hash.get_mut(h) {
            if !cands.is_empty() {
                let d = cands.remove(0);
                renamed_from.insert(i, d);
                consumed.insert(d);
            }
        }
    }
    let mut out = Vec::new();
    for (i, r) in raws.iter().enumerate() {
        if consumed.contains(&i) {
            continue;
        }
        let mut from_upper = None;
        let mut kind = r.kind.clone();
        let mut before_hash = r.before_hash.clone();
        let (class, reason) = if let Some(reason) = &r.refused {
            (FileClass::Refused, reason.clone())
        } else if let Some(&d) = renamed_from.get(&i) {
            let old = &raws[d];
            kind = ChangeKind::Renamed { from: old.path.clone() };
            before_hash = old.before_hash.clone();
            from_upper = Some((old.upper, old.opaque_above));
            let a = rules.classify(&r.path, false);
            let b = rules.classify(&old.path, false);
            if b.0 > a.0 {
                b
            } else {
                a
            }
        } else {
            let new_file = r.kind == ChangeKind::Added && r.upper == Upper::File;
            rules.classify(&r.path, new_file)
        };
        let id = change_id(&ws.id, &r.path, &kind, r.hash.as_deref());
        out.push(Found {
            change: Change {
                id,
                workspace: workspace.clone(),
                path: r.path.clone(),
                kind,
                file_type: r.file_type.to_string(),
                size: r.size,
                hash: r.hash.clone(),
                before_hash,
                mode: r.mode,
                class,
                reason: Some(reason),
            },
            ws: wsi,
            upper: r.upper,
            opaque_above: r.opaque_above,
            from_upper,
        });
    }
    out
}

/// `sha256(workspace_id ‖ 0 ‖ path ‖ 0 ‖ kind ‖ 0 ‖ hash-or-empty)`, first 12 hex digits.
pub(crate) fn change_id(ws_id: &str, path: &str, kind: &ChangeKind, hash: Option<&str>) -> String {
    let mut h = Sha256::new();
    for (i, part) in [ws_id, path, kind.as_str(), hash.unwrap_or("")].iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())[..12].to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    fn put(root: &Path, rel: &str, content: &str, mode: u32) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn paths(ws: &Workspace) -> Vec<String> {
        let rules = FileRules::new(&gvm_policy::Files::default()).unwrap();
        scan(std::slice::from_ref(ws), &rules).unwrap().into_iter().map(|f| f.change.path).collect()
    }

    /// Prune removes exactly what the scan does not list, and the scan is the same after.
    #[test]
    fn prune_removes_only_what_the_scan_does_not_list() {
        let tmp = tempfile::tempdir().unwrap();
        let ws =
            Workspace { id: "w".into(), real: tmp.path().join("real"), upper: tmp.path().join("upper"), owner: None };
        for (rel, real, upper, mode_real, mode_upper) in [
            ("same.txt", "s", "s", 0o644, 0o644),
            ("mode.txt", "m", "m", 0o644, 0o600),
            ("diff.txt", "old", "new", 0o644, 0o644),
            ("suid", "x", "x", 0o4755, 0o4755),
            ("d/same.txt", "s", "s", 0o644, 0o644),
            ("e/same.txt", "s", "s", 0o644, 0o644),
            ("e/diff.txt", "old", "new", 0o644, 0o644),
            ("hl.txt", "h", "h", 0o644, 0o644),
        ] {
            put(&ws.real, rel, real, mode_real);
            put(&ws.upper, rel, upper, mode_upper);
        }
        put(&ws.upper, "new.txt", "n", 0o644);
        std::fs::hard_link(ws.upper.join("hl.txt"), ws.upper.join("hl2.txt")).unwrap();
        // A directory over a real file: refused, and so is what it holds.
        put(&ws.real, "f", "file", 0o644);
        put(&ws.upper, "f/same.txt", "s", 0o644);
        std::fs::create_dir(ws.upper.join("empty-new")).unwrap();

        let before = paths(&ws);
        let removed = prune(std::slice::from_ref(&ws)).unwrap();
        assert_eq!(paths(&ws), before, "prune changed what the scan lists");
        // same.txt, d/same.txt, d, e/same.txt.
        assert_eq!(removed, 4);
        for gone in ["same.txt", "d/same.txt", "d", "e/same.txt"] {
            assert!(!ws.upper.join(gone).exists(), "{gone} not pruned");
            assert!(!before.iter().any(|p| p == gone), "{gone} was listed");
        }
        for kept in [
            "mode.txt",
            "diff.txt",
            "suid",
            "e",
            "e/diff.txt",
            "hl.txt",
            "hl2.txt",
            "new.txt",
            "f/same.txt",
            "empty-new",
        ] {
            assert!(ws.upper.join(kept).exists(), "{kept} pruned");
        }
        assert!(ws.upper.exists(), "never the upper root");
        assert_eq!(prune(std::slice::from_ref(&ws)).unwrap(), 0, "a second prune finds nothing");
    }
}
