//! The single writer thread: it owns the read-write connection and the signing key,
//! and is the only code that changes the database.
//!
//! Group commit: it blocks for one request, drains whatever else is queued (up to
//! [`MAX_BATCH`]), writes the events, any checkpoint that became due and the signed head
//! in ONE transaction, commits (fsync with `synchronous=FULL`), and only then answers
//! every caller. Unawaited events ([`Lazy`]) are written in the same transaction as the
//! next awaited batch, or on their own at most [`LAZY_DELAY`] after the last commit.
//! If anything in that transaction fails, it is rolled back, every caller of the batch
//! gets an error, and the writer re-reads its state from the database before taking the
//! next batch, so no sequence number is skipped or reused.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use time::OffsetDateTime;

use crate::canon::{canonical_json, event_hash, format_time, merkle_root, EventFields};
use crate::chain::{self, ChainState};
use crate::keys::{checkpoint_message, head_message};
use crate::{Appended, AuditConfig, AuditError, NewEvent};

/// Most events committed in one transaction.
pub(crate) const MAX_BATCH: usize = 4096;
/// Longest wait for the callers of the previous batch before committing.
const MAX_GATHER: Duration = Duration::from_micros(500);
/// Longest time an unawaited event waits for a commit to ride along with.
pub(crate) const LAZY_DELAY: Duration = Duration::from_millis(50);
/// Unawaited events queued that make the writer commit them without waiting.
const LAZY_FLUSH_AT: usize = 1024;

/// An event as the writer takes it: `details` already rendered as canonical JSON, on
/// the caller's thread (the writer is the one serial part of the pipeline, so the work
/// that can be done beside it is done there, and the caller's allocations are freed
/// where they were made).
pub(crate) struct Prepared {
    profile: Option<String>,
    kind: String,
    decision: Option<String>,
    rule: Option<String>,
    details: String,
}

impl From<NewEvent> for Prepared {
    fn from(ev: NewEvent) -> Self {
        let details = canonical_json(&ev.details);
        Prepared { profile: ev.profile, kind: ev.kind, decision: ev.decision, rule: ev.rule, details }
    }
}

impl From<crate::EventRef<'_>> for Prepared {
    fn from(ev: crate::EventRef<'_>) -> Self {
        Prepared {
            profile: ev.profile.map(str::to_owned),
            kind: ev.kind.to_owned(),
            decision: ev.decision.map(str::to_owned),
            rule: ev.rule.map(str::to_owned),
            details: canonical_json(ev.details),
        }
    }
}

/// Events nobody waits for ([`crate::Audit::append_nowait`]). They are not sent through
/// the channel: the writer takes them with the next commit, so queueing one costs a
/// lock and no thread wake-up, and they add no commit (no fsync) of their own. Only a
/// writer parked with no deadline is woken (`Request::Nudge`), to arm one.
#[derive(Default)]
pub(crate) struct Lazy {
    queue: Mutex<Vec<Prepared>>,
    /// The writer is parked without a deadline: the next unawaited event must wake it.
    parked: AtomicBool,
}

impl Lazy {
    /// Queues `ev`; true when the writer must be nudged.
    pub(crate) fn push(&self, ev: Prepared) -> bool {
        let len = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.push(ev);
            q.len()
        };
        // SeqCst pairs with the writer's store-then-check in `park_check`: either it sees
        // this event or this sees its flag.
        self.parked.swap(false, Ordering::SeqCst) || len == LAZY_FLUSH_AT
    }

    fn take(&self) -> Vec<Prepared> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// About to park with no deadline: true if events are already waiting (then do not).
    fn park_check(&self) -> bool {
        self.parked.store(true, Ordering::SeqCst);
        if self.len() > 0 {
            self.parked.store(false, Ordering::SeqCst);
            return true;
        }
        false
    }
}

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
    Append(Prepared, Reply<Result<Appended, AuditError>>),
    /// Unawaited events are queued in [`Lazy`]: arm a deadline for them (or commit
    /// them now if many are queued).
    Nudge,
    /// Commit what is queued before it, sign a final checkpoint, stop.
    Close(Reply<Result<(), AuditError>>),
    /// Health: answered after what is queued before it, with the result of a real
    /// write through the same connection (see [`Writer::probe`]).
    Ping(Reply<Result<(), AuditError>>),
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
    /// Size and duration of the last commit, for gathering the next batch.
    pub last_batch_len: usize,
    pub last_commit_time: Duration,
    pub lazy: Arc<Lazy>,
}

type Batch = Vec<(Prepared, Reply<Result<Appended, AuditError>>)>;
type Answer = Reply<Result<(), AuditError>>;

/// Sorts one request into what the loop collects before it commits.
fn route(req: Request, batch: &mut Batch, close: &mut Option<Answer>, pings: &mut Vec<Answer>) {
    match req {
        Request::Append(ev, reply) => batch.push((ev, reply)),
        Request::Nudge => {}
        Request::Close(reply) => *close = Some(reply),
        Request::Ping(reply) => pings.push(reply),
    }
}

impl Writer {
    pub(crate) fn run(mut self, rx: Receiver<Request>) {
        let mut batch: Batch = Vec::new();
        // When the queued unawaited events are committed at the latest. Armed after every
        // commit of awaited events (their completions follow), so that in steady traffic
        // they ride along with the next commit and never wake the writer.
        let mut lazy_deadline: Option<Instant> = None;
        loop {
            if lazy_deadline.is_none() && self.lazy.park_check() {
                lazy_deadline = Some(Instant::now() + LAZY_DELAY);
            }
            let deadline = match (self.checkpoint_deadline(), lazy_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let first = match deadline {
                None => match rx.recv() {
                    Ok(r) => r,
                    // Every handle is gone without close(): stop as a crash would, with
                    // everything answered already committed. The next open resumes.
                    Err(_) => return self.flush_lazy(),
                },
                Some(deadline) => match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        let now = Instant::now();
                        if lazy_deadline.is_some_and(|d| d <= now) {
                            lazy_deadline = None;
                            self.flush_lazy();
                        }
                        if self.checkpoint_deadline().is_some_and(|d| d <= now) {
                            self.timed_checkpoint();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return self.flush_lazy(),
                },
            };
            self.lazy.parked.store(false, Ordering::SeqCst);
            let mut close = None;
            let mut pings = Vec::new();
            route(first, &mut batch, &mut close, &mut pings);
            while close.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(req) => route(req, &mut batch, &mut close, &mut pings),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            // Callers answered by the previous commit come straight back with their next
            // event. Waiting a moment for them (at most a quarter of a commit's time) keeps
            // every active caller in one commit, instead of two half-size groups that
            // alternate, each waiting for the other's fsync: that halves throughput. A lone
            // caller never waits (its previous batch had one event).
            let target = self.last_batch_len.min(MAX_BATCH);
            if close.is_none() && !batch.is_empty() && batch.len() < target {
                let deadline = Instant::now() + (self.last_commit_time / 4).min(MAX_GATHER);
                while close.is_none() && batch.len() < target {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(req) => route(req, &mut batch, &mut close, &mut pings),
                        Err(_) => break,
                    }
                }
            }
            if !batch.is_empty() {
                self.last_batch_len = batch.len();
                let started = Instant::now();
                self.commit_batch(&mut batch);
                self.last_commit_time = started.elapsed();
                lazy_deadline = Some(Instant::now() + LAZY_DELAY);
            } else if close.is_none() {
                // A nudge: many unawaited events are queued, or the first of them arrived
                // while the writer was parked without a deadline.
                if self.lazy.len() >= LAZY_FLUSH_AT {
                    self.flush_lazy();
                    lazy_deadline = None;
                } else {
                    lazy_deadline.get_or_insert_with(|| Instant::now() + LAZY_DELAY);
                }
            }
            for reply in pings {
                reply.send(self.probe());
            }
            if let Some(reply) = close {
                self.flush_lazy();
                reply.send(self.final_checkpoint());
                return;
            }
        }
    }

    /// Commits the queued unawaited events on their own (nobody waits for the result).
    fn flush_lazy(&mut self) {
        let lazy = self.lazy.take();
        if lazy.is_empty() || self.poisoned.is_some() {
            return;
        }
        let due_by_time = self.checkpoint_deadline().is_some_and(|d| d <= Instant::now());
        let events: Vec<&Prepared> = lazy.iter().collect();
        if let Err(e) = self.commit(&events, due_by_time) {
            tracing::error!(target: "gvm::audit", error = %e, db = %self.path.display(),
                events = lazy.len(), "audit commit failed; unawaited events were not recorded");
            self.resync();
        }
    }

    fn checkpoint_deadline(&self) -> Option<Instant> {
        self.pending_since.map(|t| t + self.cfg.checkpoint_interval)
    }

    /// Commits `batch` (after the queued unawaited events, which ride along) and answers
    /// its callers.
    fn commit_batch(&mut self, batch: &mut Batch) {
        if let Some(source) = &self.poisoned {
            for (_, reply) in batch.drain(..) {
                reply.send(Err(AuditError::Poisoned { path: self.path.clone(), source: source.clone() }));
            }
            return;
        }
        let lazy = self.lazy.take();
        let due_by_time = self.checkpoint_deadline().is_some_and(|d| d <= Instant::now());
        let events: Vec<&Prepared> = lazy.iter().chain(batch.iter().map(|(ev, _)| ev)).collect();
        let n = events.len();
        match self.commit(&events, due_by_time) {
            Ok(appended) => {
                for ((_, reply), a) in batch.drain(..).zip(appended.into_iter().skip(lazy.len())) {
                    reply.send(Ok(a));
                }
            }
            Err(e) => {
                tracing::error!(target: "gvm::audit", error = %e, db = %self.path.display(),
                    events = n, "audit commit failed; the events were not recorded");
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
    fn commit(&mut self, events: &[&Prepared], checkpoint_all: bool) -> rusqlite::Result<Vec<Appended>> {
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

    /// Proves the store can still commit: rewrites the signed head row unchanged in a
    /// transaction of its own, so the commit goes down to the disk (fsync with
    /// `synchronous=FULL`) while the chain's content stays as it is. A poisoned writer,
    /// a failing disk or a full one answers an error; a hung one does not answer.
    fn probe(&mut self) -> Result<(), AuditError> {
        if let Some(source) = &self.poisoned {
            return Err(AuditError::Poisoned { path: self.path.clone(), source: source.clone() });
        }
        let write = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("UPDATE head SET time = time WHERE id = 1", [])?;
            tx.commit()
        };
        write(&mut self.conn).map_err(|e| {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            AuditError::Write { path: self.path.clone(), source: Arc::new(e) }
        })
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
    events: &[&Prepared],
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
        let details = &ev.details;
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
