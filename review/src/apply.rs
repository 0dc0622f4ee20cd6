//! Applying approved changes to the real workspaces, crash-safe, and undoing an apply.
//!
//! Order of an apply: scan; select; plan (missing parent directories, pre-images of
//! every real file about to be replaced or deleted, stored content-addressed); write the
//! journal (`applying`); perform each step atomically (temp file + `renameat`, or
//! `mkdirat`/`unlinkat`); rewrite the journal (`committed`, only the steps done); remove
//! the applied entries from the upper dirs; write the record; delete the journal. A crash
//! before `committed` is undone by [`recover`], one after it is finished.
//!
//! Every real path is reached from the workspace root by `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`; every upper file is opened `O_NOFOLLOW` and re-hashed while
//! it is copied, so what lands is what was reviewed or nothing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use gvm_api::review::{
    AppliedEntry, AppliedRecord, ApplyReport, Change, ChangeKind, FileClass, Refusal, RollbackReport,
};
use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::fsx::{self, Install, InstallError};
use crate::scan::{join_display, Found, Upper};
use crate::store;
use crate::{Error, IoCtx, PathSel, Review, Selection, Workspace};

/// Marker of a directory in [`AppliedEntry::before`] / [`AppliedEntry::after`].
const DIR: &str = "dir";

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    id: String,
    at: String,
    state: State,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Applying,
    Committed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    /// For a file: `before` is the content replaced, and mode/uid/gid what it had (for
    /// a new file: what it is created with).
    entry: AppliedEntry,
    /// Mode of the file written (a modification keeps the real file's owner and mode,
    /// unless the agent changed the mode).
    #[serde(default)]
    write_mode: Option<u32>,
    /// Temporary file name in the target's directory (file writes), recorded before it
    /// is created.
    temp: Option<String>,
    /// What to remove from the upper dir once the apply is committed.
    upper: Option<Cleanup>,
    /// The change this step belongs to (a rename has two steps, skipped together).
    group: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "remove", rename_all = "snake_case")]
enum Cleanup {
    /// The upper copy, if it still holds what was applied.
    File {
        hash: String,
    },
    Whiteout,
    /// The upper directory, if empty and not opaque.
    Dir,
}

fn ws_by_real<'a>(review: &'a Review, real: &str) -> Option<&'a Workspace> {
    review.workspaces.iter().find(|w| w.real.to_string_lossy() == real)
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn io_err(action: &'static str, ws: &str, path: &str, e: impl Into<io::Error>) -> Error {
    Error::Io { action, path: join_display(ws, path), source: e.into() }
}

/// What the selection takes, and what it turns down (with why).
fn select<'a>(review: &Review, found: &'a [Found], sel: &Selection) -> Result<(Vec<&'a Found>, Vec<Refusal>), Error> {
    let refuse = |f: &Found, reason: String| Refusal {
        path: f.change.path.clone(),
        workspace: f.change.workspace.clone(),
        reason,
    };
    let mut take = Vec::new();
    let mut refused = Vec::new();
    match sel {
        Selection::Auto => take.extend(found.iter().filter(|f| f.change.class == FileClass::AutoApply)),
        Selection::All => {
            for f in found {
                match f.change.class {
                    FileClass::Refused => {
                        refused.push(refuse(f, format!("refused: {}", f.change.reason.clone().unwrap_or_default())))
                    }
                    FileClass::Discard => refused
                        .push(refuse(f, format!("discard class ({})", f.change.reason.clone().unwrap_or_default()))),
                    _ if f.change.kind == ChangeKind::Added => take.push(f),
                    _ => refused.push(refuse(
                        f,
                        format!("a {} change needs explicit approval: apply its path", f.change.kind.as_str()),
                    )),
                }
            }
        }
        Selection::Paths(paths) => {
            let mut ids = HashSet::new();
            let index = review.index(found);
            for p in paths {
                for f in review.resolve(&index, &p.path)? {
                    if !ids.insert(f.change.id.clone()) {
                        continue;
                    }
                    match f.change.class {
                        FileClass::Refused => {
                            refused.push(refuse(f, format!("refused: {}", f.change.reason.clone().unwrap_or_default())))
                        }
                        FileClass::Discard => refused.push(refuse(
                            f,
                            format!("discard class ({})", f.change.reason.clone().unwrap_or_default()),
                        )),
                        _ => match &p.expected_hash {
                            Some(want) if f.change.hash.as_ref() != Some(want) => refused.push(refuse(
                                f,
                                format!(
                                    "changed since it was reviewed (reviewed {want}, now {})",
                                    f.change.hash.as_deref().unwrap_or("deleted")
                                ),
                            )),
                            _ => take.push(f),
                        },
                    }
                }
            }
        }
    }
    Ok((take, refused))
}

struct Plan<'a> {
    steps: Vec<Step>,
    applied: Vec<&'a Found>,
    refused: Vec<Refusal>,
}

/// Real file state as the plan needs it.
struct RealFile {
    hash: String,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn upper_opaque_above(upper_root: BorrowedFd<'_>, rel: &str) -> bool {
    let mut prefix = String::new();
    for comp in rel.split('/').take(rel.split('/').count().saturating_sub(1)) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(comp);
        if let Ok(fd) = fsx::open_dir(upper_root, &prefix) {
            if fsx::is_opaque(fd.as_fd()) {
                return true;
            }
        }
    }
    false
}

fn plan<'a>(review: &Review, take: Vec<&'a Found>) -> Result<Plan<'a>, Error> {
    let mut out = Plan { steps: Vec::new(), applied: Vec::new(), refused: Vec::new() };
    let mut dirs: BTreeMap<(usize, String), Step> = BTreeMap::new();
    let mut files: Vec<Step> = Vec::new();
    let mut deletes: Vec<Step> = Vec::new();
    let deleting: HashSet<(usize, String)> = take
        .iter()
        .flat_map(|f| match &f.change.kind {
            ChangeKind::Deleted => Some((f.ws, f.change.path.clone())),
            ChangeKind::Renamed { from } => Some((f.ws, from.clone())),
            _ => None,
        })
        .collect();
    let mut roots: BTreeMap<usize, (OwnedFd, OwnedFd)> = BTreeMap::new();
    for (group, f) in take.into_iter().enumerate() {
        let ws = &review.workspaces[f.ws];
        let wsr = ws.real.to_string_lossy().into_owned();
        if let std::collections::btree_map::Entry::Vacant(slot) = roots.entry(f.ws) {
            let real = open_real(ws).ctx("open the workspace", &ws.real)?;
            let upper = fsx::open_root(&ws.upper).ctx("open the upper dir", &ws.upper)?;
            slot.insert((real, upper));
        }
        let (real, upper) = &roots[&f.ws];
        let refuse = |reason: String| Refusal { path: f.change.path.clone(), workspace: wsr.clone(), reason };
        let c = &f.change;
        // Directories to create first: the missing ancestors (and the path itself for a new dir).
        let dir_target = c.kind == ChangeKind::Added && c.file_type == "dir";
        let new_dirs = match missing_dirs(real.as_fd(), upper.as_fd(), &c.path, dir_target) {
            Ok(d) => d,
            Err(reason) => {
                out.refused.push(refuse(reason));
                continue;
            }
        };
        let mut steps = Vec::new();
        let before = |rel: &str| {
            real_file(review, real.as_fd(), rel).map_err(|e| io_err("store the pre-image of", &wsr, rel, e))
        };
        match &c.kind {
            ChangeKind::Added | ChangeKind::Modified | ChangeKind::Renamed { .. } if c.file_type == "file" => {
                let now = before(&c.path)?;
                let uid_gid_mode = match (&c.kind, &now) {
                    (ChangeKind::Modified, Some(r)) if Some(&r.hash) == c.before_hash.as_ref() => {
                        // The agent's chmod wins over the real mode; copy-up keeps it otherwise.
                        let mode = match c.mode {
                            Some(m) if m & 0o777 != r.mode & 0o777 => m & 0o777,
                            _ => r.mode & 0o777,
                        };
                        (r.uid, r.gid, mode, Some(r.hash.clone()), Some(r.mode))
                    }
                    (ChangeKind::Modified, _) => {
                        out.refused.push(refuse("the workspace file changed since the scan; review it again".into()));
                        continue;
                    }
                    (_, Some(_)) => {
                        out.refused.push(refuse(
                            "a file appeared at this path in the workspace since the scan; review it again".into(),
                        ));
                        continue;
                    }
                    (_, None) => {
                        let (uid, gid) = owner_of_parent(real.as_fd(), &c.path, &new_dirs, &dirs, f.ws);
                        (uid, gid, c.mode.unwrap_or(0o644) & 0o777, None, None)
                    }
                };
                let (uid, gid, mode, before_hash, before_mode) = uid_gid_mode;
                let keep_upper = f.opaque_above;
                steps.push(Step {
                    entry: AppliedEntry {
                        workspace: wsr.clone(),
                        path: c.path.clone(),
                        before: before_hash,
                        after: c.hash.clone(),
                        mode: Some(before_mode.unwrap_or(mode)),
                        uid: Some(uid),
                        gid: Some(gid),
                        file_type: "file".into(),
                    },
                    write_mode: Some(mode),
                    temp: Some(format!("{}{}", fsx::TEMP_PREFIX, fsx::random_hex(8))),
                    upper: (!keep_upper).then(|| Cleanup::File { hash: c.hash.clone().unwrap_or_default() }),
                    group,
                });
                if let ChangeKind::Renamed { from } = &c.kind {
                    let Some(old) = before(from)? else {
                        out.refused.push(refuse(format!("{from} is no longer in the workspace; review again")));
                        continue;
                    };
                    if Some(&old.hash) != c.before_hash.as_ref() {
                        out.refused
                            .push(refuse(format!("{from} changed in the workspace since the scan; review again")));
                        continue;
                    }
                    let cleanup = match f.from_upper {
                        Some((Upper::Whiteout, false)) => Some(Cleanup::Whiteout),
                        _ => None,
                    };
                    deletes.push(Step {
                        entry: AppliedEntry {
                            workspace: wsr.clone(),
                            path: from.clone(),
                            before: Some(old.hash),
                            after: None,
                            mode: Some(old.mode),
                            uid: Some(old.uid),
                            gid: Some(old.gid),
                            file_type: "file".into(),
                        },
                        write_mode: None,
                        temp: None,
                        upper: cleanup,
                        group,
                    });
                }
            }
            ChangeKind::Added if c.file_type == "dir" => {}
            ChangeKind::Deleted if c.file_type == "file" => {
                let Some(old) = before(&c.path)? else {
                    out.refused.push(refuse("already gone from the workspace".into()));
                    continue;
                };
                if Some(&old.hash) != c.before_hash.as_ref() {
                    out.refused.push(refuse("the workspace file changed since the scan; review it again".into()));
                    continue;
                }
                deletes.push(Step {
                    entry: AppliedEntry {
                        workspace: wsr.clone(),
                        path: c.path.clone(),
                        before: Some(old.hash),
                        after: None,
                        mode: Some(old.mode),
                        uid: Some(old.uid),
                        gid: Some(old.gid),
                        file_type: "file".into(),
                    },
                    write_mode: None,
                    temp: None,
                    upper: (f.upper == Upper::Whiteout && !f.opaque_above).then_some(Cleanup::Whiteout),
                    group,
                });
            }
            ChangeKind::Deleted if c.file_type == "dir" => {
                let st = match fsx::open_dir(real.as_fd(), &c.path) {
                    Ok(fd) => fd,
                    Err(e) => {
                        out.refused.push(refuse(format!("cannot open the directory in the workspace: {e}")));
                        continue;
                    }
                };
                let names = fsx::list(st.as_fd()).map_err(|e| io_err("list", &wsr, &c.path, e))?;
                let left = names
                    .iter()
                    .filter(|n| !deleting.contains(&(f.ws, format!("{}/{}", c.path, String::from_utf8_lossy(n)))))
                    .count();
                if left > 0 {
                    out.refused.push(refuse(format!(
                        "the directory still holds {left} entries in the workspace; only an empty directory is removed (delete or apply its files first)"
                    )));
                    continue;
                }
                let meta = rustix::fs::fstat(&st).map_err(|e| io_err("stat", &wsr, &c.path, e))?;
                deletes.push(Step {
                    entry: AppliedEntry {
                        workspace: wsr.clone(),
                        path: c.path.clone(),
                        before: Some(DIR.into()),
                        after: None,
                        mode: Some(meta.st_mode & 0o7777),
                        uid: Some(meta.st_uid),
                        gid: Some(meta.st_gid),
                        file_type: "dir".into(),
                    },
                    write_mode: None,
                    temp: None,
                    upper: (f.upper == Upper::Whiteout && !f.opaque_above).then_some(Cleanup::Whiteout),
                    group,
                });
            }
            _ => {
                out.refused.push(refuse(format!("a {} {} change cannot be applied", c.file_type, c.kind.as_str())));
                continue;
            }
        }
        for (rel, mode) in new_dirs {
            let key = (f.ws, rel.clone());
            if dirs.contains_key(&key) {
                continue;
            }
            let (uid, gid) = owner_of_parent(real.as_fd(), &rel, &[], &dirs, f.ws);
            let opaque = upper_opaque_above(upper.as_fd(), &rel);
            dirs.insert(
                key,
                Step {
                    entry: AppliedEntry {
                        workspace: wsr.clone(),
                        path: rel,
                        before: None,
                        after: Some(DIR.into()),
                        mode: Some(mode),
                        uid: Some(uid),
                        gid: Some(gid),
                        file_type: "dir".into(),
                    },
                    write_mode: None,
                    temp: None,
                    upper: (!opaque).then_some(Cleanup::Dir),
                    group,
                },
            );
        }
        files.append(&mut steps);
        out.applied.push(f);
    }
    if review.mounted {
        for s in dirs.values_mut().chain(files.iter_mut()).chain(deletes.iter_mut()) {
            s.upper = None;
        }
    }
    deletes.sort_by(|a, b| (&b.entry.workspace, &b.entry.path).cmp(&(&a.entry.workspace, &a.entry.path)));
    out.steps.extend(dirs.into_values());
    out.steps.extend(files);
    out.steps.extend(deletes);
    Ok(out)
}

/// Owner for a new entry at `rel`: that of the nearest existing real ancestor (or of
/// the directory this apply creates there).
fn owner_of_parent(
    real: BorrowedFd<'_>,
    rel: &str,
    new_dirs: &[(String, u32)],
    planned: &BTreeMap<(usize, String), Step>,
    ws: usize,
) -> (u32, u32) {
    let mut p = parent_of(rel).to_string();
    loop {
        if let Some(s) = planned.get(&(ws, p.clone())) {
            return (s.entry.uid.unwrap_or(0), s.entry.gid.unwrap_or(0));
        }
        if !new_dirs.iter().any(|(d, _)| *d == p) {
            if let Ok(fd) = fsx::open_dir(real, &p) {
                if let Ok(st) = rustix::fs::fstat(&fd) {
                    return (st.st_uid, st.st_gid);
                }
            }
        }
        if p.is_empty() {
            return (0, 0);
        }
        p = parent_of(&p).to_string();
    }
}

/// The ancestors of `rel` (and `rel` itself if `include_self`) missing from the real
/// workspace, shallowest first, with the mode of the upper dir. Refuses when one is not
/// a directory.
fn missing_dirs(
    real: BorrowedFd<'_>,
    upper: BorrowedFd<'_>,
    rel: &str,
    include_self: bool,
) -> Result<Vec<(String, u32)>, String> {
    let comps: Vec<&str> = rel.split('/').collect();
    let n = if include_self { comps.len() } else { comps.len() - 1 };
    let mut out = Vec::new();
    let mut missing = false;
    for i in 1..=n {
        let prefix = comps[..i].join("/");
        if !missing {
            match fsx::open_dir(real, &prefix) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => missing = true,
                Err(e) => return Err(format!("`{prefix}` is not a plain directory in the workspace ({e})")),
            }
        }
        let mode = fsx::open_dir(upper, &prefix)
            .ok()
            .and_then(|fd| rustix::fs::fstat(&fd).ok())
            .map_or(0o755, |st| st.st_mode & 0o777);
        out.push((prefix, mode));
    }
    Ok(out)
}

/// Stores the real file at `rel` as an object; `None` if there is none.
fn real_file(review: &Review, real: BorrowedFd<'_>, rel: &str) -> io::Result<Option<RealFile>> {
    let (parent, name) = fsx::split(rel)?;
    let dir = match fsx::open_dir(real, parent) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if fsx::lstat_at(dir.as_fd(), name)?.is_none() {
        return Ok(None);
    }
    let (mut f, st) = fsx::open_file(dir.as_fd(), OsStr::new(name))?;
    let hash = review.store.put_object(&mut f)?;
    Ok(Some(RealFile { hash, mode: st.st_mode & 0o7777, uid: st.st_uid, gid: st.st_gid }))
}

pub(crate) fn apply(review: &Review, sel: &Selection, dry_run: bool) -> Result<ApplyReport, Error> {
    let found = review.scan()?;
    let (mut take, mut refused) = select(review, &found, sel)?;
    take.sort_by(|a, b| (&a.change.workspace, &a.change.path).cmp(&(&b.change.workspace, &b.change.path)));
    if dry_run {
        return Ok(ApplyReport {
            id: None,
            dry_run,
            applied: take.iter().map(|f| f.change.clone()).collect(),
            refused,
        });
    }
    let plan = plan(review, take)?;
    refused.extend(plan.refused);
    if plan.steps.is_empty() {
        return Ok(ApplyReport { id: None, dry_run, applied: Vec::new(), refused });
    }
    review.store.sync_objects().ctx("fsync", review.store.objects())?;
    let t = store::now();
    let mut journal =
        Journal { id: store::new_id("a", t), at: store::rfc3339(t), state: State::Applying, steps: plan.steps };
    review.store.write_json(&review.store.journal(), &journal)?;

    let mut done: Vec<bool> = vec![false; journal.steps.len()];
    let mut skipped: BTreeSet<usize> = BTreeSet::new();
    let mut failure = None;
    for (i, step) in journal.steps.iter().enumerate() {
        if skipped.contains(&step.group) {
            continue;
        }
        #[cfg(test)]
        if tests::FAIL.get() == Some(tests::Fail::AfterSteps(i)) {
            return Err(Error::NoChange("simulated crash".into()));
        }
        match perform(review, step) {
            Ok(()) => done[i] = true,
            Err(StepError::Refused(reason)) => {
                skipped.insert(step.group);
                refused.push(Refusal {
                    path: step.entry.path.clone(),
                    workspace: step.entry.workspace.clone(),
                    reason,
                });
            }
            Err(StepError::Io(e)) => {
                failure = Some(io_err("apply", &step.entry.workspace, &step.entry.path, e));
                break;
            }
        }
    }
    if let Some(err) = failure {
        let undone = undo(review, &journal.steps);
        drop_journal(review, &journal.id, undone)?;
        return Err(err);
    }
    // A skipped group keeps none of its steps; the ones of it already done are undone.
    let partial: Vec<Step> = journal
        .steps
        .iter()
        .zip(&done)
        .filter(|(s, d)| **d && skipped.contains(&s.group))
        .map(|(s, _)| s.clone())
        .collect();
    if !undo(review, &partial) {
        tracing::error!(apply = %journal.id, "a refused rename could not be fully undone");
    }
    journal.steps = journal
        .steps
        .into_iter()
        .zip(done)
        .filter(|(s, d)| *d && !skipped.contains(&s.group))
        .map(|(s, _)| s)
        .collect();
    let applied: Vec<Change> =
        plan.applied.iter().enumerate().filter(|(g, _)| !skipped.contains(g)).map(|(_, f)| f.change.clone()).collect();
    if journal.steps.is_empty() {
        let _ = std::fs::remove_file(review.store.journal());
        return Ok(ApplyReport { id: None, dry_run, applied, refused });
    }
    if let Err(e) = sync_parents(review, journal.steps.iter().map(|s| &s.entry)) {
        let undone = undo(review, &journal.steps);
        drop_journal(review, &journal.id, undone)?;
        return Err(Error::Io { action: "fsync the directories of", path: "the applied files".into(), source: e });
    }
    journal.state = State::Committed;
    review.store.write_json(&review.store.journal(), &journal)?;
    #[cfg(test)]
    if tests::FAIL.get() == Some(tests::Fail::AfterCommit) {
        return Err(Error::NoChange("simulated crash".into()));
    }
    let id = journal.id.clone();
    finish(review, journal)?;
    Ok(ApplyReport { id: Some(id), dry_run, applied, refused })
}

enum StepError {
    Refused(String),
    Io(io::Error),
}

impl From<io::Error> for StepError {
    fn from(e: io::Error) -> Self {
        StepError::Io(e)
    }
}

impl From<Errno> for StepError {
    fn from(e: Errno) -> Self {
        StepError::Io(e.into())
    }
}

/// The workspace's real directory, opened to be read (scan, diff) or written (apply,
/// rollback); with an `owner`, the opened directory itself (not a symlink at its path)
/// must belong to that uid — neither a write nor a diff reaches elsewhere.
pub(crate) fn open_real(ws: &Workspace) -> io::Result<OwnedFd> {
    let Some(owner) = ws.owner else { return fsx::open_root(&ws.real) };
    let flags = rustix::fs::OFlags::RDONLY
        | rustix::fs::OFlags::DIRECTORY
        | rustix::fs::OFlags::NOFOLLOW
        | rustix::fs::OFlags::CLOEXEC;
    let fd = rustix::fs::open(&ws.real, flags, Mode::empty()).map_err(|e| match e {
        Errno::NOTDIR | Errno::LOOP => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is no longer a directory (a symlink?): gvmd follows no link at the path of a workspace uid {owner} chose for the run",
                ws.real.display()
            ),
        ),
        e => e.into(),
    })?;
    let uid = rustix::fs::fstat(&fd)?.st_uid;
    if uid != owner {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {uid}, not to uid {owner} who chose it for the run: gvmd reads and writes the run's changes only where that caller could (start the run as root to use this directory)",
                ws.real.display()
            ),
        ));
    }
    Ok(fd)
}

fn roots(review: &Review, real: &str) -> io::Result<(OwnedFd, OwnedFd)> {
    let ws = ws_by_real(review, real)
        .ok_or_else(|| io::Error::other(format!("workspace {real} is no longer configured")))?;
    Ok((open_real(ws)?, fsx::open_root(&ws.upper)?))
}

fn perform(review: &Review, step: &Step) -> Result<(), StepError> {
    let e = &step.entry;
    let (real, upper) = roots(review, &e.workspace)?;
    let (parent, name) = fsx::split(&e.path)?;
    let dir = fsx::open_dir(real.as_fd(), parent)?;
    match (e.file_type.as_str(), &e.after) {
        ("dir", Some(_)) => {
            make_dir(dir.as_fd(), name, e.mode.unwrap_or(0o755), e.uid.unwrap_or(0), e.gid.unwrap_or(0))
        }
        ("dir", None) => match rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(()),
            Err(Errno::NOTEMPTY) => Err(StepError::Refused("the directory is not empty in the workspace".into())),
            Err(e) => Err(e.into()),
        },
        (_, Some(hash)) => {
            let updir = fsx::open_dir(upper.as_fd(), parent)?;
            let (mut src, st) = fsx::open_file(updir.as_fd(), OsStr::new(name))?;
            if st.st_nlink > 1 || st.st_mode & 0o7000 != 0 {
                return Err(StepError::Refused(
                    "the upper file became a hard link or got special bits since the scan".into(),
                ));
            }
            let temp = step.temp.as_deref().ok_or_else(|| io::Error::other("no temp name in the plan"))?;
            let mode = step.write_mode.or(e.mode).unwrap_or(0o644);
            let at = Install { dir: dir.as_fd(), name, temp, mode, uid: e.uid.unwrap_or(0), gid: e.gid.unwrap_or(0) };
            match fsx::install(&at, &mut src, Some(hash)) {
                Ok(_) => Ok(()),
                Err(InstallError::Mismatch { found }) => Err(StepError::Refused(format!(
                    "the upper file changed since the scan (now {found}); review it again"
                ))),
                Err(InstallError::Io(e)) => Err(StepError::Io(e)),
            }
        }
        (_, None) => {
            match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
    }
}

fn make_dir(dir: BorrowedFd<'_>, name: &str, mode: u32, uid: u32, gid: u32) -> Result<(), StepError> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
        Err(Errno::EXIST) => {
            fsx::open_child_dir(dir, name)?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let sub = fsx::open_child_dir(dir, name)?;
    rustix::fs::fchown(&sub, Some(fsx::uid(uid)), Some(fsx::gid(gid)))?;
    rustix::fs::fchmod(&sub, Mode::from_raw_mode(mode & 0o777))?;
    rustix::fs::fsync(&sub)?;
    rustix::fs::fsync(dir)?;
    Ok(())
}

/// fsyncs the directory of each entry, once each: what makes renames and unlinks
/// durable before the journal or the record says they happened.
fn sync_parents<'a>(review: &Review, entries: impl Iterator<Item = &'a AppliedEntry>) -> io::Result<()> {
    let mut seen = BTreeSet::new();
    for e in entries {
        let parent = parent_of(&e.path);
        if !seen.insert((e.workspace.as_str(), parent)) {
            continue;
        }
        let (real, _) = roots(review, &e.workspace)?;
        match fsx::open_dir(real.as_fd(), parent) {
            Ok(d) => rustix::fs::fsync(&d)?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Brings every step's real path back to its `before` state (best effort, logged).
/// Returns whether every step was undone.
fn undo(review: &Review, steps: &[Step]) -> bool {
    let mut ok = true;
    for step in steps.iter().rev() {
        if let Err(e) = undo_step(review, step) {
            tracing::error!(workspace = %step.entry.workspace, path = %step.entry.path, error = %e, "cannot undo an apply step");
            ok = false;
        }
    }
    if let Err(e) = sync_parents(review, steps.iter().map(|s| &s.entry)) {
        tracing::error!(error = %e, "cannot fsync the directories of an undone apply");
        ok = false;
    }
    ok
}

/// Removes the journal once its apply is undone; keeps it aside (for a human, with
/// the pre-images it names) when some step could not be undone.
fn drop_journal(review: &Review, id: &str, undone: bool) -> Result<(), Error> {
    let j = review.store.journal();
    if undone {
        std::fs::remove_file(&j).ctx("remove", &j)
    } else {
        let aside = review.store.root.join(format!("journal.failed-{id}.json"));
        tracing::error!(apply = %id, journal = %aside.display(), "an apply could not be fully undone; its journal is kept");
        std::fs::rename(&j, &aside).ctx("move aside", &j)
    }
}

fn undo_step(review: &Review, step: &Step) -> io::Result<()> {
    let e = &step.entry;
    let (real, _) = roots(review, &e.workspace)?;
    let (parent, name) = fsx::split(&e.path)?;
    let dir = match fsx::open_dir(real.as_fd(), parent) {
        Ok(d) => d,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if let Some(t) = &step.temp {
        for t in [t.clone(), format!("{t}-undo")] {
            match rustix::fs::unlinkat(&dir, t.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    let undo_temp = step
        .temp
        .as_ref()
        .map_or_else(|| format!("{}{}", fsx::TEMP_PREFIX, fsx::random_hex(8)), |t| format!("{t}-undo"));
    restore(review, dir.as_fd(), name, e, &undo_temp)?;
    Ok(())
}

/// Makes `name` in `dir` what `e.before` says; returns whether anything changed.
fn restore(review: &Review, dir: BorrowedFd<'_>, name: &str, e: &AppliedEntry, temp: &str) -> io::Result<bool> {
    let now = current(dir, name)?;
    if now == e.before {
        return Ok(false);
    }
    match (e.file_type.as_str(), &e.before) {
        ("dir", None) => match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::NOTEMPTY) => return Err(io::Error::other("the directory is not empty")),
            Err(err) => return Err(err.into()),
        },
        ("dir", Some(_)) => {
            make_dir(dir, name, e.mode.unwrap_or(0o755), e.uid.unwrap_or(0), e.gid.unwrap_or(0)).map_err(
                |e| match e {
                    StepError::Io(e) => e,
                    StepError::Refused(r) => io::Error::other(r),
                },
            )?;
        }
        (_, None) => match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(err) => return Err(err.into()),
        },
        (_, Some(hash)) => {
            let mut src = review.store.open_object(hash)?;
            let at = Install {
                dir,
                name,
                temp,
                mode: e.mode.unwrap_or(0o644),
                uid: e.uid.unwrap_or(0),
                gid: e.gid.unwrap_or(0),
            };
            match fsx::install(&at, &mut src, Some(hash)) {
                Ok(_) => {}
                Err(InstallError::Io(err)) => return Err(err),
                Err(InstallError::Mismatch { found }) => {
                    return Err(io::Error::other(format!("object {hash} is corrupt (holds {found})")))
                }
            }
            // Mode bits above 0o777 (setgid dirs' files etc.) are restored as they were.
            if let Some(m) = e.mode {
                rustix::fs::chmodat(dir, name, Mode::from_raw_mode(m), AtFlags::empty())?;
            }
        }
    }
    Ok(true)
}

/// What a real path holds, in the terms of [`AppliedEntry`]: a file's hash, `dir`, or
/// `other:<type>`.
fn current(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<String>> {
    let Some(st) = fsx::lstat_at(dir, name)? else { return Ok(None) };
    Ok(Some(match fsx::file_type(&st) {
        FileType::RegularFile => {
            let (mut f, st) = fsx::open_file(dir, OsStr::new(name))?;
            fsx::hash_reader(&mut f, st.st_size as u64)?.0
        }
        FileType::Directory => DIR.to_string(),
        t => format!("other:{}", fsx::type_name(t)),
    }))
}

/// After `committed`: drop the applied entries from the upper dirs, write the record,
/// delete the journal.
fn finish(review: &Review, journal: Journal) -> Result<(), Error> {
    for step in journal.steps.iter().rev() {
        let Some(c) = &step.upper else { continue };
        if let Err(e) = clean_upper(review, step, c) {
            tracing::warn!(workspace = %step.entry.workspace, path = %step.entry.path, error = %e,
                "applied, but its upper entry stays (it now matches the workspace)");
        }
    }
    let record = AppliedRecord {
        id: journal.id.clone(),
        at: journal.at.clone(),
        entries: journal.steps.iter().map(|s| s.entry.clone()).collect(),
        rolled_back_at: None,
    };
    let path = review.store.record_path(&record.id).ok_or_else(|| Error::UnknownApply(record.id.clone()))?;
    review.store.write_json(&path, &record)?;
    std::fs::remove_file(review.store.journal()).ctx("remove", review.store.journal())?;
    Ok(())
}

fn clean_upper(review: &Review, step: &Step, c: &Cleanup) -> io::Result<()> {
    let (_, upper) = roots(review, &step.entry.workspace)?;
    let (parent, name) = fsx::split(&step.entry.path)?;
    let dir = match fsx::open_dir(upper.as_fd(), parent) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(st) = fsx::lstat_at(dir.as_fd(), name)? else { return Ok(()) };
    match c {
        Cleanup::File { hash } => {
            let (mut f, fst) = fsx::open_file(dir.as_fd(), OsStr::new(name))?;
            if fsx::hash_reader(&mut f, fst.st_size as u64)?.0 == *hash {
                rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
            }
        }
        Cleanup::Whiteout => {
            let xattr_form = fsx::file_type(&st) == FileType::RegularFile
                && st.st_size == 0
                && fsx::open_file(dir.as_fd(), OsStr::new(name))
                    .ok()
                    .and_then(|(f, _)| fsx::get_xattr(f.as_fd(), "trusted.overlay.whiteout"))
                    .is_some();
            if fsx::is_char_whiteout(&st) || xattr_form {
                rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
            }
        }
        Cleanup::Dir => {
            let sub = fsx::open_child_dir(dir.as_fd(), name)?;
            if !fsx::is_opaque(sub.as_fd()) {
                match rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOTEMPTY) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TempFile {
    workspace: String,
    dir: String,
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct RollbackJournal {
    id: String,
    temps: Vec<TempFile>,
}

/// Finishes or undoes the apply a crash interrupted; removes the temp files of an
/// interrupted rollback (which is idempotent: the user runs it again).
pub(crate) fn recover(review: &Review) -> Result<(), Error> {
    let rj = review.store.rollback_journal();
    if let Some(journal) = review.store.read_json::<RollbackJournal>(&rj)? {
        tracing::warn!(apply = %journal.id, "a rollback was interrupted; run it again");
        for t in &journal.temps {
            let Ok((real, _)) = roots(review, &t.workspace) else { continue };
            if let Ok(dir) = fsx::open_dir(real.as_fd(), &t.dir) {
                let _ = rustix::fs::unlinkat(&dir, t.name.as_str(), AtFlags::empty());
            }
        }
        std::fs::remove_file(&rj).ctx("remove", &rj)?;
    }
    let Some(journal): Option<Journal> = review.store.read_json(&review.store.journal())? else { return Ok(()) };
    match journal.state {
        State::Applying => {
            tracing::warn!(apply = %journal.id, steps = journal.steps.len(), "undoing an apply that a crash interrupted");
            let undone = undo(review, &journal.steps);
            drop_journal(review, &journal.id, undone)?;
        }
        State::Committed => {
            tracing::warn!(apply = %journal.id, steps = journal.steps.len(), "finishing an apply that a crash interrupted");
            finish(review, journal)?;
        }
    }
    Ok(())
}

pub(crate) fn rollback_applied(review: &Review, id: &str, force: bool) -> Result<RollbackReport, Error> {
    let path = review.store.record_path(id).ok_or_else(|| Error::UnknownApply(id.to_string()))?;
    let Some(mut record): Option<AppliedRecord> = review.store.read_json(&path)? else {
        return Err(Error::UnknownApply(id.to_string()));
    };
    if let Some(at) = &record.rolled_back_at {
        return Err(Error::AlreadyRolledBack { id: id.to_string(), at: at.clone() });
    }
    let mut report = RollbackReport { restored: Vec::new(), removed: Vec::new(), refused: Vec::new() };
    let temps: Vec<TempFile> = record
        .entries
        .iter()
        .map(|e| TempFile {
            workspace: e.workspace.clone(),
            dir: parent_of(&e.path).to_string(),
            name: format!("{}{}", fsx::TEMP_PREFIX, fsx::random_hex(8)),
        })
        .collect();
    review
        .store
        .write_json(&review.store.rollback_journal(), &RollbackJournal { id: id.to_string(), temps: temps.clone() })?;
    for (e, temp) in record.entries.iter().zip(&temps).rev() {
        let shown = join_display(&e.workspace, &e.path);
        let refuse = |reason: String| Refusal { path: e.path.clone(), workspace: e.workspace.clone(), reason };
        let result = (|| -> io::Result<Option<String>> {
            let (real, _) = roots(review, &e.workspace)?;
            let (parent, name) = fsx::split(&e.path)?;
            let dir = match fsx::open_dir(real.as_fd(), parent) {
                Ok(d) => d,
                Err(err) if err.kind() == io::ErrorKind::NotFound && e.before.is_none() => return Ok(None),
                Err(err) => return Err(err),
            };
            let now = current(dir.as_fd(), name)?;
            if now != e.after && now != e.before && !force {
                return Ok(Some(format!(
                    "changed since the apply (now {}); roll back with force to overwrite",
                    now.as_deref().unwrap_or("absent")
                )));
            }
            restore(review, dir.as_fd(), name, e, &temp.name)?;
            Ok(None)
        })();
        match result {
            Ok(None) if e.before.is_none() => report.removed.push(shown),
            Ok(None) => report.restored.push(shown),
            Ok(Some(reason)) => report.refused.push(refuse(reason)),
            Err(err) => report.refused.push(refuse(format!("cannot restore: {err}"))),
        }
    }
    sync_parents(review, record.entries.iter()).ctx("fsync the directories of", &path)?;
    std::fs::remove_file(review.store.rollback_journal()).ctx("remove", review.store.rollback_journal())?;
    if report.refused.is_empty() {
        record.rolled_back_at = Some(store::rfc3339(store::now()));
        review.store.write_json(&path, &record)?;
    }
    Ok(report)
}

pub(crate) fn discard(review: &Review, paths: &[PathSel]) -> Result<Vec<Change>, Error> {
    let found = review.scan()?;
    let mut picked: Vec<&Found> = Vec::new();
    let mut ids = HashSet::new();
    let index = review.index(&found);
    for p in paths {
        for f in review.resolve(&index, &p.path)? {
            if let Some(want) = &p.expected_hash {
                if f.change.hash.as_ref() != Some(want) {
                    return Err(Error::Changed {
                        path: p.path.clone(),
                        found: f.change.hash.clone().unwrap_or_else(|| "deleted".into()),
                    });
                }
            }
            if ids.insert(f.change.id.clone()) {
                picked.push(f);
            }
        }
    }
    let mut out = Vec::new();
    for f in picked {
        let ws = &review.workspaces[f.ws];
        let wsr = ws.real.to_string_lossy().into_owned();
        let upper = fsx::open_root(&ws.upper).ctx("open the upper dir", &ws.upper)?;
        let real = open_real(ws).ctx("open the workspace", &ws.real)?;
        // (path, copy the workspace's entry back into upper): under an opaque directory
        // the upper dir alone is what the agent sees, so undoing a change there means
        // putting the workspace's version back, not removing the upper entry.
        let mut targets = vec![(
            f.change.path.clone(),
            f.upper == Upper::Absent || (f.opaque_above && f.change.kind == ChangeKind::Modified),
        )];
        if let (ChangeKind::Renamed { from }, Some((u, _))) = (&f.change.kind, f.from_upper) {
            targets.push((from.clone(), u == Upper::Absent));
        }
        for (rel, restore_lower) in targets {
            let err = |e: io::Error| io_err("discard", &wsr, &rel, e);
            let (parent, name) = fsx::split(&rel).map_err(err)?;
            let dir = fsx::open_dir(upper.as_fd(), parent).map_err(err)?;
            fsx::remove_tree_at(dir.as_fd(), name.as_bytes()).map_err(err)?;
            if restore_lower {
                let low = fsx::open_dir(real.as_fd(), parent).map_err(err)?;
                crate::checkpoint::copy_entry(low.as_fd(), dir.as_fd(), OsStr::new(name), &mut Default::default())
                    .map_err(err)?;
            }
        }
        out.push(f.change.clone());
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;
    use std::path::Path;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Fail {
        /// Stop (as if killed) before performing step N.
        AfterSteps(usize),
        /// Stop right after the journal says `committed`.
        AfterCommit,
    }

    thread_local! {
        pub(crate) static FAIL: Cell<Option<Fail>> = const { Cell::new(None) };
    }

    fn setup(dir: &Path) -> Workspace {
        let ws = Workspace { id: "w".into(), real: dir.join("real"), upper: dir.join("upper"), owner: None };
        for i in 0..5 {
            std::fs::create_dir_all(ws.real.join("d")).unwrap();
            std::fs::create_dir_all(ws.upper.join("d")).unwrap();
            std::fs::write(ws.real.join(format!("d/m{i}")), format!("old {i}")).unwrap();
            std::fs::write(ws.upper.join(format!("d/m{i}")), format!("new {i}")).unwrap();
        }
        for i in 0..3 {
            std::fs::create_dir_all(ws.upper.join("n")).unwrap();
            std::fs::write(ws.upper.join(format!("n/a{i}")), format!("added {i}")).unwrap();
        }
        ws
    }

    fn all(review: &Review) -> Selection {
        Selection::Paths(review.changes().unwrap().into_iter().map(|c| PathSel::new(c.path)).collect())
    }

    fn temps(dir: &Path) -> usize {
        let mut n = 0;
        for d in ["", "d", "n"] {
            if let Ok(rd) = std::fs::read_dir(dir.join(d)) {
                n += rd
                    .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(fsx::TEMP_PREFIX))
                    .count();
            }
        }
        n
    }

    /// A workspace with an `owner` (a directory a caller other than root chose) is read
    /// and written only while the directory at its path still belongs to that uid and
    /// is not a symlink: swapping it after the run started redirects no diff or apply.
    #[test]
    fn an_owned_workspace_is_written_only_while_its_owner_holds_it() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let mut ws = setup(tmp.path());
        let me = std::fs::metadata(&ws.real).unwrap().uid();
        let files = gvm_policy::Files::default();

        ws.owner = Some(me.wrapping_add(1));
        let review = Review::open(&tmp.path().join("s1"), vec![ws.clone()], &files).unwrap();
        let err = review.changes().unwrap_err();
        let err = format!("{err}: {}", std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default());
        assert!(err.contains(&format!("not to uid {}", me.wrapping_add(1))), "{err}");
        assert_eq!(std::fs::read_to_string(ws.real.join("d/m0")).unwrap(), "old 0", "nothing written");

        // The path swapped for a symlink to a directory the owner does own: refused too.
        let moved = tmp.path().join("moved");
        std::fs::rename(&ws.real, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &ws.real).unwrap();
        ws.owner = Some(me);
        let review = Review::open(&tmp.path().join("s2"), vec![ws.clone()], &files).unwrap();
        assert!(review.changes().is_err(), "a symlink at the workspace's path: not even read");
        assert_eq!(std::fs::read_to_string(moved.join("d/m0")).unwrap(), "old 0");

        std::fs::remove_file(&ws.real).unwrap();
        std::fs::rename(&moved, &ws.real).unwrap();
        let review = Review::open(&tmp.path().join("s3"), vec![ws.clone()], &files).unwrap();
        review.apply(&all(&review), false).unwrap();
        assert_eq!(std::fs::read_to_string(ws.real.join("d/m0")).unwrap(), "new 0", "its owner's: applied");
    }

    #[test]
    fn recovery_undoes_a_half_done_apply() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = setup(tmp.path());
        let state = tmp.path().join("state");
        let files = gvm_policy::Files::default();
        let review = Review::open(&state, vec![ws.clone()], &files).unwrap();
        assert_eq!(review.changes().unwrap().len(), 9);
        FAIL.set(Some(Fail::AfterSteps(5)));
        assert!(review.apply(&all(&review), false).is_err());
        FAIL.set(None);
        // Steps 0..5: the new directory and four files are in place.
        assert!(ws.real.join("n").exists());
        assert!(state.join("journal.json").exists());
        let review = Review::open(&state, vec![ws.clone()], &files).unwrap();
        assert!(!state.join("journal.json").exists());
        for i in 0..5 {
            assert_eq!(std::fs::read_to_string(ws.real.join(format!("d/m{i}"))).unwrap(), format!("old {i}"));
        }
        assert!(!ws.real.join("n").exists(), "the directory the apply made is gone");
        assert_eq!(temps(&ws.real), 0);
        assert_eq!(review.changes().unwrap().len(), 9, "everything is still to review");
        assert!(review.applied().unwrap().is_empty());
    }

    #[test]
    fn recovery_finishes_a_committed_apply() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = setup(tmp.path());
        let state = tmp.path().join("state");
        let files = gvm_policy::Files::default();
        let review = Review::open(&state, vec![ws.clone()], &files).unwrap();
        FAIL.set(Some(Fail::AfterCommit));
        assert!(review.apply(&all(&review), false).is_err());
        FAIL.set(None);
        assert!(ws.upper.join("d/m0").exists(), "upper not cleaned yet");
        let review = Review::open(&state, vec![ws.clone()], &files).unwrap();
        assert!(!ws.upper.join("d/m0").exists() && !ws.upper.join("n").exists());
        assert_eq!(review.changes().unwrap(), vec![]);
        let records = review.applied().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].entries.len(), 9);
        for i in 0..5 {
            assert_eq!(std::fs::read_to_string(ws.real.join(format!("d/m{i}"))).unwrap(), format!("new {i}"));
        }
        // And it rolls back byte for byte.
        let rb = review.rollback_applied(&records[0].id, false).unwrap();
        assert_eq!((rb.restored.len(), rb.removed.len(), rb.refused.len()), (5, 4, 0), "{rb:?}");
        for i in 0..5 {
            assert_eq!(std::fs::read_to_string(ws.real.join(format!("d/m{i}"))).unwrap(), format!("old {i}"));
        }
        assert!(!ws.real.join("n").exists());
        assert!(!state.join("rollback.json").exists());
    }
}
