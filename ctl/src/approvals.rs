//! `gvmctl approvals [--follow]`, `gvmctl approve ID [--always]`, `gvmctl deny ID
//! [--always]`: what waits for a human — requests the gateway holds (connection open,
//! denied when nobody answers in time) and file changes waiting for review — in one
//! queue whose ids gvmd never reuses.

use std::collections::BTreeMap;
use std::io::Write;

use gvm_api::{approval_paths, AnswerRequest, AnswerResponse, Approval, ApprovalsResponse};

use crate::output;
use gvm_api::client::Client;

fn row(a: &Approval) -> Vec<String> {
    vec![a.id.to_string(), a.profile.clone(), output::duration(a.age_secs), output::safe(&a.what())]
}

const HEADER: [&str; 4] = ["ID", "PROFILE", "AGE", "WHAT"];

pub fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let r: ApprovalsResponse = client.get(approval_paths::APPROVALS)?;
    if json {
        return output::json(&r.approvals);
    }
    if r.approvals.is_empty() {
        println!("Nothing waits for approval.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r.approvals.iter().map(row).collect();
    output::table(&HEADER, &rows);
    println!("\nAnswer with `gvmctl approve ID` or `gvmctl deny ID` (add --always to write a rule for next time).");
    Ok(())
}

/// Polls every second until interrupted: each new item once, each item that leaves.
pub fn follow(client: &Client, json: bool) -> anyhow::Result<()> {
    let mut known: BTreeMap<u64, Approval> = BTreeMap::new();
    let mut first = true;
    loop {
        let r: ApprovalsResponse = client.get(approval_paths::APPROVALS)?;
        let now: BTreeMap<u64, Approval> = r.approvals.into_iter().map(|a| (a.id, a)).collect();
        let mut out = std::io::stdout().lock();
        if first && !json {
            writeln!(out, "{:<6}  {:<16}  {:<6}  WHAT", "ID", "PROFILE", "AGE")?;
        }
        for (id, a) in &now {
            if !known.contains_key(id) {
                if json {
                    let mut v = serde_json::to_value(a)?;
                    v["event"] = "waiting".into();
                    writeln!(out, "{}", serde_json::to_string(&v)?)?;
                } else {
                    writeln!(
                        out,
                        "{}  {}  {}  {}   → gvmctl approve {id} | gvmctl deny {id}",
                        id,
                        a.profile,
                        output::duration(a.age_secs),
                        output::safe(&a.what())
                    )?;
                }
            }
        }
        for (id, a) in &known {
            if !now.contains_key(id) {
                if json {
                    writeln!(out, "{}", serde_json::json!({ "event": "left", "id": id, "profile": a.profile }))?;
                } else {
                    writeln!(out, "{id:<6}  {:<16}  left the queue (answered, expired or gone)", a.profile)?;
                }
            }
        }
        out.flush()?;
        known = now;
        first = false;
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

pub fn answer(client: &Client, id: u64, approve: bool, always: bool, json: bool) -> anyhow::Result<()> {
    let path = if approve { approval_paths::approve(id) } else { approval_paths::deny(id) };
    let body = serde_json::to_value(AnswerRequest { always })?;
    let r: AnswerResponse = client.post(&path, Some(&body))?;
    if json {
        return output::json(&r);
    }
    let kind = if r.kind.is_empty() { "request" } else { r.kind.as_str() };
    println!("{kind} {} {}", r.id, r.outcome);
    if let (Some(rule), Some(file)) = (&r.rule_added, &r.profile_file) {
        println!("rule added to {file} (previous version kept as {file}.bak):\n{rule}");
    }
    Ok(())
}
