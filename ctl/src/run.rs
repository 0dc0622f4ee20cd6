//! `gvmctl run --profile P [--watch] -- CMD ARGS...`: a one-off command in a fresh
//! instance of P's sandbox, with this terminal attached, exiting with CMD's status.
//!
//! gvmd does the privileged part: gvmctl hands it its stdin, stdout and stderr over the
//! control socket (SCM_RIGHTS) and then only relays signals (Ctrl-C, SIGTERM, SIGHUP)
//! and waits for the exit status. The command runs in a new session without this
//! terminal as its controlling tty, so it cannot push keystrokes into the shell
//! (TIOCSTI) after it exits.
//!
//! `--ephemeral` asks for a fresh instance of its own (throwaway home and overlay upper
//! dirs, own pid namespace and cgroup, `--timeout`, `--workspace DIR:overlay|ro`);
//! `gvmctl runs` lists the ephemeral runs going on and those kept for review.

use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use gvm_api::client::{Client, ClientError};
use gvm_api::{RunMessage, RunRequest, RunSignal, RunSummary};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

const FORWARDED: [Signal; 4] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT];

/// `gvmctl run`'s options.
pub struct Args {
    pub profile: String,
    pub watch: bool,
    pub ephemeral: bool,
    pub timeout: Option<String>,
    pub workspaces: Vec<String>,
    pub argv: Vec<String>,
}

pub fn run(client: &Client, a: Args) -> anyhow::Result<ExitCode> {
    if a.argv.is_empty() {
        anyhow::bail!("no command given — usage: gvmctl run --profile P -- CMD ARGS...");
    }
    let timeout_secs = a
        .timeout
        .as_deref()
        .map(|t| match gvm_policy::parse_duration(t) {
            Ok(d) if d.as_secs() > 0 => Ok(d.as_secs()),
            Ok(_) => Err(anyhow::anyhow!("--timeout {t}: give at least 1s")),
            Err(e) => Err(anyhow::anyhow!("--timeout {t}: {e} (e.g. 90s, 5m, 1h)")),
        })
        .transpose()?;
    let workspaces = a
        .workspaces
        .iter()
        .map(|w| gvm_api::runs::RunWorkspace::parse(w).map_err(|e| anyhow::anyhow!("--workspace: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let Args { profile, watch, ephemeral, argv, .. } = a;
    // Block the signals we forward before any thread exists, so every thread inherits
    // the mask and only the relay thread receives them (sigwait).
    let mut forwarded = SigSet::empty();
    for s in FORWARDED {
        forwarded.add(s);
    }
    forwarded.thread_block()?;

    let socket = client.socket().to_path_buf();
    let stream = UnixStream::connect(&socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => ClientError::NotRunning(socket.clone()),
        std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(socket.clone()),
        _ => ClientError::Io { path: socket.clone(), source: e },
    })?;
    let request = RunRequest { profile, argv, watch, ephemeral, timeout_secs, workspaces };
    let line = format!("{}{}\n", gvm_api::RUN_MAGIC, serde_json::to_string(&request)?);
    let fds = [std::io::stdin().as_raw_fd(), std::io::stdout().as_raw_fd(), std::io::stderr().as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(line.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| anyhow::anyhow!("cannot hand the terminal to gvmd on {}: {e}", socket.display()))?;

    let mut relay = stream.try_clone()?;
    std::thread::spawn(move || loop {
        let Ok(sig) = forwarded.wait() else { return };
        let line = format!("{}\n", serde_json::to_string(&RunSignal { signal: sig as i32 }).unwrap_or_default());
        if relay.write_all(line.as_bytes()).is_err() {
            return;
        }
    });

    let mut lines = BufReader::new(stream).lines();
    loop {
        let Some(line) = lines.next() else {
            anyhow::bail!("gvmd closed the session before the command ended — see `journalctl -u gvmd`");
        };
        match serde_json::from_str::<RunMessage>(&line?)? {
            RunMessage::Started { .. } => {}
            RunMessage::Failed { error, hint } => {
                return Err(ClientError::Api { status: 500, error, hint }.into());
            }
            RunMessage::Exited { code, summary } => {
                eprintln!("{}", summary_line(&summary, code));
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
            }
        }
    }
}

/// `gvm: invoices: exit 0 in 1.2 s; 3 requests allowed, 1 denied; 2 files changed, 1 new applied (gvmctl applied
/// invoices), 1 to review (gvmctl changes invoices)`,
/// with `; N DNS names answered, M refused` before the files when the run asked any.
pub fn summary_line(s: &RunSummary, code: i32) -> String {
    let run = s.run_id.as_deref().map(|id| format!(" run {id}")).unwrap_or_default();
    let how = if s.timed_out { "timed out, killed".to_string() } else { format!("exit {code}") };
    let mut line = format!(
        "gvm: {}{run}: {how} in {:.1} s; {} requests allowed, {} denied",
        s.profile,
        s.duration_ms as f64 / 1000.0,
        s.allowed,
        s.denied
    );
    if s.held > 0 {
        line.push_str(&format!(", {} held", s.held));
    }
    if s.dns_answered + s.dns_refused > 0 {
        line.push_str(&format!("; {} DNS names answered, {} refused", s.dns_answered, s.dns_refused));
    }
    line.push_str(&format!("; {} files changed", s.files_changed));
    if s.files_applied > 0 {
        line.push_str(&format!(", {} new applied (gvmctl applied {})", s.files_applied, s.profile));
    }
    match (&s.run_id, s.files_to_review) {
        (_, 0) => {}
        (Some(id), n) => line.push_str(&format!(", {n} to review (gvmctl changes --run {id})")),
        (None, n) => line.push_str(&format!(", {n} to review (gvmctl changes {})", s.profile)),
    }
    line
}

/// `gvmctl runs`: the ephemeral runs going on, and those kept for review.
pub fn list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let r: gvm_api::runs::RunsResponse = client.get(gvm_api::runs::paths::RUNS)?;
    if json {
        crate::output::json(&r.runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    if r.runs.is_empty() {
        println!("No ephemeral runs going on or kept (a run that changed nothing leaves nothing).");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = r
        .runs
        .iter()
        .map(|run| {
            let state = match (run.state, run.timed_out, run.exit_code) {
                (gvm_api::runs::RunState::Running, ..) => "running".to_string(),
                (gvm_api::runs::RunState::Interrupted, ..) => "interrupted".to_string(),
                (_, true, _) => "kept (timed out)".to_string(),
                (_, false, Some(c)) => format!("kept (exit {c})"),
                (_, false, None) => "kept".to_string(),
            };
            vec![
                run.id.clone(),
                crate::output::safe(&run.profile),
                state,
                crate::output::short_time(&run.started_at),
                run.changes.to_string(),
                crate::output::safe(&run.argv.join(" ")),
            ]
        })
        .collect();
    crate::output::table(&["RUN", "PROFILE", "STATE", "STARTED", "CHANGES", "COMMAND"], &rows);
    println!("\nReview: gvmctl changes --run ID; apply: gvmctl apply --run ID PATH...; drop: gvmctl discard --run ID");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_one_line() {
        let s = RunSummary {
            profile: "invoices".into(),
            allowed: 3,
            denied: 1,
            held: 0,
            files_changed: 2,
            files_applied: 1,
            files_to_review: 1,
            duration_ms: 1234,
            ..RunSummary::default()
        };
        assert_eq!(
            summary_line(&s, 0),
            "gvm: invoices: exit 0 in 1.2 s; 3 requests allowed, 1 denied; 2 files changed, 1 new applied (gvmctl applied invoices), 1 to review (gvmctl changes invoices)"
        );
        // DNS decisions are not requests, but a run that only looked names up says so.
        let s = RunSummary { profile: "p".into(), denied: 0, dns_answered: 2, dns_refused: 1_000_000, ..s };
        assert_eq!(
            summary_line(&s, 3),
            "gvm: p: exit 3 in 1.2 s; 3 requests allowed, 0 denied; 2 DNS names answered, 1000000 refused; 2 files changed, 1 new applied (gvmctl applied p), 1 to review (gvmctl changes p)"
        );
    }
}
