//! One network rule, validated: what it matches and what it does.

use std::fmt;
use std::sync::Arc;

use crate::budget::{Budget, Money};
use crate::host::{Cidr, CidrError, Host, HostError};
use crate::path::{PathPattern, PathRank};
use crate::units::Rate;

/// What a rule does with a request it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// Wait for a human (`gvmctl approve`), denied after `hold_timeout`.
    Hold,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Hold => "hold",
        })
    }
}

/// The `host` of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `"*"`: every host.
    Any,
    /// `"api.openai.com"`, `"10.1.2.3"`, `"[::1]"`.
    Exact(Host),
    /// `"*.example.com"`: one or more labels below `example.com` (not the name itself).
    Suffix(Host),
    /// `"10.0.0.0/8"`: a request that names an IP in the network (no DNS is done).
    Cidr(Cidr),
}

/// Why a rule's `host` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error("`*` is only allowed as a whole first label (`*.example.com`) or alone (`*`)")]
    Wildcard,
    #[error("a `*.` suffix must be a name, not an IP address")]
    SuffixIp,
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, HostPatternError> {
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(HostPatternError::Wildcard);
            }
            let h = Host::parse(rest)?;
            if h.ip().is_some() {
                return Err(HostPatternError::SuffixIp);
            }
            return Ok(HostPattern::Suffix(h));
        }
        if s.contains('*') {
            return Err(HostPatternError::Wildcard);
        }
        if s.contains('/') {
            return Ok(HostPattern::Cidr(Cidr::parse(s)?));
        }
        Ok(HostPattern::Exact(Host::parse(s)?))
    }

    /// True when the pattern matches `host`.
    pub fn matches(&self, host: &Host) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.ip().is_none() && is_below(host.as_str(), s.as_str()),
            HostPattern::Cidr(c) => host.ip().is_some_and(|ip| c.contains(ip)),
        }
    }

    /// Host specificity: exact > longer suffix > shorter suffix > CIDR by prefix
    /// length > any.
    pub(crate) fn rank(&self) -> (u8, u16) {
        match self {
            HostPattern::Exact(_) => (3, 0),
            HostPattern::Suffix(s) => (2, u16::try_from(s.as_str().split('.').count()).unwrap_or(u16::MAX)),
            HostPattern::Cidr(c) => (1, u16::from(c.prefix_len())),
            HostPattern::Any => (0, 0),
        }
    }

    /// `Some(what)` when the pattern reaches every host, every name under a top-level
    /// domain or every IP address.
    pub fn broad(&self) -> Option<&'static str> {
        match self {
            HostPattern::Any => Some("every host"),
            HostPattern::Suffix(s) if !s.as_str().contains('.') => Some("every name under a top-level domain"),
            HostPattern::Cidr(c) if c.prefix_len() == 0 => Some("every IP address"),
            _ => None,
        }
    }

    /// True when every host `other` matches is matched by `self`.
    pub(crate) fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Any, _) => true,
            (_, HostPattern::Any) => false,
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Suffix(_), HostPattern::Exact(b)) => self.matches(b),
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => a == b || is_below(b.as_str(), a.as_str()),
            (HostPattern::Cidr(a), HostPattern::Exact(b)) => b.ip().is_some_and(|ip| a.contains(ip)),
            (HostPattern::Cidr(a), HostPattern::Cidr(b)) => a.covers(b),
            _ => false,
        }
    }
}

/// True when `name` has one or more labels below `suffix`.
pub(crate) fn is_below(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1 && name.ends_with(suffix) && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(h) => write!(f, "{h}"),
            HostPattern::Suffix(h) => write!(f, "*.{h}"),
            HostPattern::Cidr(c) => write!(f, "{c}"),
        }
    }
}

/// A header the gateway adds to a request a rule allows, e.g.
/// `Authorization: Bearer {secret:openai}`. The agent never sees the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// Header name as written (validated token).
    pub header: String,
    /// The value template as written.
    pub template: String,
    parts: Vec<InjectPart>,
}

/// A piece of an injection template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectPart {
    Literal(String),
    /// The name of a `[secrets]` entry.
    Secret(String),
}

/// Why an injection could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("secret `{0}` is not available")]
    Missing(String),
    #[error("secret `{0}` contains a control character (CR, LF, NUL...) and cannot be sent in a header")]
    Control(String),
}

impl Injection {
    pub(crate) fn new(header: String, template: String, parts: Vec<InjectPart>) -> Self {
        Injection { header, template, parts }
    }

    pub fn parts(&self) -> &[InjectPart] {
        &self.parts
    }

    /// Names of the secrets the template uses.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            InjectPart::Secret(s) => Some(s.as_str()),
            InjectPart::Literal(_) => None,
        })
    }

    /// The header value with each `{secret:NAME}` replaced by `secret(NAME)`. Refuses
    /// a missing secret and one holding control characters (header injection).
    pub fn render<'s>(&self, mut secret: impl FnMut(&str) -> Option<&'s str>) -> Result<String, InjectError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                InjectPart::Literal(l) => out.push_str(l),
                InjectPart::Secret(name) => {
                    let v = secret(name).ok_or_else(|| InjectError::Missing(name.clone()))?;
                    if v.chars().any(|c| c.is_control()) {
                        return Err(InjectError::Control(name.clone()));
                    }
                    out.push_str(v);
                }
            }
        }
        Ok(out)
    }
}

/// A validated `[[network.rule]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Position in `network.rule` (0-based).
    pub index: usize,
    /// 1-based line and column of the rule's `host` key.
    pub line: u32,
    pub column: u32,
    pub host: HostPattern,
    /// Empty = any port.
    pub ports: Vec<u16>,
    /// Empty = any method. Upper case, compared exactly.
    pub methods: Vec<String>,
    pub path: Option<PathPattern>,
    pub action: Action,
    pub rate: Option<Rate>,
    /// `budget = { requests = N, per = "day" }`: what requests this rule decides may
    /// spend per period (counted by the gateway).
    pub budget: Option<Budget>,
    /// `cost = 0.02`: what one forwarded request costs, charged to money budgets.
    pub cost: Option<Money>,
    pub inject: Option<Arc<Injection>>,
    /// `false`: never intercept TLS for this host (pinned or mutual-TLS upstreams).
    pub intercept: bool,
    pub comment: Option<String>,
    /// `name = "openai-chat"`: what the rule's budget is counted under, so that it
    /// keeps its spend when the rule's match changes (unique in the profile).
    pub name: Option<String>,
    /// `mcp = { tools = [...] }`: JSON-RPC bodies are read and only these MCP tools
    /// may be called (`gateway/src/mcp.rs`).
    pub mcp: Option<Arc<crate::McpTools>>,
}

/// Sort key: greater = more specific. Field order is the precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Specificity {
    pub host: (u8, u16),
    pub port: bool,
    pub path: PathRank,
    pub methods: bool,
    /// At equal specificity a hold beats an allow.
    pub hold: bool,
}

impl Rule {
    /// True when the rule looks inside requests (method, path, a header to inject or
    /// MCP tool calls).
    pub fn needs_interception(&self) -> bool {
        !self.methods.is_empty() || self.path.is_some() || self.inject.is_some() || self.mcp.is_some()
    }

    pub(crate) fn specificity(&self) -> Specificity {
        Specificity {
            host: self.host.rank(),
            port: !self.ports.is_empty(),
            path: self.path.as_ref().map_or(PathRank::NONE, PathPattern::rank),
            methods: !self.methods.is_empty(),
            hold: self.action == Action::Hold,
        }
    }

    #[inline]
    pub(crate) fn port_matches(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    #[inline]
    pub(crate) fn method_matches(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }
}
