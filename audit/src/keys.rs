//! gvmd's audit signing key, and the exact messages it signs.
//!
//! The private key is PKCS#8 PEM at `<state_dir>/keys/audit.key` (mode 0600, directory
//! 0700); its public half is SPKI PEM at `<state_dir>/keys/audit.pub` (0644), which is
//! all offline verification needs. The key is created once, when the store is opened on
//! a state directory that has no key and no events; it is never rotated or rewritten.
//! A private key readable by group or others is refused (like sshd does), since it may
//! have been copied.
//!
//! Signed messages (domain-separated, fixed layout):
//! ```text
//! checkpoint = "gvm-audit checkpoint v1\0" ‖ u64_be(first_seq) ‖ u64_be(last_seq)
//!              ‖ merkle_root ‖ hash of event last_seq
//! head       = "gvm-audit head v1\0" ‖ u64_be(last_seq) ‖ hash of event last_seq
//!              ‖ u64_be(checkpoint count) ‖ u64_be(last_seq of the newest checkpoint)
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::AuditError;

/// Directory of the key files, relative to the state directory.
pub const KEY_DIR: &str = "keys";
/// File name of the private signing key inside [`KEY_DIR`].
pub const PRIVATE_KEY_FILE: &str = "audit.key";
/// File name of the public key inside [`KEY_DIR`].
pub const PUBLIC_KEY_FILE: &str = "audit.pub";

/// `<state_dir>/keys`.
pub fn key_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(KEY_DIR)
}

/// `<state_dir>/keys/audit.key`.
pub fn private_key_path(state_dir: &Path) -> PathBuf {
    key_dir(state_dir).join(PRIVATE_KEY_FILE)
}

/// `<state_dir>/keys/audit.pub`: what `gvmctl audit verify` needs when gvmd is down.
pub fn public_key_path(state_dir: &Path) -> PathBuf {
    key_dir(state_dir).join(PUBLIC_KEY_FILE)
}

const CHECKPOINT_TAG: &[u8] = b"gvm-audit checkpoint v1\0";
const HEAD_TAG: &[u8] = b"gvm-audit head v1\0";

pub(crate) fn checkpoint_message(first_seq: u64, last_seq: u64, root: &[u8; 32], last_hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_TAG.len() + 80);
    m.extend_from_slice(CHECKPOINT_TAG);
    m.extend_from_slice(&first_seq.to_be_bytes());
    m.extend_from_slice(&last_seq.to_be_bytes());
    m.extend_from_slice(root);
    m.extend_from_slice(last_hash);
    m
}

pub(crate) fn head_message(last_seq: u64, last_hash: &[u8; 32], checkpoints: u64, last_checkpoint_seq: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEAD_TAG.len() + 56);
    m.extend_from_slice(HEAD_TAG);
    m.extend_from_slice(&last_seq.to_be_bytes());
    m.extend_from_slice(last_hash);
    m.extend_from_slice(&checkpoints.to_be_bytes());
    m.extend_from_slice(&last_checkpoint_seq.to_be_bytes());
    m
}

fn key_err(path: &Path, problem: impl Into<String>) -> AuditError {
    AuditError::Key { path: path.to_owned(), problem: problem.into(), source: None }
}

fn key_io(path: &Path, problem: impl Into<String>, e: std::io::Error) -> AuditError {
    AuditError::Key { path: path.to_owned(), problem: problem.into(), source: Some(Box::new(e)) }
}

/// Reads the public key file gvmd wrote beside its private key.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let text = fs::read_to_string(path)
        .map_err(|e| key_io(path, "cannot read the public key; copy keys/audit.pub from gvmd's state directory", e))?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| AuditError::Key {
        path: path.to_owned(),
        problem: "not an ed25519 public key in SPKI PEM form".into(),
        source: Some(Box::new(e)),
    })
}

/// Loads gvmd's signing key, creating it (and the public key) when `may_create`.
/// `may_create` is false when the database already holds events: a new key could not
/// vouch for them, so a missing key is an error then.
pub(crate) fn load_or_create(state_dir: &Path, may_create: bool) -> Result<SigningKey, AuditError> {
    let dir = key_dir(state_dir);
    let priv_path = private_key_path(state_dir);
    let pub_path = public_key_path(state_dir);

    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| AuditError::StateDir { path: dir.clone(), source })?;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(|source| AuditError::StateDir { path: dir.clone(), source })?;

    let key = match fs::metadata(&priv_path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(key_err(
                    &priv_path,
                    format!(
                        "the private key is readable by group or others (mode {:o}), so it may \
                         have been copied; check who could read it, then `chmod 600` it",
                        meta.permissions().mode() & 0o777
                    ),
                ));
            }
            let text =
                fs::read_to_string(&priv_path).map_err(|e| key_io(&priv_path, "cannot read the private key", e))?;
            SigningKey::from_pkcs8_pem(&text).map_err(|e| AuditError::Key {
                path: priv_path.clone(),
                problem: "not an ed25519 private key in PKCS#8 PEM form; restore it from a backup".into(),
                source: Some(Box::new(e)),
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !may_create {
                return Err(key_err(
                    &priv_path,
                    "the private key is missing but the audit database already holds events \
                     signed with it; restore the key from a backup (a new key cannot vouch for \
                     old events)",
                ));
            }
            if pub_path.exists() {
                return Err(key_err(
                    &priv_path,
                    format!(
                        "the private key is missing but {} exists; restore the key from a \
                         backup, or remove both files to start a new chain",
                        pub_path.display()
                    ),
                ));
            }
            let key = SigningKey::generate(&mut rand_core::OsRng);
            let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| AuditError::Key {
                path: priv_path.clone(),
                problem: "cannot encode the new key".into(),
                source: Some(Box::new(e)),
            })?;
            write_atomically(&priv_path, pem.as_bytes(), 0o600)?;
            key
        }
        Err(e) => return Err(key_io(&priv_path, "cannot read the private key", e)),
    };

    let public_pem = key.verifying_key().to_public_key_pem(LineEnding::LF).map_err(|e| AuditError::Key {
        path: pub_path.clone(),
        problem: "cannot encode the public key".into(),
        source: Some(Box::new(e)),
    })?;
    match fs::read_to_string(&pub_path) {
        Ok(existing) => {
            let same = VerifyingKey::from_public_key_pem(&existing).map(|k| k == key.verifying_key()).unwrap_or(false);
            if !same {
                return Err(key_err(
                    &pub_path,
                    format!(
                        "the public key does not match the private key {}; one of them was \
                         replaced — restore both from the same backup",
                        priv_path.display()
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(&pub_path, public_pem.as_bytes(), 0o644)?;
        }
        Err(e) => return Err(key_io(&pub_path, "cannot read the public key", e)),
    }
    Ok(key)
}

/// Writes `path` through a temporary file, fsyncs it and its directory, with `mode`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AuditError> {
    let tmp = path.with_extension("tmp");
    let fail = |e| key_io(path, "cannot write the key file; make the directory writable", e);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(fail)?;
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(fail)?;
    f.write_all(bytes).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    drop(f);
    fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    }
    Ok(())
}
