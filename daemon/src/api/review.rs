//! `/v1/agents/{profile}/changes|diff|apply|discard|rollback|checkpoint|checkpoints|applied`:
//! the agent's file changes, reviewed and moved by a human. Thin: the work is
//! [`crate::review`]'s; each handler names who asked in the audit event.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use gvm_api::review::{
    AppliedRecord, ApplyReport, ApplyRequest, ChangesResponse, Checkpoint, CheckpointRequest, DiffQuery, DiffResponse,
    RollbackReport, RollbackRequest,
};
use gvm_review::{PathSel, Selection};

use super::ApiFailure;
use crate::review::{record_apply, record_rollback, sync_queue, with_review, Touch};
use crate::state::Daemon;
use crate::sys::creds::{user_name, Peer};

pub async fn changes(
    State(d): State<Arc<Daemon>>,
    Path(profile): Path<String>,
) -> Result<Json<ChangesResponse>, ApiFailure> {
    let changes = with_review(&d, &profile, Touch::Reads, |r| r.changes()).await?;
    sync_queue(&d, &profile, &changes).await;
    Ok(Json(ChangesResponse { profile, changes }))
}

pub async fn diff(
    State(d): State<Arc<Daemon>>,
    Path(profile): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<DiffResponse>, ApiFailure> {
    let diff = with_review(&d, &profile, Touch::Reads, move |r| r.diff(q.path.as_deref())).await?;
    Ok(Json(DiffResponse { diff }))
}

pub async fn apply(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(profile): Path<String>,
    Json(req): Json<ApplyRequest>,
) -> Result<Json<ApplyReport>, ApiFailure> {
    let sel = selection(&req)?;
    let dry_run = req.dry_run;
    let touch = if dry_run { Touch::Reads } else { Touch::Writes };
    let (report, left) = with_review(&d, &profile, touch, move |r| {
        let report = r.apply(&sel, dry_run)?;
        Ok((report, r.changes()?))
    })
    .await?;
    record_apply(&d, &profile, gvm_api::EventKind::FileApply, &user_name(peer.uid), &report).await;
    sync_queue(&d, &profile, &left).await;
    Ok(Json(report))
}

pub async fn discard(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(profile): Path<String>,
    Json(req): Json<ApplyRequest>,
) -> Result<Json<ApplyReport>, ApiFailure> {
    if req.paths.is_empty() {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "name the paths to discard",
            Some(&format!("gvmctl discard {profile} PATH...; to drop every change: gvmctl rollback {profile}")),
        ));
    }
    let paths = path_sels(&req);
    let (discarded, left) = with_review(&d, &profile, Touch::Writes, move |r| {
        let discarded = r.discard(&paths)?;
        Ok((discarded, r.changes()?))
    })
    .await?;
    let report = ApplyReport { id: None, dry_run: false, applied: discarded, refused: Vec::new() };
    record_apply(&d, &profile, gvm_api::EventKind::FileDiscard, &user_name(peer.uid), &report).await;
    sync_queue(&d, &profile, &left).await;
    Ok(Json(report))
}

pub async fn rollback(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(profile): Path<String>,
    Json(req): Json<RollbackRequest>,
) -> Result<Json<RollbackReport>, ApiFailure> {
    let (report, what, left) = match (req.applied, req.to) {
        (Some(_), Some(_)) => {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "--applied and --to undo different things; give one",
                Some("--applied ID restores the real files an apply changed; --to CHECKPOINT resets the agent's unapplied changes"),
            ))
        }
        (Some(id), None) => {
            let force = req.force;
            let what = serde_json::json!({ "applied": id });
            let (r, left) = with_review(&d, &profile, Touch::Writes, move |r| {
                let report = r.rollback_applied(&id, force)?;
                Ok((report, r.changes()?))
            })
            .await?;
            (r, what, left)
        }
        (None, to) => {
            let what = serde_json::json!({ "checkpoint": to });
            let (r, left) = with_review(&d, &profile, Touch::Writes, move |r| {
                let report = r.rollback_to(to.as_deref())?;
                Ok((report, r.changes()?))
            })
            .await?;
            (r, what, left)
        }
    };
    record_rollback(&d, &profile, &user_name(peer.uid), what, &report).await;
    sync_queue(&d, &profile, &left).await;
    Ok(Json(report))
}

pub async fn checkpoint(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(profile): Path<String>,
    Json(req): Json<CheckpointRequest>,
) -> Result<Json<Checkpoint>, ApiFailure> {
    let cp = with_review(&d, &profile, Touch::Writes, move |r| r.checkpoint(req.name.as_deref())).await?;
    d.record(gvm_audit::NewEvent {
        profile: Some(profile.clone()),
        kind: gvm_api::EventKind::FileCheckpoint.into(),
        decision: None,
        rule: None,
        details: serde_json::json!({
            "by": user_name(peer.uid), "id": cp.id, "name": cp.name, "files": cp.files, "bytes": cp.bytes,
        }),
    })
    .await;
    Ok(Json(cp))
}

pub async fn checkpoints(
    State(d): State<Arc<Daemon>>,
    Path(profile): Path<String>,
) -> Result<Json<Vec<Checkpoint>>, ApiFailure> {
    with_review(&d, &profile, Touch::Reads, |r| r.checkpoints()).await.map(Json)
}

pub async fn applied(
    State(d): State<Arc<Daemon>>,
    Path(profile): Path<String>,
) -> Result<Json<Vec<AppliedRecord>>, ApiFailure> {
    with_review(&d, &profile, Touch::Reads, |r| r.applied()).await.map(Json)
}

pub(super) fn path_sels(req: &ApplyRequest) -> Vec<PathSel> {
    req.paths.iter().map(|p| PathSel { path: p.path.clone(), expected_hash: p.hash.clone() }).collect()
}

pub(super) fn selection(req: &ApplyRequest) -> Result<Selection, ApiFailure> {
    match (req.all, req.paths.is_empty()) {
        (true, false) => Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "give either paths or --all, not both",
            Some("--all applies every change marked review or auto_apply"),
        )),
        (true, true) => Ok(Selection::All),
        (false, false) => Ok(Selection::Paths(path_sels(req))),
        (false, true) => Ok(Selection::Auto),
    }
}
