//! The one place the gateway talks to the audit store.

use serde_json::Value;

/// Queues one event nobody waits for (a completion record): it rides along with the
/// next commit. Lost only if gvmd dies before that commit.
pub(crate) fn append_nowait(audit: &gvm_audit::Audit, ev: gvm_audit::NewEvent) {
    if let Err(e) = audit.append_nowait(ev) {
        tracing::warn!("a completion record was not queued: {e}");
    }
}

/// Appends one event; returns its sequence number once it is durable. Every decision
/// event also goes to the log (below): the log is bounded by what the audit log is.
pub(crate) async fn append_ref(audit: &gvm_audit::Audit, ev: gvm_audit::EventRef<'_>) -> Result<u64, String> {
    match audit.append_ref(ev).await {
        Ok(a) => {
            let (profile, decision) = (ev.profile.unwrap_or(""), ev.decision.unwrap_or(""));
            log_decision(a.seq, ev.kind, profile, decision, ev.rule, ev.details);
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
    let host = if host.is_empty() { field("name") } else { host };
    let rule = rule.unwrap_or("default");
    // A folded event stands for N decisions; the log says so once.
    let times = match details.get("folded").and_then(Value::as_u64) {
        Some(n) => format!(" (x{n} since {})", field("first")),
        None => String::new(),
    };
    macro_rules! emit {
        ($level:ident) => {
            tracing::$level!(
                gvm_event_seq = seq,
                gvm_event_kind = kind,
                gvm_profile = profile,
                gvm_decision = decision,
                gvm_rule = rule,
                "{profile}: {decision} {kind} {method} {host}{path} ({rule}){times}"
            )
        };
    }
    if allowed {
        emit!(debug);
    } else {
        emit!(info);
    }
}
