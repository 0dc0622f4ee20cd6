//! Wire types of the approval queue: everything waiting for a human — held requests
//! (`kind = "request"`) and pending file changes (`kind = "file"`) — in one list with
//! ids that are never reused (gvmd keeps them in SQLite).

use serde::{Deserialize, Serialize};

/// Paths of the approval routes.
pub mod approval_paths {
    /// `GET`: the pending items, oldest first.
    pub const APPROVALS: &str = "/v1/approvals";
    /// `POST /v1/approvals/{id}/approve` with an [`AnswerRequest`](super::AnswerRequest).
    pub fn approve(id: u64) -> String {
        format!("/v1/approvals/{id}/approve")
    }
    /// `POST /v1/approvals/{id}/deny` with an [`AnswerRequest`](super::AnswerRequest).
    pub fn deny(id: u64) -> String {
        format!("/v1/approvals/{id}/deny")
    }
}

/// One item waiting for a human.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approval {
    /// Never reused, also across gvmd restarts.
    pub id: u64,
    pub profile: String,
    /// `request` or `file`.
    pub kind: String,
    /// When it started waiting, RFC 3339 UTC.
    pub since: String,
    pub age_secs: u64,
    /// RFC 3339 UTC; a held request is denied when nobody answers by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    // kind = "request"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// What is known of the body when it was held: content type and length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The rule that held it (`None`: the profile's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    // kind = "file"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `added`, `modified`, `deleted` or `renamed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Size of the agent's version of the file, in bytes (none for a deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_size: Option<u64>,
    /// `pending`, `approved`, `denied`, `expired` or `gone`.
    #[serde(default)]
    pub state: String,
    /// Who answered (user name), when it was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// The exact command that approves it: `gvmctl approve 17`.
    pub command: String,
}

impl Approval {
    /// One line saying what waits: `POST https://api.example/v1/x (1.2 kB json)` or
    /// `modified reports/q3.csv (4.1 kB)`.
    pub fn what(&self) -> String {
        if self.kind == "file" {
            let mut s =
                format!("{} {}", self.change.as_deref().unwrap_or("changed"), self.path.as_deref().unwrap_or("?"));
            if let Some(n) = self.diff_size {
                s.push_str(&format!(" ({})", human_bytes(n)));
            }
            s
        } else {
            let mut s = format!("{} {}", self.method.as_deref().unwrap_or("?"), self.url.as_deref().unwrap_or("?"));
            if let Some(b) = &self.body {
                s.push_str(&format!(" ({b})"));
            }
            s
        }
    }
}

/// `1.2 kB`, `830 B`, `3.4 MB`.
pub fn human_bytes(n: u64) -> String {
    match n {
        0..=999 => format!("{n} B"),
        1_000..=999_999 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.1} GB", n as f64 / 1e9),
    }
}

/// `GET /v1/approvals`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalsResponse {
    /// Oldest first.
    pub approvals: Vec<Approval>,
}

/// Body of `POST /v1/approvals/{id}/approve|deny`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnswerRequest {
    /// Also write a rule so that the same request is answered this way next time.
    #[serde(default)]
    pub always: bool,
}

/// Answer of `POST /v1/approvals/{id}/approve|deny`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnswerResponse {
    pub id: u64,
    /// `request` or `file`.
    #[serde(default)]
    pub kind: String,
    /// `approved` or `denied`, or what the file review did.
    pub outcome: String,
    /// With `always`: the rule written, as TOML, and the file it went into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_added: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_file: Option<String>,
}

/// The webhook of `[notify]` in gvmd.toml, as `gvmctl status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotifyStatus {
    /// The webhook's URL without its query (which may hold a token).
    pub webhook: String,
    pub sent: u64,
    /// Deliveries that failed after every retry.
    pub failures: u64,
    /// Notices dropped because the queue was full.
    pub dropped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
}
