//! `/v1/runs`: ephemeral runs for programs (one fresh sandbox per tool call), and the
//! review of what a kept run changed. The contract is in `docs/api.md`; the work is
//! [`crate::supervisor::ephemeral`]'s.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use gvm_api::review::{
    AppliedRecord, ApplyReport, ApplyRequest, ChangesResponse, DiffQuery, DiffResponse, RollbackReport, RollbackRequest,
};
use gvm_api::runs::{CreateRun, RunRecord, RunResult, RunsResponse, DEFAULT_API_TIMEOUT_SECS, MAX_OUTPUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ApiFailure;
use crate::review::{record_apply, record_rollback, with_run_review};
use crate::state::Daemon;
use crate::supervisor::ephemeral;
use crate::sys::creds::{user_name, Peer};

/// `POST /v1/runs`: runs the command to its end (or its timeout) and answers with its
/// exit, bounded output and changes. The run goes on in a task of its own: a client
/// that hangs up does not leave it half torn down (its timeout still ends it).
pub async fn create(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    body: axum::body::Bytes,
) -> Result<Json<RunResult>, ApiFailure> {
    let clock = Instant::now();
    let req: CreateRun = serde_json::from_slice(&body).map_err(|e| {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not a run request: {e}"),
            Some(r#"send {"profile": "P", "argv": ["sh", "-c", "echo hi"], "timeout_secs": 60} (docs/api.md)"#),
        )
    })?;
    if req.timeout_secs == Some(0) {
        return Err(ApiFailure::new(StatusCode::BAD_REQUEST, "timeout_secs must be at least 1", None));
    }
    if let Some((name, _)) = req.env.iter().find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0')) {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!("env: {name:?} is not a variable name (or its value holds a NUL byte)"),
            Some(r#"give pairs like ["LANG", "C.UTF-8"]"#),
        ));
    }
    let io = |what: &str, e: std::io::Error| ApiFailure::internal(format!("cannot make the run's {what}: {e}"));
    let (out_r, out_w) = pipe().map_err(|e| io("stdout pipe", e))?;
    let (err_r, err_w) = pipe().map_err(|e| io("stderr pipe", e))?;
    let (in_r, in_w) = pipe().map_err(|e| io("stdin pipe", e))?;
    let stdin_text = req.stdin.clone().unwrap_or_default();
    let feeder = tokio::spawn(async move {
        if let Ok(mut w) = tokio::net::unix::pipe::Sender::from_owned_fd(in_w) {
            let _ = w.write_all(stdin_text.as_bytes()).await;
        }
    });
    let stdout = tokio::spawn(read_bounded(out_r));
    let stderr = tokio::spawn(read_bounded(err_r));
    let request = ephemeral::Request {
        profile: req.profile.clone(),
        argv: req.argv.clone(),
        timeout: Some(Duration::from_secs(req.timeout_secs.unwrap_or(DEFAULT_API_TIMEOUT_SECS))),
        workspaces: req.workspaces.clone(),
        env: req.env.clone(),
        by_uid: peer.uid,
    };
    let d2 = d.clone();
    let run = tokio::spawn(async move {
        let (_control, rx) = tokio::sync::mpsc::unbounded_channel();
        ephemeral::run(&d2, request, [in_r, out_w, err_w], None, rx).await
    });
    let outcome = run.await.map_err(ApiFailure::internal)?;
    feeder.abort();
    let outcome = outcome.map_err(|(error, hint)| {
        let status = if error.starts_with("no profile") {
            StatusCode::NOT_FOUND
        } else if error.contains("workspace") || error.contains("no command") {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiFailure::new(status, error, hint.as_deref())
    })?;
    let (stdout, stdout_truncated) = stdout.await.unwrap_or_default();
    let (stderr, stderr_truncated) = stderr.await.unwrap_or_default();
    Ok(Json(RunResult {
        run_id: outcome.id,
        profile: req.profile,
        exit_code: outcome.code,
        timed_out: outcome.timed_out,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        start_ms: outcome.start.as_millis() as u64,
        total_ms: clock.elapsed().as_millis() as u64,
        summary: outcome.summary,
        kept: !outcome.changes.is_empty(),
        changes: outcome.changes,
    }))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Reads a pipe to its end; keeps the first [`MAX_OUTPUT`] bytes (the rest is drained
/// so the command never blocks on a full pipe).
async fn read_bounded(fd: OwnedFd) -> (String, bool) {
    let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return (String::new(), false);
    };
    let (mut kept, mut truncated, mut buf) = (Vec::new(), false, vec![0u8; 64 * 1024]);
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

/// `GET /v1/runs`: the runs going on and the kept ones, newest first.
pub async fn list(State(d): State<Arc<Daemon>>) -> Result<Json<RunsResponse>, ApiFailure> {
    let d2 = d.clone();
    let runs = tokio::task::spawn_blocking(move || ephemeral::list(&d2)).await.map_err(ApiFailure::internal)?;
    Ok(Json(RunsResponse { runs }))
}

fn record(d: &Daemon, id: &str) -> Result<RunRecord, ApiFailure> {
    if let Some(r) = d.runs.active().into_iter().find(|r| r.id == id) {
        return Ok(r);
    }
    ephemeral::read_record(&d.paths.state_dir, id).ok_or_else(|| ephemeral::not_found(id))
}

/// The `[files]` classes of the run's profile (as in force now).
fn files_of(d: &Daemon, run: &RunRecord) -> Result<gvm_policy::Files, ApiFailure> {
    d.profiles().profiles.get(&run.profile).map(|p| p.profile.files.clone()).ok_or_else(|| {
        ApiFailure::new(
            StatusCode::CONFLICT,
            format!("run {} belongs to profile {}, which is no longer in force", run.id, run.profile),
            Some(&format!(
                "put /etc/gvm/profiles/{}.toml back and `gvmctl reload`, or `gvmctl discard --run {}`",
                run.profile, run.id
            )),
        )
    })
}

fn not_while_running(d: &Daemon, id: &str) -> Result<(), ApiFailure> {
    if d.runs.is_active(id) {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            format!("run {id} is still running"),
            Some("its changes can be applied or discarded once it ended"),
        ));
    }
    Ok(())
}

/// `GET /v1/runs/{id}`.
pub async fn get_one(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Result<Json<RunRecord>, ApiFailure> {
    record(&d, &id).map(Json)
}

/// `GET /v1/runs/{id}/changes`.
pub async fn changes(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Json<ChangesResponse>, ApiFailure> {
    let run = record(&d, &id)?;
    let changes = with_run_review(&d, &run, files_of(&d, &run)?, |r| r.changes()).await?;
    Ok(Json(ChangesResponse { profile: run.profile, changes }))
}

/// `GET /v1/runs/{id}/diff`.
pub async fn diff(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<DiffResponse>, ApiFailure> {
    let run = record(&d, &id)?;
    let diff = with_run_review(&d, &run, files_of(&d, &run)?, move |r| r.diff(q.path.as_deref())).await?;
    Ok(Json(DiffResponse { diff }))
}

/// `POST /v1/runs/{id}/apply`: as `/v1/agents/{profile}/apply`, from the run's overlays.
pub async fn apply(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(id): Path<String>,
    Json(req): Json<ApplyRequest>,
) -> Result<Json<ApplyReport>, ApiFailure> {
    not_while_running(&d, &id)?;
    let run = record(&d, &id)?;
    let sel = super::review::selection(&req)?;
    let dry_run = req.dry_run;
    let report = with_run_review(&d, &run, files_of(&d, &run)?, move |r| r.apply(&sel, dry_run)).await?;
    record_apply(
        &d,
        &run.profile,
        gvm_api::EventKind::FileApply,
        &format!("{} (run {id})", user_name(peer.uid)),
        &report,
    )
    .await;
    Ok(Json(report))
}

/// `POST /v1/runs/{id}/discard`: the named paths, or (no paths) the whole run: its upper
/// dirs and its record are removed.
pub async fn discard(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(id): Path<String>,
    Json(req): Json<ApplyRequest>,
) -> Result<Json<ApplyReport>, ApiFailure> {
    not_while_running(&d, &id)?;
    let run = record(&d, &id)?;
    let by = user_name(peer.uid);
    if req.paths.is_empty() {
        let files = files_of(&d, &run).unwrap_or_default();
        let dropped = with_run_review(&d, &run, files, |r| r.changes()).await.unwrap_or_default();
        ephemeral::discard(&d, &id, &by).await?;
        return Ok(Json(ApplyReport { id: None, dry_run: false, applied: dropped, refused: Vec::new() }));
    }
    let paths = super::review::path_sels(&req);
    let discarded = with_run_review(&d, &run, files_of(&d, &run)?, move |r| r.discard(&paths)).await?;
    let report = ApplyReport { id: None, dry_run: false, applied: discarded, refused: Vec::new() };
    record_apply(&d, &run.profile, gvm_api::EventKind::FileDiscard, &format!("{by} (run {id})"), &report).await;
    Ok(Json(report))
}

/// `GET /v1/runs/{id}/applied`: what was applied from the run, newest first.
pub async fn applied(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<AppliedRecord>>, ApiFailure> {
    let run = record(&d, &id)?;
    with_run_review(&d, &run, files_of(&d, &run)?, |r| r.applied()).await.map(Json)
}

/// `POST /v1/runs/{id}/rollback` with `applied`: the real files an apply from the run
/// changed, restored byte for byte (checkpoints belong to a profile's agent).
pub async fn rollback(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(id): Path<String>,
    Json(req): Json<RollbackRequest>,
) -> Result<Json<RollbackReport>, ApiFailure> {
    let (Some(apply_id), None) = (req.applied.clone(), req.to.as_ref()) else {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "a run's rollback undoes one of its applies: give --applied ID",
            Some(&format!(
                "`gvmctl applied --run {id}` lists them; `gvmctl discard --run {id}` drops what was not applied"
            )),
        ));
    };
    let run = record(&d, &id)?;
    let force = req.force;
    let report = with_run_review(&d, &run, files_of(&d, &run)?, move |r| r.rollback_applied(&apply_id, force)).await?;
    let what = serde_json::json!({ "applied": req.applied, "run_id": id });
    record_rollback(&d, &run.profile, &user_name(peer.uid), what, &report).await;
    Ok(Json(report))
}
