//! The policy versions routes: history, diff, rollback, a dry-run reload, and a
//! recorded decision explained under the version it was made under.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use gvm_api::versions::{
    DiffQuery, DiffResponse, DryRunResponse, EventExplainResponse, HistoryEntry, HistoryResponse, Origin,
    RollbackRequest, RollbackResponse,
};
use gvm_policy::{Host, Request, Scheme};

use super::ApiFailure;
use crate::profiles::short;
use crate::state::Daemon;
use crate::sys::creds::{user_name, Peer};
use crate::versions::VersionError;

fn version_failure(e: VersionError) -> ApiFailure {
    match e {
        VersionError::NeverLoaded { .. } => ApiFailure::new(StatusCode::NOT_FOUND, e.to_string(), None),
        VersionError::BadName(_) => ApiFailure::new(StatusCode::BAD_REQUEST, e.to_string(), None),
        VersionError::Unknown { .. } | VersionError::Ambiguous { .. } => {
            ApiFailure::new(StatusCode::NOT_FOUND, e.to_string(), Some("see `gvmctl policy history PROFILE`"))
        }
        VersionError::Io { .. } => ApiFailure::internal(e),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiFailure> + Send + 'static,
) -> Result<T, ApiFailure> {
    tokio::task::spawn_blocking(f).await.map_err(ApiFailure::internal)?
}

pub async fn history(
    State(d): State<Arc<Daemon>>,
    Path(profile): Path<String>,
) -> Result<Json<HistoryResponse>, ApiFailure> {
    let in_force = d.profiles().profiles.get(&profile).map(|p| p.digest.clone());
    let store = d.versions.clone();
    let p = profile.clone();
    let entries = blocking(move || store.history(&p).map_err(version_failure)).await?;
    let until: Vec<Option<String>> = entries.iter().skip(1).map(|e| Some(e.at.clone())).chain([None]).collect();
    let entries = entries.into_iter().zip(until).map(|(entry, until)| HistoryEntry { entry, until }).collect();
    Ok(Json(HistoryResponse { profile, entries, in_force }))
}

/// The version in force of `profile`, or a failure that says it is not in force.
fn in_force(d: &Daemon, profile: &str) -> Result<(String, Arc<gvm_policy::Profile>), ApiFailure> {
    let profiles = d.profiles();
    profiles.profiles.get(profile).map(|p| (p.digest.clone(), p.profile.clone())).ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("profile {profile} is not in force"),
            Some("name the versions to compare: gvmctl policy diff PROFILE V1 V2"),
        )
    })
}

pub async fn diff(
    State(d): State<Arc<Daemon>>,
    Path(profile): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<DiffResponse>, ApiFailure> {
    let current = if q.from.is_none() || q.to.is_none() { Some(in_force(&d, &profile)?) } else { None };
    let store = d.versions.clone();
    blocking(move || {
        let named = |given: &str| -> Result<(String, String), ApiFailure> {
            let v = store.resolve(&profile, given).map_err(version_failure)?;
            let bytes = store.bytes(&profile, &v).map_err(version_failure)?;
            Ok((v, String::from_utf8_lossy(&bytes).into_owned()))
        };
        let (from, from_text, to, to_text) = match (q.from.as_deref(), q.to.as_deref(), current) {
            (Some(a), Some(b), _) => {
                let ((fa, ta), (fb, tb)) = (named(a)?, named(b)?);
                (fa, ta, fb, tb)
            }
            // One version: it against the version in force.
            (Some(a), None, Some((v, p))) => {
                let (fa, ta) = named(a)?;
                (fa, ta, v, p.text.to_string())
            }
            // None: the version in force against the file on disk (a reload's dry run).
            (_, _, Some((v, p))) => {
                let disk = std::fs::read(&p.file).map_err(|e| {
                    ApiFailure::new(
                        StatusCode::NOT_FOUND,
                        format!("cannot read {}: {e}", p.file.display()),
                        Some("a reload would remove this profile"),
                    )
                })?;
                (v, p.text.to_string(), "file".to_string(), String::from_utf8_lossy(&disk).into_owned())
            }
            (_, _, None) => return Err(ApiFailure::internal("no version to compare")),
        };
        let name = |v: &str| {
            if v == "file" {
                format!("{profile}.toml (file on disk)")
            } else {
                format!("{profile} {}", short(v))
            }
        };
        let diff = crate::versions::unified(&name(&from), &from_text, &name(&to), &to_text);
        Ok(Json(DiffResponse { from, to, diff }))
    })
    .await
}

pub async fn rollback(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(profile): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<RollbackResponse>, ApiFailure> {
    let req: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiFailure::new(StatusCode::BAD_REQUEST, format!("the body is not a rollback request: {e}"), None)
        })?
    };
    let by = user_name(peer.uid);
    let _serial = d.reload_guard().await;
    let (current, loaded) = in_force(&d, &profile)?;
    let store = d.versions.clone();
    let file = loaded.file.clone();
    let (p, cur, f) = (profile.clone(), current.clone(), file.clone());
    let (target, backup) = blocking(move || {
        let target = match req.to.as_deref() {
            Some(v) => store.resolve(&p, v).map_err(version_failure)?,
            None => {
                let history = store.history(&p).map_err(version_failure)?;
                history.iter().rev().map(|e| &e.version).find(|v| **v != cur).cloned().ok_or_else(|| {
                    ApiFailure::new(
                        StatusCode::CONFLICT,
                        format!(
                            "profile {p} has had only one version ({}); there is nothing to roll back to",
                            short(&cur)
                        ),
                        None,
                    )
                })?
            }
        };
        if target == cur {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                format!("version {} of {p} is already in force", short(&target)),
                None,
            ));
        }
        let bytes = store.bytes(&p, &target).map_err(version_failure)?;
        let text = String::from_utf8(bytes).map_err(|_| ApiFailure::internal("a stored version is not UTF-8"))?;
        // The schema may have changed since: the old bytes must still validate.
        let file = f;
        if let Err(diag) = gvm_policy::parse_profile(&file, &text) {
            return Err(ApiFailure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("version {} of {p} no longer validates: {diag}", short(&target)),
                Some("nothing was changed; edit the file by hand or roll back to another version"),
            ));
        }
        let on_disk = std::fs::read_to_string(&file).unwrap_or_else(|_| loaded.text.to_string());
        crate::profile_file::replace(&file, &on_disk, &text).map_err(ApiFailure::internal)?;
        Ok((target, format!("{}.bak", file.display())))
    })
    .await?;
    let reloaded = d.reload_locked(Origin::Rollback, Some(by.clone())).await;
    let now = d.profiles().profiles.get(&profile).map(|p| p.digest.clone());
    d.record(gvm_audit::NewEvent {
        profile: Some(profile.clone()),
        kind: gvm_api::EventKind::PolicyRollback.into(),
        decision: None,
        rule: None,
        details: serde_json::json!({
            "from": current, "to": target, "file": file.display().to_string(), "backup": backup,
            "by_uid": peer.uid, "by_user": by, "in_force": now,
        }),
    })
    .await;
    if now.as_deref() != Some(target.as_str()) {
        let why = reloaded.refused.iter().map(|r| r.message.clone()).collect::<Vec<_>>().join("; ");
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            format!("{} was written but version {} is not in force: {why}", file.display(), short(&target)),
            Some("see gvmctl status"),
        ));
    }
    Ok(Json(RollbackResponse { profile, from: current, to: target, file: file.display().to_string(), backup }))
}

pub async fn dry_run(State(d): State<Arc<Daemon>>) -> Result<Json<DryRunResponse>, ApiFailure> {
    let current = d.profiles();
    let dir = d.paths.profiles_dir();
    blocking(move || Ok(Json(current.dry_run(&dir)))).await
}

/// The request facts of a decision event, as recorded in its details.
fn recorded_request(ev: &gvm_api::AuditEvent) -> Result<(Scheme, Host, u16, String, String), String> {
    let d = &ev.details;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str());
    let host = s("host").ok_or("the event names no host")?;
    let host = Host::parse(host).map_err(|e| format!("the recorded host {host:?} does not parse: {e}"))?;
    let port = d.get("port").and_then(|v| v.as_u64()).and_then(|p| u16::try_from(p).ok()).ok_or("no port")?;
    match ev.kind.as_str() {
        "http" => {
            let scheme = if s("scheme") == Some("http") { Scheme::Http } else { Scheme::Https };
            Ok((scheme, host, port, s("method").unwrap_or("GET").to_string(), s("path").unwrap_or("/").to_string()))
        }
        "connect" => Ok((Scheme::Https, host, port, "CONNECT".into(), "/".into())),
        other => Err(format!("a `{other}` event is not a request decision; explain http or connect events")),
    }
}

/// A request decided again: a tunnel (`CONNECT`) as the gateway decides it, at the
/// host level (`intercept` when the requests inside it would each be decided).
fn redecide(policy: &gvm_policy::CompiledPolicy, request: &Request<'_>) -> gvm_api::ExplainResponse {
    let mut e = super::explain::explanation(policy, request);
    if request.method == "CONNECT" {
        match policy.decide_connect(request.host, request.port, std::time::SystemTime::now()) {
            gvm_policy::ConnectPlan::Intercept => {
                (e.decision, e.policy_decision) = (gvm_api::Decision::Intercept, gvm_api::Decision::Intercept);
                (e.rule, e.file, e.line) = (None, None, None);
                e.reason = "rules for this host look inside the tunnel: each request in it is decided".into();
            }
            gvm_policy::ConnectPlan::Decided(d) => {
                e.decision = d.verdict.into();
                e.policy_decision = d.policy_verdict.into();
                e.rule = d.rule.as_ref().map(|r| format!("network.rule[{}]", r.index));
                e.file = d.rule.as_ref().map(|r| r.file.display().to_string());
                e.line = d.rule.as_ref().map(|r| r.line);
                e.reason = "decided at the host level, before looking inside the tunnel".into();
            }
        }
    }
    e
}

pub async fn explain_event(
    State(d): State<Arc<Daemon>>,
    Path(seq): Path<u64>,
) -> Result<Json<EventExplainResponse>, ApiFailure> {
    let audit = d.audit.clone();
    let ev = blocking(move || audit.event(seq).map_err(ApiFailure::internal)).await?.ok_or_else(|| {
        ApiFailure::new(StatusCode::NOT_FOUND, format!("there is no audit event {seq}"), Some("see gvmctl audit log"))
    })?;
    let bad = |m: String| ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, format!("event {seq}: {m}"), None);
    let profile = ev.profile.clone().ok_or_else(|| bad("it names no profile".into()))?;
    let version = ev.details.get("policy_version").and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(|| {
        bad("it names no policy version (not a decision, or recorded before versions were kept)".into())
    })?;
    let (scheme, host, port, method, path) = recorded_request(&ev).map_err(bad)?;
    let store = d.versions.clone();
    let file: PathBuf = d.paths.profiles_dir().join(format!("{profile}.toml"));
    let (p, v) = (profile.clone(), version.clone());
    let then_profile = blocking(move || {
        let bytes = store.bytes(&p, &v).map_err(version_failure)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        gvm_policy::parse_profile(&file, &text).map_err(|diag| {
            ApiFailure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("version {} of {p} no longer parses: {diag}", short(&v)),
                None,
            )
        })
    })
    .await?;
    let request = Request { scheme, host: &host, port, method: &method, path: &path };
    let then = redecide(&then_profile.compiled, &request);
    let current = d.profiles().profiles.get(&profile).cloned();
    let now = current.as_ref().map(|c| redecide(&c.profile.compiled, &request));
    let url = if method == "CONNECT" {
        format!("{}:{port}", host.url_form())
    } else {
        let scheme = if scheme == Scheme::Http { "http" } else { "https" };
        format!("{scheme}://{}:{port}{path}", host.url_form())
    };
    Ok(Json(EventExplainResponse {
        seq,
        profile,
        version,
        request: format!("{method} {url}"),
        recorded: ev.decision.clone().unwrap_or_default(),
        then,
        now_version: current.map(|c| c.digest.clone()),
        now,
    }))
}
