//! Ephemeral runs: a fresh sandbox instance of a profile per task (`gvmctl run
//! --ephemeral`, `POST /v1/runs`), with its own throwaway home and overlay upper dirs,
//! sharing the profile's user, network namespace, gateway, rules and audit log. Its file
//! changes are kept for review under the run's id until discarded. The JSON contract is
//! documented in `docs/api.md`.

use serde::{Deserialize, Serialize};

use crate::review::Change;
use crate::{RunSummary, WorkspaceMode};

/// Paths of the runs API.
pub mod paths {
    /// `POST` starts a run and answers when it ended; `GET` lists active and kept runs.
    pub const RUNS: &str = "/v1/runs";
    /// `GET /v1/runs/{id}`
    pub fn run(id: &str) -> String {
        format!("/v1/runs/{id}")
    }
}

/// Largest `stdout`/`stderr` a `POST /v1/runs` answer carries, each; the rest is read
/// and dropped (`stdout_truncated`).
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// Default `timeout_secs` of `POST /v1/runs` (a program that sandboxes each tool call
/// must not leave one running for ever when it forgets to ask for a limit).
pub const DEFAULT_API_TIMEOUT_SECS: u64 = 600;

/// An extra workspace of one run (`--workspace DIR:overlay|ro`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunWorkspace {
    /// Absolute path of a directory on the host; it appears at the same path inside.
    pub path: String,
    /// `overlay` (writes kept for review under the run) or `ro`. `rw` is refused: an
    /// ephemeral run writes nothing the run's discard cannot take back.
    pub mode: WorkspaceMode,
}

impl RunWorkspace {
    /// Parses `DIR`, `DIR:overlay` or `DIR:ro` (the command line's spelling).
    pub fn parse(s: &str) -> Result<RunWorkspace, String> {
        let (path, mode) = match s.rsplit_once(':') {
            Some((p, "overlay")) => (p, WorkspaceMode::Overlay),
            Some((p, "ro")) => (p, WorkspaceMode::Ro),
            Some((_, other)) if !other.contains('/') => {
                return Err(format!(
                    "workspace mode {other:?} in {s:?}: use DIR:overlay or DIR:ro (an ephemeral run never writes a real directory)"
                ))
            }
            _ => (s, WorkspaceMode::Overlay),
        };
        if !path.starts_with('/') {
            return Err(format!("workspace {path:?} must be an absolute path"));
        }
        Ok(RunWorkspace { path: path.to_string(), mode })
    }
}

/// `POST /v1/runs`: run `argv` in a fresh instance of `profile` and answer when it ends.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateRun {
    pub profile: String,
    /// Program and arguments (the program is searched in the sandbox's PATH).
    pub argv: Vec<String>,
    /// Killed (the whole instance) after this many seconds; default
    /// [`DEFAULT_API_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Added to the profile's workspaces (or changing the mode of one of them).
    #[serde(default)]
    pub workspaces: Vec<RunWorkspace>,
    /// Added to the profile's `[agent] env` (gvm's own variables still win: HOME, the
    /// proxy and CA variables).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Written to the command's stdin (then closed); default: empty.
    #[serde(default)]
    pub stdin: Option<String>,
}

/// The answer of `POST /v1/runs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunResult {
    pub run_id: String,
    pub profile: String,
    /// The command's exit code; 128 + N when killed by signal N (137 after a timeout).
    pub exit_code: i32,
    pub timed_out: bool,
    /// Lossy UTF-8, at most [`MAX_OUTPUT`] bytes each.
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// From the request to the command's exec, and to the end of the teardown.
    pub start_ms: u64,
    pub total_ms: u64,
    /// Requests, DNS answers, files (as `gvmctl run` prints them).
    pub summary: RunSummary,
    /// The run's file changes still waiting (not auto-applied). Non-empty means the run
    /// is kept: `GET /v1/runs/{id}/changes`, `POST /v1/runs/{id}/apply|discard`.
    pub changes: Vec<Change>,
    pub kept: bool,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    /// Ended; its changes wait for review.
    Kept,
    /// gvmd stopped while it ran; its changes (if any) wait for review.
    Interrupted,
}

/// One run, as `gvmctl runs` lists it (also `<state>/runs/<id>/run.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunRecord {
    pub id: String,
    pub profile: String,
    pub argv: Vec<String>,
    /// RFC 3339 UTC.
    pub started_at: String,
    #[serde(default)]
    pub ended_at: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub timed_out: bool,
    /// The run's workspaces: real directory, mode and overlay id.
    pub workspaces: Vec<crate::PlannedWorkspace>,
    pub state: RunState,
    /// Changes waiting (counted when the run ended).
    #[serde(default)]
    pub changes: u64,
    /// Workspace id → the uid that must own its directory when changes are applied:
    /// the run's own overlay workspaces named by a caller other than root.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub owned_by: std::collections::BTreeMap<String, u32>,
}

/// `GET /v1/runs`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunsResponse {
    pub runs: Vec<RunRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_spelling() {
        let w = RunWorkspace::parse("/srv/data:ro").unwrap();
        assert_eq!((w.path.as_str(), w.mode), ("/srv/data", WorkspaceMode::Ro));
        assert_eq!(RunWorkspace::parse("/srv/x").unwrap().mode, WorkspaceMode::Overlay);
        assert_eq!(RunWorkspace::parse("/srv/x:overlay").unwrap().mode, WorkspaceMode::Overlay);
        assert!(RunWorkspace::parse("/srv/x:rw").unwrap_err().contains("DIR:overlay or DIR:ro"));
        assert!(RunWorkspace::parse("rel:ro").unwrap_err().contains("absolute"));
    }
}
