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
        Ok(a) => {
            log_decision(a.seq, kind, profile, decision, rule, details);
            Ok(a.seq)
        }
        Err(e) => Err(format!("the audit store refused the event: {e}")),
    }
}

/// Every decision also goes to the log with the fields journald indexes, so that
/// `journalctl -u gvmd GVM_PROFILE=invoices GVM_DECISION=deny` finds it: refusals,
/// holds and rate limits at info, allowed requests at debug (`GVM_LOG=debug`; the
/// audit log has them all either way).
fn log_decision(seq: u64, kind: &str, profile: &str, decision: &str, rule: Option<&str>, details: &Value) {
    let allowed = decision == "allow" || decision == "intercept" || decision == "watch";
    // The request path: nothing is looked up for an allowed request unless debug is on.
    if allowed && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let field = |k: &str| details.get(k).and_then(Value::as_str).unwrap_or("");
    let (host, path, method) = (field("host"), field("path"), field("method"));
    let rule = rule.unwrap_or("default");
    macro_rules! emit {
        ($level:ident) => {
            tracing::$level!(
                gvm_event_seq = seq,
                gvm_event_kind = kind,
                gvm_profile = profile,
                gvm_decision = decision,
                gvm_rule = rule,
                "{profile}: {decision} {kind} {method} {host}{path} ({rule})"
            )
        };
    }
    if allowed {
        emit!(debug);
    } else {
        emit!(info);
    }
}
