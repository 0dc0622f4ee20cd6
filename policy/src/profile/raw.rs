//! The raw schema: what serde reads from a profile file, every value with its byte span
//! (`serde_spanned::Spanned`) and unknown fields refused. Nothing here is checked beyond
//! its TOML type; [`super::validate`] turns it into the public types.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::budget::{BudgetPer, OnExhausted};
use crate::rule::Action;

use super::{DefaultAction, Mode, WorkspaceMode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    pub(super) agent: Option<RawAgent>,
    pub(super) network: Option<RawNetwork>,
    pub(super) secrets: Option<BTreeMap<Spanned<String>, Spanned<RawSecret>>>,
    pub(super) files: Option<RawFiles>,
    pub(super) limits: Option<RawLimits>,
    pub(super) budget: Option<Spanned<RawBudget>>,
    pub(super) ingress: Option<Spanned<super::ingress::RawIngress>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub(super) requests: Option<Spanned<i64>>,
    pub(super) money: Option<Spanned<f64>>,
    pub(super) per: BudgetPer,
    pub(super) on_exhausted: Option<OnExhausted>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) connections: Option<Spanned<i64>>,
    pub(super) held_requests: Option<Spanned<i64>>,
    pub(super) dns_queries: Option<Spanned<String>>,
    pub(super) decisions: Option<Spanned<String>>,
    pub(super) request_body_per_sec: Option<Spanned<StrOrInt>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) command: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) mode: Option<Mode>,
    pub(super) workspaces: Option<Vec<Spanned<RawWorkspace>>>,
    pub(super) env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub(super) memory_max: Option<Spanned<StrOrInt>>,
    pub(super) tasks_max: Option<Spanned<i64>>,
    pub(super) cpu_quota: Option<Spanned<String>>,
    pub(super) autostart: Option<bool>,
    pub(super) tier: Option<Spanned<String>>,
    pub(super) tier_override: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) serve: Option<Spanned<Vec<Spanned<i64>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkspace {
    pub(super) path: Spanned<String>,
    #[serde(default)]
    pub(super) mode: WorkspaceMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) default: Option<DefaultAction>,
    pub(super) hold_timeout: Option<Spanned<String>>,
    pub(super) rule: Option<Vec<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) host: Spanned<String>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) ports: Option<Spanned<Vec<Spanned<i64>>>>,
    pub(super) methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) action: Spanned<Action>,
    pub(super) rate: Option<Spanned<String>>,
    pub(super) budget: Option<Spanned<RawBudget>>,
    pub(super) cost: Option<Spanned<f64>>,
    pub(super) inject: Option<Spanned<RawInject>>,
    pub(super) intercept: Option<Spanned<bool>>,
    pub(super) comment: Option<String>,
    pub(super) name: Option<Spanned<String>>,
    pub(super) mcp: Option<Spanned<RawMcp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcp {
    pub(super) tools: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) deny_tools: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) filter_list: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInject {
    pub(super) header: Spanned<String>,
    pub(super) value: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    pub(super) file: Option<Spanned<String>>,
    pub(super) credential: Option<Spanned<String>>,
    pub(super) env: Option<Spanned<String>>,
    pub(super) hosts: Option<Vec<Spanned<String>>>,
    pub(super) body: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFiles {
    pub(super) auto_apply: Option<Vec<Spanned<String>>>,
    pub(super) review: Option<Vec<Spanned<String>>>,
    pub(super) discard: Option<Vec<Spanned<String>>>,
    pub(super) deny_read: Option<Vec<Spanned<String>>>,
    pub(super) scan_ignore: Option<Vec<Spanned<String>>>,
}

/// A TOML value that may be a string or an integer (`memory_max = "2G"` or bytes).
pub(super) enum StrOrInt {
    Str(String),
    Int(i64),
}

impl<'de> Deserialize<'de> for StrOrInt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StrOrInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512M\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Str(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}
