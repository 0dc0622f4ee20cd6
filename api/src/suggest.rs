//! Wire types of `gvmctl suggest`: the profile change that would allow what an agent
//! was seen doing (in watch mode, or denied by the default), computed by gvmd from the
//! audit log. `GET /v1/agents/{profile}/suggest` is the dry run;
//! `POST /v1/agents/{profile}/suggest` with `{"apply": true}` writes it.

use serde::{Deserialize, Serialize};

/// Which events to learn from (at most one of `since` and `run`; neither: everything
/// since the profile's last `profile_loaded` event).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SuggestRequest {
    /// RFC 3339: only events at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The seq of a `run_started` event of the profile: that run's events only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
    /// Write the change (POST only).
    #[serde(default)]
    pub apply: bool,
    /// With `apply`: the profile file's `sha256:<hex>` the reviewed dry run was computed
    /// from; anything else on disk refuses the apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_sha256: Option<String>,
}

/// One rule the suggestion adds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SuggestedRule {
    pub host: String,
    pub port: u16,
    /// Empty for a tunnel (CONNECT) rule: host and port only.
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Requests of the window this rule covers (folded repeats counted).
    pub requests: u64,
    /// One line: why the rule looks like this.
    pub reason: String,
    /// Up to 3 paths it was generalised from.
    #[serde(default)]
    pub examples: Vec<String>,
}

/// A host seen but not turned into a rule: a human decides.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flagged {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub requests: u64,
    /// `dns_only`, `ip_address`, `large_upload_once`, `top_level_domain`,
    /// `decided_by_rule`, `ssrf_refused`, `unwritable_path`, `ineffective`.
    pub kind: String,
    pub reason: String,
}

/// A `[files]` glob that would have classed the agent's new files (comment only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileSuggestion {
    /// `auto_apply` (the only list suggested).
    pub list: String,
    pub glob: String,
    pub files: u64,
    pub reason: String,
}

/// The window the suggestion was computed over.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Window {
    /// Human text: `since profile_loaded event 12 (2026-12-07T08:00:00Z)`, `run 40`, ...
    pub described: String,
    /// Events with seq > this were read.
    pub after_seq: u64,
    /// ... up to this one (inclusive), when the window is closed (a finished run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_seq: Option<u64>,
}

/// The answer of both the dry run and the apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SuggestResponse {
    pub profile: String,
    pub file: String,
    /// `sha256:<hex>` of the profile file the suggestion was computed from.
    pub base_sha256: String,
    pub window: Window,
    /// Network decisions read (http, connect, dns; folded repeats counted).
    pub decisions: u64,
    /// Requests (http, connect) the profile already allows: nothing to add for them.
    pub already_allowed: u64,
    pub rules: Vec<SuggestedRule>,
    pub flagged: Vec<Flagged>,
    pub files: Vec<FileSuggestion>,
    /// Unified diff of the profile file (empty when nothing would change).
    pub diff: String,
    /// True when the change was written (and the profiles reloaded).
    pub applied: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_sha256: Option<String>,
}
