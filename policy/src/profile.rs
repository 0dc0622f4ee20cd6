//! Profiles: the TOML schema, its validation, and loading from disk.
//!
//! Parsing goes in two steps. serde reads the file into `Raw*` structs that keep the
//! byte span of every value (`serde_spanned::Spanned`) and refuse unknown fields;
//! then [`validate`] turns them into the public, validated types, so every semantic
//! error also points at a line and column. The first error refuses the file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::budget::{Budget, BudgetPer, Money, OnExhausted};
use crate::compiled::CompiledPolicy;
use crate::diag::Diagnostic;
use crate::name::ProfileName;
use crate::path::PathPattern;
use crate::rule::{Action, HostPattern, HostPatternError, InjectPart, Injection, Rule};
use crate::units::{parse_cpu_quota, parse_duration, parse_size, Rate, RatePer};

/// The default `[network] hold_timeout`.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(120);

/// `enforce` or `watch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    /// Allow everything; record what enforce mode would have done.
    Watch,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Watch => "watch",
        })
    }
}

/// What happens to a request no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Deny,
    Hold,
}

/// How a workspace directory is mounted into the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    /// Writes go to an upper dir and wait for review/apply.
    #[default]
    Overlay,
    Ro,
    Rw,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub path: PathBuf,
    pub mode: WorkspaceMode,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Agent {
    /// `None`: the profile only governs `gvmctl run`.
    pub command: Option<Vec<String>>,
    pub mode: Mode,
    pub workspaces: Vec<Workspace>,
    pub env: BTreeMap<String, String>,
    /// Bytes.
    pub memory_max: Option<u64>,
    pub tasks_max: Option<u32>,
    /// Percent of one CPU (200 = two CPUs).
    pub cpu_quota: Option<u32>,
    pub autostart: bool,
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub default: DefaultAction,
    /// Effective value ([`DEFAULT_HOLD_TIMEOUT`] when not written).
    pub hold_timeout: Duration,
    /// True when the file sets `hold_timeout`.
    pub hold_timeout_set: bool,
    pub rules: Vec<Rule>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            default: DefaultAction::Deny,
            hold_timeout: DEFAULT_HOLD_TIMEOUT,
            hold_timeout_set: false,
            rules: Vec::new(),
        }
    }
}

/// Where a secret's value comes from. Read by gvmd, never by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An absolute path readable by gvmd only.
    File(PathBuf),
    /// A systemd credential passed to gvmd.service (`LoadCredential=`).
    Credential(String),
}

/// How the agent may use a secret without holding it: `env` names the variable that
/// carries the profile's placeholder, `hosts` are where the gateway swaps the
/// placeholder for the value (besides the hosts of rules that inject the secret).
#[derive(Debug, Clone, PartialEq)]
pub struct SecretUse {
    pub env: Option<String>,
    pub hosts: Vec<HostPattern>,
    /// `body = true`: the placeholder is also swapped for the value in request bodies
    /// to `hosts`, over intercepted TLS.
    pub body: bool,
    /// `file:line:col` of the secret's source, for load-time refusals by gvmd.
    pub at: Diagnostic,
}

/// `[files]`: globs, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Files {
    pub auto_apply: Vec<String>,
    pub review: Vec<String>,
    pub discard: Vec<String>,
    pub deny_read: Vec<String>,
    /// `scan_ignore = ["NODE_ENV"]`: keys of `KEY=VALUE` lines in the `deny_read` files
    /// whose values are not secrets (`NODE_ENV=production`), so the exfiltration scan
    /// does not look for them (the whole line still is).
    pub scan_ignore: Vec<String>,
}

/// `[limits]`: what one agent may take of gvmd's shared resources, so that it cannot
/// starve the other agents, fill the disk with audit events or exhaust gvmd's file
/// descriptors. Every field has a default; a profile can lower or raise each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once through all of the profile's listeners (proxy,
    /// transparent, DNS over TCP), tunnels and WebSockets included. gvmd may grant
    /// less: its share of gvmd's descriptors (see ARCHITECTURE.md).
    pub connections: u32,
    /// Requests held for a human at once; further ones are refused (429).
    pub held_requests: u32,
    /// DNS queries; past it the resolver answers REFUSED.
    pub dns_queries: Rate,
    /// Decisions recorded one event each. Past it, refusals are counted in summary
    /// events and requests that would be forwarded are refused (429): nothing is ever
    /// forwarded unrecorded.
    pub decisions: Rate,
    /// Request body bytes per second, over all of the profile's requests; uploads
    /// beyond it are slowed down, not refused.
    pub request_body_per_sec: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: DEFAULT_LIMITS_CONNECTIONS,
            held_requests: 32,
            dns_queries: Rate { count: 3000, per: RatePer::Min },
            decisions: Rate { count: 6000, per: RatePer::Min },
            request_body_per_sec: 32 << 20,
        }
    }
}

/// The default `[limits] connections`.
pub const DEFAULT_LIMITS_CONNECTIONS: u32 = 1024;

/// A loaded, validated and compiled profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: ProfileName,
    pub file: PathBuf,
    pub agent: Agent,
    pub network: Network,
    pub secrets: BTreeMap<String, SecretSource>,
    /// `env` / `hosts` of each secret (every secret has an entry).
    pub secret_use: BTreeMap<String, SecretUse>,
    pub files: Files,
    pub limits: Limits,
    /// `[budget]`: what all of the profile's forwarded requests may spend per period.
    pub budget: Option<Budget>,
    pub compiled: Arc<CompiledPolicy>,
    /// SHA-256 (lower-case hex) of the exact bytes this profile was parsed from: the
    /// version every decision made under it names (`policy_version`).
    pub version: String,
    /// The text it was parsed from (what a version store keeps and diffs).
    pub text: Arc<str>,
}

// ---------------------------------------------------------------------------
// Raw schema (serde).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    agent: Option<RawAgent>,
    network: Option<RawNetwork>,
    secrets: Option<BTreeMap<Spanned<String>, Spanned<RawSecret>>>,
    files: Option<RawFiles>,
    limits: Option<RawLimits>,
    budget: Option<Spanned<RawBudget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    requests: Option<Spanned<i64>>,
    money: Option<Spanned<f64>>,
    per: BudgetPer,
    on_exhausted: Option<OnExhausted>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    connections: Option<Spanned<i64>>,
    held_requests: Option<Spanned<i64>>,
    dns_queries: Option<Spanned<String>>,
    decisions: Option<Spanned<String>>,
    request_body_per_sec: Option<Spanned<StrOrInt>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    command: Option<Spanned<Vec<Spanned<String>>>>,
    mode: Option<Mode>,
    workspaces: Option<Vec<Spanned<RawWorkspace>>>,
    env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    memory_max: Option<Spanned<StrOrInt>>,
    tasks_max: Option<Spanned<i64>>,
    cpu_quota: Option<Spanned<String>>,
    autostart: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkspace {
    path: Spanned<String>,
    #[serde(default)]
    mode: WorkspaceMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    default: Option<DefaultAction>,
    hold_timeout: Option<Spanned<String>>,
    rule: Option<Vec<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    host: Spanned<String>,
    port: Option<Spanned<i64>>,
    ports: Option<Spanned<Vec<Spanned<i64>>>>,
    methods: Option<Spanned<Vec<Spanned<String>>>>,
    path: Option<Spanned<String>>,
    action: Spanned<Action>,
    rate: Option<Spanned<String>>,
    budget: Option<Spanned<RawBudget>>,
    cost: Option<Spanned<f64>>,
    inject: Option<Spanned<RawInject>>,
    intercept: Option<Spanned<bool>>,
    comment: Option<String>,
    name: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    header: Spanned<String>,
    value: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    file: Option<Spanned<String>>,
    credential: Option<Spanned<String>>,
    env: Option<Spanned<String>>,
    hosts: Option<Vec<Spanned<String>>>,
    body: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    auto_apply: Option<Vec<Spanned<String>>>,
    review: Option<Vec<Spanned<String>>>,
    discard: Option<Vec<Spanned<String>>>,
    deny_read: Option<Vec<Spanned<String>>>,
    scan_ignore: Option<Vec<Spanned<String>>>,
}

/// A TOML value that may be a string or an integer (`memory_max = "2G"` or bytes).
enum StrOrInt {
    Str(String),
    Int(i64),
}

impl<'de> Deserialize<'de> for StrOrInt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StrOrInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512M\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Str(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Loading.

/// Parses and validates a profile. `file` names it in diagnostics, and its stem is
/// the profile name.
pub fn parse_profile(file: &Path, text: &str) -> Result<Profile, Diagnostic> {
    let name = profile_name(file)?;
    let raw: RawProfile = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
    let v = Validator { file, text };
    let agent = v.agent(raw.agent)?;
    let (secrets, secret_use) = v.secrets(raw.secrets, &agent)?;
    let network = v.network(raw.network, &secrets)?;
    let files = v.files(raw.files)?;
    let limits = v.limits(raw.limits)?;
    let budget = match raw.budget {
        Some(b) => Some(v.budget(b, "budget")?),
        None => None,
    };
    let compiled = Arc::new(CompiledPolicy::compile(file, agent.mode, &network));
    let version = version_of(text.as_bytes());
    Ok(Profile {
        name,
        file: file.to_path_buf(),
        agent,
        network,
        secrets,
        secret_use,
        files,
        limits,
        budget,
        compiled,
        version,
        text: Arc::from(text),
    })
}

/// The version hash of a profile's file bytes: lower-case hex SHA-256.
pub fn version_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Reads and parses one profile file.
pub fn load_profile(path: &Path) -> Result<Profile, Diagnostic> {
    let bytes = std::fs::read(path).map_err(|e| Diagnostic::file_level(path, format!("cannot read the file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let off = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(e.as_bytes());
        Diagnostic::at(path, &text, off..off, "the file is not valid UTF-8").fix("save it as UTF-8")
    })?;
    parse_profile(path, &text)
}

/// The result of [`load_dir`]: the profiles that loaded and why the others did not.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    pub profiles: Vec<Profile>,
    pub refused: Vec<Diagnostic>,
}

/// Loads every `*.toml` in `dir`, sorted by file name. A missing directory means no
/// profiles; an unreadable or invalid file is refused without stopping the others.
/// Other files (editor backups, `README`) are ignored.
pub fn load_dir(dir: &Path) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => {
            out.refused.push(Diagnostic::file_level(dir, format!("cannot read the profiles directory: {e}")));
            return out;
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => {
                let p = e.path();
                let is_toml = p.extension().is_some_and(|x| x == "toml");
                let hidden = p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
                if is_toml && !hidden {
                    paths.push(p);
                }
            }
            Err(e) => out.refused.push(Diagnostic::file_level(dir, format!("cannot list the profiles directory: {e}"))),
        }
    }
    paths.sort();
    for p in paths {
        match load_profile(&p) {
            Ok(profile) => out.profiles.push(profile),
            Err(d) => out.refused.push(d),
        }
    }
    out
}

fn profile_name(file: &Path) -> Result<ProfileName, Diagnostic> {
    let stem = file.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default();
    ProfileName::parse(&stem).map_err(|e| {
        Diagnostic::file_level(file, e.to_string())
            .fix("rename the file; the file name (without .toml) is the profile name")
    })
}

// ---------------------------------------------------------------------------
// TOML and serde errors → diagnostics.

impl Diagnostic {
    /// A TOML or serde error of any file gvm reads (profiles, `gvmd.toml`), taken apart
    /// into position, field, message and fix.
    pub fn from_toml_error(file: &Path, text: &str, e: &toml::de::Error) -> Diagnostic {
        toml_error(file, text, e)
    }
}

fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> Diagnostic {
    let span = e.span().unwrap_or(0..0);
    let raw = e.message().trim();
    let (message, fix) = split_serde_message(raw);
    let field = field_at(text, span.clone());
    let mut d = Diagnostic::at(file, text, span, message).maybe_fix(fix);
    d.field = field;
    d
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into a message and a
/// fix listing what is accepted. Other messages are kept, on one line.
fn split_serde_message(raw: &str) -> (String, Option<String>) {
    let one_line = raw.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    for (prefix, what, list) in [
        ("unknown field `", "unknown field", "accepted fields"),
        ("unknown variant `", "unknown value", "allowed values"),
    ] {
        let Some(rest) = one_line.strip_prefix(prefix) else { continue };
        let Some((bad, expected)) = rest.split_once('`') else { continue };
        let accepted: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let message = format!("{what} `{bad}`");
        let fix = if accepted.is_empty() {
            if expected.contains("there are no fields") {
                Some("this table takes no fields".to_string())
            } else {
                None
            }
        } else {
            Some(format!("{list}: {}", accepted.join(", ")))
        };
        return (message, fix);
    }
    if let Some(rest) = one_line.strip_prefix("missing field `") {
        if let Some((name, _)) = rest.split_once('`') {
            return (one_line.clone(), Some(format!("add `{name} = ...` to this table")));
        }
    }
    // serde names Rust types; say what to write in TOML.
    let one_line = one_line
        .replace("expected i64", "expected an integer")
        .replace("expected u64", "expected an integer")
        .replace("expected a boolean", "expected true or false");
    (one_line, None)
}

/// The dotted path (`network.rule[2].action`) of the key or value at `span.start`,
/// found by re-reading the document with spans. `None` for a syntax error.
fn field_at(text: &str, span: Range<usize>) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let at = span.start;
    fn walk(v: &DeValue<'_>, at: usize, path: &mut String) -> bool {
        match v {
            DeValue::Table(t) => {
                for (k, val) in t.iter() {
                    let inside_key = k.span().contains(&at);
                    let inside_val = val.span().contains(&at) || val.span().start == at;
                    let mut deeper = path.clone();
                    if !deeper.is_empty() {
                        deeper.push('.');
                    }
                    deeper.push_str(k.get_ref());
                    if inside_key {
                        *path = deeper;
                        return true;
                    }
                    if inside_val || matches!(val.get_ref(), DeValue::Table(_) | DeValue::Array(_)) {
                        let mut p = deeper.clone();
                        if walk(val.get_ref(), at, &mut p) {
                            *path = p;
                            return true;
                        }
                        if inside_val {
                            *path = deeper;
                            return true;
                        }
                    }
                }
                false
            }
            DeValue::Array(a) => {
                for (i, val) in a.iter().enumerate() {
                    let inside = val.span().contains(&at) || val.span().start == at;
                    let deeper = format!("{path}[{i}]");
                    if inside || matches!(val.get_ref(), DeValue::Table(_)) {
                        let mut p = deeper.clone();
                        if walk(val.get_ref(), at, &mut p) {
                            *path = p;
                            return true;
                        }
                        if inside {
                            *path = deeper;
                            return true;
                        }
                    }
                }
                false
            }
            _ => false,
        }
    }
    let mut path = String::new();
    let root = DeValue::Table(doc.into_inner());
    (walk(&root, at, &mut path) && !path.is_empty()).then_some(path)
}

// ---------------------------------------------------------------------------
// Validation.

/// Environment variables the launcher sets itself; a profile may not override them.
pub const RESERVED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "FTP_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "CREDENTIALS_DIRECTORY",
];

/// Headers an injection may not set: framing, routing and hop-by-hop headers.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "expect",
];

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
}

type V<T> = Result<T, Diagnostic>;

impl Validator<'_> {
    fn err(&self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::at(self.file, self.text, span, message).field(field)
    }

    fn agent(&self, raw: Option<RawAgent>) -> V<Agent> {
        let Some(raw) = raw else { return Ok(Agent::default()) };
        let mut agent =
            Agent { mode: raw.mode.unwrap_or_default(), autostart: raw.autostart.unwrap_or(false), ..Agent::default() };
        if let Some(cmd) = raw.command {
            if cmd.get_ref().is_empty() {
                return Err(self
                    .err(cmd.span(), "agent.command", "the command is empty")
                    .fix("write the program and its arguments, e.g. [\"node\", \"index.js\"], or remove `command`"));
            }
            let mut argv = Vec::new();
            for (i, a) in cmd.into_inner().into_iter().enumerate() {
                if a.get_ref().contains('\0') {
                    return Err(self.err(a.span(), format!("agent.command[{i}]"), "an argument contains a NUL byte"));
                }
                if i == 0 && a.get_ref().is_empty() {
                    return Err(self.err(a.span(), "agent.command[0]", "the program name is empty"));
                }
                argv.push(a.into_inner());
            }
            agent.command = Some(argv);
        }
        let mut seen = BTreeSet::new();
        for (i, ws) in raw.workspaces.unwrap_or_default().into_iter().enumerate() {
            let ws = ws.into_inner();
            let field = format!("agent.workspaces[{i}].path");
            let p = Path::new(ws.path.get_ref());
            if !p.is_absolute() {
                return Err(self
                    .err(ws.path.span(), field, "a workspace path must be absolute")
                    .fix("write the full path, e.g. \"/srv/invoices\""));
            }
            if p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir))
                || ws.path.get_ref().contains("/./")
                || ws.path.get_ref().ends_with("/.")
            {
                return Err(self
                    .err(ws.path.span(), field, "a workspace path must not contain `.` or `..`")
                    .fix("write the canonical path"));
            }
            if ws.path.get_ref().contains('\0') {
                return Err(self.err(ws.path.span(), field, "the path contains a NUL byte"));
            }
            if p.parent().is_none() {
                return Err(self
                    .err(ws.path.span(), field, "`/` cannot be a workspace")
                    .fix("name the project directory"));
            }
            let norm: PathBuf = p.components().collect();
            if !seen.insert(norm.clone()) {
                return Err(self.err(ws.path.span(), field, "this workspace is listed twice"));
            }
            agent.workspaces.push(Workspace { path: norm, mode: ws.mode });
        }
        for (k, v) in raw.env.unwrap_or_default() {
            let key = k.get_ref();
            let field = format!("agent.env.{key}");
            if key.is_empty() || key.contains('=') || key.chars().any(|c| c.is_control()) {
                return Err(self.err(
                    k.span(),
                    field,
                    "an environment variable name must be non-empty and contain no `=`, NUL or control characters",
                ));
            }
            let upper = key.to_ascii_uppercase();
            if RESERVED_ENV.contains(&upper.as_str())
                && (RESERVED_ENV.contains(&key.as_str()) || upper.ends_with("_PROXY"))
            {
                return Err(self
                    .err(k.span(), field, format!("`{key}` is set by the launcher and cannot be overridden"))
                    .fix("remove it; the sandbox sets PATH, HOME, USER, the proxy and CA variables itself"));
            }
            if v.get_ref().contains('\0') {
                return Err(self.err(v.span(), field, "the value contains a NUL byte"));
            }
            agent.env.insert(k.into_inner(), v.into_inner());
        }
        if let Some(m) = raw.memory_max {
            let bytes = match m.get_ref() {
                StrOrInt::Str(s) => parse_size(s).map_err(|e| e.0),
                StrOrInt::Int(n) if *n > 0 => Ok(n.unsigned_abs()),
                StrOrInt::Int(_) => Err("a size must be more than zero".to_string()),
            };
            agent.memory_max = Some(bytes.map_err(|e| self.err(m.span(), "agent.memory_max", e))?);
        }
        if let Some(t) = raw.tasks_max {
            match u32::try_from(*t.get_ref()) {
                Ok(n) if n > 0 => agent.tasks_max = Some(n),
                _ => {
                    return Err(self
                        .err(t.span(), "agent.tasks_max", "tasks_max must be a positive number")
                        .fix("e.g. tasks_max = 512"))
                }
            }
        }
        if let Some(c) = raw.cpu_quota {
            agent.cpu_quota =
                Some(parse_cpu_quota(c.get_ref()).map_err(|e| self.err(c.span(), "agent.cpu_quota", e.0))?);
        }
        Ok(agent)
    }

    #[allow(clippy::type_complexity)]
    fn secrets(
        &self,
        raw: Option<BTreeMap<Spanned<String>, Spanned<RawSecret>>>,
        agent: &Agent,
    ) -> V<(BTreeMap<String, SecretSource>, BTreeMap<String, SecretUse>)> {
        let mut out = BTreeMap::new();
        let mut uses = BTreeMap::new();
        let mut envs: BTreeSet<String> = BTreeSet::new();
        for (k, v) in raw.unwrap_or_default() {
            let name = k.get_ref();
            let field = format!("secrets.{name}");
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(self.err(k.span(), field, "a secret name may only contain letters, digits, `_` and `-`"));
            }
            let span = v.span();
            let v = v.into_inner();
            let mut using =
                SecretUse { env: None, hosts: Vec::new(), body: false, at: self.err(span.clone(), field.clone(), "") };
            if let Some(e) = &v.env {
                let key = e.get_ref();
                let upper = key.to_ascii_uppercase();
                if key.is_empty()
                    || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    || key.as_bytes()[0].is_ascii_digit()
                {
                    return Err(self
                        .err(e.span(), format!("{field}.env"), "an environment variable name may only contain letters, digits and `_`, and may not start with a digit")
                        .fix("e.g. env = \"OPENAI_API_KEY\""));
                }
                if RESERVED_ENV.contains(&upper.as_str()) || upper.ends_with("_PROXY") {
                    return Err(self
                        .err(
                            e.span(),
                            format!("{field}.env"),
                            format!("`{key}` is set by the launcher and cannot be overridden"),
                        )
                        .fix("choose another name"));
                }
                if agent.env.contains_key(key) || !envs.insert(key.clone()) {
                    return Err(self
                        .err(
                            e.span(),
                            format!("{field}.env"),
                            format!("`{key}` is already set by [agent] env or another secret"),
                        )
                        .fix("remove one of them: the secret's env gives the agent its placeholder"));
                }
                using.env = Some(key.clone());
            }
            for (j, h) in v.hosts.iter().flatten().enumerate() {
                let pat = HostPattern::parse(h.get_ref()).map_err(|e| {
                    self.err(h.span(), format!("{field}.hosts[{j}]"), e.to_string())
                        .fix("write a host name (\"api.example.com\"), \"*.example.com\", an IP or a CIDR")
                })?;
                if pat == HostPattern::Any {
                    return Err(self
                        .err(h.span(), format!("{field}.hosts[{j}]"), "a secret cannot be bound to every host (`*`)")
                        .fix("name the hosts that need it, e.g. hosts = [\"api.openai.com\"]"));
                }
                using.hosts.push(pat);
            }
            if let Some(b) = &v.body {
                if *b.get_ref() && (using.env.is_none() || using.hosts.is_empty()) {
                    return Err(self
                        .err(
                            b.span(),
                            format!("{field}.body"),
                            "`body = true` swaps the agent's placeholder in request bodies to the secret's hosts: it needs `env` and `hosts`",
                        )
                        .fix("e.g. openai = { file = \"...\", env = \"OPENAI_API_KEY\", hosts = [\"api.openai.com\"], body = true }"));
                }
                using.body = *b.get_ref();
            }
            let src = match (v.file, v.credential) {
                (Some(f), None) => {
                    using.at = self.err(f.span(), format!("{field}.file"), "");
                    let p = Path::new(f.get_ref());
                    if !p.is_absolute()
                        || f.get_ref().contains('\0')
                        || p.components().any(|c| matches!(c, Component::ParentDir))
                    {
                        return Err(self
                            .err(
                                f.span(),
                                format!("{field}.file"),
                                "a secret file must be an absolute path without `..`",
                            )
                            .fix("e.g. file = \"/etc/gvm/secrets/openai\""));
                    }
                    SecretSource::File(p.to_path_buf())
                }
                (None, Some(c)) => {
                    let n = c.get_ref();
                    if n.is_empty()
                        || n.len() > 255
                        || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                    {
                        return Err(self.err(
                            c.span(),
                            format!("{field}.credential"),
                            "a systemd credential name may only contain letters, digits, `_`, `.` and `-`",
                        ));
                    }
                    SecretSource::Credential(n.clone())
                }
                _ => {
                    return Err(self
                        .err(span, field, "a secret needs exactly one source")
                        .fix("write { file = \"/abs/path\" } or { credential = \"name\" }"))
                }
            };
            uses.insert(k.get_ref().clone(), using);
            out.insert(k.into_inner(), src);
        }
        Ok((out, uses))
    }

    fn network(&self, raw: Option<RawNetwork>, secrets: &BTreeMap<String, SecretSource>) -> V<Network> {
        let Some(raw) = raw else { return Ok(Network::default()) };
        let mut net = Network { default: raw.default.unwrap_or_default(), ..Network::default() };
        if let Some(t) = raw.hold_timeout {
            net.hold_timeout =
                parse_duration(t.get_ref()).map_err(|e| self.err(t.span(), "network.hold_timeout", e.0))?;
            net.hold_timeout_set = true;
        }
        let mut names = BTreeSet::new();
        for (i, r) in raw.rule.unwrap_or_default().into_iter().enumerate() {
            if let Some(n) = &r.name {
                let field = format!("network.rule[{i}].name");
                let ok = (1..=64).contains(&n.get_ref().len())
                    && n.get_ref().bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
                if !ok {
                    return Err(self
                        .err(n.span(), field, "a rule name is 1 to 64 letters, digits, `_`, `.` or `-`")
                        .fix("e.g. name = \"openai-chat\""));
                }
                if !names.insert(n.get_ref().clone()) {
                    return Err(self
                        .err(n.span(), field, format!("another rule is already named `{}`", n.get_ref()))
                        .fix("give each rule its own name (a rule's budget is counted under it)"));
                }
            }
            net.rules.push(self.rule(i, r, secrets)?);
        }
        Ok(net)
    }

    fn rule(&self, i: usize, r: RawRule, secrets: &BTreeMap<String, SecretSource>) -> V<Rule> {
        let f = |name: &str| format!("network.rule[{i}].{name}");
        let host = HostPattern::parse(r.host.get_ref()).map_err(|e| {
            let fix = match &e {
                HostPatternError::Host(crate::HostError::Port) => {
                    Some("remove `:PORT` and write `port = PORT` in the rule".to_string())
                }
                HostPatternError::Host(crate::HostError::NonCanonicalIpv4(_)) => {
                    Some("write the address as four decimal numbers, e.g. \"127.0.0.1\"".to_string())
                }
                HostPatternError::Host(crate::HostError::ForbiddenChar(_) | crate::HostError::Userinfo) => {
                    Some("write a host name (\"api.example.com\"), \"*.example.com\", an IP or a CIDR".to_string())
                }
                _ => None,
            };
            self.err(r.host.span(), f("host"), e.to_string()).maybe_fix(fix)
        })?;
        let (line, column) = crate::line_col(self.text, r.host.span().start);
        let mut ports = Vec::new();
        match (&r.port, &r.ports) {
            (Some(_), Some(ps)) => {
                return Err(self
                    .err(ps.span(), f("ports"), "`port` and `ports` are both set")
                    .fix("keep one: port = 443 or ports = [80, 443]"))
            }
            (Some(p), None) => ports.push(self.port(p, f("port"))?),
            (None, Some(ps)) => {
                if ps.get_ref().is_empty() {
                    return Err(self
                        .err(ps.span(), f("ports"), "`ports` is empty")
                        .fix("list ports, or remove `ports` to match any port"));
                }
                for (j, p) in ps.get_ref().iter().enumerate() {
                    let port = self.port(p, format!("{}[{j}]", f("ports")))?;
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
            }
            (None, None) => {}
        }
        let mut methods = Vec::new();
        if let Some(ms) = &r.methods {
            if ms.get_ref().is_empty() {
                return Err(self
                    .err(ms.span(), f("methods"), "`methods` is empty")
                    .fix("list methods, or remove `methods` to match any method"));
            }
            for (j, m) in ms.get_ref().iter().enumerate() {
                let s = m.get_ref();
                let field = format!("{}[{j}]", f("methods"));
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') {
                    let fix = if s.bytes().any(|b| b.is_ascii_lowercase()) && s.bytes().all(|b| b.is_ascii_alphabetic())
                    {
                        Some(format!("methods are case-sensitive; write \"{}\"", s.to_ascii_uppercase()))
                    } else {
                        None
                    };
                    return Err(self
                        .err(m.span(), field, format!("`{}` is not an HTTP method", s.escape_debug()))
                        .maybe_fix(fix));
                }
                if !methods.contains(s) {
                    methods.push(s.clone());
                }
            }
        }
        let path = match &r.path {
            Some(p) => Some(PathPattern::parse(p.get_ref()).map_err(|e| {
                self.err(p.span(), f("path"), e.0).fix(
                    "write an exact path \"/a/b\", a prefix \"/v1/**\" or one-segment wildcards \"/repos/*/issues\"",
                )
            })?),
            None => None,
        };
        let action = *r.action.get_ref();
        let rate = match &r.rate {
            Some(s) => {
                if action == Action::Deny {
                    return Err(self.err(s.span(), f("rate"), "a deny rule has no rate").fix("remove `rate`"));
                }
                Some(Rate::parse(s.get_ref()).map_err(|e| self.err(s.span(), f("rate"), e.0))?)
            }
            None => None,
        };
        let budget = match r.budget {
            Some(b) => {
                if action == Action::Deny {
                    return Err(self
                        .err(b.span(), f("budget"), "a deny rule forwards nothing, so it has no budget")
                        .fix("remove `budget`"));
                }
                Some(self.budget(b, &f("budget"))?)
            }
            None => None,
        };
        let cost = match &r.cost {
            None => None,
            Some(c) => {
                if action == Action::Deny {
                    return Err(self
                        .err(c.span(), f("cost"), "a deny rule forwards nothing, so it costs nothing")
                        .fix("remove `cost`"));
                }
                match Money::from_f64(*c.get_ref()) {
                    Some(v) => Some(v),
                    None => {
                        return Err(self
                            .err(c.span(), f("cost"), "must be an amount of 0 or more")
                            .fix("write what one request costs, e.g. cost = 0.02"))
                    }
                }
            }
        };
        let inject = match r.inject {
            Some(inj) => {
                if action == Action::Deny {
                    return Err(self
                        .err(inj.span(), f("inject"), "a deny rule sends nothing, so it cannot inject a header")
                        .fix("remove `inject`"));
                }
                Some(Arc::new(self.injection(inj.into_inner(), &f("inject"), secrets)?))
            }
            None => None,
        };
        let intercept = r.intercept.as_ref().is_none_or(|b| *b.get_ref());
        if let Some(ic) = &r.intercept {
            if !intercept {
                let what = [(r.methods.is_some(), "methods"), (r.path.is_some(), "path"), (inject.is_some(), "inject")]
                    .iter()
                    .filter(|(set, _)| *set)
                    .map(|(_, n)| format!("`{n}`"))
                    .collect::<Vec<_>>();
                if !what.is_empty() {
                    return Err(self
                        .err(
                            ic.span(),
                            f("intercept"),
                            format!(
                                "a rule with intercept = false is a tunnel: its {} can never be checked",
                                what.join(" and ")
                            ),
                        )
                        .fix("remove them, or remove `intercept = false`"));
                }
            }
        }
        Ok(Rule {
            index: i,
            line,
            column,
            host,
            ports,
            methods,
            path,
            action,
            rate,
            budget,
            cost,
            inject,
            intercept,
            comment: r.comment,
            name: r.name.map(Spanned::into_inner),
        })
    }

    fn port(&self, p: &Spanned<i64>, field: String) -> V<u16> {
        match u16::try_from(*p.get_ref()) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.err(p.span(), field, "a port must be between 1 and 65535")),
        }
    }

    fn injection(&self, raw: RawInject, field: &str, secrets: &BTreeMap<String, SecretSource>) -> V<Injection> {
        let h = raw.header.get_ref();
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if h.is_empty() || !h.bytes().all(token) {
            return Err(self.err(
                raw.header.span(),
                format!("{field}.header"),
                format!("`{}` is not a valid header name", h.escape_debug()),
            ));
        }
        if FORBIDDEN_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
            return Err(self
                .err(
                    raw.header.span(),
                    format!("{field}.header"),
                    format!("`{h}` controls framing or routing and cannot be injected"),
                )
                .fix("inject an authentication header such as Authorization or X-Api-Key"));
        }
        let value = raw.value.get_ref();
        let vfield = format!("{field}.value");
        // Offset of the string's content inside the span: skip the opening quote(s).
        let span = raw.value.span();
        let quote =
            self.text
                .get(span.clone())
                .map_or(0, |s| if s.starts_with("\"\"\"") || s.starts_with("'''") { 3 } else { 1 });
        let at = |off: usize| (span.start + quote + off)..(span.start + quote + off);
        let mut parts = Vec::new();
        let mut rest = value.as_str();
        let mut consumed = 0;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(InjectPart::Literal(rest.to_owned()));
                    break;
                }
                Some(pos) => {
                    if pos > 0 {
                        parts.push(InjectPart::Literal(rest[..pos].to_owned()));
                    }
                    let tail = &rest[pos..];
                    let Some(inner) = tail.strip_prefix("{secret:").and_then(|t| t.find('}').map(|e| &t[..e])) else {
                        return Err(self
                            .err(at(consumed + pos), vfield, "`{` and `}` are only allowed in `{secret:NAME}`")
                            .fix("write {secret:NAME} with NAME from [secrets]"));
                    };
                    if !secrets.contains_key(inner) {
                        let known = if secrets.is_empty() {
                            "add it to [secrets], e.g. NAME = { file = \"/etc/gvm/secrets/NAME\" }".to_string()
                        } else {
                            format!(
                                "defined secrets: {}",
                                secrets.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                            )
                        };
                        return Err(self
                            .err(at(consumed + pos), vfield, format!("secret `{inner}` is not defined in [secrets]"))
                            .fix(known));
                    }
                    parts.push(InjectPart::Secret(inner.to_owned()));
                    let used = pos + "{secret:".len() + inner.len() + 1;
                    consumed += used;
                    rest = &rest[used..];
                    continue;
                }
            }
        }
        if value.chars().any(|c| c.is_control()) {
            return Err(self.err(span, vfield, "a header value must not contain control characters (CR, LF, NUL...)"));
        }
        if !parts.iter().any(|p| matches!(p, InjectPart::Secret(_))) {
            // A constant header is legal, but usually a mistake worth stating.
        }
        Ok(Injection::new(h.clone(), value.clone(), parts))
    }

    fn files(&self, raw: Option<RawFiles>) -> V<Files> {
        let Some(raw) = raw else { return Ok(Files::default()) };
        let mut out = Files::default();
        for (name, list, dest) in [
            ("auto_apply", raw.auto_apply, &mut out.auto_apply),
            ("review", raw.review, &mut out.review),
            ("discard", raw.discard, &mut out.discard),
            ("deny_read", raw.deny_read, &mut out.deny_read),
        ] {
            for (i, g) in list.unwrap_or_default().into_iter().enumerate() {
                if let Err(e) = validate_glob(g.get_ref()) {
                    return Err(self
                        .err(g.span(), format!("files.{name}[{i}]"), e)
                        .fix("globs use `*`, `**` (whole path components), `?`, `[abc]` and `{a,b}`"));
                }
                dest.push(g.into_inner());
            }
        }
        for (i, k) in raw.scan_ignore.unwrap_or_default().into_iter().enumerate() {
            let key = k.get_ref();
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
                return Err(self
                    .err(
                        k.span(),
                        format!("files.scan_ignore[{i}]"),
                        format!("`{key}` is not a KEY of a KEY=VALUE line"),
                    )
                    .fix("write the key as in the .env file, e.g. scan_ignore = [\"NODE_ENV\", \"LOG_LEVEL\"]"));
            }
            out.scan_ignore.push(k.into_inner());
        }
        Ok(out)
    }
}

impl Validator<'_> {
    fn budget(&self, raw: Spanned<RawBudget>, field: &str) -> V<Budget> {
        let span = raw.span();
        let raw = raw.into_inner();
        if raw.requests.is_none() && raw.money.is_none() {
            return Err(self
                .err(span, field, "a budget needs something to count")
                .fix("write `requests = N` and/or `money = AMOUNT`, e.g. requests = 1000, per = \"day\""));
        }
        let requests = match raw.requests {
            None => None,
            Some(n) => match u64::try_from(*n.get_ref()) {
                Ok(r @ 1..) => Some(r),
                _ => {
                    return Err(self
                        .err(n.span(), format!("{field}.requests"), "must be a whole number of requests, 1 or more")
                        .fix("write e.g. requests = 1000; to forbid requests altogether, use a deny rule"))
                }
            },
        };
        let money = match raw.money {
            None => None,
            Some(m) => match Money::from_f64(*m.get_ref()) {
                Some(v) if v.0 > 0 => Some(v),
                _ => {
                    return Err(self
                        .err(m.span(), format!("{field}.money"), "must be an amount above 0")
                        .fix("write e.g. money = 5.0 (in the currency of the rules' `cost`)"))
                }
            },
        };
        Ok(Budget { requests, money, per: raw.per, on_exhausted: raw.on_exhausted.unwrap_or_default() })
    }

    fn limits(&self, raw: Option<RawLimits>) -> V<Limits> {
        let mut out = Limits::default();
        let Some(raw) = raw else { return Ok(out) };
        let count = |v: Spanned<i64>, field: &str, max: u32| -> V<u32> {
            match u32::try_from(*v.get_ref()) {
                Ok(n @ 1..) if n <= max => Ok(n),
                _ => Err(self
                    .err(v.span(), format!("limits.{field}"), format!("must be a whole number from 1 to {max}"))
                    .fix(format!("remove `{field}` to get the default, or write a number such as 64"))),
            }
        };
        if let Some(v) = raw.connections {
            out.connections = count(v, "connections", 1 << 20)?;
        }
        if let Some(v) = raw.held_requests {
            out.held_requests = count(v, "held_requests", 100_000)?;
        }
        for (field, src, dest) in
            [("dns_queries", raw.dns_queries, &mut out.dns_queries), ("decisions", raw.decisions, &mut out.decisions)]
        {
            if let Some(r) = src {
                *dest = Rate::parse(r.get_ref()).map_err(|e| self.err(r.span(), format!("limits.{field}"), e.0))?;
            }
        }
        if let Some(b) = raw.request_body_per_sec {
            let span = b.span();
            out.request_body_per_sec = match b.into_inner() {
                StrOrInt::Str(s) => parse_size(&s).map_err(|e| self.err(span, "limits.request_body_per_sec", e.0))?,
                StrOrInt::Int(n @ 1..) => n as u64,
                StrOrInt::Int(_) => {
                    return Err(self
                        .err(span, "limits.request_body_per_sec", "must be a positive size")
                        .fix("write bytes per second such as \"16M\""))
                }
            };
        }
        Ok(out)
    }
}

/// Checks glob syntax: balanced `[...]` and `{...}`, `**` only as a whole path
/// component, no `..` component, no control characters, a `\` escapes something.
pub fn validate_glob(g: &str) -> Result<(), String> {
    if g.is_empty() {
        return Err("the glob is empty".into());
    }
    if g.chars().any(|c| c.is_control()) {
        return Err("the glob contains a control character".into());
    }
    for comp in g.split('/') {
        if comp == ".." {
            return Err("a glob must not contain `..`".into());
        }
        if comp.contains("**") && comp != "**" {
            return Err(format!("`**` must be a whole path component, not `{comp}`"));
        }
    }
    let b = g.as_bytes();
    let mut i = 0;
    let mut braces = 0u32;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                if i + 1 >= b.len() {
                    return Err("a trailing `\\` escapes nothing".into());
                }
                i += 1;
            }
            b'[' => {
                let start = i;
                i += 1;
                if i < b.len() && (b[i] == b'!' || b[i] == b'^') {
                    i += 1;
                }
                if i < b.len() && b[i] == b']' {
                    i += 1; // a literal `]` first in the class
                }
                while i < b.len() && b[i] != b']' {
                    if b[i] == b'/' {
                        return Err("a `[...]` class cannot contain `/`".into());
                    }
                    i += 1;
                }
                if i >= b.len() {
                    return Err(format!("`[` at byte {start} is never closed"));
                }
            }
            b'{' => braces += 1,
            b'}' => {
                if braces == 0 {
                    return Err("`}` without `{`".into());
                }
                braces -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    if braces > 0 {
        return Err("`{` is never closed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_are_split() {
        assert_eq!(
            split_serde_message("unknown field `hots`, expected one of `host`, `port`"),
            ("unknown field `hots`".into(), Some("accepted fields: host, port".into()))
        );
        assert_eq!(
            split_serde_message("unknown variant `allw`, expected `deny` or `hold`"),
            ("unknown value `allw`".into(), Some("allowed values: deny, hold".into()))
        );
        assert_eq!(
            split_serde_message("missing field `action`\n"),
            ("missing field `action`".into(), Some("add `action = ...` to this table".into()))
        );
    }

    #[test]
    fn scan_ignore_takes_dotenv_keys_and_refuses_anything_else_with_line_and_fix() {
        let file = Path::new("/etc/gvm/profiles/p.toml");
        let ok =
            parse_profile(file, "[files]\ndeny_read = [\"**/.env\"]\nscan_ignore = [\"NODE_ENV\", \"LOG_LEVEL\"]\n");
        assert_eq!(ok.unwrap().files.scan_ignore, ["NODE_ENV", "LOG_LEVEL"]);
        let bad = parse_profile(file, "[files]\nscan_ignore = [\"NODE_ENV\", \"A B\"]\n").unwrap_err();
        assert_eq!((bad.line, bad.field.as_deref()), (Some(2), Some("files.scan_ignore[1]")), "{bad}");
        assert!(bad.fix.unwrap().contains("scan_ignore = [\"NODE_ENV\""));
    }

    #[test]
    fn a_secret_swapped_in_bodies_needs_env_and_hosts() {
        let file = Path::new("/etc/gvm/profiles/p.toml");
        let with = |t: &str| parse_profile(file, &format!("[secrets]\nk = {{ file = \"/etc/gvm/k\"{t} }}\n"));
        let ok = with(", env = \"K\", hosts = [\"api.example.com\"], body = true").unwrap();
        assert!(ok.secret_use["k"].body);
        assert!(!with(", env = \"K\", hosts = [\"api.example.com\"]").unwrap().secret_use["k"].body);
        for bad in [", hosts = [\"api.example.com\"], body = true", ", env = \"K\", body = true"] {
            let e = with(bad).unwrap_err();
            assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("secrets.k.body")), "{e}");
            assert!(e.fix.unwrap().contains("body = true"));
        }
    }

    #[test]
    fn rule_names_are_checked_and_unique() {
        let file = Path::new("/etc/gvm/profiles/p.toml");
        let rule =
            |name: &str| format!("[[network.rule]]\nhost = \"a.example\"\naction = \"allow\"\nname = \"{name}\"\n");
        let ok = parse_profile(file, &format!("{}{}", rule("llm"), rule("files"))).unwrap();
        assert_eq!(ok.network.rules[0].name.as_deref(), Some("llm"));
        let dup = parse_profile(file, &format!("{}{}", rule("llm"), rule("llm"))).unwrap_err();
        assert_eq!((dup.line, dup.field.as_deref()), (Some(8), Some("network.rule[1].name")), "{dup}");
        let bad = parse_profile(file, &rule("has space")).unwrap_err();
        assert_eq!(bad.field.as_deref(), Some("network.rule[0].name"), "{bad}");
    }

    #[test]
    fn globs() {
        for ok in ["**/*.csv", "reports/**", "**", "*.{py,sh}", "[abc].txt", "[!a]x", "~/.ssh/**", "a\\*b"] {
            assert_eq!(validate_glob(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a**", "**b/c", "[abc", "{a,b", "a}", "../x", "a\\", "a\0"] {
            assert!(validate_glob(bad).is_err(), "{bad}");
        }
    }
}
