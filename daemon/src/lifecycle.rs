//! gvmd's life: start, serve, reload on SIGHUP, stop on SIGTERM.
//!
//! Order matters and is part of the contract: the audit store is open and the control
//! socket listens before systemd hears READY=1; the start event is the first thing
//! recorded and the stop event the last; the socket file is removed on the way out.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gvm_audit::{Audit, AuditConfig, NewEvent};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{ConfigError, DaemonConfig, Paths};
use crate::state::Daemon;
use crate::sys::creds::AdminGroup;
use crate::sys::notify::Notifier;

/// Why gvmd could not start. Each message names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create {path}: {source} — gvmd needs to own this directory; run it as root or pass another one with the matching --*-dir option")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Audit(#[from] gvm_audit::AuditError),
    #[error("another gvmd is already answering on {0} — stop it first (`systemctl stop gvmd`), or give this one another --runtime-dir")]
    AlreadyRunning(PathBuf),
    #[error("cannot listen on {path}: {source} — remove the stale file or pick another --runtime-dir")]
    Listen { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Gateway(#[from] gvm_gateway::GatewayError),
    #[error(
        "cannot listen on {addr} for profile {profile} ([gateway.listen] in gvmd.toml): {source} — pick a free address"
    )]
    HostListener { profile: String, addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Approvals(#[from] crate::approvals::StoreError),
    #[error(transparent)]
    Spend(#[from] gvm_gateway::SpendStoreError),
    #[error("[notify] in gvmd.toml: {0}")]
    Notify(String),
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
}

fn ensure_dir(path: &Path, mode: u32) -> Result<(), StartError> {
    let fail = |source| StartError::Dir { path: path.to_owned(), source };
    if !path.is_dir() {
        std::fs::create_dir_all(path).map_err(fail)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    }
    Ok(())
}

/// Binds the control socket: refuses to steal it from a live gvmd, replaces a stale
/// file, and leaves it 0660 root:gvm-admin (group only when that group exists).
fn bind_control_socket(path: &Path, admin: &AdminGroup) -> Result<UnixListener, StartError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::AlreadyRunning(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listen = |source| StartError::Listen { path: path.to_owned(), source };
    let listener = UnixListener::bind(path).map_err(listen)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(listen)?;
    if let Some(gid) = admin.gid {
        if let Err(e) = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))) {
            tracing::warn!("cannot give {} to group {}: {e}; only root can use it", path.display(), admin.name);
        }
    }
    Ok(listener)
}

fn summary(d: &Daemon) -> String {
    let p = d.profiles();
    format!(
        "{} profiles in force, {} refused; control socket {}",
        p.profiles.len(),
        p.refused.len(),
        d.paths.socket().display()
    )
}

/// Runs gvmd until SIGTERM or SIGINT. Returns once everything is flushed and closed.
pub async fn run(paths: Paths, stored_fds: HashMap<String, Vec<OwnedFd>>) -> Result<(), StartError> {
    let notifier = Notifier::from_env();
    let config = DaemonConfig::load(&paths.config_file())?;
    ensure_dir(&paths.state_dir, 0o755)?;
    ensure_dir(&paths.runtime_dir, 0o755)?;

    let audit = Audit::open_with_durability(
        &paths.state_dir,
        AuditConfig {
            checkpoint_every: config.audit.checkpoint_every,
            checkpoint_interval: config.audit.checkpoint_interval,
        },
        match config.audit.sync {
            crate::config::SyncMode::Full => gvm_audit::Durability::Full,
            crate::config::SyncMode::Normal => gvm_audit::Durability::Normal,
        },
    )?;
    let gateway = gvm_gateway::Gateway::new(
        gvm_gateway::GatewayConfig {
            ca_dir: paths.state_dir.join("ca"),
            extra_roots: config.gateway.extra_roots.clone(),
            static_hosts: config.gateway.hosts.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            fd_limit: None,
        },
        audit.clone(),
    )?;
    // Budget spend of the current periods survives a restart (written behind every second).
    gateway.open_spend(&paths.state_dir.join("spend.db"))?;
    // Secret placeholders too: an agent that outlives the restart keeps a working one.
    gateway.open_placeholders(&paths.state_dir.join("placeholders.json"));
    let store = crate::approvals::Store::open(&paths.state_dir.join("approvals.db"))?;
    let tls = gvm_gateway::Gateway::client_tls(&config.gateway.extra_roots)?;
    let notices = crate::approvals::notify::Notices::start(&config.notify, tls).map_err(StartError::Notify)?;
    let approvals = crate::approvals::Approvals::new(store, notices);
    gateway.set_hold_sink(approvals.clone());
    // `agent.<name>` calls reach the callee through a socket inside its netns.
    gateway.set_agent_dialer(Arc::new(crate::agent_calls::NetnsDialer { runtime_dir: paths.runtime_dir.clone() }));
    gateway.set_budget_sink(Arc::new(approvals.notices.clone()));
    gateway.set_prices(config.gateway_prices());
    let stale = approvals.store.expire_stale_requests()?;
    let mut host_listeners = Vec::new();
    for (profile, addr) in &config.gateway.listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::HostListener {
            profile: profile.to_string(),
            addr: *addr,
            source,
        })?;
        host_listeners.push((profile.clone(), listener));
    }
    let admin = AdminGroup::lookup(&config.control.admin_group);
    let listener = bind_control_socket(&paths.socket(), &admin)?;

    let mut hangup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;

    let supervisor = match crate::supervisor::systemd::Systemd::connect().await {
        Some(sd) => crate::supervisor::Backend::Systemd(sd),
        None => crate::supervisor::Backend::Gvmd(Default::default()),
    };
    if !stored_fds.is_empty() {
        tracing::info!("{} sockets came back from systemd's fd store", stored_fds.len());
    }
    let daemon = Arc::new(Daemon::new(crate::state::Parts {
        paths,
        config,
        audit,
        gateway,
        approvals,
        supervisor,
        notifier,
        stored_fds,
        admin,
    }));
    let notifier = &daemon.notifier;
    daemon
        .record(NewEvent {
            profile: None,
            kind: gvm_api::EventKind::DaemonStart.into(),
            decision: None,
            rule: None,
            details: serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "config_dir": daemon.paths.config_dir.display().to_string(),
                "state_dir": daemon.paths.state_dir.display().to_string(),
                "runtime_dir": daemon.paths.runtime_dir.display().to_string(),
                "under_systemd": notifier.active(),
            }),
        })
        .await;
    // Requests held by the previous gvmd died with it: never forwarded, now audited.
    for a in stale {
        let method = a.method.clone().unwrap_or_default();
        daemon
            .record(NewEvent {
                profile: Some(a.profile.clone()),
                kind: if method == "CONNECT" { gvm_api::EventKind::Connect } else { gvm_api::EventKind::Http }.into(),
                decision: Some(gvm_api::Decision::Deny.into()),
                rule: a.rule.clone(),
                details: serde_json::json!({
                    "hold_id": a.id,
                    "hold": "expired",
                    "method": method,
                    "url": a.url,
                    "reason": "gvmd restarted while the request was held",
                }),
            })
            .await;
    }
    daemon.reload_as(gvm_api::versions::Origin::Start, None).await;
    crate::supervisor::control::reconcile_leftovers(&daemon).await;
    crate::supervisor::ephemeral::recover(&daemon.paths.state_dir);

    let api = tokio::spawn(crate::api::serve(listener, daemon.clone()));
    for (profile, listener) in host_listeners {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::warn!(gvm_profile = %profile, "host listener {addr} speaks as profile {profile}: any local process that reaches it does");
        daemon.gateway.serve_proxy(listener, &profile);
    }
    // Agents with `autostart = true` start now (running units under systemd were found
    // by `reconcile_leftovers`: they outlive gvmd restarts).
    tokio::spawn({
        let d = daemon.clone();
        async move { crate::supervisor::control::reconcile(&d).await }
    });
    let review_watch = tokio::spawn(crate::review::watch(daemon.clone()));
    let status = summary(&daemon);
    tracing::info!("gvmd {} ready: {status}", env!("CARGO_PKG_VERSION"));
    notifier.ready(&status);

    let watchdog = notifier.watchdog_period().map(|period| tokio::spawn(feed_watchdog(daemon.clone(), period)));
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                notifier.reloading();
                tracing::info!("SIGHUP: reloading profiles");
                daemon.reload().await;
                notifier.ready(&summary(&daemon));
            }
            _ = terminate.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = interrupt.recv() => { tracing::info!("SIGINT: shutting down"); break; }
        }
    }

    notifier.stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    api.abort();
    review_watch.abort();
    let _ = std::fs::remove_file(daemon.paths.socket());
    // Counts of folded refusals since the last tick go into the log before it closes,
    // and budget spend since the last write goes to spend.db.
    daemon.gateway.flush().await;
    daemon
        .record(NewEvent {
            profile: None,
            kind: gvm_api::EventKind::DaemonStop.into(),
            decision: None,
            rule: None,
            details: serde_json::json!({ "pid": std::process::id() }),
        })
        .await;
    let audit = daemon.audit.clone();
    tokio::task::spawn_blocking(move || audit.close()).await.ok().transpose()?;
    tracing::info!("gvmd stopped");
    Ok(())
}

/// Feeds systemd's watchdog every `period` (half of `WatchdogSec=`), but only after a
/// round trip through the audit writer that commits to the disk (`Audit::ping`): gvmd
/// decides nothing without its audit store, so a writer that panicked, is poisoned,
/// cannot write or hangs in an fsync stops the pings, and systemd restarts gvmd.
async fn feed_watchdog(daemon: Arc<Daemon>, period: std::time::Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tick.tick().await;
        let answer = match tokio::time::timeout(period, daemon.audit.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {period:?} (a write is hanging)")),
        };
        match answer {
            Ok(()) => {
                daemon.notifier.watchdog();
                if !healthy {
                    tracing::info!("the audit store commits again; feeding the watchdog");
                    healthy = true;
                }
            }
            Err(e) if healthy => {
                tracing::error!(
                    "the audit store is not healthy: {e}; not feeding the watchdog, so systemd restarts gvmd"
                );
                healthy = false;
            }
            Err(_) => {}
        }
    }
}
