//! gvm's boundary (docs/design.md, "The boundary"): per-profile users and network namespaces
//! prepared by gvmd, and the launcher that starts an agent inside them.
//!
//! - [`user`]: `gvm-<profile>` system users.
//! - [`netns`]: the profile's network namespace, its nft rules, listeners opened inside it.
//! - [`state`]: the agent's home and overlay upper dirs on disk.
//! - [`launch`]: the launcher (mount view, pid/ipc/uts/cgroup namespaces, uid drop,
//!   capabilities, no_new_privs, landlock, seccomp, a small init).
//! - [`rules`]: every rule the above apply, as data, in one place.
//! - `sys` (crate-private): the only module with `unsafe` blocks besides the three calls of
//!   its `unsafe fn fork` in `build.rs`, each with the SAFETY argument its caller owes.
#![deny(unsafe_code)]

pub mod build;
pub mod cgroup;
pub mod confine;
pub mod deny;
pub mod error;
pub mod netns;
pub(crate) mod plan;
pub mod rules;
pub mod state;
pub(crate) mod sys;
pub mod user;

pub use build::{launch, Exit, LaunchSpec, Sandbox, Stdio, Workspace, WorkspaceMode};
pub use cgroup::{remove_stale_cgroups, Limits};
pub use error::{Error, Result};
pub use netns::{GatewayPorts, Netns};
pub use state::AgentPaths;
pub use user::{ensure_user, remove_user, ProfileName};
