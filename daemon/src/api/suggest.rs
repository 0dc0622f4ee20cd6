//! `GET|POST /v1/agents/{profile}/suggest`: the profile change that would allow what
//! the agent was seen doing (`crate::suggest` computes it), shown as a diff, and with
//! `{"apply": true}` written (`crate::profile_file`), audited as `rule_added` and put in
//! force by a reload.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use gvm_api::suggest::{SuggestRequest, SuggestResponse, Window};
use gvm_api::EventsQuery;

use super::ApiFailure;
use crate::state::Daemon;
use crate::sys::creds::{user_name, Peer};

pub async fn dry_run(
    State(d): State<Arc<Daemon>>,
    Path(profile): Path<String>,
    Query(mut q): Query<SuggestRequest>,
) -> Result<Json<SuggestResponse>, ApiFailure> {
    q.apply = false;
    run(&d, &profile, q, None).await.map(Json)
}

pub async fn apply(
    State(d): State<Arc<Daemon>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(profile): Path<String>,
    Json(q): Json<SuggestRequest>,
) -> Result<Json<SuggestResponse>, ApiFailure> {
    run(&d, &profile, q, Some(peer)).await.map(Json)
}

fn bad(msg: impl Into<String>, hint: &str) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, msg, Some(hint))
}

/// The events to learn from: `(query, until_seq, description)`.
fn window(d: &Daemon, profile: &str, q: &SuggestRequest) -> Result<(EventsQuery, Option<u64>, String), ApiFailure> {
    let base = EventsQuery { profile: Some(profile.to_string()), ..Default::default() };
    match (&q.since, q.run) {
        (Some(_), Some(_)) => Err(bad("give --since or --run, not both", "gvmctl suggest P --run SEQ")),
        (Some(since), None) => {
            if time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339).is_err() {
                return Err(bad(format!("`since` is not an RFC 3339 time: {since:?}"), "like 2026-11-23T10:00:00Z"));
            }
            Ok((EventsQuery { since: Some(since.clone()), ..base }, None, format!("since {since}")))
        }
        (None, Some(run)) => {
            // One pass from the run on: the run_started itself and its run_finished.
            let (mut started, mut until) = (None, None);
            let from = EventsQuery { after_seq: Some(run.saturating_sub(1)), ..base.clone() };
            d.audit
                .scan(&from, |e| {
                    if e.seq == run && e.kind == "run_started" {
                        started = Some(e.time.clone());
                    } else if until.is_none()
                        && e.kind == "run_finished"
                        && e.details.get("run_started_seq").and_then(serde_json::Value::as_u64) == Some(run)
                    {
                        until = Some(e.seq);
                    }
                })
                .map_err(ApiFailure::internal)?;
            let Some(time) = started else {
                return Err(ApiFailure::new(
                    StatusCode::NOT_FOUND,
                    format!("event {run} is not a run_started event of profile {profile}"),
                    Some(&format!("`gvmctl audit log --profile {profile}` lists its runs (kind run_started)")),
                ));
            };
            Ok((EventsQuery { after_seq: Some(run), ..base }, until, format!("run {run} (started {time})")))
        }
        (None, None) => match d.audit.last_of_kind(profile, "profile_loaded").map_err(ApiFailure::internal)? {
            Some(e) => Ok((
                EventsQuery { after_seq: Some(e.seq), ..base },
                None,
                format!("since the profile was last loaded (event {}, {})", e.seq, e.time),
            )),
            None => Ok((base, None, "every event of the profile".into())),
        },
    }
}

async fn run(
    d: &Arc<Daemon>,
    profile: &str,
    q: SuggestRequest,
    apply_by: Option<Peer>,
) -> Result<SuggestResponse, ApiFailure> {
    let set = d.profiles();
    let Some(loaded) = set.profiles.get(profile) else {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("no profile {profile:?} is in force"),
            Some("`gvmctl status` lists the profiles in force"),
        ));
    };
    let p = loaded.profile.clone();
    let file = p.file.clone();
    // The agent's new files that wait for review (if it has overlay workspaces).
    let mut new_files = Vec::new();
    if !crate::review::workspaces(&d.paths.state_dir, &p).is_empty() {
        if let Ok(changes) = crate::review::with_review(d, profile, crate::review::Touch::Reads, |r| r.changes()).await
        {
            for c in changes {
                if c.kind == gvm_api::review::ChangeKind::Added
                    && c.class == gvm_api::review::FileClass::Review
                    && c.file_type == "file"
                {
                    new_files.push(c.path);
                }
            }
        }
    }
    let d2 = d.clone();
    let name = profile.to_string();
    let q2 = q.clone();
    let computed = tokio::task::spawn_blocking(move || -> Result<_, ApiFailure> {
        let (events, until, described) = window(&d2, &name, &q2)?;
        let after_seq = events.after_seq.unwrap_or(0);
        let mut obs = crate::suggest::Observations::new();
        d2.audit
            .scan(&events, |e| {
                if until.is_none_or(|u| e.seq <= u) {
                    obs.add(&e);
                }
            })
            .map_err(ApiFailure::internal)?;
        for f in &new_files {
            obs.add_new_file(f);
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| ApiFailure::internal(format!("cannot read {}: {e}", file.display())))?;
        let compiled = gvm_policy::parse_profile(&file, &text).map_err(|diag| {
            ApiFailure::new(
                StatusCode::CONFLICT,
                format!("{} does not load as it is on disk: {diag}", file.display()),
                Some("fix it (`gvmctl policy check`), then suggest again"),
            )
        })?;
        let now = SystemTime::now();
        let plan = crate::suggest::plan(&compiled.compiled, &obs, now);
        let stamp = crate::rfc3339(
            time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        );
        let outcome = crate::suggest::render(&file, &text, plan, &stamp, now)
            .map_err(|e| ApiFailure::new(StatusCode::CONFLICT, e.to_string(), Some("edit the profile by hand")))?;
        Ok((Window { described, after_seq, until_seq: until }, obs.decisions, text, outcome))
    })
    .await
    .map_err(ApiFailure::internal)??;
    let (window, decisions, text, outcome) = computed;
    let mut resp = SuggestResponse {
        profile: profile.to_string(),
        file: p.file.display().to_string(),
        base_sha256: crate::profile_file::digest(&text),
        window,
        decisions,
        already_allowed: outcome.plan.already_allowed,
        rules: outcome.plan.rules.clone(),
        flagged: outcome.plan.flagged.clone(),
        files: outcome.plan.files.clone(),
        diff: outcome.diff.clone(),
        ..Default::default()
    };
    let Some(peer) = apply_by.filter(|_| q.apply) else { return Ok(resp) };
    if let Some(expected) = &q.expect_sha256 {
        if *expected != resp.base_sha256 {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                format!(
                    "{} changed since the suggestion you reviewed (it was {expected}, it is now {}); nothing was written",
                    resp.file, resp.base_sha256
                ),
                Some(&format!("look again: gvmctl suggest {profile}")),
            ));
        }
    }
    if outcome.new_text == text {
        return Ok(resp);
    }
    let file = p.file.clone();
    let new_text = outcome.new_text.clone();
    tokio::task::spawn_blocking(move || crate::profile_file::replace(&file, &text, &new_text))
        .await
        .map_err(ApiFailure::internal)?
        .map_err(|e| match e {
            crate::profile_file::WriteError::Changed { .. } => {
                ApiFailure::new(StatusCode::CONFLICT, e.to_string(), Some(&format!("gvmctl suggest {profile}")))
            }
            other => ApiFailure::internal(other),
        })?;
    resp.applied = true;
    resp.backup = Some(format!("{}.bak", resp.file));
    resp.new_sha256 = Some(crate::profile_file::digest(&outcome.new_text));
    let by = user_name(peer.uid);
    let reloaded = d.reload_as(gvm_api::versions::Origin::Suggest, Some(by.clone())).await;
    tracing::info!(gvm_profile = %profile, "{} suggested rule(s) added to {} by {by}", resp.rules.len(), resp.file);
    d.record(gvm_audit::NewEvent {
        profile: Some(profile.to_string()),
        kind: gvm_api::EventKind::RuleAdded.into(),
        decision: None,
        rule: None,
        details: serde_json::json!({
            "source": "suggest", "file": resp.file, "rules": resp.rules,
            "flagged": resp.flagged.len(), "window": resp.window.described,
            "before": resp.base_sha256, "after": resp.new_sha256,
            "by_uid": peer.uid, "by_user": by, "refused": reloaded.refused.len(),
        }),
    })
    .await;
    Ok(resp)
}
