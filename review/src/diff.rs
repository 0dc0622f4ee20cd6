//! Text of a change for a human: a unified diff for text files, a summary otherwise.
//! Names come from the agent; any control character in them is escaped so that a name
//! cannot forge diff lines.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::AsFd;

use gvm_api::review::{ChangeKind, FileClass};

use crate::scan::{join_display, Found};
use crate::{fsx, Error, Review};

/// Files larger than this are summarised, not diffed.
const MAX_TEXT: u64 = 4 << 20;

pub(crate) fn diff(review: &Review, path: Option<&str>) -> Result<String, Error> {
    let found = review.scan()?;
    let picked: Vec<&Found> = match path {
        Some(p) => review.resolve(&review.index(&found), p)?,
        None => found.iter().filter(|f| matches!(f.change.class, FileClass::AutoApply | FileClass::Review)).collect(),
    };
    let mut out = String::new();
    for f in picked {
        one(review, f, &mut out)?;
    }
    Ok(out)
}

/// A path as printed: as is, or quoted with escapes if it holds a control character.
pub(crate) fn shown(p: &str) -> String {
    if p.chars().any(char::is_control) {
        format!("{p:?}")
    } else {
        p.to_string()
    }
}

fn read(fd: std::io::Result<std::os::fd::OwnedFd>, rel: &str) -> Result<Option<Vec<u8>>, std::io::Error> {
    let fd = fd?;
    let (parent, name) = fsx::split(rel)?;
    let dir = fsx::open_dir(fd.as_fd(), parent)?;
    let (f, st) = fsx::open_file(dir.as_fd(), OsStr::new(name))?;
    if st.st_size as u64 > MAX_TEXT {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(st.st_size as usize);
    f.take(MAX_TEXT + 1).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

fn text(b: &Option<Vec<u8>>) -> Option<&str> {
    let b = b.as_ref()?;
    if b.contains(&0) {
        return None;
    }
    std::str::from_utf8(b).ok()
}

fn one(review: &Review, f: &Found, out: &mut String) -> Result<(), Error> {
    let ws = &review.workspaces[f.ws];
    let c = &f.change;
    let p = shown(&c.path);
    let io = |e: std::io::Error| Error::Io { action: "read", path: join_display(&c.workspace, &c.path), source: e };
    let _ = writeln!(out, "diff --gvm {} {p} ({}, {})", c.kind.as_str(), c.file_type, class_name(c.class));
    if let Some(r) = &c.reason {
        if c.class == FileClass::Refused {
            let _ = writeln!(out, "refused: {}", shown(r));
            return Ok(());
        }
    }
    if c.file_type != "file" {
        let _ = writeln!(out, "{} {} {p}", c.kind.as_str(), c.file_type);
        return Ok(());
    }
    let (old_path, old) = match &c.kind {
        ChangeKind::Added => (None, Some(Vec::new())),
        ChangeKind::Modified | ChangeKind::Deleted => {
            (Some(c.path.as_str()), read(crate::apply::open_real(ws), &c.path).map_err(io)?)
        }
        ChangeKind::Renamed { from } => (Some(from.as_str()), read(crate::apply::open_real(ws), from).map_err(io)?),
    };
    let new = match &c.kind {
        ChangeKind::Deleted => Some(Vec::new()),
        _ => read(fsx::open_root(&ws.upper), &c.path).map_err(io)?,
    };
    let a = old_path.map_or("/dev/null".to_string(), |o| format!("a/{}", shown(o)));
    let b = if c.kind == ChangeKind::Deleted { "/dev/null".to_string() } else { format!("b/{p}") };
    if let ChangeKind::Renamed { from } = &c.kind {
        let _ = writeln!(out, "rename from {}\nrename to {p}", shown(from));
        return Ok(());
    }
    match (text(&old), text(&new)) {
        (Some(o), Some(n)) => {
            let d = similar::TextDiff::from_lines(o, n);
            let _ = write!(out, "{}", d.unified_diff().context_radius(3).header(&a, &b));
            if !o.is_empty() && !o.ends_with('\n') || !n.is_empty() && !n.ends_with('\n') {
                let _ = writeln!(out);
            }
        }
        _ => {
            let size_a = old.as_ref().map_or("?".to_string(), |v| v.len().to_string());
            let size_b = c.size.map_or("?".to_string(), |s| s.to_string());
            let _ = writeln!(
                out,
                "Binary files differ: size {size_a} -> {size_b}, {} -> {}",
                c.before_hash.as_deref().unwrap_or("none"),
                c.hash.as_deref().unwrap_or("none")
            );
        }
    }
    Ok(())
}

fn class_name(c: FileClass) -> &'static str {
    match c {
        FileClass::AutoApply => "auto_apply",
        FileClass::Review => "review",
        FileClass::Discard => "discard",
        FileClass::Refused => "refused",
    }
}
