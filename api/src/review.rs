//! Wire types of the file-change review: what `gvmctl changes|diff|apply|applied|rollback`
//! exchange with gvmd. The behaviour lives in the `gvm-review` crate; this module only
//! names the shapes.
//!
//! Paths are workspace-relative, `/`-separated, without a leading `/`. They come from
//! names the agent chose: they may hold any byte but `/` and NUL (a name that is not
//! UTF-8 is carried lossily, and such a change is refused), newlines included, so
//! printers must escape them.

use serde::{Deserialize, Serialize};

/// One change the agent made to a workspace, as seen in its overlay's upper layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Change {
    /// Stable short id: the first 12 hex digits of
    /// `sha256(workspace_id ‖ 0 ‖ path ‖ 0 ‖ kind ‖ 0 ‖ hash-or-empty)`.
    pub id: String,
    /// The real workspace directory, e.g. `/home/u/invoices`.
    pub workspace: String,
    /// Relative to the workspace.
    pub path: String,
    /// `"kind": "added" | "modified" | "deleted" | "renamed"` (with `"from"`).
    #[serde(flatten)]
    pub kind: ChangeKind,
    /// `file`, `dir`, `symlink`, `fifo`, `socket`, `char_device`, `block_device`.
    pub file_type: String,
    /// Size of the new content (regular files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `sha256:<hex>` of the new content (files) or of the link target (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// `sha256:<hex>` of the real file this change replaces or deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_hash: Option<String>,
    /// Mode bits of the new entry (`st_mode & 0o7777`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    pub class: FileClass,
    /// Why the change is refused, or which glob classified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What happened to a path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    /// The content of `from` (now deleted) appears unchanged at the change's path.
    Renamed {
        from: String,
    },
}

impl ChangeKind {
    /// The name used on the wire and in change ids.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Modified => "modified",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Renamed { .. } => "renamed",
        }
    }
}

/// How the profile's `[files]` globs (and the safety rules before them) classify a change.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum FileClass {
    /// Applied by `gvmctl apply P --auto` (new regular files only).
    AutoApply,
    /// Waits for a human.
    Review,
    /// Never applied; `gvmctl discard` drops it.
    Discard,
    /// Never applied: planted or unsafe (symlink, hard link, device, setuid, ...).
    Refused,
}

/// Answer of an apply (or of its dry run).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyReport {
    /// The apply id, `None` for a dry run or when nothing was applied.
    pub id: Option<String>,
    pub dry_run: bool,
    pub applied: Vec<Change>,
    pub refused: Vec<Refusal>,
}

/// A change that was asked for and not applied (or an entry not rolled back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refusal {
    pub path: String,
    pub workspace: String,
    pub reason: String,
}

/// What one apply did to the real workspaces; kept so that it can be rolled back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedRecord {
    pub id: String,
    /// RFC 3339.
    pub at: String,
    pub entries: Vec<AppliedEntry>,
    /// Set once `gvmctl applied rollback` undid this apply (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_at: Option<String>,
}

/// One real path an apply wrote, created or removed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedEntry {
    pub workspace: String,
    pub path: String,
    /// Files: `sha256:<hex>` of the content before, `None` = did not exist.
    /// Directories: `Some("dir")` = existed.
    pub before: Option<String>,
    /// Files: `sha256:<hex>` of the content written, `None` = deleted.
    /// Directories: `Some("dir")` = exists after.
    pub after: Option<String>,
    /// Mode and owner of what was there before (to restore it); for a created path,
    /// what it was created with.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `file` or `dir`.
    #[serde(default = "file_type_file")]
    pub file_type: String,
}

fn file_type_file() -> String {
    "file".to_string()
}

/// A snapshot of an agent's upper layers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: String,
    pub name: Option<String>,
    /// RFC 3339.
    pub at: String,
    /// Entries (files, directories, links, whiteouts) held.
    pub files: u64,
    /// Bytes of regular-file content held.
    pub bytes: u64,
}

/// Answer of a rollback (of an apply, or of the upper layers to a checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RollbackReport {
    pub restored: Vec<String>,
    pub removed: Vec<String>,
    pub refused: Vec<Refusal>,
}

impl ChangeKind {
    /// `added`, `modified`, `deleted`, `renamed from notes.txt`: for people.
    pub fn describe(&self) -> String {
        match self {
            ChangeKind::Renamed { from } => format!("renamed from {from}"),
            other => other.as_str().to_string(),
        }
    }
}

impl FileClass {
    /// The name used on the wire and in `gvmctl changes`.
    pub fn label(self) -> &'static str {
        match self {
            FileClass::AutoApply => "auto_apply",
            FileClass::Review => "review",
            FileClass::Discard => "discard",
            FileClass::Refused => "refused",
        }
    }
}

/// `GET /v1/agents/{profile}/changes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangesResponse {
    pub profile: String,
    pub changes: Vec<Change>,
}

/// Query of `GET /v1/agents/{profile}/diff`: one path (relative to its workspace or
/// absolute), or every change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffQuery {
    #[serde(default)]
    pub path: Option<String>,
}

/// `GET /v1/agents/{profile}/diff`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffResponse {
    pub diff: String,
}

/// A path asked for, with the hash it had when reviewed: the apply refuses the path
/// if its content differs now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PathRequest {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// `POST /v1/agents/{profile}/apply` (and `/discard`, which takes `paths` only).
/// No paths and not `all`: the new files matching `[files] auto_apply`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyRequest {
    #[serde(default)]
    pub paths: Vec<PathRequest>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/agents/{profile}/rollback`: `applied` undoes an apply in the real
/// workspace; otherwise the agent's unapplied changes go back to checkpoint `to`
/// (every one of them is discarded when `to` is absent).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RollbackRequest {
    #[serde(default)]
    pub applied: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/agents/{profile}/checkpoint`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckpointRequest {
    #[serde(default)]
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_a_flat_tag() {
        let c = Change {
            id: "0123456789ab".into(),
            workspace: "/w".into(),
            path: "b\nc".into(),
            kind: ChangeKind::Renamed { from: "a".into() },
            file_type: "file".into(),
            size: Some(3),
            hash: None,
            before_hash: None,
            mode: Some(0o644),
            class: FileClass::AutoApply,
            reason: None,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert!(j.contains(r#""kind":"renamed","from":"a""#), "{j}");
        assert!(j.contains(r#""class":"auto_apply""#), "{j}");
        assert!(j.contains(r#""path":"b\nc""#), "{j}");
        assert_eq!(serde_json::from_str::<Change>(&j).unwrap(), c);
    }
}
