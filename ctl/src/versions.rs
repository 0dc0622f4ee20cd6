//! `gvmctl policy history | diff | rollback`, `gvmctl reload --dry-run` and
//! `gvmctl audit log --explain SEQ`: the versions of a profile gvmd has put in force.

use std::process::ExitCode;

use gvm_api::client::Client;
use gvm_api::versions::{paths, DiffResponse, DryRunResponse, EventExplainResponse, HistoryResponse, RollbackResponse};

use crate::audit::percent_encode;
use crate::output;

fn short(v: &str) -> &str {
    v.get(..12).unwrap_or(v)
}

pub fn history(client: &Client, profile: &str, json: bool) -> anyhow::Result<()> {
    let h: HistoryResponse = client.get(&paths::history(profile))?;
    if json {
        return output::json(&h);
    }
    let last = h.entries.len().saturating_sub(1);
    let rows: Vec<Vec<String>> = h
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let until = match (&e.until, i == last, h.in_force.as_deref() == Some(e.entry.version.as_str())) {
                (Some(t), _, _) => output::short_time(t),
                (None, true, true) => "now (in force)".into(),
                (None, _, _) => "-".into(),
            };
            vec![
                short(&e.entry.version).to_string(),
                output::short_time(&e.entry.at),
                until,
                e.entry.how.to_string(),
                e.entry.by.clone().unwrap_or_else(|| "-".into()),
                e.entry.rules.to_string(),
            ]
        })
        .collect();
    output::table(&["VERSION", "FROM", "UNTIL", "HOW", "BY", "RULES"], &rows);
    if h.in_force.is_none() {
        println!("\n{profile} is not in force now.");
    }
    Ok(())
}

pub fn diff(client: &Client, profile: &str, from: Option<&str>, to: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if let Some(f) = from {
        query.push(format!("from={}", percent_encode(f)));
    }
    if let Some(t) = to {
        query.push(format!("to={}", percent_encode(t)));
    }
    let path =
        if query.is_empty() { paths::diff(profile) } else { format!("{}?{}", paths::diff(profile), query.join("&")) };
    let d: DiffResponse = client.get(&path)?;
    if d.diff.is_empty() {
        let to = if d.to == "file" { "the file on disk".to_string() } else { short(&d.to).to_string() };
        println!("no difference between {} and {to}", short(&d.from));
    } else {
        print!("{}", d.diff);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(client: &Client, profile: &str, to: Option<String>, json: bool) -> anyhow::Result<()> {
    let body = serde_json::to_value(gvm_api::versions::RollbackRequest { to })?;
    let r: RollbackResponse = client.post(&paths::rollback(profile), Some(&body))?;
    if json {
        return output::json(&r);
    }
    println!(
        "{profile}: version {} back in force (was {}); {} rewritten, previous text in {}",
        short(&r.to),
        short(&r.from),
        r.file,
        r.backup
    );
    Ok(())
}

pub fn dry_run(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let r: DryRunResponse = client.post(paths::RELOAD_DRY_RUN, None)?;
    let code = if r.refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) };
    if json {
        output::json(&r)?;
        return Ok(code);
    }
    if r.changes.is_empty() && r.refused.is_empty() {
        println!("a reload would change nothing");
    }
    for c in &r.changes {
        let versions = match (&c.from, &c.to) {
            (Some(f), Some(t)) => format!(" ({} -> {})", short(f), short(t)),
            (None, Some(t)) => format!(" ({})", short(t)),
            (Some(f), None) => format!(" (was {})", short(f)),
            (None, None) => String::new(),
        };
        println!("{}: {}{versions}", c.profile, c.change);
        for line in c.diff.lines() {
            println!("  {line}");
        }
    }
    for refusal in &r.refused {
        eprintln!("would refuse: {refusal}");
    }
    println!("(dry run: nothing was applied)");
    Ok(code)
}

fn decided_by(e: &gvm_api::ExplainResponse) -> String {
    match (&e.rule, &e.file, e.line) {
        (Some(rule), Some(file), Some(line)) => format!("{} by {rule} at {file}:{line}", e.decision),
        _ => format!("{} by the profile's [network] default", e.decision),
    }
}

pub fn explain_event(client: &Client, seq: u64, json: bool) -> anyhow::Result<()> {
    let r: EventExplainResponse = client.get(&paths::explain_event(seq))?;
    if json {
        return output::json(&r);
    }
    println!("event {seq}: {} {} — recorded `{}`", r.profile, r.request, r.recorded);
    println!("under version {} (in force then): {}", short(&r.version), decided_by(&r.then));
    println!("  {}", r.then.reason);
    match (&r.now_version, &r.now) {
        (Some(v), Some(now)) if *v == r.version => {
            println!("version {} is still in force: {} today", short(v), now.decision)
        }
        (Some(v), Some(now)) => {
            let same = now.decision == r.then.decision && now.rule == r.then.rule;
            let verdict = if same { "the same" } else { "differently" };
            println!("under version {} (in force now): {} — decided {verdict}", short(v), decided_by(now));
        }
        _ => println!("{} is not in force now", r.profile),
    }
    Ok(())
}
