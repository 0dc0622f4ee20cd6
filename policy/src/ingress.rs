//! `[ingress]`: which other profiles may call the ports an agent serves
//! (`[agent] serve`), decided purely like the egress rules.
//!
//! A call reaches the callee only when the caller's own `[[network.rule]]` allows
//! `agent.<callee>` *and* the callee's ingress allows it. Nobody may call by default; a
//! `[[ingress.deny]]` that matches wins over any `[[ingress.allow]]`. Paths are matched
//! as in network rules: an ambiguous path (`//`, dot segments, encoded `/`...) never
//! matches an allow rule with a `path` and always matches a deny rule with one; deny
//! paths match without regard to ASCII case.

use std::path::Path;

use crate::path::{Fold, PathPattern, ReqPath};

/// `from = "*"`: any calling profile.
pub const ANY_CALLER: &str = "*";

/// Allow or deny, as the table's name says (`[[ingress.allow]]`, `[[ingress.deny]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressAction {
    Allow,
    Deny,
}

impl IngressAction {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressAction::Allow => "allow",
            IngressAction::Deny => "deny",
        }
    }
}

/// One `[[ingress.allow]]` or `[[ingress.deny]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressRule {
    pub action: IngressAction,
    /// Its index among the tables of its kind (`ingress.allow[i]`).
    pub index: usize,
    /// 1-based line of its `from`.
    pub line: u32,
    /// A profile name, or [`ANY_CALLER`].
    pub from: String,
    /// `None`: every served port.
    pub port: Option<u16>,
    /// Empty: every method.
    pub methods: Vec<String>,
    pub path: Option<PathPattern>,
}

impl IngressRule {
    /// `ingress.allow[0]`: the name decisions, answers and the audit log give it.
    pub fn field(&self) -> String {
        format!("ingress.{}[{}]", self.action.as_str(), self.index)
    }

    fn matches(&self, call: &Call<'_>, path: &ReqPath<'_>) -> bool {
        (self.from == ANY_CALLER || self.from == call.from)
            && self.port.is_none_or(|p| p == call.port)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == call.method))
            && match &self.path {
                None => true,
                Some(_) if path.ambiguous => self.action == IngressAction::Deny,
                Some(p) if self.action == IngressAction::Deny => p.matches_req(path, Fold::AnyCase),
                Some(p) => p.matches_req(path, Fold::Exact),
            }
    }
}

/// `[agent] serve` and `[ingress]` of one profile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ingress {
    /// The ports the agent listens on inside its own netns (`[agent] serve`).
    pub serve: Vec<u16>,
    /// Deny tables first, then allow tables, each in file order.
    pub rules: Vec<IngressRule>,
}

/// One call of another agent, as the gateway saw it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The calling profile (the listener the request came in on).
    pub from: &'a str,
    pub port: u16,
    pub method: &'a str,
    /// The request path (a query is ignored).
    pub path: &'a str,
}

/// What the callee's ingress says about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressDecision {
    pub allow: bool,
    /// `ingress.allow[0] (file:line)`; `None`: no rule matched (or the port is not served).
    pub rule: Option<String>,
    /// For refusals: what is wrong and what to change, naming the callee's file.
    pub reason: String,
}

impl Ingress {
    /// Decides `call` against this profile's ingress (`file` names it in reasons).
    pub fn decide(&self, callee: &str, file: &Path, call: &Call<'_>) -> IngressDecision {
        let name = |r: &IngressRule| format!("{} ({}:{})", r.field(), file.display(), r.line);
        if !self.serve.contains(&call.port) {
            let served = if self.serve.is_empty() {
                "serves no port".to_string()
            } else {
                format!("serves only {:?}", self.serve)
            };
            return IngressDecision {
                allow: false,
                rule: None,
                reason: format!(
                    "agent `{callee}` {served}, not port {}: add {} to `[agent] serve` in {} and have the agent \
                     listen on it (127.0.0.1 inside its sandbox is enough)",
                    call.port,
                    call.port,
                    file.display()
                ),
            };
        }
        let path = ReqPath::new(call.path);
        let deny = self.rules.iter().find(|r| r.action == IngressAction::Deny && r.matches(call, &path));
        if let Some(r) = deny {
            return IngressDecision {
                allow: false,
                rule: Some(name(r)),
                reason: format!("agent `{callee}` refuses this call from `{}`: {} denies it", call.from, name(r)),
            };
        }
        let allow = self.rules.iter().find(|r| r.action == IngressAction::Allow && r.matches(call, &path));
        match allow {
            Some(r) => IngressDecision { allow: true, rule: Some(name(r)), reason: String::new() },
            None => IngressDecision {
                allow: false,
                rule: None,
                reason: format!(
                    "agent `{callee}` lets nobody call it unless its [ingress] says so, and no [[ingress.allow]] in {} \
                     matches {} {} on port {} from `{}`: add an [[ingress.allow]] table there with from = \"{}\", \
                     port = {}, methods = [\"{}\"], path = \"{}\"",
                    file.display(),
                    call.method,
                    path.path,
                    call.port,
                    call.from,
                    call.from,
                    call.port,
                    call.method,
                    if path.ambiguous { "/..." } else { path.path },
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        action: IngressAction,
        index: usize,
        from: &str,
        port: Option<u16>,
        methods: &[&str],
        path: Option<&str>,
    ) -> IngressRule {
        IngressRule {
            action,
            index,
            line: 10 + index as u32,
            from: from.into(),
            port,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path: path.map(|p| PathPattern::parse(p).unwrap()),
        }
    }

    fn call<'a>(from: &'a str, port: u16, method: &'a str, path: &'a str) -> Call<'a> {
        Call { from, port, method, path }
    }

    #[test]
    fn nobody_may_call_unless_a_rule_allows_and_deny_wins() {
        let file = Path::new("/etc/gvm/profiles/b.toml");
        let ing = Ingress {
            serve: vec![8080, 9090],
            rules: vec![
                rule(IngressAction::Deny, 0, "*", None, &[], Some("/admin/**")),
                rule(IngressAction::Allow, 0, "a", Some(8080), &["POST"], Some("/tasks/**")),
                rule(IngressAction::Allow, 1, "*", Some(9090), &[], None),
            ],
        };
        let d = ing.decide("b", file, &call("a", 8080, "POST", "/tasks/1?x=2"));
        assert!(d.allow, "{d:?}");
        assert_eq!(d.rule.as_deref(), Some("ingress.allow[0] (/etc/gvm/profiles/b.toml:10)"));
        // Another caller, another method, another path: the default refuses, and says how to allow.
        for c in
            [call("c", 8080, "POST", "/tasks/1"), call("a", 8080, "GET", "/tasks/1"), call("a", 8080, "POST", "/x")]
        {
            let d = ing.decide("b", file, &c);
            assert!(!d.allow && d.rule.is_none(), "{c:?}: {d:?}");
            assert!(d.reason.contains("[[ingress.allow]]") && d.reason.contains("b.toml"), "{}", d.reason);
        }
        // `*` lets anyone call 9090, but not the denied path, in any case.
        assert!(ing.decide("b", file, &call("zz", 9090, "DELETE", "/any")).allow);
        for p in ["/admin/users", "/ADMIN/users", "/admin"] {
            let d = ing.decide("b", file, &call("a", 9090, "GET", p));
            assert!(!d.allow, "{p}");
            assert_eq!(d.rule.as_deref(), Some("ingress.deny[0] (/etc/gvm/profiles/b.toml:10)"), "{p}");
        }
        // An ambiguous path never passes an allow rule with a path, and hits a deny rule with one.
        assert!(!ing.decide("b", file, &call("a", 8080, "POST", "/tasks/../admin")).allow);
        assert!(!ing.decide("b", file, &call("a", 9090, "GET", "/x/%2e%2e/admin")).allow);
        // A port the agent does not serve is refused, naming `serve`.
        let d = ing.decide("b", file, &call("a", 22, "GET", "/"));
        assert!(!d.allow && d.reason.contains("[agent] serve") && d.reason.contains("[8080, 9090]"), "{}", d.reason);
        let none = Ingress::default();
        assert!(none.decide("b", file, &call("a", 8080, "GET", "/")).reason.contains("serves no port"));
    }
}
