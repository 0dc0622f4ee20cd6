//! The policy version store: every profile version that came into force, kept by
//! content and indexed by when.
//!
//! `<state>/policy/<profile>/<sha256>.toml` holds the exact bytes of a version (0600,
//! written to a temporary file, fsynced and renamed, so a version file is whole or
//! absent; an existing one is not written again). `<state>/policy/<profile>/index.jsonl`
//! has one [`VersionEntry`] a line, appended and fsynced after the version file is
//! durable, so an entry never names a missing version. A crash mid-append leaves at
//! most one torn last line: readers skip it and the next append starts a new line.
//!
//! This module owns those files only; it trusts the profile name (a `ProfileName`
//! checked by the loader) and the hashes it is given (SHA-256 hex, checked here).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use gvm_api::versions::{Origin, VersionEntry};

/// The shortest prefix of a hash that is accepted.
pub const MIN_PREFIX: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    BadName(#[from] gvm_policy::ProfileNameError),
    #[error("profile {profile} has no recorded versions: it was never loaded by this gvmd")]
    NeverLoaded { profile: String },
    #[error("{given:?} is not a version of {profile}: give at least {MIN_PREFIX} hex digits of a hash — known versions: {}", known.join(", "))]
    Unknown { profile: String, given: String, known: Vec<String> },
    #[error("{given:?} names several versions of {profile}: {} — give more digits", matches.join(", "))]
    Ambiguous { profile: String, given: String, matches: Vec<String> },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VersionError {
    let path = path.to_path_buf();
    move |source| VersionError::Io { what, path, source }
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The store under `<state>/policy`.
#[derive(Debug, Clone)]
pub struct VersionStore {
    root: PathBuf,
}

impl VersionStore {
    pub fn new(state_dir: &Path) -> VersionStore {
        VersionStore { root: state_dir.join("policy") }
    }

    /// The directory of `profile`: only a valid profile name (never `..` or a `/`)
    /// becomes a path.
    fn dir(&self, profile: &str) -> Result<PathBuf, VersionError> {
        let name = gvm_policy::ProfileName::parse(profile)?;
        Ok(self.root.join(name.as_str()))
    }

    fn index(&self, profile: &str) -> Result<PathBuf, VersionError> {
        Ok(self.dir(profile)?.join("index.jsonl"))
    }

    /// Keeps `bytes` as a version of `profile` (once) and appends `entry` to its index.
    pub fn record(&self, profile: &str, bytes: &[u8], entry: &VersionEntry) -> Result<(), VersionError> {
        let dir = self.dir(profile)?;
        for d in [&self.root, &dir] {
            std::fs::DirBuilder::new().mode(0o700).recursive(true).create(d).map_err(io("create", d))?;
        }
        let file = dir.join(format!("{}.toml", entry.version));
        if !file.exists() {
            let tmp = dir.join(format!(".{}.tmp", entry.version));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", &tmp))?;
            f.write_all(bytes).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
            std::fs::rename(&tmp, &file).map_err(io("rename", &file))?;
            sync_dir(&dir)?;
        }
        let index = self.index(profile)?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .read(true)
            .mode(0o600)
            .open(&index)
            .map_err(io("open", &index))?;
        let mut line = serde_json::to_string(entry).unwrap_or_default();
        line.push('\n');
        // A torn last line (a crash mid-append) gets its own line ended first.
        let len = f.metadata().map_err(io("stat", &index))?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            f.seek(SeekFrom::Start(len - 1)).map_err(io("read", &index))?;
            f.read_exact(&mut last).map_err(io("read", &index))?;
            if last[0] != b'\n' {
                line.insert(0, '\n');
            }
        }
        f.write_all(line.as_bytes()).map_err(io("append to", &index))?;
        f.sync_all().map_err(io("fsync", &index))?;
        if len == 0 {
            sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Every entry of `profile`, oldest first (a torn or unreadable line is skipped).
    pub fn history(&self, profile: &str) -> Result<Vec<VersionEntry>, VersionError> {
        let index = self.index(profile)?;
        let text = match std::fs::read_to_string(&index) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VersionError::NeverLoaded { profile: profile.into() })
            }
            Err(e) => return Err(io("read", &index)(e)),
        };
        let entries: Vec<VersionEntry> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<VersionEntry>(l).ok())
            .filter(|e| is_hash(&e.version))
            .collect();
        if entries.is_empty() {
            return Err(VersionError::NeverLoaded { profile: profile.into() });
        }
        Ok(entries)
    }

    /// The distinct versions of `profile`, in the order they first came into force.
    pub fn known(&self, profile: &str) -> Result<Vec<String>, VersionError> {
        let mut known: Vec<String> = Vec::new();
        for e in self.history(profile)? {
            if !known.contains(&e.version) {
                known.push(e.version);
            }
        }
        Ok(known)
    }

    /// The full hash a prefix (at least [`MIN_PREFIX`] hex digits) names.
    pub fn resolve(&self, profile: &str, given: &str) -> Result<String, VersionError> {
        let known = self.known(profile)?;
        let prefix = given.to_ascii_lowercase();
        let unknown = |known: Vec<String>| VersionError::Unknown {
            profile: profile.into(),
            given: given.into(),
            known: known.iter().map(|k| k[..12].to_string()).collect(),
        };
        if prefix.len() < MIN_PREFIX || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown(known));
        }
        let matches: Vec<&String> = known.iter().filter(|k| k.starts_with(&prefix)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(unknown(known.clone())),
            many => Err(VersionError::Ambiguous {
                profile: profile.into(),
                given: given.into(),
                matches: many.iter().map(|k| k[..12].to_string()).collect(),
            }),
        }
    }

    /// The bytes of a version (a full hash).
    pub fn bytes(&self, profile: &str, version: &str) -> Result<Vec<u8>, VersionError> {
        if !is_hash(version) {
            return Err(VersionError::Unknown {
                profile: profile.into(),
                given: version.into(),
                known: self.known(profile).unwrap_or_default(),
            });
        }
        let file = self.dir(profile)?.join(format!("{version}.toml"));
        std::fs::read(&file).map_err(io("read", &file))
    }
}

/// A unified diff of two versions' text (empty when equal).
pub fn unified(a_name: &str, a: &str, b_name: &str, b: &str) -> String {
    if a == b {
        return String::new();
    }
    let mut out =
        similar::TextDiff::from_lines(a, b).unified_diff().context_radius(3).header(a_name, b_name).to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn sync_dir(dir: &Path) -> Result<(), VersionError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn entry(version: &str, how: Origin) -> VersionEntry {
        VersionEntry { version: version.into(), at: "2026-12-07T08:00:00Z".into(), how, by: None, rules: 1 }
    }

    #[test]
    fn versions_are_kept_once_and_indexed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = VersionStore::new(dir.path());
        let (a, b) = (gvm_policy::version_of(b"a"), gvm_policy::version_of(b"b"));
        store.record("p", b"a", &entry(&a, Origin::Start)).unwrap();
        store.record("p", b"b", &entry(&b, Origin::Reload)).unwrap();
        store.record("p", b"a", &entry(&a, Origin::Rollback)).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("policy/p"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        assert_eq!(files.len(), 2, "deduplicated: {files:?}");
        let meta = std::fs::metadata(dir.path().join(format!("policy/p/{a}.toml"))).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let hist = store.history("p").unwrap();
        let hows: Vec<Origin> = hist.iter().map(|e| e.how).collect();
        assert_eq!(hows, [Origin::Start, Origin::Reload, Origin::Rollback]);
        assert_eq!(store.known("p").unwrap(), [a.clone(), b]);
        assert_eq!(store.bytes("p", &a).unwrap(), b"a");
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_next_append_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = VersionStore::new(dir.path());
        let a = gvm_policy::version_of(b"a");
        store.record("p", b"a", &entry(&a, Origin::Start)).unwrap();
        let index = dir.path().join("policy/p/index.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&index).unwrap();
        f.write_all(br#"{"version":"ab"#).unwrap();
        assert_eq!(store.history("p").unwrap().len(), 1, "torn line skipped");
        store.record("p", b"a", &entry(&a, Origin::Reload)).unwrap();
        let hist = store.history("p").unwrap();
        assert_eq!(hist.len(), 2);
        assert_eq!(hist[1].how, Origin::Reload);
    }

    #[test]
    fn prefixes_resolve_and_bad_ones_say_what_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let store = VersionStore::new(dir.path());
        // Two hashes sharing a 6-digit prefix, written by hand.
        let x = format!("abcdef1{}", "0".repeat(57));
        let y = format!("abcdef2{}", "0".repeat(57));
        store.record("p", b"x", &entry(&x, Origin::Start)).unwrap();
        store.record("p", b"y", &entry(&y, Origin::Reload)).unwrap();
        assert_eq!(store.resolve("p", "ABCDEF1").unwrap(), x);
        assert_eq!(store.resolve("p", &y).unwrap(), y);
        let amb = store.resolve("p", "abcdef").unwrap_err().to_string();
        assert!(amb.contains("several versions") && amb.contains("abcdef100000"), "{amb}");
        let unknown = store.resolve("p", "123456").unwrap_err().to_string();
        assert!(unknown.contains("known versions: abcdef100000, abcdef200000"), "{unknown}");
        let short = store.resolve("p", "abc").unwrap_err().to_string();
        assert!(short.contains("at least 6 hex digits"), "{short}");
        assert!(matches!(store.history("../p"), Err(VersionError::BadName(_))), "no path escapes the store");
        let never = store.history("q").unwrap_err().to_string();
        assert!(never.contains("never loaded"), "{never}");
    }
}
