//! Risk tiers: each tier's defaults fill in what a profile leaves out, its ceilings
//! refuse what reaches further (with line, field and fix), `tier_override` turns a
//! refusal into a `policy check` warning, and a profile without `tier` is untouched.

use std::path::Path;
use std::time::{Duration, SystemTime};

use gvm_policy::{
    check, parse_profile, DefaultAction, Diagnostic, Host, Profile, Request, Scheme, Tier, TierOverride, Verdict,
    WorkspaceMode,
};

const FILE: &str = "profiles/t.toml";

fn load(text: &str) -> Result<Profile, Diagnostic> {
    parse_profile(Path::new(FILE), text)
}

fn ok(text: &str) -> Profile {
    load(text).unwrap_or_else(|d| panic!("{d}\n---\n{text}"))
}

fn refused(text: &str) -> Diagnostic {
    match load(text) {
        Ok(_) => panic!("loaded, but the tier should refuse it:\n{text}"),
        Err(d) => d,
    }
}

fn with_tier(tier: &str, rest: &str) -> String {
    format!("[agent]\ntier = \"{tier}\"\nworkspaces = [{{ path = \"/srv/a\" }}]\n{rest}")
}

const BUDGET: &str = "[budget]\nrequests = 100\nper = \"day\"\n";

fn rule(host: &str, action: &str, extra: &str) -> String {
    format!("[[network.rule]]\nhost = \"{host}\"\naction = \"{action}\"\n{extra}")
}

fn verdict(p: &Profile, method: &str, host: &str) -> Verdict {
    let host = Host::parse(host).unwrap();
    let req = Request { scheme: Scheme::Https, host: &host, port: 443, method, path: "/" };
    p.compiled.decide(&req, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)).policy_verdict
}

#[test]
fn without_a_tier_nothing_changes() {
    let p = ok("[agent]\nworkspaces = [{ path = \"/srv/a\" }]\n");
    assert_eq!(p.agent.tier, None);
    assert_eq!(p.agent.workspaces[0].mode, WorkspaceMode::Overlay);
    assert_eq!(p.network.default, DefaultAction::Deny);
    assert!(p.tier_warnings.is_empty());
    // A profile any tier would refuse still loads.
    ok(&format!("[agent]\nmode = \"watch\"\n{}", rule("*", "allow", "")));
}

#[test]
fn l0_has_no_network_and_read_only_workspaces() {
    let p = ok(&with_tier("L0", &rule("*", "deny", "")));
    assert_eq!(p.agent.tier, Some(Tier::L0));
    assert_eq!(p.agent.workspaces[0].mode, WorkspaceMode::Ro);
    assert_eq!(p.network.default, DefaultAction::Deny);
    assert_eq!(verdict(&p, "GET", "api.example.com"), Verdict::Deny);
    assert!(check(&p).is_empty(), "{:?}", check(&p));

    let text = with_tier("L0", &rule("api.example.com", "allow", "methods = [\"GET\"]\n"));
    let d = refused(&text);
    assert_eq!((d.line, d.field.as_deref()), (Some(5), Some("network.rule[0]")), "{d}");
    assert!(d.message.contains("beyond tier L0"), "{d}");
    assert!(d.fix.as_deref().unwrap().contains("add \"network\" to [agent] tier_override"), "{d}");
    assert!(refused(&with_tier("L0", &rule("api.example.com", "hold", ""))).message.contains("hold rule"));

    let d = refused("[agent]\ntier = \"L0\"\nworkspaces = [{ path = \"/srv/a\", mode = \"overlay\" }]\n");
    assert_eq!((d.line, d.field.as_deref()), (Some(3), Some("agent.workspaces[0].mode")), "{d}");
    assert!(d.message.contains("at most \"ro\""), "{d}");
    assert!(d.fix.as_deref().unwrap().contains("\"workspaces\""), "{d}");

    let d = refused(&with_tier("L0", "[network]\ndefault = \"hold\"\n"));
    assert_eq!((d.line, d.field.as_deref()), (Some(5), Some("network.default")), "{d}");
}

#[test]
fn l1_reads_named_hosts_only() {
    let p = ok(&with_tier("L1", &rule("docs.example.com", "allow", "methods = [\"GET\", \"HEAD\"]\n")));
    assert_eq!(p.agent.workspaces[0].mode, WorkspaceMode::Ro);
    assert_eq!(verdict(&p, "GET", "docs.example.com"), Verdict::Allow);
    assert_eq!(verdict(&p, "GET", "other.example.com"), Verdict::Deny);
    ok(&with_tier("L1", &rule("docs.example.com", "hold", "methods = [\"GET\"]\n")));

    for (extra, why) in [
        ("", "matches every method"),
        ("methods = [\"GET\", \"POST\"]\n", "matches GET, POST"),
        ("intercept = false\n", "tunnels it"),
    ] {
        let d = refused(&with_tier("L1", &rule("docs.example.com", "allow", extra)));
        assert!(d.message.contains(why), "{d}");
        assert!(d.message.contains("named hosts, GET and HEAD only"), "{d}");
    }
    let d = refused(&with_tier("L1", &rule("*.com", "allow", "methods = [\"GET\"]\n")));
    assert!(d.message.contains("every name under a top-level domain"), "{d}");
    refused(&with_tier("L1", &rule("docs.example.com", "hold", "methods = [\"POST\"]\n")));
}

#[test]
fn l2_holds_writes_for_a_human() {
    let text = with_tier(
        "L2",
        &format!(
            "{}{}",
            rule("api.example.com", "allow", "methods = [\"GET\"]\n"),
            rule("api.example.com", "hold", "methods = [\"POST\", \"PUT\"]\n")
        ),
    );
    let p = ok(&text);
    assert_eq!(p.agent.workspaces[0].mode, WorkspaceMode::Overlay);
    assert_eq!(verdict(&p, "GET", "api.example.com"), Verdict::Allow);
    assert_eq!(verdict(&p, "POST", "api.example.com"), Verdict::Hold);
    assert_eq!(verdict(&p, "GET", "unknown.example.com"), Verdict::Deny);

    let d = refused(&with_tier("L2", &rule("api.example.com", "allow", "methods = [\"POST\"]\n")));
    assert!(d.message.contains("this allow rule for api.example.com matches POST"), "{d}");
    refused(&with_tier("L2", &rule("*", "hold", "")));
    let d = refused("[agent]\ntier = \"L2\"\nworkspaces = [{ path = \"/srv/a\", mode = \"rw\" }]\n");
    assert!(d.message.contains("mode \"rw\" for /srv/a is beyond tier L2"), "{d}");
}

#[test]
fn l3_holds_unknown_hosts() {
    let p = ok(&with_tier("L3", &rule("api.example.com", "allow", "")));
    assert_eq!(p.network.default, DefaultAction::Hold);
    assert_eq!(verdict(&p, "POST", "api.example.com"), Verdict::Allow);
    assert_eq!(verdict(&p, "GET", "unknown.example.com"), Verdict::Hold);
    // Tightening is always allowed.
    let p = ok(&with_tier("L3", "[network]\ndefault = \"deny\"\n"));
    assert_eq!(verdict(&p, "GET", "unknown.example.com"), Verdict::Deny);
    ok(&with_tier("L3", &rule("*", "hold", "")));
    ok(&with_tier("L3", &rule("pinned.example.com", "allow", "intercept = false\n")));
    assert!(refused(&with_tier("L3", &rule("*", "allow", ""))).message.contains("reaches every host"));
}

#[test]
fn l4_needs_a_budget_and_may_write_workspaces() {
    let text = "[agent]\ntier = \"L4\"\nworkspaces = [{ path = \"/srv/a\", mode = \"rw\" }]\n";
    let d = refused(text);
    assert_eq!((d.line, d.field.as_deref()), (Some(2), Some("budget")), "{d}");
    assert!(d.fix.as_deref().unwrap().contains("[budget]"), "{d}");
    let p = ok(&format!("{text}{BUDGET}"));
    assert_eq!(p.agent.workspaces[0].mode, WorkspaceMode::Rw);
    assert_eq!(p.network.default, DefaultAction::Hold);
    refused(&format!("{text}{BUDGET}{}", rule("0.0.0.0/0", "allow", "")));
}

#[test]
fn l5_reads_anywhere_and_holds_writes() {
    let text = with_tier(
        "L5",
        &format!(
            "{BUDGET}{}{}",
            rule("*", "allow", "methods = [\"GET\", \"HEAD\"]\n"),
            rule("api.example.com", "allow", "")
        ),
    );
    let p = ok(&text);
    assert_eq!(verdict(&p, "GET", "anything.example.org"), Verdict::Allow);
    assert_eq!(verdict(&p, "POST", "anything.example.org"), Verdict::Hold);
    assert_eq!(verdict(&p, "POST", "api.example.com"), Verdict::Allow);
    let d = refused(&with_tier("L5", &format!("{BUDGET}{}", rule("*", "allow", ""))));
    assert!(d.message.contains("reaches every host and matches every method"), "{d}");
}

#[test]
fn watch_mode_is_beyond_every_tier() {
    for t in Tier::ALL {
        let text = format!("[agent]\ntier = \"{t}\"\nmode = \"watch\"\n{BUDGET}");
        let d = refused(&text);
        assert_eq!((d.line, d.field.as_deref()), (Some(3), Some("agent.mode")), "{t}: {d}");
    }
}

#[test]
fn overrides_turn_refusals_into_warnings() {
    let text = format!(
        "[agent]\ntier = \"L1\"\ntier_override = [\"network\", \"workspaces\", \"budget\"]\nworkspaces = [{{ path = \"/srv/a\", mode = \"rw\" }}]\n{}",
        rule("api.example.com", "allow", "methods = [\"POST\"]\n")
    );
    let p = ok(&text);
    assert_eq!(p.agent.tier_override, [TierOverride::Network, TierOverride::Workspaces, TierOverride::Budget]);
    assert_eq!(p.agent.workspaces[0].mode, WorkspaceMode::Rw);
    assert_eq!(verdict(&p, "POST", "api.example.com"), Verdict::Allow);
    let w = check(&p);
    let lines: Vec<String> = w.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 3, "{lines:#?}");
    assert_eq!((w[0].line, w[0].field.as_deref()), (Some(4), Some("agent.workspaces[0].mode")));
    assert!(lines[0].contains("allowed by tier_override \"workspaces\""), "{}", lines[0]);
    assert_eq!((w[1].line, w[1].field.as_deref()), (Some(6), Some("network.rule[0]")));
    assert!(lines[1].contains("allowed by tier_override \"network\""), "{}", lines[1]);
    assert_eq!((w[2].line, w[2].field.as_deref()), (Some(3), Some("agent.tier_override")));
    assert!(lines[2].contains("tier_override \"budget\" unlocks nothing"), "{}", lines[2]);
}

#[test]
fn tier_words_are_checked() {
    let d = refused("[agent]\ntier = \"l2\"\n");
    assert_eq!((d.line, d.field.as_deref(), d.fix.as_deref()), (Some(2), Some("agent.tier"), Some("write \"L2\"")));
    let d = refused("[agent]\ntier = \"L9\"\n");
    assert!(d.fix.unwrap().contains("L0, L1, L2, L3, L4, L5"));
    let d = refused("[agent]\ntier = \"L2\"\ntier_override = [\"network\", \"everything\"]\n");
    assert_eq!(d.field.as_deref(), Some("agent.tier_override[1]"), "{d}");
    assert!(d.fix.unwrap().contains("network, workspaces, budget"));
    let d = refused("[agent]\ntier_override = [\"network\"]\n");
    assert_eq!(d.field.as_deref(), Some("agent.tier_override"), "{d}");
    let d = refused("[agent]\ntier = 2\n");
    assert_eq!(d.field.as_deref(), Some("agent.tier"), "{d}");
}

/// The table in docs/policy.md says what `Tier::preset` does.
#[test]
fn the_documented_table_matches_the_presets() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policy.md")).unwrap();
    let row = |label: &str| -> Vec<String> {
        let line = doc.lines().find(|l| l.starts_with(&format!("| {label} |"))).unwrap_or_else(|| panic!("{label}"));
        line.split('|').skip(2).take(6).map(|c| c.trim().trim_matches('*').to_string()).collect()
    };
    let default = |d: DefaultAction| if d == DefaultAction::Deny { "deny" } else { "hold" };
    let cells = |f: &dyn Fn(Tier) -> String| Tier::ALL.map(f).to_vec();
    assert_eq!(
        row("`[network] default` when not written, and at most"),
        cells(&|t| default(t.preset().network_default).into())
    );
    assert_eq!(row("workspace `mode` when not written"), cells(&|t| t.preset().workspace_default.to_string()));
    assert_eq!(row("workspace `mode` at most"), cells(&|t| t.preset().workspace_max.to_string()));
    let budget = |t: Tier| if t.preset().budget_required { "required" } else { "—" }.to_string();
    assert_eq!(row("`[budget]`"), cells(&budget));
    let serve = |t: Tier| if t.preset().serve { "yes" } else { "refused" }.to_string();
    assert_eq!(row("`[agent] serve` (other agents may call it)"), cells(&serve));
}

/// Serving other agents is network: refused at L0 unless `tier_override` says
/// "network" (then a warning at the line of `serve`); any other tier may serve.
#[test]
fn l0_serves_no_port_without_the_network_override() {
    let d = refused("[agent]\ntier = \"L0\"\nserve = [8080]\n");
    assert_eq!(d.field.as_deref(), Some("agent.serve"), "{d}");
    assert_eq!(d.line, Some(3), "{d}");
    assert!(d.to_string().contains("beyond tier L0"), "{d}");
    assert!(d.to_string().contains("tier_override"), "{d}");
    let p = ok("[agent]\ntier = \"L0\"\ntier_override = [\"network\"]\nserve = [8080]\n");
    assert_eq!(p.agent.serve, vec![8080]);
    assert!(p.tier_warnings.iter().any(|w| w.to_string().contains("agent.serve")), "{:?}", p.tier_warnings);
    assert_eq!(ok("[agent]\ntier = \"L1\"\nserve = [8080]\n").agent.serve, vec![8080]);
}
