//! `gvmctl start|stop|restart P` and the agents part of `gvmctl status`, the same
//! whichever backend runs the agents.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gvm_api::{AgentAction, AgentState, AgentStatus, AgentVerb, Decision, EventKind};

use super::children::LaunchCommand;
use super::Backend;
use crate::state::Daemon;

/// Why an agent could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("no profile {0:?} is in force — add /etc/gvm/profiles/{0}.toml and run `gvmctl reload`")]
    NoProfile(String),
    #[error("profile {0} has no [agent] command to start — add `command = [...]` to its [agent] section, or use `gvmctl run --profile {0} -- CMD`")]
    NoCommand(String),
    #[error("profile {0} is already running (its agent or a `gvmctl run`)")]
    Busy(String),
    #[error("systemd could not {action} {unit}: {detail} — see `journalctl -u {unit}`")]
    Systemd { action: String, unit: String, detail: String },
    #[error("unknown action {0:?}: use start, stop or restart")]
    Action(String),
}

/// Starts, stops or restarts the agent of `profile`.
pub async fn act(daemon: &Arc<Daemon>, profile: &str, action: AgentVerb) -> Result<AgentAction, ActError> {
    let loaded = daemon.profiles().profiles.get(profile).map(|p| p.profile.clone());
    if action != AgentVerb::Stop {
        let p = loaded.as_ref().ok_or_else(|| ActError::NoProfile(profile.to_string()))?;
        if p.agent.command.as_ref().is_none_or(|c| c.is_empty()) {
            return Err(ActError::NoCommand(profile.to_string()));
        }
    }
    match &daemon.supervisor {
        Backend::Systemd(sd) => {
            let unit = super::systemd::unit_name(profile);
            let fail = |detail: String| ActError::Systemd { action: action.to_string(), unit: unit.clone(), detail };
            if let (Some(p), true) = (&loaded, action != AgentVerb::Stop) {
                sd.set_limits(profile, &p.agent).await.map_err(|e| fail(e.to_string()))?;
            }
            let result = sd.act(profile, action.as_str()).await.map_err(|e| fail(e.to_string()))?;
            if result != "done" {
                return Err(fail(format!("the job ended with {result:?}")));
            }
        }
        Backend::Gvmd(children) => {
            if action != AgentVerb::Start {
                children.stop(profile).await;
            }
            if action != AgentVerb::Stop && !children.is_running(profile) {
                let instance = daemon.agents.claim(profile).ok_or_else(|| ActError::Busy(profile.to_string()))?;
                let cmd = LaunchCommand {
                    exe: std::env::current_exe().unwrap_or_else(|_| "gvmd".into()),
                    socket: daemon.paths.socket(),
                    log: daemon.paths.state_dir.join("agents").join(profile).join("agent.log"),
                };
                if let Some(dir) = cmd.log.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let (d, name) = (daemon.clone(), profile.to_string());
                children.start(profile, cmd, instance, async move {
                    if let Err(e) = super::ephemeral::teardown_unless_shared(&d, &name).await {
                        tracing::warn!(gvm_profile = %name, "teardown after the agent stopped failed: {e}");
                    }
                    crate::review::auto_apply(&d, &name).await;
                });
                // Report the state once the launcher had a moment to start.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let state = status_of(daemon, profile).await.state;
    daemon
        .record(gvm_audit::NewEvent {
            profile: Some(profile.to_string()),
            kind: action.event().into(),
            decision: None,
            rule: None,
            details: serde_json::json!({ "state": state, "supervisor": daemon.supervisor.name() }),
        })
        .await;
    Ok(AgentAction { profile: profile.to_string(), action, state })
}

/// At start, before the control socket serves: re-opens the gateway inside the network
/// namespace of every agent that outlived a gvmd restart (their requests failed closed
/// meanwhile) and removes what a previous gvmd left of the others. (Done later, it
/// raced a `gvmctl run` sent right after the start: the leftover's teardown removed the
/// run's new netns.)
pub async fn reconcile_leftovers(daemon: &Arc<Daemon>) {
    let profiles = daemon.profiles();
    for name in profiles.profiles.keys() {
        if !daemon.paths.runtime_dir.join("netns").join(name).exists() {
            continue;
        }
        // Only a systemd unit outlives gvmd; in foreground mode every sandbox died with
        // the previous gvmd, and what it left is removed.
        let running = match &daemon.supervisor {
            Backend::Systemd(sd) => sd.state(name).await.is_ok_and(|u| u.active_state == "active"),
            Backend::Gvmd(_) => false,
        };
        if running {
            match super::ephemeral::prepare_shared(daemon, name).await {
                Ok(_) => tracing::info!(gvm_profile = %name, "gateway re-opened for the running agent {name}"),
                Err(e) => tracing::error!(gvm_profile = %name, "cannot re-open the gateway of {name}: {e}"),
            }
        } else if let Err(e) = super::prepare::teardown(daemon, name).await {
            tracing::warn!(gvm_profile = %name, "cannot remove what a previous gvmd left for {name}: {e}");
        }
    }
    // Sockets systemd kept for profiles whose agent is gone: let go of them.
    let stale: Vec<String> =
        daemon.stored_fds.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(k, _)| k).collect();
    for name in stale {
        daemon.notifier.remove_fds(&name);
    }
}

/// After the start: starts every profile with `autostart = true` and a command.
pub async fn reconcile(daemon: &Arc<Daemon>) {
    let profiles = daemon.profiles();
    for (name, p) in &profiles.profiles {
        if p.profile.agent.autostart
            && p.profile.agent.command.is_some()
            && status_of(daemon, name).await.state != AgentState::Running
        {
            match act(daemon, name, AgentVerb::Start).await {
                Ok(a) => tracing::info!(gvm_profile = %name, "autostart: agent {name} is {}", a.state),
                Err(e) => tracing::error!(gvm_profile = %name, "autostart of {name} failed: {e}"),
            }
        }
    }
}

/// One agent's status: the backend's view plus what the audit log says it did.
pub async fn status_of(daemon: &Daemon, profile: &str) -> AgentStatus {
    let tier = daemon.profiles().profiles.get(profile).and_then(|p| p.profile.agent.tier).map(|t| t.to_string());
    let mut s = AgentStatus { profile: profile.to_string(), state: AgentState::Stopped, tier, ..Default::default() };
    let mut since: Option<SystemTime> = None;
    match &daemon.supervisor {
        Backend::Systemd(sd) => {
            if let Ok(u) = sd.state(profile).await {
                s.state = match (u.active_state.as_str(), u.sub_state.as_str()) {
                    ("active", _) => AgentState::Running,
                    ("activating", "auto-restart") => AgentState::Restarting,
                    ("activating", _) => AgentState::Starting,
                    ("deactivating", _) => AgentState::Stopping,
                    ("failed", _) => AgentState::Failed,
                    _ => AgentState::Stopped,
                };
                s.main_pid = (u.main_pid != 0).then_some(u.main_pid);
                s.memory_bytes = u.memory;
                s.restarts = u.restarts;
                // CLD_EXITED = 1, CLD_KILLED = 2, CLD_DUMPED = 3; systemd resets it when
                // the next start begins, then what the unit's ExecStopPost told us holds.
                s.last_exit = match u.exec_main_code {
                    1 => super::children::describe_exit(Some(u.exec_main_status), None),
                    2 | 3 => super::children::describe_exit(None, Some(u.exec_main_status)),
                    _ => None,
                }
                .or_else(|| daemon.agents.last_exit(profile));
                if u.active_enter_usec > 0 && s.state == AgentState::Running {
                    since = Some(SystemTime::UNIX_EPOCH + Duration::from_micros(u.active_enter_usec));
                }
            }
        }
        Backend::Gvmd(children) => {
            if let Some(c) = children.status(profile) {
                s.state = c.state;
                s.main_pid = c.pid;
                s.restarts = c.restarts;
                s.last_exit = c.last_exit;
                since = c.since.filter(|_| s.state == AgentState::Running);
                s.memory_bytes = c.pid.and_then(tree_rss);
            }
        }
    }
    if let Some(since) = since {
        s.uptime_secs = since.elapsed().ok().map(|d| d.as_secs());
        count_requests(daemon, profile, since, &mut s).await;
    }
    if s.state == AgentState::Running {
        let prepared = daemon.agents.prepared.lock().await;
        let current = daemon.profiles().profiles.get(profile).map(|p| format!("{:?}", p.profile.agent));
        s.restart_required = match (prepared.get(profile), current) {
            (Some(p), Some(now)) => !p.agent.is_empty() && p.agent != now,
            _ => false,
        };
    }
    s
}

/// Every agent gvmd knows of: profiles with a command, and any running.
pub async fn statuses(daemon: &Daemon) -> Vec<AgentStatus> {
    let profiles = daemon.profiles();
    let mut out = Vec::new();
    for (name, p) in &profiles.profiles {
        let s = status_of(daemon, name).await;
        if p.profile.agent.command.is_some() || s.state != AgentState::Stopped {
            out.push(s);
        }
    }
    out
}

/// A profile's requests, counted from the audit log (its decision events).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub allowed: u64,
    pub denied: u64,
    pub held: u64,
    /// DNS questions answered and refused (not requests: counted apart).
    pub dns_answered: u64,
    pub dns_refused: u64,
    /// `deny GET http://x/y`, the newest decision.
    pub last: Option<String>,
}

/// Counts `q`'s decisions; with `with_last`, also finds the newest one (which reads a
/// page of events: `status` shows it, a run's summary does not).
pub(crate) async fn tally(daemon: &Daemon, q: gvm_api::EventsQuery, with_last: bool) -> Tally {
    let audit = daemon.audit.clone();
    let mut t = Tally::default();
    // Counted in SQL, so a flood of a million events is counted exactly; the newest
    // decision is looked up among the newest events only.
    let Ok(Ok((counts, events))) = tokio::task::spawn_blocking(move || {
        let counts = audit.count_decisions(&q)?;
        let events = if with_last { audit.events(&q)? } else { Vec::new() };
        Ok::<_, gvm_audit::AuditError>((counts, events))
    })
    .await
    else {
        return t;
    };
    for c in counts {
        // Refusals past a `[limits]` entry are counted with the requests they refused.
        let kind = match EventKind::parse(&c.kind) {
            Some(EventKind::LimitsExceeded) => c.of.as_deref().and_then(EventKind::parse),
            k => k,
        };
        let (answered, refused, held) = match kind {
            Some(EventKind::Dns) => (&mut t.dns_answered, &mut t.dns_refused, None),
            Some(EventKind::Http | EventKind::Connect) => (&mut t.allowed, &mut t.denied, Some(&mut t.held)),
            _ => continue,
        };
        match (c.decision.as_deref().and_then(Decision::parse), held) {
            (Some(Decision::Allow | Decision::Watch), _) => *answered += c.count,
            (Some(Decision::Deny | Decision::Limit), _) => *refused += c.count,
            (Some(Decision::Hold), Some(held)) => *held += c.count,
            _ => {}
        }
    }
    let last = events.iter().rev().find(|e| {
        matches!(EventKind::parse(&e.kind), Some(EventKind::Http | EventKind::Connect))
            && e.decision.as_deref().and_then(Decision::parse).is_some_and(|d| d != Decision::Intercept)
    });
    t.last = last.map(|e| {
        let d = &e.details;
        let field = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let what = match (d.get("url").and_then(|u| u.as_str()), field("scheme")) {
            (Some(url), _) => url.to_string(),
            // A CONNECT names a host and a port only.
            (None, "") => format!("{}:{}", field("host"), d.get("port").map(|p| p.to_string()).unwrap_or_default()),
            (None, scheme) => format!("{scheme}://{}{}", field("host"), field("path")),
        };
        format!("{} {} {what}", e.decision.as_deref().unwrap_or(""), field("method"))
    });
    t
}

async fn count_requests(daemon: &Daemon, profile: &str, since: SystemTime, s: &mut AgentStatus) {
    let q = gvm_api::EventsQuery {
        profile: Some(profile.to_string()),
        since: Some(crate::rfc3339(time::OffsetDateTime::from(since))),
        ..Default::default()
    };
    let t = tally(daemon, q, true).await;
    (s.allowed, s.denied, s.held, s.last_decision) = (t.allowed, t.denied, t.held, t.last);
}

/// Resident memory of a process and its descendants (foreground mode has no cgroup
/// accounting to ask).
fn tree_rss(pid: u32) -> Option<u64> {
    let rss = |p: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
            .map_or(0, |kb| kb * 1024)
    };
    let children = |p: u32| -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect()
    };
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += rss(p);
        stack.extend(children(p));
    }
    (total > 0).then_some(total)
}
