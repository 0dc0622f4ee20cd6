//! The control API's wire contract: every request and response body exchanged between
//! gvmd and gvmctl over `<runtime-dir>/gvmd.sock`, defined once and used by both sides.
//!
//! Versioning: every path lives under [`V1`]. A field may be added to a response
//! (clients ignore unknown fields); removing or re-typing one needs `/v2/`.
//! This crate owns no behaviour and performs no I/O.

use serde::{Deserialize, Serialize};

pub mod approvals;
#[cfg(feature = "client")]
pub mod client;
pub use approvals::*;
pub mod review;
pub mod runs;
pub mod suggest;
pub mod versions;
pub mod vocab;
pub use vocab::*;

/// Prefix of every path of this version of the API.
pub const V1: &str = "/v1";

/// Paths of the API, relative to the socket.
pub mod paths {
    pub const STATUS: &str = "/v1/status";
    pub const AUDIT_EVENTS: &str = "/v1/audit/events";
    pub const AUDIT_VERIFY: &str = "/v1/audit/verify";
    pub const RELOAD: &str = "/v1/reload";
    pub const POLICY_EXPLAIN: &str = "/v1/policy/explain";
    /// `POST /v1/agents/{profile}/prepare`
    pub fn prepare(profile: &str) -> String {
        format!("/v1/agents/{profile}/prepare")
    }
    /// `POST /v1/agents/{profile}/{start|stop|restart}`
    pub fn agent_action(profile: &str, action: super::AgentVerb) -> String {
        format!("/v1/agents/{profile}/{action}")
    }
    /// `POST /v1/agents/{profile}/teardown`
    pub fn teardown(profile: &str) -> String {
        format!("/v1/agents/{profile}/teardown")
    }
}

/// Name of the control socket inside the runtime directory.
pub const SOCKET_NAME: &str = "gvmd.sock";
/// Default runtime directory of gvmd.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/gvm";
/// Group whose members may use the control socket besides root.
pub const ADMIN_GROUP: &str = "gvm-admin";

/// Body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong, in one sentence.
    pub error: String,
    /// What to do about it, when there is something to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusResponse {
    pub version: String,
    pub pid: u32,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub uptime_secs: u64,
    pub config_dir: String,
    pub state_dir: String,
    pub runtime_dir: String,
    /// Profiles in force, sorted by name.
    pub profiles: Vec<ProfileStatus>,
    /// Profile files that were refused at the last (re)load, sorted by file.
    pub refused: Vec<ProfileRefusal>,
    pub audit: AuditStatus,
    /// Agents gvmd knows of (profiles with an `[agent] command`, and any that ran).
    #[serde(default)]
    pub agents: Vec<AgentStatus>,
    /// `systemd` (agents are gvm-agent@P units) or `gvmd` (foreground mode: gvmd
    /// supervises the launchers itself).
    #[serde(default)]
    pub supervisor: String,
    /// The `[notify]` webhook, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyStatus>,
}

/// One agent, as `gvmctl status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentStatus {
    pub profile: String,
    pub state: AgentState,
    pub main_pid: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub restarts: u32,
    /// How the agent's process last ended (`exit 1`, `signal SIGKILL`); None while it
    /// never ended. With `restarts`, what a user needs to see an agent crash at start.
    #[serde(default)]
    pub last_exit: Option<String>,
    pub uptime_secs: Option<u64>,
    /// Requests since the agent started.
    pub allowed: u64,
    pub denied: u64,
    pub held: u64,
    /// `deny GET http://x/y`, the newest decision of this agent.
    pub last_decision: Option<String>,
    /// The profile's `[agent]` section changed since the agent started (command,
    /// workspaces, limits...): network rules apply at once, these only after a restart.
    pub restart_required: bool,
    /// The profile's risk tier (`[agent] tier`, `L0`..`L5`); None without one.
    #[serde(default)]
    pub tier: Option<String>,
}

/// `POST /v1/agents/{profile}/start|stop|restart`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentAction {
    pub profile: String,
    pub action: AgentVerb,
    /// The agent's state afterwards.
    pub state: AgentState,
}

/// One profile in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProfileStatus {
    pub name: String,
    /// The file it was loaded from.
    pub file: String,
    pub mode: Mode,
    /// Number of network rules.
    pub rules: usize,
    /// When this version was loaded, RFC 3339 UTC.
    pub loaded_at: String,
    /// True when the file on disk was refused at the last reload and this older
    /// version stays in force.
    #[serde(default)]
    pub stale: bool,
    /// Connections gvmd lets this profile hold open at once: its `[limits]
    /// connections`, or less when that is more than its share of gvmd's descriptors.
    #[serde(default)]
    pub connections_cap: usize,
    /// Set while the profile hits its `[limits]` or floods the audit log with
    /// repeated refusals (and for 5 minutes after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noisy: Option<Noisy>,
    /// Set while `gvmctl watch P on` holds the profile in watch mode (`mode` then says
    /// `watch` whatever the file says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchState>,
    /// Held requests of this profile waiting for a human.
    #[serde(default)]
    pub pending_requests: u64,
    /// File changes of this profile waiting for review.
    #[serde(default)]
    pub pending_files: u64,
    /// SHA-256 of the version in force (`gvmctl policy history`).
    #[serde(default)]
    pub version: String,
    /// The file on disk differs from the version in force (edited, not reloaded).
    #[serde(default)]
    pub drift: bool,
    /// Spend against each budget (`[budget]`, then the rules' `budget`) in its
    /// current period.
    #[serde(default)]
    pub budgets: Vec<BudgetStatus>,
    /// The profile's risk tier (`[agent] tier`, `L0`..`L5`); None without one.
    #[serde(default)]
    pub tier: Option<String>,
}

/// One budget of a profile and what its current period has spent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BudgetStatus {
    /// `profile` or `network.rule[i] (file:line)`.
    pub budget: String,
    /// `minute`, `hour`, `day` or `month` (calendar periods, UTC).
    pub per: String,
    /// `deny` or `hold`.
    pub on_exhausted: String,
    /// The request limit, if the budget has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(default)]
    pub requests_spent: u64,
    /// The money limit, if the budget has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub money: Option<f64>,
    #[serde(default)]
    pub money_spent: f64,
    /// When the period ends and spend starts again from zero, RFC 3339 UTC.
    pub resets_at: String,
}

/// `POST /v1/agents/{profile}/watch`: switch a profile's network decisions to watch
/// mode (allowed and recorded as what enforce mode would do) or back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WatchRequest {
    pub on: bool,
    /// Ends by itself after this many seconds (`--for`); none: until switched off.
    #[serde(default)]
    pub for_secs: Option<u64>,
}

/// A profile's mode after `gvmctl watch`, and in `gvmctl status` while switched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WatchState {
    pub profile: String,
    /// How the gateway decides now.
    pub mode: Mode,
    /// What the profile file says.
    pub file_mode: Mode,
    /// When the switch was made, by whom, and when it ends (RFC 3339 UTC).
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
}

/// Why a profile shows as noisy in `gvmctl status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Noisy {
    /// When this noisy stretch began, RFC 3339 UTC.
    pub since: String,
    /// Repeats of recorded refusals folded into counting events since then.
    pub folded: u64,
    /// Requests, queries and connections refused by each limit since then, by the
    /// `[limits]` field's name (`decisions`, `dns_queries`, `held_requests`, `connections`).
    pub refused: std::collections::BTreeMap<String, u64>,
}

/// A profile file gvmd refused, with where and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProfileRefusal {
    pub file: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    /// Dotted path of the offending field, e.g. `network.rule[2].action`.
    pub field: Option<String>,
    pub message: String,
    pub fix: Option<String>,
}

impl std::fmt::Display for ProfileRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "`{field}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " — {fix}")?;
        }
        Ok(())
    }
}

/// Summary of the audit store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditStatus {
    pub db_path: String,
    /// Sequence number of the newest event (0 when empty).
    pub last_seq: u64,
    pub checkpoints: u64,
    /// Last event covered by a signed checkpoint (0 when none).
    pub last_checkpoint_seq: u64,
}

/// Query of `GET /v1/audit/events`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Only events at or after this time, RFC 3339 (e.g. `2026-11-23T10:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only events with a sequence number greater than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// At most this many events (the newest ones); gvmd caps it at 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One audit event as stored and hashed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEvent {
    pub seq: u64,
    /// RFC 3339 UTC with nanoseconds.
    pub time: String,
    pub profile: Option<String>,
    pub kind: String,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub details: serde_json::Value,
    /// Hex SHA-256.
    pub prev_hash: String,
    /// Hex SHA-256.
    pub hash: String,
}

/// `GET /v1/audit/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventsResponse {
    /// Oldest first.
    pub events: Vec<AuditEvent>,
}

/// Why a chain failed verification.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VerifyProblemKind {
    /// The stored hash is not SHA-256(prev_hash ‖ event): the event was altered.
    HashMismatch,
    /// `prev_hash` is not the previous event's hash: events were swapped or replaced.
    BrokenLink,
    /// A sequence number is missing: events were deleted.
    Gap,
    /// A checkpoint's signature or Merkle root does not verify.
    BadSignature,
    /// Events a signed checkpoint or head covered are gone from the end of the log.
    Truncated,
    /// The database cannot be read as an audit chain at all.
    Unreadable,
}

impl std::fmt::Display for VerifyProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::HashMismatch => "hash mismatch",
            Self::BrokenLink => "broken link",
            Self::Gap => "gap",
            Self::BadSignature => "bad signature",
            Self::Truncated => "truncated",
            Self::Unreadable => "unreadable",
        })
    }
}

/// The first problem verification found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyProblem {
    /// The first bad sequence number.
    pub seq: u64,
    pub kind: VerifyProblemKind,
    /// One sentence a human can act on.
    pub detail: String,
}

/// `POST /v1/audit/verify`, and the result of offline verification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<VerifyProblem>,
}

/// `POST /v1/reload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadResponse {
    /// Names of the profiles in force after the reload.
    pub loaded: Vec<String>,
    /// Files refused by this reload (the last good version, if any, stays in force).
    pub refused: Vec<ProfileRefusal>,
}

/// A request the gateway holds until a human answers (listed, with its durable id, by
/// `GET /v1/approvals`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeldRequest {
    pub id: u64,
    pub profile: String,
    pub method: String,
    /// `scheme://host[:port]/path` as the gateway understood it.
    pub url: String,
    /// The rule that held it (`None`: the profile's default is `hold`).
    pub rule: Option<String>,
    /// RFC 3339 UTC.
    pub since: String,
    /// RFC 3339 UTC; nobody answering by then denies it.
    pub expires_at: String,
}

/// `POST /v1/policy/explain`: how the profile in force would decide a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExplainRequest {
    pub profile: String,
    pub method: String,
    /// `http://` or `https://` URL.
    pub url: String,
}

/// One rule that names the request's host, and whether it matched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsideredRule {
    /// `network.rule[2] (/etc/gvm/profiles/p.toml:12)`.
    pub rule: String,
    pub action: String,
    pub host: String,
    /// `matched`, or why not.
    pub outcome: String,
}

/// The answer of `POST /v1/policy/explain`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExplainResponse {
    /// What the gateway would do: `allow`, `deny` or `hold` (`intercept` for a CONNECT
    /// whose requests are decided one by one).
    pub decision: Decision,
    /// What the rules say (differs from `decision` in watch mode).
    pub policy_decision: Decision,
    pub mode: Mode,
    /// The deciding rule; `None` means the profile's `[network] default`.
    pub rule: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub reason: String,
    pub considered: Vec<ConsideredRule>,
}

/// First bytes of a `gvmctl run` session on the control socket. The rest of the line is
/// a [`RunRequest`] in JSON; the same `sendmsg` carries the caller's stdin, stdout and
/// stderr as SCM_RIGHTS. Afterwards gvmd writes [`RunMessage`] lines and the client may
/// write [`RunSignal`] lines.
pub const RUN_MAGIC: &str = "GVM-RUN/1 ";

/// What `gvmctl run` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunRequest {
    pub profile: String,
    /// Program and arguments, as typed after `--`.
    pub argv: Vec<String>,
    /// Allow every request, record what enforce mode would have done.
    #[serde(default)]
    pub watch: bool,
    /// A fresh instance of its own (`--ephemeral`): throwaway home and overlay upper
    /// dirs under the run's id; several may run at once, beside the profile's agent.
    #[serde(default)]
    pub ephemeral: bool,
    /// Ephemeral runs: killed, the whole instance, after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Ephemeral runs: extra workspaces (`--workspace DIR:overlay|ro`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<runs::RunWorkspace>,
}

/// A signal the client forwards to the sandboxed command (SIGINT, SIGTERM, SIGHUP...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunSignal {
    pub signal: i32,
}

/// What gvmd says during a `gvmctl run` session, one JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunMessage {
    /// The sandbox runs; `pid` is the launcher's.
    Started { pid: u32 },
    /// The command ended; exit with `code`.
    Exited { code: i32, summary: RunSummary },
    /// The run could not start or was aborted.
    Failed { error: String, hint: Option<String> },
}

/// One line of numbers at the end of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunSummary {
    pub profile: String,
    pub allowed: u64,
    pub denied: u64,
    pub held: u64,
    /// Files added, changed or deleted in the overlay workspaces (kept for review).
    pub files_changed: u64,
    pub duration_ms: u64,
    /// DNS questions gvmd answered with the gateway's address, and refused.
    #[serde(default)]
    pub dns_answered: u64,
    #[serde(default)]
    pub dns_refused: u64,
    /// New files matching `[files] auto_apply`, brought into the real workspace when
    /// the run ended.
    #[serde(default)]
    pub files_applied: u64,
    /// Changes that wait for a human (`gvmctl changes P`), this run's and earlier ones.
    #[serde(default)]
    pub files_to_review: u64,
    /// An ephemeral run's id (`gvmctl changes --run ID`); None for a profile's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// An ephemeral run killed by its `--timeout`.
    #[serde(default)]
    pub timed_out: bool,
}

/// One workspace of a [`LaunchPlan`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedWorkspace {
    pub path: String,
    pub mode: WorkspaceMode,
    /// Names its overlay directory under the agent's state.
    pub id: String,
}

/// `POST /v1/agents/{profile}/prepare`: gvmd has made the profile's user, network
/// namespace (with the gateway listening inside) and state directories; this is what
/// the launcher needs to build the sandbox. Only root may launch it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LaunchPlan {
    pub profile: ProfileName,
    pub uid: u32,
    pub gid: u32,
    /// The bound network namespace to join.
    pub netns: String,
    pub state_dir: String,
    pub runtime_dir: String,
    /// gvmd's config dir: hidden from the agent like the state and runtime dirs.
    #[serde(default)]
    pub config_dir: String,
    /// The profile's `[agent] command`, if it has one.
    pub command: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub workspaces: Vec<PlannedWorkspace>,
    pub deny_read: Vec<String>,
    /// PEM: the system roots plus gvmd's interception CA.
    pub ca_bundle: String,
    pub proxy_port: u16,
    pub memory_max: Option<u64>,
    pub tasks_max: Option<u32>,
    /// Percent of one CPU.
    pub cpu_quota: Option<u32>,
}
