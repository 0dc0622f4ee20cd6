//! Validation: from the raw schema to the public, checked types. Every semantic error
//! points at the line and column of the value it is about; the first error refuses the
//! file.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_spanned::Spanned;

use crate::budget::{Budget, Money};
use crate::diag::Diagnostic;
use crate::mcp::McpTools;
use crate::path::PathPattern;
use crate::rule::{Action, HostPattern, HostPatternError, InjectPart, Injection, Rule};
use crate::units::{parse_cpu_quota, parse_duration, parse_size, Rate};

use super::raw::*;
use super::*;

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

pub(super) struct Validator<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
}

type V<T> = Result<T, Diagnostic>;

impl Validator<'_> {
    pub(super) fn err(&self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::at(self.file, self.text, span, message).field(field)
    }

    pub(super) fn agent(&self, raw: Option<RawAgent>) -> V<Agent> {
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
        agent.serve = self.serve(raw.serve)?;
        Ok(agent)
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn secrets(
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

    pub(super) fn network(&self, raw: Option<RawNetwork>, secrets: &BTreeMap<String, SecretSource>) -> V<Network> {
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
        let methods = match &r.methods {
            Some(ms) => self.methods(ms, &f("methods"))?,
            None => Vec::new(),
        };
        let path = self.path(r.path.as_ref(), &f("path"))?;
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
        let mcp = match r.mcp {
            Some(m) => {
                if action == Action::Deny {
                    return Err(self
                        .err(m.span(), f("mcp"), "a deny rule forwards nothing, so it has no MCP tools")
                        .fix("remove `mcp`, or make the rule allow"));
                }
                Some(Arc::new(self.mcp(m, &f("mcp"))?))
            }
            None => None,
        };
        let intercept = r.intercept.as_ref().is_none_or(|b| *b.get_ref());
        if let Some(ic) = &r.intercept {
            if !intercept {
                let what = [
                    (r.methods.is_some(), "methods"),
                    (r.path.is_some(), "path"),
                    (inject.is_some(), "inject"),
                    (mcp.is_some(), "mcp"),
                ]
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
            mcp,
        })
    }

    /// `path = "..."`: a rule's path pattern.
    pub(super) fn path(&self, p: Option<&Spanned<String>>, field: &str) -> V<Option<PathPattern>> {
        let Some(p) = p else { return Ok(None) };
        PathPattern::parse(p.get_ref()).map(Some).map_err(|e| {
            self.err(p.span(), field, e.0)
                .fix("write an exact path \"/a/b\", a prefix \"/v1/**\" or one-segment wildcards \"/repos/*/issues\"")
        })
    }

    /// `methods = [...]`: upper-case HTTP methods, not empty, duplicates dropped.
    pub(super) fn methods(&self, ms: &Spanned<Vec<Spanned<String>>>, field: &str) -> V<Vec<String>> {
        let mut methods = Vec::new();
        if ms.get_ref().is_empty() {
            return Err(self
                .err(ms.span(), field.to_string(), "`methods` is empty")
                .fix("list methods, or remove `methods` to match any method"));
        }
        for (j, m) in ms.get_ref().iter().enumerate() {
            let s = m.get_ref();
            let field = format!("{field}[{j}]");
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') {
                let fix = if s.bytes().any(|b| b.is_ascii_lowercase()) && s.bytes().all(|b| b.is_ascii_alphabetic()) {
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
        Ok(methods)
    }

    fn mcp(&self, m: Spanned<RawMcp>, field: &str) -> V<McpTools> {
        let span = m.span();
        let m = m.into_inner();
        let list = |l: Option<Spanned<Vec<Spanned<String>>>>, name: &str| -> V<Vec<String>> {
            let mut out = Vec::new();
            for (j, p) in l.map(Spanned::into_inner).unwrap_or_default().into_iter().enumerate() {
                crate::mcp::check_pattern(p.get_ref()).map_err(|e| {
                    self.err(p.span(), format!("{field}.{name}[{j}]"), e)
                        .fix("write a tool name as the server lists it, e.g. \"read_file\" or \"delete_*\"")
                })?;
                out.push(p.into_inner());
            }
            Ok(out)
        };
        let tools_span = m.tools.as_ref().map(Spanned::span);
        let tools = list(m.tools, "tools")?;
        let deny_tools = list(m.deny_tools, "deny_tools")?;
        if tools.is_empty() {
            return Err(self
                .err(tools_span.unwrap_or(span), format!("{field}.tools"), "no tool may be called: `tools` is missing or empty")
                .fix("list the tools the agent may call, e.g. tools = [\"search\", \"read_file\"] (or [\"*\"] with deny_tools)"));
        }
        Ok(McpTools { tools, deny_tools, filter_list: m.filter_list.unwrap_or(false) })
    }

    pub(super) fn port(&self, p: &Spanned<i64>, field: String) -> V<u16> {
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

    pub(super) fn files(&self, raw: Option<RawFiles>) -> V<Files> {
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
    pub(super) fn budget(&self, raw: Spanned<RawBudget>, field: &str) -> V<Budget> {
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

    pub(super) fn limits(&self, raw: Option<RawLimits>) -> V<Limits> {
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
