//! Compiled rules and the pure decision.
//!
//! [`CompiledPolicy::compile`] turns a profile's validated `[network]` section into
//! indexes — exact hosts in a hash map, `*.suffix` rules in a map keyed by suffix
//! (probed once per label of the request host), CIDRs in a list by prefix length,
//! `*` rules in a list — each bucket sorted most specific first. [`decide`] then walks
//! only the rules that can match the request's host, in specificity order: the first
//! deny met wins outright, otherwise the first allow/hold met is the most specific.
//!
//! `decide` does no I/O, reads no clock (the caller passes `now`) and allocates
//! nothing: the [`Decision`] it returns holds reference-counted pointers into the
//! compiled policy.
//!
//! [`decide`]: CompiledPolicy::decide

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::host::Host;
use crate::path::{Fold, ReqPath};
use crate::profile::{DefaultAction, Mode, Network};
use crate::rule::{Action, HostPattern, Injection, Rule};
use crate::units::Rate;

/// The scheme the agent used. A rule that injects a header never matches plain
/// HTTP: a secret is never sent in clear text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

/// The facts of one request, already normalised by the gateway.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub scheme: Scheme,
    pub host: &'a Host,
    pub port: u16,
    /// As sent; compared case-sensitively with the rule's upper-case methods.
    pub method: &'a str,
    /// Origin-form request target (`/v1/x?y=z`); the query is ignored.
    pub path: &'a str,
}

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
    Hold,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Hold => "hold",
        })
    }
}

impl From<Verdict> for gvm_api::Decision {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => gvm_api::Decision::Allow,
            Verdict::Deny => gvm_api::Decision::Deny,
            Verdict::Hold => gvm_api::Decision::Hold,
        }
    }
}

impl From<Action> for Verdict {
    fn from(a: Action) -> Self {
        match a {
            Action::Allow => Verdict::Allow,
            Action::Deny => Verdict::Deny,
            Action::Hold => Verdict::Hold,
        }
    }
}

/// Which rule decided: its index in `network.rule` (0-based), its line, its file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub index: usize,
    pub line: u32,
    pub file: Arc<Path>,
}

impl fmt::Display for RuleRef {
    /// `network.rule[2] (profiles/invoices.toml:12)`: the same numbering as the field
    /// paths in diagnostics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network.rule[{}] ({}:{})", self.index, self.file.display(), self.line)
    }
}

/// The outcome of [`CompiledPolicy::decide`].
///
/// `verdict` is what the gateway does. In enforce mode it is `policy_verdict`; in
/// watch mode it is always `Allow` and `policy_verdict` records what enforce mode
/// would have done (audit it; [`Decision::would_deny_in_watch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub policy_verdict: Verdict,
    pub mode: Mode,
    /// The deciding rule; `None` = the `[network] default`.
    pub rule: Option<RuleRef>,
    /// The deciding rule's rate limit, enforced by the gateway per rule.
    pub rate: Option<Rate>,
    /// The header to add once the request is allowed (or approved).
    pub inject: Option<Arc<Injection>>,
    /// The deciding rule's `mcp` table: which MCP tools may be called.
    pub mcp: Option<Arc<crate::McpTools>>,
    /// How long a held request may wait (the profile's `hold_timeout`).
    pub hold_timeout: Duration,
    /// The `now` the decision was made at.
    pub decided_at: SystemTime,
}

impl Decision {
    /// True in watch mode when enforce mode would not have let the request through
    /// right away (deny or hold).
    pub fn would_deny_in_watch(&self) -> bool {
        self.mode == Mode::Watch && self.policy_verdict != Verdict::Allow
    }

    /// When a held request is denied if nobody answers.
    pub fn hold_deadline(&self) -> Option<SystemTime> {
        (self.verdict == Verdict::Hold).then(|| self.decided_at + self.hold_timeout)
    }
}

/// What to do with a CONNECT (or a transparent TLS connection) before seeing inside.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectPlan {
    /// The outcome cannot depend on method or path: apply this decision to the
    /// whole tunnel without intercepting TLS.
    Decided(Decision),
    /// Some rule that may match looks at method or path, or injects a header:
    /// intercept TLS and call [`CompiledPolicy::decide`] for each request.
    Intercept,
}

/// FNV-1a: fast on the short keys used here (host names, masked addresses). Not
/// keyed, which is fine: the table keys come from the profile, so a request can
/// only probe one bucket, never lengthen a chain.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FnvMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// CIDR rules of one address family and prefix length, keyed by network address.
#[derive(Debug)]
struct CidrGroup {
    prefix: u8,
    v6: bool,
    nets: FnvMap<u128, Box<[u32]>>,
}

/// A rule as the matcher sees it.
#[derive(Debug)]
struct CRule {
    rule: Rule,
    rref: RuleRef,
}

/// A profile's `[network]` section, compiled for [`decide`](CompiledPolicy::decide).
#[derive(Debug)]
pub struct CompiledPolicy {
    file: Arc<Path>,
    mode: Mode,
    default: DefaultAction,
    hold_timeout: Duration,
    rules: Vec<CRule>,
    /// Per rule: [`crate::path::PathPattern::first_key`] of its path, 0 = none. Dense, so that
    /// path rules on a busy host are skipped without reading the rule.
    first_key: Box<[u64]>,
    exact: FnvMap<Box<str>, Box<[u32]>>,
    suffix: FnvMap<Box<str>, Box<[u32]>>,
    /// Longest prefix first.
    cidr: Box<[CidrGroup]>,
    any: Box<[u32]>,
}

impl CompiledPolicy {
    /// Compiles validated rules. Infallible: validation happened at parse time.
    pub fn compile(file: &Path, mode: Mode, network: &Network) -> CompiledPolicy {
        let file: Arc<Path> = Arc::from(file);
        let rules: Vec<CRule> = network
            .rules
            .iter()
            .map(|r| CRule { rref: RuleRef { index: r.index, line: r.line, file: file.clone() }, rule: r.clone() })
            .collect();
        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut suffix: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut cidr: std::collections::BTreeMap<(std::cmp::Reverse<u8>, bool), HashMap<u128, Vec<u32>>> =
            Default::default();
        let mut any = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 rules");
            match &r.rule.host {
                HostPattern::Exact(h) => exact.entry(h.as_str().into()).or_default().push(i),
                HostPattern::Suffix(h) => suffix.entry(h.as_str().into()).or_default().push(i),
                HostPattern::Cidr(c) => {
                    let (v6, key) = match c.addr() {
                        std::net::IpAddr::V4(a) => (false, u128::from(u32::from(a))),
                        std::net::IpAddr::V6(a) => (true, u128::from(a)),
                    };
                    cidr.entry((std::cmp::Reverse(c.prefix_len()), v6)).or_default().entry(key).or_default().push(i);
                }
                HostPattern::Any => any.push(i),
            }
        }
        let order = |v: &mut Vec<u32>| {
            v.sort_by(|&a, &b| {
                let (ra, rb) = (&rules[a as usize].rule, &rules[b as usize].rule);
                rb.specificity().cmp(&ra.specificity()).then(ra.index.cmp(&rb.index))
            });
        };
        fn finish<K: std::hash::Hash + Eq>(
            m: HashMap<K, Vec<u32>>,
            order: &dyn Fn(&mut Vec<u32>),
        ) -> FnvMap<K, Box<[u32]>> {
            m.into_iter()
                .map(|(k, mut v)| {
                    order(&mut v);
                    (k, v.into_boxed_slice())
                })
                .collect()
        }
        let exact = finish(exact, &order);
        let suffix = finish(suffix, &order);
        let cidr: Box<[CidrGroup]> = cidr
            .into_iter()
            .map(|((std::cmp::Reverse(prefix), v6), nets)| CidrGroup { prefix, v6, nets: finish(nets, &order) })
            .collect();
        order(&mut any);
        // Deny rules compare paths without regard to case: no exact fingerprint for them.
        let first_key = rules
            .iter()
            .map(|r| match &r.rule.path {
                Some(p) if r.rule.action != Action::Deny => p.first_key(),
                _ => 0,
            })
            .collect();
        CompiledPolicy {
            first_key,
            file,
            mode,
            default: network.default,
            hold_timeout: network.hold_timeout,
            exact,
            suffix,
            cidr,
            any: any.into(),
            rules,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn default_action(&self) -> DefaultAction {
        self.default
    }

    pub fn hold_timeout(&self) -> Duration {
        self.hold_timeout
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The rules, in file order.
    pub fn rules(&self) -> impl ExactSizeIterator<Item = &Rule> {
        self.rules.iter().map(|r| &r.rule)
    }

    /// The rule a [`RuleRef`] (or a decision) points at.
    pub fn rule(&self, index: usize) -> Option<&Rule> {
        self.rules.get(index).map(|r| &r.rule)
    }

    /// Calls `f` with every rule whose host pattern matches `host`, most specific
    /// first, until it breaks.
    #[inline]
    fn for_each_candidate<B>(&self, host: &Host, mut f: impl FnMut(usize) -> ControlFlow<B>) -> Option<B> {
        let mut visit = |ids: &[u32]| -> ControlFlow<B> {
            for &i in ids {
                f(i as usize)?;
            }
            ControlFlow::Continue(())
        };
        let name = host.as_str();
        let run = |visit: &mut dyn FnMut(&[u32]) -> ControlFlow<B>| -> ControlFlow<B> {
            if let Some(ids) = self.exact.get(name) {
                visit(ids)?;
            }
            match host.ip() {
                None => {
                    if !self.suffix.is_empty() {
                        // Longest suffix first: "a.b.c" probes "b.c", then "c".
                        let mut rest = name;
                        while let Some(dot) = rest.find('.') {
                            rest = &rest[dot + 1..];
                            if let Some(ids) = self.suffix.get(rest) {
                                visit(ids)?;
                            }
                        }
                    }
                }
                Some(ip) => {
                    let (v6, addr, bits) = match ip {
                        std::net::IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
                        std::net::IpAddr::V6(a) => (true, u128::from(a), 128),
                    };
                    for g in self.cidr.iter().filter(|g| g.v6 == v6) {
                        let host_bits = bits - u32::from(g.prefix);
                        let net = addr.checked_shr(host_bits).and_then(|n| n.checked_shl(host_bits)).unwrap_or(0);
                        if let Some(ids) = g.nets.get(&net) {
                            visit(ids)?;
                        }
                    }
                }
            }
            visit(&self.any)
        };
        match run(&mut visit) {
            ControlFlow::Break(b) => Some(b),
            ControlFlow::Continue(()) => None,
        }
    }

    /// The decision for one request. Pure: no I/O, no clock, no allocation.
    #[must_use]
    pub fn decide(&self, req: &Request<'_>, now: SystemTime) -> Decision {
        let path = ReqPath::new(req.path);
        let mut best: Option<&CRule> = None;
        let deny = self.for_each_candidate(req.host, |i| {
            // Fast skip: a path rule whose first literal segment differs. Not for
            // ambiguous paths, which deny path rules must still catch.
            if !path.ambiguous && path.first_differs(self.first_key[i]) {
                return ControlFlow::Continue(());
            }
            let r = &self.rules[i];
            if !rule_matches(&r.rule, req, &path) {
                return ControlFlow::Continue(());
            }
            if r.rule.action == Action::Deny {
                return ControlFlow::Break(r);
            }
            if best.is_none() {
                best = Some(r);
            }
            ControlFlow::Continue(())
        });
        self.finish(deny.or(best), now)
    }

    fn finish(&self, winner: Option<&CRule>, now: SystemTime) -> Decision {
        let (policy_verdict, rule, rate, inject, mcp) = match winner {
            Some(r) => (
                Verdict::from(r.rule.action),
                Some(r.rref.clone()),
                r.rule.rate,
                r.rule.inject.clone(),
                r.rule.mcp.clone(),
            ),
            None => (
                match self.default {
                    DefaultAction::Deny => Verdict::Deny,
                    DefaultAction::Hold => Verdict::Hold,
                },
                None,
                None,
                None,
                None,
            ),
        };
        let verdict = match self.mode {
            Mode::Enforce => policy_verdict,
            Mode::Watch => Verdict::Allow,
        };
        Decision {
            verdict,
            policy_verdict,
            mode: self.mode,
            rule,
            rate,
            inject,
            mcp,
            hold_timeout: self.hold_timeout,
            decided_at: now,
        }
    }

    /// Whether a CONNECT to `host:port` can be decided without looking inside.
    ///
    /// * a matching host/port-only deny rule: `Decided(deny)` (deny wins);
    /// * a matching `intercept = false` rule: `Decided` among the host/port-only
    ///   rules — path rules cannot apply to a tunnel;
    /// * every matching rule is host/port-only: `Decided` among them;
    /// * no allow or hold rule can match and the default is deny: `Decided(deny)`;
    /// * otherwise `Intercept`.
    #[must_use]
    pub fn decide_connect(&self, host: &Host, port: u16, now: SystemTime) -> ConnectPlan {
        let mut host_only_best: Option<&CRule> = None;
        let mut no_intercept = false;
        let mut looks_inside = false;
        let mut may_pass = false;
        let deny = self.for_each_candidate(host, |i| {
            let r = &self.rules[i];
            if !r.rule.port_matches(port) {
                return ControlFlow::Continue(());
            }
            if r.rule.needs_interception() {
                looks_inside = true;
                may_pass |= r.rule.action != Action::Deny;
                return ControlFlow::Continue(());
            }
            if r.rule.action == Action::Deny {
                return ControlFlow::Break(r);
            }
            may_pass = true;
            no_intercept |= !r.rule.intercept;
            if host_only_best.is_none() {
                host_only_best = Some(r);
            }
            ControlFlow::Continue(())
        });
        if let Some(d) = deny {
            return ConnectPlan::Decided(self.finish(Some(d), now));
        }
        if no_intercept || !looks_inside {
            return ConnectPlan::Decided(self.finish(host_only_best, now));
        }
        if !may_pass && self.default == DefaultAction::Deny {
            return ConnectPlan::Decided(self.finish(None, now));
        }
        ConnectPlan::Intercept
    }

    /// The decision with the reasoning: every rule whose host matched, whether the
    /// rest matched, and why the winner won. Not for the hot path.
    pub fn explain(&self, req: &Request<'_>, now: SystemTime) -> Explanation {
        let decision = self.decide(req, now);
        let path = ReqPath::new(req.path);
        let mut considered = Vec::new();
        for r in &self.rules {
            if !r.rule.host.matches(req.host) {
                continue;
            }
            let outcome = if !r.rule.port_matches(req.port) {
                RuleOutcome::PortDiffers
            } else if !r.rule.method_matches(req.method) {
                RuleOutcome::MethodDiffers
            } else if r.rule.inject.is_some() && req.scheme == Scheme::Http {
                RuleOutcome::InjectNeedsHttps
            } else if !path_matches(&r.rule, &path) {
                if path.ambiguous {
                    RuleOutcome::AmbiguousPath
                } else {
                    RuleOutcome::PathDiffers
                }
            } else {
                RuleOutcome::Matched
            };
            considered.push(ConsideredRule {
                rule: r.rref.clone(),
                host: r.rule.host.to_string(),
                action: r.rule.action,
                outcome,
            });
        }
        let matched = considered.iter().filter(|c| c.outcome == RuleOutcome::Matched).count();
        let reason = match (&decision.rule, decision.policy_verdict) {
            (None, v) => format!("no rule matched; the [network] default is {v}"),
            (Some(r), Verdict::Deny) => format!("{r} denies, and a matching deny rule wins over every allow or hold"),
            (Some(r), v) if matched == 1 => format!("{r} is the only matching rule; it says {v}"),
            (Some(r), v) => format!(
                "{r} is the most specific of {matched} matching rules (exact host > longer *.suffix > CIDR by prefix > *, then port, then path: exact > wildcard > prefix, then methods; a tie goes to hold, then to the earlier rule); it says {v}"
            ),
        };
        let reason = if decision.mode == Mode::Watch && decision.policy_verdict != Verdict::Allow {
            format!("{reason}; watch mode lets it through and records it")
        } else {
            reason
        };
        Explanation { decision, ambiguous_path: path.ambiguous, considered, reason }
    }
}

#[inline]
fn path_matches(rule: &Rule, path: &ReqPath<'_>) -> bool {
    match &rule.path {
        None => true,
        // Fail closed: an ambiguous path is caught by deny path rules and never
        // allowed by allow/hold path rules.
        Some(_) if path.ambiguous => rule.action == Action::Deny,
        // A deny rule also catches case variants (see `Fold`): fails closed.
        Some(p) if rule.action == Action::Deny => p.matches_req(path, Fold::AnyCase),
        Some(p) => p.matches_req(path, Fold::Exact),
    }
}

#[inline]
fn rule_matches(rule: &Rule, req: &Request<'_>, path: &ReqPath<'_>) -> bool {
    rule.port_matches(req.port)
        && rule.method_matches(req.method)
        && !(rule.inject.is_some() && req.scheme == Scheme::Http)
        && path_matches(rule, path)
}

/// Why a rule whose host matched did or did not match the whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    Matched,
    PortDiffers,
    MethodDiffers,
    PathDiffers,
    /// The request path is ambiguous (see the `path` module) and the rule allows or
    /// holds by path.
    AmbiguousPath,
    /// The rule injects a secret and the request is plain HTTP.
    InjectNeedsHttps,
}

impl fmt::Display for RuleOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleOutcome::Matched => "matches",
            RuleOutcome::PortDiffers => "port differs",
            RuleOutcome::MethodDiffers => "method differs",
            RuleOutcome::PathDiffers => "path differs",
            RuleOutcome::AmbiguousPath => {
                "request path is ambiguous (dot segments, `//`, encoded `/`, `;`...): never allowed by a path rule"
            }
            RuleOutcome::InjectNeedsHttps => "injects a secret, and the request is plain http",
        })
    }
}

/// One rule whose host matched the request.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsideredRule {
    pub rule: RuleRef,
    pub host: String,
    pub action: Action,
    pub outcome: RuleOutcome,
}

/// [`CompiledPolicy::explain`]'s answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub decision: Decision,
    pub ambiguous_path: bool,
    pub considered: Vec<ConsideredRule>,
    pub reason: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.decision;
        write!(f, "{}", d.verdict)?;
        if d.mode == Mode::Watch {
            write!(f, " (watch mode; enforce would {})", d.policy_verdict)?;
        }
        writeln!(f, ": {}", self.reason)?;
        if self.considered.is_empty() {
            writeln!(f, "  no rule names this host")?;
        }
        for c in &self.considered {
            writeln!(f, "  {} {} {}: {}", c.rule, c.action, c.host, c.outcome)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_profile;

    /// The indexes must give exactly what a scan of every rule in file order gives.
    fn naive(p: &CompiledPolicy, req: &Request<'_>) -> (Verdict, Option<usize>) {
        let path = ReqPath::new(req.path);
        let matching: Vec<&Rule> =
            p.rules().filter(|r| r.host.matches(req.host) && rule_matches(r, req, &path)).collect();
        let best = |want_deny: bool| {
            matching
                .iter()
                .filter(|r| (r.action == Action::Deny) == want_deny)
                .max_by(|a, b| a.specificity().cmp(&b.specificity()).then(b.index.cmp(&a.index)))
                .map(|r| (Verdict::from(r.action), Some(r.index)))
        };
        best(true).or_else(|| best(false)).unwrap_or((Verdict::Deny, None))
    }

    #[test]
    fn indexes_agree_with_a_full_scan() {
        let hosts = ["a.com", "x.a.com", "y.x.a.com", "b.org", "10.1.2.3", "10.9.9.9", "[fd00::1]", "c.net"];
        let pats = [
            "a.com",
            "*.a.com",
            "*.x.a.com",
            "*.com",
            "b.org",
            "*",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.3",
            "fd00::/8",
            "c.net",
        ];
        let paths = ["/", "/v1", "/v1/x", "/v1/x/y", "/v2/x", "/v1/../v2", "/v1/%78", "/V1/X", "/v1/%58", "/V2/x/y"];
        let path_pats = [None, Some("/v1/**"), Some("/v1/x"), Some("/*/x"), Some("/v2/**")];
        let actions = ["allow", "deny", "hold"];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..40 {
            let mut text = String::new();
            for _ in 0..(5 + rnd(25)) {
                text.push_str(&format!(
                    "[[network.rule]]\nhost = \"{}\"\naction = \"{}\"\n",
                    pats[rnd(pats.len())],
                    actions[rnd(3 + 3) % 3]
                ));
                if let Some(pp) = path_pats[rnd(path_pats.len())] {
                    text.push_str(&format!("path = \"{pp}\"\n"));
                }
                match rnd(4) {
                    0 => text.push_str("port = 443\n"),
                    1 => text.push_str("methods = [\"GET\"]\n"),
                    _ => {}
                }
            }
            let p = parse_profile(Path::new("r.toml"), &text).unwrap();
            for h in hosts {
                let host = Host::parse(h).unwrap();
                for path in paths {
                    for (method, port) in [("GET", 443), ("POST", 80)] {
                        let req = Request { scheme: Scheme::Https, host: &host, port, method, path };
                        let d = p.compiled.decide(&req, SystemTime::UNIX_EPOCH);
                        assert_eq!(
                            (d.policy_verdict, d.rule.map(|r| r.index)),
                            naive(&p.compiled, &req),
                            "round {round}: {method} {h}:{port}{path}\n{text}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn deny_path_rules_catch_case_variants_and_allow_rules_do_not_widen() {
        let text = "[[network.rule]]\nhost = \"a.com\"\npath = \"/v1/**\"\naction = \"allow\"\n\
                    [[network.rule]]\nhost = \"a.com\"\npath = \"/v1/admin/**\"\naction = \"deny\"\n";
        let p = parse_profile(Path::new("r.toml"), text).unwrap();
        let host = Host::parse("a.com").unwrap();
        let verdict = |path: &str| {
            let req = Request { scheme: Scheme::Https, host: &host, port: 443, method: "GET", path };
            p.compiled.decide(&req, SystemTime::UNIX_EPOCH).policy_verdict
        };
        assert_eq!(verdict("/v1/chat"), Verdict::Allow);
        for bypass in ["/v1/admin/x", "/v1/ADMIN/x", "/v1/Admin", "/V1/aDmIn/users", "/v1/%41dmin/x", "/v1/%61DMIN"] {
            assert_eq!(verdict(bypass), Verdict::Deny, "{bypass}");
        }
        // The allow rule names `/v1`, not `/V1`: the variant falls to the default.
        assert_eq!(verdict("/V1/chat"), Verdict::Deny);
    }
}
