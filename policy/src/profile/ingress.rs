//! `[agent] serve` and `[ingress]`, read and checked (the types and the decision are in
//! `crate::ingress`).

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::ingress::{Ingress, IngressAction, IngressRule, ANY_CALLER};

use super::validate::Validator;
use gvm_api::ProfileName;

/// Ports the gateway itself holds inside every netns (proxy, transparent, DNS: the
/// defaults of `gvm_sandbox::GatewayPorts`, which gvmd uses): an agent cannot serve on them.
const GATEWAY_PORTS: [u16; 3] = [3128, 3129, 53];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngress {
    pub(super) allow: Option<Vec<RawIngressRule>>,
    pub(super) deny: Option<Vec<RawIngressRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngressRule {
    pub(super) from: Spanned<String>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) comment: Option<String>,
}

type V<T> = Result<T, crate::diag::Diagnostic>;

impl Validator<'_> {
    /// `[agent] serve = [8080, ...]`.
    pub(super) fn serve(&self, raw: Option<Spanned<Vec<Spanned<i64>>>>) -> V<Vec<u16>> {
        let mut out = Vec::new();
        for (i, p) in raw.map(Spanned::into_inner).unwrap_or_default().into_iter().enumerate() {
            let field = format!("agent.serve[{i}]");
            let port = match u16::try_from(*p.get_ref()) {
                Ok(n) if n > 0 => n,
                _ => return Err(self.err(p.span(), field, "a port must be between 1 and 65535")),
            };
            if GATEWAY_PORTS.contains(&port) {
                return Err(self
                    .err(
                        p.span(),
                        field,
                        format!("port {port} is gvm's own inside every sandbox (proxy 3128, transparent 3129, DNS 53)"),
                    )
                    .fix("let the agent listen on another port, e.g. 8080"));
            }
            if out.contains(&port) {
                return Err(self.err(p.span(), field, format!("port {port} is listed twice")));
            }
            out.push(port);
        }
        Ok(out)
    }

    /// `[ingress]`, checked against `serve`.
    pub(super) fn ingress(&self, raw: Option<Spanned<RawIngress>>, serve: Vec<u16>) -> V<Ingress> {
        let Some(raw) = raw else { return Ok(Ingress { serve, rules: Vec::new() }) };
        let span = raw.span();
        let raw = raw.into_inner();
        let mut rules = Vec::new();
        for (action, list) in [(IngressAction::Deny, raw.deny), (IngressAction::Allow, raw.allow)] {
            for (i, r) in list.unwrap_or_default().into_iter().enumerate() {
                rules.push(self.ingress_rule(action, i, r, &serve)?);
            }
        }
        if serve.is_empty() && rules.iter().any(|r| r.action == IngressAction::Allow) {
            return Err(self
                .err(span, "ingress", "[ingress] lets other agents call this one, but it serves no port")
                .fix("list the ports the agent listens on: [agent] serve = [8080]"));
        }
        Ok(Ingress { serve, rules })
    }

    fn ingress_rule(&self, action: IngressAction, i: usize, r: RawIngressRule, serve: &[u16]) -> V<IngressRule> {
        let f = |name: &str| format!("ingress.{}[{i}].{name}", action.as_str());
        let from = r.from.get_ref();
        if from != ANY_CALLER {
            ProfileName::parse(from).map_err(|e| {
                self.err(r.from.span(), f("from"), e.to_string())
                    .fix("write the calling profile's name (its file name without .toml), or \"*\" for any profile")
            })?;
        }
        let (line, _) = crate::line_col(self.text, r.from.span().start);
        let port = match &r.port {
            None => None,
            Some(p) => {
                let port = self.port(p, f("port"))?;
                if !serve.contains(&port) {
                    return Err(self
                        .err(p.span(), f("port"), format!("port {port} is not in [agent] serve ({serve:?})"))
                        .fix(format!("add it: [agent] serve = [{port}], or name a served port")));
                }
                Some(port)
            }
        };
        let methods = match &r.methods {
            None => Vec::new(),
            Some(ms) => self.methods(ms, &f("methods"))?,
        };
        let path = self.path(r.path.as_ref(), &f("path"))?;
        let _ = r.comment;
        Ok(IngressRule { action, index: i, line, from: from.clone(), port, methods, path })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{parse_profile, Call, IngressAction};

    const FILE: &str = "/etc/gvm/profiles/researcher.toml";

    #[test]
    fn serve_and_ingress_load_and_decide() {
        let text = r#"[agent]
serve = [8080, 9000]

[[ingress.allow]]
from = "planner"
port = 8080
methods = ["POST"]
path = "/tasks/**"

[[ingress.deny]]
from = "*"
path = "/admin/**"
"#;
        let p = parse_profile(Path::new(FILE), text).unwrap();
        assert_eq!(p.agent.serve, [8080, 9000]);
        assert_eq!(p.ingress.serve, [8080, 9000]);
        assert_eq!(p.ingress.rules.len(), 2);
        assert_eq!(p.ingress.rules[0].action, IngressAction::Deny, "deny tables come first");
        assert_eq!((p.ingress.rules[1].field(), p.ingress.rules[1].line), ("ingress.allow[0]".to_string(), 5));
        let call = Call { from: "planner", port: 8080, method: "POST", path: "/tasks/7" };
        let d = p.ingress.decide("researcher", &p.file, &call);
        assert!(d.allow);
        assert_eq!(d.rule.as_deref(), Some("ingress.allow[0] (/etc/gvm/profiles/researcher.toml:5)"));
        // No [ingress]: nobody may call, even a served port.
        let q = parse_profile(Path::new(FILE), "[agent]\nserve = [8080]\n").unwrap();
        assert!(!q.ingress.decide("researcher", &q.file, &call).allow);
    }

    #[test]
    fn bad_serve_and_ingress_are_refused_with_line_field_and_fix() {
        let cases: &[(&str, u32, &str, &str)] = &[
            ("[agent]\nserve = [0]\n", 2, "agent.serve[0]", "between 1 and 65535"),
            ("[agent]\nserve = [8080, 8080]\n", 2, "agent.serve[1]", "listed twice"),
            ("[agent]\nserve = [3128]\n", 2, "agent.serve[0]", "gvm's own"),
            (
                "[agent]\nserve = [8080]\n\n[[ingress.allow]]\nfrom = \"Planner\"\n",
                5,
                "ingress.allow[0].from",
                "not a valid profile name",
            ),
            (
                "[agent]\nserve = [8080]\n\n[[ingress.allow]]\nfrom = \"a\"\nport = 9090\n",
                6,
                "ingress.allow[0].port",
                "not in [agent] serve",
            ),
            (
                "[agent]\nserve = [8080]\n\n[[ingress.allow]]\nfrom = \"a\"\nmethods = [\"post\"]\n",
                6,
                "ingress.allow[0].methods[0]",
                "not an HTTP method",
            ),
            (
                "[agent]\nserve = [8080]\n\n[[ingress.deny]]\nfrom = \"a\"\npath = \"tasks\"\n",
                6,
                "ingress.deny[0].path",
                "start with `/`",
            ),
            ("[[ingress.allow]]\nfrom = \"a\"\n", 1, "ingress", "serves no port"),
            (
                "[agent]\nserve = [8080]\n\n[[ingress.allow]]\nfrom = \"a\"\nhost = \"x\"\n",
                6,
                "ingress.allow",
                "unknown field `host`",
            ),
        ];
        for (text, line, field, message) in cases {
            let e = parse_profile(Path::new(FILE), text).unwrap_err();
            assert_eq!(e.line, Some(*line), "{text}: {e}");
            assert!(e.field.as_deref().is_some_and(|f| f.starts_with(field)), "{text}: {e}");
            assert!(e.to_string().contains(message), "{text}: {e}");
        }
        let e =
            parse_profile(Path::new(FILE), "[agent]\nserve = [8080]\n\n[[ingress.allow]]\nfrom = \"a\"\nport = 9090\n")
                .unwrap_err();
        assert!(e.fix.unwrap().contains("serve = [9090]"));
    }
}
