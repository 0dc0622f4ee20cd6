//! The gateway's view of a profile: its compiled policy, its secrets, and the few
//! questions the transport asks of them. The policy itself stays pure (gvm-policy);
//! everything stateful (holds, rate buckets, secrets) is on this side.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gvm_policy::{CompiledPolicy, ConnectPlan, Decision, Host, HostPattern, Scheme};
use http::{HeaderName, HeaderValue};

pub(crate) use gvm_policy::Verdict;

use crate::exfil::{Encoding, Hit, NeedleKind, Scanner};

/// A decision, with what the transport needs already worked out.
#[derive(Debug, Clone)]
pub(crate) struct Ruling {
    pub verdict: Verdict,
    /// What enforce mode would have done (differs from `verdict` in watch mode).
    pub policy_verdict: Verdict,
    /// `network.rule[i] (file:line)`, made once per profile load; `None` = the
    /// profile's default.
    pub rule: Option<Arc<str>>,
    pub rule_index: Option<usize>,
    /// `(count, per)`.
    pub rate: Option<(u32, Duration)>,
    pub inject: Vec<(HeaderName, HeaderValue)>,
    /// The secrets the deciding rule injects: their placeholders may go with it.
    pub inject_secrets: Vec<String>,
    pub hold_timeout: Duration,
    /// The deciding rule's `mcp` table, and whether the profile only watches.
    pub mcp: Option<(Arc<gvm_policy::McpTools>, bool)>,
}

impl Ruling {
    /// The `decision` column of the audit event.
    pub(crate) fn audit_decision(&self) -> &'static str {
        match (self.verdict, self.policy_verdict) {
            (Verdict::Allow, Verdict::Allow) => "allow",
            (Verdict::Allow, _) => "watch", // watch mode let through what enforce would not
            (Verdict::Hold, _) => "hold",
            (Verdict::Deny, _) => "deny",
        }
    }

    fn deny(rule: Option<Arc<str>>, reason_rule: Option<usize>) -> Self {
        Ruling {
            verdict: Verdict::Deny,
            policy_verdict: Verdict::Deny,
            rule,
            rule_index: reason_rule,
            rate: None,
            inject: Vec::new(),
            inject_secrets: Vec::new(),
            hold_timeout: Duration::ZERO,
            mcp: None,
        }
    }
}

pub(crate) enum ConnectRuling {
    Decided(Ruling),
    Intercept,
}

/// One profile as the gateway holds it.
#[derive(Clone)]
pub(crate) struct ProfileState {
    pub name: Arc<str>,
    pub policy: Arc<CompiledPolicy>,
    /// SHA-256 of the profile version `policy` was compiled from; every decision event
    /// names it as `details.policy_version`.
    pub version: Arc<str>,
    /// Secret name → value, loaded by `set_profile`; `Err` keeps why it is missing.
    pub secrets: HashMap<String, Result<String, String>>,
    pub limits: gvm_policy::Limits,
    /// `[budget]`.
    pub budget: Option<gvm_policy::Budget>,
    /// Each rule's `budget`, by rule index.
    pub rule_budgets: Vec<Option<gvm_policy::Budget>>,
    /// Each rule's name as decisions give it: `network.rule[i] (file:line)`.
    pub rule_names: Vec<Arc<str>>,
    /// Each rule's budget counter key ([`crate::spend::rule_key`]): its match, not its
    /// position, so reordering rules leaves spend where it was.
    pub rule_keys: Vec<String>,
    /// Each rule's `intercept = false`, by rule index.
    pub rule_tunnel: Vec<bool>,
    /// Each rule's `cost`, by rule index.
    pub rule_costs: Vec<Option<gvm_policy::Money>>,
    /// `[limits] request_body_per_sec`, shared by all the profile's request bodies.
    pub body: Arc<std::sync::Mutex<crate::budget::Bucket>>,
    /// Secret values, placeholders and `deny_read` file values; `None`: nothing to scan.
    pub scan: Option<Arc<Scanner>>,
    /// Secret name → `[secrets.NAME] hosts`.
    pub bound: HashMap<String, Vec<HostPattern>>,
    /// Secret name → placeholder.
    pub placeholders: HashMap<String, String>,
    /// Secrets whose placeholder is swapped in request bodies too (`body = true`).
    pub body_secrets: Vec<String>,
    /// `[agent] serve` and `[ingress]`: who may call this agent (agents.rs).
    pub ingress: Arc<gvm_policy::Ingress>,
    /// The profile's file, named in refusals of calls to this agent.
    pub file: Arc<std::path::Path>,
}

/// Why a request was refused for what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leak {
    /// A secret's value or a masked file's value (`kind = exfiltration`).
    Exfiltration { label: String, encoding: Encoding, secret: Option<String> },
    /// A placeholder headed where its secret is not bound (`kind = secret_egress`).
    Egress { secret: String, reason: String },
}

impl Leak {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Leak::Exfiltration { .. } => "exfiltration",
            Leak::Egress { .. } => "secret_egress",
        }
    }

    /// What the agent and the audit log are told: names, never values.
    pub(crate) fn label(&self) -> String {
        match self {
            Leak::Exfiltration { label, encoding, .. } => format!("{label} ({})", encoding.as_str()),
            Leak::Egress { secret, .. } => format!("placeholder of secret {secret}"),
        }
    }

    pub(crate) fn reason(&self) -> String {
        match self {
            Leak::Exfiltration { .. } => format!(
                "the request carries {}: values of secrets and of files the profile hides from the agent \
                 (`[files] deny_read`) never leave through gvm, in any encoding",
                self.label()
            ),
            Leak::Egress { reason, .. } => reason.clone(),
        }
    }
}

/// Where in the request a value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Url,
    HeaderName,
    Header,
    Body,
}

impl Place {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Place::Url => "url",
            Place::HeaderName => "header name",
            Place::Header => "header",
            Place::Body => "body",
        }
    }
}

impl ProfileState {
    /// Names the version a decision was made under in its event's details (part of the
    /// folding key too, so a folded event never spans two versions).
    pub(crate) fn stamp(&self, details: &mut serde_json::Value) {
        if let serde_json::Value::Object(m) = details {
            m.insert("policy_version".into(), serde_json::Value::String(self.version.to_string()));
        }
    }

    fn ruling(&self, d: Decision) -> Ruling {
        // The rule's name was made when the profile was loaded (no formatting here).
        let rule = d.rule.as_ref().map(|r| match self.rule_names.get(r.index) {
            Some(name) => name.clone(),
            None => Arc::from(r.to_string()),
        });
        let rule_index = d.rule.as_ref().map(|r| r.index);
        let mut inject = Vec::new();
        let mut inject_secrets = Vec::new();
        if d.verdict != Verdict::Deny {
            if let Some(inj) = &d.inject {
                inject_secrets = inj.secrets().map(str::to_owned).collect();
                let rendered =
                    inj.render(|name| self.secrets.get(name).and_then(|r| r.as_ref().ok()).map(String::as_str));
                let header = HeaderName::from_bytes(inj.header.as_bytes());
                match (rendered, header) {
                    (Ok(v), Ok(h)) => match HeaderValue::from_str(&v) {
                        Ok(mut v) => {
                            v.set_sensitive(true);
                            inject.push((h, v));
                        }
                        // Fail closed: a rule that cannot do what it says denies.
                        Err(_) => return Ruling::deny(rule, rule_index),
                    },
                    _ => return Ruling::deny(rule, rule_index),
                }
            }
        }
        Ruling {
            verdict: d.verdict,
            policy_verdict: d.policy_verdict,
            rule,
            rule_index,
            rate: d.rate.map(|r| (r.count, r.per.as_duration())),
            inject,
            inject_secrets,
            hold_timeout: d.hold_timeout,
            mcp: d.mcp.map(|m| (m, d.mode == gvm_policy::Mode::Watch)),
        }
    }

    /// True when `secret`'s placeholder may be swapped for its value on this request:
    /// over TLS, to a host of `[secrets.NAME] hosts` or by a rule that injects it.
    /// Never to another agent (`agent.<name>`): that would hand the secret to it.
    pub(crate) fn placeholder_bound(&self, secret: &str, ruling: &Ruling, tls: bool, host: &Host) -> bool {
        tls && crate::agents::agent_host(host.as_str()).is_none()
            && (ruling.inject_secrets.iter().any(|s| s == secret)
                || self.bound.get(secret).is_some_and(|hs| hs.iter().any(|h| h.matches(host))))
    }

    /// What a hit in `place` means for this request: `Ok(())` for a placeholder that
    /// may be swapped here (a literal one, in a header, bound to this request).
    pub(crate) fn judge(&self, hit: &Hit, place: Place, ruling: &Ruling, tls: bool, host: &Host) -> Result<(), Leak> {
        let Some(scan) = &self.scan else { return Ok(()) };
        let n = &scan.needles()[hit.needle];
        match n.kind {
            NeedleKind::Secret | NeedleKind::File => Err(Leak::Exfiltration {
                label: n.label.to_string(),
                encoding: hit.encoding,
                secret: n.secret.as_deref().map(str::to_owned),
            }),
            NeedleKind::Placeholder => {
                let secret = n.secret.as_deref().unwrap_or_default().to_string();
                let bound = self.placeholder_bound(&secret, ruling, tls, host);
                if bound && place == Place::Header && hit.encoding == Encoding::Literal {
                    return Ok(());
                }
                let why = if !tls {
                    "it would travel in plain HTTP".to_string()
                } else if !bound {
                    format!("`{host}` is not a host the secret is bound to")
                } else if place != Place::Header {
                    format!("a placeholder is only swapped in header values, not in the {}", place.as_str())
                } else {
                    format!("it is {}, and only the placeholder as it is is swapped", hit.encoding.as_str())
                };
                let reason = format!(
                    "the request carries the placeholder of secret {secret}, and {why}. The placeholder \
                     (in your environment) stands for a credential gvm adds itself: send it as it is, \
                     in a header, over HTTPS, only to the hosts the profile binds the secret to ([secrets.{secret}] hosts, or a rule that injects it)"
                );
                Err(Leak::Egress { secret, reason })
            }
        }
    }

    /// The budgets a request decided by `ruling` is charged to: its rule's, then the
    /// profile's.
    pub(crate) fn budgets(&self, ruling: &Ruling) -> Vec<crate::spend::Applies> {
        let mut out = Vec::new();
        if let Some((i, Some(b))) = ruling.rule_index.map(|i| (i, self.rule_budgets.get(i).copied().flatten())) {
            out.push(crate::spend::Applies {
                key: self.rule_key(i),
                name: ruling.rule.as_deref().map_or_else(|| format!("network.rule[{i}]"), str::to_owned),
                budget: b,
            });
        }
        if let Some(b) = self.budget {
            out.push(crate::spend::Applies { key: "profile".into(), name: "profile".into(), budget: b });
        }
        out
    }

    /// Every budget of the profile: `[budget]`, then the rules' in order.
    pub(crate) fn all_budgets(&self) -> Vec<crate::spend::Applies> {
        let mut out = Vec::new();
        if let Some(b) = self.budget {
            out.push(crate::spend::Applies { key: "profile".into(), name: "profile".into(), budget: b });
        }
        for (i, b) in self.rule_budgets.iter().enumerate() {
            if let Some(b) = b {
                out.push(crate::spend::Applies {
                    key: self.rule_key(i),
                    name: self.rule_names.get(i).map_or_else(|| format!("network.rule[{i}]"), |n| n.to_string()),
                    budget: *b,
                });
            }
        }
        out
    }

    fn rule_key(&self, i: usize) -> String {
        self.rule_keys.get(i).cloned().unwrap_or_else(|| format!("network.rule[{i}]"))
    }

    /// What a request decided by `ruling` costs (its rule's `cost`, else nothing).
    pub(crate) fn cost(&self, ruling: &Ruling) -> gvm_policy::Money {
        ruling.rule_index.and_then(|i| self.rule_costs.get(i).copied().flatten()).unwrap_or_default()
    }

    pub(crate) fn decide(&self, scheme: &str, host: &Host, port: u16, method: &str, path: &str) -> Ruling {
        let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
        let req = gvm_policy::Request { scheme, host, port, method, path };
        self.ruling(self.policy.decide(&req, SystemTime::now()))
    }

    pub(crate) fn decide_connect(&self, host: &Host, port: u16) -> ConnectRuling {
        match self.policy.decide_connect(host, port, SystemTime::now()) {
            ConnectPlan::Intercept => ConnectRuling::Intercept,
            ConnectPlan::Decided(d) => ConnectRuling::Decided(self.ruling(d)),
        }
    }

    /// True when a non-deny rule names this address (exact IP or CIDR), which lets the
    /// SSRF check pass an internal address.
    pub(crate) fn names_ip(&self, ip: IpAddr, port: u16) -> bool {
        let h = Host::from_ip(ip);
        self.policy.rules().any(|r| {
            r.action != gvm_policy::Action::Deny
                && matches!(r.host, gvm_policy::HostPattern::Exact(_) | gvm_policy::HostPattern::Cidr(_))
                && r.host.matches(&h)
                && (r.ports.is_empty() || r.ports.contains(&port))
        })
    }

    /// Whether DNS answers this name: some allow/hold rule could match it (or the
    /// default holds, or watch mode), and it is not denied outright on 80 and 443.
    pub(crate) fn dns_answer(&self, host: &Host) -> (bool, Option<String>) {
        let denied_on = |port| match self.policy.decide_connect(host, port, SystemTime::now()) {
            ConnectPlan::Decided(d) if d.verdict == Verdict::Deny => Some(d.rule.map(|r| r.to_string())),
            _ => None,
        };
        let (d443, d80) = (denied_on(443), denied_on(80));
        if let (Some(r), Some(_)) = (&d443, &d80) {
            // Unless some non-deny rule on another port could match it.
            let other = self
                .policy
                .rules()
                .find(|r| r.action != gvm_policy::Action::Deny && r.host.matches(host) && !r.ports.is_empty());
            return match other {
                Some(rule) => (true, Some(format!("network.rule[{}]", rule.index))),
                None => (false, r.clone()),
            };
        }
        let rule = self
            .policy
            .rules()
            .find(|r| r.action != gvm_policy::Action::Deny && r.host.matches(host))
            .map(|r| format!("network.rule[{}]", r.index));
        (true, rule)
    }
}
