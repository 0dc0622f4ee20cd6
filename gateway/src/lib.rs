//! gvm's egress gateway: the only way out of an agent's network namespace.
//!
//! Each profile gets listeners that gvmd opens inside the agent's netns; the listener a
//! connection arrived on *is* its identity (the `profile` given to `serve_*`), never
//! anything the client says (docs/attacks.md class 7).
//!
//! * [`Gateway::serve_proxy`]: HTTP/1.1 forward proxy — absolute-form requests and
//!   CONNECT. A CONNECT whose host only has host/port rules is decided once and spliced
//!   (after checking that its TLS SNI names the same host, or that plain HTTP inside
//!   names it); a host whose rules look at method, path or inject a header is
//!   intercepted with a leaf certificate minted from gvmd's CA.
//! * [`Gateway::serve_transparent`]: connections nft redirected; the port comes from
//!   `SO_ORIGINAL_DST`, the name from TLS SNI or the Host header. No name → denied.
//!   The upstream address is always the gateway's own resolution of that name, never
//!   the address the agent dialled.
//! * [`Gateway::serve_dns`]: answers from policy only; never forwards a query.
//!
//! Every request passes the same pipeline (`proxy.rs`): refuse ambiguity → decide →
//! hold → rate → resolve + SSRF check → audit event committed → forward. Whatever fails
//! before forwarding refuses the request (403/421/400, 503 when the audit store fails).
//!
//! **Audit records.** One *decision* event per request (kind `http`, `connect` or
//! `dns`), appended and awaited before anything is forwarded or answered: the decision
//! is never lost. For forwarded requests and tunnels a *completion* event
//! (`http_done` / `connect_done`, `details.decision_seq` pointing at the decision)
//! follows when the exchange ends, with status, bytes up/down and duration. It is
//! queued with `Audit::append_nowait`, not awaited (it would add a disk flush to every
//! response): it is committed together with the next decision, or at most 50 ms later,
//! so a crash mid-exchange or just after it can lose the completion, never the decision.
//!
//! **HTTP/2 to the agent is not offered** (ALPN advertises only `http/1.1`): every
//! agent HTTP client speaks HTTP/1.1 through a proxy, and one HTTP/1 parser keeps the
//! ambiguity checks (Host vs :authority, CONNECT inside streams) in one place. Upstream
//! connections are HTTP/1.1 too, pooled per (profile, host, port, checked address).
//!
//! DNS AAAA queries for allowed names get an empty NOERROR answer (when `answer_addr`
//! is IPv4): clients fall back to the A record, and IPv6 beyond gvmd is dropped in the
//! netns anyway.
//!
//! Trusts: gvm-policy for decisions, gvm-audit for durability, the files in `ca_dir`.
//! Must never: forward anything it has not recorded, connect to an address it has not
//! checked, or let an agent reach gvmd's own sockets through it.

mod accept;
mod agents;
mod answer;
mod audit_glue;
mod body;
mod body_swap;
mod budget;
mod ca;
mod decide;
mod dns;
mod dnswire;
mod exfil;
mod head;
mod holds;
mod limit;
mod mcp;
mod pipeline;
mod placeholder;
mod rate;
mod resolve;
mod spend;
mod stream;
mod transparent;
mod tunnel;
mod upstream;
mod usage;

/// The parsers of untrusted input, for the cargo-fuzz targets in `fuzz/` only.
#[cfg(feature = "fuzz")]
#[doc(hidden)]
pub mod fuzz_api {
    use gvm_policy::Host;

    /// `host[:port]` as in a CONNECT target, an absolute-form URL or a Host header.
    pub fn split_authority(s: &str) -> Result<(Host, Option<u16>), String> {
        crate::head::split_authority(s)
    }

    /// The checks on a request head before it is decided (method case, framing).
    pub fn check_head(method: &http::Method, headers: &http::HeaderMap) -> Result<(), String> {
        crate::head::check_method(method)?;
        crate::head::check_framing(headers)
    }

    /// A DNS query: `(id, name, qtype)`, or the id to answer FORMERR to.
    pub fn dns_parse(b: &[u8]) -> Result<(u16, String, u16), Option<u16>> {
        crate::dnswire::parse_query(b).map(|q| (q.id, q.name, q.qtype))
    }

    /// The answer gvmd would send to the query `b` (which must parse), with one A
    /// record when `addr` is given.
    pub fn dns_answer(b: &[u8], addr: Option<[u8; 4]>) -> Vec<u8> {
        let q = crate::dnswire::parse_query(b).expect("dns_answer needs a query that parses");
        let rcode = if addr.is_some() { crate::dnswire::RCODE_NOERROR } else { crate::dnswire::RCODE_NXDOMAIN };
        crate::dnswire::answer(b, &q, rcode, addr.as_ref().map(|a| &a[..]))
    }

    /// The exfiltration scanner (values → forms → automaton), for the property that a
    /// stream in any chunking finds exactly what one scan of the whole finds.
    pub use crate::exfil::{forms, Encoding, Hit, Needle, NeedleKind, Scanner, Stream};
    pub use crate::mcp::{
        check as mcp_check, filter_list as mcp_filter_list, parse as mcp_parse, Message as McpMessage,
        Parsed as McpParsed,
    };

    /// The server_name of a TLS ClientHello record.
    pub fn client_hello_sni(rec: &[u8]) -> Option<String> {
        crate::stream::client_hello_sni(rec)
    }
}

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

pub use agents::AgentDialer;
pub use holds::{HeldInfo, HeldRequest, HoldEnd, HoldError, HoldSink};
pub use resolve::{is_internal, ResolveError};
pub use spend::{BudgetNotice, BudgetSink, SpendStore, SpendStoreError, NOTICE_AT};
pub use transparent::OriginalDst;
pub use usage::{Price, Prices, MAX_TAP, UNREAD_TOKENS};

/// The JSON-RPC reader of MCP-aware rules, for benchmarks (`gateway/benches/mcp.rs`).
pub mod mcp_rpc {
    pub use crate::mcp::{check, filter_list, parse, Message, Parsed, Refused, MAX_BODY};
}

/// The scanner, for benchmarks and tools (`gateway/benches`).
pub mod scan {
    pub use crate::body_swap::BodySwap;
    pub use crate::exfil::{forms, Encoding, Hit, Needle, NeedleKind, Scanner, Stream, MIN_VALUE_LEN};
}

use crate::decide::ProfileState;

/// How often budget spend is written behind to its store (the crash window).
const SPEND_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes the spend charged since the last write, off the async threads.
async fn flush_spend(inner: Arc<Inner>) {
    let Some(store) = inner.spend_store.get().cloned() else { return };
    let _ = tokio::task::spawn_blocking(move || inner.spend.flush(&store)).await;
}

/// How the gateway is set up.
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// `<state>/ca`: `ca.key` (0600) and `ca.pem`, created on first use.
    pub ca_dir: PathBuf,
    /// PEM files trusted for upstream TLS besides the system roots
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    pub extra_roots: Vec<PathBuf>,
    /// Name → addresses override. Trusted by the SSRF check: the admin wrote them.
    pub static_hosts: HashMap<String, Vec<IpAddr>>,
    /// gvmd's descriptor limit, shared out among the profiles' connections (less a
    /// reserve for gvmd itself). `None`: this process's `RLIMIT_NOFILE` soft limit.
    pub fd_limit: Option<usize>,
}

/// This process's soft `RLIMIT_NOFILE`, from `/proc/self/limits` (1024 when unreadable).
fn nofile_soft_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("Max open files"))?;
            line["Max open files".len()..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(1024)
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot {what} {path}")]
    Ca {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Box<std::io::Error>,
    },
    #[error("{path} is readable by others (mode {mode:o}); run `chmod 600 {path}` — the interception CA key must stay private")]
    CaKeyMode { path: PathBuf, mode: u32 },
    #[error("{path}: not a usable CA key ({reason}); move it away to let gvmd create a new CA (agents must then trust the new ca.pem)")]
    CaKey { path: PathBuf, reason: String },
    #[error("cannot mint a certificate for `{host}`: {reason}")]
    Mint { host: String, reason: String },
    #[error("extra root {path}: {reason}; `extra_roots` must list PEM certificate files")]
    Roots { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
}

pub(crate) struct Inner {
    profiles: RwLock<HashMap<String, Arc<ProfileState>>>,
    audit: gvm_audit::Audit,
    ca: ca::CertAuthority,
    server_cfgs: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
    resolver: resolve::Resolver,
    upstreams: Arc<upstream::Upstreams>,
    holds: holds::Holds,
    rate: rate::RateLimiter,
    /// Spend against `[budget]` and rules' `budget`.
    spend: spend::Spend,
    /// Where spend is kept across restarts ([`Gateway::open_spend`]).
    spend_store: std::sync::OnceLock<Arc<spend::SpendStore>>,
    /// Who hears of budgets crossing 80 % besides journald.
    budget_sink: RwLock<Option<Arc<dyn spend::BudgetSink>>>,
    /// `[prices]` of gvmd.toml: responses from these hosts are charged their LLM usage.
    prices: RwLock<Arc<usage::Prices>>,
    conns: limit::ConnLimits,
    budgets: Arc<budget::Budgets>,
    /// Profile → secret → placeholder (`placeholder.rs`; kept across restarts with
    /// [`Gateway::open_placeholders`]).
    placeholders: placeholder::Placeholders,
    /// Profile → values of its `deny_read` files ([`Gateway::set_file_values`]).
    file_values: Mutex<HashMap<String, Arc<Vec<FileValue>>>>,
    /// The task writing folded counts, started with the first listener.
    folder: std::sync::OnceLock<()>,
}

impl Inner {
    /// A budget crossed 80 %: a journald NOTICE (tracing's INFO level), then the sink.
    pub(crate) fn budget_notice(&self, n: &BudgetNotice) {
        tracing::info!(
            gvm_profile = %n.profile,
            gvm_budget = %n.budget,
            "budget {} of profile {} is at {} of {} {} per {} (80 % crossed); it resets {}",
            n.budget, n.profile, n.spent, n.limit, n.of, n.per, n.resets_at
        );
        let sink = self.budget_sink.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(sink) = sink {
            sink.budget_notice(n);
        }
    }

    /// A place for one more connection of `profile` on `listener`, or `None` (counted
    /// in a `limits_exceeded` event): the caller closes the connection.
    pub(crate) fn admit_connection(&self, profile: &Arc<str>, listener: &'static str) -> Option<limit::Slot> {
        match self.conns.admit(profile) {
            Ok(slot) => Some(slot),
            Err(cap) => {
                self.budgets.connection_refused(profile, listener, cap);
                None
            }
        }
    }

    /// Recomputes every profile's connection ceiling (profiles came or went).
    fn share_descriptors(&self) {
        let wanted: Vec<(Arc<str>, usize)> = self
            .profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|p| (p.name.clone(), p.limits.connections as usize))
            .collect();
        self.conns.set_caps(&wanted);
    }

    /// Starts the task that writes folded counts every tick (once; needs a runtime).
    fn start_folder(self: &Arc<Self>) {
        self.folder.get_or_init(|| {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(budget::FOLD_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.flush_folds().await;
                }
            });
        });
    }

    /// Writes what folded since the last tick.
    async fn flush_folds(&self) {
        for p in self.budgets.take_pending() {
            let ev = gvm_audit::EventRef {
                profile: Some(&p.profile),
                kind: &p.kind,
                decision: Some(&p.decision),
                rule: p.rule.as_deref(),
                details: &p.details,
            };
            if let Err(e) = audit_glue::append_ref(&self.audit, ev).await {
                tracing::warn!(gvm_profile = %p.profile, "a folded count was not recorded: {e}");
            }
        }
    }

    pub(crate) fn profile(&self, name: &str) -> Option<Arc<ProfileState>> {
        self.profiles.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// The TLS server config presenting a leaf for `host` (cached with the leaf).
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, GatewayError> {
        if let Some(c) = self.server_cfgs.lock().unwrap_or_else(|e| e.into_inner()).get(host) {
            return Ok(c.clone());
        }
        let ck = self.ca.leaf(host)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| GatewayError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(ck)));
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        let mut map = self.server_cfgs.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 4096 {
            map.clear();
        }
        map.insert(host.to_string(), cfg.clone());
        Ok(cfg)
    }
}

/// Reads one secret: a file (trailing newline dropped) or a systemd credential.
fn load_secret(src: &gvm_policy::SecretSource) -> Result<String, String> {
    let path = match src {
        gvm_policy::SecretSource::File(p) => p.clone(),
        gvm_policy::SecretSource::Credential(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => PathBuf::from(dir).join(name),
            None => {
                return Err(format!(
                    "credential `{name}`: gvmd has no CREDENTIALS_DIRECTORY (set LoadCredential= in gvmd.service)"
                ))
            }
        },
    };
    let mut v = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    while v.ends_with('\n') || v.ends_with('\r') {
        v.pop();
    }
    Ok(v)
}

/// A value the scan looks for, read from a file the profile masks (`deny_read`).
#[derive(Clone)]
pub struct FileValue {
    /// What a refusal names: `.env value DB_PASSWORD from /ws/.env`.
    pub label: String,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for FileValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileValue").field("label", &self.label).finish_non_exhaustive()
    }
}

/// The values of a masked file's text: each `KEY=VALUE` line's value (an `export `
/// prefix and one pair of matching quotes removed), and each whole non-empty line.
/// Values shorter than [`scan::MIN_VALUE_LEN`] are counted in the second result, not
/// returned. `path` names the file in labels. The values of keys in `ignore`
/// (`[files] scan_ignore`) are left out; their whole lines are not.
pub fn file_values(path: &std::path::Path, text: &[u8], ignore: &[String]) -> (Vec<FileValue>, usize) {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out: Vec<FileValue> = Vec::new();
    let mut short = 0;
    let mut push = |label: String, v: &[u8]| {
        if v.is_empty() {
            return;
        }
        if v.len() < exfil::MIN_VALUE_LEN {
            short += 1;
        } else if !out.iter().any(|o| o.value == v) {
            out.push(FileValue { label, value: v.to_vec() });
        }
    };
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let kv = line.strip_prefix(b"export ").unwrap_or(line);
        if let Some(eq) = kv.iter().position(|b| *b == b'=') {
            let key = kv[..eq].trim_ascii();
            if !key.is_empty()
                && key.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.' || *b == b'-')
            {
                let mut v = kv[eq + 1..].trim_ascii();
                if v.len() >= 2 && (v[0] == b'"' || v[0] == b'\'') && v[v.len() - 1] == v[0] {
                    v = &v[1..v.len() - 1];
                }
                let key = String::from_utf8_lossy(key);
                if !ignore.iter().any(|k| *k == key) {
                    push(format!("{file} value {key} from {}", path.display()), v);
                }
            }
        }
        push(format!("line {} of {}", i + 1, path.display()), line);
    }
    (out, short)
}

/// The profile's scan: secret values, placeholders, file values.
fn compile_scan(state: &ProfileState, files: &[FileValue]) -> Option<Arc<exfil::Scanner>> {
    use exfil::{Needle, NeedleKind};
    let mut needles = Vec::new();
    for (name, value) in &state.secrets {
        let secret: Arc<str> = Arc::from(name.as_str());
        if let Ok(v) = value {
            needles.push(Needle {
                kind: NeedleKind::Secret,
                label: Arc::from(format!("secret {name}")),
                secret: Some(secret.clone()),
                value: v.as_bytes().to_vec(),
            });
        }
        if let Some(p) = state.placeholders.get(name) {
            needles.push(Needle {
                kind: NeedleKind::Placeholder,
                label: Arc::from(format!("placeholder of secret {name}")),
                secret: Some(secret),
                value: p.as_bytes().to_vec(),
            });
        }
    }
    for f in files {
        needles.push(Needle {
            kind: NeedleKind::File,
            label: Arc::from(f.label.as_str()),
            secret: None,
            value: f.value.clone(),
        });
    }
    exfil::Scanner::new(needles).map(Arc::new)
}

/// Presents one certificate whatever the client asks (the SNI was checked before).
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// Loads (or creates) the CA and the upstream trust store.
    pub fn new(cfg: GatewayConfig, audit: gvm_audit::Audit) -> Result<Gateway, GatewayError> {
        let ca = ca::CertAuthority::load_or_create(&cfg.ca_dir)?;
        let client = upstream::client_config(&cfg.extra_roots)?;
        Ok(Gateway {
            inner: Arc::new(Inner {
                profiles: RwLock::new(HashMap::new()),
                audit,
                ca,
                server_cfgs: Mutex::new(HashMap::new()),
                resolver: resolve::Resolver::new(&cfg.static_hosts),
                upstreams: Arc::new(upstream::Upstreams::new(client)),
                holds: holds::Holds::default(),
                rate: rate::RateLimiter::default(),
                spend: spend::Spend::default(),
                spend_store: std::sync::OnceLock::new(),
                budget_sink: RwLock::new(None),
                prices: RwLock::default(),
                conns: limit::ConnLimits::new(cfg.fd_limit.unwrap_or_else(nofile_soft_limit)),
                budgets: Arc::default(),
                placeholders: placeholder::Placeholders::default(),
                file_values: Mutex::default(),
                folder: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Puts a profile's policy in force; the next request uses it. Reads the secrets
    /// its injections need (a secret that cannot be read makes those rules deny; gvmd
    /// refuses such a profile before it gets here) and compiles the exfiltration scan:
    /// the secrets' values, their placeholders and the profile's `deny_read` file values.
    pub fn set_profile(&self, profile: &gvm_policy::Profile) {
        let name: Arc<str> = Arc::from(profile.name.as_str());
        let secrets: HashMap<String, Result<String, String>> =
            profile.secrets.iter().map(|(k, src)| (k.clone(), load_secret(src))).collect();
        self.inner.budgets.set_limits(&name, profile.limits);
        let body = self.inner.budgets.body(&name);
        let placeholders = self.inner.placeholders.of(&name, profile.secrets.keys().cloned(), Some(&secrets));
        let bound = profile.secret_use.iter().map(|(k, u)| (k.clone(), u.hosts.clone())).collect();
        let mut state = ProfileState {
            name: name.clone(),
            policy: profile.compiled.clone(),
            version: Arc::from(profile.version.as_str()),
            secrets,
            limits: profile.limits,
            budget: profile.budget,
            rule_budgets: profile.network.rules.iter().map(|r| r.budget).collect(),
            rule_costs: profile.network.rules.iter().map(|r| r.cost).collect(),
            rule_tunnel: profile.network.rules.iter().map(|r| !r.intercept).collect(),
            rule_keys: spend::rule_keys(&profile.network.rules),
            rule_names: profile
                .network
                .rules
                .iter()
                .map(|r| Arc::from(format!("network.rule[{}] ({}:{})", r.index, profile.file.display(), r.line)))
                .collect(),
            body,
            scan: None,
            bound,
            placeholders,
            body_secrets: profile.secret_use.iter().filter(|(_, u)| u.body).map(|(k, _)| k.clone()).collect(),
            ingress: Arc::new(profile.ingress.clone()),
            file: Arc::from(profile.file.as_path()),
        };
        let moves: Vec<(String, String)> = (state.rule_budgets.iter().enumerate())
            .filter(|(_, b)| b.is_some())
            .map(|(i, _)| (format!("network.rule[{i}]"), state.rule_keys[i].clone()))
            .collect();
        self.inner.spend.adopt_positions(&name, &moves);
        let files = self.inner.file_values.lock().unwrap_or_else(|e| e.into_inner()).get(&*name).cloned();
        state.scan = compile_scan(&state, files.as_deref().map_or(&[][..], Vec::as_slice));
        self.inner.profiles.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), Arc::new(state));
        self.inner.rate.forget(&name);
        self.inner.upstreams.forget(&name);
        self.inner.share_descriptors();
    }

    /// Keeps secret placeholders in `path` (gvmd: `<state>/placeholders.json`, 0600)
    /// so that they survive a gvmd restart; call before the first profile is set.
    pub fn open_placeholders(&self, path: &std::path::Path) {
        self.inner.placeholders.open(path);
    }

    /// What the agent's environment gets for `profile`'s secrets: `[secrets.NAME] env`
    /// set to the secret's placeholder, never its value.
    pub fn agent_env(&self, profile: &gvm_policy::Profile) -> Vec<(String, String)> {
        let placeholders = self.inner.placeholders.of(profile.name.as_str(), profile.secrets.keys().cloned(), None);
        profile.secret_use.iter().filter_map(|(k, u)| Some((u.env.clone()?, placeholders.get(k)?.clone()))).collect()
    }

    /// Sets the values of `profile`'s `deny_read` files the scan looks for (gvmd reads
    /// them on load, reload and prepare) and recompiles the profile's scan.
    pub fn set_file_values(&self, profile: &str, values: Vec<FileValue>) {
        let values = Arc::new(values);
        self.inner.file_values.lock().unwrap_or_else(|e| e.into_inner()).insert(profile.to_string(), values.clone());
        let mut map = self.inner.profiles.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = map.get(profile) {
            let mut state = (**old).clone();
            state.scan = compile_scan(&state, &values);
            map.insert(profile.to_string(), Arc::new(state));
        }
    }

    /// Takes a profile out: its listeners refuse everything from now on.
    pub fn remove_profile(&self, name: &str) {
        self.inner.profiles.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.inner.placeholders.remove(name);
        self.inner.rate.forget(name);
        self.inner.upstreams.forget(name);
        self.inner.share_descriptors();
    }

    /// How many connections `profile` may hold open now (its `[limits] connections`,
    /// or its share of gvmd's descriptors when that is smaller).
    pub fn connections_cap(&self, profile: &str) -> usize {
        self.inner.conns.cap(profile)
    }

    /// Why `profile` is noisy (hit a limit, or many refusals folded), if it is.
    pub fn noisy(&self, profile: &str) -> Option<gvm_api::Noisy> {
        self.inner.budgets.noisy(profile)
    }

    /// The prices of LLM hosts (`[prices]` in gvmd.toml): a response from one of these
    /// hosts is charged its token usage to the request's money budgets (`usage.rs`).
    pub fn set_prices(&self, prices: Prices) {
        *self.inner.prices.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(prices);
    }

    /// Who hears of a budget crossing 80 % besides journald (gvmd: its webhook).
    pub fn set_budget_sink(&self, sink: Arc<dyn BudgetSink>) {
        *self.inner.budget_sink.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// What each of `profile`'s budgets has spent in its current period.
    pub fn budgets(&self, profile: &str) -> Vec<gvm_api::BudgetStatus> {
        let Some(state) = self.inner.profiles.read().unwrap_or_else(|e| e.into_inner()).get(profile).cloned() else {
            return Vec::new();
        };
        let all = state.all_budgets();
        let now = time::OffsetDateTime::now_utc();
        let report = self.inner.spend.report(profile, &all, now);
        all.into_iter()
            .zip(report)
            .map(|(a, (spent, resets_at))| gvm_api::BudgetStatus {
                budget: a.name,
                per: a.budget.per.as_str().into(),
                on_exhausted: match a.budget.on_exhausted {
                    gvm_policy::OnExhausted::Deny => "deny".into(),
                    gvm_policy::OnExhausted::Hold => "hold".into(),
                },
                requests: a.budget.requests,
                requests_spent: spent.requests,
                money: a.budget.money.map(gvm_policy::Money::as_f64),
                money_spent: spent.money.as_f64(),
                resets_at: resets_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            })
            .collect()
    }

    /// Writes the folded counts and `limits_exceeded` events waiting for the next tick
    /// (gvmd calls it before it closes the audit store).
    pub async fn flush(&self) {
        self.inner.flush_folds().await;
        self.flush_spend().await;
    }

    /// Writes budget spend charged since the last write to the store, if there is one.
    async fn flush_spend(&self) {
        flush_spend(self.inner.clone()).await;
    }

    /// Keeps budget spend in the SQLite file at `path` (gvmd: `<state>/spend.db`):
    /// loads what the current periods have spent, then writes new charges behind, every
    /// second and on [`Gateway::flush`]. Call once, before serving; needs a Tokio runtime.
    pub fn open_spend(&self, path: &std::path::Path) -> Result<(), SpendStoreError> {
        let store = Arc::new(spend::SpendStore::open(path)?);
        self.inner.spend.load_from(&store)?;
        if self.inner.spend_store.set(store).is_err() {
            return Ok(()); // already open: the first store stays
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SPEND_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Ends with the gateway.
                let Some(inner) = weak.upgrade() else { return };
                flush_spend(inner).await;
            }
        });
        Ok(())
    }

    /// The explicit proxy on `listener` for `profile`.
    pub fn serve_proxy(&self, listener: TcpListener, profile: &gvm_api::ProfileName) -> JoinHandle<()> {
        let inner = self.inner.clone();
        inner.start_folder();
        tokio::spawn(accept::serve(inner, listener, Arc::from(profile.as_str()), accept::Door::Proxy))
    }

    /// The transparent listener (connections redirected by nft) for `profile`.
    pub fn serve_transparent(&self, listener: TcpListener, profile: &gvm_api::ProfileName) -> JoinHandle<()> {
        self.serve_transparent_with(listener, profile, OriginalDst::SoOriginalDst)
    }

    /// [`serve_transparent`](Self::serve_transparent) with another source for the
    /// original destination (tests: a fixed address, since nft is not available).
    pub fn serve_transparent_with(
        &self,
        listener: TcpListener,
        profile: &gvm_api::ProfileName,
        dst: OriginalDst,
    ) -> JoinHandle<()> {
        let inner = self.inner.clone();
        inner.start_folder();
        tokio::spawn(accept::serve(inner, listener, Arc::from(profile.as_str()), accept::Door::Transparent(dst)))
    }

    /// The DNS resolver (UDP and TCP) for `profile`; allowed names resolve to
    /// `answer_addr`, the gateway's address inside the agent's netns.
    pub fn serve_dns(
        &self,
        udp: UdpSocket,
        tcp: TcpListener,
        profile: &gvm_api::ProfileName,
        answer_addr: IpAddr,
    ) -> JoinHandle<()> {
        let inner = self.inner.clone();
        inner.start_folder();
        tokio::spawn(dns::serve(inner, udp, tcp, Arc::from(profile.as_str()), answer_addr))
    }

    /// How calls of `agent.<name>` reach the called agent (gvmd: a socket opened inside
    /// its netns). Without one, every such call is answered 502.
    pub fn set_agent_dialer(&self, dialer: std::sync::Arc<dyn AgentDialer>) {
        self.inner.upstreams.set_dialer(dialer);
    }

    /// Requests waiting for a human, oldest first.
    pub fn holds(&self) -> Vec<HeldRequest> {
        self.inner.holds.list()
    }

    /// Where held requests are recorded and numbered (gvmd's approval queue). Set it
    /// before the first listener; without one, ids come from a counter in memory.
    pub fn set_hold_sink(&self, sink: Arc<dyn HoldSink>) {
        self.inner.holds.set_sink(sink);
    }

    /// Approves (forwards) or denies a held request.
    pub fn resolve_hold(&self, id: u64, approve: bool) -> Result<(), HoldError> {
        self.inner.holds.resolve(id, approve)
    }

    /// The TLS client settings the gateway uses upstream (system roots and
    /// `extra_roots`), for other outgoing HTTPS of gvmd (the approval webhook).
    pub fn client_tls(extra_roots: &[PathBuf]) -> Result<rustls::ClientConfig, GatewayError> {
        upstream::client_config(extra_roots)
    }

    /// The CA certificate agents must trust, PEM.
    pub fn ca_pem(&self) -> String {
        self.inner.ca.ca_pem().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::file_values;

    #[test]
    fn dotenv_values_and_whole_lines_are_taken_short_ones_counted() {
        let text = b"# comment\nexport API_KEY=\"quoted-value-1\"\nDB_PASSWORD='single-quoted'\nPLAIN=plainvalue99\nTINY=abc\n\n-----BEGIN KEY-----\n";
        let (v, short) = file_values(std::path::Path::new("/ws/.env"), text, &[]);
        let got: Vec<(&str, &[u8])> = v.iter().map(|f| (f.label.as_str(), f.value.as_slice())).collect();
        assert!(got.contains(&(".env value API_KEY from /ws/.env", b"quoted-value-1".as_slice())), "{got:?}");
        assert!(got.contains(&(".env value DB_PASSWORD from /ws/.env", b"single-quoted".as_slice())), "{got:?}");
        assert!(got.contains(&(".env value PLAIN from /ws/.env", b"plainvalue99".as_slice())), "{got:?}");
        assert!(got.contains(&("line 2 of /ws/.env", b"export API_KEY=\"quoted-value-1\"".as_slice())), "{got:?}");
        assert!(got.contains(&("line 7 of /ws/.env", b"-----BEGIN KEY-----".as_slice())), "{got:?}");
        assert!(!got.iter().any(|(_, v)| v.starts_with(b"# comment")), "comments are skipped");
        assert_eq!(short, 1, "TINY=abc: `abc` is too short (the line itself is 8 bytes and kept)");
        assert!(got.iter().any(|(_, v)| *v == b"TINY=abc"));
    }
}
