//! Review and apply an agent's file changes.
//!
//! Each workspace directory `W` is the lower layer of an overlay mounted in the agent's
//! sandbox; the agent's writes land in an upper dir that gvmd owns. This crate lists
//! those writes as [`Change`]s, classified by the profile's `[files]` globs and by safety
//! rules, shows them as diffs, and applies the approved ones to `W` — per file atomically,
//! with pre-images and an apply journal, so that a crash leaves every real file either
//! entirely old or entirely new and an apply can be rolled back byte for byte. It also
//! keeps checkpoints of the upper layers, and prunes from them what no longer differs
//! from the workspace (so that a stale upper copy does not hide a later real edit).
//!
//! Trusted: gvmd's state directory (the review root), the workspace and upper *roots*
//! given by gvmd. Untrusted: everything under an upper dir (names, types, content, links,
//! bits), and the shape of the workspace under its root (a symlink there is never
//! followed). The caller freezes the agent around apply and rollback; this crate does not.

mod apply;
mod checkpoint;
mod diff;
mod fsx;
mod glob;
mod scan;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use glob::{FileRules, Glob};
pub use gvm_api::review::{
    AppliedEntry, AppliedRecord, ApplyReport, Change, ChangeKind, Checkpoint, FileClass, Refusal, RollbackReport,
};

use scan::Found;
use store::Store;

/// One workspace of the agent: the real directory and the overlay upper dir over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Short stable name, used in change ids and as a directory name in checkpoints.
    pub id: String,
    /// The real directory (the overlay's lower layer).
    pub real: PathBuf,
    /// The overlay's upper dir.
    pub upper: PathBuf,
    /// The uid that must own `real` when gvmd writes into it: set for a directory a
    /// caller other than root chose (an ephemeral run's `--workspace`), so that applying
    /// as root never writes where that caller could not. Checked on the opened
    /// directory (no symlink as its last component), so swapping the path after the run
    /// started does not redirect the apply.
    pub owner: Option<u32>,
}

/// What to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Changes of class `AutoApply` only.
    Auto,
    /// `AutoApply` and `Review` additions (never a modification, deletion or rename:
    /// those need [`Selection::Paths`]); never `Refused` or `Discard`.
    All,
    /// Exactly these paths (explicit approval).
    Paths(Vec<PathSel>),
}

/// A path chosen by the user: relative to its workspace, or the absolute real path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSel {
    pub path: String,
    /// The hash the user reviewed; the change is refused if the upper content differs now.
    pub expected_hash: Option<String>,
}

impl PathSel {
    pub fn new(path: impl Into<String>) -> PathSel {
        PathSel { path: path.into(), expected_hash: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no change at {0}; see `gvmctl changes`")]
    NoChange(String),
    #[error("{path} is a change in several workspaces ({workspaces}); give the absolute path")]
    Ambiguous { path: String, workspaces: String },
    #[error("unknown apply id {0}; see `gvmctl applied`")]
    UnknownApply(String),
    #[error("apply {id} was already rolled back at {at}")]
    AlreadyRolledBack { id: String, at: String },
    #[error("unknown checkpoint {0}; see `gvmctl checkpoints`")]
    UnknownCheckpoint(String),
    #[error("a checkpoint named {0:?} exists already; choose another name")]
    CheckpointNameTaken(String),
    #[error("invalid checkpoint name {0:?}: use letters, digits, `-`, `_` or `.`, at most 64")]
    CheckpointName(String),
    #[error("invalid [files] glob `{glob}`: {reason}; fix the profile")]
    Glob { glob: String, reason: String },
    #[error("invalid workspace {id:?}: {reason}")]
    Workspace { id: String, reason: String },
    #[error("{path} changed since it was reviewed (now {found}); review it again")]
    Changed { path: String, found: String },
    #[error("the agent's overlay is mounted (the agent runs); stop the agent first (gvmctl stop)")]
    Mounted,
    #[error("corrupt review state {path}; move it aside to continue")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// True when the request names something that does not exist or no longer holds
    /// (unknown id, path without a change, content changed since review) or cannot be
    /// done in the agent's current state (its overlay is mounted), rather than a failure
    /// of the store or the file system.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Error::Io { .. } | Error::Corrupt { .. })
    }
}

/// What [`Review::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Upper entries removed: files, whiteouts and directories.
    pub removed: u64,
}

/// The apply journal's file name in the store: present only while an apply runs or
/// after a crash interrupted one (the next [`Review::open`] finishes or undoes it).
pub const JOURNAL: &str = "journal.json";

pub(crate) trait IoCtx<T> {
    fn ctx(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, Error>;
}

impl<T, E: Into<std::io::Error>> IoCtx<T> for Result<T, E> {
    fn ctx(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, Error> {
        self.map_err(|e| Error::Io { action, path: path.as_ref().display().to_string(), source: e.into() })
    }
}

/// The review store of one agent: `<state>/agents/<P>/review`.
#[derive(Debug)]
pub struct Review {
    store: Store,
    workspaces: Vec<Workspace>,
    rules: FileRules,
    mounted: bool,
}

impl Review {
    /// Opens (creating, 0700) the review store and finishes or undoes any apply that a
    /// crash interrupted.
    pub fn open(root: &Path, workspaces: Vec<Workspace>, files: &gvm_policy::Files) -> Result<Review, Error> {
        let rules = FileRules::new(files).map_err(|(glob, reason)| Error::Glob { glob, reason })?;
        let mut ids = std::collections::HashSet::new();
        for ws in &workspaces {
            if fsx::check_name(&ws.id).is_err() || ws.id.chars().any(char::is_control) {
                return Err(Error::Workspace { id: ws.id.clone(), reason: "the id must be a plain file name".into() });
            }
            if !ids.insert(ws.id.clone()) {
                return Err(Error::Workspace { id: ws.id.clone(), reason: "two workspaces have this id".into() });
            }
            if !ws.real.is_absolute() || !ws.upper.is_absolute() {
                return Err(Error::Workspace { id: ws.id.clone(), reason: "paths must be absolute".into() });
            }
        }
        let store = Store::open(root)?;
        let review = Review { store, workspaces, rules, mounted: false };
        let _lock = review.store.lock()?;
        apply::recover(&review)?;
        Ok(review)
    }

    /// Say whether the overlays are mounted in a live (frozen) sandbox. While they are,
    /// an apply leaves the applied entries in the upper dirs: the overlay keeps its
    /// cached dentries on the upper inodes, so removing them under a mounted overlay
    /// makes the agent's later writes to those files land in unlinked inodes and be
    /// lost (see ARCHITECTURE.md). The entries kept match the workspace and are no
    /// longer listed as changes; [`Review::prune`] removes them once no overlay is
    /// mounted. While mounted, the calls that remove from the upper dirs
    /// ([`Review::prune`], [`Review::discard`], [`Review::rollback_to`]) fail with
    /// [`Error::Mounted`]. Default: not mounted (entries are removed).
    pub fn set_overlays_mounted(&mut self, mounted: bool) {
        self.mounted = mounted;
    }

    pub fn workspaces(&self) -> &[Workspace] {
        &self.workspaces
    }

    /// Every change in every upper dir, sorted by (workspace, path).
    pub fn changes(&self) -> Result<Vec<Change>, Error> {
        Ok(self.scan()?.into_iter().map(|f| f.change).collect())
    }

    pub(crate) fn scan(&self) -> Result<Vec<Found>, Error> {
        scan::scan(&self.workspaces, &self.rules)
    }

    /// Unified diff of one change (`rel/path` or `/abs/real/path`), or of every change
    /// that is not refused or discarded.
    pub fn diff(&self, path: Option<&str>) -> Result<String, Error> {
        diff::diff(self, path)
    }

    pub fn apply(&self, sel: &Selection, dry_run: bool) -> Result<ApplyReport, Error> {
        let _lock = self.store.lock()?;
        apply::apply(self, sel, dry_run)
    }

    /// Every apply, newest first.
    pub fn applied(&self) -> Result<Vec<AppliedRecord>, Error> {
        self.store.records()
    }

    pub fn rollback_applied(&self, id: &str, force: bool) -> Result<RollbackReport, Error> {
        let _lock = self.store.lock()?;
        apply::rollback_applied(self, id, force)
    }

    /// Removes changes from the upper dirs (the user said no). Returns what was dropped.
    /// Refused ([`Error::Mounted`]) while the overlays are mounted.
    pub fn discard(&self, paths: &[PathSel]) -> Result<Vec<Change>, Error> {
        self.not_mounted()?;
        let _lock = self.store.lock()?;
        apply::discard(self, paths)
    }

    pub fn checkpoint(&self, name: Option<&str>) -> Result<Checkpoint, Error> {
        let _lock = self.store.lock()?;
        checkpoint::create(self, name)
    }

    /// Every checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        self.store.checkpoints()
    }

    /// `None`: discard every unapplied change. `Some(id or name)`: make the upper dirs
    /// exactly what the checkpoint holds. Refused ([`Error::Mounted`]) while the
    /// overlays are mounted.
    pub fn rollback_to(&self, checkpoint: Option<&str>) -> Result<RollbackReport, Error> {
        self.not_mounted()?;
        let _lock = self.store.lock()?;
        checkpoint::rollback_to(self, checkpoint)
    }

    /// Removes from the upper dirs every entry that no longer differs from the workspace
    /// — what an apply left there while the overlays were mounted, what the agent copied
    /// up without changing — so that it does not hide a later edit of the real file.
    /// Removed: a regular file equal to the real one in content and mode (whatever its
    /// owner), a whiteout with no real entry below it, and a directory the workspace has
    /// too, not opaque, left empty. The scan makes the decision: an entry is removed only
    /// where [`Review::changes`] would not list it, and `changes` is the same after.
    /// Nothing under an opaque directory is removed (the merged view shows only upper
    /// there). Refused ([`Error::Mounted`]) while the overlays are mounted: the agent
    /// must have stopped.
    pub fn prune(&self) -> Result<PruneReport, Error> {
        self.not_mounted()?;
        let _lock = self.store.lock()?;
        Ok(PruneReport { removed: scan::prune(&self.workspaces)? })
    }

    fn not_mounted(&self) -> Result<(), Error> {
        if self.mounted {
            return Err(Error::Mounted);
        }
        Ok(())
    }

    /// Indexes the changes by path, for [`Review::resolve`].
    pub(crate) fn index<'a>(&self, found: &'a [Found]) -> PathIndex<'a> {
        let mut by_path: HashMap<&'a str, Vec<&'a Found>> = HashMap::new();
        for f in found {
            by_path.entry(f.change.path.as_str()).or_default().push(f);
        }
        PathIndex { by_path }
    }

    /// Finds the changes a user's path names: relative to its workspace, or absolute.
    pub(crate) fn resolve<'a>(&self, index: &PathIndex<'a>, path: &str) -> Result<Vec<&'a Found>, Error> {
        let trimmed = path.trim_end_matches('/');
        let hits: Vec<&Found> = if path.starts_with('/') {
            self.workspaces
                .iter()
                .enumerate()
                .filter_map(|(i, ws)| {
                    let root = ws.real.to_string_lossy();
                    let rel = trimmed.strip_prefix(root.trim_end_matches('/'))?.strip_prefix('/')?;
                    Some(index.by_path.get(rel)?.iter().filter(move |f| f.ws == i).copied())
                })
                .flatten()
                .collect()
        } else {
            index.by_path.get(trimmed).cloned().unwrap_or_default()
        };
        match hits.len() {
            0 => Err(Error::NoChange(path.to_string())),
            _ => {
                let mut ws: Vec<String> = hits.iter().map(|f| f.change.workspace.clone()).collect();
                ws.dedup();
                if ws.len() > 1 {
                    Err(Error::Ambiguous { path: path.to_string(), workspaces: ws.join(", ") })
                } else {
                    Ok(hits)
                }
            }
        }
    }
}

pub(crate) struct PathIndex<'a> {
    by_path: HashMap<&'a str, Vec<&'a Found>>,
}
