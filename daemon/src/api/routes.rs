//! The `/v1/` routes. Handlers are thin: they read the daemon's state or ask the audit
//! store, and translate errors into [`ApiFailure`]s that say what to do.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use gvm_api::{
    paths, EventsQuery, EventsResponse, HoldAnswer, HoldsResponse, ReloadResponse, StatusResponse, VerifyReport,
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
        .route(paths::HOLDS, get(holds))
        .route(paths::POLICY_EXPLAIN, post(super::explain::explain))
        .route("/v1/agents/{profile}/prepare", post(prepare))
        .route("/v1/agents/{profile}/teardown", post(teardown))
        .route("/v1/agents/{profile}/{action}", post(agent_action))
        .route("/v1/holds/{id}/{answer}", post(answer_hold))
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

async fn reload(State(d): State<Arc<Daemon>>) -> Json<ReloadResponse> {
    Json(d.reload().await)
}

async fn holds(State(d): State<Arc<Daemon>>) -> Json<HoldsResponse> {
    Json(HoldsResponse { holds: d.gateway.holds() })
}

/// Approves or denies a held request, and records who did.
async fn answer_hold(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path((id, answer)): Path<(u64, String)>,
) -> Result<Json<HoldAnswer>, ApiFailure> {
    let approve = match answer.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(ApiFailure::new(
                StatusCode::NOT_FOUND,
                format!("a hold can be answered with approve or deny, not {other:?}"),
                None,
            ))
        }
    };
    let held = d.gateway.holds().into_iter().find(|h| h.id == id);
    d.gateway.resolve_hold(id, approve).map_err(|e| ApiFailure::new(StatusCode::NOT_FOUND, e.to_string(), None))?;
    let outcome = if approve { "approved" } else { "denied" };
    d.record(gvm_audit::NewEvent {
        profile: held.as_ref().map(|h| h.profile.clone()),
        kind: "hold_answered".into(),
        decision: Some(if approve { "allow" } else { "deny" }.into()),
        rule: held.as_ref().and_then(|h| h.rule.clone()),
        details: serde_json::json!({
            "hold_id": id,
            "outcome": outcome,
            "by_uid": peer.uid,
            "by_user": user_name(peer.uid),
            "method": held.as_ref().map(|h| h.method.clone()),
            "url": held.as_ref().map(|h| h.url.clone()),
        }),
    })
    .await;
    Ok(Json(HoldAnswer { id, outcome: outcome.into() }))
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
    crate::supervisor::prepare::prepare(&d, &profile).await.map(Json).map_err(|e| match e {
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
) -> Result<Json<serde_json::Value>, ApiFailure> {
    if peer.uid != 0 {
        return Err(ApiFailure::new(StatusCode::FORBIDDEN, "only root may tear a sandbox down", None));
    }
    if d.agents.is_active(&profile) {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            format!("profile {profile} is running; stop it first"),
            Some(&format!("gvmctl stop {profile}")),
        ));
    }
    crate::supervisor::prepare::teardown(&d, &profile).await.map_err(ApiFailure::internal)?;
    Ok(Json(serde_json::json!({ "profile": profile, "torn_down": true })))
}

/// `gvmctl start|stop|restart P`.
async fn agent_action(
    State(d): State<Arc<Daemon>>,
    Path((profile, action)): Path<(String, String)>,
) -> Result<Json<gvm_api::AgentAction>, ApiFailure> {
    use crate::supervisor::control::{act, ActError};
    act(&d, &profile, &action).await.map(Json).map_err(|e| {
        let status = match e {
            ActError::NoProfile(_) | ActError::Action(_) => StatusCode::NOT_FOUND,
            ActError::NoCommand(_) | ActError::Busy(_) => StatusCode::CONFLICT,
            ActError::Systemd { .. } => StatusCode::BAD_GATEWAY,
        };
        ApiFailure::new(status, e.to_string(), None)
    })
}

async fn not_found(uri: axum::http::Uri) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        format!("gvmd has no endpoint {}", uri.path()),
        Some("this gvmd speaks /v1/; if gvmctl is newer than gvmd, restart gvmd after upgrading"),
    )
}
