//! The database schema: numbered migrations from the repository's `migrations/`
//! directory, embedded in the binary and applied in order, tracked with
//! `PRAGMA user_version`. A database whose version is newer than this binary knows is
//! refused, never downgraded.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::AuditError;

/// Migration `i` (0-based) brings the database to `user_version = i + 1`.
const MIGRATIONS: &[(&str, &str)] = &[("0001_audit.sql", include_str!("../../migrations/0001_audit.sql"))];

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long a connection waits for another one's lock before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How strongly a commit is made durable before an append is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `PRAGMA synchronous=FULL`: the WAL is fsynced at every commit, so an answered
    /// event survives a process crash, an OS crash and a power loss. The library's
    /// default ([`Audit::open`](crate::Audit::open)); gvmd with `[audit] sync = "full"`.
    #[default]
    Full,
    /// `PRAGMA synchronous=NORMAL` (WAL): a commit is written to the WAL (the kernel's
    /// page cache) before the append is answered, so an answered event survives a crash
    /// or SIGKILL of the process; an OS crash or power loss may lose the newest commits
    /// (never the chain's consistency: the WAL is fsynced at checkpoints). gvmd's
    /// default (`[audit] sync = "normal"`).
    Normal,
}

/// Opens the writer's connection: creates the file if needed, WAL, durability, migrations.
pub(crate) fn open_writer(path: &Path, durability: Durability) -> Result<Connection, AuditError> {
    let open_err = |source| AuditError::Open { path: path.to_owned(), source };
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL is required"
        ))));
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!("PRAGMA synchronous={sync}; PRAGMA trusted_schema=OFF;")).map_err(open_err)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Opens a read-only connection (never creates the file) and checks its schema version.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, AuditError> {
    let open_err = |source| AuditError::Open { path: path.to_owned(), source };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    conn.execute_batch("PRAGMA trusted_schema=OFF;").map_err(open_err)?;
    let found = user_version(&conn).map_err(open_err)?;
    if found > SCHEMA_VERSION {
        return Err(AuditError::SchemaTooNew { path: path.to_owned(), found, supported: SCHEMA_VERSION });
    }
    Ok(conn)
}

pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), AuditError> {
    let found = user_version(conn).map_err(|source| AuditError::Open { path: path.to_owned(), source })?;
    if found > SCHEMA_VERSION {
        return Err(AuditError::SchemaTooNew { path: path.to_owned(), found, supported: SCHEMA_VERSION });
    }
    for (i, (_, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as u32 + 1;
        let fail = |source| AuditError::Migrate { path: path.to_owned(), version, source };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive).map_err(fail)?;
        tx.execute_batch(sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", version).map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(target: "gvm::audit", db = %path.display(), version, "audit schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every audit migration in the repository is embedded, in order, with no gap.
    #[test]
    fn every_audit_migration_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql") && n.contains("audit"))
            .collect();
        files.sort();
        let embedded: Vec<&str> = MIGRATIONS.iter().map(|(n, _)| *n).collect();
        assert_eq!(files, embedded, "audit migrations must be embedded in file order");
    }
}
