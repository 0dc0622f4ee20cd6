//! Errors of the sandbox crate. Messages name the thing and the fix; the cause is chained.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    ProfileName(#[from] gvm_api::ProfileNameError),
    #[error("{what} needs root (run gvmd as root)")]
    NotRoot { what: &'static str },
    #[error("`{program}` failed ({status}): {stderr}")]
    Command { program: String, status: String, stderr: String },
    #[error("could not run `{program}`: is it installed (package {package})?")]
    Spawn {
        program: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("invalid launch spec: {0}")]
    Spec(String),
    #[error("sandbox setup failed: {0}")]
    Setup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

/// Runs a helper program (ip, nft, useradd...) and turns a non-zero exit into an error
/// carrying its stderr.
pub(crate) fn run(program: &str, package: &'static str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(|source| Error::Spawn { program: program.to_string(), package, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(io("writing to the stdin of", program))?;
    }
    let out = child.wait_with_output().map_err(io("waiting for", program))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            program: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
