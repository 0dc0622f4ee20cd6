//! The agent's file changes, from gvmd's side: which overlay upper dirs belong to a
//! profile, holding the agent still while its changes move, auditing every apply,
//! discard, checkpoint and rollback, and keeping the approvals queue in step with what
//! waits for review. The file work itself is `gvm_review`'s.
//!
//! One operation at a time per profile (a lock per state dir and profile), in a blocking
//! task. Operations that change the upper dirs or the real workspace freeze the agent
//! first (see [`crate::sys::freeze`]) and thaw it afterwards, on every path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use axum::http::StatusCode;
use gvm_api::review::{ApplyReport, Change, FileClass, RollbackReport};
use gvm_review::{PathSel, Review, Selection, Workspace};

use crate::api::ApiFailure;
use crate::state::Daemon;

/// One lock per (state dir, profile): two applies of one profile never interleave.
static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = LazyLock::new(Mutex::default);

fn lock_for(d: &Daemon, profile: &str) -> Arc<Mutex<()>> {
    let key = d.paths.state_dir.join("agents").join(profile);
    LOCKS.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone()
}

/// Where profile P's review store lives.
pub fn store_dir(state_dir: &Path, profile: &str) -> PathBuf {
    state_dir.join("agents").join(profile).join("review")
}

/// The overlay workspaces of a profile: real dir and upper dir.
pub fn workspaces(state_dir: &Path, profile: &gvm_policy::Profile) -> Vec<Workspace> {
    profile
        .agent
        .workspaces
        .iter()
        .filter(|w| w.mode == gvm_policy::WorkspaceMode::Overlay)
        .map(|w| {
            let id = crate::supervisor::prepare::workspace_id(&w.path);
            let upper = state_dir.join("agents").join(profile.name.as_str()).join("overlay").join(&id).join("upper");
            Workspace { id, real: w.path.clone(), upper, owner: None }
        })
        .collect()
}

/// Whether a step changes files (and so needs the agent held still).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    Reads,
    Writes,
}

/// Runs `f` on profile P's review store in a blocking task, under P's lock, with the
/// agent frozen when `touch` is [`Touch::Writes`]. Opening the store finishes or undoes
/// an apply a crash interrupted, so it freezes too.
pub async fn with_review<T: Send + 'static>(
    d: &Daemon,
    profile: &str,
    touch: Touch,
    f: impl FnOnce(&Review) -> Result<T, gvm_review::Error> + Send + 'static,
) -> Result<T, ApiFailure> {
    let set = d.profiles();
    let Some(entry) = set.profiles.get(profile) else {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("no profile named {profile:?} is in force"),
            Some("`gvmctl status` lists the profiles in force"),
        ));
    };
    let p = entry.profile.clone();
    let ws = workspaces(&d.paths.state_dir, &p);
    if ws.is_empty() {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            format!("profile {profile} has no overlay workspace, so nothing of its agent waits for review"),
            Some("give its [agent] `workspaces = [{ path = \"/srv/work\", mode = \"overlay\" }]`"),
        ));
    }
    let root = store_dir(&d.paths.state_dir, profile);
    // An apply a crash interrupted is finished or undone on open: that writes.
    let touch = if root.join(gvm_review::JOURNAL).exists() { Touch::Writes } else { touch };
    let lock = lock_for(d, profile);
    let uid = agent_uid(profile);
    let name = profile.to_string();
    tokio::task::spawn_blocking(move || {
        let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
        let frozen = match (touch, uid) {
            (Touch::Writes, Some(uid)) => Some(crate::sys::freeze::freeze_uid(uid).map_err(|e| {
                ApiFailure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("could not hold agent {name} still while its files change: {e}"),
                    Some(&format!("try again, or stop it first: gvmctl stop {name}")),
                )
            })?),
            _ => None,
        };
        if let Some(f) = frozen.as_ref().filter(|f| f.held() > 0) {
            tracing::info!(gvm_profile = %name, "agent {name} held still while its files change: {}", f.describe());
        }
        let mut review = Review::open(&root, ws, &p.files).map_err(|e| failure(e, &name))?;
        // A process of the agent's user means a mount namespace with the overlays in it:
        // applied entries must then stay in the upper dirs (see ARCHITECTURE.md).
        let live = uid.is_some_and(crate::sys::freeze::has_processes);
        review.set_overlays_mounted(live);
        if !live && touch == Touch::Writes {
            review.prune().map_err(|e| failure(e, &name))?;
        }
        f(&review).map_err(|e| failure(e, &name))
    })
    .await
    .map_err(ApiFailure::internal)?
}

/// Runs `f` on an ephemeral run's review store (`<state>/runs/<id>/review`) over the
/// run's upper dirs, under the run's lock, with the profile's `[files]` classes. No
/// freeze: the callers refuse to change a run's files while it runs, and its overlays
/// are mounted only in its own mount namespace, gone when it ended.
pub async fn with_run_review<T: Send + 'static>(
    d: &Daemon,
    run: &gvm_api::runs::RunRecord,
    files: gvm_policy::Files,
    f: impl FnOnce(&Review) -> Result<T, gvm_review::Error> + Send + 'static,
) -> Result<T, ApiFailure> {
    let dir = crate::supervisor::ephemeral::runs_dir(&d.paths.state_dir).join(&run.id);
    let ws: Vec<Workspace> = run
        .workspaces
        .iter()
        .filter(|w| w.mode == gvm_api::WorkspaceMode::Overlay)
        .map(|w| Workspace {
            id: w.id.clone(),
            real: PathBuf::from(&w.path),
            upper: dir.join("overlay").join(&w.id).join("upper"),
            owner: run.owned_by.get(&w.id).copied(),
        })
        .collect();
    let lock = LOCKS.lock().unwrap_or_else(|e| e.into_inner()).entry(dir.clone()).or_default().clone();
    let live = d.runs.is_active(&run.id);
    let name = format!("--run {}", run.id);
    tokio::task::spawn_blocking(move || {
        let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut review = Review::open(&dir.join("review"), ws, &files).map_err(|e| failure(e, &name))?;
        review.set_overlays_mounted(live);
        f(&review).map_err(|e| failure(e, &name))
    })
    .await
    .map_err(ApiFailure::internal)?
}

fn agent_uid(profile: &str) -> Option<u32> {
    nix::unistd::User::from_name(&format!("gvm-{profile}")).ok().flatten().map(|u| u.uid.as_raw())
}

/// A review error as an API answer: what the user asked for that cannot be (404/409),
/// or gvmd's own failure (500).
pub fn failure(e: gvm_review::Error, profile: &str) -> ApiFailure {
    use gvm_review::Error as E;
    let (status, hint) = match &e {
        E::NoChange(_) | E::Ambiguous { .. } | E::Changed { .. } => {
            (StatusCode::CONFLICT, format!("`gvmctl changes {profile}` lists what waits"))
        }
        E::UnknownApply(_) | E::AlreadyRolledBack { .. } => {
            (StatusCode::NOT_FOUND, format!("`gvmctl applied {profile}` lists the applies"))
        }
        E::UnknownCheckpoint(_) => (StatusCode::NOT_FOUND, format!("`gvmctl checkpoints {profile}` lists them")),
        E::Mounted => {
            (StatusCode::CONFLICT, format!("gvmctl stop {profile}, then run this again (and gvmctl start {profile})"))
        }
        e if e.is_user_error() => (StatusCode::CONFLICT, String::new()),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "see `journalctl -u gvmd` for details".to_string()),
    };
    ApiFailure::new(status, chain(&e), (!hint.is_empty()).then_some(hint.as_str()))
}

/// An error with its causes: `cannot store the pre-image of x: No space left on device`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Paths and hashes of an apply, for its audit event.
fn entries_json(changes: &[Change]) -> serde_json::Value {
    changes
        .iter()
        .map(|c| {
            serde_json::json!({
                "workspace": c.workspace,
                "path": c.path,
                "kind": c.kind,
                "before": c.before_hash,
                "after": c.hash,
            })
        })
        .collect()
}

/// Records an apply (or a discard) with every path and content hash.
pub async fn record_apply(d: &Daemon, profile: &str, kind: gvm_api::EventKind, by: &str, report: &ApplyReport) {
    if report.dry_run || (report.applied.is_empty() && report.refused.is_empty()) {
        return;
    }
    d.record(gvm_audit::NewEvent {
        profile: Some(profile.to_string()),
        kind: kind.into(),
        decision: None,
        rule: None,
        details: serde_json::json!({
            "apply_id": report.id,
            "by": by,
            "applied": entries_json(&report.applied),
            "refused": report.refused,
        }),
    })
    .await;
}

/// Records a rollback (of an apply, or of the upper dirs to a checkpoint).
pub async fn record_rollback(d: &Daemon, profile: &str, by: &str, what: serde_json::Value, r: &RollbackReport) {
    d.record(gvm_audit::NewEvent {
        profile: Some(profile.to_string()),
        kind: gvm_api::EventKind::FileRollback.into(),
        decision: None,
        rule: None,
        details: serde_json::json!({
            "by": by,
            "of": what,
            "restored": r.restored,
            "removed": r.removed,
            "refused": r.refused,
        }),
    })
    .await;
}

/// Applies P's `auto_apply` files (new files only) when a run or an agent ends.
/// Returns how many were applied and how many changes still wait for review.
pub async fn auto_apply(d: &Daemon, profile: &str) -> Option<(usize, usize)> {
    let has_overlay = d
        .profiles()
        .profiles
        .get(profile)
        .is_some_and(|e| e.profile.agent.workspaces.iter().any(|w| w.mode == gvm_policy::WorkspaceMode::Overlay));
    if !has_overlay {
        return None;
    }
    let result = with_review(d, profile, Touch::Writes, |r| {
        let report = r.apply(&Selection::Auto, false)?;
        let left = r.changes()?;
        Ok((report, left))
    })
    .await;
    match result {
        Ok((report, left)) => {
            record_apply(d, profile, gvm_api::EventKind::FileApply, "auto_apply", &report).await;
            let waiting = left.iter().filter(|c| c.class == FileClass::Review).count();
            sync_queue(d, profile, &left).await;
            Some((report.applied.len(), waiting))
        }
        Err(e) => {
            tracing::error!(gvm_profile = profile, "auto-apply of {profile}'s new files failed: {}", e.body.error);
            None
        }
    }
}

/// Brings the approvals queue in line with what of P waits for review; announces new items.
pub async fn sync_queue(d: &Daemon, profile: &str, changes: &[Change]) {
    let items: Vec<crate::approvals::FileItem> = changes
        .iter()
        .filter(|c| c.class == FileClass::Review)
        .map(|c| crate::approvals::FileItem {
            workspace: c.workspace.clone(),
            path: c.path.clone(),
            change: c.kind.as_str().to_string(),
            hash: c.hash.clone(),
            diff_size: c.size,
        })
        .collect();
    let (approvals, name) = (d.approvals.clone(), profile.to_string());
    match tokio::task::spawn_blocking(move || approvals.sync_files(&name, &items)).await {
        Ok(Ok(_announced)) => {}
        Ok(Err(e)) => tracing::error!(gvm_profile = profile, "cannot queue {profile}'s changes for approval: {e}"),
        Err(e) => tracing::error!(gvm_profile = profile, "cannot queue {profile}'s changes for approval: {e}"),
    }
}

/// Answers a file item of the approvals queue: approve applies exactly the reviewed
/// version (its hash), deny discards it from the overlay.
pub async fn answer_file(
    d: &Daemon,
    approval: &gvm_api::Approval,
    approve: bool,
    always: bool,
    by: &str,
) -> Result<String, ApiFailure> {
    if always {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "--always applies to held requests, not to file changes",
            Some("for files, add a glob to the profile's [files] auto_apply, review or discard"),
        ));
    }
    let (Some(workspace), Some(path)) = (approval.workspace.clone(), approval.path.clone()) else {
        return Err(ApiFailure::internal(format!("approval {} names no file", approval.id)));
    };
    let abs = Path::new(&workspace).join(&path).to_string_lossy().into_owned();
    let sel = PathSel { path: abs, expected_hash: approval.hash.clone() };
    let profile = approval.profile.clone();
    if approve {
        let report =
            with_review(d, &profile, Touch::Writes, move |r| r.apply(&Selection::Paths(vec![sel]), false)).await?;
        record_apply(d, &profile, gvm_api::EventKind::FileApply, by, &report).await;
        if let Some(refusal) = report.refused.first() {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                format!("{} was not applied: {}", refusal.path, refusal.reason),
                Some(&format!("see `gvmctl changes {profile}` and `gvmctl diff {profile} {path}`")),
            ));
        }
        Ok(format!("applied {path} to {workspace}"))
    } else {
        let discarded = with_review(d, &profile, Touch::Writes, move |r| r.discard(&[sel])).await?;
        let report = ApplyReport { id: None, dry_run: false, applied: discarded, refused: Vec::new() };
        record_apply(d, &profile, gvm_api::EventKind::FileDiscard, by, &report).await;
        Ok(format!("discarded the agent's change to {path}"))
    }
}

/// How often gvmd looks for new changes waiting for review (to announce them).
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Every [`WATCH_EVERY`]: the changes of each profile with an overlay workspace go into
/// the approvals queue, so a file waiting for review reaches the human while the agent
/// runs, not only when it ends.
pub async fn watch(d: Arc<Daemon>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let set = d.profiles();
        for (name, entry) in &set.profiles {
            if !entry.profile.agent.workspaces.iter().any(|w| w.mode == gvm_policy::WorkspaceMode::Overlay) {
                continue;
            }
            if !store_dir(&d.paths.state_dir, name).parent().is_some_and(|a| a.join("overlay").exists()) {
                continue; // never prepared: nothing written
            }
            match with_review(&d, name, Touch::Reads, |r| r.changes()).await {
                Ok(changes) => sync_queue(&d, name, &changes).await,
                Err(e) => tracing::warn!(gvm_profile = %name, "cannot list {name}'s changes: {}", e.body.error),
            }
        }
    }
}
