//! From a [`LaunchPlan`] (what gvmd prepared) to a [`gvm_sandbox::LaunchSpec`] (what the
//! launcher builds). One function, used by `gvmctl run` (inside gvmd) and by the
//! launcher of the systemd unit and of foreground mode (`gvmd launch`).

use std::path::PathBuf;

use gvm_api::LaunchPlan;
use gvm_sandbox::{AgentPaths, LaunchSpec, Limits, Stdio, Workspace};
use nix::unistd::{Gid, Uid};

/// `argv` overrides the profile's `[agent] command` when not empty. `own_cgroup`: give
/// the agent a cgroup of its own with the profile's limits (false inside a systemd unit,
/// whose properties carry them).
pub fn spec_from_plan(
    plan: &LaunchPlan,
    argv: &[String],
    stdio: Stdio,
    own_cgroup: bool,
    die_with_parent: bool,
) -> Result<LaunchSpec, String> {
    let argv: Vec<String> = if argv.is_empty() { plan.command.clone().unwrap_or_default() } else { argv.to_vec() };
    let Some((command, args)) = argv.split_first() else {
        return Err(format!(
            "profile {} has no [agent] command and none was given — add `command = [...]` to its [agent] section or pass one after `--`",
            plan.profile
        ));
    };
    let profile = plan.profile.clone();
    let mut paths = AgentPaths::new(&PathBuf::from(&plan.state_dir), &PathBuf::from(&plan.runtime_dir), &profile);
    if !plan.config_dir.is_empty() {
        paths = paths.with_config_dir(&PathBuf::from(&plan.config_dir));
    }
    Ok(LaunchSpec {
        profile,
        uid: Uid::from_raw(plan.uid),
        gid: Gid::from_raw(plan.gid),
        netns: PathBuf::from(&plan.netns),
        command: command.clone(),
        args: args.to_vec(),
        env: plan.env.clone(),
        workspaces: plan
            .workspaces
            .iter()
            .map(|w| Workspace { path: PathBuf::from(&w.path), mode: w.mode, id: w.id.clone() })
            .collect(),
        deny_read: plan.deny_read.clone(),
        paths,
        ca_bundle: Some(PathBuf::from(&plan.ca_bundle)),
        limits: Limits {
            memory_max: plan.memory_max,
            tasks_max: plan.tasks_max.map(u64::from),
            cpu_percent: plan.cpu_quota,
        },
        proxy_port: plan.proxy_port,
        stdio,
        cwd: None,
        landlock: true,
        own_cgroup,
        die_with_parent,
    })
}
