//! What the agent reads when the gateway says no: JSON bodies written so that an LLM
//! agent understands what happened and what to do about it.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use serde_json::json;

pub(crate) type RespBody = BoxBody<Bytes, hyper::Error>;

pub(crate) fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

pub(crate) fn empty() -> RespBody {
    full(Bytes::new())
}

/// The request as the gateway understood it, for the answer body.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    pub method: String,
    pub url: String,
}

pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response<RespBody> {
    let mut bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-gvm-decision", HeaderValue::from_static("deny"));
    r
}

fn how_to(profile: &str, what: &Described) -> String {
    format!(
        "this request was not forwarded. Do not retry it unchanged and do not try to reach \
         the host another way (direct sockets, other proxies, DNS) — every way out goes \
         through gvm. Ask the operator to add a rule to /etc/gvm/profiles/{profile}.toml \
         allowing `{} {}` (then `gvmctl reload`), or to approve it when it is held \
         (`gvmctl approvals`, `gvmctl approve ID`).",
        what.method, what.url
    )
}

/// 403: the policy (or a held request's answer) refused it.
pub(crate) fn denied(profile: &str, rule: Option<&str>, what: &Described, reason: &str) -> Response<RespBody> {
    json_response(
        StatusCode::FORBIDDEN,
        json!({
            // The request first: clients that show only the start of an error body
            // (Hermes shows 300 characters) still tell the user what to allow.
            "error": format!("gvm denied this request: {} {}", what.method, what.url),
            "profile": profile,
            "rule": rule.unwrap_or("default"),
            "request": { "method": what.method, "url": what.url },
            "reason": reason,
            "how_to_get_access": how_to(profile, what),
        }),
    )
}

/// 403: the request carries a secret's value, a masked file's value, or a placeholder
/// headed where its secret is not bound. Names what, never the value.
pub(crate) fn leaked(profile: &str, what: &Described, kind: &str, label: &str, reason: &str) -> Response<RespBody> {
    json_response(
        StatusCode::FORBIDDEN,
        json!({
            "error": "gvm refused this request: it would send out a value that must not leave",
            "profile": profile,
            kind: label,
            "request": { "method": what.method, "url": what.url },
            "reason": reason,
            "what_to_do": "do not retry this request in any form or encoding, and do not try to send the value \
                another way: secrets and the files the profile hides stay inside. If a host needs a credential, \
                use the placeholder from your environment in a header; gvm puts the real value in on the way out \
                for the hosts the operator bound it to.",
        }),
    )
}

/// 429 with Retry-After.
pub(crate) fn rate_limited(profile: &str, rule: &str, what: &Described, retry_after_secs: u64) -> Response<RespBody> {
    let mut r = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({
            "error": "gvm rate limit reached",
            "profile": profile,
            "rule": rule,
            "request": { "method": what.method, "url": what.url },
            "retry_after_seconds": retry_after_secs,
            "how_to_get_access": format!(
                "wait {retry_after_secs} s before the next request matching rule {rule}; \
                 the limit is set by its `rate` in /etc/gvm/profiles/{profile}.toml"
            ),
        }),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&retry_after_secs.to_string()).unwrap_or(HeaderValue::from_static("1")),
    );
    r
}

/// 429 until the period ends: a budget (`[budget]` or a rule's `budget`) is spent.
pub(crate) fn budget_exhausted(profile: &str, what: &Described, ex: &crate::spend::Exhausted) -> Response<RespBody> {
    let resets_at = ex.resets_at_rfc3339();
    let wait = (ex.resets_at - time::OffsetDateTime::now_utc()).whole_seconds().max(1);
    let field = if ex.name == "profile" { "[budget]".to_string() } else { format!("the `budget` of {}", ex.name) };
    let mut r = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({
            "error": "gvm budget spent",
            "profile": profile,
            "budget": ex.name,
            "limit": ex.limit_json(),
            "spent": ex.spent_json(),
            "resets_at": resets_at,
            "request": { "method": what.method, "url": what.url },
            "how_to_get_access": format!(
                "this request was not forwarded: the budget is spent until {resets_at}. Do not retry before \
                 then; ask the operator if more is needed ({field} in /etc/gvm/profiles/{profile}.toml)"
            ),
        }),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&wait.to_string()).unwrap_or(HeaderValue::from_static("60")),
    );
    r
}

/// 429: the profile is past one of its `[limits]` (gvmd's fairness between agents).
pub(crate) fn over_limit(profile: &str, what: &Described, limit: &str, value: &str) -> Response<RespBody> {
    let mut r = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({
            "error": "gvm: this agent is over one of its limits",
            "profile": profile,
            "rule": format!("limits.{limit}"),
            "limit": { "name": limit, "value": value },
            "request": { "method": what.method, "url": what.url },
            "how_to_get_access": format!(
                "slow down: this agent sent more than gvm lets one agent send ({limit} = {value}); \
                 retry in a few seconds. The operator sets it in [limits] of \
                 /etc/gvm/profiles/{profile}.toml"
            ),
        }),
    );
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

/// 400 / 421: the request is ambiguous (a parser differential in waiting) and refused.
pub(crate) fn refused(status: StatusCode, profile: &str, what: &Described, reason: &str) -> Response<RespBody> {
    let mut r = json_response(
        status,
        json!({
            "error": "gvm refused an ambiguous or malformed request",
            "profile": profile,
            "rule": "protocol",
            "request": { "method": what.method, "url": what.url },
            "reason": reason,
            "how_to_get_access": "send one well-formed request: one Host header that names \
                the same host as the URL (and as the CONNECT target and TLS SNI), no \
                userinfo, no Content-Length together with Transfer-Encoding",
        }),
    );
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// 503: the gateway cannot record the request, so it does not forward it.
pub(crate) fn unavailable(profile: &str, what: &Described, reason: &str) -> Response<RespBody> {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({
            "error": "gvm cannot record this request, so it was not forwarded",
            "profile": profile,
            "rule": "audit",
            "request": { "method": what.method, "url": what.url },
            "reason": reason,
            "how_to_get_access": "retry later; the operator should check `gvmctl status` \
                and the audit store (disk full?)",
        }),
    )
}

/// 502: allowed, but the upstream could not be reached.
pub(crate) fn bad_gateway(profile: &str, what: &Described, reason: &str) -> Response<RespBody> {
    let mut r = json_response(
        StatusCode::BAD_GATEWAY,
        json!({
            "error": "gvm allowed this request but could not reach the upstream",
            "profile": profile,
            "request": { "method": what.method, "url": what.url },
            "reason": reason,
        }),
    );
    r.headers_mut().remove("x-gvm-decision");
    r
}
