//! gvmctl: talk to gvmd. `main` parses the arguments and hands each subcommand to its
//! own module; errors end as one line on stderr and a non-zero exit code.

mod agents;
mod approvals;
mod audit;
mod changes;
mod fit;
mod init;
mod output;
mod policy;
mod reload;
mod run;
mod status;
mod suggest;
mod versions;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// gvmctl — control gvm, the governance runtime for AI agents.
///
/// gvmctl talks to gvmd over its control socket. Root and members of the gvm-admin
/// group may use it.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Examples:\n  gvmctl status\n  gvmctl start invoices && journalctl -u gvm-agent@invoices -f\n  gvmctl audit log --profile invoices --since 1h\n  gvmctl audit verify\n  gvmctl reload"
)]
struct Cli {
    /// gvmd's control socket.
    #[arg(long, global = true, value_name = "PATH", env = "GVM_SOCKET", default_value = "/run/gvm/gvmd.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show whether gvmd runs, its agents (busiest first), the profiles that need a
    /// look, and the files it refused.
    #[command(
        after_help = "One line per agent that is not stopped, the busiest first: most requests since the agent\nstarted (allowed + denied + held, the ALLOW/DENY/HOLD column). Profiles with nothing to\nsay (in force, no agent running, no drift, watch or limits hit) are summed up in one line\nwhen there are more than 10 profiles; --all lists every profile and agent.\n\nLines fit the terminal: $COLUMNS, else the terminal's width. Columns that say nothing\n(all `-` or `0`) are left out first, then long ones cut (…), then the least needed left\nout (PID, RESTARTS, LAST EXIT, MEMORY, UP...); nothing\nis cut when the output is not a terminal and COLUMNS is unset. --json is never cut.\n\nExamples:\n  gvmctl status\n  gvmctl status --all\n  gvmctl status invoices\n  gvmctl status --json | jq '.agents[] | select(.state == \"failed\")'"
    )]
    Status {
        /// Only this profile (and its agent), with what of it waits for a human.
        profile: Option<String>,
        /// Every profile and every agent, stopped ones included.
        #[arg(long)]
        all: bool,
        /// Print JSON for scripts instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Start a profile's agent (its `[agent] command`, in its sandbox).
    Start {
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a profile's agent (SIGTERM, then SIGKILL after 20 s).
    Stop {
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// Restart a profile's agent (picks up changes to its [agent] section).
    Restart {
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-read the profiles now (as SIGHUP does). Exits 1 when a file was refused.
    Reload {
        /// Show what would change for every profile (and which files would be refused)
        /// without applying anything.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run a one-off command in a fresh instance of a profile's sandbox, with this
    /// terminal attached; exits with the command's status and prints a summary.
    #[command(
        after_help = "Examples:\n  gvmctl run --profile invoices -- curl -s https://api.example.com/v1/status\n  gvmctl run --profile invoices --ephemeral --timeout 5m --workspace /srv/in:ro -- ./convert.sh\n\nThe command's network traffic is decided and audited as the profile's; its writes to\noverlay workspaces are kept for review (`gvmctl changes invoices`). Without --ephemeral,\none instance of a profile runs at a time and shares the agent's home and overlays.\n\n--ephemeral: a fresh instance of its own, several at once and beside the profile's agent.\nSame user, network namespace, gateway, rules and audit log as the profile; its own pid\nnamespace, cgroup, a throwaway home and its own overlay upper dirs (the profile's rw\nworkspaces become overlays too). When it exits or times out, everything of it is killed\nand removed; if it changed files, the run is kept for review under its id:\n  gvmctl runs                          # runs going on and kept\n  gvmctl changes --run ID              # what it changed;  gvmctl diff --run ID [PATH]\n  gvmctl apply --run ID PATH... | --all   (undo: gvmctl rollback --run ID --applied A)\n  gvmctl discard --run ID              # drop the run and every change it kept\nA run that changed nothing leaves nothing behind."
    )]
    Run {
        /// The profile whose sandbox and rules apply.
        #[arg(long, short)]
        profile: String,
        /// Allow every request and record what enforce mode would have done.
        #[arg(long, conflicts_with = "ephemeral")]
        watch: bool,
        /// A fresh, throwaway instance of its own (see below).
        #[arg(long)]
        ephemeral: bool,
        /// With --ephemeral: kill the whole instance after this long (`90s`, `5m`, `1h`).
        #[arg(long, value_name = "DURATION", requires = "ephemeral")]
        timeout: Option<String>,
        /// With --ephemeral: one more workspace, `DIR:overlay` (writes kept for review) or
        /// `DIR:ro`; repeat for several. Also changes the mode of a profile workspace.
        #[arg(long, value_name = "DIR:MODE", requires = "ephemeral")]
        workspace: Vec<String>,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// List the ephemeral runs going on and those kept for review (they changed files).
    #[command(
        after_help = "Each kept run holds its own overlay changes until discarded:\n  gvmctl changes --run ID    gvmctl apply --run ID PATH...    gvmctl discard --run ID"
    )]
    Runs {
        #[arg(long)]
        json: bool,
    },
    /// List what waits for a human: held requests and pending file changes.
    ///
    /// Examples:
    ///   gvmctl approvals                  # ID, PROFILE, AGE, WHAT
    ///   gvmctl approvals --follow         # print new items (and those that leave) until Ctrl-C
    ///   gvmctl approvals --json --follow  # one JSON object per line
    #[command(verbatim_doc_comment)]
    Approvals {
        #[arg(long)]
        json: bool,
        /// Poll every second; print each new item once, and each item that leaves the queue.
        #[arg(long)]
        follow: bool,
    },
    /// Approve an item: a held request is forwarded, a file change applied.
    ///
    /// Examples:
    ///   gvmctl approve 17
    ///   gvmctl approve 17 --always   # also add an allow rule for exactly this
    ///                                # method, host, port and path to the profile
    #[command(verbatim_doc_comment)]
    Approve {
        /// The item's ID, from `gvmctl approvals` (or the notice that named it).
        id: u64,
        /// Write the narrowest rule that allows the same request next time (requests only;
        /// the profile file keeps its comments, the old version stays as FILE.bak).
        #[arg(long)]
        always: bool,
        #[arg(long)]
        json: bool,
    },
    /// Deny an item: a held request gets a 403 saying so, a file change is not applied.
    ///
    /// Examples:
    ///   gvmctl deny 17
    ///   gvmctl deny 17 --always      # also add a deny rule for exactly this request
    #[command(verbatim_doc_comment)]
    Deny {
        /// The item's ID, from `gvmctl approvals`.
        id: u64,
        /// Write the narrowest rule that denies the same request next time.
        #[arg(long)]
        always: bool,
        #[arg(long)]
        json: bool,
    },
    /// What the agent wrote in its overlay workspaces and not yet applied: added,
    /// modified, deleted and renamed entries, each classified by the profile's [files].
    #[command(
        after_help = "Classes: auto_apply (new files matching [files] auto_apply: `gvmctl apply P` takes them),\nreview (needs `gvmctl apply P PATH` or `gvmctl approve ID`), discard (never applied),\nrefused (symlinks, hard links, devices, FIFOs, setuid files: never applied).\n\nExample:\n  gvmctl changes invoices && gvmctl diff invoices reports/q3.csv"
    )]
    Changes {
        #[arg(required_unless_present = "run")]
        profile: Option<String>,
        /// An ephemeral run's changes instead of a profile's (`gvmctl runs` lists them).
        #[arg(long, value_name = "ID", conflicts_with = "profile")]
        run: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Unified diff of the agent's changes against the real workspace (sizes and hashes
    /// for binary files), paged like git when stdout is a terminal.
    Diff {
        #[arg(required_unless_present = "run")]
        profile: Option<String>,
        /// An ephemeral run's changes instead of a profile's (then the positional
        /// argument is the PATH).
        #[arg(long, value_name = "ID")]
        run: Option<String>,
        /// One path, relative to its workspace or absolute; default: every change.
        path: Option<String>,
    },
    /// Bring the agent's changes into the real workspace, each file atomically, with
    /// pre-images kept so `gvmctl rollback P --applied ID` can undo it.
    #[command(
        after_help = "Without PATH or --all, applies the new files matching [files] auto_apply.\nModifying or deleting an existing file needs its PATH (or `gvmctl approve ID`).\nSymlinks, hard links, devices, FIFOs, sockets and setuid files are never applied.\n\nExamples:\n  gvmctl apply invoices --dry-run --all\n  gvmctl apply invoices reports/q3.csv ledger.csv"
    )]
    Apply {
        #[arg(required_unless_present = "run")]
        profile: Option<String>,
        /// Apply from an ephemeral run instead of a profile's agent (then every
        /// positional argument is a PATH).
        #[arg(long, value_name = "ID")]
        run: Option<String>,
        /// Paths to apply, relative to their workspace or absolute.
        paths: Vec<String>,
        /// Every change marked review or auto_apply (not discard or refused).
        #[arg(long)]
        all: bool,
        /// Show what would be applied; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Drop some of the agent's unapplied changes from its overlay (the real files stay);
    /// `--run ID` without paths drops a kept ephemeral run whole.
    Discard {
        #[arg(required_unless_present = "run")]
        profile: Option<String>,
        /// An ephemeral run: without PATH, the run and every change it kept are removed
        /// (then every positional argument is a PATH).
        #[arg(long, value_name = "ID")]
        run: Option<String>,
        #[arg(required_unless_present = "run")]
        paths: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Undo: an apply in the real workspace (--applied ID), or the agent's unapplied
    /// changes back to a checkpoint (--to), or all of them (neither).
    #[command(
        after_help = "Examples:\n  gvmctl applied invoices                      # find the apply's ID\n  gvmctl rollback invoices --applied a-20261207T083000Z-1f2e\n  gvmctl rollback invoices --to before-import\n  gvmctl rollback invoices                     # discard every unapplied change"
    )]
    Rollback {
        #[arg(required_unless_present = "run")]
        profile: Option<String>,
        /// An ephemeral run's apply (with --applied; `gvmctl applied --run ID`).
        #[arg(long, value_name = "RUN", conflicts_with = "profile", requires = "applied")]
        run: Option<String>,
        /// Restore the real files an apply changed, byte for byte.
        #[arg(long, value_name = "ID")]
        applied: Option<String>,
        /// Reset the agent's overlay to this checkpoint (ID or name).
        #[arg(long, value_name = "CHECKPOINT")]
        to: Option<String>,
        /// With --applied: restore files changed again since the apply, too.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Snapshot the agent's unapplied changes, to roll back to later.
    Checkpoint {
        profile: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List a profile's checkpoints.
    Checkpoints {
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// List a profile's applies, newest first (IDs for `rollback --applied`).
    Applied {
        #[arg(required_unless_present = "run")]
        profile: Option<String>,
        /// What was applied from an ephemeral run.
        #[arg(long, value_name = "ID", conflicts_with = "profile")]
        run: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Switch one profile to watch mode (its requests allowed and recorded with what
    /// enforce mode would do) or back, without restarting its agent.
    #[command(
        after_help = "The sandbox stays as it is (files, system calls, deny_read); only network decisions change.\nThe other profiles are not touched. A gvmd restart puts every profile back to its file's mode.\n\nExamples:\n  gvmctl watch invoices on --for 1h\n  gvmctl watch invoices off\n  gvmctl status invoices          # shows the time left"
    )]
    Watch {
        profile: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// With `on`: end by itself after this long (30s, 15m, 1h, 2d).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Suggest the rules that would allow what a profile's agent was seen doing (in
    /// watch mode, or refused by the default), as a diff of its profile file.
    #[command(after_help = suggest::HELP)]
    Suggest {
        profile: String,
        /// Only events since this time (2026-11-23T10:00:00Z) or within this age (30m, 2h, 7d).
        #[arg(long, value_name = "T", conflicts_with = "run")]
        since: Option<String>,
        /// Only one run's events: the seq of its run_started event (`gvmctl audit log`).
        #[arg(long, value_name = "SEQ")]
        run: Option<u64>,
        /// Write the change into the profile file (kept: comments, FILE.bak) and reload.
        #[arg(long)]
        apply: bool,
        /// With --apply: refuse unless the file is still the one the dry run showed
        /// (its `sha256:...`).
        #[arg(long, value_name = "SHA256", requires = "apply")]
        expect: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a new profile from a shipped template: CONFIG_DIR/profiles/PROFILE.toml.
    ///
    /// Templates: hermes (Hermes Agent), generic (any OpenAI-compatible agent), and
    /// the others listed under --from. The file is validated before it is written and
    /// never written over without --force.
    /// With a terminal it asks for the workspace (Enter keeps the template's); without
    /// one it asks nothing. gvmd is not asked: run `gvmctl reload` afterwards.
    #[command(
        after_help = "Examples:\n  gvmctl init hermes --from hermes --workspace /srv/hermes\n  gvmctl init mybot --from generic --workspace /srv/mybot --force"
    )]
    Init {
        /// The new profile's name (a-z, 0-9, `_`, `-`; the agent runs as gvm-PROFILE).
        profile: String,
        /// The shipped template (policies/ of the source tree).
        #[arg(long, value_name = "TEMPLATE",
              value_parser = clap::builder::PossibleValuesParser::new(init::TEMPLATES.iter().map(|t| t.0)))]
        from: String,
        /// The directory the agent works in (an overlay: its writes wait for review).
        #[arg(long, value_name = "DIR")]
        workspace: Option<PathBuf>,
        /// Write over an existing profile file.
        #[arg(long)]
        force: bool,
        /// gvmd's config directory (gvmd --config-dir).
        #[arg(long, value_name = "DIR", env = "GVM_CONFIG_DIR", default_value = "/etc/gvm")]
        config_dir: PathBuf,
        /// Print JSON for scripts (the file, warnings, missing secret files, next commands).
        #[arg(long)]
        json: bool,
    },
    /// Read and check the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check a profile file, or explain how a profile in force decides a request.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Parse and validate a profile file without gvmd; print errors with
    /// file:line:column and warnings (rules that can never match, ...). Exit 1 on errors.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// How the profile in force decides METHOD URL, by which rule (file:line), and why.
    /// With --at SEQ: the request of decision event SEQ, under the version it was
    /// decided under and under the version in force (as `audit log --explain SEQ`).
    Explain {
        #[arg(required_unless_present = "at")]
        profile: Option<String>,
        /// GET, POST, ... (case-insensitive)
        #[arg(required_unless_present = "at")]
        method: Option<String>,
        /// e.g. https://api.stripe.com/v1/charges
        #[arg(required_unless_present = "at")]
        url: Option<String>,
        #[arg(long, value_name = "SEQ", conflicts_with_all = ["profile", "method", "url"])]
        at: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// The versions of a profile that came into force: when, how, by whom.
    History {
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// Unified diff between versions (hashes or prefixes of 6+ hex digits). No
    /// version: the one in force against the file on disk (what a reload would do);
    /// one: it against the one in force; two: the first against the second.
    Diff { profile: String, v1: Option<String>, v2: Option<String> },
    /// Put an earlier version back in force: its bytes are written to the profile file
    /// (the current text kept as FILE.bak), checked and reloaded. Default: the version
    /// in force before the current one.
    Rollback {
        profile: String,
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// List audit events, oldest first.
    Log {
        /// Only events of this profile.
        #[arg(long, value_name = "P")]
        profile: Option<String>,
        /// Only events since this time (2026-11-23T10:00:00Z) or within this age (30m, 2h, 7d).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// At most this many events (the newest).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: u32,
        /// Decide the request of decision event SEQ again under the policy version it
        /// was made under, and say whether the version in force today differs.
        #[arg(long, value_name = "SEQ", conflicts_with_all = ["profile", "since"])]
        explain: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Re-walk the whole hash chain and every signed checkpoint; exit 0 when intact,
    /// 1 with the first bad sequence number when not.
    Verify {
        /// Verify this state directory's database directly, without gvmd.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = gvm_api::client::Client::new(cli.socket);
    match cli.command {
        Command::Status { profile, all, json } => {
            status::run(&client, profile.as_deref(), all, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Reload { dry_run: false, json } => reload::run(&client, json),
        Command::Reload { dry_run: true, json } => versions::dry_run(&client, json),
        Command::Start { profile, json } => {
            agents::act(&client, &profile, gvm_api::AgentVerb::Start, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Stop { profile, json } => {
            agents::act(&client, &profile, gvm_api::AgentVerb::Stop, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Restart { profile, json } => {
            agents::act(&client, &profile, gvm_api::AgentVerb::Restart, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Run { profile, watch, ephemeral, timeout, workspace, argv } => {
            run::run(&client, run::Args { profile, watch, ephemeral, timeout, workspaces: workspace, argv })
        }
        Command::Runs { json } => run::list(&client, json),
        Command::Approvals { json, follow: false } => approvals::list(&client, json).map(|()| ExitCode::SUCCESS),
        Command::Approvals { json, follow: true } => approvals::follow(&client, json).map(|()| ExitCode::SUCCESS),
        Command::Approve { id, always, json } => {
            approvals::answer(&client, id, true, always, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Deny { id, always, json } => {
            approvals::answer(&client, id, false, always, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Watch { profile, state, duration, json } => {
            watch::run(&client, &profile, state == "on", duration.as_deref(), json).map(|()| ExitCode::SUCCESS)
        }
        Command::Changes { profile, run, json } => changes::changes(&client, &changes::Target::of(profile, run), json),
        Command::Diff { profile, run, path } => {
            let (target, mut paths) = changes::Target::with_paths(profile, run, path.into_iter().collect());
            changes::diff(&client, &target, paths.pop().as_deref())
        }
        Command::Apply { profile, run, paths, all, dry_run, json } => {
            let (target, paths) = changes::Target::with_paths(profile, run, paths);
            changes::apply(&client, changes::ApplyArgs { target: &target, paths, all, dry_run, json })
        }
        Command::Discard { profile, run, paths, json } => {
            let (target, paths) = changes::Target::with_paths(profile, run, paths);
            changes::discard(&client, &target, paths, json)
        }
        Command::Rollback { profile, run, applied, to, force, json } => {
            changes::rollback(&client, &changes::Target::of(profile, run), applied, to, force, json)
        }
        Command::Checkpoint { profile, name, json } => changes::checkpoint(&client, &profile, name, json),
        Command::Checkpoints { profile, json } => changes::checkpoints(&client, &profile, json),
        Command::Applied { profile, run, json } => changes::applied(&client, &changes::Target::of(profile, run), json),
        Command::Audit(AuditCommand::Log { explain: Some(seq), json, .. }) => {
            versions::explain_event(&client, seq, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Suggest { profile, since, run, apply, expect, json } => {
            suggest::run(&client, suggest::Args { profile, since, run, apply, expect, json })
        }
        Command::Audit(AuditCommand::Log { profile, since, limit, explain: None, json }) => {
            let since = since.map(|s| audit::parse_since(&s, time::OffsetDateTime::now_utc())).transpose()?;
            let query = gvm_api::EventsQuery { profile, since, after_seq: None, limit: Some(limit) };
            audit::log(&client, query, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify { state_dir, json }) => audit::verify(&client, state_dir.as_deref(), json),
        Command::Policy(PolicyCommand::Check { file, json }) => policy::check(&file, json),
        Command::Init { profile, from, workspace, force, config_dir, json } => {
            init::run(init::Args { profile, from, workspace, force, config_dir, json })
        }
        Command::Policy(PolicyCommand::Explain { at: Some(seq), json, .. }) => {
            versions::explain_event(&client, seq, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Explain { profile, method, url, at: None, json }) => {
            let (Some(profile), Some(method), Some(url)) = (profile, method, url) else {
                anyhow::bail!("give PROFILE METHOD URL, or --at SEQ");
            };
            policy::explain(&client, profile, method, url, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::History { profile, json }) => {
            versions::history(&client, &profile, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Diff { profile, v1, v2 }) => {
            versions::diff(&client, &profile, v1.as_deref(), v2.as_deref())
        }
        Command::Policy(PolicyCommand::Rollback { profile, to, json }) => {
            versions::rollback(&client, &profile, to, json).map(|()| ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gvmctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
