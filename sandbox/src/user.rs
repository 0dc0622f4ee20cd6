//! Per-profile system users `gvm-<profile>`: the agent's identity on the host.
//!
//! Created once with a stable uid (useradd picks a free system uid; it is reused for as
//! long as the user exists), no login shell, no mail spool, home = the agent's persistent
//! home. gvmd calls [`ensure_user`] before every start; it is idempotent.

use std::path::Path;

use nix::unistd::{Gid, Uid, User};

use crate::error::{run, Error, Result};

pub use gvm_api::ProfileName;

/// Creates `gvm-<profile>` if it does not exist and returns its uid and gid.
pub fn ensure_user(profile: &ProfileName, home: &Path) -> Result<(Uid, Gid)> {
    let name = profile.unix_user();
    if let Some(user) = lookup(&name)? {
        return Ok((user.uid, user.gid));
    }
    let home = home.to_str().ok_or_else(|| Error::Spec(format!("home {} is not UTF-8", home.display())))?;
    let args =
        ["--system", "--user-group", "--no-create-home", "--home-dir", home, "--shell", "/usr/sbin/nologin", &name];
    retry_locked(|| run("useradd", "passwd", &args, None))?;
    let user = lookup(&name)?
        .ok_or_else(|| Error::Setup(format!("useradd succeeded but {name} is not in the user database")))?;
    Ok((user.uid, user.gid))
}

/// Removes `gvm-<profile>` and its group, if present (tests; `gvmctl profile remove`).
pub fn remove_user(profile: &ProfileName) -> Result<()> {
    let name = profile.unix_user();
    if lookup(&name)?.is_none() {
        return Ok(());
    }
    retry_locked(|| run("userdel", "passwd", &[&name], None))
}

fn lookup(name: &str) -> Result<Option<User>> {
    User::from_name(name).map_err(crate::error::sys(format!("looking up user {name}")))
}

/// useradd/userdel fail while another one holds /etc/passwd's lock; concurrent profile
/// creation is normal in gvmd, so wait and retry briefly.
fn retry_locked(mut f: impl FnMut() -> Result<()>) -> Result<()> {
    let mut last = None;
    for attempt in 0..50 {
        match f() {
            Err(Error::Command { ref stderr, .. }) if stderr.contains("lock") || stderr.contains("try again") => {
                last = Some(format!("the user database stayed locked: {stderr}"));
                std::thread::sleep(std::time::Duration::from_millis(20 + attempt * 10));
            }
            other => return other,
        }
    }
    Err(Error::Setup(last.unwrap_or_default()))
}
