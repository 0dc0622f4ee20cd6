//! Checkpoints of the upper dirs: `<root>/checkpoints/<id>/<workspace-id>/` holds a copy
//! of each upper tree with every type the overlay uses (files, directories, symlinks,
//! whiteouts, the opaque mark) and its mode, owner and mtime. Rolling back makes an
//! upper dir exactly a checkpoint's tree again; nothing is followed on either side.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use gvm_api::review::{Checkpoint, RollbackReport};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};

use crate::scan::join_display;
use crate::store::{self, valid_id};
use crate::{fsx, Error, IoCtx, Review};

const OPAQUE: &str = "trusted.overlay.opaque";
const WHITEOUT: &str = "trusted.overlay.whiteout";

#[derive(Default)]
pub(crate) struct Count {
    files: u64,
    bytes: u64,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !n.starts_with('.')
}

pub(crate) fn create(review: &Review, name: Option<&str>) -> Result<Checkpoint, Error> {
    if let Some(n) = name {
        if !valid_name(n) {
            return Err(Error::CheckpointName(n.to_string()));
        }
        if review.store.checkpoints()?.iter().any(|c| c.name.as_deref() == Some(n) || c.id == n) {
            return Err(Error::CheckpointNameTaken(n.to_string()));
        }
    }
    let t = store::now();
    let id = store::new_id("c", t);
    let base = review.store.checkpoints_dir();
    let tmp = base.join(format!(".tmp-{id}"));
    std::fs::create_dir(&tmp).ctx("create", &tmp)?;
    let mut count = Count::default();
    let result = (|| {
        let tmpfd = fsx::open_root(&tmp).ctx("open", &tmp)?;
        for ws in &review.workspaces {
            let up = fsx::open_root(&ws.upper).ctx("open the upper dir", &ws.upper)?;
            rustix::fs::mkdirat(&tmpfd, ws.id.as_str(), Mode::from_raw_mode(0o700)).ctx("create", tmp.join(&ws.id))?;
            let dst = fsx::open_child_dir(tmpfd.as_fd(), &ws.id).ctx("open", tmp.join(&ws.id))?;
            copy_tree(up.as_fd(), dst.as_fd(), &mut count).ctx("copy", &ws.upper)?;
            rustix::fs::fsync(&dst).ctx("fsync", tmp.join(&ws.id))?;
        }
        let dest = base.join(&id);
        std::fs::rename(&tmp, &dest).ctx("rename", &dest)?;
        let cp = Checkpoint {
            id: id.clone(),
            name: name.map(str::to_string),
            at: store::rfc3339(t),
            files: count.files,
            bytes: count.bytes,
        };
        review.store.write_json(&base.join(format!("{id}.json")), &cp)?;
        Ok(cp)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn lstat(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<std::os::fd::OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn copy_tree(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, count: &mut Count) -> std::io::Result<()> {
    for raw in fsx::list(src)? {
        copy_entry(src, dst, OsStr::from_bytes(&raw), count)?;
    }
    Ok(())
}

/// Copies entry `name` of `src` into `dst` (which must not have it).
pub(crate) fn copy_entry(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    name: &OsStr,
    count: &mut Count,
) -> std::io::Result<()> {
    let Some(st) = lstat(src, name)? else { return Ok(()) };
    let perm = Mode::from_raw_mode(st.st_mode & 0o7777);
    match fsx::file_type(&st) {
        FileType::Directory => {
            rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700))?;
            let s = open_dir(src, name)?;
            let d = open_dir(dst, name)?;
            copy_tree(s.as_fd(), d.as_fd(), count)?;
            if fsx::is_opaque(s.as_fd()) {
                rustix::fs::fsetxattr(&d, OPAQUE, b"y", rustix::fs::XattrFlags::empty())?;
            }
        }
        FileType::RegularFile => {
            let (mut f, _) = fsx::open_file(src, name)?;
            let out = rustix::fs::openat(
                dst,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let mut out = File::from(out);
            count.bytes += std::io::copy(&mut f, &mut out)?;
            if let Some(v) = fsx::get_xattr(f.as_fd(), WHITEOUT) {
                rustix::fs::fsetxattr(&out, WHITEOUT, &v, rustix::fs::XattrFlags::empty())?;
            }
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(src, name, Vec::new())?;
            rustix::fs::symlinkat(target.as_c_str(), dst, name)?;
        }
        t => rustix::fs::mknodat(dst, name, t, perm, st.st_rdev)?,
    }
    count.files += 1;
    set_meta(dst, name, &st)
}

/// Owner, mode (not for symlinks) and times of `st` onto `name` in `dir`.
fn set_meta(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> std::io::Result<()> {
    rustix::fs::chownat(dir, name, Some(fsx::uid(st.st_uid)), Some(fsx::gid(st.st_gid)), AtFlags::SYMLINK_NOFOLLOW)?;
    if fsx::file_type(st) != FileType::Symlink {
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(st.st_mode & 0o7777), AtFlags::empty())?;
    }
    let times = Timestamps {
        last_access: Timespec { tv_sec: st.st_atime as _, tv_nsec: st.st_atime_nsec as _ },
        last_modification: Timespec { tv_sec: st.st_mtime as _, tv_nsec: st.st_mtime_nsec as _ },
    };
    rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

pub(crate) fn rollback_to(review: &Review, checkpoint: Option<&str>) -> Result<RollbackReport, Error> {
    let mut report = RollbackReport { restored: Vec::new(), removed: Vec::new(), refused: Vec::new() };
    let Some(wanted) = checkpoint else {
        for ws in &review.workspaces {
            let up = fsx::open_root(&ws.upper).ctx("open the upper dir", &ws.upper)?;
            for raw in fsx::list(up.as_fd()).ctx("list", &ws.upper)? {
                fsx::remove_tree_at(up.as_fd(), &raw).ctx("empty", &ws.upper)?;
                report.removed.push(join_display(&ws.real.to_string_lossy(), &String::from_utf8_lossy(&raw)));
            }
            rustix::fs::fsync(&up).ctx("fsync", &ws.upper)?;
        }
        return Ok(report);
    };
    let cps = review.store.checkpoints()?;
    let cp = cps
        .iter()
        .find(|c| c.id == wanted)
        .or_else(|| cps.iter().find(|c| c.name.as_deref() == Some(wanted)))
        .filter(|c| valid_id(&c.id))
        .ok_or_else(|| Error::UnknownCheckpoint(wanted.to_string()))?;
    let base = review.store.checkpoints_dir().join(&cp.id);
    let basefd = fsx::open_root(&base).ctx("open", &base)?;
    for ws in &review.workspaces {
        let up = fsx::open_root(&ws.upper).ctx("open the upper dir", &ws.upper)?;
        let wsr = ws.real.to_string_lossy().into_owned();
        match fsx::open_child_dir(basefd.as_fd(), &ws.id) {
            Ok(src) => sync_tree(src.as_fd(), up.as_fd(), &wsr, "", &mut report).ctx("roll back", &ws.upper)?,
            // A workspace added after the checkpoint: it held nothing then.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                for raw in fsx::list(up.as_fd()).ctx("list", &ws.upper)? {
                    fsx::remove_tree_at(up.as_fd(), &raw).ctx("empty", &ws.upper)?;
                    report.removed.push(join_display(&wsr, &String::from_utf8_lossy(&raw)));
                }
            }
            Err(e) => return Err(e).ctx("open", base.join(&ws.id)),
        }
        rustix::fs::fsync(&up).ctx("fsync", &ws.upper)?;
    }
    Ok(report)
}

/// Makes `dst` hold exactly what `src` holds.
fn sync_tree(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    ws: &str,
    rel: &str,
    report: &mut RollbackReport,
) -> std::io::Result<()> {
    let want: std::collections::HashSet<Vec<u8>> = fsx::list(src)?.into_iter().collect();
    let join = |n: &[u8]| {
        let n = String::from_utf8_lossy(n);
        join_display(ws, &if rel.is_empty() { n.into_owned() } else { format!("{rel}/{n}") })
    };
    for raw in fsx::list(dst)? {
        if !want.contains(&raw) {
            fsx::remove_tree_at(dst, &raw)?;
            report.removed.push(join(&raw));
        }
    }
    let mut names: Vec<Vec<u8>> = want.into_iter().collect();
    names.sort();
    for raw in names {
        let name = OsStr::from_bytes(&raw);
        let Some(s) = lstat(src, name)? else { continue };
        let d = lstat(dst, name)?;
        let same = match &d {
            Some(d) if fsx::file_type(d) == fsx::file_type(&s) => same_content(src, dst, name, &s, d)?,
            _ => false,
        };
        if same && fsx::file_type(&s) == FileType::Directory {
            let sd = open_dir(src, name)?;
            let dd = open_dir(dst, name)?;
            let sub = {
                let n = String::from_utf8_lossy(&raw);
                if rel.is_empty() {
                    n.into_owned()
                } else {
                    format!("{rel}/{n}")
                }
            };
            sync_tree(sd.as_fd(), dd.as_fd(), ws, &sub, report)?;
            if fsx::is_opaque(sd.as_fd()) {
                rustix::fs::fsetxattr(&dd, OPAQUE, b"y", rustix::fs::XattrFlags::empty())?;
            } else if fsx::is_opaque(dd.as_fd()) {
                rustix::fs::fremovexattr(&dd, OPAQUE)?;
            }
            set_meta(dst, name, &s)?;
        } else if same {
            set_meta(dst, name, &s)?;
        } else {
            if d.is_some() {
                fsx::remove_tree_at(dst, &raw)?;
            }
            copy_entry(src, dst, name, &mut Count::default())?;
            report.restored.push(join(&raw));
        }
    }
    Ok(())
}

fn same_content(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, name: &OsStr, s: &Stat, d: &Stat) -> std::io::Result<bool> {
    Ok(match fsx::file_type(s) {
        FileType::Directory => true,
        FileType::RegularFile => {
            if s.st_size != d.st_size {
                return Ok(false);
            }
            let (mut a, _) = fsx::open_file(src, name)?;
            let (mut b, _) = fsx::open_file(dst, name)?;
            let wa = fsx::get_xattr(a.as_fd(), WHITEOUT);
            let wb = fsx::get_xattr(b.as_fd(), WHITEOUT);
            wa == wb && fsx::hash_reader(&mut a, s.st_size as u64)?.0 == fsx::hash_reader(&mut b, d.st_size as u64)?.0
        }
        FileType::Symlink => {
            rustix::fs::readlinkat(src, name, Vec::new())? == rustix::fs::readlinkat(dst, name, Vec::new())?
        }
        _ => s.st_rdev == d.st_rdev,
    })
}
