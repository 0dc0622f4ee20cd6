//! What gvmd reads so that the agent never holds a real key and cannot send one out:
//! the secrets' files (checked when a profile loads: a profile whose secret cannot be
//! read is refused, with the line of its `file` and the fix) and the values of the
//! files a profile masks with `[files] deny_read` inside its workspaces, which the
//! gateway's exfiltration scan looks for.
//!
//! Trusts: the workspaces' real (lower) directories, which the operator owns. Never
//! follows a symbolic link to a masked file, never reads more than [`MAX_FILE`] of one,
//! never logs a value.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use gvm_gateway::FileValue;
use gvm_policy::{Diagnostic, Profile, SecretSource};

/// A masked file larger than this is scanned for in its first `MAX_FILE` bytes only.
pub const MAX_FILE: u64 = 1 << 20;
/// At most this many masked files feed one profile's scan.
pub const MAX_FILES: usize = 256;

/// `Err` when one of the profile's secret files cannot be read by gvmd: the
/// diagnostic points at the secret's `file` line and says what to do.
pub fn check_secret_files(profile: &Profile) -> Result<(), Diagnostic> {
    for (name, src) in &profile.secrets {
        let SecretSource::File(path) = src else { continue };
        if let Err(e) = std::fs::File::open(path).and_then(|mut f| f.read(&mut [0u8; 1])) {
            let mut d = profile
                .secret_use
                .get(name)
                .map(|u| u.at.clone())
                .unwrap_or_else(|| Diagnostic::file_level(&profile.file, String::new()));
            d.message = format!("secret {name}: gvmd cannot read {}: {e}", path.display());
            d.fix = Some(format!(
                "create {} (owned by root, mode 0600, holding only the value) or correct the path, then run `gvmctl reload`",
                path.display()
            ));
            return Err(d);
        }
    }
    Ok(())
}

/// The values of the profile's `deny_read` files inside its workspaces, for the scan.
/// Logs (never the values) what it read and how many values were too short to scan.
pub fn file_values(profile: &Profile) -> Vec<FileValue> {
    let roots: Vec<PathBuf> = profile.agent.workspaces.iter().map(|w| w.path.clone()).collect();
    if roots.is_empty() || profile.files.deny_read.is_empty() {
        return Vec::new();
    }
    let paths = gvm_sandbox::deny::resolve(&profile.files.deny_read, Path::new("/nonexistent"), &roots);
    let mut out: Vec<FileValue> = Vec::new();
    for p in paths.iter().filter(|p| roots.iter().any(|r| p.starts_with(r))).take(MAX_FILES) {
        let Some(bytes) = read_file(p) else { continue };
        let (values, short) = gvm_gateway::file_values(p, &bytes, &profile.files.scan_ignore);
        if short > 0 {
            tracing::info!(
                gvm_profile = %profile.name,
                "{short} value(s) in {} are shorter than {} bytes and are not scanned for (too likely to match ordinary text)",
                p.display(),
                gvm_gateway::scan::MIN_VALUE_LEN
            );
        }
        tracing::debug!(gvm_profile = %profile.name, "{} value(s) of {} are scanned for", values.len(), p.display());
        out.extend(values);
    }
    out
}

/// A regular file's first [`MAX_FILE`] bytes, not through a symbolic link.
fn read_file(p: &Path) -> Option<Vec<u8>> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(p).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn scan_ignore_keys_are_not_scanned_for_and_the_others_are() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join(".env"), "NODE_ENV=production\nDB_PASSWORD=correct-horse-battery\n").unwrap();
        let text = format!(
            "[agent]\nworkspaces = [{{ path = \"{}\", mode = \"overlay\" }}]\n\n[files]\ndeny_read = [\"**/.env\"]\n\
             scan_ignore = [\"NODE_ENV\"]\n",
            ws.path().display()
        );
        let profile = gvm_policy::parse_profile(std::path::Path::new("/etc/gvm/profiles/p.toml"), &text).unwrap();
        let values = super::file_values(&profile);
        let got: Vec<&[u8]> = values.iter().map(|v| v.value.as_slice()).collect();
        assert!(got.contains(&b"correct-horse-battery".as_slice()), "{values:?}");
        assert!(!got.contains(&b"production".as_slice()), "{values:?}");
        assert!(got.contains(&b"NODE_ENV=production".as_slice()), "the whole line stays: {values:?}");
    }
}
