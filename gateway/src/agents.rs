//! Agents calling agents: a request to `agent.<name>:<port>` is decided twice — by the
//! caller's rules (`host = "agent.<name>"`, like any host) and then by the callee's
//! `[ingress]` — and both decisions are recorded, the callee's as an `ingress` event of
//! the callee naming the caller, the caller's `http` event naming the callee.
//!
//! `agent.<label>` is never resolved and never connected to at any real address: the
//! upstream is a socket gvmd opens *inside the callee's netns* to `127.0.0.1:<port>`
//! ([`AgentDialer`], provided by gvmd; without one every call is a 502). The caller's
//! HTTPS is terminated by the gateway with a leaf for `agent.<name>` (a tunnel to an
//! agent is always intercepted); the callee is spoken to in plain HTTP over loopback in
//! its own namespace.

use std::net::{Ipv4Addr, SocketAddr};

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::answer::{Described, RespBody};
use crate::decide::ProfileState;
use crate::head::Target;
use crate::pipeline::{NotRecorded, Refusal};
use crate::Inner;

/// How the gateway reaches a port an agent serves: gvmd opens a TCP connection to
/// `127.0.0.1:port` from inside `profile`'s network namespace. `Err` is the reason the
/// caller reads (say, that the agent is not running, and how to start it).
pub trait AgentDialer: Send + Sync {
    fn dial(&self, profile: &str, port: u16) -> Result<std::net::TcpStream, String>;
}

/// The callee a host names: `agent.<label>` (exactly two labels). Such a host is never
/// resolved, whether or not a profile of that name exists.
pub(crate) fn agent_host(host: &str) -> Option<&str> {
    host.strip_prefix("agent.").filter(|l| !l.is_empty() && !l.contains('.'))
}

/// Names caller and callee in the details of every event about a call of another
/// agent, whoever decides it (the caller's rules, or the callee's ingress).
pub(crate) fn name_parties(details: &mut Value, caller: &str, host: &gvm_policy::Host) {
    if let Some(callee) = agent_host(host.as_str()) {
        details["caller"] = json!(caller);
        details["callee"] = json!(callee);
    }
}

/// What the caller's answer and event name when the callee refuses.
#[derive(Debug)]
pub(crate) struct IngressRefusal {
    pub callee: String,
    pub file: String,
    pub rule: Option<String>,
    pub details: Value,
    pub reason: String,
}

impl Inner {
    /// The callee's `[ingress]` decision on a call the caller's rules allowed; the
    /// callee's `ingress` event is durable before this returns. `Ok`: the address the
    /// upstream connection is made to inside the callee's netns.
    pub(crate) async fn ingress(
        &self,
        kind: &'static str,
        caller: &ProfileState,
        ruling: &crate::decide::Ruling,
        callee: &str,
        target: &Target,
        details: &mut Value,
    ) -> Result<SocketAddr, Refusal> {
        let deny = |details: &mut Value, reason: String| {
            Refusal::denied(kind, Some("agent-call"), std::mem::take(details), reason)
        };
        if kind != "http" {
            // Tunnels to agents are always intercepted (tunnel.rs): never spliced.
            return Err(deny(details, "a call of another agent is decided request by request, never tunnelled".into()));
        }
        if !ruling.inject.is_empty() {
            let reason = format!(
                "the rule that allows this call injects a credential ({}), and a credential never goes to another \
                 agent: remove `inject` from the rule for agent.{callee}, or give the call a rule of its own",
                ruling.inject.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(", ")
            );
            return Err(Refusal::denied(kind, ruling.rule.as_deref(), std::mem::take(details), reason));
        }
        let Some(state) = self.profile(callee) else {
            let reason = format!(
                "no profile named `{callee}` is loaded in gvmd, so `agent.{callee}` reaches nothing: check the name \
                 (the callee's profile file name without .toml) and `gvmctl status`"
            );
            return Err(deny(details, reason));
        };
        let method = details["method"].as_str().unwrap_or_default().to_string();
        let path = details["path"].as_str().unwrap_or("/").to_string();
        let call = gvm_policy::Call { from: &caller.name, port: target.port, method: &method, path: &path };
        let d = state.ingress.decide(callee, &state.file, &call);
        let mut ev = json!({
            "caller": &*caller.name, "callee": callee, "method": method, "port": target.port, "path": path,
            "via": details["via"].clone(),
        });
        state.stamp(&mut ev);
        details["ingress_rule"] = json!(d.rule);
        if d.allow {
            // Charged to the caller's `[limits] decisions`, never the callee's.
            let seq = self
                .write_charged(&caller.name, "ingress", callee, "allow", d.rule.as_deref(), &ev)
                .await
                .map_err(Refusal::Unrecorded)?
                .ok_or_else(|| {
                    Refusal::Unrecorded(NotRecorded::Store("an `allow` decision cannot be folded".into()))
                })?;
            details["ingress_seq"] = json!(seq);
            return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, target.port)));
        }
        ev["status"] = json!(403);
        ev["reason"] = json!(d.reason);
        self.write_charged(&caller.name, "ingress", callee, "deny", d.rule.as_deref(), &ev)
            .await
            .map_err(Refusal::Unrecorded)?;
        Err(Refusal::Ingress(Box::new(IngressRefusal {
            callee: callee.to_string(),
            file: state.file.display().to_string(),
            rule: d.rule,
            details: std::mem::take(details),
            reason: d.reason,
        })))
    }
}

/// 403 for a call the callee's `[ingress]` refuses: names the callee's rule (or its
/// default) and where the fix goes — the callee's file, not the caller's.
pub(crate) fn refused(caller: &str, what: &Described, r: &IngressRefusal) -> Response<RespBody> {
    let rule = r.rule.clone().unwrap_or_else(|| format!("ingress of {} (default: nobody may call)", r.callee));
    crate::answer::json_response(
        StatusCode::FORBIDDEN,
        json!({
            "error": format!("agent `{}` refused this call: {} {}", r.callee, what.method, what.url),
            "profile": caller,
            "callee": r.callee,
            "rule": rule,
            "request": { "method": what.method, "url": what.url },
            "reason": r.reason,
            "how_to_get_access": format!(
                "your own rules allow this call, the called agent's do not. Do not retry it unchanged. Ask the operator \
                 to allow it in {} ([[ingress.allow]] from = \"{caller}\"), then `gvmctl reload`.",
                r.file
            ),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::agent_host;

    #[test]
    fn only_two_label_agent_hosts_are_agents() {
        assert_eq!(agent_host("agent.researcher"), Some("researcher"));
        assert_eq!(agent_host("agent.x.example"), None);
        assert_eq!(agent_host("agent."), None);
        assert_eq!(agent_host("myagent.b"), None);
        assert_eq!(agent_host("api.example.com"), None);
    }
}
