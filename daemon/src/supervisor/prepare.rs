//! Preparing profile P for a sandbox: user, netns with the gateway inside, state
//! directories, CA bundle. Idempotent and cheap the second time: the listeners are
//! opened once per gvmd process, the rest is checked and left as it is.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use gvm_api::{LaunchPlan, PlannedWorkspace, WorkspaceMode};
use gvm_sandbox::{AgentPaths, GatewayPorts, Netns};
use sha2::{Digest, Sha256};

use super::Prepared;
use crate::state::Daemon;

/// Why a profile could not be prepared. Messages name the profile and the fix.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("no profile {0:?} is in force — add /etc/gvm/profiles/{0}.toml (or fix it: `gvmctl status` lists refused files) and run `gvmctl reload`")]
    NoProfile(String),
    #[error("preparing the sandbox of profile {profile} failed: {source}")]
    Sandbox { profile: String, source: gvm_sandbox::Error },
    #[error("cannot write the CA bundle {path}: {source}")]
    Bundle { path: PathBuf, source: std::io::Error },
    #[error("gvmd must run as root to prepare sandboxes (it creates users and network namespaces)")]
    NotRoot,
}

/// Where the gateway listens inside every profile's netns.
pub const PORTS: GatewayPorts = GatewayPorts { proxy: 3128, transparent: 3129, dns: 53 };

/// What allowed names resolve to inside the netns: a local address whose connections
/// nft redirects to the transparent listener.
pub fn dns_answer() -> IpAddr {
    gvm_sandbox::netns::ROUTE_SRC.parse().unwrap_or(IpAddr::V4(Ipv4Addr::new(169, 254, 254, 1)))
}

/// A stable, readable id for a workspace's overlay directory: `<basename>-<hash>`.
pub fn workspace_id(path: &Path) -> String {
    let base: String = path
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .take(40)
                .collect()
        })
        .unwrap_or_default();
    let hash = hex::encode(&Sha256::digest(path.as_os_str().as_encoded_bytes())[..4]);
    if base.is_empty() {
        hash
    } else {
        format!("{base}-{hash}")
    }
}

/// The PEM bundle agents trust: the system roots plus gvmd's CA. Rewritten when it differs.
fn write_bundle(state_dir: &Path, ca_pem: &str, profile: &str) -> Result<PathBuf, PrepareError> {
    let path = state_dir.join("ca").join("bundle.pem");
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    let text = format!("{system}\n# gvm interception CA\n{ca_pem}");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        // A temporary file of its own: profiles prepared at once each write one.
        let tmp = path.with_extension(format!("pem.{profile}.tmp"));
        let fail = |source| PrepareError::Bundle { path: path.clone(), source };
        std::fs::write(&tmp, &text).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
    }
    Ok(path)
}

/// The sockets of the gateway inside a netns, bound by a thread that entered it.
struct Sockets {
    proxy: std::net::TcpListener,
    transparent: std::net::TcpListener,
    dns_udp: std::net::UdpSocket,
    dns_tcp: std::net::TcpListener,
}

/// Names of a profile's sockets in systemd's fd store.
fn fd_names(profile: &str) -> [String; 4] {
    ["proxy", "transparent", "dns-udp", "dns-tcp"].map(|s| format!("{profile}.{s}"))
}

impl Sockets {
    /// The profile's sockets kept in systemd's fd store across a gvmd restart, if all
    /// four came back: agents' connections waited in their backlogs meanwhile.
    fn from_store(daemon: &Daemon, profile: &str) -> Option<Sockets> {
        let mut stored = daemon.stored_fds.lock().unwrap_or_else(|e| e.into_inner());
        let names = fd_names(profile);
        if !names.iter().all(|n| stored.get(n).is_some_and(|v| !v.is_empty())) {
            return None;
        }
        let mut take = |i: usize| stored.remove(&names[i]).and_then(|mut v| v.pop());
        let (p, t, u, d) = (take(0)?, take(1)?, take(2)?, take(3)?);
        let s = Sockets {
            proxy: std::net::TcpListener::from(p),
            transparent: std::net::TcpListener::from(t),
            dns_udp: std::net::UdpSocket::from(u),
            dns_tcp: std::net::TcpListener::from(d),
        };
        s.proxy.set_nonblocking(true).ok()?;
        s.transparent.set_nonblocking(true).ok()?;
        s.dns_tcp.set_nonblocking(true).ok()?;
        s.dns_udp.set_nonblocking(true).ok()?;
        Some(s)
    }

    /// Puts the sockets in systemd's fd store (no-op without systemd).
    fn store(&self, daemon: &Daemon, profile: &str) {
        use std::os::fd::AsFd;
        let fds = [self.proxy.as_fd(), self.transparent.as_fd(), self.dns_udp.as_fd(), self.dns_tcp.as_fd()];
        for (name, fd) in fd_names(profile).iter().zip(fds) {
            daemon.notifier.store_fds(name, &[fd]);
        }
    }
}

fn bind_inside(netns: &Netns) -> Result<std::io::Result<Sockets>, gvm_sandbox::Error> {
    netns.run_in(|| {
        let lo = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let s = Sockets {
            proxy: std::net::TcpListener::bind(lo(PORTS.proxy))?,
            transparent: std::net::TcpListener::bind(lo(PORTS.transparent))?,
            dns_udp: std::net::UdpSocket::bind(lo(PORTS.dns))?,
            dns_tcp: std::net::TcpListener::bind(lo(PORTS.dns))?,
        };
        for l in [&s.proxy, &s.transparent, &s.dns_tcp] {
            l.set_nonblocking(true)?;
        }
        s.dns_udp.set_nonblocking(true)?;
        Ok(s)
    })
}

/// Prepares `name` and returns the plan for its launcher.
pub async fn prepare(daemon: &Daemon, name: &str) -> Result<LaunchPlan, PrepareError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(PrepareError::NotRoot);
    }
    let profiles = daemon.profiles();
    let loaded = profiles.profiles.get(name).ok_or_else(|| PrepareError::NoProfile(name.to_string()))?;
    let profile = loaded.profile.clone();
    let sandbox_err = |source| PrepareError::Sandbox { profile: name.to_string(), source };
    let pname = gvm_sandbox::ProfileName::parse(name).map_err(|e| sandbox_err(e.into()))?;
    let paths = AgentPaths::new(&daemon.paths.state_dir, &daemon.paths.runtime_dir, &pname);
    let workspaces: Vec<(String, PathBuf, WorkspaceMode)> =
        profile.agent.workspaces.iter().map(|w| (workspace_id(&w.path), w.path.clone(), w.mode)).collect();

    // This profile only: another profile's useradd, netns or nft does not wait for it.
    // The map of prepared profiles is locked only for a look or an insert.
    let _this_profile = daemon.agents.prepare_locks.lock(name).await;
    let listening = daemon.agents.prepared.lock().await.contains_key(name);
    let from_store = if listening { None } else { Sockets::from_store(daemon, name) };
    let reused = from_store.is_some();
    let (runtime_dir, ws) = (daemon.paths.runtime_dir.clone(), workspaces.clone());
    let paths2 = paths.clone();
    let pname2 = pname.clone();
    let (uid, gid, netns_path, sockets) = tokio::task::spawn_blocking(move || {
        let (uid, gid) = gvm_sandbox::ensure_user(&pname2, &paths2.home)?;
        let overlays: Vec<(&str, &Path)> = ws
            .iter()
            .filter(|(_, _, m)| *m == WorkspaceMode::Overlay)
            .map(|(id, p, _)| (id.as_str(), p.as_path()))
            .collect();
        paths2.prepare(uid, gid, &overlays)?;
        let netns = Netns::create(&runtime_dir, &pname2, PORTS)?;
        let sockets = if listening || reused { None } else { Some(bind_inside(&netns)?) };
        Ok::<_, gvm_sandbox::Error>((uid.as_raw(), gid.as_raw(), netns.path().to_path_buf(), sockets))
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    .map_err(sandbox_err)?;

    let sockets = match from_store {
        Some(stored) => Some(Ok(stored)),
        None => sockets,
    };
    let mut opened = None;
    if let Some(sockets) = sockets {
        let s = sockets.map_err(|e| {
            sandbox_err(gvm_sandbox::Error::Setup(format!("binding the gateway inside the netns: {e}")))
        })?;
        if !reused {
            s.store(daemon, name);
        }
        let gw = &daemon.gateway;
        let tcp = |l: std::net::TcpListener| tokio::net::TcpListener::from_std(l);
        let io = |e: std::io::Error| {
            sandbox_err(gvm_sandbox::Error::Setup(format!("registering the gateway's sockets: {e}")))
        };
        let listeners = vec![
            gw.serve_proxy(tcp(s.proxy).map_err(io)?, &pname),
            gw.serve_transparent(tcp(s.transparent).map_err(io)?, &pname),
            gw.serve_dns(
                tokio::net::UdpSocket::from_std(s.dns_udp).map_err(io)?,
                tcp(s.dns_tcp).map_err(io)?,
                &pname,
                dns_answer(),
            ),
        ];
        tracing::info!(gvm_profile = name, "gateway listening inside {}", netns_path.display());
        opened = Some(Prepared { uid, gid, listeners, agent: String::new() });
    }
    let mut prepared = daemon.agents.prepared.lock().await;
    if let Some(opened) = opened {
        prepared.insert(name.to_string(), opened);
    }
    if let Some(p) = prepared.get_mut(name) {
        p.agent = format!("{:?}", profile.agent);
    }
    drop(prepared);

    // The masked files are read again: the operator may have changed them since the load.
    let p = profile.clone();
    let values = tokio::task::spawn_blocking(move || crate::secrets::file_values(&p))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    daemon.gateway.set_file_values(name, values);
    let mut env: Vec<(String, String)> = profile.agent.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    // The secrets' placeholders, never their values.
    env.extend(daemon.gateway.agent_env(&profile));
    let bundle = write_bundle(&daemon.paths.state_dir, &daemon.gateway.ca_pem(), name)?;
    Ok(LaunchPlan {
        profile: pname,
        uid,
        gid,
        netns: netns_path.display().to_string(),
        state_dir: daemon.paths.state_dir.display().to_string(),
        runtime_dir: daemon.paths.runtime_dir.display().to_string(),
        config_dir: daemon.paths.config_dir.display().to_string(),
        command: profile.agent.command.clone(),
        env,
        workspaces: workspaces
            .into_iter()
            .map(|(id, path, mode)| PlannedWorkspace { path: path.display().to_string(), mode, id })
            .collect(),
        deny_read: profile.files.deny_read.clone(),
        ca_bundle: bundle.display().to_string(),
        proxy_port: PORTS.proxy,
        memory_max: profile.agent.memory_max,
        tasks_max: profile.agent.tasks_max,
        cpu_quota: profile.agent.cpu_quota,
    })
}

/// Undoes [`prepare`] but for the user and the state directories (the agent's work):
/// the gateway stops listening for P and P's network namespace is removed, with its nft
/// rules. Idempotent; a profile that was never prepared is fine.
pub async fn teardown(daemon: &Daemon, name: &str) -> Result<(), PrepareError> {
    let sandbox_err = |source| PrepareError::Sandbox { profile: name.to_string(), source };
    let pname = gvm_sandbox::ProfileName::parse(name).map_err(|e| sandbox_err(e.into()))?;
    // Not while the same profile is being prepared; others go on.
    let _this_profile = daemon.agents.prepare_locks.lock(name).await;
    let names = fd_names(name);
    for n in &names {
        daemon.notifier.remove_fds(n);
    }
    daemon.stored_fds.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| !names.contains(k));
    let prepared = daemon.agents.prepared.lock().await.remove(name);
    if let Some(prepared) = prepared {
        let handles: Vec<_> = prepared.listeners.iter().map(|h| h.abort_handle()).collect();
        drop(prepared);
        // Wait until the listening sockets are really closed.
        for _ in 0..100 {
            if handles.iter().all(|h| h.is_finished()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    let runtime_dir = daemon.paths.runtime_dir.clone();
    tokio::task::spawn_blocking(move || match Netns::open(&runtime_dir, &pname) {
        Ok(netns) => netns.destroy(),
        Err(_) => Ok(()), // not bound: nothing to remove
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    .map_err(sandbox_err)?;
    tracing::info!(gvm_profile = name, "profile {name} torn down: gateway stopped, network namespace removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_ids_are_stable_readable_and_distinct() {
        let a = workspace_id(Path::new("/srv/invoices"));
        assert!(a.starts_with("invoices-") && a.len() == "invoices-".len() + 8, "{a}");
        assert_eq!(a, workspace_id(Path::new("/srv/invoices")));
        assert_ne!(a, workspace_id(Path::new("/home/x/invoices")));
        assert_eq!(workspace_id(Path::new("/")).len(), 8);
    }
}
