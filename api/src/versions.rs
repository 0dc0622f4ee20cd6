//! Policy versions: every profile version that came into force, its history, diffs
//! between versions, rollback, a dry-run reload and decisions explained under the
//! version they were made under.

use serde::{Deserialize, Serialize};

/// Paths of the versions API.
pub mod paths {
    /// `GET /v1/policy/{profile}/history`
    pub fn history(profile: &str) -> String {
        format!("/v1/policy/{profile}/history")
    }
    /// `GET /v1/policy/{profile}/diff?from=V1&to=V2`
    pub fn diff(profile: &str) -> String {
        format!("/v1/policy/{profile}/diff")
    }
    /// `POST /v1/policy/{profile}/rollback`
    pub fn rollback(profile: &str) -> String {
        format!("/v1/policy/{profile}/rollback")
    }
    /// `POST /v1/reload/dry-run`
    pub const RELOAD_DRY_RUN: &str = "/v1/reload/dry-run";
    /// `GET /v1/audit/events/{seq}/explain`
    pub fn explain_event(seq: u64) -> String {
        format!("/v1/audit/events/{seq}/explain")
    }
}

/// How a version came into force.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// gvmd started.
    Start,
    /// `gvmctl reload` or SIGHUP.
    Reload,
    /// `gvmctl suggest --apply` wrote rules.
    Suggest,
    /// `gvmctl approve --always` wrote a rule.
    Always,
    /// `gvmctl policy rollback`.
    Rollback,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Start => "start",
            Origin::Reload => "reload",
            Origin::Always => "--always",
            Origin::Suggest => "suggest",
            Origin::Rollback => "rollback",
        })
    }
}

/// One line of a profile's index: a version came into force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionEntry {
    /// SHA-256 of the file bytes, lower-case hex.
    pub version: String,
    /// When it came into force, RFC 3339 UTC.
    pub at: String,
    pub how: Origin,
    /// Who asked (the control socket's peer), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Number of network rules.
    pub rules: usize,
}

/// `GET /v1/policy/{profile}/history`: oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryResponse {
    pub profile: String,
    pub entries: Vec<HistoryEntry>,
    /// The version in force now, if the profile is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_force: Option<String>,
}

/// A [`VersionEntry`] with the end of its time in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryEntry {
    #[serde(flatten)]
    pub entry: VersionEntry,
    /// When the next version replaced it; `None` for the last entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// Query of `GET /v1/policy/{profile}/diff`. Versions are hashes or prefixes of at
/// least 6 hex digits; `from` defaults to the version in force, `to` to the file on
/// disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// The unified diff between two versions (empty when they are equal).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffResponse {
    pub from: String,
    /// The full hash, or `file` for the file on disk.
    pub to: String,
    pub diff: String,
}

/// Body of `POST /v1/policy/{profile}/rollback`; `to` defaults to the version in
/// force before the current one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RollbackRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// The version a rollback put back in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RollbackResponse {
    pub profile: String,
    pub from: String,
    pub to: String,
    pub file: String,
    pub backup: String,
}

/// `POST /v1/reload/dry-run`: what a reload would change, applying nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DryRunResponse {
    pub changes: Vec<DryRunChange>,
    /// Files a reload would refuse.
    pub refused: Vec<crate::ProfileRefusal>,
}

/// One profile a reload would change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DryRunChange {
    pub profile: String,
    /// `added`, `removed` or `changed`.
    pub change: String,
    /// The version in force now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The version the file on disk would bring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub diff: String,
}

/// `GET /v1/audit/events/{seq}/explain`: a decision re-made under the version it was
/// made under, and under the version in force now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventExplainResponse {
    pub seq: u64,
    pub profile: String,
    pub version: String,
    /// The request as recorded: `METHOD URL`.
    pub request: String,
    /// The decision recorded in the event.
    pub recorded: String,
    /// The same request decided again under `version`.
    pub then: crate::ExplainResponse,
    /// The version in force today, and its decision (absent when the profile is not in
    /// force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<crate::ExplainResponse>,
}
