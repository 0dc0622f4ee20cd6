//! Profiles: the public, validated types and loading from disk.
//!
//! Parsing goes in two steps. serde reads the file into the `Raw*` structs of [`raw`],
//! which keep the byte span of every value and refuse unknown fields; then [`validate`]
//! turns them into the types below, so every semantic error also points at a line and
//! column ([`spans`] turns spans and TOML errors into diagnostics). The first error
//! refuses the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::budget::Budget;
use crate::compiled::CompiledPolicy;
use crate::diag::Diagnostic;
use crate::rule::{HostPattern, Rule};
use crate::tier::{Tier, TierOverride};
use crate::units::{Rate, RatePer};
use gvm_api::ProfileName;

mod ingress;
mod raw;
mod spans;
mod validate;

use raw::*;
use spans::toml_error;
use validate::Validator;
pub use validate::{validate_glob, RESERVED_ENV};

/// The default `[network] hold_timeout`.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(120);

/// `enforce` or `watch` (one type for every crate).
pub use gvm_api::Mode;

/// What happens to a request no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Deny,
    Hold,
}

/// How a workspace directory is mounted into the sandbox (one type for every crate).
pub use gvm_api::WorkspaceMode;

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
    /// `tier = "L0".."L5"` (see [`crate::Tier`]); its defaults are already filled in.
    pub tier: Option<Tier>,
    /// What `tier_override` lets the profile go beyond its tier in.
    pub tier_override: Vec<TierOverride>,
    /// `serve`: ports the agent listens on inside its netns, for other agents to call
    /// through gvmd as `agent.<name>:<port>` (who may: [`Profile::ingress`]).
    pub serve: Vec<u16>,
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
    /// Where the profile goes beyond its `tier` by `tier_override`, and overrides that
    /// unlock nothing (`gvmctl policy check` lists them; gvmd logs them on load).
    pub tier_warnings: Vec<crate::Warning>,
    /// `[agent] serve` and `[ingress]`: which profiles may call which served port.
    pub ingress: crate::ingress::Ingress,
}

// ---------------------------------------------------------------------------
// Loading.

/// Parses and validates a profile. `file` names it in diagnostics, and its stem is
/// the profile name.
pub fn parse_profile(file: &Path, text: &str) -> Result<Profile, Diagnostic> {
    let name = profile_name(file)?;
    let mut raw: RawProfile = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
    let tier = raw.agent.as_mut().map(|a| (a.tier.take(), a.tier_override.take())).unwrap_or_default();
    let tier = crate::tier::read(file, text, tier.0, tier.1)?;
    let v = Validator { file, text };
    let mut agent = v.agent(raw.agent)?;
    let (secrets, secret_use) = v.secrets(raw.secrets, &agent)?;
    let mut network = v.network(raw.network, &secrets)?;
    let files = v.files(raw.files)?;
    let limits = v.limits(raw.limits)?;
    let budget = match raw.budget {
        Some(b) => Some(v.budget(b, "budget")?),
        None => None,
    };
    let tier_warnings = match tier {
        Some(t) => t.apply(file, text, &mut agent, &mut network, budget.is_some())?,
        None => Vec::new(),
    };
    let ingress = v.ingress(raw.ingress, agent.serve.clone())?;
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
        tier_warnings,
        ingress,
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

#[cfg(test)]
mod tests {
    use super::spans::*;
    use super::validate::*;
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
