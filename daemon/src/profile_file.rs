//! Writing a profile file on the operator's behalf (`approve --always`, `suggest
//! --apply`): rules appended with `toml_edit` so comments and layout stay, the old
//! version kept as `<file>.bak` (the loader reads `*.toml` only), the new one written
//! to a temporary file, fsynced and renamed over the old, with its owner and mode —
//! and only if the file on disk is still the text the change was computed from.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::Digest;

/// What went wrong; the file is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} changed on disk since the change was computed (it was {expected}, it is now {found}); nothing was written — look at it again and retry")]
    Changed { path: PathBuf, expected: String, found: String },
}

/// `sha256:<hex>` of a file's text, as `profile_loaded` events and `suggest` show it.
pub fn digest(text: &str) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(text.as_bytes())))
}

/// Appends `[[network.rule]]` tables to a parsed profile.
pub fn push_rules(doc: &mut toml_edit::DocumentMut, rules: Vec<toml_edit::Table>) -> Result<(), String> {
    let network = doc.entry("network").or_insert_with(|| {
        let mut t = toml_edit::Table::new();
        t.set_implicit(true);
        toml_edit::Item::Table(t)
    });
    let Some(network) = network.as_table_mut() else {
        return Err("`network` is not a table".into());
    };
    match network.get_mut("rule") {
        None => {
            let mut aot = toml_edit::ArrayOfTables::new();
            for r in rules {
                aot.push(r);
            }
            network.insert("rule", toml_edit::Item::ArrayOfTables(aot));
        }
        Some(toml_edit::Item::ArrayOfTables(aot)) => {
            for r in rules {
                aot.push(r);
            }
        }
        Some(_) => return Err("`network.rule` is not written as [[network.rule]] tables; add the rule by hand".into()),
    }
    Ok(())
}

/// `file.bak` ← `old`; then temp + fsync + rename over `file`, same owner and mode.
/// Refuses (writing nothing) when `file` no longer holds `old`.
pub fn replace(file: &Path, old: &str, new: &str) -> Result<(), WriteError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError::Io { what, path, source }
    };
    let now = std::fs::read_to_string(file).map_err(io("read", file))?;
    if now != old {
        return Err(WriteError::Changed { path: file.into(), expected: digest(old), found: digest(&now) });
    }
    let meta = std::fs::metadata(file).map_err(io("stat", file))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let write_synced = |path: &Path, text: &str| -> Result<(), WriteError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io("create", path))?;
        f.write_all(text.as_bytes()).map_err(io("write", path))?;
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(io("chmod", path))?;
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid())).map_err(io("chown", path))?;
        f.sync_all().map_err(io("fsync", path))
    };
    let bak = dir.join(format!("{name}.bak"));
    let bak_tmp = dir.join(format!(".{name}.bak.tmp"));
    write_synced(&bak_tmp, old)?;
    std::fs::rename(&bak_tmp, &bak).map_err(io("rename", &bak))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    if let Err(e) = write_synced(&tmp, new) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, file).map_err(io("rename", file))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_changed_since_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "# edited\n").unwrap();
        let e = replace(&file, "# old\n", "# new\n").unwrap_err().to_string();
        assert!(e.contains("changed on disk") && e.contains("nothing was written"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "# edited\n");
        assert!(!dir.path().join("p.toml.bak").exists());
        replace(&file, "# edited\n", "# new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "# new\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("p.toml.bak")).unwrap(), "# edited\n");
    }
}
