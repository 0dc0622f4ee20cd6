//! gvmd's entry point: parse the arguments, run the daemon, map the outcome to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// gvmd — the gvm daemon: supervises sandboxed AI agents, checks every request they
/// send out against their profile, and records every decision in a tamper-evident log.
///
/// Normally started by systemd (`systemctl start gvmd`). Run it by hand with
/// `--foreground` on a machine without systemd or for development; it needs no
/// configuration to start (built-in defaults, no profiles).
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Signals: SIGHUP reloads the profiles (a refused file keeps its last good version in force); SIGTERM or SIGINT stops cleanly.\nLogs: to journald when started by systemd, else to stderr; set GVM_LOG=debug for more.\nControl it with gvmctl (`gvmctl status`)."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run in the foreground (the only mode; accepted so unit files and scripts can say so).
    #[arg(long)]
    foreground: bool,
    /// Configuration: gvmd.toml and profiles/*.toml.
    #[arg(long, value_name = "DIR", env = "GVM_CONFIG_DIR", default_value = "/etc/gvm")]
    config_dir: PathBuf,
    /// Persistent state: the audit database, keys, agents' data.
    #[arg(long, value_name = "DIR", env = "GVM_STATE_DIR", default_value = "/var/lib/gvm")]
    state_dir: PathBuf,
    /// Runtime files: the control socket gvmd.sock.
    #[arg(long, value_name = "DIR", env = "GVM_RUNTIME_DIR", default_value = "/run/gvm")]
    runtime_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Launch profile P's agent in its sandbox (what gvm-agent@P.service runs): ask
    /// gvmd to prepare P, build the sandbox, exec the agent, exit with its status.
    Launch {
        /// The profile to launch.
        #[arg(long)]
        profile: String,
        /// gvmd's control socket.
        #[arg(long, value_name = "PATH", env = "GVM_SOCKET", default_value = "/run/gvm/gvmd.sock")]
        socket: PathBuf,
        /// Only prepare the profile (user, network namespace, directories), then exit.
        #[arg(long)]
        prepare_only: bool,
        /// Remove the profile's network namespace and stop its gateway, then exit.
        #[arg(long, conflicts_with = "prepare_only")]
        teardown: bool,
        /// The command, instead of the profile's `[agent] command`.
        #[arg(last = true, value_name = "CMD")]
        argv: Vec<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    gvm_daemon::logging::init();
    if let Some(Command::Launch { profile, socket, prepare_only, teardown, argv }) = args.command {
        let launch = gvm_daemon::launch_command::LaunchArgs { profile, socket, prepare_only, teardown, argv };
        return match gvm_daemon::launch_command::launch(launch) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("gvmd launch: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // gvmd's own memory is never writable and executable; what it forks is not bound.
    match gvm_daemon::sys::mdwe::deny_write_execute_for_self() {
        Ok(()) => tracing::debug!("W^X (PR_SET_MDWE) on for gvmd, not inherited by the sandboxes it starts"),
        Err(e) => {
            tracing::info!("W^X for gvmd is not available on this kernel ({e}; needs Linux 6.6); running without it")
        }
    }
    match gvm_daemon::sys::nofile::raise_to_hard() {
        Ok(n) => tracing::debug!("descriptor limit {n}, shared out among the profiles' connections"),
        Err(e) => tracing::warn!("cannot raise the descriptor limit to its hard limit: {e}"),
    }
    // Before any thread exists: the sockets systemd kept for us across a restart.
    let stored_fds = gvm_daemon::sys::listenfds::take();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gvmd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Absolute from here on: the paths appear in status, logs and audit events.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let paths = gvm_daemon::Paths {
        config_dir: absolute(args.config_dir),
        state_dir: absolute(args.state_dir),
        runtime_dir: absolute(args.runtime_dir),
    };
    match runtime.block_on(gvm_daemon::run(paths, stored_fds)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gvmd: {e}");
            ExitCode::FAILURE
        }
    }
}
