//! The daemon's shared state: what every part of gvmd reads, and the one place where
//! the profiles in force change.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use gvm_api::versions::{Origin, VersionEntry};
use gvm_api::{ReloadResponse, StatusResponse};
use gvm_audit::{Audit, NewEvent};
use time::OffsetDateTime;

use crate::config::{DaemonConfig, Paths};
use crate::profiles::{Change, ProfileSet};
use crate::sys::creds::AdminGroup;

/// Everything gvmd shares between its tasks.
#[derive(Debug)]
pub struct Daemon {
    pub paths: Paths,
    pub config: DaemonConfig,
    pub audit: Audit,
    pub gateway: gvm_gateway::Gateway,
    /// Everything waiting for a human (held requests, file changes).
    pub approvals: Arc<crate::approvals::Approvals>,
    pub agents: crate::supervisor::Agents,
    /// Ephemeral runs going on (`gvmctl run --ephemeral`, `POST /v1/runs`).
    pub runs: crate::supervisor::ephemeral::Runs,
    pub supervisor: crate::supervisor::Backend,
    /// systemd's notification socket (READY, STATUS, WATCHDOG, the fd store).
    pub notifier: crate::sys::notify::Notifier,
    /// Sockets systemd kept in its fd store across a gvmd restart, by name, until the
    /// profile they belong to is prepared again.
    pub stored_fds: std::sync::Mutex<std::collections::HashMap<String, Vec<std::os::fd::OwnedFd>>>,
    pub admin: AdminGroup,
    /// Profiles switched to watch mode at run time (`gvmctl watch P on`).
    pub watches: crate::watch::Watches,
    pub started_at: OffsetDateTime,
    started: Instant,
    profiles: RwLock<Arc<ProfileSet>>,
    /// Every profile version that came into force (`<state>/policy`).
    pub versions: crate::versions::VersionStore,
    /// Serialises reloads so two at once cannot interleave their changes.
    reload_lock: tokio::sync::Mutex<()>,
}

/// What gvmd has opened by the time it builds its shared state.
#[derive(Debug)]
pub struct Parts {
    pub paths: Paths,
    pub config: DaemonConfig,
    pub audit: Audit,
    pub gateway: gvm_gateway::Gateway,
    pub approvals: Arc<crate::approvals::Approvals>,
    pub supervisor: crate::supervisor::Backend,
    pub notifier: crate::sys::notify::Notifier,
    pub stored_fds: std::collections::HashMap<String, Vec<std::os::fd::OwnedFd>>,
    pub admin: AdminGroup,
}

impl Daemon {
    pub fn new(p: Parts) -> Daemon {
        Daemon {
            versions: crate::versions::VersionStore::new(&p.paths.state_dir),
            paths: p.paths,
            config: p.config,
            audit: p.audit,
            gateway: p.gateway,
            approvals: p.approvals,
            agents: crate::supervisor::Agents::default(),
            runs: crate::supervisor::ephemeral::Runs::default(),
            supervisor: p.supervisor,
            notifier: p.notifier,
            stored_fds: std::sync::Mutex::new(p.stored_fds),
            admin: p.admin,
            watches: crate::watch::Watches::default(),
            started_at: OffsetDateTime::now_utc(),
            started: Instant::now(),
            profiles: RwLock::new(Arc::new(ProfileSet::default())),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The profiles in force (a snapshot; later reloads do not change it).
    pub fn profiles(&self) -> Arc<ProfileSet> {
        self.profiles.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Appends an event that describes something the daemon did, and logs it with the
    /// structured fields journald indexes. A failure to record is logged loudly: these
    /// events (start, stop, profile changes, refusals) describe the daemon rather than
    /// gate an agent's request, so there is nothing to deny.
    pub async fn record(&self, event: NewEvent) -> Option<u64> {
        let (kind, profile, decision, rule) =
            (event.kind.clone(), event.profile.clone(), event.decision.clone(), event.rule.clone());
        match self.audit.append(event).await {
            Ok(appended) => {
                tracing::info!(
                    gvm_event_seq = appended.seq,
                    gvm_event_kind = %kind,
                    gvm_profile = profile.as_deref().unwrap_or(""),
                    gvm_decision = decision.as_deref().unwrap_or(""),
                    gvm_rule = rule.as_deref().unwrap_or(""),
                    "audit event {} {kind}", appended.seq
                );
                Some(appended.seq)
            }
            Err(e) => {
                tracing::error!(gvm_event_kind = %kind, "could not record audit event {kind}: {e}");
                None
            }
        }
    }

    /// Re-reads the profiles directory, puts the result in force and audits each change.
    pub async fn reload(&self) -> ReloadResponse {
        self.reload_as(Origin::Reload, None).await
    }

    /// [`Daemon::reload`], saying how the new versions come into force and who asked:
    /// each one is kept in the version store and named in its `profile_loaded` event.
    pub async fn reload_as(&self, how: Origin, by: Option<String>) -> ReloadResponse {
        let _serial = self.reload_lock.lock().await;
        self.reload_locked(how, by).await
    }

    /// Holds the reload lock for a caller that edits a profile file before reloading
    /// (a rollback), so no other reload sees a half-done change.
    pub async fn reload_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reload_lock.lock().await
    }

    /// The reload itself; the caller holds the reload lock.
    pub async fn reload_locked(&self, how: Origin, by: Option<String>) -> ReloadResponse {
        let prices_refused = self.reload_prices().await;
        let current = self.profiles();
        let dir = self.paths.profiles_dir();
        let (next, changes) = tokio::task::spawn_blocking(move || current.reload(&dir))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let next = Arc::new(next);
        *self.profiles.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        // The gateway decides the next request with the new version.
        for change in &changes {
            match change {
                Change::Loaded { name, .. } => {
                    if let Some(loaded) = next.profiles.get(name) {
                        // The scan's values of the masked files first, read off the runtime.
                        let p = loaded.profile.clone();
                        let values = tokio::task::spawn_blocking(move || crate::secrets::file_values(&p))
                            .await
                            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                        self.gateway.set_file_values(name, values);
                        self.put_in_force(&loaded.profile);
                    }
                }
                Change::Removed { name } => self.gateway.remove_profile(name),
                Change::Refused { .. } => {}
            }
        }

        // Each version in force is kept before it is audited, so an event's `version`
        // can always be looked up.
        let at = crate::rfc3339(OffsetDateTime::now_utc());
        let mut kept = Vec::new();
        for change in &changes {
            if let Change::Loaded { name, digest, rules, .. } = change {
                if let Some(loaded) = next.profiles.get(name) {
                    let entry =
                        VersionEntry { version: digest.clone(), at: at.clone(), how, by: by.clone(), rules: *rules };
                    kept.push((name.clone(), loaded.profile.text.clone(), entry));
                }
            }
        }
        let store = self.versions.clone();
        let stored = tokio::task::spawn_blocking(move || {
            for (name, text, entry) in kept {
                if let Err(e) = store.record(&name, text.as_bytes(), &entry) {
                    tracing::error!(gvm_profile = %name, "version {} of {name} was not kept: {e}", entry.version);
                }
            }
        });
        let _ = stored.await;

        for change in changes {
            let event = match change {
                Change::Loaded { name, file, digest, rules } => {
                    tracing::info!(gvm_profile = %name, "profile {name} loaded from {file} ({rules} rules)");
                    let agent = next.profiles.get(&name).map(|p| (&p.profile.agent, &p.profile.tier_warnings));
                    for w in agent.map(|a| a.1.as_slice()).unwrap_or_default() {
                        tracing::warn!(gvm_profile = %name, "profile {name}: {w}");
                    }
                    let mut details = serde_json::json!({
                        "file": file, "sha256": digest, "version": digest, "rules": rules,
                        "how": how, "by": by,
                    });
                    if let Some((agent, _)) = agent.filter(|a| a.0.tier.is_some()) {
                        details["tier"] = agent.tier.map(|t| t.to_string()).into();
                        details["tier_override"] = agent.tier_override.iter().map(|o| o.to_string()).collect();
                    }
                    NewEvent {
                        profile: Some(name),
                        kind: gvm_api::EventKind::ProfileLoaded.into(),
                        decision: None,
                        rule: None,
                        details,
                    }
                }
                Change::Refused { name, diagnostic, kept } => {
                    let consequence =
                        if kept { "the last good version stays in force" } else { "the profile is not in force" };
                    tracing::error!(
                        gvm_profile = name.as_deref().unwrap_or(""),
                        "profile refused: {diagnostic}; {consequence}"
                    );
                    NewEvent {
                        profile: name,
                        kind: gvm_api::EventKind::ProfileRefused.into(),
                        decision: None,
                        rule: None,
                        details: serde_json::json!({
                            "file": diagnostic.file.display().to_string(),
                            "line": diagnostic.line,
                            "column": diagnostic.column,
                            "field": diagnostic.field,
                            "message": diagnostic.message,
                            "fix": diagnostic.fix,
                            "kept_previous": kept,
                        }),
                    }
                }
                Change::Removed { name } => {
                    tracing::info!(gvm_profile = %name, "profile {name} removed: its file is gone");
                    NewEvent {
                        profile: Some(name),
                        kind: gvm_api::EventKind::ProfileRemoved.into(),
                        decision: None,
                        rule: None,
                        details: serde_json::json!({}),
                    }
                }
            };
            self.record(event).await;
        }

        ReloadResponse {
            loaded: next.profiles.keys().cloned().collect(),
            refused: prices_refused.into_iter().chain(next.refused.iter().map(Into::into)).collect(),
        }
    }

    /// Puts `[prices]` of gvmd.toml in force again (the other sections of gvmd.toml take
    /// a restart). A gvmd.toml that does not load is refused like a profile: the prices
    /// in force stay, the refusal names file:line and the fix, and is audited
    /// (`config_refused`).
    async fn reload_prices(&self) -> Option<gvm_api::ProfileRefusal> {
        let file = self.paths.config_file();
        let loaded = tokio::task::spawn_blocking(move || crate::config::DaemonConfig::load(&file))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let mut refusal = match loaded {
            Ok(config) => {
                self.gateway.set_prices(config.gateway_prices());
                return None;
            }
            Err(crate::config::ConfigError::Invalid(d)) => gvm_api::ProfileRefusal::from(&d),
            Err(e) => gvm_api::ProfileRefusal {
                file: self.paths.config_file().display().to_string(),
                line: None,
                column: None,
                field: None,
                message: e.to_string(),
                fix: None,
            },
        };
        refusal.message.push_str(" (the [prices] in force stay until gvmd.toml loads)");
        tracing::error!("gvmd.toml refused at reload: {refusal}");
        let details = serde_json::json!({
            "file": refusal.file, "line": refusal.line, "column": refusal.column, "field": refusal.field,
            "message": refusal.message, "fix": refusal.fix, "kept_previous": true,
        });
        let event = NewEvent {
            profile: None,
            kind: gvm_api::EventKind::ConfigRefused.into(),
            decision: None,
            rule: None,
            details,
        };
        self.record(event).await;
        Some(refusal)
    }

    pub async fn status(&self) -> Result<StatusResponse, gvm_audit::AuditError> {
        let profiles = self.profiles();
        let approvals = self.approvals.clone();
        let pending = tokio::task::spawn_blocking(move || approvals.store.pending_counts())
            .await
            .ok()
            .and_then(|r| r.map_err(|e| tracing::warn!("approval counts: {e}")).ok())
            .unwrap_or_default();
        Ok(StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: crate::rfc3339(self.started_at),
            uptime_secs: self.started.elapsed().as_secs(),
            config_dir: self.paths.config_dir.display().to_string(),
            state_dir: self.paths.state_dir.display().to_string(),
            runtime_dir: self.paths.runtime_dir.display().to_string(),
            profiles: profiles
                .statuses()
                .into_iter()
                .map(|mut p| {
                    p.connections_cap = self.gateway.connections_cap(&p.name);
                    if let Some(loaded) = profiles.profiles.get(&p.name) {
                        p.mode = self.effective_mode(&loaded.profile);
                        p.watch =
                            self.watches.get(&p.name).map(|_| crate::watch::state(self, &p.name, &loaded.profile));
                    }
                    p.noisy = self.gateway.noisy(&p.name);
                    p.budgets = self.gateway.budgets(&p.name);
                    (p.pending_requests, p.pending_files) = pending.get(&p.name).copied().unwrap_or_default();
                    p
                })
                .collect(),
            refused: profiles.refused.iter().map(Into::into).collect(),
            audit: self.audit.status()?,
            agents: crate::supervisor::control::statuses(self).await,
            supervisor: self.supervisor.name().to_string(),
            notify: self.approvals.notices.status(),
        })
    }
}
