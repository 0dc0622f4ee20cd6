//! `POST /v1/policy/explain`: the decision the profile in force would make for a
//! request, with every rule that names its host and why it did or did not decide.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gvm_api::{ConsideredRule, ExplainRequest, ExplainResponse};
use gvm_policy::{Host, Request, Scheme};

use super::ApiFailure;
use crate::state::Daemon;

/// `scheme://host[:port][/path]` → its parts. Refuses what the gateway would refuse
/// (userinfo, bad hosts); the query is kept in the path (the policy ignores it).
pub fn parse_url(url: &str) -> Result<(Scheme, Host, u16, String), String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let default_port = if scheme == Scheme::Https { 443 } else { 80 };
    let port_of = |p: &str| p.parse::<u16>().map_err(|_| format!("bad port {p:?} in {url:?}"));
    let (host_text, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (h, after) = bracketed.split_once(']').ok_or_else(|| format!("unclosed [ in {url:?}"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, port_of(p)?),
            None if after.is_empty() => (h, default_port),
            None => return Err(format!("unexpected {after:?} after the address in {url:?}")),
        }
    } else {
        match authority.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(format!("write IPv6 addresses in brackets: http://[::1]:8080/ (got {url:?})"))
            }
            Some((h, p)) => (h, port_of(p)?),
            None => (authority, default_port),
        }
    };
    let host = Host::parse(host_text).map_err(|e| format!("bad host in {url:?}: {e}"))?;
    Ok((scheme, host, port, path))
}

pub async fn explain(
    State(d): State<Arc<Daemon>>,
    Json(req): Json<ExplainRequest>,
) -> Result<Json<ExplainResponse>, ApiFailure> {
    let profiles = d.profiles();
    let Some(loaded) = profiles.profiles.get(&req.profile) else {
        let known: Vec<&str> = profiles.profiles.keys().map(String::as_str).collect();
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("no profile {:?} is in force", req.profile),
            Some(&format!("profiles in force: {}", if known.is_empty() { "none".into() } else { known.join(", ") })),
        ));
    };
    let (scheme, host, port, path) = parse_url(&req.url).map_err(|e| {
        ApiFailure::new(StatusCode::BAD_REQUEST, e, Some("give a URL like https://api.example.com/v1/x"))
    })?;
    let method = req.method.to_ascii_uppercase();
    let request = Request { scheme, host: &host, port, method: &method, path: &path };
    Ok(Json(explanation(&loaded.profile.compiled, &request)))
}

/// The wire form of `policy`'s explanation of `request`, decided now.
pub fn explanation(policy: &gvm_policy::CompiledPolicy, request: &Request<'_>) -> ExplainResponse {
    let e = policy.explain(request, SystemTime::now());
    ExplainResponse {
        decision: e.decision.verdict.into(),
        policy_decision: e.decision.policy_verdict.into(),
        mode: e.decision.mode,
        rule: e.decision.rule.as_ref().map(|r| format!("network.rule[{}]", r.index)),
        file: e.decision.rule.as_ref().map(|r| r.file.display().to_string()),
        line: e.decision.rule.as_ref().map(|r| r.line),
        reason: e.reason.clone(),
        considered: e
            .considered
            .iter()
            .map(|c| ConsideredRule {
                rule: c.rule.to_string(),
                action: c.action.to_string(),
                host: c.host.clone(),
                outcome: c.outcome.to_string(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_facts() {
        let (s, h, p, path) = parse_url("https://API.example.com./v1/x?y=1").unwrap();
        assert_eq!((s, h.as_str(), p, path.as_str()), (Scheme::Https, "api.example.com", 443, "/v1/x?y=1"));
        let (_, h, p, path) = parse_url("http://[::1]:8080").unwrap();
        assert_eq!((h.ip().map(|i| i.to_string()), p, path.as_str()), (Some("::1".into()), 8080, "/"));
        assert!(parse_url("ftp://x").unwrap_err().contains("not an http"));
        assert!(parse_url("http://::1:80/").unwrap_err().contains("brackets"));
        assert!(parse_url("http://a.com@evil.com/").is_err());
        assert!(parse_url("http://a.com:99999/").unwrap_err().contains("bad port"));
    }
}
