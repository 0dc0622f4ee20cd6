//! The one place the gateway talks to the audit store.

use serde_json::Value;

/// Appends one event; returns its sequence number once it is durable.
pub(crate) async fn append(
    audit: &gvm_audit::Audit,
    kind: &str,
    profile: &str,
    decision: &str,
    rule: Option<&str>,
    details: Value,
) -> Result<u64, String> {
    let ev = gvm_audit::NewEvent {
        profile: Some(profile.to_string()),
        kind: kind.to_string(),
        decision: Some(decision.to_string()),
        rule: rule.map(str::to_string),
        details,
    };
    match audit.append(ev).await {
        Ok(a) => Ok(a.seq),
        Err(e) => Err(format!("the audit store refused the event: {e}")),
    }
}
