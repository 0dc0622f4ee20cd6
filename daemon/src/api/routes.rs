//! The `/v1/` routes. Handlers are thin: they read the daemon's state or ask the audit
//! store, and translate errors into [`ApiFailure`]s that say what to do.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use gvm_api::{
    approval_paths, paths, AnswerRequest, AnswerResponse, ApprovalsResponse, EventsQuery, EventsResponse,
    ReloadResponse, StatusResponse, VerifyReport,
};

use super::ApiFailure;
use crate::state::Daemon;
use crate::sys::creds::{user_name, Peer};

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route(paths::STATUS, get(status))
        .route(paths::AUDIT_EVENTS, get(audit_events))
        .route(paths::AUDIT_VERIFY, post(audit_verify))
        .route(paths::RELOAD, post(reload))
        .route(approval_paths::APPROVALS, get(approvals))
        .route(paths::POLICY_EXPLAIN, post(super::explain::explain))
        .route("/v1/policy/{profile}/history", get(super::versions::history))
        .route("/v1/policy/{profile}/diff", get(super::versions::diff))
        .route("/v1/policy/{profile}/rollback", post(super::versions::rollback))
        .route(gvm_api::versions::paths::RELOAD_DRY_RUN, post(super::versions::dry_run))
        .route("/v1/audit/events/{seq}/explain", get(super::versions::explain_event))
        .route("/v1/agents/{profile}/prepare", post(prepare))
        .route("/v1/agents/{profile}/teardown", post(teardown))
        .route("/v1/agents/{profile}/watch", post(watch))
        .route("/v1/agents/{profile}/changes", get(super::review::changes))
        .route("/v1/agents/{profile}/diff", get(super::review::diff))
        .route("/v1/agents/{profile}/apply", post(super::review::apply))
        .route("/v1/agents/{profile}/discard", post(super::review::discard))
        .route("/v1/agents/{profile}/rollback", post(super::review::rollback))
        .route("/v1/agents/{profile}/checkpoint", post(super::review::checkpoint))
        .route("/v1/agents/{profile}/checkpoints", get(super::review::checkpoints))
        .route("/v1/agents/{profile}/applied", get(super::review::applied))
        .route("/v1/agents/{profile}/suggest", get(super::suggest::dry_run).post(super::suggest::apply))
        .route("/v1/agents/{profile}/{action}", post(agent_action))
        .route("/v1/approvals/{id}/{answer}", post(answer))
        .route(gvm_api::runs::paths::RUNS, get(super::runs::list).post(super::runs::create))
        .route("/v1/runs/{id}", get(super::runs::get_one))
        .route("/v1/runs/{id}/changes", get(super::runs::changes))
        .route("/v1/runs/{id}/diff", get(super::runs::diff))
        .route("/v1/runs/{id}/apply", post(super::runs::apply))
        .route("/v1/runs/{id}/discard", post(super::runs::discard))
        .route("/v1/runs/{id}/applied", get(super::runs::applied))
        .route("/v1/runs/{id}/rollback", post(super::runs::rollback))
        .fallback(not_found)
        .with_state(daemon)
}

async fn status(State(d): State<Arc<Daemon>>) -> Result<Json<StatusResponse>, ApiFailure> {
    d.status().await.map(Json).map_err(ApiFailure::internal)
}

async fn audit_events(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventsResponse>, ApiFailure> {
    if let Some(since) = &q.since {
        if time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339).is_err() {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!("`since` is not an RFC 3339 time: {since:?}"),
                Some("write it like 2026-11-23T10:00:00Z"),
            ));
        }
    }
    let audit = d.audit.clone();
    let events = tokio::task::spawn_blocking(move || audit.events(&q))
        .await
        .map_err(ApiFailure::internal)?
        .map_err(ApiFailure::internal)?;
    Ok(Json(EventsResponse { events }))
}

async fn audit_verify(State(d): State<Arc<Daemon>>) -> Result<Json<VerifyReport>, ApiFailure> {
    let audit = d.audit.clone();
    tokio::task::spawn_blocking(move || audit.verify()).await.map(Json).map_err(ApiFailure::internal)
}

async fn reload(State(d): State<Arc<Daemon>>, axum::Extension(peer): axum::Extension<Peer>) -> Json<ReloadResponse> {
    Json(d.reload_as(gvm_api::versions::Origin::Reload, Some(user_name(peer.uid))).await)
}

async fn approvals(State(d): State<Arc<Daemon>>) -> Result<Json<ApprovalsResponse>, ApiFailure> {
    let a = d.approvals.clone();
    let approvals = tokio::task::spawn_blocking(move || a.store.pending())
        .await
        .map_err(ApiFailure::internal)?
        .map_err(ApiFailure::internal)?;
    Ok(Json(ApprovalsResponse { approvals }))
}

fn store_failure(e: crate::approvals::StoreError) -> ApiFailure {
    use crate::approvals::StoreError;
    match e {
        StoreError::NotFound { .. } => ApiFailure::new(StatusCode::NOT_FOUND, e.to_string(), None),
        StoreError::Ended { .. } => ApiFailure::new(StatusCode::CONFLICT, e.to_string(), None),
        other => ApiFailure::internal(other),
    }
}

/// Approves or denies an item of the queue (`{"always": true}` also writes a rule),
/// and records who did.
async fn answer(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path((id, answer)): Path<(u64, String)>,
    body: axum::body::Bytes,
) -> Result<Json<AnswerResponse>, ApiFailure> {
    let approve = match answer.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(ApiFailure::new(
                StatusCode::NOT_FOUND,
                format!("an approval can be answered with approve or deny, not {other:?}"),
                None,
            ))
        }
    };
    let req: AnswerRequest = if body.iter().all(u8::is_ascii_whitespace) {
        AnswerRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not an answer: {e}"),
                Some(r#"send {"always": false}"#),
            )
        })?
    };
    let by = user_name(peer.uid);
    let store = d.approvals.clone();
    let item = tokio::task::spawn_blocking(move || store.store.get(id))
        .await
        .map_err(ApiFailure::internal)?
        .map_err(store_failure)?
        .ok_or_else(|| {
            ApiFailure::new(
                StatusCode::NOT_FOUND,
                format!("no approval has id {id}"),
                Some("`gvmctl approvals` lists what waits, with each item's id"),
            )
        })?;
    if item.state != "pending" {
        return Err(store_failure(crate::approvals::StoreError::Ended {
            id,
            state: item.state.clone(),
            by: item.resolved_by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default(),
            at: item.resolved_at.clone().unwrap_or_default(),
        }));
    }
    let outcome = if approve { crate::approvals::Outcome::Approved } else { crate::approvals::Outcome::Denied };
    if item.kind == "file" {
        let text = crate::review::answer_file(&d, &item, approve, req.always, &by).await?;
        let store = d.approvals.clone();
        let by2 = by.clone();
        tokio::task::spawn_blocking(move || store.store.resolve(id, outcome, &by2))
            .await
            .map_err(ApiFailure::internal)?
            .map_err(store_failure)?;
        return Ok(Json(AnswerResponse {
            id,
            kind: "file".into(),
            outcome: text,
            rule_added: None,
            profile_file: None,
        }));
    }

    // A held request. The rule first: if it cannot be written, nothing was answered.
    let mut written = None;
    if req.always {
        let profiles = d.profiles();
        let Some(loaded) = profiles.profiles.get(&item.profile) else {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                format!("profile {} is not in force; no rule can be written for approval {id}", item.profile),
                Some("answer without --always"),
            ));
        };
        let file = loaded.profile.file.clone();
        let (method, url) = (item.method.clone().unwrap_or_default(), item.url.clone().unwrap_or_default());
        let w = tokio::task::spawn_blocking(move || crate::approvals::always::add_rule(&file, &method, &url, approve))
            .await
            .map_err(ApiFailure::internal)?
            .map_err(|e| {
                ApiFailure::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    e.to_string(),
                    Some(&format!("nothing was answered; answer without --always: gvmctl {answer} {id}")),
                )
            })?;
        let reloaded = d.reload_as(gvm_api::versions::Origin::Always, Some(by.clone())).await;
        tracing::info!(gvm_profile = %item.profile, "rule added to {} by {by}: {}", w.file.display(), w.rule);
        d.record(gvm_audit::NewEvent {
            profile: Some(item.profile.clone()),
            kind: gvm_api::EventKind::RuleAdded.into(),
            decision: None,
            rule: None,
            details: serde_json::json!({
                "approval_id": id, "file": w.file.display().to_string(), "rule": w.rule,
                "by_uid": peer.uid, "by_user": by, "refused": reloaded.refused.len(),
            }),
        })
        .await;
        written = Some(w);
    }
    let store = d.approvals.clone();
    let by2 = by.clone();
    tokio::task::spawn_blocking(move || store.store.resolve(id, outcome, &by2))
        .await
        .map_err(ApiFailure::internal)?
        .map_err(store_failure)?;
    if let Err(e) = d.gateway.resolve_hold(id, approve) {
        // Its client left (or it timed out) between the listing and this answer.
        let store = d.approvals.clone();
        let _ = tokio::task::spawn_blocking(move || {
            store.store.set_outcome(id, crate::approvals::Outcome::Expired, "client disconnected")
        })
        .await;
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            format!("approval {id}'s request is no longer waiting ({e})"),
            None,
        ));
    }
    let outcome_text = outcome.as_str();
    d.record(gvm_audit::NewEvent {
        profile: Some(item.profile.clone()),
        kind: gvm_api::EventKind::HoldAnswered.into(),
        decision: Some(if approve { gvm_api::Decision::Allow } else { gvm_api::Decision::Deny }.into()),
        rule: item.rule.clone(),
        details: serde_json::json!({
            "hold_id": id,
            "outcome": outcome_text,
            "always": req.always,
            "by_uid": peer.uid,
            "by_user": by,
            "method": item.method,
            "url": item.url,
        }),
    })
    .await;
    Ok(Json(AnswerResponse {
        id,
        kind: "request".into(),
        outcome: outcome_text.into(),
        rule_added: written.as_ref().map(|w| w.rule.clone()),
        profile_file: written.map(|w| w.file.display().to_string()),
    }))
}

/// Makes profile P's user, netns (gateway inside) and directories; answers the plan the
/// launcher builds the sandbox from. Root only: the launcher is a root process.
async fn prepare(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(profile): Path<String>,
) -> Result<Json<gvm_api::LaunchPlan>, ApiFailure> {
    if peer.uid != 0 {
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "only root may prepare a sandbox (the launcher runs as root)",
            Some("use `gvmctl run` or `gvmctl start`, which ask gvmd to launch for you"),
        ));
    }
    crate::supervisor::ephemeral::prepare_shared(&d, &profile).await.map(Json).map_err(|e| match e {
        crate::supervisor::prepare::PrepareError::NoProfile(_) => {
            ApiFailure::new(StatusCode::NOT_FOUND, e.to_string(), None)
        }
        other => ApiFailure::internal(other),
    })
}

/// Removes what `prepare` made but the user and the agent's state. Root only.
async fn teardown(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(profile): Path<String>,
    ended: Option<Json<serde_json::Value>>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    if peer.uid != 0 {
        return Err(ApiFailure::new(StatusCode::FORBIDDEN, "only root may tear a sandbox down", None));
    }
    if let Some(how) = ended.and_then(|Json(e)| {
        crate::supervisor::children::describe_systemd_exit(e["exit_code"].as_str()?, e["exit_status"].as_str()?)
    }) {
        d.agents.set_last_exit(&profile, how);
    }
    if d.agents.is_active(&profile) {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            format!("profile {profile} is running; stop it first"),
            Some(&format!("gvmctl stop {profile}")),
        ));
    }
    crate::supervisor::ephemeral::teardown_unless_shared(&d, &profile).await.map_err(ApiFailure::internal)?;
    // The agent is gone (its unit stopped): its new files matching auto_apply go in now.
    crate::review::auto_apply(&d, &profile).await;
    Ok(Json(serde_json::json!({ "profile": profile, "torn_down": true })))
}

/// `gvmctl start|stop|restart P`.
async fn agent_action(
    State(d): State<Arc<Daemon>>,
    Path((profile, action)): Path<(String, String)>,
) -> Result<Json<gvm_api::AgentAction>, ApiFailure> {
    use crate::supervisor::control::{act, ActError};
    let action = action
        .parse::<gvm_api::AgentVerb>()
        .map_err(|_| ApiFailure::new(StatusCode::NOT_FOUND, ActError::Action(action).to_string(), None))?;
    act(&d, &profile, action).await.map(Json).map_err(|e| {
        let status = match e {
            ActError::NoProfile(_) | ActError::Action(_) => StatusCode::NOT_FOUND,
            ActError::NoCommand(_) | ActError::Busy(_) => StatusCode::CONFLICT,
            ActError::Systemd { .. } => StatusCode::BAD_GATEWAY,
        };
        ApiFailure::new(status, e.to_string(), None)
    })
}

/// `gvmctl watch P on|off [--for D]`.
async fn watch(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(profile): Path<String>,
    Json(req): Json<gvm_api::WatchRequest>,
) -> Result<Json<gvm_api::WatchState>, ApiFailure> {
    use crate::watch::WatchError;
    if req.for_secs.is_some() && !req.on {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "--for goes with `on`",
            Some("gvmctl watch P on --for 1h"),
        ));
    }
    let duration = req.for_secs.map(std::time::Duration::from_secs);
    crate::watch::switch(&d, &profile, req.on, duration, &user_name(peer.uid)).await.map(Json).map_err(|e| match e {
        WatchError::NoProfile(_) => {
            ApiFailure::new(StatusCode::NOT_FOUND, e.to_string(), Some("`gvmctl status` lists the profiles in force"))
        }
        WatchError::FileSaysWatch(_) => ApiFailure::new(StatusCode::CONFLICT, e.to_string(), None),
    })
}

async fn not_found(uri: axum::http::Uri) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        format!("gvmd has no endpoint {}", uri.path()),
        Some("this gvmd speaks /v1/; if gvmctl is newer than gvmd, restart gvmd after upgrading"),
    )
}
