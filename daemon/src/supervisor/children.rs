//! The foreground backend: without systemd, gvmd runs each agent's launcher
//! (`gvmd launch --profile P`, the same program the unit runs) as its own child and
//! restarts it when it fails, with a backoff (1 s doubling to 60 s), as `Restart=
//! on-failure` would. The agent's output goes to `<state>/agents/P/agent.log`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// One supervised agent.
#[derive(Debug)]
struct Child {
    stop: watch::Sender<bool>,
    status: Arc<Mutex<ChildStatus>>,
    task: tokio::task::JoinHandle<()>,
}

/// What `gvmctl status` shows of a child agent.
#[derive(Debug, Clone, Default)]
pub struct ChildStatus {
    pub state: gvm_api::AgentState,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// How the launcher (and so the agent) last ended, as [`describe_exit`] writes it.
    pub last_exit: Option<String>,
    pub since: Option<SystemTime>,
}

/// The same from systemd's `$EXIT_CODE` and `$EXIT_STATUS` (`exited` `1`, `killed`
/// `KILL`, `dumped` `SEGV`).
pub fn describe_systemd_exit(code: &str, status: &str) -> Option<String> {
    match code {
        "exited" => Some(format!("exit {}", status.parse::<i32>().ok()?)),
        "killed" | "dumped" if !status.is_empty() && status.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Some(format!("signal SIG{status}"))
        }
        _ => None,
    }
}

/// `exit N` or `signal SIGNAME`, for `gvmctl status`.
pub fn describe_exit(code: Option<i32>, signal: Option<i32>) -> Option<String> {
    match (code, signal) {
        (Some(c), _) => Some(format!("exit {c}")),
        (None, Some(s)) => Some(match nix::sys::signal::Signal::try_from(s) {
            Ok(sig) => format!("signal {}", sig.as_str()),
            Err(_) => format!("signal {s}"),
        }),
        (None, None) => None,
    }
}

#[derive(Debug, Default)]
pub struct Children {
    agents: Mutex<HashMap<String, Child>>,
}

/// How to start one launcher.
#[derive(Debug, Clone)]
pub struct LaunchCommand {
    pub exe: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Children {
    pub fn status(&self, profile: &str) -> Option<ChildStatus> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.get(profile).map(|c| c.status.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    pub fn is_running(&self, profile: &str) -> bool {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.get(profile).is_some_and(|c| !c.task.is_finished())
    }

    /// Starts supervising `profile` (no-op when it already runs). `done` runs after the
    /// last launcher exited (teardown).
    pub fn start<F>(&self, profile: &str, cmd: LaunchCommand, instance: super::Instance, done: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if agents.get(profile).is_some_and(|c| !c.task.is_finished()) {
            return;
        }
        let (stop, stopped) = watch::channel(false);
        let status = Arc::new(Mutex::new(ChildStatus { state: gvm_api::AgentState::Starting, ..Default::default() }));
        let task = tokio::spawn(supervise(profile.to_string(), cmd, stopped, status.clone(), instance, done));
        agents.insert(profile.to_string(), Child { stop, status, task });
    }

    /// Stops the agent (SIGTERM to the launcher, which forwards it; SIGKILL after 20 s)
    /// and waits until it is gone.
    pub async fn stop(&self, profile: &str) {
        let child = self.agents.lock().unwrap_or_else(|e| e.into_inner()).remove(profile);
        if let Some(child) = child {
            let _ = child.stop.send(true);
            let _ = child.task.await;
        }
    }
}

async fn supervise<F>(
    profile: String,
    cmd: LaunchCommand,
    mut stopped: watch::Receiver<bool>,
    status: Arc<Mutex<ChildStatus>>,
    instance: super::Instance,
    done: F,
) where
    F: std::future::Future<Output = ()>,
{
    let set = |f: &dyn Fn(&mut ChildStatus)| f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
    let mut backoff = Duration::from_secs(1);
    loop {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&cmd.log);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(e) => {
                tracing::warn!(gvm_profile = %profile, "cannot open {}: {e}; the agent's output is discarded", cmd.log.display());
                (Stdio::null(), Stdio::null())
            }
        };
        let spawned = tokio::process::Command::new(&cmd.exe)
            .args(["launch", "--profile", &profile, "--socket"])
            .arg(&cmd.socket)
            // The launcher dies with gvmd (it arms its parent-death signal): a SIGKILLed
            // gvmd must not leave agents running that nobody supervises.
            .env(crate::launch_command::PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(gvm_profile = %profile, "cannot run the launcher {}: {e}", cmd.exe.display());
                set(&|s| s.state = gvm_api::AgentState::Failed);
                break;
            }
        };
        let pid = child.id();
        set(&|s| {
            s.state = gvm_api::AgentState::Running;
            s.pid = pid;
            s.since = Some(SystemTime::now());
        });
        tracing::info!(gvm_profile = %profile, "agent {profile} started (launcher pid {})", pid.unwrap_or(0));
        let exit = tokio::select! {
            exit = child.wait() => exit,
            _ = stopped.changed() => {
                set(&|s| s.state = gvm_api::AgentState::Stopping);
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
                }
                match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                    Ok(exit) => exit,
                    Err(_) => {
                        let _ = child.kill().await;
                        child.wait().await
                    }
                }
            }
        };
        let stopping = *stopped.borrow();
        let success = exit.as_ref().map(|e| e.success() || e.code() == Some(143)).unwrap_or(false);
        let ended = exit.as_ref().ok().and_then(|e| {
            use std::os::unix::process::ExitStatusExt;
            describe_exit(e.code(), e.signal())
        });
        set(&|s| {
            s.pid = None;
            s.last_exit = ended.clone();
        });
        if stopping || success {
            tracing::info!(gvm_profile = %profile, "agent {profile} stopped ({exit:?})");
            set(&|s| s.state = gvm_api::AgentState::Stopped);
            break;
        }
        tracing::warn!(gvm_profile = %profile, "agent {profile} failed ({exit:?}); restarting in {} s", backoff.as_secs());
        set(&|s| {
            s.state = gvm_api::AgentState::Restarting;
            s.restarts += 1;
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.changed() => { set(&|s| s.state = gvm_api::AgentState::Stopped); break; }
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
    drop(instance);
    done.await;
}

#[cfg(test)]
mod exit_tests {
    #[test]
    fn describes_exits_and_signals_by_name() {
        assert_eq!(super::describe_exit(Some(1), None).as_deref(), Some("exit 1"));
        assert_eq!(super::describe_exit(None, Some(9)).as_deref(), Some("signal SIGKILL"));
        assert_eq!(super::describe_exit(None, Some(200)).as_deref(), Some("signal 200"));
        assert_eq!(super::describe_exit(None, None), None);
        assert_eq!(super::describe_systemd_exit("exited", "1").as_deref(), Some("exit 1"));
        assert_eq!(super::describe_systemd_exit("killed", "KILL").as_deref(), Some("signal SIGKILL"));
        assert_eq!(super::describe_systemd_exit("killed", "K\nILL"), None);
        assert_eq!(super::describe_systemd_exit("", ""), None);
    }
}
