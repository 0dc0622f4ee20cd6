//! `gvmctl status`: is gvmd up, which profiles are in force, which were refused.

use gvm_api::{paths, StatusResponse};

use crate::output;
use gvm_api::client::Client;

/// `in force`, `stale: ...`, and `noisy: ...` while the profile hits its limits.
fn profile_state(p: &gvm_api::ProfileStatus) -> String {
    let mut state = if p.stale { "stale: file refused, last good version in force" } else { "in force" }.to_string();
    if let Some(w) = &p.watch {
        match &w.until {
            Some(until) => {
                let left = time::OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339)
                    .map(|u| (u - time::OffsetDateTime::now_utc()).whole_seconds().max(0) as u64)
                    .unwrap_or(0);
                state.push_str(&format!(
                    "; WATCHING for {} more (until {})",
                    output::duration(left),
                    output::short_time(until)
                ));
            }
            None => state.push_str("; WATCHING until `gvmctl watch ... off`"),
        }
    }
    if p.drift && !p.stale {
        state.push_str(&format!("; file on disk differs from the version in force: gvmctl policy diff {}", p.name));
    }
    if let Some(n) = &p.noisy {
        let mut why: Vec<String> = n.refused.iter().map(|(limit, count)| format!("{count} over {limit}")).collect();
        if n.folded > 0 {
            why.push(format!("{} repeated refusals folded", n.folded));
        }
        state.push_str(&format!("; NOISY since {}: {}", output::short_time(&n.since), why.join(", ")));
    }
    state
}

/// `412/1000 requests (41%), 3.2/5 money (64%)`: spend against each limit.
pub(crate) fn spent(b: &gvm_api::BudgetStatus) -> String {
    let pct = |spent: f64, limit: f64| if limit > 0.0 { (spent / limit * 100.0).floor() as u64 } else { 0 };
    let mut parts = Vec::new();
    if let Some(n) = b.requests {
        parts.push(format!("{}/{n} requests ({}%)", b.requests_spent, pct(b.requests_spent as f64, n as f64)));
    }
    if let Some(m) = b.money {
        parts.push(format!("{}/{m} money ({}%)", b.money_spent, pct(b.money_spent, m)));
    }
    parts.join(", ")
}

fn budget_row(profile: &str, b: &gvm_api::BudgetStatus) -> Vec<String> {
    vec![
        profile.to_string(),
        b.budget.clone(),
        spent(b),
        b.per.clone(),
        output::short_time(&b.resets_at),
        b.on_exhausted.clone(),
    ]
}

pub fn run(client: &Client, only: Option<&str>, json: bool) -> anyhow::Result<()> {
    let mut s: StatusResponse = client.get(paths::STATUS)?;
    if let Some(name) = only {
        if !s.profiles.iter().any(|p| p.name == name) {
            anyhow::bail!("no profile {name:?} is in force — `gvmctl status` lists them (and the refused files)");
        }
        s.profiles.retain(|p| p.name == name);
        s.agents.retain(|a| a.profile == name);
        s.refused.clear();
    }
    if json {
        return output::json(&s);
    }
    println!(
        "gvmd {} running (pid {}, up {}), socket {}",
        s.version,
        s.pid,
        output::duration(s.uptime_secs),
        client.socket().display()
    );
    println!("config {}  state {}  runtime {}", s.config_dir, s.state_dir, s.runtime_dir);
    println!(
        "audit: {} events, {} checkpoints (last covers seq {}) in {}",
        s.audit.last_seq, s.audit.checkpoints, s.audit.last_checkpoint_seq, s.audit.db_path
    );
    println!();
    if s.profiles.is_empty() {
        println!("No profiles in force. Add one as {}/profiles/NAME.toml and run `gvmctl reload`.", s.config_dir);
    } else {
        let rows: Vec<Vec<String>> = s
            .profiles
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.mode.to_string(),
                    p.tier.clone().unwrap_or_else(|| "-".into()),
                    p.rules.to_string(),
                    output::short_time(&p.loaded_at),
                    profile_state(p),
                    p.file.clone(),
                ]
            })
            .collect();
        output::table(&["PROFILE", "MODE", "TIER", "RULES", "LOADED", "STATE", "FILE"], &rows);
        let budgets: Vec<Vec<String>> =
            s.profiles.iter().flat_map(|p| p.budgets.iter().map(|b| budget_row(&p.name, b))).collect();
        if !budgets.is_empty() {
            println!();
            println!("Budgets (calendar periods, UTC):");
            output::table(&["PROFILE", "BUDGET", "SPENT", "PER", "RESETS", "WHEN SPENT"], &budgets);
        }
        let waiting: Vec<String> = s
            .profiles
            .iter()
            .filter(|p| p.pending_requests + p.pending_files > 0)
            .map(|p| format!("{}: {} requests, {} files", p.name, p.pending_requests, p.pending_files))
            .collect();
        if !waiting.is_empty() {
            println!();
            println!("Waiting for approval ({}); see `gvmctl approvals`", waiting.join("; "));
        }
        if let Some(p) = only.and_then(|name| s.profiles.iter().find(|p| p.name == name)) {
            println!();
            println!(
                "{}: {} held requests and {} file changes wait for a human (gvmctl approvals; gvmctl changes {})",
                p.name, p.pending_requests, p.pending_files, p.name
            );
        }
    }
    if let Some(n) = &s.notify {
        println!();
        let mut line = format!("notify: webhook {}: {} sent", n.webhook, n.sent);
        if n.failures > 0 || n.dropped > 0 {
            line.push_str(&format!(", {} FAILED, {} dropped", n.failures, n.dropped));
        }
        match &n.last_success_at {
            Some(t) => line.push_str(&format!(", last success {}", output::short_time(t))),
            None => line.push_str(", no success yet"),
        }
        println!("{line}");
        if let Some(e) = &n.last_error {
            println!("  last error at {}: {e}", n.last_error_at.as_deref().map(output::short_time).unwrap_or_default());
        }
    }
    if !s.agents.is_empty() {
        println!();
        let dash = || "-".to_string();
        let rows: Vec<Vec<String>> = s
            .agents
            .iter()
            .map(|a| {
                vec![
                    a.profile.clone(),
                    if a.restart_required { format!("{} (restart required)", a.state) } else { a.state.to_string() },
                    a.main_pid.map(|p| p.to_string()).unwrap_or_else(dash),
                    a.memory_bytes.map(|m| format!("{:.1}M", m as f64 / 1048576.0)).unwrap_or_else(dash),
                    a.restarts.to_string(),
                    a.last_exit.clone().unwrap_or_else(dash),
                    a.uptime_secs.map(output::duration).unwrap_or_else(dash),
                    format!("{}/{}/{}", a.allowed, a.denied, a.held),
                    a.last_decision.clone().unwrap_or_else(dash),
                ]
            })
            .collect();
        println!("Agents (supervised by {}):", s.supervisor);
        output::table(
            &["AGENT", "STATE", "PID", "MEMORY", "RESTARTS", "LAST EXIT", "UP", "ALLOW/DENY/HOLD", "LAST DECISION"],
            &rows,
        );
    }
    if !s.refused.is_empty() {
        println!();
        println!("Refused profile files (fix them, then `gvmctl reload`):");
        for r in &s.refused {
            println!("  {r}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_is_shown_against_each_limit() {
        let b = gvm_api::BudgetStatus {
            budget: "profile".into(),
            per: "day".into(),
            on_exhausted: "deny".into(),
            requests: Some(1000),
            requests_spent: 412,
            money: Some(5.0),
            money_spent: 4.02,
            resets_at: "2026-12-08T00:00:00Z".into(),
        };
        assert_eq!(spent(&b), "412/1000 requests (41%), 4.02/5 money (80%)");
        assert_eq!(budget_row("agent", &b)[4], "2026-12-08 00:00:00");
    }
}
