//! Risk tiers: `[agent] tier = "L0".."L5"`, a preset of defaults and ceilings over what
//! the profile language already has (`[network] default`, allow/hold rules, methods,
//! tunnels, workspace modes, `[budget]`, watch mode). A tier adds no enforcement path of
//! its own: it fills in what the profile leaves out and refuses a profile that reaches
//! further than the tier, unless `[agent] tier_override` names what may go further; each
//! such loosening is then a `gvmctl policy check` warning (and gvmd logs it on load).
//! A profile without `tier` is read exactly as before.
//!
//! The table of what each tier sets is in docs/policy.md ("Risk tiers"); [`Tier::preset`]
//! is its source.
//!
//! A "named host" is anything but `*`, a top-level domain (`*.com`) or `0.0.0.0/0`. A
//! rule with `intercept = false` counts as any method (a tunnel's methods are never
//! seen). Watch mode lets every request through, so it is beyond every tier.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::diag::{Diagnostic, Warning};
use crate::profile::{Agent, DefaultAction, Mode, Network, WorkspaceMode};
use crate::rule::{Action, Rule};

/// `[agent] tier`: how much the agent may do without a human, L0 (nothing leaves the
/// sandbox) to L5 (broad egress, writes and unknown hosts held).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    L0,
    L1,
    L2,
    L3,
    L4,
    L5,
}

impl Tier {
    pub const ALL: [Tier; 6] = [Tier::L0, Tier::L1, Tier::L2, Tier::L3, Tier::L4, Tier::L5];

    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::L0 => "L0",
            Tier::L1 => "L1",
            Tier::L2 => "L2",
            Tier::L3 => "L3",
            Tier::L4 => "L4",
            Tier::L5 => "L5",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// What the tier is for, in a few words.
    pub const fn summary(self) -> &'static str {
        match self {
            Tier::L0 => "no network, read-only workspaces",
            Tier::L1 => "reads from named hosts, read-only workspaces",
            Tier::L2 => "reads from named hosts, writes only through a human, reviewed workspaces",
            Tier::L3 => "named hosts, unknown hosts held, reviewed workspaces",
            Tier::L4 => "named hosts, unknown hosts held, writable workspaces, a budget",
            Tier::L5 => "reads from any host, writes to unknown hosts held, writable workspaces, a budget",
        }
    }

    /// The tier's defaults and ceilings.
    pub const fn preset(self) -> Preset {
        use DefaultAction::{Deny, Hold};
        use Reach::*;
        use WorkspaceMode::{Overlay, Ro, Rw};
        let (allow, hold, network_default, workspace_default, workspace_max, budget_required) = match self {
            Tier::L0 => (Nothing, Nothing, Deny, Ro, Ro, false),
            Tier::L1 => (NamedRead, NamedRead, Deny, Ro, Ro, false),
            Tier::L2 => (NamedRead, Named, Deny, Overlay, Overlay, false),
            Tier::L3 => (Named, Any, Hold, Overlay, Overlay, false),
            Tier::L4 => (Named, Any, Hold, Overlay, Rw, true),
            Tier::L5 => (NamedOrAnyRead, Any, Hold, Overlay, Rw, true),
        };
        // Serving other agents is network too: an L0 agent has none, either way.
        let serve = !matches!(self, Tier::L0);
        Preset { allow, hold, network_default, workspace_default, workspace_max, budget_required, serve }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a tier sets: defaults for what the profile leaves out, and how far it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// How far allow rules may reach.
    pub allow: Reach,
    /// How far hold rules may reach.
    pub hold: Reach,
    /// `[network] default` when the profile does not write it, and the loosest one the
    /// tier admits (`deny` is always allowed).
    pub network_default: DefaultAction,
    /// A workspace's mode when the profile does not write it.
    pub workspace_default: WorkspaceMode,
    /// The loosest workspace mode the tier admits (ro < overlay < rw).
    pub workspace_max: WorkspaceMode,
    /// The profile must have a `[budget]`.
    pub budget_required: bool,
    /// The agent may serve ports to other agents (`[agent] serve`).
    pub serve: bool,
}

/// How far the allow (or hold) rules of a tier may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No such rule.
    Nothing,
    /// Named hosts, `methods` written and only GET and HEAD.
    NamedRead,
    /// Named hosts, any method.
    Named,
    /// Named hosts with any method; `*`, a top-level domain or `0.0.0.0/0` with GET and
    /// HEAD only.
    NamedOrAnyRead,
    /// Any host, any method.
    Any,
}

impl Reach {
    /// Why `r` goes beyond this reach, or `None`.
    fn exceeded_by(self, r: &Rule) -> Option<String> {
        let read_only = r.intercept && !r.methods.is_empty() && r.methods.iter().all(|m| m == "GET" || m == "HEAD");
        let broad = r.host.broad();
        let methods = || {
            if !r.intercept {
                "tunnels it (intercept = false), so any method passes".to_string()
            } else if r.methods.is_empty() {
                "matches every method".to_string()
            } else {
                format!("matches {}", r.methods.join(", "))
            }
        };
        match self {
            Reach::Nothing => Some(format!("is a {} rule", r.action)),
            Reach::NamedRead | Reach::Named if broad.is_some() => {
                Some(format!("reaches {}", broad.unwrap_or_default()))
            }
            Reach::NamedRead if !read_only => Some(format!("{}, not only GET and HEAD", methods())),
            Reach::NamedOrAnyRead if broad.is_some() && !read_only => {
                Some(format!("reaches {} and {}, not only GET and HEAD", broad.unwrap_or_default(), methods()))
            }
            _ => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Reach::Nothing => "none",
            Reach::NamedRead => "named hosts, GET and HEAD only",
            Reach::Named => "named hosts",
            Reach::NamedOrAnyRead => "named hosts; every host for GET and HEAD only",
            Reach::Any => "any host",
        }
    }
}

/// What `[agent] tier_override` may unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TierOverride {
    /// Rules, `[network] default` and watch mode beyond the tier.
    Network,
    /// Workspace modes beyond the tier.
    Workspaces,
    /// No `[budget]` where the tier requires one.
    Budget,
}

impl TierOverride {
    pub const ALL: [TierOverride; 3] = [TierOverride::Network, TierOverride::Workspaces, TierOverride::Budget];

    pub const fn as_str(self) -> &'static str {
        match self {
            TierOverride::Network => "network",
            TierOverride::Workspaces => "workspaces",
            TierOverride::Budget => "budget",
        }
    }
}

impl fmt::Display for TierOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tier a profile chose, read from `[agent]`.
pub(crate) struct Chosen {
    tier: Tier,
    tier_span: Range<usize>,
    overrides: Vec<(TierOverride, Range<usize>)>,
}

/// Reads `[agent] tier` and `tier_override`. `Ok(None)`: no tier.
pub(crate) fn read(
    file: &Path,
    text: &str,
    tier: Option<Spanned<String>>,
    overrides: Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Option<Chosen>, Diagnostic> {
    let Some(tier) = tier else {
        return match overrides {
            None => Ok(None),
            Some(o) => Err(Diagnostic::at(file, text, o.span(), "`tier_override` without a `tier` overrides nothing")
                .field("agent.tier_override")
                .fix("add tier = \"L0\" … \"L5\" to [agent], or remove `tier_override`")),
        };
    };
    let names = || Tier::ALL.map(Tier::as_str).join(", ");
    let Some(t) = Tier::parse(tier.get_ref()) else {
        let fix = match Tier::parse(&tier.get_ref().to_ascii_uppercase()) {
            Some(t) => format!("write \"{t}\""),
            None => format!("allowed values: {} (see docs/policy.md, Risk tiers)", names()),
        };
        return Err(Diagnostic::at(
            file,
            text,
            tier.span(),
            format!("unknown tier `{}`", tier.get_ref().escape_debug()),
        )
        .field("agent.tier")
        .fix(fix));
    };
    let mut out = Chosen { tier: t, tier_span: tier.span(), overrides: Vec::new() };
    for (i, o) in overrides.map(Spanned::into_inner).unwrap_or_default().into_iter().enumerate() {
        let Some(what) = TierOverride::ALL.into_iter().find(|w| w.as_str() == o.get_ref()) else {
            return Err(Diagnostic::at(
                file,
                text,
                o.span(),
                format!("`{}` is not something a tier sets", o.get_ref().escape_debug()),
            )
            .field(format!("agent.tier_override[{i}]"))
            .fix(format!("allowed values: {}", TierOverride::ALL.map(TierOverride::as_str).join(", "))));
        };
        if out.overrides.iter().any(|(w, _)| *w == what) {
            return Err(Diagnostic::at(file, text, o.span(), format!("`{what}` is listed twice"))
                .field(format!("agent.tier_override[{i}]"))
                .fix("remove one"));
        }
        out.overrides.push((what, o.span()));
    }
    Ok(Some(out))
}

/// The spans of the values a tier fills in or bounds; serde ignores everything else.
#[derive(Deserialize)]
struct View {
    agent: Option<AgentView>,
    network: Option<NetworkView>,
}

#[derive(Deserialize)]
struct AgentView {
    mode: Option<Spanned<Mode>>,
    serve: Option<Spanned<toml::Value>>,
    workspaces: Option<Vec<Spanned<WorkspaceView>>>,
}

#[derive(Deserialize)]
struct WorkspaceView {
    mode: Option<Spanned<WorkspaceMode>>,
}

#[derive(Deserialize)]
struct NetworkView {
    default: Option<Spanned<DefaultAction>>,
}

fn workspace_rank(m: WorkspaceMode) -> u8 {
    match m {
        WorkspaceMode::Ro => 0,
        WorkspaceMode::Overlay => 1,
        WorkspaceMode::Rw => 2,
    }
}

fn default_rank(d: DefaultAction) -> u8 {
    match d {
        DefaultAction::Deny => 0,
        DefaultAction::Hold => 1,
    }
}

fn default_str(d: DefaultAction) -> &'static str {
    match d {
        DefaultAction::Deny => "deny",
        DefaultAction::Hold => "hold",
    }
}

impl Chosen {
    /// Fills in the tier's defaults for what the profile left out, then checks its
    /// ceilings: the first loosening no override covers refuses the profile; each
    /// covered one, and each override that unlocks nothing, is a warning.
    pub(crate) fn apply(
        &self,
        file: &Path,
        text: &str,
        agent: &mut Agent,
        network: &mut Network,
        has_budget: bool,
    ) -> Result<Vec<Warning>, Diagnostic> {
        let tier = self.tier;
        let preset = tier.preset();
        // The file parsed already with the full schema, so this view parses too.
        let view: View = toml::from_str(text).map_err(|e| Diagnostic::file_level(file, e.message().to_string()))?;
        let (agent_view, net_view) = (view.agent, view.network);
        let ws_views = agent_view.as_ref().and_then(|a| a.workspaces.as_ref());

        for (i, ws) in agent.workspaces.iter_mut().enumerate() {
            if ws_views.and_then(|v| v.get(i)).and_then(|v| v.get_ref().mode.as_ref()).is_none() {
                ws.mode = preset.workspace_default;
            }
        }
        let net_default = net_view.as_ref().and_then(|n| n.default.as_ref());
        if net_default.is_none() {
            network.default = preset.network_default;
        }
        agent.tier = Some(tier);
        agent.tier_override = self.overrides.iter().map(|(w, _)| *w).collect();

        // Every loosening, in file order of the sections.
        let mut found: Vec<(TierOverride, Diagnostic)> = Vec::new();
        let at =
            |span: Range<usize>, field: String, message: String| Diagnostic::at(file, text, span, message).field(field);
        if agent.mode == Mode::Watch {
            let span = agent_view.as_ref().and_then(|a| a.mode.as_ref()).map_or(self.tier_span.clone(), Spanned::span);
            found.push((
                TierOverride::Network,
                at(span, "agent.mode".into(), format!("watch mode lets every request through, beyond tier {tier}")),
            ));
        }
        if !preset.serve && !agent.serve.is_empty() {
            let span = agent_view.as_ref().and_then(|a| a.serve.as_ref()).map_or(self.tier_span.clone(), Spanned::span);
            found.push((
                TierOverride::Network,
                at(
                    span,
                    "agent.serve".into(),
                    format!("serving ports to other agents is network, beyond tier {tier} (no network)"),
                ),
            ));
        }
        for (i, ws) in agent.workspaces.iter().enumerate() {
            if workspace_rank(ws.mode) > workspace_rank(preset.workspace_max) {
                let span = ws_views
                    .and_then(|v| v.get(i))
                    .map_or(self.tier_span.clone(), |v| v.get_ref().mode.as_ref().map_or(v.span(), Spanned::span));
                found.push((
                    TierOverride::Workspaces,
                    at(
                        span,
                        format!("agent.workspaces[{i}].mode"),
                        format!(
                            "mode \"{}\" for {} is beyond tier {tier} (at most \"{}\")",
                            ws.mode,
                            ws.path.display(),
                            preset.workspace_max
                        ),
                    ),
                ));
            }
        }
        if default_rank(network.default) > default_rank(preset.network_default) {
            let span = net_default.map_or(self.tier_span.clone(), Spanned::span);
            found.push((
                TierOverride::Network,
                at(
                    span,
                    "network.default".into(),
                    format!(
                        "default = \"{}\" is beyond tier {tier} (at most \"{}\")",
                        default_str(network.default),
                        default_str(preset.network_default)
                    ),
                ),
            ));
        }
        for r in &network.rules {
            let reach = match r.action {
                Action::Deny => continue,
                Action::Allow => preset.allow,
                Action::Hold => preset.hold,
            };
            if let Some(why) = reach.exceeded_by(r) {
                found.push((
                    TierOverride::Network,
                    Diagnostic {
                        file: file.to_path_buf(),
                        line: Some(r.line),
                        column: Some(r.column),
                        field: Some(format!("network.rule[{}]", r.index)),
                        message: format!(
                            "this {} rule for {} {why}: beyond tier {tier} ({} rules: {})",
                            r.action,
                            r.host,
                            r.action,
                            reach.describe()
                        ),
                        fix: None,
                    },
                ));
            }
        }
        if preset.budget_required && !has_budget {
            found.push((
                TierOverride::Budget,
                at(self.tier_span.clone(), "budget".into(), format!("tier {tier} requires a [budget]")),
            ));
        }

        let mut warnings = Vec::new();
        let mut used = BTreeSet::new();
        for (what, mut d) in found {
            if self.overrides.iter().any(|(w, _)| *w == what) {
                used.insert(what);
                d.message = format!("{}; allowed by tier_override \"{what}\"", d.message);
                d.fix = Some(format!("remove \"{what}\" from tier_override to hold the profile to tier {tier}"));
                warnings.push(d);
            } else {
                d.fix = Some(match what {
                    TierOverride::Budget => {
                        "add [budget] (e.g. requests = 1000, per = \"day\"), or add \"budget\" to [agent] tier_override"
                            .to_string()
                    }
                    _ => format!("tighten it to tier {tier}, or add \"{what}\" to [agent] tier_override"),
                });
                return Err(d);
            }
        }
        for (what, span) in &self.overrides {
            if !used.contains(what) {
                let mut d = at(
                    span.clone(),
                    "agent.tier_override".into(),
                    format!("tier_override \"{what}\" unlocks nothing: the profile stays within tier {tier}"),
                );
                d.fix = Some(format!("remove \"{what}\""));
                warnings.push(d);
            }
        }
        Ok(warnings)
    }
}
