//! `gvmctl approvals`, `gvmctl approve ID`, `gvmctl deny ID`: the requests the gateway
//! holds for a human. A held request waits with its connection open; approving forwards
//! it, denying (or nobody answering before it expires) refuses it.

use gvm_api::{paths, HoldAnswer, HoldsResponse};

use crate::output;
use gvm_api::client::Client;

pub fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let r: HoldsResponse = client.get(paths::HOLDS)?;
    if json {
        return output::json(&r.holds);
    }
    if r.holds.is_empty() {
        println!("Nothing waits for approval.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r
        .holds
        .iter()
        .map(|h| {
            vec![
                h.id.to_string(),
                h.profile.clone(),
                h.method.clone(),
                h.url.clone(),
                h.rule.clone().unwrap_or_else(|| "default".into()),
                output::short_time(&h.since),
                output::short_time(&h.expires_at),
            ]
        })
        .collect();
    output::table(&["ID", "PROFILE", "METHOD", "URL", "RULE", "SINCE", "EXPIRES"], &rows);
    println!("\nAnswer with `gvmctl approve ID` or `gvmctl deny ID`.");
    Ok(())
}

pub fn answer(client: &Client, id: u64, approve: bool, json: bool) -> anyhow::Result<()> {
    let path = if approve { paths::approve(id) } else { paths::deny(id) };
    let r: HoldAnswer = client.post(&path, None)?;
    if json {
        return output::json(&r);
    }
    println!("request {} {}", r.id, r.outcome);
    Ok(())
}
