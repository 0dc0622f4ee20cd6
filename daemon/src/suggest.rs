//! `gvmctl suggest`: from what an agent was seen doing to the smallest profile change
//! that allows it. Pure: audit events and a profile's text in, rules, flags and the new
//! text out; no I/O, the clock passed in. gvmd reads the events and writes the file
//! (`crate::api::suggest`).
//!
//! How requests become rules (ARCHITECTURE.md, "Suggestions"):
//!
//! * only requests the profile's **default** decided count: one a rule allowed needs
//!   nothing, one a deny or hold rule decided is a choice someone wrote down, which a
//!   suggestion must not undo (it is flagged instead);
//! * one rule per host, port and generalised path, with the methods seen on it and
//!   always the port (the narrowest rule that still covers every port seen);
//! * a path segment that looks like an id ([`is_id`]) becomes `*`; when
//!   [`SIBLINGS`] or more distinct segments sit under one prefix, the prefix becomes
//!   `/prefix/**`;
//! * never a rule for a raw IP address, a single-label host (a top-level domain, or
//!   `localhost`), or a host seen exactly once with an upload of [`LARGE_UPLOAD`] or
//!   more (bytes sent, from its `http_done`/`connect_done` event): those look like
//!   exfiltration and are flagged for a human as comments. Hosts seen only in DNS
//!   queries are listed as comments too;
//! * every rule is checked against the rebuilt profile: each request it claims to
//!   cover must now be allowed, or the rule is dropped and flagged.
//!
//! What it must never do: write a rule with host `*` or a wildcard host, or allow a
//! request a deny rule denies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::SystemTime;

use gvm_api::suggest::{FileSuggestion, Flagged, SuggestedRule};
use gvm_api::{AuditEvent, Decision, EventKind};
use gvm_policy::{CompiledPolicy, ConnectPlan, Host, Request, Scheme, Verdict};

/// Distinct sibling segments under one prefix from which the prefix becomes `/prefix/**`.
pub const SIBLINGS: usize = 5;
/// Bytes sent in one request from which a host seen exactly once is flagged.
pub const LARGE_UPLOAD: u64 = 256 * 1024;

/// What went wrong; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    #[error("{path} is not TOML that can be edited: {reason}")]
    Edit { path: String, reason: String },
    #[error("with the suggested rules {path} would not load: {diagnostic}")]
    Invalid { path: String, diagnostic: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    host: String,
    port: u16,
    https: bool,
    /// `CONNECT` for a tunnel decided at host level.
    method: String,
    path: String,
}

#[derive(Debug, Default, Clone, Copy)]
struct HostSeen {
    requests: u64,
    max_up: u64,
}

/// Everything of a window that matters, folded as events are read (so 100,000 events
/// cost a hash-map update each).
#[derive(Debug, Default)]
pub struct Observations {
    requests: HashMap<Key, u64>,
    hosts: HashMap<String, HostSeen>,
    dns: BTreeMap<String, u64>,
    /// Requests the gateway's SSRF check refused, by host.
    ssrf: BTreeMap<String, u64>,
    /// Network decisions read, folded repeats counted.
    pub decisions: u64,
    /// New files of the agent (workspace-relative), for `[files]` suggestions.
    files: Vec<String>,
    /// Host of each forwarding decision, by seq: a completion record (`http_done`)
    /// names its decision by `decision_seq`, not by host.
    host_of_seq: HashMap<u64, String>,
    /// Bytes sent by completion records read before their decision, by decision seq.
    up_of_seq: HashMap<u64, u64>,
}

impl Observations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one audit event into account (other kinds are ignored).
    pub fn add(&mut self, ev: &AuditEvent) {
        let d = &ev.details;
        let s = |k: &str| d.get(k).and_then(serde_json::Value::as_str);
        let n = d.get("folded").and_then(serde_json::Value::as_u64).unwrap_or(1);
        let decision = ev.decision.as_deref().unwrap_or("");
        let Some(kind) = EventKind::parse(&ev.kind) else { return };
        match kind {
            EventKind::Http | EventKind::Connect => {
                self.decisions += n;
                // Refused before the policy was asked (malformed, SSRF, not loaded), or
                // the inner requests of an intercepted tunnel follow as `http` events.
                let rule = ev.rule.as_deref().unwrap_or("");
                if rule == "upstream-safety" {
                    // The SSRF check refused the address: no allow rule is the answer.
                    if let Some(host) = s("host") {
                        *self.ssrf.entry(host.to_string()).or_default() += n;
                    }
                    return;
                }
                if decision == Decision::Intercept.as_str() || rule == "protocol" {
                    return;
                }
                let (Some(host), Some(port)) = (s("host"), d.get("port").and_then(serde_json::Value::as_u64)) else {
                    return;
                };
                let Ok(port) = u16::try_from(port) else { return };
                let connect = kind == EventKind::Connect;
                let key = Key {
                    host: host.to_string(),
                    port,
                    https: connect || s("scheme") == Some("https"),
                    method: if connect { "CONNECT".into() } else { s("method").unwrap_or("GET").to_string() },
                    path: if connect { String::new() } else { s("path").unwrap_or("/").to_string() },
                };
                *self.requests.entry(key).or_default() += n;
                let h = self.hosts.entry(host.to_string()).or_default();
                h.requests += n;
                if let Some(up) = self.up_of_seq.remove(&ev.seq) {
                    h.max_up = h.max_up.max(up);
                } else {
                    self.host_of_seq.insert(ev.seq, host.to_string());
                }
            }
            EventKind::HttpDone | EventKind::ConnectDone => {
                let Some(up) = d.get("bytes_up").and_then(serde_json::Value::as_u64) else { return };
                let of = d.get("decision_seq").and_then(serde_json::Value::as_u64);
                // Older records carried the host themselves.
                let host = match (s("host"), of) {
                    (Some(h), _) => Some(h.to_string()),
                    (None, Some(seq)) => self.host_of_seq.remove(&seq),
                    (None, None) => None,
                };
                match (host, of) {
                    (Some(host), _) => {
                        let h = self.hosts.entry(host).or_default();
                        h.max_up = h.max_up.max(up);
                    }
                    (None, Some(seq)) => {
                        let e = self.up_of_seq.entry(seq).or_default();
                        *e = (*e).max(up);
                    }
                    (None, None) => {}
                }
            }
            EventKind::Dns => {
                self.decisions += n;
                if let Some(name) = s("name") {
                    *self.dns.entry(name.trim_end_matches('.').to_ascii_lowercase()).or_default() += n;
                }
            }
            EventKind::FileApply => {
                // Files a human applied (an auto_apply glob already covers the others).
                if s("by") == Some("auto_apply") {
                    return;
                }
                for entry in d.get("applied").and_then(serde_json::Value::as_array).into_iter().flatten() {
                    if entry.get("kind").and_then(serde_json::Value::as_str) == Some("added") {
                        if let Some(p) = entry.get("path").and_then(serde_json::Value::as_str) {
                            self.files.push(p.to_string());
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// A new file of the agent's that waits for review (from `Review::changes`).
    pub fn add_new_file(&mut self, path: &str) {
        self.files.push(path.to_string());
    }
}

/// Does this path segment look like an id rather than a name? Prefixed ids (`cus_123`,
/// `ch_3Nx…`, `cus_0`: lower-case prefix, `_`, then letters/digits with a digit), UUIDs, decimal
/// numbers, hex of 8 or more characters with a digit, base64/base64url tokens of 16 or
/// more characters with a digit and a letter.
pub fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let has_digit = b.iter().any(u8::is_ascii_digit);
    let has_alpha = b.iter().any(u8::is_ascii_alphabetic);
    if let Some((prefix, rest)) = seg.split_once('_') {
        if (1..=8).contains(&prefix.len())
            && prefix.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && prefix.as_bytes()[0].is_ascii_lowercase()
            && rest.bytes().all(|c| c.is_ascii_alphanumeric())
            && rest.bytes().any(|c| c.is_ascii_digit())
        {
            return true;
        }
    }
    if b.len() == 36 {
        let uuid = b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
        if uuid {
            return true;
        }
    }
    if b.len() >= 8 && has_digit && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    b.len() >= 16
        && has_digit
        && has_alpha
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_'))
}

/// Characters a rule's path pattern may hold in a literal segment (docs/policy.md).
fn literal_ok(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~!$&'()+,=:@".contains(&c))
        && seg != "*"
        && seg != "**"
}

/// A rule found in the path tree: pattern, method → count, example paths, why.
type Found = (String, BTreeMap<String, u64>, Vec<String>, String);

#[derive(Debug, Default)]
struct Node {
    children: BTreeMap<String, Node>,
    /// Requests ending here: method → count, and the raw paths (a few).
    here: BTreeMap<String, u64>,
    examples: Vec<String>,
    ids: BTreeSet<String>,
}

impl Node {
    fn insert(&mut self, segs: &[(String, Option<String>)], method: &str, raw: &str, n: u64) {
        let mut node = self;
        for (seg, id) in segs {
            node = node.children.entry(seg.clone()).or_default();
            if let Some(id) = id {
                if node.ids.len() < 3 {
                    node.ids.insert(id.clone());
                }
            }
        }
        *node.here.entry(method.to_string()).or_default() += n;
        if node.examples.len() < 3 {
            node.examples.push(raw.to_string());
        }
    }

    /// Everything at and below this node, for a `/**` rule.
    fn gather(&self, methods: &mut BTreeMap<String, u64>, examples: &mut Vec<String>, paths: &mut u64) {
        for (m, n) in &self.here {
            *methods.entry(m.clone()).or_default() += n;
        }
        if !self.here.is_empty() {
            *paths += 1;
        }
        for e in &self.examples {
            if examples.len() < 3 {
                examples.push(e.clone());
            }
        }
        for c in self.children.values() {
            c.gather(methods, examples, paths);
        }
    }

    fn rules(&self, prefix: &str, out: &mut Vec<Found>) {
        if self.children.len() >= SIBLINGS {
            let (mut methods, mut examples, mut paths) = (BTreeMap::new(), Vec::new(), 0);
            self.gather(&mut methods, &mut examples, &mut paths);
            let why = format!(
                "{} distinct segments under {} (≥ {SIBLINGS}), {paths} paths → `/**`",
                self.children.len(),
                if prefix.is_empty() { "/" } else { prefix }
            );
            out.push((format!("{prefix}/**"), methods, examples, why));
            return;
        }
        if !self.here.is_empty() {
            let path = if prefix.is_empty() { "/".to_string() } else { prefix.to_string() };
            let why = if self.ids.is_empty() && !path.contains('*') {
                "exact path".to_string()
            } else {
                let ids: Vec<&str> = self.ids.iter().map(String::as_str).collect();
                if ids.is_empty() {
                    "ids → `*`".to_string()
                } else {
                    format!("ids → `*` ({})", ids.join(", "))
                }
            };
            out.push((path, self.here.clone(), self.examples.clone(), why));
        }
        for (seg, child) in &self.children {
            child.rules(&format!("{prefix}/{seg}"), out);
        }
    }
}

/// Why a host gets no rule, if it should not: the exfiltration and breadth checks.
fn host_refusal(host: &str, seen: HostSeen) -> Option<(&'static str, String)> {
    let parsed = Host::parse(host).ok()?;
    if parsed.ip().is_some() {
        return Some(("ip_address", "a raw IP address: agents name services; decide by hand".into()));
    }
    if host.contains('*') || !host.contains('.') {
        return Some(("top_level_domain", "a single-label name (a top-level domain): far too broad for a rule".into()));
    }
    if seen.requests == 1 && seen.max_up >= LARGE_UPLOAD {
        return Some((
            "large_upload_once",
            format!(
                "seen once, sending {} (≥ {}): looks like exfiltration",
                gvm_api::human_bytes(seen.max_up),
                gvm_api::human_bytes(LARGE_UPLOAD)
            ),
        ));
    }
    None
}

/// The network part of a suggestion.
#[derive(Debug, Default)]
pub struct Plan {
    pub rules: Vec<SuggestedRule>,
    pub flagged: Vec<Flagged>,
    pub already_allowed: u64,
    pub files: Vec<FileSuggestion>,
    /// Per rule (same order), the requests it must allow: (https, method, path, count).
    covers: Vec<Vec<(bool, String, String)>>,
}

fn decide(policy: &CompiledPolicy, k: &Key, host: &Host, now: SystemTime) -> gvm_policy::Decision {
    if k.method == "CONNECT" {
        if let ConnectPlan::Decided(d) = policy.decide_connect(host, k.port, now) {
            return d;
        }
    }
    let scheme = if k.https { Scheme::Https } else { Scheme::Http };
    let path = if k.method == "CONNECT" { "/" } else { k.path.as_str() };
    policy.decide(&Request { scheme, host, port: k.port, method: &k.method, path }, now)
}

/// The rules that would allow what `obs` saw and `policy` does not allow yet.
#[must_use]
pub fn plan(policy: &CompiledPolicy, obs: &Observations, now: SystemTime) -> Plan {
    let mut plan = Plan::default();
    // host → port → (tunnels, http requests)
    type PerPort = BTreeMap<u16, (u64, Vec<(bool, String, String, u64)>)>;
    let mut needed: BTreeMap<String, PerPort> = BTreeMap::new();
    let mut by_rule: BTreeMap<(String, Option<u16>), (u64, String)> = BTreeMap::new();
    let mut hosts: HashMap<&str, Option<Host>> = HashMap::new();
    for (k, &n) in &obs.requests {
        let Some(host) = hosts.entry(k.host.as_str()).or_insert_with(|| Host::parse(&k.host).ok()) else {
            continue;
        };
        let d = decide(policy, k, host, now);
        if d.policy_verdict == Verdict::Allow {
            plan.already_allowed += n;
            continue;
        }
        if let Some(r) = &d.rule {
            let e = by_rule.entry((k.host.clone(), Some(k.port))).or_insert((0, String::new()));
            e.0 += n;
            e.1 = format!(
                "{} by network.rule[{}] (line {}): a rule someone wrote; not overridden",
                d.policy_verdict, r.index, r.line
            );
            continue;
        }
        let e = needed.entry(k.host.clone()).or_default().entry(k.port).or_default();
        if k.method == "CONNECT" {
            e.0 += n;
        } else {
            e.1.push((k.https, k.method.clone(), k.path.clone(), n));
        }
    }
    for ((host, port), (n, why)) in by_rule {
        plan.flagged.push(Flagged { host, port, requests: n, kind: "decided_by_rule".into(), reason: why });
    }
    for (host, ports) in needed {
        let seen = obs.hosts.get(&host).copied().unwrap_or_default();
        if let Some((kind, reason)) = host_refusal(&host, seen) {
            let requests = ports.values().map(|(t, r)| t + r.iter().map(|x| x.3).sum::<u64>()).sum();
            plan.flagged.push(Flagged { host, port: None, requests, kind: kind.into(), reason });
            continue;
        }
        for (port, (tunnels, reqs)) in ports {
            if tunnels > 0 && reqs.is_empty() {
                plan.rules.push(SuggestedRule {
                    host: host.clone(),
                    port,
                    methods: Vec::new(),
                    path: None,
                    requests: tunnels,
                    reason: format!("{tunnels} tunnel(s) (CONNECT) to {host}:{port} fell to the default"),
                    examples: Vec::new(),
                });
                plan.covers.push(vec![(true, "CONNECT".into(), String::new())]);
            }
            let mut root = Node::default();
            let mut unwritable = 0;
            let mut raw_of: HashMap<String, Vec<(bool, String, String)>> = HashMap::new();
            for (https, method, raw, n) in &reqs {
                let path = raw.split(['?', '#']).next().unwrap_or("/");
                let body = path.strip_prefix('/').unwrap_or(path);
                let body = body.strip_suffix('/').unwrap_or(body);
                let mut segs = Vec::new();
                let mut ok = path.starts_with('/');
                if !body.is_empty() {
                    for seg in body.split('/') {
                        if seg.is_empty() || seg == "." || seg == ".." {
                            ok = false;
                            break;
                        }
                        if literal_ok(seg) && !is_id(seg) {
                            segs.push((seg.to_string(), None));
                        } else {
                            segs.push(("*".to_string(), Some(seg.to_string())));
                        }
                    }
                }
                if !ok {
                    unwritable += n;
                    continue;
                }
                root.insert(&segs, method, path, *n);
                let pattern: String = segs.iter().map(|(s, _)| format!("/{s}")).collect();
                raw_of.entry(pattern).or_default().push((*https, method.clone(), raw.clone()));
            }
            if unwritable > 0 {
                plan.flagged.push(Flagged {
                    host: host.clone(),
                    port: Some(port),
                    requests: unwritable,
                    kind: "unwritable_path".into(),
                    reason: "ambiguous paths (`//`, `.` or `..` segments) never match an allow rule with a path".into(),
                });
            }
            let mut out = Vec::new();
            root.rules("", &mut out);
            for (path, methods, examples, why) in out {
                let requests: u64 = methods.values().sum();
                let names: Vec<String> = methods.keys().cloned().collect();
                // The requests this rule stands for: those whose generalised path it covers.
                let covers: Vec<(bool, String, String)> = match path.strip_suffix("/**") {
                    Some(prefix) => raw_of
                        .iter()
                        .filter(|(p, _)| *p == prefix || p.starts_with(&format!("{prefix}/")))
                        .flat_map(|(_, v)| v.iter().cloned())
                        .collect(),
                    None => raw_of.get(if path == "/" { "" } else { path.as_str() }).cloned().unwrap_or_default(),
                };
                plan.rules.push(SuggestedRule {
                    host: host.clone(),
                    port,
                    reason: format!(
                        "{requests} request(s) ({}) to {host}:{port} fell to the default; {why}",
                        names.join(", ")
                    ),
                    methods: names,
                    path: Some(path),
                    requests,
                    examples,
                });
                plan.covers.push(covers);
            }
        }
    }
    for (host, n) in &obs.ssrf {
        plan.flagged.push(Flagged {
            host: host.clone(),
            port: None,
            requests: *n,
            kind: "ssrf_refused".into(),
            reason: "the gateway refused its address (loopback, private, link-local, ...): not a rule's business"
                .into(),
        });
    }
    // Names looked up but never asked for.
    for (name, n) in &obs.dns {
        if !obs.hosts.contains_key(name) {
            plan.flagged.push(Flagged {
                host: name.clone(),
                port: None,
                requests: *n,
                kind: "dns_only".into(),
                reason: format!("{n} DNS quer(y/ies), no request: nothing to allow"),
            });
        }
    }
    plan.files = file_globs(&obs.files);
    plan
}

/// `[files] auto_apply` globs for the agent's new files: one per top directory and
/// extension (`reports/**/*.csv`; `*.csv` at the root). Files without an extension
/// are not generalised.
pub fn file_globs(files: &[String]) -> Vec<FileSuggestion> {
    let mut groups: BTreeMap<(String, String), u64> = BTreeMap::new();
    for f in files {
        let name = f.rsplit('/').next().unwrap_or(f);
        let Some((stem, ext)) = name.rsplit_once('.') else { continue };
        if stem.is_empty() || ext.is_empty() || ext.len() > 8 || !ext.bytes().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let top = match f.split_once('/') {
            Some((d, _)) if literal_ok(d) && !d.contains(['*', '?', '[', '{']) => d.to_string(),
            Some(_) => continue,
            None => String::new(),
        };
        *groups.entry((top, ext.to_string())).or_default() += 1;
    }
    groups
        .into_iter()
        .map(|((top, ext), n)| FileSuggestion {
            list: "auto_apply".into(),
            glob: if top.is_empty() { format!("*.{ext}") } else { format!("{top}/**/*.{ext}") },
            files: n,
            reason: format!("{n} new .{ext} file(s) the agent wrote there were applied by hand or wait for review"),
        })
        .collect()
}

/// The result for one profile file: what the plan adds, the new text and the diff.
#[derive(Debug)]
pub struct Outcome {
    pub plan: Plan,
    pub new_text: String,
    pub diff: String,
}

/// Applies `plan` to the profile text (comments and layout kept), checks every rule
/// on the result (a rule that does not allow what it claims to is dropped and
/// flagged), and diffs.
pub fn render(file: &Path, text: &str, mut plan: Plan, stamp: &str, now: SystemTime) -> Result<Outcome, SuggestError> {
    let name = file.display().to_string();
    loop {
        let new_text = edit(file, text, &plan, stamp)?;
        if new_text == text {
            return Ok(Outcome { plan, diff: String::new(), new_text });
        }
        let profile = gvm_policy::parse_profile(file, &new_text)
            .map_err(|d| SuggestError::Invalid { path: name.clone(), diagnostic: d.to_string() })?;
        let bad: Vec<usize> = (0..plan.rules.len())
            .filter(|&i| {
                let r = &plan.rules[i];
                let Ok(host) = Host::parse(&r.host) else { return true };
                plan.covers[i].iter().any(|(https, method, path)| {
                    let k = Key {
                        host: r.host.clone(),
                        port: r.port,
                        https: *https,
                        method: method.clone(),
                        path: path.clone(),
                    };
                    decide(&profile.compiled, &k, &host, now).policy_verdict != Verdict::Allow
                })
            })
            .collect();
        if bad.is_empty() {
            let diff = unified_diff(&name, text, &new_text);
            return Ok(Outcome { plan, diff, new_text });
        }
        for &i in bad.iter().rev() {
            let r = plan.rules.remove(i);
            plan.covers.remove(i);
            plan.flagged.push(Flagged {
                host: r.host,
                port: Some(r.port),
                requests: r.requests,
                kind: "ineffective".into(),
                reason: format!(
                    "a rule for {} would not allow every request it stands for; write one by hand",
                    r.path.as_deref().unwrap_or("the host")
                ),
            });
        }
    }
}

fn edit(file: &Path, text: &str, plan: &Plan, stamp: &str) -> Result<String, SuggestError> {
    let err = |reason: String| SuggestError::Edit { path: file.display().to_string(), reason };
    if plan.rules.is_empty() && plan.flagged.is_empty() && plan.files.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| err(e.to_string()))?;
    let mut tables = Vec::new();
    for (i, r) in plan.rules.iter().enumerate() {
        let mut t = toml_edit::Table::new();
        let head = if i == 0 { format!("\n# Suggested by `gvmctl suggest` on {stamp}.") } else { String::new() };
        t.decor_mut().set_prefix(format!("{head}\n# {}\n", one_line(&r.reason)));
        t["host"] = toml_edit::value(r.host.as_str());
        t["port"] = toml_edit::value(i64::from(r.port));
        if !r.methods.is_empty() {
            t["methods"] = toml_edit::value(r.methods.iter().map(String::as_str).collect::<toml_edit::Array>());
        }
        if let Some(p) = &r.path {
            t["path"] = toml_edit::value(p.as_str());
        }
        t["action"] = toml_edit::value("allow");
        tables.push(t);
    }
    if !tables.is_empty() {
        crate::profile_file::push_rules(&mut doc, tables).map_err(err)?;
    }
    let mut tail = String::new();
    if !plan.flagged.is_empty() {
        tail.push_str(&format!("\n# `gvmctl suggest` on {stamp}: seen but NOT allowed — decide by hand:\n"));
        for f in &plan.flagged {
            let port = f.port.map(|p| format!(":{p}")).unwrap_or_default();
            tail.push_str(&format!(
                "#   {}{port} ({}, {} seen): {}\n",
                f.host,
                f.kind,
                f.requests,
                one_line(&f.reason)
            ));
        }
    }
    if !plan.files.is_empty() {
        tail.push_str("\n# `gvmctl suggest`: [files] candidates (not applied; add them to [files] if they fit):\n");
        for f in &plan.files {
            tail.push_str(&format!("#   {} = [\"{}\"]   # {}\n", f.list, f.glob, one_line(&f.reason)));
        }
    }
    if !tail.is_empty() {
        let old = doc.trailing().as_str().unwrap_or("").to_string();
        doc.set_trailing(format!("{old}{tail}"));
    }
    Ok(doc.to_string())
}

/// Comments are one line: control characters (an agent chose the paths) become `?`.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A unified diff (3 lines of context) of `old` → `new`, both labelled `name`.
pub fn unified_diff(name: &str, old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence table, from the ends (profiles are small).
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    // The edit script: (' ' | '-' | '+', line, old index, new index).
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i], i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i], i, j));
            i += 1;
        } else {
            ops.push(('+', b[j], i, j));
            j += 1;
        }
    }
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, o)| o.0 != ' ').map(|(k, _)| k).collect();
    if changed.is_empty() {
        return String::new();
    }
    let mut out = format!("--- {name}\n+++ {name} (suggested)\n");
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(3);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 6 {
            end = changed[k];
            k += 1;
        }
        let end = (end + 3).min(ops.len() - 1);
        let hunk = &ops[start..=end];
        let old_len = hunk.iter().filter(|o| o.0 != '+').count();
        let new_len = hunk.iter().filter(|o| o.0 != '-').count();
        let (o0, n0) = (hunk[0].2, hunk[0].3);
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            if old_len == 0 { o0 } else { o0 + 1 },
            if new_len == 0 { n0 } else { n0 + 1 }
        ));
        for (c, line, _, _) in hunk {
            out.push_str(&format!("{c}{line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
