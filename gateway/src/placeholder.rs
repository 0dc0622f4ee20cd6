//! Secret placeholders: what an agent holds instead of a secret's value
//! (`gvm-secret-<name>-<24 URL-safe characters>`, 18 bytes from the kernel's random
//! source), made once per profile and secret.
//!
//! **Stable across gvmd restarts**: with a file ([`Placeholders::open`], gvmd's
//! `<state>/placeholders.json`, mode 0600, replaced atomically by a rename) an agent
//! that outlives a gvmd restart keeps a placeholder that still works. Each entry keeps a
//! fingerprint of the value it stands for — SHA-256 of the placeholder and the value,
//! so the file reveals nothing about the value that the placeholder does not salt — and
//! a secret whose value changed (rotated) or that left the profile drops its
//! placeholder: the agent gets a new one at its next start.
//!
//! A file that cannot be read or parsed is set aside (logged) and placeholders start
//! afresh: agents then need a restart, nothing is let through.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    placeholder: String,
    /// Hex SHA-256 of `placeholder`, a NUL, and the value (empty: not yet known).
    fingerprint: String,
}

/// Profile → secret → entry, as kept in the file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    version: u32,
    profiles: BTreeMap<String, BTreeMap<String, Entry>>,
}

/// Every profile's placeholders.
#[derive(Default)]
pub(crate) struct Placeholders {
    kept: Mutex<Kept>,
    file: Mutex<Option<PathBuf>>,
}

fn fingerprint(placeholder: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(placeholder.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn fresh(name: &str) -> String {
    let mut raw = [0u8; 18];
    // Fail closed: without randomness the placeholder would be guessable.
    getrandom::getrandom(&mut raw).expect("the kernel's random source failed");
    let tail = crate::exfil::base64(&raw, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");
    format!("gvm-secret-{name}-{}", String::from_utf8_lossy(&tail))
}

impl Placeholders {
    /// Keeps placeholders in `path` from now on, starting with those it holds.
    pub(crate) fn open(&self, path: &Path) {
        let kept = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Kept>(&bytes) {
                Ok(k) => k,
                Err(e) => {
                    let aside = path.with_extension("json.bad");
                    let _ = std::fs::rename(path, &aside);
                    tracing::error!(
                        "secret placeholders in {} cannot be read ({e}); moved to {}: agents get new placeholders and need a restart",
                        path.display(),
                        aside.display()
                    );
                    Kept::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Kept::default(),
            Err(e) => {
                tracing::error!(
                    "cannot read secret placeholders in {}: {e}; agents get new placeholders",
                    path.display()
                );
                Kept::default()
            }
        };
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = kept;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.to_path_buf());
    }

    /// The placeholders of `profile`'s `secrets` (secret → placeholder), made on first
    /// use. `values` (secret → value, when known): a placeholder whose value changed is
    /// replaced. Secrets no longer in the profile lose theirs.
    pub(crate) fn of(
        &self,
        profile: &str,
        secrets: impl Iterator<Item = String>,
        values: Option<&HashMap<String, Result<String, String>>>,
    ) -> HashMap<String, String> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mine = kept.profiles.entry(profile.to_string()).or_default();
        let mut changed = false;
        let names: Vec<String> = secrets.collect();
        for name in &names {
            let value = values.and_then(|v| v.get(name)).and_then(|v| v.as_ref().ok());
            let e = mine.entry(name.clone()).or_insert_with(|| {
                changed = true;
                Entry { placeholder: fresh(name), fingerprint: String::new() }
            });
            if let Some(value) = value {
                let fp = fingerprint(&e.placeholder, value);
                if e.fingerprint.is_empty() {
                    e.fingerprint = fp;
                    changed = true;
                } else if e.fingerprint != fp {
                    tracing::info!(
                        gvm_profile = %profile,
                        "secret {name} of profile {profile} changed: its placeholder is replaced (restart the agent)"
                    );
                    let placeholder = fresh(name);
                    *e = Entry { fingerprint: fingerprint(&placeholder, value), placeholder };
                    changed = true;
                }
            }
        }
        let before = mine.len();
        mine.retain(|k, _| names.contains(k));
        changed |= mine.len() != before;
        let out = mine.iter().map(|(k, e)| (k.clone(), e.placeholder.clone())).collect();
        if mine.is_empty() {
            kept.profiles.remove(profile);
        }
        if changed {
            self.save(&kept);
        }
        out
    }

    /// Forgets a removed profile's placeholders.
    pub(crate) fn remove(&self, profile: &str) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.profiles.remove(profile).is_some() {
            self.save(&kept);
        }
    }

    /// Writes the file (if there is one): a new 0600 file beside it, synced, renamed
    /// over it. A failure is logged; the placeholders in memory stay in force.
    fn save(&self, kept: &Kept) {
        let Some(path) = self.file.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = path.with_extension("json.tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&Kept { version: 1, profiles: kept.profiles.clone() })?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            tracing::error!(
                "cannot write secret placeholders to {}: {e} — after a gvmd restart agents will need a restart",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &str) -> HashMap<String, Result<String, String>> {
        HashMap::from([("openai".to_string(), Ok(v.to_string()))])
    }

    #[test]
    fn placeholders_survive_a_reopen_and_a_rotated_or_removed_secret_drops_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("placeholders.json");
        let names = || ["openai".to_string(), "github".to_string()].into_iter();
        let first = {
            let p = Placeholders::default();
            p.open(&path);
            p.of("coder", names(), Some(&values("sk-1")))
        };
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("sk-1"), "the value is not in the file");

        let p = Placeholders::default();
        p.open(&path);
        assert_eq!(p.of("coder", names(), Some(&values("sk-1"))), first, "same after a restart");
        assert_eq!(p.of("coder", names(), None), first, "a value not known keeps it");
        let rotated = p.of("coder", names(), Some(&values("sk-2")));
        assert_ne!(rotated["openai"], first["openai"], "a rotated secret gets a new placeholder");
        assert_eq!(rotated["github"], first["github"]);
        let fewer = p.of("coder", ["github".to_string()].into_iter(), None);
        assert_eq!(fewer.len(), 1);
        let again = Placeholders::default();
        again.open(&path);
        assert_eq!(again.of("coder", ["github".to_string()].into_iter(), None), fewer);
    }

    #[test]
    fn an_unreadable_file_is_set_aside_and_placeholders_start_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("placeholders.json");
        std::fs::write(&path, "{not json").unwrap();
        let p = Placeholders::default();
        p.open(&path);
        let got = p.of("coder", ["openai".to_string()].into_iter(), None);
        assert!(got["openai"].starts_with("gvm-secret-openai-"));
        assert!(dir.path().join("placeholders.json.bad").exists());
        assert!(std::fs::read_to_string(&path).unwrap().contains(&got["openai"]));
    }
}
