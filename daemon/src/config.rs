//! gvmd's own settings: where it keeps things, and the optional `<config-dir>/gvmd.toml`.
//!
//! Everything has an embedded default, so gvmd runs with no configuration at all. A
//! config file that exists but is wrong stops gvmd at start (with file:line:column, the
//! field and the fix): running with settings the operator did not intend is worse than
//! not running. Profiles are different: see [`crate::profiles`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The three directories gvmd works in.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Read-only configuration: `gvmd.toml`, `profiles/*.toml`. Default `/etc/gvm`.
    pub config_dir: PathBuf,
    /// Persistent state: the audit database, keys, the CA, agents' data. Default `/var/lib/gvm`.
    pub state_dir: PathBuf,
    /// Sockets and other things that vanish on reboot. Default `/run/gvm`.
    pub runtime_dir: PathBuf,
}

impl Paths {
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join(gvm_api::SOCKET_NAME)
    }
    pub fn profiles_dir(&self) -> PathBuf {
        self.config_dir.join("profiles")
    }
    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("gvmd.toml")
    }
}

/// `gvmd.toml`. Every section and field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default)]
    pub notify: NotifySection,
    /// `[prices."HOST"] "MODEL" = { input = 2.5, output = 10.0 }`: per million tokens,
    /// in the currency of the profiles' money budgets. Responses from these hosts are
    /// charged their LLM usage (docs/policy.md, Budgets).
    #[serde(default)]
    pub prices: std::collections::BTreeMap<String, std::collections::BTreeMap<String, PriceEntry>>,
}

/// One model's price, per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    pub input: f64,
    pub output: f64,
}

impl DaemonConfig {
    /// `[prices]` as the gateway takes them (host names normalised).
    pub fn gateway_prices(&self) -> gvm_gateway::Prices {
        self.prices
            .iter()
            .map(|(host, models)| {
                let host =
                    gvm_policy::Host::parse(host).map(|h| h.as_str().to_string()).unwrap_or_else(|_| host.clone());
                let table = models
                    .iter()
                    .map(|(m, p)| (m.clone(), gvm_gateway::Price { input: p.input, output: p.output }))
                    .collect();
                (host, table)
            })
            .collect()
    }
}

/// `[notify]`: where gvmd tells a human that something waits for approval (besides
/// journald, which always gets a NOTICE).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// POSTed a JSON notice per new approval item. `https://`; `http://` to loopback only.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Extra headers of every POST (e.g. `Authorization = "Bearer ..."`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The ntfy topic the notice names (ntfy's JSON publishing needs one).
    #[serde(default = "default_topic")]
    pub topic: String,
}

impl Default for NotifySection {
    fn default() -> Self {
        NotifySection { webhook: None, headers: BTreeMap::new(), topic: default_topic() }
    }
}

fn default_topic() -> String {
    "gvm".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Members of this group may use the control socket besides root.
    #[serde(default = "default_admin_group")]
    pub admin_group: String,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection { admin_group: default_admin_group() }
    }
}

fn default_admin_group() -> String {
    gvm_api::ADMIN_GROUP.to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Sign a checkpoint after this many events.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// ...or after this long, whichever comes first ("30s", "5m").
    #[serde(default = "default_checkpoint_interval", with = "duration_text")]
    pub checkpoint_interval: Duration,
    /// When an event counts as written: `"normal"` (default) commits it to the WAL in the
    /// kernel's page cache before the request it describes goes ahead, which survives a
    /// crash or SIGKILL of gvmd (the design's promise: a process crash loses nothing
    /// that was answered) but not an OS crash or power loss; `"full"` also fsyncs each
    /// commit, so a power loss loses nothing either, at one fsync per group commit on
    /// the request path (ARCHITECTURE.md, "Durability and speed", has the numbers).
    #[serde(default)]
    pub sync: SyncMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Full,
    #[default]
    Normal,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval: default_checkpoint_interval(),
            sync: SyncMode::Normal,
        }
    }
}

fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// PEM files whose certificates are trusted for upstream TLS, besides the system roots.
    #[serde(default)]
    pub extra_roots: Vec<PathBuf>,
    /// Static name → addresses overrides, used instead of DNS (and trusted by the SSRF
    /// check, since the operator wrote them).
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    /// Explicit-proxy listeners on the host, profile → address (e.g. `"127.0.0.1:3128"`).
    /// For development and tests without the sandbox: every local process that can
    /// reach the address speaks as that profile, so bind loopback only.
    #[serde(default)]
    pub listen: BTreeMap<gvm_api::ProfileName, std::net::SocketAddr>,
}

/// Why `gvmd.toml` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source} — check the file's permissions, or remove it to use the defaults")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(gvm_policy::Diagnostic),
}

impl DaemonConfig {
    /// Loads `<config-dir>/gvmd.toml`; a missing file gives the defaults.
    pub fn load(file: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DaemonConfig::default()),
            Err(source) => return Err(ConfigError::Read { path: file.to_owned(), source }),
        };
        let config: DaemonConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Invalid(gvm_policy::Diagnostic::from_toml_error(file, &text, &e)))?;
        if config.audit.checkpoint_every == 0 {
            let offset = text.find("checkpoint_every").unwrap_or(0);
            let (line, column) = gvm_policy::line_col(&text, offset);
            return Err(ConfigError::Invalid(gvm_policy::Diagnostic {
                file: file.to_owned(),
                line: Some(line),
                column: Some(column),
                field: Some("audit.checkpoint_every".into()),
                message: "must be at least 1".into(),
                fix: Some("use a number of events such as 1000, or remove the line for the default".into()),
            }));
        }
        if let Some(url) = &config.notify.webhook {
            if let Err(message) = crate::approvals::notify::WebhookUrl::parse(url) {
                return Err(invalid(
                    file,
                    &text,
                    "webhook",
                    "notify.webhook",
                    message,
                    "write the URL of your ntfy topic or Matrix hook, e.g. webhook = \"https://ntfy.example/gvm\"",
                ));
            }
        }
        for (host, models) in &config.prices {
            if let Err(e) = gvm_policy::Host::parse(host) {
                return Err(invalid(
                    file,
                    &text,
                    host,
                    &format!("prices.\"{host}\""),
                    e.to_string(),
                    "write the API's host name, e.g. [prices.\"api.openai.com\"]",
                ));
            }
            if models.is_empty() {
                return Err(invalid(
                    file,
                    &text,
                    host,
                    &format!("prices.\"{host}\""),
                    "no model is priced".into(),
                    "add \"MODEL\" = { input = 2.5, output = 10.0 } (per million tokens), or remove the table",
                ));
            }
            for (model, p) in models {
                if !(p.input.is_finite() && p.output.is_finite() && p.input >= 0.0 && p.output >= 0.0) {
                    return Err(invalid(
                        file,
                        &text,
                        model,
                        &format!("prices.\"{host}\".\"{model}\""),
                        "a price must be a number of 0 or more".into(),
                        "write { input = 2.5, output = 10.0 }: the price of a million tokens each way",
                    ));
                }
            }
        }
        for (name, value) in &config.notify.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err() {
                return Err(invalid(
                    file,
                    &text,
                    name,
                    &format!("notify.headers.{name}"),
                    "not a valid HTTP header name and value".into(),
                    "write headers = { Authorization = \"Bearer TOKEN\" }",
                ));
            }
        }
        Ok(config)
    }
}

/// A diagnostic at the first place `needle` appears in `text`.
fn invalid(file: &Path, text: &str, needle: &str, field: &str, message: String, fix: &str) -> ConfigError {
    let offset = text.find(needle).unwrap_or(0);
    let (line, column) = gvm_policy::line_col(text, offset);
    ConfigError::Invalid(gvm_policy::Diagnostic {
        file: file.to_owned(),
        line: Some(line),
        column: Some(column),
        field: Some(field.into()),
        message,
        fix: Some(fix.into()),
    })
}

mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        gvm_policy::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gvmd.toml");
        std::fs::write(&file, "[prices.\"API.openai.com\"]\n\"gpt-4o\" = { input = 2.5, output = 10.0 }\n").unwrap();
        let c = DaemonConfig::load(&file).unwrap();
        let p = c.gateway_prices();
        assert_eq!(p["api.openai.com"]["gpt-4o"], gvm_gateway::Price { input: 2.5, output: 10.0 });
        std::fs::write(&file, "[prices.\"api.openai.com\"]\n\"gpt-4o\" = { input = -1.0, output = 10.0 }\n").unwrap();
        let e = DaemonConfig::load(&file).unwrap_err().to_string();
        assert!(
            e.contains(":2:2: `prices.\"api.openai.com\".\"gpt-4o\"`: a price must be a number of 0 or more"),
            "{e}"
        );
    }

    #[test]
    fn a_host_listener_names_a_valid_profile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gvmd.toml");
        std::fs::write(&file, "[gateway.listen]\ndev = \"127.0.0.1:3128\"\n").unwrap();
        let c = DaemonConfig::load(&file).unwrap();
        assert_eq!(c.gateway.listen.keys().map(|p| p.as_str()).collect::<Vec<_>>(), ["dev"]);
        std::fs::write(&file, "[gateway.listen]\n\"Dev/x\" = \"127.0.0.1:3128\"\n").unwrap();
        let err = DaemonConfig::load(&file).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:2:", file.display())) && err.contains("not a valid profile name"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = DaemonConfig::load(&dir.path().join("gvmd.toml")).unwrap();
        assert_eq!(c.audit.checkpoint_every, 1000);
        assert_eq!(c.audit.checkpoint_interval, Duration::from_secs(10));
    }

    #[test]
    fn unknown_field_names_file_line_column() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gvmd.toml");
        std::fs::write(&file, "[audit]\ncheckpoint_every = 5\ncheckpoint_intervall = \"5s\"\n").unwrap();
        let err = DaemonConfig::load(&file).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:3:1", file.display())), "{err}");
        assert!(err.contains("checkpoint_interval"), "{err}");
        std::fs::write(&file, "[audit]\nsync = \"sometimes\"\n").unwrap();
        let err = DaemonConfig::load(&file).unwrap_err().to_string();
        assert!(err.contains("`audit.sync`") && err.contains("full, normal"), "{err}");
    }

    #[test]
    fn audit_sync_defaults_to_normal() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gvmd.toml");
        std::fs::write(&file, "[audit]\ncheckpoint_every = 5\n").unwrap();
        assert_eq!(DaemonConfig::load(&file).unwrap().audit.sync, SyncMode::Normal);
        std::fs::write(&file, "[audit]\nsync = \"full\"\n").unwrap();
        assert_eq!(DaemonConfig::load(&file).unwrap().audit.sync, SyncMode::Full);
        assert_eq!(AuditSection::default().sync, SyncMode::Normal);
    }

    #[test]
    fn notify_webhook_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gvmd.toml");
        std::fs::write(&file, "[audit]\nsync = \"full\"\n[notify]\nwebhook = \"http://hooks.example/x\"\n").unwrap();
        let err = DaemonConfig::load(&file).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:4:1", file.display())), "{err}");
        assert!(err.contains("notify.webhook") && err.contains("loopback"), "{err}");
        std::fs::write(
            &file,
            "[notify]\nwebhook = \"https://ntfy.example/\"\nheaders = { Authorization = \"Bearer x\" }\n",
        )
        .unwrap();
        let c = DaemonConfig::load(&file).unwrap();
        assert_eq!(c.notify.headers["Authorization"], "Bearer x");
        assert_eq!(c.notify.topic, "gvm");
    }

    #[test]
    fn parses_gateway_hosts_and_durations() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gvmd.toml");
        std::fs::write(
            &file,
            "[audit]\ncheckpoint_interval = \"2m\"\n[gateway]\nextra_roots = [\"/etc/gvm/roots/test.pem\"]\n[gateway.hosts]\n\"api.test.example\" = [\"127.0.0.1\"]\n",
        )
        .unwrap();
        let c = DaemonConfig::load(&file).unwrap();
        assert_eq!(c.audit.checkpoint_interval, Duration::from_secs(120));
        assert_eq!(c.gateway.hosts["api.test.example"], vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    }
}
