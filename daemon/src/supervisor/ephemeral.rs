//! Ephemeral runs: a fresh sandbox instance of profile P per task (`gvmctl run
//! --ephemeral`, `POST /v1/runs`).
//!
//! Each run gets, under `<state>/runs/<id>/`, a throwaway home and its own overlay
//! upper dirs, and from the launcher its own mount, pid, ipc, uts and cgroup namespaces
//! and cgroup leaf. It shares what gvmd prepared for P: the user `gvm-P`, the network
//! namespace with the gateway inside it, the rules and the audit log. Several runs of
//! one profile may go at once, beside P's long-running agent (which keeps its own upper
//! dirs under `<state>/agents/P/overlay`).
//!
//! Lifetime: after the command exits, or when its timeout kills it, the launcher is
//! SIGKILLed (init and the pid namespace die with it), the cgroup is killed and removed,
//! the mount namespace with the overlays goes with its last process, the home is
//! removed. The upper dirs stay only when they hold changes: the run is then *kept*
//! (`gvmctl runs`, `gvmctl changes --run ID`) until `gvmctl discard --run ID` removes it.
//!
//! P's network namespace is P's, not the run's: it stays while anything uses it (another
//! run, the agent, a `gvmctl run`), and the last user removes it; a run never removes
//! it under P's agent, and a teardown of P (its unit stopping) leaves it to the runs
//! still going ([`teardown_unless_shared`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gvm_api::review::{Change, FileClass};
use gvm_api::runs::{RunRecord, RunState, RunWorkspace};
use gvm_api::{PlannedWorkspace, RunSummary, WorkspaceMode};
use gvm_audit::NewEvent;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};

use super::run_session::Failure;
use crate::state::Daemon;

/// The runs going on, and one lock per profile that orders preparing and tearing down
/// its shared parts (so a teardown never removes the netns a run just joined).
#[derive(Debug, Default)]
pub struct Runs {
    active: Mutex<HashMap<String, RunRecord>>,
    /// Taken before [`super::prepare`]'s own per-profile lock, never after it.
    lifecycle: super::locks::ProfileLocks,
    /// The plan of each profile with runs going on, by the profile version it was
    /// prepared for: the runs after the first skip [`super::prepare::prepare`] (the user,
    /// netns, gateway and state exist while a run holds them), which took ~20 ms each
    /// and, serialised, most of the start time of 20 concurrent runs.
    plans: Mutex<HashMap<String, (String, gvm_api::LaunchPlan)>>,
    /// Profiles whose agent (a unit, a foreground agent, a `gvmctl run`) holds the netns:
    /// from its prepare ([`prepare_shared`]) to its teardown ([`teardown_unless_shared`]).
    /// Kept under the lifecycle lock with the runs' count, so exactly one of the last
    /// two users removes the netns whichever ends first.
    agent_holds: Mutex<std::collections::HashSet<String>>,
}

impl Runs {
    /// How many runs of `profile` are going on.
    pub fn count(&self, profile: &str) -> usize {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|r| r.profile == profile).count()
    }

    pub fn is_active(&self, id: &str) -> bool {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id)
    }

    pub fn active(&self) -> Vec<RunRecord> {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

/// Removes the run from [`Runs`] when dropped, on every path.
struct Lease<'a> {
    runs: &'a Runs,
    id: String,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.runs.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// `<state>/runs`.
pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// A run id is 12 lower-case hex digits.
pub fn valid_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn new_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// What a run asks for.
#[derive(Debug, Clone)]
pub struct Request {
    pub profile: String,
    pub argv: Vec<String>,
    pub timeout: Option<Duration>,
    pub workspaces: Vec<RunWorkspace>,
    pub env: Vec<(String, String)>,
    pub by_uid: u32,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub code: i32,
    pub timed_out: bool,
    pub summary: RunSummary,
    /// Changes still waiting (the run is kept when there are any).
    pub changes: Vec<Change>,
    /// From the call to the command's exec.
    pub start: Duration,
}

/// What the caller may do while the run goes: forward a signal (SIGKILL ends it).
pub type Control = mpsc::UnboundedReceiver<Signal>;

/// Runs `req` to its end in a fresh instance; `started` learns the launcher's pid.
pub async fn run(
    d: &Arc<Daemon>,
    req: Request,
    stdio: [OwnedFd; 3],
    started: Option<oneshot::Sender<u32>>,
    control: Control,
) -> Result<Outcome, Failure> {
    let clock = Instant::now();
    let profile = super::run_session::in_force(d, &req.profile)?;
    if req.argv.is_empty() {
        return Err(("no command given".into(), Some("gvmctl run --profile P --ephemeral -- CMD ARGS...".into())));
    }
    for w in &req.workspaces {
        if w.mode == WorkspaceMode::Rw {
            return Err((
                format!("workspace {}: an ephemeral run takes overlay or ro workspaces, not rw", w.path),
                Some(format!("--workspace {}:overlay keeps the writes for review", w.path)),
            ));
        }
        let p = Path::new(&w.path);
        if !p.is_absolute() || !p.is_dir() {
            return Err((format!("workspace {} is not an existing directory (absolute path)", w.path), None));
        }
    }
    let id = new_id().map_err(|e| (format!("cannot read /dev/urandom for the run's id: {e}"), None))?;
    let record = RunRecord {
        id: id.clone(),
        profile: req.profile.clone(),
        argv: req.argv.clone(),
        started_at: now(),
        ended_at: None,
        exit_code: None,
        timed_out: false,
        workspaces: Vec::new(),
        state: RunState::Running,
        changes: 0,
        owned_by: Default::default(),
    };
    d.runs.active.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), record.clone());
    let lease = Lease { runs: &d.runs, id: id.clone() };
    let result = run_leased(d, &req, &profile, record, stdio, started, control, clock).await;
    let run_dir = runs_dir(&d.paths.state_dir).join(&id);
    drop(lease);
    release(d, &req.profile).await;
    if result.is_err() {
        // Nothing of a run that did not start is worth keeping.
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(run_dir)).await;
    }
    result
}

/// A run's own workspace as gvmd will mount it and later write into it. A profile's
/// workspace (root chose it) or a read-only one is taken as it is. Another overlay
/// workspace named by a caller other than root must belong to that caller: gvmd applies
/// a run's changes as root, and a member of gvm-admin must not get a file written into
/// `/etc` that way. Returns the path to use and the uid that must still own it when
/// changes are applied (checked again then, on the opened directory).
fn callers_dir(
    path: &str,
    mode: WorkspaceMode,
    by_uid: u32,
    profile_workspaces: &[PlannedWorkspace],
) -> Result<(String, Option<u32>), Failure> {
    use std::os::unix::fs::MetadataExt;
    if by_uid == 0 || mode == WorkspaceMode::Ro || profile_workspaces.iter().any(|p| p.path == path) {
        return Ok((path.to_string(), None));
    }
    let canon = std::fs::canonicalize(path).map_err(|e| (format!("workspace {path}: {e}"), None))?;
    let owner = std::fs::metadata(&canon).map_err(|e| (format!("workspace {path}: {e}"), None))?.uid();
    if owner != by_uid {
        return Err((
            format!(
                "workspace {path} belongs to uid {owner}, not to you (uid {by_uid}): gvmd applies a run's changes as root, so a run's own overlay workspace must be yours"
            ),
            Some(format!("use a directory you own, --workspace {path}:ro, or start the run as root")),
        ));
    }
    Ok((canon.to_string_lossy().into_owned(), Some(by_uid)))
}

/// The run, once counted among P's users (so no teardown removes P's netns meanwhile).
#[allow(clippy::too_many_arguments)]
async fn run_leased(
    d: &Arc<Daemon>,
    req: &Request,
    profile: &Arc<gvm_policy::Profile>,
    mut record: RunRecord,
    [stdin, stdout, stderr]: [OwnedFd; 3],
    started: Option<oneshot::Sender<u32>>,
    mut control: Control,
    clock: Instant,
) -> Result<Outcome, Failure> {
    let id = record.id.clone();
    let waited = clock.elapsed();
    let plan = {
        let _one = d.runs.lifecycle.lock(&req.profile).await;
        let cached = d.runs.plans.lock().unwrap_or_else(|e| e.into_inner()).get(&req.profile).cloned();
        match cached {
            Some((version, plan)) if version == profile.version => plan,
            _ => {
                let plan = super::prepare::prepare(d, &req.profile).await.map_err(|e| (e.to_string(), None))?;
                let mut plans = d.runs.plans.lock().unwrap_or_else(|e| e.into_inner());
                plans.insert(req.profile.clone(), (profile.version.clone(), plan.clone()));
                plan
            }
        }
    };
    let prepared = clock.elapsed();
    // The profile's workspaces (rw ones become overlays: the run writes nothing for
    // good by itself), then the run's own, which may change a profile workspace's mode.
    let mut workspaces: Vec<PlannedWorkspace> = plan
        .workspaces
        .iter()
        .map(|w| PlannedWorkspace {
            mode: if w.mode == WorkspaceMode::Rw { WorkspaceMode::Overlay } else { w.mode },
            ..w.clone()
        })
        .collect();
    for w in &req.workspaces {
        let (path, owner) = callers_dir(&w.path, w.mode, req.by_uid, &plan.workspaces)?;
        workspaces.retain(|p| p.path != path);
        let wid = super::prepare::workspace_id(Path::new(&path));
        if let Some(uid) = owner {
            record.owned_by.insert(wid.clone(), uid);
        }
        workspaces.push(PlannedWorkspace { path, mode: w.mode, id: wid });
    }
    record.workspaces = workspaces.clone();
    let plan = gvm_api::LaunchPlan { workspaces, ..plan };

    let run_dir = runs_dir(&d.paths.state_dir).join(&id);
    let mut spec = super::plan_to_spec::spec_from_plan(
        &plan,
        &req.argv,
        gvm_sandbox::Stdio::Fds { stdin, stdout, stderr },
        true,
        true,
    )
    .map_err(|e| (e, None))?;
    spec.paths.home = run_dir.join("home");
    spec.paths.overlay = run_dir.join("overlay");
    spec.env.extend(req.env.iter().cloned());
    let (paths, (uid, gid)) = (spec.paths.clone(), (spec.uid, spec.gid));
    let overlays: Vec<(String, PathBuf)> = plan
        .workspaces
        .iter()
        .filter(|w| w.mode == WorkspaceMode::Overlay)
        .map(|w| (w.id.clone(), PathBuf::from(&w.path)))
        .collect();
    let (dir, rec) = (run_dir.clone(), record.clone());
    tokio::task::spawn_blocking(move || make_run_dir(&dir, &rec, &paths, uid, gid, &overlays))
        .await
        .map_err(|e| (e.to_string(), None))?
        .map_err(|e| (format!("cannot make the run's directories under {}: {e}", run_dir.display()), None))?;

    let made = clock.elapsed();
    let details = serde_json::json!({
        "run_id": id, "ephemeral": true, "argv": req.argv, "timeout_secs": req.timeout.map(|t| t.as_secs()),
        "workspaces": record.workspaces, "by_uid": req.by_uid, "by_user": crate::sys::creds::user_name(req.by_uid),
    });
    let start_seq = super::run_session::record_run_started(d, &req.profile, details).await?;

    let launched_at = clock.elapsed();
    let (pid, mut done_rx) = super::run_session::spawn_sandbox(spec, format!("gvm-run-{id}")).await?;
    let start = clock.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    tracing::debug!(
        gvm_profile = %req.profile, run_id = %id,
        "run {id} started in {:.1} ms: lease {:.1} ms, prepare {:.1} ms, dirs {:.1} ms, audit {:.1} ms, launch {:.1} ms",
        ms(start), ms(waited), ms(prepared - waited), ms(made - prepared), ms(launched_at.saturating_sub(made)), ms(start - launched_at)
    );
    if let Some(s) = started {
        let _ = s.send(pid.as_raw() as u32);
    }
    let deadline = async {
        match req.timeout {
            Some(t) => tokio::time::sleep(t.saturating_sub(clock.elapsed())).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let (mut timed_out, mut control_open) = (false, true);
    // After a kill, the launcher itself if it has not ended within 2 s.
    let last_resort = tokio::time::sleep(Duration::from_secs(86400 * 365));
    tokio::pin!(last_resort);
    let exit = loop {
        tokio::select! {
            done = &mut done_rx => break done.map_err(|_| ("the run's thread ended without an exit status".to_string(), None))?,
            () = &mut deadline, if !timed_out => {
                timed_out = true;
                tracing::info!(gvm_profile = %req.profile, run_id = %id, "run {id} reached its timeout; killing it");
                kill_instance(pid);
                last_resort.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            () = &mut last_resort => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                last_resort.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(86400 * 365));
            }
            sig = control.recv(), if control_open => match sig {
                Some(Signal::SIGKILL) => {
                    kill_instance(pid);
                    last_resort.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                Some(sig) => { let _ = nix::sys::signal::kill(pid, sig); }
                None => control_open = false,
            },
        }
    };
    let code = match exit {
        Ok(gvm_sandbox::Exit::Code(c)) => c,
        Ok(gvm_sandbox::Exit::Signaled(s)) => 128 + s as i32,
        Err(e) => return Err((format!("waiting for the sandbox failed: {e}"), None)),
    };

    // The instance is gone (pid ns, cgroup); its home goes too, its changes may stay.
    let home = run_dir.join("home");
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(home)).await;
    let mut summary = RunSummary {
        profile: req.profile.clone(),
        duration_ms: clock.elapsed().as_millis() as u64,
        run_id: Some(id.clone()),
        timed_out,
        ..RunSummary::default()
    };
    // The profile's decisions during the run: those of its other instances too (they
    // share one netns, and the gateway knows a request by its netns).
    super::run_session::count_requests(d, start_seq, &mut summary).await;

    let mut changes = Vec::new();
    // Empty upper dirs: nothing to review, no review store to make (the common case of
    // a tool call that only reads).
    let uppers: Vec<PathBuf> = record
        .workspaces
        .iter()
        .filter(|w| w.mode == WorkspaceMode::Overlay)
        .map(|w| run_dir.join("overlay").join(&w.id).join("upper"))
        .collect();
    let wrote = uppers.iter().any(|u| std::fs::read_dir(u).map(|mut e| e.next().is_some()).unwrap_or(true));
    if wrote {
        let files = profile.files.clone();
        let reviewed = crate::review::with_run_review(d, &record, files, |r| {
            let before = r.changes()?.len();
            let report = r.apply(&gvm_review::Selection::Auto, false)?;
            Ok((before, report, r.changes()?))
        })
        .await;
        match reviewed {
            Ok((before, report, left)) => {
                crate::review::record_apply(d, &req.profile, gvm_api::EventKind::FileApply, "auto_apply", &report)
                    .await;
                summary.files_changed = before as u64;
                summary.files_applied = report.applied.len() as u64;
                summary.files_to_review = left.iter().filter(|c| c.class == FileClass::Review).count() as u64;
                changes = left;
            }
            Err(e) => {
                tracing::error!(gvm_profile = %req.profile, run_id = %id, "cannot list run {id}'s changes: {}", e.body.error)
            }
        }
    }
    record.ended_at = Some(now());
    record.exit_code = Some(code);
    record.timed_out = timed_out;
    record.changes = changes.len() as u64;
    record.state = RunState::Kept;
    let (dir, rec, keep) = (run_dir.clone(), record.clone(), !changes.is_empty());
    let _ = tokio::task::spawn_blocking(
        move || {
            if keep {
                write_record(&dir, &rec)
            } else {
                std::fs::remove_dir_all(&dir)
            }
        },
    )
    .await;
    d.record(NewEvent {
        profile: Some(req.profile.clone()),
        kind: gvm_api::EventKind::RunFinished.into(),
        decision: None,
        rule: None,
        details: serde_json::json!({
            "run_id": id, "ephemeral": true, "exit_code": code, "timed_out": timed_out,
            "allowed": summary.allowed, "denied": summary.denied, "held": summary.held,
            "dns_answered": summary.dns_answered, "dns_refused": summary.dns_refused,
            "files_changed": summary.files_changed, "files_applied": summary.files_applied,
            "files_to_review": summary.files_to_review, "kept": keep,
            "duration_ms": summary.duration_ms, "run_started_seq": start_seq,
        }),
    })
    .await;
    Ok(Outcome { id, code, timed_out, summary, changes, start })
}

/// SIGKILLs the instance's init (the launcher's only child; the kernel then kills
/// everything in its pid namespace), so that the launcher reaps init and nothing is
/// left orphaned to the host's pid 1 as a zombie. The launcher itself when it has no
/// child (yet).
fn kill_instance(launcher: nix::unistd::Pid) {
    let children = std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).unwrap_or_default();
    let mut killed = false;
    for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
        killed |= nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL).is_ok();
    }
    if !killed {
        let _ = nix::sys::signal::kill(launcher, Signal::SIGKILL);
    }
}

/// `<run>/` (0700), its home (the agent's, 0700), its overlay dirs and `run.json`.
fn make_run_dir(
    dir: &Path,
    record: &RunRecord,
    paths: &gvm_sandbox::AgentPaths,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
    overlays: &[(String, PathBuf)],
) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent)?;
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let overlays: Vec<(&str, &Path)> = overlays.iter().map(|(i, p)| (i.as_str(), p.as_path())).collect();
    paths.prepare(uid, gid, &overlays).map_err(std::io::Error::other)?;
    write_record(dir, record)
}

fn write_record(dir: &Path, record: &RunRecord) -> std::io::Result<()> {
    let tmp = dir.join("run.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, dir.join("run.json"))
}

/// A kept (or interrupted) run's record, from `<state>/runs/<id>/run.json`.
pub fn read_record(state_dir: &Path, id: &str) -> Option<RunRecord> {
    if !valid_id(id) {
        return None;
    }
    let text = std::fs::read(runs_dir(state_dir).join(id).join("run.json")).ok()?;
    let mut r: RunRecord = serde_json::from_slice(&text).ok()?;
    if r.state == RunState::Running {
        r.state = RunState::Interrupted;
    }
    Some(r)
}

/// At start: the empty cgroup leaves of sandboxes a killed gvmd launched go. The runs a
/// previous gvmd left running died with it (their sandboxes die with whoever launched
/// them). Their homes go; their records say `interrupted`, and
/// their upper dirs stay for review (`gvmctl runs`, `gvmctl discard --run ID`).
pub fn recover(state_dir: &Path) {
    let stale = gvm_sandbox::remove_stale_cgroups();
    if stale > 0 {
        tracing::info!("removed {stale} empty cgroups left by a gvmd that stopped without cleaning up");
    }
    let Ok(entries) = std::fs::read_dir(runs_dir(state_dir)) else { return };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let Some(mut r) = read_record(state_dir, &id) else { continue };
        if r.state != RunState::Interrupted || r.ended_at.is_some() {
            continue;
        }
        let _ = std::fs::remove_dir_all(e.path().join("home"));
        r.ended_at = Some(now());
        if let Err(err) = write_record(&e.path(), &r) {
            tracing::warn!(run_id = %id, "cannot mark run {id} interrupted: {err}");
        } else {
            tracing::info!(gvm_profile = %r.profile, run_id = %id, "run {id} was interrupted by gvmd's stop; its changes stay for review");
        }
    }
}

/// Every run: those going on, then the kept ones; newest first.
pub fn list(d: &Daemon) -> Vec<RunRecord> {
    let mut runs = d.runs.active();
    if let Ok(entries) = std::fs::read_dir(runs_dir(&d.paths.state_dir)) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if d.runs.is_active(&name) {
                continue;
            }
            if let Some(r) = read_record(&d.paths.state_dir, &name) {
                runs.push(r);
            }
        }
    }
    runs.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.id.cmp(&b.id)));
    runs
}

/// Removes a kept run: its upper dirs (every change not applied) and its record.
pub async fn discard(d: &Daemon, id: &str, by: &str) -> Result<RunRecord, crate::api::ApiFailure> {
    use axum::http::StatusCode;
    if d.runs.is_active(id) {
        return Err(crate::api::ApiFailure::new(
            StatusCode::CONFLICT,
            format!("run {id} is still running"),
            Some("wait for it to end (or its --timeout), then discard it"),
        ));
    }
    let Some(record) = read_record(&d.paths.state_dir, id) else {
        return Err(not_found(id));
    };
    let dir = runs_dir(&d.paths.state_dir).join(id);
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir))
        .await
        .map_err(crate::api::ApiFailure::internal)?
        .map_err(crate::api::ApiFailure::internal)?;
    d.record(NewEvent {
        profile: Some(record.profile.clone()),
        kind: gvm_api::EventKind::FileDiscard.into(),
        decision: None,
        rule: None,
        details: serde_json::json!({ "run_id": id, "by": by, "all": true, "changes": record.changes }),
    })
    .await;
    Ok(record)
}

pub fn not_found(id: &str) -> crate::api::ApiFailure {
    crate::api::ApiFailure::new(
        axum::http::StatusCode::NOT_FOUND,
        format!("no run {id:?} is kept"),
        Some("`gvmctl runs` lists the runs kept for review; a run that changed nothing is not kept"),
    )
}

/// After a run: the last user of P's shared parts removes them.
async fn release(d: &Daemon, profile: &str) {
    let _one = d.runs.lifecycle.lock(profile).await;
    if d.runs.count(profile) > 0 {
        return;
    }
    d.runs.plans.lock().unwrap_or_else(|e| e.into_inner()).remove(profile);
    if d.runs.agent_holds.lock().unwrap_or_else(|e| e.into_inner()).contains(profile) {
        return;
    }
    if let Err(e) = super::prepare::teardown(d, profile).await {
        tracing::warn!(gvm_profile = profile, "teardown after the last ephemeral run failed: {e}");
    }
}

/// [`super::prepare::prepare`] under P's lifecycle lock, for the agent's starts (a
/// launcher's `/prepare`, a `gvmctl run`): a run ending at that moment cannot remove the
/// netns the agent is about to join.
pub async fn prepare_shared(d: &Daemon, profile: &str) -> Result<gvm_api::LaunchPlan, super::prepare::PrepareError> {
    let _one = d.runs.lifecycle.lock(profile).await;
    let plan = super::prepare::prepare(d, profile).await?;
    d.runs.agent_holds.lock().unwrap_or_else(|e| e.into_inner()).insert(profile.to_string());
    Ok(plan)
}

/// [`super::prepare::teardown`], unless ephemeral runs of P still go (the last of them
/// removes P's netns). For the ends of P's agent: a unit's `ExecStopPost`, a foreground
/// agent stopping, a `gvmctl run`.
pub async fn teardown_unless_shared(d: &Daemon, profile: &str) -> Result<(), super::prepare::PrepareError> {
    let _one = d.runs.lifecycle.lock(profile).await;
    d.runs.agent_holds.lock().unwrap_or_else(|e| e.into_inner()).remove(profile);
    let n = d.runs.count(profile);
    if n > 0 {
        tracing::info!(gvm_profile = profile, "{profile}'s network namespace stays: {n} ephemeral runs use it");
        return Ok(());
    }
    super::prepare::teardown(d, profile).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller other than root names only overlay workspaces of its own; read-only ones,
    /// the profile's own and root's choices are taken as they are.
    #[test]
    fn a_callers_overlay_workspace_must_be_its_own() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("w");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.to_str().unwrap();
        let me = std::fs::metadata(&dir).unwrap().uid();
        let other = me.wrapping_add(1).max(1);
        let overlay = WorkspaceMode::Overlay;

        let (msg, fix) = callers_dir(path, overlay, other, &[]).unwrap_err();
        assert!(msg.contains(&format!("belongs to uid {me}, not to you (uid {other})")), "{msg}");
        assert!(fix.unwrap().contains(":ro"));
        let canon = std::fs::canonicalize(&dir).unwrap();
        if other != me && me != 0 {
            assert_eq!(callers_dir(path, overlay, me, &[]).unwrap(), (canon.to_str().unwrap().to_string(), Some(me)));
        }
        assert_eq!(callers_dir(path, WorkspaceMode::Ro, other, &[]).unwrap(), (path.to_string(), None));
        assert_eq!(callers_dir(path, overlay, 0, &[]).unwrap(), (path.to_string(), None));
        let profiles = [PlannedWorkspace { path: path.to_string(), mode: overlay, id: "w".into() }];
        assert_eq!(callers_dir(path, overlay, other, &profiles).unwrap(), (path.to_string(), None));
    }
}
