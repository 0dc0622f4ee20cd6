//! Errors of the audit store. Each message says what failed and what to do about it;
//! the underlying cause is the error's `source()` and is not repeated in the message.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong opening, writing or reading the audit store.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The state directory (or a directory under it) cannot be created or written.
    #[error(
        "cannot create or write the audit directory {path}: make it writable by the user \
         gvmd runs as (root), or start gvmd with another --state-dir"
    )]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The signing key or its public half cannot be read or written.
    #[error("cannot use the audit signing key {path}: {problem}")]
    Key {
        path: PathBuf,
        /// What is wrong and what to do, in one sentence.
        problem: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The database cannot be opened or configured.
    #[error(
        "cannot open the audit database {path}: check that the file and its directory are \
         readable and writable by gvmd and that the disk is not full"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The database was written by a newer gvm.
    #[error(
        "the audit database {path} has schema version {found}, but this gvmd knows only up to \
         version {supported}: run the newer gvmd that wrote it (downgrades are not supported)"
    )]
    SchemaTooNew { path: PathBuf, found: u32, supported: u32 },

    /// A schema migration failed; the database was left at the previous version.
    #[error(
        "cannot upgrade the audit database {path} to schema version {version}; it was left \
         unchanged at the previous version: check free disk space and permissions, then restart"
    )]
    Migrate {
        path: PathBuf,
        version: u32,
        #[source]
        source: rusqlite::Error,
    },

    /// The chain gvmd would resume from does not match its signed head. gvmd refuses to
    /// extend it (fail closed).
    #[error(
        "refusing to extend the audit chain in {path}: at event {seq}, {detail}; run \
         `gvmctl audit verify` to find the first bad event, and keep a copy of the database \
         as evidence before moving it aside"
    )]
    BrokenChain { path: PathBuf, seq: u64, detail: String },

    /// The events of this append were not committed (nothing of the batch was written).
    #[error(
        "the audit event was not recorded because writing {path} failed: check free disk \
         space and the database's permissions; the request it describes must be refused"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: Arc<rusqlite::Error>,
    },

    /// An earlier write failure left the writer unable to tell what is on disk.
    #[error(
        "the audit writer stopped after a write failure on {path} and records nothing more: \
         fix the disk problem and restart gvmd"
    )]
    Poisoned {
        path: PathBuf,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },

    /// `close()` was called: the store records nothing more.
    #[error("the audit store is closed and records nothing more (gvmd is shutting down)")]
    Closed,

    /// The writer thread is gone without `close()` (a bug: it panicked).
    #[error("the audit writer thread stopped unexpectedly; restart gvmd")]
    WriterStopped,

    /// Reading events failed.
    #[error("cannot read the audit database {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A stored event cannot be turned back into an [`gvm_api::AuditEvent`].
    #[error(
        "event {seq} in the audit database cannot be read back ({problem}): run \
         `gvmctl audit verify`"
    )]
    Corrupt { seq: u64, problem: String },

    /// An events query was malformed.
    #[error("invalid audit query: `{field}` {problem}")]
    BadQuery { field: &'static str, problem: String },
}
