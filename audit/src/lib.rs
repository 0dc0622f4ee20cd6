//! gvm's audit store: a tamper-evident, append-only chain of events in SQLite.
//!
//! # What it owns
//!
//! - `<state_dir>/audit.db` (WAL mode; schema from the repository's `migrations/`,
//!   tracked with `PRAGMA user_version`; a database newer than this binary is refused).
//! - gvmd's ed25519 audit key, `<state_dir>/keys/audit.key` (PKCS#8 PEM, 0600, created on
//!   first open) and its public half `<state_dir>/keys/audit.pub` (SPKI PEM, 0644), see
//!   [`keys`].
//! - One writer thread, the only code that writes the database. Appends are queued to it
//!   and group-committed: one transaction and one fsync (`synchronous=FULL`) for
//!   everything queued, and each caller is answered only after that commit. An `Ok` from
//!   [`Audit::append`] therefore means "on disk, survives a crash and a power loss"; any
//!   failure is an `Err` and nothing of that batch is on disk.
//! - [`Audit::append_nowait`] is for records whose loss in a crash is acceptable (the
//!   gateway's completion records, whose decision was appended and awaited): they wait
//!   in memory for the next commit (at most 50 ms), so they add no commit, no fsync and
//!   no thread wake-up of their own. Their `Ok` only means "queued".
//! - The caller's thread renders an event's details to canonical JSON before queueing
//!   it; the writer thread does only what must be serial (seq, time, hash, SQL, head).
//!
//! # The chain
//!
//! Events get seq 1, 2, 3… with no gaps and `hash = SHA-256(prev_hash ‖ canonical
//! event)` (layout in [`canon`]; event 1's prev_hash is 32 zero bytes). Hashes, roots
//! and signatures are stored as raw BLOBs; the wire types carry them as hex. `details`
//! is stored as exactly the canonical JSON text that was hashed.
//!
//! Every [`AuditConfig::checkpoint_every`] events (exactly that many per checkpoint), or
//! [`AuditConfig::checkpoint_interval`] after the oldest event no checkpoint covers yet,
//! a checkpoint row signs the Merkle root of its range together with its first and last
//! seq and the last event's hash, so it cannot be moved. It is also logged
//! (`target: "gvm::audit"`, "audit checkpoint signed", with the root), which puts an
//! anchor outside the database. [`Audit::close`] signs a final checkpoint over whatever
//! is left.
//!
//! A one-row signed head (newest seq and hash, checkpoint count and the newest
//! checkpoint's last seq) is rewritten in the same transaction as every commit, so
//! deleting events or checkpoints from the end of the log fails verification
//! (`truncated`), even after the last checkpoint.
//!
//! # Restarts
//!
//! [`Audit::open`] resumes from the newest event after checking that the signed head
//! vouches for it and the newest checkpoint verifies; if not, it refuses to open
//! ([`AuditError::BrokenChain`], naming the seq and `gvmctl audit verify`): gvmd must
//! not extend a broken chain. It does not re-walk the whole chain (that is
//! [`Audit::verify`]). Events committed after the last checkpoint (after a crash, or when
//! every handle was dropped without `close()`) stay as they are: they are covered by the
//! signed head, and the first checkpoint after the restart covers them.
//!
//! # What it must never do
//!
//! Answer `Ok` for an event that is not committed; extend a chain whose head does not
//! verify; rewrite or delete an event; create a new key for a database that already
//! holds events; write from anywhere but the writer thread.
//!
//! # What it trusts
//!
//! The private key file (whoever can read it can forge checkpoints and heads), the
//! system clock for event times (times are recorded, not used for ordering: seq is the
//! order), and SQLite's durability. Whoever can replace the whole database with an older
//! copy of itself rolls the log back undetectably from inside; the logged checkpoint
//! roots (journald) are the anchor that shows it.

pub mod canon;
mod chain;
mod error;
pub mod keys;
mod schema;
mod verify;
mod writer;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
pub use gvm_api::{AuditEvent, AuditStatus, EventsQuery, VerifyProblem, VerifyProblemKind, VerifyReport};
use rusqlite::Connection;

pub use canon::GENESIS_PREV_HASH;
pub use error::AuditError;
pub use keys::{key_dir, private_key_path, public_key_path, KEY_DIR, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};
pub use schema::{Durability, SCHEMA_VERSION};

use writer::{Lazy, Prepared, Reply, Request, Snapshot, Writer};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "audit.db";

/// Most events [`Audit::events`] returns.
pub const MAX_EVENTS: u32 = 10_000;

/// `<state_dir>/audit.db`.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_FILE)
}

/// How many decisions of one kind and decision the stored events stand for
/// ([`Audit::count_decisions`]). An event whose details carry `folded: N` stands for N
/// decisions (the gateway folds identical refusals, and counts refusals past a limit,
/// into such events); every other event for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionCount {
    pub kind: String,
    pub decision: Option<String>,
    /// `details.of`: the kind of the requests a `limits_exceeded` event counts.
    pub of: Option<String>,
    pub count: u64,
}

/// When checkpoints are signed.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// A checkpoint covers exactly this many events (0: only by time). Default 1000.
    pub checkpoint_every: u64,
    /// Longest time an event waits for a checkpoint to cover it. Default 10 s.
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { checkpoint_every: 1000, checkpoint_interval: Duration::from_secs(10) }
    }
}

/// An event to record. The store adds seq, time, prev_hash and hash.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEvent {
    pub profile: Option<String>,
    /// What happened, e.g. `net.decision`, `dns.answer`, `daemon.start`.
    pub kind: String,
    pub decision: Option<String>,
    pub rule: Option<String>,
    /// Stored as canonical JSON (sorted keys, compact).
    pub details: serde_json::Value,
}

/// [`NewEvent`] borrowed: for callers that keep the details (nothing is cloned; the
/// canonical text is rendered straight from them).
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub profile: Option<&'a str>,
    pub kind: &'a str,
    pub decision: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub details: &'a serde_json::Value,
}

/// A committed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// Handle on the audit store. Cheap to clone; every clone talks to the same writer.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("db_path", &self.inner.db_path).finish_non_exhaustive()
    }
}

struct Inner {
    tx: Option<mpsc::Sender<Request>>,
    lazy: Arc<Lazy>,
    writer: Mutex<Option<JoinHandle<()>>>,
    reader: Mutex<Connection>,
    status: Arc<Mutex<Snapshot>>,
    closed: AtomicBool,
    db_path: PathBuf,
    verifying_key: VerifyingKey,
}

impl Drop for Inner {
    /// Last handle gone without `close()`: the writer finishes the batch in hand and
    /// stops without a final checkpoint (as after a crash; the next open resumes).
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(handle) = self.writer.get_mut().ok().and_then(Option::take) {
            let _ = handle.join();
        }
    }
}

impl Audit {
    /// Opens (creating if needed) the store in `state_dir`: directory, database, key,
    /// migrations; checks the chain head it resumes from; starts the writer thread.
    pub fn open(state_dir: &Path, cfg: AuditConfig) -> Result<Audit, AuditError> {
        Self::open_with_durability(state_dir, cfg, Durability::Full)
    }

    /// [`Audit::open`] with a chosen durability. gvmd uses what `gvmd.toml`'s
    /// `[audit] sync` names: `normal` (gvmd's default, [`Durability::Normal`]) or `full`.
    pub fn open_with_durability(
        state_dir: &Path,
        cfg: AuditConfig,
        durability: Durability,
    ) -> Result<Audit, AuditError> {
        fs::create_dir_all(state_dir).map_err(|source| AuditError::StateDir { path: state_dir.to_owned(), source })?;
        let path = db_path(state_dir);
        if !path.exists() {
            // Created by us so that it is not world-readable; SQLite gives the -wal and
            // -shm files the same mode.
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|source| AuditError::StateDir { path: state_dir.to_owned(), source })?;
        }
        let conn = schema::open_writer(&path, durability)?;
        let has_rows: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM events) OR EXISTS (SELECT 1 FROM head)", [], |r| r.get(0))
            .map_err(|source| AuditError::Open { path: path.clone(), source })?;
        let key = keys::load_or_create(state_dir, !has_rows)?;
        let verifying_key = key.verifying_key();
        let chain = chain::load_and_check(&conn, &verifying_key).map_err(|e| match e {
            chain::LoadError::Sql(source) => AuditError::Open { path: path.clone(), source },
            chain::LoadError::Broken { seq, detail } => AuditError::BrokenChain { path: path.clone(), seq, detail },
        })?;
        let reader = schema::open_reader(&path)?;

        let status = Arc::new(Mutex::new(Snapshot {
            last_seq: chain.last_seq,
            checkpoints: chain.checkpoints,
            last_checkpoint_seq: chain.last_checkpoint_seq,
        }));
        tracing::info!(target: "gvm::audit", db = %path.display(), last_seq = chain.last_seq,
            checkpoints = chain.checkpoints, uncovered = chain.pending.len(), "audit store opened");
        let pending_since = (!chain.pending.is_empty()).then(Instant::now);
        let lazy = Arc::new(Lazy::default());
        let writer = Writer {
            conn,
            path: path.clone(),
            key,
            cfg,
            chain,
            status: status.clone(),
            pending_since,
            poisoned: None,
            last_batch_len: 0,
            last_commit_time: Duration::ZERO,
            lazy: lazy.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("gvm-audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| AuditError::StateDir { path: state_dir.to_owned(), source })?;
        Ok(Audit {
            inner: Arc::new(Inner {
                tx: Some(tx),
                lazy,
                writer: Mutex::new(Some(handle)),
                reader: Mutex::new(reader),
                status,
                closed: AtomicBool::new(false),
                db_path: path,
                verifying_key,
            }),
        })
    }

    fn send(&self, req: Request) -> Result<(), AuditError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(AuditError::Closed);
        }
        match &self.inner.tx {
            Some(tx) => tx.send(req).map_err(|_| self.gone()),
            None => Err(AuditError::Closed),
        }
    }

    fn gone(&self) -> AuditError {
        if self.inner.closed.load(Ordering::Acquire) {
            AuditError::Closed
        } else {
            AuditError::WriterStopped
        }
    }

    /// Records `ev`; returns once it is committed durably (or with the reason it is not).
    pub async fn append(&self, ev: NewEvent) -> Result<Appended, AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Request::Append(Prepared::from(ev), Reply::Async(tx)))?;
        rx.await.unwrap_or_else(|_| Err(self.gone()))
    }

    /// [`Audit::append`] of a borrowed event.
    pub async fn append_ref(&self, ev: EventRef<'_>) -> Result<Appended, AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Request::Append(Prepared::from(ev), Reply::Async(tx)))?;
        rx.await.unwrap_or_else(|_| Err(self.gone()))
    }

    /// Records `ev` without waiting: it is committed with the next awaited append, or
    /// at most 50 ms later, in any case before [`Audit::close`] returns. For records whose
    /// loss in a crash is acceptable (the gateway's completion events: the decision they
    /// complete was committed with [`Audit::append`]); an `Ok` means only "queued". They
    /// cost no commit (no fsync) of their own while awaited appends keep coming, and no
    /// thread wake-up. A commit that fails is logged; the events are then not recorded.
    pub fn append_nowait(&self, ev: NewEvent) -> Result<(), AuditError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(AuditError::Closed);
        }
        if self.inner.lazy.push(Prepared::from(ev)) {
            self.send(Request::Nudge)?;
        }
        Ok(())
    }

    /// [`Audit::append`] for threads outside an async runtime (it blocks the thread).
    pub fn append_blocking(&self, ev: NewEvent) -> Result<Appended, AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Request::Append(Prepared::from(ev), Reply::Blocking(tx)))?;
        rx.recv().unwrap_or_else(|_| Err(self.gone()))
    }

    /// A round trip through the writer: answered once everything queued before it is
    /// committed, with the result of a real commit to the disk (see `Writer::probe`).
    /// This, not [`Audit::status`], is the store's health: a writer that stopped,
    /// panicked or cannot write answers an error, and one stuck in a write (a hung
    /// fsync) does not answer at all, so callers bound the wait.
    pub async fn ping(&self) -> Result<(), AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Request::Ping(Reply::Async(tx)))?;
        rx.await.unwrap_or_else(|_| Err(self.gone()))
    }

    /// Where the chain stands (as of the last commit; no I/O).
    pub fn status(&self) -> Result<AuditStatus, AuditError> {
        let s = *self.inner.status.lock().map_err(|_| AuditError::WriterStopped)?;
        Ok(AuditStatus {
            db_path: self.inner.db_path.display().to_string(),
            last_seq: s.last_seq,
            checkpoints: s.checkpoints,
            last_checkpoint_seq: s.last_checkpoint_seq,
        })
    }

    /// Events matching `q`, oldest first. With `limit`, the newest `limit` matching
    /// events; at most [`MAX_EVENTS`] in any case (the newest ones).
    pub fn events(&self, q: &EventsQuery) -> Result<Vec<AuditEvent>, AuditError> {
        let conn = self.inner.reader.lock().map_err(|_| AuditError::WriterStopped)?;
        read_events(&conn, &self.inner.db_path, q)
    }

    /// The event numbered `seq`, if there is one.
    pub fn event(&self, seq: u64) -> Result<Option<AuditEvent>, AuditError> {
        let conn = self.inner.reader.lock().map_err(|_| AuditError::WriterStopped)?;
        let q = EventsQuery { after_seq: seq.checked_sub(1), ..Default::default() };
        read_events_from(&conn, &self.inner.db_path, &q, "ASC", 1).map(|mut v| v.pop().filter(|e| e.seq == seq))
    }

    /// Every event matching `q` (its `limit` is ignored), oldest first, handed to `f`
    /// one at a time: for readers that must see a whole window (`gvmctl suggest`) and
    /// would be cut short by [`MAX_EVENTS`]. Holds the reader connection meanwhile.
    pub fn scan(&self, q: &EventsQuery, mut f: impl FnMut(AuditEvent)) -> Result<u64, AuditError> {
        let conn = self.inner.reader.lock().map_err(|_| AuditError::WriterStopped)?;
        let path = &self.inner.db_path;
        let read_err = |source| AuditError::Read { path: path.to_owned(), source };
        let (filter, params) = query_filter(q)?;
        let sql = format!(
            "SELECT seq, time, profile, kind, decision, rule, details, prev_hash, hash
               FROM events{filter} ORDER BY seq"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(read_err)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter())).map_err(read_err)?;
        let mut n = 0;
        while let Some(row) = rows.next().map_err(read_err)? {
            f(event_of(row, path)?);
            n += 1;
        }
        Ok(n)
    }

    /// The newest event of `kind` for `profile`, if any.
    pub fn last_of_kind(&self, profile: &str, kind: &str) -> Result<Option<AuditEvent>, AuditError> {
        let conn = self.inner.reader.lock().map_err(|_| AuditError::WriterStopped)?;
        let path = &self.inner.db_path;
        let read_err = |source| AuditError::Read { path: path.to_owned(), source };
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, time, profile, kind, decision, rule, details, prev_hash, hash
                   FROM events WHERE profile = ?1 AND kind = ?2 ORDER BY seq DESC LIMIT 1",
            )
            .map_err(read_err)?;
        let mut rows = stmt.query(rusqlite::params![profile, kind]).map_err(read_err)?;
        match rows.next().map_err(read_err)? {
            Some(row) => Ok(Some(event_of(row, path)?)),
            None => Ok(None),
        }
    }

    /// How many events of each kind and decision match `q` (its `limit` is ignored):
    /// exact however many there are, where [`Audit::events`] returns at most
    /// [`MAX_EVENTS`].
    pub fn count_decisions(&self, q: &EventsQuery) -> Result<Vec<DecisionCount>, AuditError> {
        let conn = self.inner.reader.lock().map_err(|_| AuditError::WriterStopped)?;
        count_decisions(&conn, &self.inner.db_path, q)
    }

    /// Re-reads the database file from disk and verifies the whole chain with this
    /// store's key (see [`verify_db`]). Safe while appends go on: it reads one snapshot.
    pub fn verify(&self) -> VerifyReport {
        verify::verify_path(&self.inner.db_path, &self.inner.verifying_key)
    }

    /// Commits everything queued, signs a final checkpoint over every event, and stops
    /// the writer. Later appends fail with [`AuditError::Closed`]. A second call is a
    /// no-op.
    pub fn close(&self) -> Result<(), AuditError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = match &self.inner.tx {
            Some(sender) => sender.send(Request::Close(Reply::Blocking(tx))).is_ok(),
            None => false,
        };
        self.inner.closed.store(true, Ordering::Release);
        if !sent {
            return Err(AuditError::WriterStopped);
        }
        let result = rx.recv().unwrap_or(Err(AuditError::WriterStopped));
        if let Some(handle) = self.inner.writer.lock().ok().and_then(|mut h| h.take()) {
            let _ = handle.join();
        }
        result
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    /// The public key checkpoints and heads verify with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.inner.verifying_key
    }
}

/// Verifies the database at `db_path` against the public key file `public_key_path`,
/// offline: read-only, without gvmd (this is what `gvmctl audit verify` runs when gvmd
/// is down). Never fails: an unreadable database or key is reported as `unreadable`.
pub fn verify_db(db_path: &Path, public_key_path: &Path) -> VerifyReport {
    match keys::load_public_key(public_key_path) {
        Ok(key) => verify::verify_path(db_path, &key),
        Err(e) => verify::unreadable(verify::chain_text(&e)),
    }
}

type SqlParams = Vec<Box<dyn rusqlite::ToSql>>;

/// The `WHERE` clause of an [`EventsQuery`] (profile, since, after_seq) and its
/// parameters; the limit is the caller's.
fn query_filter(q: &EventsQuery) -> Result<(String, SqlParams), AuditError> {
    let since = match &q.since {
        None => None,
        Some(s) => Some(canon::normalise_time(s).ok_or_else(|| AuditError::BadQuery {
            field: "since",
            problem: format!("is not an RFC 3339 time (e.g. 2026-11-23T10:00:00Z): {s:?}"),
        })?),
    };
    let mut sql = String::from(" WHERE 1 = 1");
    let mut params: SqlParams = Vec::new();
    if let Some(p) = &q.profile {
        params.push(Box::new(p.clone()));
        sql.push_str(&format!(" AND profile = ?{}", params.len()));
    }
    if let Some(t) = since {
        params.push(Box::new(t));
        sql.push_str(&format!(" AND time >= ?{}", params.len()));
    }
    if let Some(after) = q.after_seq {
        params.push(Box::new(after.min(i64::MAX as u64)));
        sql.push_str(&format!(" AND seq > ?{}", params.len()));
    }
    Ok((sql, params))
}

fn count_decisions(conn: &Connection, path: &Path, q: &EventsQuery) -> Result<Vec<DecisionCount>, AuditError> {
    let read_err = |source| AuditError::Read { path: path.to_owned(), source };
    let (filter, params) = query_filter(q)?;
    let sql = format!(
        "SELECT kind, decision, json_extract(details, '$.of') AS of,
                sum(coalesce(json_extract(details, '$.folded'), 1))
           FROM events{filter} GROUP BY kind, decision, of ORDER BY kind, decision, of"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(read_err)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params.iter()), |r| {
            Ok(DecisionCount { kind: r.get(0)?, decision: r.get(1)?, of: r.get(2)?, count: r.get(3)? })
        })
        .map_err(read_err)?;
    rows.collect::<Result<_, _>>().map_err(read_err)
}

fn read_events(conn: &Connection, path: &Path, q: &EventsQuery) -> Result<Vec<AuditEvent>, AuditError> {
    let limit = q.limit.unwrap_or(MAX_EVENTS).min(MAX_EVENTS);
    let mut out = read_events_from(conn, path, q, "DESC", limit)?;
    out.reverse();
    Ok(out)
}

/// Up to `limit` events matching `q`, in `order` of seq (`ASC`: the oldest first).
fn read_events_from(
    conn: &Connection,
    path: &Path,
    q: &EventsQuery,
    order: &'static str,
    limit: u32,
) -> Result<Vec<AuditEvent>, AuditError> {
    let read_err = |source| AuditError::Read { path: path.to_owned(), source };
    let (filter, mut params) = query_filter(q)?;
    let mut sql = format!(
        "SELECT seq, time, profile, kind, decision, rule, details, prev_hash, hash
           FROM events{filter}"
    );
    params.push(Box::new(limit));
    sql.push_str(&format!(" ORDER BY seq {order} LIMIT ?{}", params.len()));

    let mut stmt = conn.prepare_cached(&sql).map_err(read_err)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter())).map_err(read_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(read_err)? {
        out.push(event_of(row, path)?);
    }
    Ok(out)
}

/// One row of `SELECT seq, time, profile, kind, decision, rule, details, prev_hash, hash`.
fn event_of(row: &rusqlite::Row<'_>, path: &Path) -> Result<AuditEvent, AuditError> {
    let read_err = |source| AuditError::Read { path: path.to_owned(), source };
    let seq: u64 = row.get(0).map_err(read_err)?;
    let corrupt = |problem: &str| AuditError::Corrupt { seq, problem: problem.to_owned() };
    let details: String = row.get(6).map_err(read_err)?;
    let details = serde_json::from_str(&details).map_err(|_| corrupt("its details are not JSON"))?;
    let prev_hash: Vec<u8> = row.get(7).map_err(read_err)?;
    let hash: Vec<u8> = row.get(8).map_err(read_err)?;
    Ok(AuditEvent {
        seq,
        time: row.get(1).map_err(read_err)?,
        profile: row.get(2).map_err(read_err)?,
        kind: row.get(3).map_err(read_err)?,
        decision: row.get(4).map_err(read_err)?,
        rule: row.get(5).map_err(read_err)?,
        details,
        prev_hash: hex::encode(prev_hash),
        hash: hex::encode(hash),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn handle_is_send_sync_clone() {
        assert_send_sync::<Audit>();
    }
}
