//! `gvmctl policy check FILE` (offline: parse, validate, list warnings) and
//! `gvmctl policy explain PROFILE METHOD URL` (asks gvmd: the profile in force decides).

use std::path::Path;
use std::process::ExitCode;

use gvm_api::{paths, ExplainRequest, ExplainResponse};

use crate::output;
use gvm_api::client::Client;

#[derive(serde::Serialize)]
struct CheckReport {
    file: String,
    ok: bool,
    rules: usize,
    errors: Vec<gvm_api::ProfileRefusal>,
    warnings: Vec<gvm_api::ProfileRefusal>,
    /// The rules with an `mcp` table: what tools they let the agent call.
    mcp: Vec<McpLine>,
    /// `[agent] tier` (`L0`..`L5`), None without one or when the file is refused.
    tier: Option<String>,
}

#[derive(serde::Serialize)]
struct McpLine {
    rule: String,
    line: u32,
    host: String,
    tools: Vec<String>,
    deny_tools: Vec<String>,
    filter_list: bool,
}

impl std::fmt::Display for McpLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (line {}) {}: tools {}", self.rule, self.line, self.host, self.tools.join(", "))?;
        if !self.deny_tools.is_empty() {
            write!(f, "; never {}", self.deny_tools.join(", "))?;
        }
        if self.filter_list {
            f.write_str("; tools/list filtered")?;
        }
        Ok(())
    }
}

fn mcp_lines(profile: &gvm_policy::Profile) -> Vec<McpLine> {
    let rules = profile.network.rules.iter();
    rules
        .filter_map(|r| {
            let m = r.mcp.as_ref()?;
            Some(McpLine {
                rule: format!("network.rule[{}]", r.index),
                line: r.line,
                host: r.host.to_string(),
                tools: m.tools.clone(),
                deny_tools: m.deny_tools.clone(),
                filter_list: m.filter_list,
            })
        })
        .collect()
}

pub fn check(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let report = match gvm_policy::load_profile(file) {
        Ok(profile) => CheckReport {
            file: file.display().to_string(),
            ok: true,
            rules: profile.network.rules.len(),
            errors: vec![],
            warnings: gvm_policy::check(&profile).iter().map(Into::into).collect(),
            mcp: mcp_lines(&profile),
            tier: profile.agent.tier.map(|t| t.to_string()),
        },
        Err(d) => CheckReport {
            file: file.display().to_string(),
            ok: false,
            rules: 0,
            errors: vec![(&d).into()],
            warnings: vec![],
            mcp: vec![],
            tier: None,
        },
    };
    if json {
        output::json(&report)?;
    } else {
        for e in &report.errors {
            println!("error: {e}");
        }
        for w in &report.warnings {
            println!("warning: {w}");
        }
        for m in &report.mcp {
            println!("mcp: {m}");
        }
        if let Some(t) = report.tier.as_deref().and_then(gvm_policy::Tier::parse) {
            println!("tier: {t}: {} (docs/policy.md, Risk tiers)", t.summary());
        }
        if report.ok {
            println!("ok: {}: {} rules, {} warnings", report.file, report.rules, report.warnings.len());
        }
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn explain(client: &Client, profile: String, method: String, url: String, json: bool) -> anyhow::Result<()> {
    let body = serde_json::to_value(ExplainRequest { profile, method, url })?;
    let e: ExplainResponse = client.post(paths::POLICY_EXPLAIN, Some(&body))?;
    if json {
        return output::json(&e);
    }
    let by = match (&e.rule, &e.file, e.line) {
        (Some(rule), Some(file), Some(line)) => format!("{rule} at {file}:{line}"),
        _ => "the profile's [network] default".to_string(),
    };
    print!("{}", e.decision);
    if e.mode == gvm_api::Mode::Watch && e.decision != e.policy_decision {
        print!(" (watch mode: enforce would {})", e.policy_decision);
    }
    println!(" by {by}");
    println!("  {}", e.reason);
    if !e.considered.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = e
            .considered
            .iter()
            .map(|c| vec![c.rule.clone(), c.action.clone(), c.host.clone(), c.outcome.clone()])
            .collect();
        output::table(&["RULE", "ACTION", "HOST", "OUTCOME"], &rows);
    }
    Ok(())
}
