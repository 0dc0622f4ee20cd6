//! `gvmd launch --profile P`: the launcher of `gvm-agent@P.service` and of gvmd's own
//! supervision in foreground mode. A short-lived root process: it asks gvmd to prepare
//! P (user, netns with the gateway inside, directories), builds the sandbox from the
//! plan, forwards SIGTERM/SIGINT/SIGHUP to the agent, and exits with the agent's status,
//! so systemd's `Restart=` and the journal see the agent itself.
//!
//! `--prepare-only` stops after the preparation (the unit's `ExecStartPre=`, which must
//! run before systemd joins the netns); `--teardown` removes the netns again (the unit's
//! `ExecStopPost=`), so a stopped agent leaves no namespace, mount or nft table behind.

use std::path::PathBuf;

use nix::sys::signal::{SigSet, Signal};

/// Why the launcher could not launch. Exit status 1; systemd logs the message.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("gvmd could not prepare profile {profile}: {source}")]
    Prepare { profile: String, source: gvm_api::client::ClientError },
    #[error("{0}")]
    Spec(String),
    #[error("the sandbox of {profile} could not start: {source}")]
    Sandbox { profile: String, source: gvm_sandbox::Error },
    #[error("cannot block signals for forwarding: {0}")]
    Signals(nix::Error),
}

#[derive(Debug)]
pub struct LaunchArgs {
    pub profile: String,
    pub socket: PathBuf,
    pub prepare_only: bool,
    /// Tear the profile down (the unit's `ExecStopPost=`) instead of launching.
    pub teardown: bool,
    /// Overrides the profile's `[agent] command` when not empty.
    pub argv: Vec<String>,
}

/// Set by gvmd's foreground supervision to its own pid: the launcher then dies with it.
pub const PARENT_ENV: &str = "GVM_LAUNCH_PARENT";

/// Runs the launcher; returns the exit code for the process.
pub fn launch(args: LaunchArgs) -> Result<i32, LaunchError> {
    if let Some(parent) = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse::<i32>().ok()) {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(LaunchError::Signals)?;
        if nix::unistd::getppid().as_raw() != parent {
            return Err(LaunchError::Spec("gvmd, which started this launcher, is gone".into()));
        }
    }
    let client = gvm_api::client::Client::new(args.socket);
    if args.teardown {
        // In ExecStopPost= systemd says how the main process ended (`exited` 1, `killed`
        // KILL): gvmd keeps it for `gvmctl status`.
        let ended = serde_json::json!({
            "exit_code": std::env::var("EXIT_CODE").ok(),
            "exit_status": std::env::var("EXIT_STATUS").ok(),
        });
        let _: serde_json::Value = client
            .post(&gvm_api::paths::teardown(&args.profile), Some(&ended))
            .map_err(|source| LaunchError::Prepare { profile: args.profile.clone(), source })?;
        return Ok(0);
    }
    let plan: gvm_api::LaunchPlan = client
        .post(&gvm_api::paths::prepare(&args.profile), None)
        .map_err(|source| LaunchError::Prepare { profile: args.profile.clone(), source })?;
    if args.prepare_only {
        return Ok(0);
    }
    // Started by systemd (gvm-agent@P.service): the unit's cgroup is delegated to us and
    // its properties hold the limits, so the agent stays in it.
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
    let spec = crate::supervisor::plan_to_spec::spec_from_plan(
        &plan,
        &args.argv,
        gvm_sandbox::Stdio::Inherit,
        !under_systemd,
        true,
    )
    .map_err(LaunchError::Spec)?;

    // Forwarded signals are blocked before the sandbox forks (it resets the mask in its
    // children) so that none is lost between the fork and the relay thread.
    let mut forwarded = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        forwarded.add(s);
    }
    forwarded.thread_block().map_err(LaunchError::Signals)?;
    let mut sandbox =
        gvm_sandbox::launch(spec).map_err(|source| LaunchError::Sandbox { profile: args.profile.clone(), source })?;
    let pid = sandbox.pid();
    std::thread::spawn(move || {
        while let Ok(sig) = forwarded.wait() {
            let _ = nix::sys::signal::kill(pid, sig);
        }
    });
    let exit = sandbox.wait().map_err(|source| LaunchError::Sandbox { profile: args.profile.clone(), source })?;
    Ok(match exit {
        gvm_sandbox::Exit::Code(c) => c,
        gvm_sandbox::Exit::Signaled(s) => 128 + s as i32,
    })
}
