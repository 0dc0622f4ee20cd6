//! The profiles in force, and how a (re)load changes them.
//!
//! A reload reads every `<config-dir>/profiles/*.toml` again. A good file replaces the
//! version in force; a bad file is refused with its diagnostic and, if a version of that
//! profile was in force, that last good version stays (marked stale); a file that is
//! gone takes its profile with it. Each change is reported so the caller can audit it.
//! This module does no auditing and no I/O besides reading the profile files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use gvm_policy::{Diagnostic, Profile};
use time::OffsetDateTime;

/// One profile in force.
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    pub profile: Arc<Profile>,
    pub loaded_at: OffsetDateTime,
    /// SHA-256 of the file bytes it was parsed from (`Profile::version`), to tell a
    /// changed file from a reread one.
    pub digest: String,
    /// The file on disk was refused at the last reload; this older version stays.
    pub stale: bool,
}

/// Every profile in force plus the files refused by the last load.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    pub profiles: BTreeMap<String, LoadedProfile>,
    pub refused: Vec<Diagnostic>,
}

/// What a load changed, in order, for the audit log.
#[derive(Debug, Clone)]
pub enum Change {
    /// New or changed profile now in force.
    Loaded { name: String, file: String, digest: String, rules: usize },
    /// A file was refused; `kept` says whether an older version stays in force.
    Refused { name: Option<String>, diagnostic: Diagnostic, kept: bool },
    /// The file is gone; the profile is no longer in force.
    Removed { name: String },
}

/// The first 12 hex digits of a version, as shown to people.
pub fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

/// The file on disk no longer holds the version in force (edited, not reloaded, or gone).
fn drifted(file: &Path, version: &str) -> bool {
    std::fs::read(file).map(|b| gvm_policy::version_of(&b) != version).unwrap_or(true)
}

impl ProfileSet {
    /// Loads `dir` afresh on top of `self` (the set in force) and returns the new set
    /// with what changed.
    pub fn reload(&self, dir: &Path) -> (ProfileSet, Vec<Change>) {
        let mut outcome = gvm_policy::load_dir(dir);
        // A profile whose secret gvmd cannot read is refused (the others load).
        let (ok, bad): (Vec<_>, Vec<_>) = outcome
            .profiles
            .into_iter()
            .map(|p| (crate::secrets::check_secret_files(&p), p))
            .partition(|r| r.0.is_ok());
        outcome.profiles = ok.into_iter().map(|(_, p)| p).collect();
        outcome.refused.extend(bad.into_iter().filter_map(|(r, _)| r.err()));
        let now = OffsetDateTime::now_utc();
        let mut next = ProfileSet::default();
        let mut changes = Vec::new();

        for profile in outcome.profiles {
            let name = profile.name.to_string();
            let digest = profile.version.clone();
            let unchanged = self.profiles.get(&name).filter(|old| old.digest == digest && !old.stale);
            let entry = match unchanged {
                Some(old) => old.clone(),
                None => {
                    changes.push(Change::Loaded {
                        name: name.clone(),
                        file: profile.file.display().to_string(),
                        digest: digest.clone(),
                        rules: profile.network.rules.len(),
                    });
                    LoadedProfile { profile: Arc::new(profile), loaded_at: now, digest, stale: false }
                }
            };
            next.profiles.insert(name, entry);
        }

        for diagnostic in outcome.refused {
            let name = diagnostic.file.file_stem().map(|s| s.to_string_lossy().into_owned());
            let kept = match name.as_ref().and_then(|n| self.profiles.get(n).map(|p| (n, p))) {
                Some((n, old)) if !next.profiles.contains_key(n) => {
                    next.profiles.insert(n.clone(), LoadedProfile { stale: true, ..old.clone() });
                    true
                }
                _ => false,
            };
            changes.push(Change::Refused { name, diagnostic: diagnostic.clone(), kept });
            next.refused.push(diagnostic);
        }

        for name in self.profiles.keys() {
            if !next.profiles.contains_key(name) {
                changes.push(Change::Removed { name: name.clone() });
            }
        }
        (next, changes)
    }

    /// What a reload would change, without changing anything: every profile added,
    /// removed or changed with a short diff, and the files that would be refused.
    pub fn dry_run(&self, dir: &Path) -> gvm_api::versions::DryRunResponse {
        let (next, changes) = self.reload(dir);
        let mut out = gvm_api::versions::DryRunResponse {
            refused: next.refused.iter().map(Into::into).collect(),
            ..Default::default()
        };
        for change in changes {
            let (profile, change, from, to, diff) = match change {
                Change::Loaded { name, digest, .. } => {
                    let new = next.profiles.get(&name).map(|p| p.profile.text.clone()).unwrap_or_default();
                    match self.profiles.get(&name) {
                        Some(old) => {
                            let diff = crate::versions::unified(
                                &format!("{name} {}", short(&old.digest)),
                                &old.profile.text,
                                &format!("{name} {} (file)", short(&digest)),
                                &new,
                            );
                            (name, "changed", Some(old.digest.clone()), Some(digest), diff)
                        }
                        None => {
                            (name, "added", None, Some(digest), crate::versions::unified("/dev/null", "", "file", &new))
                        }
                    }
                }
                Change::Removed { name } => {
                    let old = self.profiles.get(&name);
                    let diff = old
                        .map(|o| crate::versions::unified(&name, &o.profile.text, "/dev/null", ""))
                        .unwrap_or_default();
                    (name, "removed", old.map(|o| o.digest.clone()), None, diff)
                }
                Change::Refused { .. } => continue,
            };
            out.changes.push(gvm_api::versions::DryRunChange { profile, change: change.into(), from, to, diff });
        }
        out
    }

    /// The wire view of the profiles in force.
    pub fn statuses(&self) -> Vec<gvm_api::ProfileStatus> {
        self.profiles
            .iter()
            .map(|(name, p)| gvm_api::ProfileStatus {
                name: name.clone(),
                file: p.profile.file.display().to_string(),
                mode: p.profile.agent.mode,
                rules: p.profile.network.rules.len(),
                loaded_at: crate::rfc3339(p.loaded_at),
                stale: p.stale,
                connections_cap: 0,
                noisy: None,
                watch: None,
                pending_requests: 0,
                pending_files: 0,
                version: p.digest.clone(),
                drift: drifted(&p.profile.file, &p.digest),
                budgets: Vec::new(),
                tier: p.profile.agent.tier.map(|t| t.to_string()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_lists_what_a_reload_would_change_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
        write("kept", "");
        write("edited", "[network]\ndefault = \"deny\"\n");
        write("gone", "");
        let (set, _) = ProfileSet::default().reload(dir.path());
        write("edited", "[network]\ndefault = \"hold\"\n");
        write("new", "");
        write("broken", "[network]\ndefault = \"allow\"\n");
        std::fs::remove_file(dir.path().join("gone.toml")).unwrap();

        let dry = set.dry_run(dir.path());
        let seen: Vec<(&str, &str)> = dry.changes.iter().map(|c| (c.profile.as_str(), c.change.as_str())).collect();
        assert_eq!(seen, [("edited", "changed"), ("new", "added"), ("gone", "removed")]);
        assert!(dry.changes[0].diff.contains("-default = \"deny\"\n+default = \"hold\""), "{}", dry.changes[0].diff);
        assert_eq!(dry.refused.len(), 1);
        assert!(set.profiles["edited"].profile.text.contains("deny"), "the set in force is untouched");
        assert!(set.statuses().iter().any(|p| p.name == "edited" && p.drift), "the edited file drifts");
        assert!(set.statuses().iter().any(|p| p.name == "kept" && !p.drift));
    }
}
