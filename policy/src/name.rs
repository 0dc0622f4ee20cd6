//! Profile names.

use std::fmt;

/// A validated profile name: `^[a-z0-9][a-z0-9_-]{0,26}$`.
///
/// It becomes the Linux user `gvm-<name>` and the systemd instance
/// `gvm-agent@<name>.service`, and names directories and a network namespace. A
/// system user name must stay under 32 bytes (utmp and `useradd` limits, 31 for
/// systemd-sysusers), so `gvm-` plus at most 27 characters; upper case, dots and
/// `@` are refused because systemd would escape them and tools disagree on how.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileName(Box<str>);

/// The longest profile name (`gvm-` + name ≤ 31 bytes).
pub const MAX_PROFILE_NAME: usize = 27;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a valid profile name: use 1 to {MAX_PROFILE_NAME} characters from a-z, 0-9, `_` and `-`, starting with a letter or digit (it becomes the Linux user `gvm-<name>` and the unit `gvm-agent@<name>`)")]
pub struct ProfileNameError {
    pub name: String,
}

impl ProfileName {
    pub fn parse(s: &str) -> Result<ProfileName, ProfileNameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_PROFILE_NAME
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
        if ok {
            Ok(ProfileName(s.into()))
        } else {
            Err(ProfileNameError { name: s.escape_debug().to_string() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Linux user the agent runs as.
    pub fn unix_user(&self) -> String {
        format!("gvm-{}", self.0)
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ProfileName {
    type Err = ProfileNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProfileName::parse(s)
    }
}

impl AsRef<str> for ProfileName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "invoices", "0day", "my_agent-2", &"a".repeat(27)] {
            assert!(ProfileName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "Invoices", "a.b", "a@b", "a b", "é", &"a".repeat(28), "a/b", "a\0"] {
            assert!(ProfileName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ProfileName::parse("x").unwrap().unix_user(), "gvm-x");
        assert!(ProfileName::parse("Bad").unwrap_err().to_string().contains("gvm-<name>"));
    }
}
