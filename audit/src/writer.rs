//! The single writer thread: it owns the read-write connection and the signing key,
//! and is the only code that changes the database.
//!
//! Group commit: it blocks for one request, drains whatever else is queued (up to
//! [`MAX_BATCH`]), writes the events, any checkpoint that became due and the signed head
//! in ONE transaction, commits (fsync with `synchronous=FULL`), and only then answers
//! every caller. If anything in that transaction fails, it is rolled back, every caller
//! of the batch gets an error, and the writer re-reads its state from the database
//! before taking the next batch, so no sequence number is skipped or reused.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey};
use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use time::OffsetDateTime;

use crate::canon::{canonical_json, event_hash, format_time, merkle_root, EventFields};
use crate::chain::{self, ChainState};
use crate::keys::{checkpoint_message, head_message};
use crate::{Appended, AuditConfig, AuditError, NewEvent};

/// Most events committed in one transaction.
pub(crate) const MAX_BATCH: usize = 4096;

/// Where an answer goes: an async caller's oneshot or a blocking caller's channel.
pub(crate) enum Reply<T> {
    Async(tokio::sync::oneshot::Sender<T>),
    Blocking(SyncSender<T>),
}

impl<T> Reply<T> {
    fn send(self, v: T) {
        // A caller that went away (a cancelled future) no longer wants the answer; its
        // event is committed all the same.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(v);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(v);
            }
        }
    }
}

pub(crate) enum Request {
    Append(NewEvent, Reply<Result<Appended, AuditError>>),
    /// Commit what is queued before it, sign a final checkpoint, stop.
    Close(Reply<Result<(), AuditError>>),
}

/// What `status()` reports, updated after each commit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Snapshot {
    pub last_seq: u64,
    pub checkpoints: u64,
    pub last_checkpoint_seq: u64,
}

struct CheckpointLog {
    first_seq: u64,
    last_seq: u64,
    root: [u8; 32],
}

pub(crate) struct Writer {
    pub conn: Connection,
    pub path: PathBuf,
    pub key: SigningKey,
    pub cfg: AuditConfig,
    pub chain: ChainState,
    pub status: Arc<Mutex<Snapshot>>,
    /// When the oldest event not yet covered by a checkpoint was committed.
    pub pending_since: Option<Instant>,
    pub poisoned: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Writer {
    pub(crate) fn run(mut self, rx: Receiver<Request>) {
        let mut batch: Vec<(NewEvent, Reply<Result<Appended, AuditError>>)> = Vec::new();
        loop {
            let first = match self.checkpoint_deadline() {
                None => match rx.recv() {
                    Ok(r) => r,
                    // Every handle is gone without close(): stop as a crash would, with
                    // everything answered already committed. The next open resumes.
                    Err(_) => return,
                },
                Some(deadline) => match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        self.timed_checkpoint();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            let mut close = None;
            match first {
                Request::Append(ev, reply) => batch.push((ev, reply)),
                Request::Close(reply) => close = Some(reply),
            }
            while close.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Request::Append(ev, reply)) => batch.push((ev, reply)),
                    Ok(Request::Close(reply)) => close = Some(reply),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            if let Some(reply) = close {
                reply.send(self.final_checkpoint());
                return;
            }
        }
    }

    fn checkpoint_deadline(&self) -> Option<Instant> {
        self.pending_since.map(|t| t + self.cfg.checkpoint_interval)
    }

    fn commit_batch(&mut self, batch: &mut Vec<(NewEvent, Reply<Result<Appended, AuditError>>)>) {
        if let Some(source) = &self.poisoned {
            for (_, reply) in batch.drain(..) {
                reply.send(Err(AuditError::Poisoned { path: self.path.clone(), source: source.clone() }));
            }
            return;
        }
        let due_by_time = self.checkpoint_deadline().is_some_and(|d| d <= Instant::now());
        let events: Vec<&NewEvent> = batch.iter().map(|(ev, _)| ev).collect();
        match self.commit(&events, due_by_time) {
            Ok(appended) => {
                for ((_, reply), a) in batch.drain(..).zip(appended) {
                    reply.send(Ok(a));
                }
            }
            Err(e) => {
                tracing::error!(target: "gvm::audit", error = %e, db = %self.path.display(),
                    events = batch.len(), "audit commit failed; the events were not recorded");
                let source = Arc::new(e);
                for (_, reply) in batch.drain(..) {
                    reply.send(Err(AuditError::Write { path: self.path.clone(), source: source.clone() }));
                }
                self.resync();
            }
        }
    }

    fn timed_checkpoint(&mut self) {
        if self.poisoned.is_some() {
            self.pending_since = None;
            return;
        }
        if let Err(e) = self.commit(&[], true) {
            tracing::error!(target: "gvm::audit", error = %e, db = %self.path.display(),
                "audit checkpoint failed; retrying at the next interval");
            self.resync();
            // Retry one interval later rather than spinning.
            self.pending_since = (!self.chain.pending.is_empty()).then(Instant::now);
        }
    }

    fn final_checkpoint(&mut self) -> Result<(), AuditError> {
        if let Some(source) = &self.poisoned {
            return Err(AuditError::Poisoned { path: self.path.clone(), source: source.clone() });
        }
        if self.chain.pending.is_empty() {
            return Ok(());
        }
        self.commit(&[], true)
            .map(|_| ())
            .map_err(|e| AuditError::Write { path: self.path.clone(), source: Arc::new(e) })
    }

    /// One transaction: `events`, the checkpoints that are due (all pending events when
    /// `checkpoint_all`), the signed head. Updates `self.chain` as it goes; on error the
    /// caller must `resync()`.
    fn commit(&mut self, events: &[&NewEvent], checkpoint_all: bool) -> rusqlite::Result<Vec<Appended>> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let appended = insert_events(&tx, &mut self.chain, events)?;
        let logs = insert_checkpoints(&tx, &mut self.chain, &self.key, self.cfg.checkpoint_every, checkpoint_all)?;
        write_head(&tx, &self.chain, &self.key)?;
        tx.commit()?;

        let now = Instant::now();
        if self.chain.pending.is_empty() {
            self.pending_since = None;
        } else if !logs.is_empty() || self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
        for cp in &logs {
            tracing::info!(
                target: "gvm::audit",
                checkpoint_first_seq = cp.first_seq,
                checkpoint_last_seq = cp.last_seq,
                merkle_root = %hex::encode(cp.root),
                "audit checkpoint signed"
            );
        }
        if let Ok(mut s) = self.status.lock() {
            *s = Snapshot {
                last_seq: self.chain.last_seq,
                checkpoints: self.chain.checkpoints,
                last_checkpoint_seq: self.chain.last_checkpoint_seq,
            };
        }
        Ok(appended)
    }

    /// After a failed transaction: make sure it is rolled back and re-read where the
    /// chain stands. If even that fails, stop recording (every append errs).
    fn resync(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        match chain::load(&self.conn) {
            Ok(state) => {
                if state.pending.is_empty() {
                    self.pending_since = None;
                } else if self.pending_since.is_none() {
                    self.pending_since = Some(Instant::now());
                }
                self.chain = state;
            }
            Err(e) => {
                tracing::error!(target: "gvm::audit", error = %e, db = %self.path.display(),
                    "cannot re-read the audit chain after a failed write; recording stops");
                self.poisoned = Some(Arc::new(e));
            }
        }
    }
}

const INSERT_EVENT: &str = "INSERT INTO events
    (seq, time, profile, kind, decision, rule, details, prev_hash, hash)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

fn insert_events(
    tx: &Transaction<'_>,
    chain: &mut ChainState,
    events: &[&NewEvent],
) -> rusqlite::Result<Vec<Appended>> {
    let mut out = Vec::with_capacity(events.len());
    if events.is_empty() {
        return Ok(out);
    }
    let mut stmt = tx.prepare_cached(INSERT_EVENT)?;
    let mut buf = Vec::with_capacity(512);
    for ev in events {
        let seq = chain.last_seq + 1;
        let time = format_time(OffsetDateTime::now_utc());
        let details = canonical_json(&ev.details);
        let fields = EventFields {
            seq,
            time: time.as_bytes(),
            profile: ev.profile.as_deref().map(str::as_bytes),
            kind: ev.kind.as_bytes(),
            decision: ev.decision.as_deref().map(str::as_bytes),
            rule: ev.rule.as_deref().map(str::as_bytes),
            details: details.as_bytes(),
        };
        let hash = event_hash(&mut buf, &chain.last_hash, &fields);
        stmt.execute(params![
            seq,
            time,
            ev.profile,
            ev.kind,
            ev.decision,
            ev.rule,
            details,
            &chain.last_hash[..],
            &hash[..],
        ])?;
        chain.last_seq = seq;
        chain.last_hash = hash;
        chain.pending.push(hash);
        out.push(Appended { seq, hash });
    }
    Ok(out)
}

/// Checkpoints of exactly `every` events while that many are pending, then one over
/// the rest when `all`.
fn insert_checkpoints(
    tx: &Transaction<'_>,
    chain: &mut ChainState,
    key: &SigningKey,
    every: u64,
    all: bool,
) -> rusqlite::Result<Vec<CheckpointLog>> {
    let mut logs = Vec::new();
    loop {
        let pending = chain.pending.len() as u64;
        let n = if every > 0 && pending >= every {
            every
        } else if all && pending > 0 {
            pending
        } else {
            return Ok(logs);
        };
        let covered = &chain.pending[..n as usize];
        let first_seq = chain.last_checkpoint_seq + 1;
        let last_seq = chain.last_checkpoint_seq + n;
        let last_hash = covered[covered.len() - 1];
        // `covered` is not empty, so there is a root.
        let root = merkle_root(covered).unwrap_or_default();
        let sig = key.sign(&checkpoint_message(first_seq, last_seq, &root, &last_hash));
        tx.prepare_cached(
            "INSERT INTO checkpoints (first_seq, last_seq, merkle_root, signature, time)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            first_seq,
            last_seq,
            &root[..],
            &sig.to_bytes()[..],
            format_time(OffsetDateTime::now_utc()),
        ])?;
        chain.pending.drain(..n as usize);
        chain.checkpoints += 1;
        chain.last_checkpoint_seq = last_seq;
        logs.push(CheckpointLog { first_seq, last_seq, root });
    }
}

fn write_head(tx: &Transaction<'_>, chain: &ChainState, key: &SigningKey) -> rusqlite::Result<()> {
    let sig = key.sign(&head_message(chain.last_seq, &chain.last_hash, chain.checkpoints, chain.last_checkpoint_seq));
    tx.prepare_cached(
        "INSERT INTO head (id, last_seq, last_hash, checkpoints, last_checkpoint_seq, signature, time)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq,
             last_hash = excluded.last_hash, checkpoints = excluded.checkpoints,
             last_checkpoint_seq = excluded.last_checkpoint_seq,
             signature = excluded.signature, time = excluded.time",
    )?
    .execute(params![
        chain.last_seq,
        &chain.last_hash[..],
        chain.checkpoints,
        chain.last_checkpoint_seq,
        &sig.to_bytes()[..],
        format_time(OffsetDateTime::now_utc()),
    ])?;
    Ok(())
}
