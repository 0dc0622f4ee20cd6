//! The one place the gateway talks to the audit store.

use serde_json::Value;

/// Queues one event nobody waits for (a completion record): it rides along with the
/// next commit. Lost only if gvmd dies before that commit.
pub(crate) fn append_nowait(audit: &gvm_audit::Audit, ev: gvm_audit::NewEvent) {
    if let Err(e) = audit.append_nowait(ev) {
        tracing::warn!("a completion record was not queued: {e}");
    }
}

/// Appends one event; returns its sequence number once it is durable.
pub(crate) async fn append(
    audit: &gvm_audit::Audit,
    kind: &str,
    profile: &str,
    decision: &str,
    rule: Option<&str>,
    details: &Value,
) -> Result<u64, String> {
    let ev = gvm_audit::EventRef { profile: Some(profile), kind, decision: Some(decision), rule, details };
    match audit.append_ref(ev).await {
        Ok(a) => Ok(a.seq),
        Err(e) => Err(format!("the audit store refused the event: {e}")),
    }
}
