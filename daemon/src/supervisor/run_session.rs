//! A `gvmctl run` session: a one-off command in a fresh instance of a profile's
//! sandbox, with the caller's terminal attached.
//!
//! Wire (after [`gvm_api::RUN_MAGIC`]): the client's first `sendmsg` carries the
//! [`RunRequest`] line and its stdin, stdout and stderr as SCM_RIGHTS; gvmd answers with
//! [`RunMessage`] lines (started, then exited or failed); the client may send
//! [`RunSignal`] lines (Ctrl-C and friends). If the client goes away, the sandbox is
//! killed. gvmd never reads or writes the caller's terminal itself: the descriptors go
//! straight to the sandbox.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use gvm_api::{RunMessage, RunRequest, RunSignal, RunSummary};
use gvm_audit::NewEvent;
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::state::Daemon;
use crate::sys::creds::{user_name, Peer};

const MAX_HEADER: usize = 64 * 1024;

/// Reads the request line and the descriptors that came with it.
async fn read_request(stream: &UnixStream) -> Result<(RunRequest, Vec<OwnedFd>), String> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut len = 0;
    let mut fds = Vec::new();
    loop {
        stream.readable().await.map_err(|e| e.to_string())?;
        let got = stream.try_io(tokio::io::Interest::READABLE, || {
            crate::sys::fdpass::recv_with_fds(stream.as_fd(), &mut buf[len..])
        });
        match got {
            Ok((0, _)) => return Err("the client closed the connection before its request".into()),
            Ok((n, mut more)) => {
                len += n;
                fds.append(&mut more);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            let line = std::str::from_utf8(&buf[..end]).map_err(|_| "the run request is not UTF-8".to_string())?;
            let json = line.strip_prefix(gvm_api::RUN_MAGIC).ok_or("not a run request")?;
            let req: RunRequest = serde_json::from_str(json).map_err(|e| format!("bad run request: {e}"))?;
            return Ok((req, fds));
        }
        if len == buf.len() {
            return Err("the run request is larger than 64 KiB".into());
        }
    }
}

async fn send(stream: &mut tokio::net::unix::WriteHalf<'_>, msg: &RunMessage) {
    if let Ok(mut line) = serde_json::to_vec(msg) {
        line.push(b'\n');
        let _ = stream.write_all(&line).await;
    }
}

/// Serves one session to its end.
pub async fn session(mut stream: UnixStream, daemon: Arc<Daemon>, peer: Peer) {
    let (req, fds) = match read_request(&stream).await {
        Ok(r) => r,
        Err(e) => {
            let (_, mut w) = stream.split();
            send(&mut w, &RunMessage::Failed { error: e, hint: None }).await;
            return;
        }
    };
    let (r, mut w) = stream.split();
    match run(&daemon, peer, &req, fds, r, &mut w).await {
        Ok(()) => {}
        Err((error, hint)) => send(&mut w, &RunMessage::Failed { error, hint }).await,
    }
}

pub(crate) type Failure = (String, Option<String>);

/// The profile `name` as in force, or why a run of it cannot start.
pub(crate) fn in_force(daemon: &Daemon, name: &str) -> Result<Arc<gvm_policy::Profile>, Failure> {
    daemon.profiles().profiles.get(name).map(|p| p.profile.clone()).ok_or_else(|| {
        (
            format!("no profile {name:?} is in force"),
            Some(format!(
                "add /etc/gvm/profiles/{name}.toml and run `gvmctl reload`; `gvmctl status` lists refused files"
            )),
        )
    })
}

async fn run(
    daemon: &Arc<Daemon>,
    peer: Peer,
    req: &RunRequest,
    fds: Vec<OwnedFd>,
    reader: tokio::net::unix::ReadHalf<'_>,
    writer: &mut tokio::net::unix::WriteHalf<'_>,
) -> Result<(), Failure> {
    let [stdin, stdout, stderr]: [OwnedFd; 3] = fds
        .try_into()
        .map_err(|_| ("gvmctl must pass its stdin, stdout and stderr with the run request".to_string(), None))?;
    if req.argv.is_empty() {
        return Err(("no command given".into(), Some("gvmctl run --profile P -- CMD ARGS...".into())));
    }
    if req.ephemeral {
        return ephemeral(daemon, peer, req, [stdin, stdout, stderr], reader, writer).await;
    }
    if req.timeout_secs.is_some() || !req.workspaces.is_empty() {
        return Err((
            "--timeout and --workspace go with --ephemeral".into(),
            Some("gvmctl run --profile P --ephemeral --timeout 5m --workspace DIR:overlay -- CMD".into()),
        ));
    }
    let profile = in_force(daemon, &req.profile)?;
    let Some(_instance) = daemon.agents.claim(&req.profile) else {
        return Err((
            format!("profile {} is already running (its agent or another `gvmctl run`)", req.profile),
            Some(format!("stop it first (`gvmctl stop {}`) or use another profile", req.profile)),
        ));
    };
    let plan =
        crate::supervisor::ephemeral::prepare_shared(daemon, &req.profile).await.map_err(|e| (e.to_string(), None))?;
    let ran = run_prepared(daemon, peer, req, &profile, &plan, [stdin, stdout, stderr], reader, writer).await;
    // Nothing of the instance stays but the agent's state: no netns, no nft table —
    // also when the sandbox failed to start.
    if let Err(e) = crate::supervisor::ephemeral::teardown_unless_shared(daemon, &req.profile).await {
        tracing::warn!(gvm_profile = %req.profile, "teardown after the run failed: {e}");
    }
    let (code, start_seq, started_at, clock) = ran?;

    let mut summary =
        summarize(daemon, &req.profile, start_seq, started_at, clock.elapsed().as_millis() as u64, &plan).await;
    if let Some((applied, waiting)) = crate::review::auto_apply(daemon, &req.profile).await {
        (summary.files_applied, summary.files_to_review) = (applied as u64, waiting as u64);
    }
    daemon
        .record(NewEvent {
            profile: Some(req.profile.clone()),
            kind: gvm_api::EventKind::RunFinished.into(),
            decision: None,
            rule: None,
            details: serde_json::json!({
                "exit_code": code, "allowed": summary.allowed, "denied": summary.denied, "held": summary.held,
                "dns_answered": summary.dns_answered, "dns_refused": summary.dns_refused,
                "files_changed": summary.files_changed, "files_applied": summary.files_applied,
                "files_to_review": summary.files_to_review, "duration_ms": summary.duration_ms, "run_started_seq": start_seq,
            }),
        })
        .await;
    send(writer, &RunMessage::Exited { code, summary }).await;
    Ok(())
}

/// `gvmctl run --ephemeral`: a fresh instance of its own, the client's signals relayed.
async fn ephemeral(
    daemon: &Arc<Daemon>,
    peer: Peer,
    req: &RunRequest,
    stdio: [OwnedFd; 3],
    reader: tokio::net::unix::ReadHalf<'_>,
    writer: &mut tokio::net::unix::WriteHalf<'_>,
) -> Result<(), Failure> {
    if req.watch {
        return Err((
            "--watch cannot go with --ephemeral: watch mode changes how the gateway decides for every instance of the profile".into(),
            Some("gvmctl watch P on --for 10m, then the ephemeral runs".into()),
        ));
    }
    let request = super::ephemeral::Request {
        profile: req.profile.clone(),
        argv: req.argv.clone(),
        timeout: req.timeout_secs.map(std::time::Duration::from_secs),
        workspaces: req.workspaces.clone(),
        env: Vec::new(),
        by_uid: peer.uid,
    };
    let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
    let (started_tx, mut started_rx) = tokio::sync::oneshot::channel();
    let run = super::ephemeral::run(daemon, request, stdio, Some(started_tx), control_rx);
    tokio::pin!(run);
    let mut lines = BufReader::new(reader).lines();
    let (mut client_gone, mut started) = (false, false);
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome?,
            pid = &mut started_rx, if !started => {
                started = true;
                if let Ok(pid) = pid {
                    send(writer, &RunMessage::Started { pid }).await;
                }
            }
            line = lines.next_line(), if !client_gone => match line {
                Ok(Some(line)) => {
                    if let Some(sig) = serde_json::from_str::<RunSignal>(&line).ok().and_then(|s| Signal::try_from(s.signal).ok()) {
                        let _ = control_tx.send(sig);
                    }
                }
                _ => {
                    client_gone = true;
                    let _ = control_tx.send(Signal::SIGKILL);
                }
            },
        }
    };
    send(writer, &RunMessage::Exited { code: outcome.code, summary: outcome.summary }).await;
    Ok(())
}

/// From a prepared profile to the command's exit: audit, launch, relay signals, wait.
/// Returns the exit code, the `run_started` event's seq and when the run began.
#[allow(clippy::too_many_arguments)]
async fn run_prepared(
    daemon: &Arc<Daemon>,
    peer: Peer,
    req: &RunRequest,
    profile: &Arc<gvm_policy::Profile>,
    plan: &gvm_api::LaunchPlan,
    [stdin, stdout, stderr]: [OwnedFd; 3],
    reader: tokio::net::unix::ReadHalf<'_>,
    writer: &mut tokio::net::unix::WriteHalf<'_>,
) -> Result<(i32, u64, SystemTime, Instant), Failure> {
    let spec = crate::supervisor::plan_to_spec::spec_from_plan(
        plan,
        &req.argv,
        gvm_sandbox::Stdio::Fds { stdin, stdout, stderr },
        true,
        true,
    )
    .map_err(|e| (e, None))?;

    // --watch: for this run the gateway allows everything and records what enforce would do.
    let watch_guard = req.watch.then(|| WatchMode::enter(daemon, profile));

    let started_at = SystemTime::now();
    let clock = Instant::now();
    let details = serde_json::json!({
        "argv": req.argv, "watch": req.watch, "by_uid": peer.uid, "by_user": user_name(peer.uid),
    });
    let start_seq = record_run_started(daemon, &req.profile, details).await?;

    let (pid, mut done_rx) = spawn_sandbox(spec, format!("gvm-run-{}", req.profile)).await?;
    send(writer, &RunMessage::Started { pid: pid.as_raw() as u32 }).await;

    let mut lines = BufReader::new(reader).lines();
    let mut client_gone = false;
    let exit = loop {
        tokio::select! {
            done = &mut done_rx => break done.map_err(|_| ("the run's thread ended without an exit status".to_string(), None))?,
            line = lines.next_line(), if !client_gone => match line {
                Ok(Some(line)) => {
                    if let Ok(RunSignal { signal }) = serde_json::from_str(&line) {
                        if let Ok(sig) = Signal::try_from(signal) {
                            let _ = nix::sys::signal::kill(pid, sig);
                        }
                    }
                }
                // The caller went away (closed terminal, killed gvmctl): nobody watches
                // this run any more, so it ends.
                _ => {
                    client_gone = true;
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                }
            },
        }
    };
    drop(watch_guard);
    let code = match exit {
        Ok(gvm_sandbox::Exit::Code(c)) => c,
        Ok(gvm_sandbox::Exit::Signaled(s)) => 128 + s as i32,
        Err(e) => return Err((format!("waiting for the sandbox failed: {e}"), None)),
    };
    Ok((code, start_seq, started_at, clock))
}

/// Launches the sandbox on a thread of its own that then waits for it; answers the
/// launcher's pid and where its exit will come.
///
/// One thread launches and waits: the sandbox's parent-death signal is tied to the
/// thread that forked it, so a gvmd that dies (even SIGKILLed) takes the sandbox with
/// it, and no tokio thread exiting while the run goes on can kill it by mistake. The
/// sandbox's cgroup is killed and removed before the exit is sent.
pub(crate) async fn spawn_sandbox(
    spec: gvm_sandbox::LaunchSpec,
    thread: String,
) -> Result<(nix::unistd::Pid, tokio::sync::oneshot::Receiver<gvm_sandbox::Result<gvm_sandbox::Exit>>), Failure> {
    let profile = spec.profile.to_string();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(thread)
        .spawn(move || match gvm_sandbox::launch(spec) {
            Err(e) => {
                let _ = started_tx.send(Err(e));
            }
            Ok(mut sandbox) => {
                let _ = started_tx.send(Ok(sandbox.pid()));
                let exit = sandbox.wait();
                drop(sandbox);
                let _ = done_tx.send(exit);
            }
        })
        .map_err(|e| (format!("cannot start the run's thread: {e}"), None))?;
    let pid = started_rx
        .await
        .map_err(|_| ("the launcher thread ended before the sandbox started".to_string(), None))?
        .map_err(|e| (format!("the sandbox of {profile} could not start: {e}"), None))?;
    Ok((pid, done_rx))
}

/// Counts the run's requests (from the audit log) and changed files (in the overlays).
/// The `run_started` event of a run of `profile`: a run the audit store cannot record
/// does not start.
pub(super) async fn record_run_started(d: &Daemon, profile: &str, details: serde_json::Value) -> Result<u64, Failure> {
    let event = NewEvent {
        profile: Some(profile.to_string()),
        kind: gvm_api::EventKind::RunStarted.into(),
        decision: None,
        rule: None,
        details,
    };
    d.record(event).await.ok_or(("the audit store cannot record the run; nothing was started".to_string(), None))
}

async fn summarize(
    daemon: &Daemon,
    profile: &str,
    start_seq: u64,
    started_at: SystemTime,
    duration_ms: u64,
    plan: &gvm_api::LaunchPlan,
) -> RunSummary {
    let mut s = RunSummary { profile: profile.to_string(), duration_ms, ..RunSummary::default() };
    count_requests(daemon, start_seq, &mut s).await;
    let overlay = Path::new(&plan.state_dir).join("agents").join(profile).join("overlay");
    let uppers: Vec<_> = plan
        .workspaces
        .iter()
        .filter(|w| w.mode == gvm_api::WorkspaceMode::Overlay)
        .map(|w| overlay.join(&w.id).join("upper"))
        .collect();
    s.files_changed = tokio::task::spawn_blocking(move || uppers.iter().map(|u| changed_since(u, started_at)).sum())
        .await
        .unwrap_or(0);
    s
}

/// The summary's request and DNS counts: the profile's decisions since `start_seq`.
pub(crate) async fn count_requests(daemon: &Daemon, start_seq: u64, s: &mut RunSummary) {
    let q = gvm_api::EventsQuery { profile: Some(s.profile.clone()), after_seq: Some(start_seq), ..Default::default() };
    let t = crate::supervisor::control::tally(daemon, q, false).await;
    (s.allowed, s.denied, s.held) = (t.allowed, t.denied, t.held);
    (s.dns_answered, s.dns_refused) = (t.dns_answered, t.dns_refused);
}

/// Entries (files, links, whiteouts) under `dir` changed at or after `since`.
fn changed_since(dir: &Path, since: SystemTime) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in entries.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else { continue };
        if meta.is_dir() {
            n += changed_since(&e.path(), since);
        } else if meta.modified().map(|m| m >= since).unwrap_or(false) || ctime_since(&meta, since) {
            n += 1;
        }
    }
    n
}

/// ctime (an overlay copy-up or a whiteout changes it without touching mtime), to the
/// nanosecond: a run that only reads must not count files an earlier run wrote.
fn ctime_since(meta: &std::fs::Metadata, since: SystemTime) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(since) = since.duration_since(SystemTime::UNIX_EPOCH) else { return true };
    (meta.ctime(), meta.ctime_nsec()) >= (since.as_secs() as i64, i64::from(since.subsec_nanos()))
}

/// The profile in watch mode for the length of a run; the version in force comes back
/// when dropped (unless a reload replaced it meanwhile).
struct WatchMode<'a> {
    daemon: &'a Daemon,
    profile: Arc<gvm_policy::Profile>,
}

impl<'a> WatchMode<'a> {
    fn enter(daemon: &'a Daemon, profile: &Arc<gvm_policy::Profile>) -> WatchMode<'a> {
        daemon.gateway.set_profile(&crate::watch::watched(profile));
        WatchMode { daemon, profile: profile.clone() }
    }
}

impl Drop for WatchMode<'_> {
    fn drop(&mut self) {
        let current = self.daemon.profiles().profiles.get(self.profile.name.as_str()).map(|p| p.profile.clone());
        self.daemon.put_in_force(current.as_deref().unwrap_or(&self.profile));
    }
}
