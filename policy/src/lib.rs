//! gvm-policy: profiles, parsed with precise diagnostics, compiled into matchers,
//! and decided purely.
//!
//! * [`parse_profile`] / [`load_profile`] / [`load_dir`] read `<config>/profiles/*.toml`
//!   into a [`Profile`], or refuse it with a [`Diagnostic`] (`file:line:col: `field`:
//!   message — fix`).
//! * [`Host`] is the one normalised host type; the gateway builds it at the edge.
//! * [`CompiledPolicy::decide`] is a pure function of (compiled rules, request facts,
//!   `now`): no I/O, no allocation. [`CompiledPolicy::decide_connect`] says whether a
//!   tunnel can be decided without interception; [`CompiledPolicy::explain`] says why.
//! * [`check`] lists warnings for `gvmctl policy check`.
//!
//! This crate never reads secrets, never resolves DNS and never touches the network:
//! it trusts nothing it is given, and refuses ambiguity rather than guess (see
//! `docs/policy.md`).

#![forbid(unsafe_code)]

mod budget;
mod check;
mod compiled;
mod diag;
mod host;
mod ingress;
mod mcp;
mod path;
mod profile;
mod rule;
mod tier;
mod units;

pub use budget::{Budget, BudgetPer, Money, OnExhausted};
pub use check::check;
pub use compiled::{
    CompiledPolicy, ConnectPlan, ConsideredRule, Decision, Explanation, Request, RuleOutcome, RuleRef, Scheme, Verdict,
};
pub use diag::{line_col, Diagnostic, Warning};
pub use gvm_api::{ProfileName, ProfileNameError, MAX_PROFILE_NAME};
pub use host::{CharName, Cidr, CidrError, Host, HostError};
pub use ingress::{Call, Ingress, IngressAction, IngressDecision, IngressRule, ANY_CALLER};
pub use mcp::{glob as mcp_glob, McpTools};
pub use path::{PathError, PathPattern};
pub use profile::{
    load_dir, load_profile, parse_profile, validate_glob, version_of, Agent, DefaultAction, Files, Limits, LoadOutcome,
    Mode, Network, Profile, SecretSource, SecretUse, Workspace, WorkspaceMode, DEFAULT_HOLD_TIMEOUT, RESERVED_ENV,
};
pub use rule::{Action, HostPattern, HostPatternError, InjectError, InjectPart, Injection, Rule};
pub use tier::{Preset, Reach, Tier, TierOverride};
pub use units::{parse_cpu_quota, parse_duration, parse_size, Rate, RatePer, UnitError};
