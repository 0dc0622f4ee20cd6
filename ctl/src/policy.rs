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
}

pub fn check(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let report = match gvm_policy::load_profile(file) {
        Ok(profile) => CheckReport {
            file: file.display().to_string(),
            ok: true,
            rules: profile.network.rules.len(),
            errors: vec![],
            warnings: gvm_policy::check(&profile).iter().map(Into::into).collect(),
        },
        Err(d) => CheckReport {
            file: file.display().to_string(),
            ok: false,
            rules: 0,
            errors: vec![(&d).into()],
            warnings: vec![],
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
