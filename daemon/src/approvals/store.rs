//! The approval queue on disk: `<state-dir>/approvals.db`, one SQLite table for every
//! item waiting for a human (held requests and file changes).
//!
//! Owns: the ids (AUTOINCREMENT, so an id is never handed out twice, also across
//! restarts and after rows are deleted: `gvmctl approve 7` can only ever mean one
//! item) and each item's life: `pending` → `approved` | `denied` | `expired` | `gone`.
//! Durability: WAL with `synchronous = FULL`; a held request is recorded before it
//! waits. Must never: turn an ended item back into a pending one.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gvm_api::Approval;
use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

/// Schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE approvals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    profile     TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('request', 'file')),
    state       TEXT    NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'gone')),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    method      TEXT,
    url         TEXT,
    body        TEXT,
    rule        TEXT,
    workspace   TEXT,
    path        TEXT,
    change      TEXT,
    hash        TEXT,
    diff_size   INTEGER,
    resolved_by TEXT,
    resolved_at INTEGER
);
CREATE INDEX approvals_pending ON approvals (state, profile);
";

/// How an item stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    Denied,
    /// A held request's deadline passed, its client left, or gvmd restarted.
    Expired,
    /// A file change that is no longer in the workspace's change set.
    Gone,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Denied => "denied",
            Outcome::Expired => "expired",
            Outcome::Gone => "gone",
        }
    }
}

/// A file change the overlay scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileItem {
    pub workspace: String,
    pub path: String,
    /// `added`, `modified`, `deleted` or `renamed`.
    pub change: String,
    pub hash: Option<String>,
    pub diff_size: Option<u64>,
}

/// A held request to record.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub profile: &'a str,
    pub method: &'a str,
    pub url: &'a str,
    pub body: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the approval queue {path} — gvmd must own its state directory, and the disk must have room; moving the file away loses what waits")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path} has schema version {found}, newer than this gvmd knows ({SCHEMA_VERSION}); run the newer gvmd or move the file away (pending approvals are lost)")]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("the approval queue failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("no approval has id {id}; `gvmctl approvals` lists what waits")]
    NotFound { id: u64 },
    #[error("approval {id} already ended: {state}{by} at {at}")]
    Ended { id: u64, state: String, by: String, at: String },
}

/// The queue; one connection behind a mutex (answers are rare, inserts short).
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn from_unix(t: i64) -> String {
    crate::rfc3339(OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH))
}

const COLUMNS: &str = "id, profile, kind, state, created_at, expires_at, method, url, body, rule, \
                       workspace, path, change, hash, diff_size, resolved_by, resolved_at";

fn row_to_approval(r: &Row<'_>) -> rusqlite::Result<Approval> {
    let id: i64 = r.get(0)?;
    let created: i64 = r.get(4)?;
    let age = (now().unix_timestamp() - created).max(0) as u64;
    Ok(Approval {
        id: id as u64,
        profile: r.get(1)?,
        kind: r.get(2)?,
        state: r.get(3)?,
        since: from_unix(created),
        age_secs: age,
        expires_at: r.get::<_, Option<i64>>(5)?.map(from_unix),
        method: r.get(6)?,
        url: r.get(7)?,
        body: r.get(8)?,
        rule: r.get(9)?,
        workspace: r.get(10)?,
        path: r.get(11)?,
        change: r.get(12)?,
        hash: r.get(13)?,
        diff_size: r.get::<_, Option<i64>>(14)?.map(|n| n.max(0) as u64),
        resolved_by: r.get(15)?,
        resolved_at: r.get::<_, Option<i64>>(16)?.map(from_unix),
        command: format!("gvmctl approve {id}"),
    })
}

impl Store {
    /// Opens (creating, 0600, and migrating) the queue at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open { path: path.into(), source: e };
        // Create it 0600 ourselves: SQLite would follow the umask, and gives the WAL
        // and shm files the mode of the database.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| open_err(Box::new(e)))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| open_err(Box::new(e)))?;
        let conn = Connection::open(path).map_err(|e| open_err(Box::new(e)))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| open_err(Box::new(e)))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| open_err(Box::new(e)))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| open_err(Box::new(e)))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { path: path.into(), found: version });
        }
        if version < 1 {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(SCHEMA_V1)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        }
        Ok(Store { conn: Mutex::new(conn), path: path.into() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At start: every held request still pending belonged to a connection that died
    /// with the previous gvmd; they become `expired` and are returned (to audit).
    pub fn expire_stale_requests(&self) -> Result<Vec<Approval>, StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let stale = {
            let mut st = tx.prepare(&format!(
                "SELECT {COLUMNS} FROM approvals WHERE kind = 'request' AND state = 'pending' ORDER BY id"
            ))?;
            let rows = st.query_map([], row_to_approval)?.collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let t = now().unix_timestamp();
        tx.execute(
            "UPDATE approvals SET state = 'expired', resolved_by = 'gvmd restart', resolved_at = ?1
             WHERE kind = 'request' AND state = 'pending'",
            params![t],
        )?;
        tx.commit()?;
        Ok(stale
            .into_iter()
            .map(|mut a| {
                a.state = "expired".into();
                a.resolved_by = Some("gvmd restart".into());
                a.resolved_at = Some(from_unix(t));
                a
            })
            .collect())
    }

    /// Records a held request; its id is new.
    pub fn insert_request(&self, r: &NewRequest<'_>) -> Result<Approval, StoreError> {
        let c = self.conn();
        c.execute(
            "INSERT INTO approvals (profile, kind, created_at, expires_at, method, url, body, rule)
             VALUES (?1, 'request', ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.profile,
                r.created_at.unix_timestamp(),
                r.expires_at.unix_timestamp(),
                r.method,
                r.url,
                r.body,
                r.rule
            ],
        )?;
        let id = c.last_insert_rowid();
        Ok(c.query_row(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"), [id], row_to_approval)?)
    }

    /// Brings `profile`'s pending file items in line with `items` (the change set now):
    /// inserts those not pending yet (key: workspace, path, hash), marks pending ones
    /// no longer in `items` as `gone`, and returns the new ones (to notify).
    pub fn sync_files(&self, profile: &str, items: &[FileItem]) -> Result<Vec<Approval>, StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let pending: Vec<(i64, String, String, Option<String>)> = {
            let mut st = tx.prepare(
                "SELECT id, workspace, path, hash FROM approvals
                 WHERE kind = 'file' AND state = 'pending' AND profile = ?1",
            )?;
            let rows = st.query_map([profile], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let key = |w: &str, p: &str, h: Option<&str>| (w.to_string(), p.to_string(), h.map(str::to_string));
        let wanted: std::collections::HashSet<_> =
            items.iter().map(|i| key(&i.workspace, &i.path, i.hash.as_deref())).collect();
        let have: std::collections::HashSet<_> = pending.iter().map(|(_, w, p, h)| key(w, p, h.as_deref())).collect();
        let t = now().unix_timestamp();
        for (id, w, p, h) in &pending {
            if !wanted.contains(&key(w, p, h.as_deref())) {
                tx.execute(
                    "UPDATE approvals SET state = 'gone', resolved_by = 'workspace scan', resolved_at = ?2
                     WHERE id = ?1 AND state = 'pending'",
                    params![id, t],
                )?;
            }
        }
        let mut new_ids = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for i in items {
            let k = key(&i.workspace, &i.path, i.hash.as_deref());
            if have.contains(&k) || !seen.insert(k) {
                continue;
            }
            tx.execute(
                "INSERT INTO approvals (profile, kind, created_at, workspace, path, change, hash, diff_size)
                 VALUES (?1, 'file', ?2, ?3, ?4, ?5, ?6, ?7)",
                params![profile, t, i.workspace, i.path, i.change, i.hash, i.diff_size.map(|n| n as i64)],
            )?;
            new_ids.push(tx.last_insert_rowid());
        }
        let mut out = Vec::with_capacity(new_ids.len());
        {
            let mut st = tx.prepare(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"))?;
            for id in new_ids {
                out.push(st.query_row([id], row_to_approval)?);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    pub fn get(&self, id: u64) -> Result<Option<Approval>, StoreError> {
        let c = self.conn();
        Ok(c.query_row(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"), [id as i64], row_to_approval)
            .optional()?)
    }

    /// Ends a pending item; an unknown or already ended one is an error that says so.
    pub fn resolve(&self, id: u64, outcome: Outcome, by: &str) -> Result<Approval, StoreError> {
        let c = self.conn();
        let t = now().unix_timestamp();
        let n = c.execute(
            "UPDATE approvals SET state = ?2, resolved_by = ?3, resolved_at = ?4 WHERE id = ?1 AND state = 'pending'",
            params![id as i64, outcome.as_str(), by, t],
        )?;
        let row = c
            .query_row(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"), [id as i64], row_to_approval)
            .optional()?
            .ok_or(StoreError::NotFound { id })?;
        if n == 0 {
            return Err(ended(row));
        }
        Ok(row)
    }

    /// Ends an item only if it still waits (a timeout racing an answer); true if it did.
    pub fn end_if_pending(&self, id: u64, outcome: Outcome, by: &str) -> Result<bool, StoreError> {
        match self.resolve(id, outcome, by) {
            Ok(_) => Ok(true),
            Err(StoreError::Ended { .. } | StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Overwrites how an item ended (an approval whose request was already gone).
    pub fn set_outcome(&self, id: u64, outcome: Outcome, by: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE approvals SET state = ?2, resolved_by = ?3, resolved_at = ?4 WHERE id = ?1",
            params![id as i64, outcome.as_str(), by, now().unix_timestamp()],
        )?;
        Ok(())
    }

    /// Everything waiting, oldest first.
    pub fn pending(&self) -> Result<Vec<Approval>, StoreError> {
        let c = self.conn();
        let mut st = c.prepare(&format!("SELECT {COLUMNS} FROM approvals WHERE state = 'pending' ORDER BY id"))?;
        let rows = st.query_map([], row_to_approval)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Pending (requests, files) per profile.
    pub fn pending_counts(&self) -> Result<std::collections::HashMap<String, (u64, u64)>, StoreError> {
        let c = self.conn();
        let mut st =
            c.prepare("SELECT profile, kind, COUNT(*) FROM approvals WHERE state = 'pending' GROUP BY profile, kind")?;
        let mut out = std::collections::HashMap::<String, (u64, u64)>::new();
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
        for row in rows {
            let (p, k, n) = row?;
            let e = out.entry(p).or_default();
            if k == "file" {
                e.1 += n as u64;
            } else {
                e.0 += n as u64;
            }
        }
        Ok(out)
    }
}

fn ended(a: Approval) -> StoreError {
    StoreError::Ended {
        id: a.id,
        state: a.state,
        by: a.resolved_by.map(|b| format!(" by {b}")).unwrap_or_default(),
        at: a.resolved_at.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(profile: &str) -> NewRequest<'_> {
        let t = now();
        NewRequest {
            profile,
            method: "POST",
            url: "https://api.example/v1/x",
            body: Some("12 B application/json"),
            rule: None,
            created_at: t,
            expires_at: t + time::Duration::seconds(30),
        }
    }

    fn file(path: &str, hash: &str) -> FileItem {
        FileItem {
            workspace: "/srv/ws".into(),
            path: path.into(),
            change: "modified".into(),
            hash: Some(hash.into()),
            diff_size: Some(120),
        }
    }

    #[test]
    fn ids_are_never_reused_across_reopen_and_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("approvals.db");
        let s = Store::open(&path).unwrap();
        let a = s.insert_request(&req("p")).unwrap();
        let b = s.insert_request(&req("p")).unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!(a.command, "gvmctl approve 1");
        // Even if the newest rows are deleted, AUTOINCREMENT never hands their ids out.
        s.conn().execute("DELETE FROM approvals", []).unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.insert_request(&req("p")).unwrap().id, 3);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let c = s.conn();
        let journal: String = c.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        let sync: i64 = c.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
        assert_eq!((journal.as_str(), sync), ("wal", 2), "WAL with synchronous = FULL");
    }

    #[test]
    fn pending_requests_expire_on_reopen_and_stay_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("approvals.db");
        let s = Store::open(&path).unwrap();
        let a = s.insert_request(&req("p")).unwrap();
        let f = s.sync_files("p", &[file("a.csv", "h1")]).unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        let stale = s.expire_stale_requests().unwrap();
        assert_eq!(stale.iter().map(|x| x.id).collect::<Vec<_>>(), vec![a.id]);
        assert_eq!(stale[0].state, "expired");
        // File items outlive a restart; the request cannot be answered any more.
        assert_eq!(s.pending().unwrap().iter().map(|x| x.id).collect::<Vec<_>>(), vec![f[0].id]);
        let err = s.resolve(a.id, Outcome::Approved, "root").unwrap_err().to_string();
        assert!(err.contains(&format!("approval {} already ended: expired by gvmd restart at", a.id)), "{err}");
        let err = s.resolve(99, Outcome::Approved, "root").unwrap_err().to_string();
        assert!(err.contains("no approval has id 99") && err.contains("gvmctl approvals"), "{err}");
        assert!(!s.end_if_pending(a.id, Outcome::Expired, "timeout").unwrap());
    }

    #[test]
    fn sync_files_inserts_dedupes_and_marks_gone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("approvals.db")).unwrap();
        let new = s.sync_files("p", &[file("a.csv", "h1"), file("b.py", "h2"), file("b.py", "h2")]).unwrap();
        assert_eq!(new.len(), 2, "the duplicate is one item");
        assert_eq!(new[0].kind, "file");
        assert_eq!(new[0].diff_size, Some(120));
        // The same set again: nothing new.
        assert!(s.sync_files("p", &[file("a.csv", "h1"), file("b.py", "h2")]).unwrap().is_empty());
        // b.py changed again (new hash), a.csv disappeared; another profile untouched.
        let other = s.sync_files("q", &[file("a.csv", "h1")]).unwrap();
        let new2 = s.sync_files("p", &[file("b.py", "h3")]).unwrap();
        assert_eq!(new2.len(), 1);
        assert_eq!(new2[0].hash.as_deref(), Some("h3"));
        let pending: Vec<u64> = s.pending().unwrap().iter().map(|a| a.id).collect();
        assert_eq!(pending, vec![other[0].id, new2[0].id]);
        let gone = s.get(new[0].id).unwrap().unwrap();
        assert_eq!(gone.state, "gone");
        assert_eq!(s.pending_counts().unwrap()["p"], (0, 1));
        // An approved item stays approved; a later scan without it does not touch it.
        s.resolve(new2[0].id, Outcome::Approved, "root").unwrap();
        s.sync_files("p", &[]).unwrap();
        assert_eq!(s.get(new2[0].id).unwrap().unwrap().state, "approved");
    }
}
