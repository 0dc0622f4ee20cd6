//! `gvmctl status`: is gvmd up, which profiles are in force, which were refused.

use gvm_api::{paths, StatusResponse};

use crate::fit::{self, Column};
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

/// Requests since the agent started: what "busiest" means for the order of agents.
fn busy(a: &gvm_api::AgentStatus) -> u64 {
    a.allowed + a.denied + a.held
}

/// Profiles that need a look even without a running agent: a refused file, a file that
/// differs, watch mode, limits hit.
fn needs_a_look(p: &gvm_api::ProfileStatus) -> bool {
    p.stale || p.drift || p.watch.is_some() || p.noisy.is_some()
}

/// Up to this many profiles in force, all are listed; beyond, those with nothing to
/// say are summed up in one line.
const LIST_UP_TO: usize = 10;

const PROFILE_COLUMNS: [Column; 7] = [
    Column::keep("PROFILE"),
    Column::drop("MODE", 4),
    Column::drop("TIER", 6),
    Column::drop("RULES", 1),
    Column::drop("LOADED", 2),
    Column::shrink("STATE", 5, 24),
    Column::drop("FILE", 3),
];

fn profile_row(p: &gvm_api::ProfileStatus) -> Vec<String> {
    vec![
        p.name.clone(),
        p.mode.to_string(),
        p.tier.clone().unwrap_or_else(|| "-".into()),
        p.rules.to_string(),
        output::short_time(&p.loaded_at),
        profile_state(p),
        p.file.clone(),
    ]
}

/// The agents' table, one line each, the busiest first; TIER only when gvmd sends one.
fn agents_table(agents: &[&gvm_api::AgentStatus], width: Option<usize>) -> String {
    let dash = || "-".to_string();
    let mut agents = agents.to_vec();
    agents.sort_by(|a, b| busy(b).cmp(&busy(a)).then_with(|| a.profile.cmp(&b.profile)));
    let tiers = agents.iter().any(|a| a.tier.is_some());
    let mut columns = vec![Column::keep("AGENT"), Column::keep("STATE")];
    if tiers {
        columns.push(Column::drop("TIER", 7));
    }
    columns.extend([
        Column::keep("ALLOW/DENY/HOLD"),
        Column::drop("UP", 5),
        Column::drop("MEMORY", 4),
        Column::drop("PID", 1),
        Column::drop("RESTARTS", 2),
        Column::shrink("LAST EXIT", 3, 9),
        Column::shrink("LAST DECISION", 6, 16),
    ]);
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let mut row = vec![
                a.profile.clone(),
                if a.restart_required { format!("{} (restart required)", a.state) } else { a.state.to_string() },
            ];
            if tiers {
                row.push(a.tier.clone().unwrap_or_else(dash));
            }
            row.extend([
                format!("{}/{}/{}", a.allowed, a.denied, a.held),
                a.uptime_secs.map(output::duration).unwrap_or_else(dash),
                a.memory_bytes.map(|m| format!("{:.1}M", m as f64 / 1048576.0)).unwrap_or_else(dash),
                a.main_pid.map(|p| p.to_string()).unwrap_or_else(dash),
                a.restarts.to_string(),
                a.last_exit.clone().unwrap_or_else(dash),
                a.last_decision.as_deref().map(output::safe).unwrap_or_else(dash),
            ]);
            row
        })
        .collect();
    fit::table(&columns, &rows, width)
}

/// `gvmctl status [P] [--all]`: with neither, one line per agent that is not stopped
/// and one line for the profiles with nothing to say; every line fits the terminal.
pub fn run(client: &Client, only: Option<&str>, all: bool, json: bool) -> anyhow::Result<()> {
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
    print!("{}", render(&s, client.socket(), only, all || only.is_some(), fit::width()));
    Ok(())
}

/// The human view of `s`, each line cut to `width`.
fn render(s: &StatusResponse, socket: &std::path::Path, only: Option<&str>, all: bool, width: Option<usize>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gvmd {} running (pid {}, up {}), socket {}",
        s.version,
        s.pid,
        output::duration(s.uptime_secs),
        socket.display()
    );
    let _ = writeln!(out, "config {}  state {}  runtime {}", s.config_dir, s.state_dir, s.runtime_dir);
    let _ = writeln!(
        out,
        "audit: {} events, {} checkpoints (last covers seq {}) in {}",
        s.audit.last_seq, s.audit.checkpoints, s.audit.last_checkpoint_seq, s.audit.db_path
    );
    // The agents shown: all of them, or those not stopped.
    let agents: Vec<&gvm_api::AgentStatus> =
        s.agents.iter().filter(|a| all || a.state != gvm_api::AgentState::Stopped).collect();
    let active = |name: &str| agents.iter().any(|a| a.profile == name);
    if !agents.is_empty() {
        let _ = writeln!(
            out,
            "\nAgents (supervised by {}), busiest first (most requests since they started):",
            s.supervisor
        );
        out.push_str(&agents_table(&agents, width));
    }
    out.push('\n');
    if s.profiles.is_empty() {
        let _ = writeln!(
            out,
            "No profiles in force. Add one as {}/profiles/NAME.toml and run `gvmctl reload`.",
            s.config_dir
        );
    } else {
        // Listed: all of them, or those that need a look; the others, without an agent
        // shown above, in one line.
        let all = all || s.profiles.len() <= LIST_UP_TO;
        let (listed, quiet): (Vec<&gvm_api::ProfileStatus>, Vec<&gvm_api::ProfileStatus>) =
            s.profiles.iter().partition(|p| all || needs_a_look(p));
        if !listed.is_empty() {
            if !all {
                out.push_str("Profiles that need a look:\n");
            }
            let rows: Vec<Vec<String>> = listed.iter().map(|p| profile_row(p)).collect();
            out.push_str(&fit::table(&PROFILE_COLUMNS, &rows, width));
        }
        if !quiet.is_empty() {
            let idle: Vec<&str> = quiet.iter().map(|p| p.name.as_str()).filter(|name| !active(name)).collect();
            if !idle.is_empty() {
                let head = format!("{} of {} profiles idle: ", idle.len(), s.profiles.len());
                // The whole hint, or a short one when it leaves no room for a name.
                let room =
                    |hint: &str| width.map_or(usize::MAX, |w| w.saturating_sub(head.chars().count() + hint.len()));
                let hint = [" (gvmctl status --all)", " (--all)"]
                    .into_iter()
                    .find(|h| room(h) >= idle[0].chars().count() + ", … 99 more".len())
                    .unwrap_or(" (--all)");
                let _ = writeln!(out, "{head}{}{hint}", fit::names(&idle, room(hint)));
            }
        }
        let budgets: Vec<Vec<String>> = s
            .profiles
            .iter()
            .filter(|p| all || active(&p.name))
            .flat_map(|p| p.budgets.iter().map(|b| budget_row(&p.name, b)))
            .collect();
        if !budgets.is_empty() {
            let _ = writeln!(out, "\nBudgets (calendar periods, UTC):");
            let columns = [
                Column::keep("PROFILE"),
                Column::drop("BUDGET", 2),
                Column::shrink("SPENT", 5, 16),
                Column::drop("PER", 1),
                Column::drop("RESETS", 3),
                Column::drop("WHEN SPENT", 4),
            ];
            out.push_str(&fit::table(&columns, &budgets, width));
        }
        let waiting: Vec<String> = s
            .profiles
            .iter()
            .filter(|p| p.pending_requests + p.pending_files > 0)
            .map(|p| format!("{}: {} requests, {} files", p.name, p.pending_requests, p.pending_files))
            .collect();
        if !waiting.is_empty() {
            let _ = writeln!(out, "\nWaiting for approval ({}); see `gvmctl approvals`", waiting.join("; "));
        }
        if let Some(p) = only.and_then(|name| s.profiles.iter().find(|p| p.name == name)) {
            let _ = writeln!(
                out,
                "\n{}: {} held requests and {} file changes wait for a human (gvmctl approvals; gvmctl changes {})",
                p.name, p.pending_requests, p.pending_files, p.name
            );
        }
    }
    if let Some(n) = &s.notify {
        let mut line = format!("notify: webhook {}: {} sent", n.webhook, n.sent);
        if n.failures > 0 || n.dropped > 0 {
            line.push_str(&format!(", {} FAILED, {} dropped", n.failures, n.dropped));
        }
        match &n.last_success_at {
            Some(t) => line.push_str(&format!(", last success {}", output::short_time(t))),
            None => line.push_str(", no success yet"),
        }
        let _ = writeln!(out, "\n{line}");
        if let Some(e) = &n.last_error {
            let at = n.last_error_at.as_deref().map(output::short_time).unwrap_or_default();
            let _ = writeln!(out, "  last error at {at}: {e}");
        }
    }
    if !s.refused.is_empty() {
        let _ = writeln!(out, "\nRefused profile files (fix them, then `gvmctl reload`):");
        for r in &s.refused {
            let _ = writeln!(out, "  {r}");
        }
    }
    match width {
        Some(w) => out.lines().map(|l| fit::cut(l, w) + "\n").collect(),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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

    /// 50 profiles, 10 agents running with different loads, 5 stopped, one profile
    /// whose file differs: what `gvmctl status` prints in an 80-column terminal.
    fn many() -> StatusResponse {
        let profiles: Vec<serde_json::Value> = (0..50)
            .map(|i| {
                serde_json::json!({
                    "name": format!("team-{i:02}"), "file": format!("/etc/gvm/profiles/team-{i:02}.toml"),
                    "mode": "enforce", "rules": 3, "loaded_at": "2026-12-07T10:00:00.5Z", "drift": i == 42,
                })
            })
            .collect();
        let agents: Vec<serde_json::Value> = (0..15)
            .map(|i| {
                let running = i < 10;
                serde_json::json!({
                    "profile": format!("team-{i:02}"), "state": if running { "running" } else { "stopped" },
                    "main_pid": if running { Some(1000 + i) } else { None }, "memory_bytes": 3_500_000,
                    "restarts": 0, "uptime_secs": if running { Some(65) } else { None },
                    // Team 7 is the busiest (90 + 1), then 4, 1, 8... by `(i * 7) % 10`.
                    "allowed": (i * 7) % 10 * 10, "denied": i % 2, "held": 0,
                    "last_decision": format!("allow GET http://127.0.0.1:8080/team-{i}/a/rather/long/path?x=1"),
                    "restart_required": false, "tier": if i == 0 { Some("L2") } else { None },
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "version": "0.1.0", "pid": 7, "started_at": "2026-12-07T10:00:00Z", "uptime_secs": 70,
            "config_dir": "/etc/gvm", "state_dir": "/var/lib/gvm", "runtime_dir": "/run/gvm",
            "profiles": profiles, "refused": [], "agents": agents, "supervisor": "gvmd",
            "audit": { "db_path": "/var/lib/gvm/audit.db", "last_seq": 451, "checkpoints": 1, "last_checkpoint_seq": 400 },
        }))
        .unwrap()
    }

    #[test]
    fn fifty_profiles_and_ten_agents_fit_an_80_column_terminal_busiest_first() {
        let s = many();
        let out = render(&s, Path::new("/run/gvm/gvmd.sock"), None, false, Some(80));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{out}");
        let start = lines.iter().position(|l| l.starts_with("AGENT")).unwrap_or_else(|| panic!("{out}"));
        let header = lines[start];
        assert!(header.contains("TIER") && header.contains("ALLOW/DENY/HOLD"), "{out}");
        let shown: Vec<&str> = lines[start + 1..start + 11].iter().map(|l| l.split(' ').next().unwrap()).collect();
        // Sorted by allowed + denied + held.
        let mut want: Vec<(u64, String)> =
            (0..10u64).map(|i| ((i * 7) % 10 * 10 + i % 2, format!("team-{i:02}"))).collect();
        want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(shown, want.iter().map(|w| w.1.as_str()).collect::<Vec<_>>(), "{out}");
        assert!(lines[start + 1].contains("90/1/0") && lines[start + 1].contains("running"), "{out}");
        assert!(!lines[start + 11].starts_with("team-"), "only the 10 running agents: {out}");
        // The drifting profile is listed; the other 39 without an agent are one line.
        assert!(out.contains("Profiles that need a look:") && out.contains("team-42"), "{out}");
        let summary = lines.iter().find(|l| l.starts_with("39 of 50 profiles idle")).unwrap_or_else(|| panic!("{out}"));
        assert!(summary.starts_with("39 of 50 profiles idle: team-10, team-11, …"), "{summary}");
        assert!(summary.ends_with("more (gvmctl status --all)"), "{summary}");
        assert!(lines.len() < 24, "{} lines: {out}", lines.len());
        // Narrower: a short hint leaves room for a name.
        let out = render(&s, Path::new("/run/gvm/gvmd.sock"), None, false, Some(50));
        assert!(out.lines().all(|l| l.chars().count() <= 50), "{out}");
        assert!(out.contains("39 of 50 profiles idle: team-10, … 38 more (--all)"), "{out}");
    }

    #[test]
    fn up_to_ten_profiles_are_all_listed() {
        let mut s = many();
        s.profiles.truncate(10);
        s.agents.clear();
        let out = render(&s, Path::new("/run/gvm/gvmd.sock"), None, false, Some(80));
        assert_eq!(out.lines().filter(|l| l.starts_with("team-")).count(), 10, "{out}");
        assert!(!out.contains("idle") && !out.contains("Agents"), "{out}");
    }

    #[test]
    fn all_lists_every_profile_and_agent_and_no_width_cuts_nothing() {
        let s = many();
        let out = render(&s, Path::new("/run/gvm/gvmd.sock"), None, true, None);
        assert_eq!(out.lines().filter(|l| l.starts_with("team-") && l.contains("enforce")).count(), 50, "{out}");
        let agents = out.lines().filter(|l| l.starts_with("team-") && (l.contains("running") || l.contains("stopped")));
        assert_eq!(agents.count(), 15, "{out}");
        assert!(out.contains("allow GET http://127.0.0.1:8080/team-3/a/rather/long/path?x=1"), "{out}");
        assert!(!out.contains("idle"), "{out}");
        assert!(!out.contains('…'), "{out}");
    }
}
