//! Per-profile system users `gvm-<profile>`: the agent's identity on the host.
//!
//! Created once with a stable uid (useradd picks a free system uid; it is reused for as
//! long as the user exists), no login shell, no mail spool, home = the agent's persistent
//! home. gvmd calls [`ensure_user`] before every start; it is idempotent.

use std::path::Path;

use nix::unistd::{Gid, Uid, User};

use crate::error::{run, Error, Result};

/// A validated profile name: it becomes part of a user name, a netns file name, a cgroup
/// name and a path, so it is kept to `[a-z][a-z0-9_-]{0,23}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProfileName(String);

impl ProfileName {
    pub fn new(name: &str) -> Result<Self> {
        // The same rule as gvm-policy's ProfileName: `gvm-<name>` stays a valid system
        // user name (≤ 31 bytes for useradd and systemd-sysusers).
        let ok = (1..=27).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Self(name.to_string()))
        } else {
            Err(Error::ProfileName(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The system user of this profile: `gvm-<profile>`.
    pub fn user_name(&self) -> String {
        format!("gvm-{}", self.0)
    }
}

impl std::fmt::Display for ProfileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Creates `gvm-<profile>` if it does not exist and returns its uid and gid.
pub fn ensure_user(profile: &ProfileName, home: &Path) -> Result<(Uid, Gid)> {
    let name = profile.user_name();
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
    let name = profile.user_name();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names() {
        assert!(ProfileName::new("coder").is_ok());
        assert!(ProfileName::new("a-1_b").is_ok());
        assert!(ProfileName::new("1abc").is_ok(), "as gvm-policy allows");
        assert!(ProfileName::new("abcdefghijklmnopqrstuvwxyza").is_ok(), "27 characters");
        for bad in ["", "-abc", "Coder", "a/b", "a.b", "../x", "abcdefghijklmnopqrstuvwxyzab"] {
            assert!(ProfileName::new(bad).is_err(), "{bad}");
        }
        assert_eq!(ProfileName::new("coder").unwrap().user_name(), "gvm-coder");
    }
}
