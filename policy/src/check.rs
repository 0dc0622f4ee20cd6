//! `gvmctl policy check`: warnings about a profile that loads but probably does not
//! do what its author meant. Errors refuse a profile at load time; these do not.

use std::collections::BTreeSet;

use crate::diag::{Diagnostic, Warning};
use crate::profile::{DefaultAction, Mode, Profile};
use crate::rule::{Action, InjectPart, Rule};

/// Warnings for a loaded profile, in rule order.
pub fn check(profile: &Profile) -> Vec<Warning> {
    let rules = &profile.network.rules;
    let mut out = profile.tier_warnings.clone();
    let at = |r: &Rule, message: String, fix: Option<&str>| Diagnostic {
        file: profile.file.clone(),
        line: Some(r.line),
        column: Some(r.column),
        field: Some(format!("network.rule[{}]", r.index)),
        message,
        fix: fix.map(str::to_owned),
    };

    if profile.agent.mode == Mode::Watch {
        let mut d = Diagnostic::file_level(&profile.file, "watch mode: every request is allowed and only recorded");
        d.field = Some("agent.mode".into());
        d.fix = Some("run `gvmctl suggest` to turn what was seen into rules, then set mode = \"enforce\"".into());
        out.push(d);
    }

    for r in rules {
        // Shadowed by a broader deny (deny wins regardless of specificity).
        if r.action != Action::Deny {
            if let Some(d) = rules.iter().find(|d| d.action == Action::Deny && d.index != r.index && deny_covers(d, r))
            {
                out.push(at(
                    r,
                    format!("this {} rule can never match: network.rule[{}] (line {}) denies every request it matches, and deny wins", r.action, d.index, d.line),
                    Some("narrow the deny rule or remove this one"),
                ));
            }
        }
        // Later exact duplicates of the matcher.
        if let Some(first) = rules[..r.index].iter().find(|o| same_matcher(o, r)) {
            out.push(at(
                r,
                format!("matches exactly the same requests as network.rule[{}] (line {})", first.index, first.line),
                Some("merge the two rules"),
            ));
        }
        // A tunnel makes other rules' method/path/inject meaningless for that host.
        if r.needs_interception() {
            if let Some(t) = rules.iter().find(|t| !t.intercept && t.host.covers(&r.host) && ports_overlap(t, r)) {
                let what = if r.inject.is_some() { "header injection" } else { "method and path" };
                out.push(at(
                    r,
                    format!("its {what} can never apply: network.rule[{}] (line {}) tunnels this host without interception (intercept = false)", t.index, t.line),
                    Some("remove one of the two rules"),
                ));
            }
        }
        if r.action != Action::Deny {
            if let Some(what) = r.host.broad() {
                out.push(at(r, format!("this rule {}s {what}", r.action), Some("name the hosts the agent needs")));
            }
        }
        if let Some(m) = &r.mcp {
            if m.tools.iter().any(|t| t == "*") && m.deny_tools.is_empty() {
                out.push(at(
                    r,
                    "its `mcp.tools = [\"*\"]` lets the agent call every tool the server has, also ones added later"
                        .to_string(),
                    Some("list the tools the agent needs, or add deny_tools = [\"delete_*\", ...]"),
                ));
            }
        }
        if let Some(inj) = &r.inject {
            if !inj.parts().iter().any(|p| matches!(p, InjectPart::Secret(_))) {
                out.push(at(
                    r,
                    format!("the injected `{}` header is a constant; the secret is visible in the profile", inj.header),
                    Some("put the value in [secrets] and write {secret:NAME}"),
                ));
            }
        }
    }

    let holds = profile.network.default == DefaultAction::Hold || rules.iter().any(|r| r.action == Action::Hold);
    if holds && !profile.network.hold_timeout_set {
        let mut d = Diagnostic::file_level(
            &profile.file,
            format!(
                "held requests are denied after the default {}s if nobody answers",
                profile.network.hold_timeout.as_secs()
            ),
        );
        d.field = Some("network.hold_timeout".into());
        d.fix = Some("set hold_timeout in [network] to say how long a request may wait".into());
        if let Some(r) = rules.iter().find(|r| r.action == Action::Hold) {
            d.line = Some(r.line);
            d.column = Some(r.column);
        }
        out.push(d);
    }

    let used: BTreeSet<&str> = rules.iter().filter_map(|r| r.inject.as_deref()).flat_map(|i| i.secrets()).collect();
    for name in profile.secrets.keys() {
        let bound = profile.secret_use.get(name).is_some_and(|u| !u.hosts.is_empty());
        let placeholder = profile.secret_use.get(name).is_some_and(|u| u.env.is_some());
        if !used.contains(name.as_str()) && !bound {
            let mut d = Diagnostic::file_level(&profile.file, "this secret is not used by any rule");
            d.field = Some(format!("secrets.{name}"));
            d.fix =
                Some("remove it, or inject it with {secret:NAME}, or bind its placeholder with hosts = [...]".into());
            out.push(d);
        }
        if bound && !placeholder {
            let mut d = Diagnostic::file_level(
                &profile.file,
                "this secret has hosts but no env: the agent has no placeholder to send",
            );
            d.field = Some(format!("secrets.{name}.hosts"));
            d.fix = Some("add env = \"NAME_OF_THE_VARIABLE\" (the agent gets a placeholder in it)".into());
            out.push(d);
        }
        if placeholder && !bound && !used.contains(name.as_str()) {
            let mut d = Diagnostic::file_level(
                &profile.file,
                "this secret's placeholder is bound to no host: every request carrying it is refused",
            );
            d.field = Some(format!("secrets.{name}.env"));
            d.fix = Some("add hosts = [\"api.example.com\"], or a rule that injects {secret:NAME}".into());
            out.push(d);
        }
    }
    out
}

fn deny_covers(d: &Rule, r: &Rule) -> bool {
    let ports = d.ports.is_empty() || (!r.ports.is_empty() && r.ports.iter().all(|p| d.ports.contains(p)));
    let methods = d.methods.is_empty() || (!r.methods.is_empty() && r.methods.iter().all(|m| d.methods.contains(m)));
    let path = match (&d.path, &r.path) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a.covers(b),
    };
    d.host.covers(&r.host) && ports && methods && path
}

fn same_matcher(a: &Rule, b: &Rule) -> bool {
    let sorted = |v: &[u16]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    a.host == b.host
        && sorted(&a.ports) == sorted(&b.ports)
        && a.methods.iter().collect::<BTreeSet<_>>() == b.methods.iter().collect::<BTreeSet<_>>()
        && a.path.as_ref().map(|p| p.as_str().trim_end_matches('/'))
            == b.path.as_ref().map(|p| p.as_str().trim_end_matches('/'))
}

fn ports_overlap(a: &Rule, b: &Rule) -> bool {
    a.ports.is_empty() || b.ports.is_empty() || a.ports.iter().any(|p| b.ports.contains(p))
}
