//! Full verification of a database file: one streaming pass over every event in seq
//! order, inside one read transaction (a consistent snapshot even while gvmd writes).
//!
//! For each event, in this order: gap (a missing seq), broken link (prev_hash is not the
//! previous event's hash), hash mismatch (recomputed hash ≠ stored hash). Checkpoints
//! are checked as the walk reaches their last event (Merkle root recomputed from the
//! stored event hashes, then the signature), and their coverage must run 1..=N without
//! hole or overlap. Last comes the signed head, which catches events or checkpoints
//! deleted from the end. The first problem found stops the walk and is reported.
//!
//! It trusts only the public key it is given. It never writes (read-only connection).

use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};
use gvm_api::{VerifyProblem, VerifyProblemKind as Kind, VerifyReport};
use rusqlite::Connection;

use crate::canon::{encode_message, merkle_root_in_place, sha256, EventFields, GENESIS_PREV_HASH};
use crate::chain::{blob32, head_signature_ok, read_head};
use crate::keys::checkpoint_message;
use crate::schema;

struct Checkpoint {
    first: u64,
    last: u64,
    root: [u8; 32],
    sig: Signature,
}

/// The outcome of a walk that stopped early.
struct Stop {
    seq: u64,
    kind: Kind,
    detail: String,
}

fn stop(seq: u64, kind: Kind, detail: impl Into<String>) -> Stop {
    Stop { seq, kind, detail: detail.into() }
}

fn report(events: u64, checkpoints: u64, problem: Option<Stop>) -> VerifyReport {
    VerifyReport {
        ok: problem.is_none(),
        events,
        checkpoints,
        problem: problem.map(|p| VerifyProblem { seq: p.seq, kind: p.kind, detail: p.detail }),
    }
}

/// The message of `e` followed by its sources, for a one-line `detail`.
pub(crate) fn chain_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub(crate) fn unreadable(detail: impl Into<String>) -> VerifyReport {
    report(0, 0, Some(stop(0, Kind::Unreadable, detail)))
}

/// Opens `db_path` read-only and verifies it against `key`.
pub(crate) fn verify_path(db_path: &Path, key: &VerifyingKey) -> VerifyReport {
    if !db_path.is_file() {
        return unreadable(format!("there is no audit database at {}; check the state directory", db_path.display()));
    }
    match schema::open_reader(db_path) {
        Ok(conn) => verify_conn(&conn, key),
        Err(e) => unreadable(chain_text(&e)),
    }
}

struct Walk {
    events: u64,
    checkpoints_checked: u64,
}

pub(crate) fn verify_conn(conn: &Connection, key: &VerifyingKey) -> VerifyReport {
    let mut walk = Walk { events: 0, checkpoints_checked: 0 };
    let result = conn
        .unchecked_transaction()
        .map_err(|e| stop(0, Kind::Unreadable, chain_text(&e)))
        .and_then(|tx| walk_all(&tx, key, &mut walk));
    match result {
        Ok(total_checkpoints) => report(walk.events, total_checkpoints, None),
        Err(p) => report(walk.events, walk.checkpoints_checked, Some(p)),
    }
}

fn sql_stop(seq: u64) -> impl Fn(rusqlite::Error) -> Stop {
    move |e| {
        stop(
            seq,
            Kind::Unreadable,
            format!("the database cannot be read as an audit chain at event {seq}: {}", chain_text(&e)),
        )
    }
}

/// Rows handed from the reading thread to the hashing thread at a time.
const CHUNK_ROWS: usize = 1024;
/// Chunk buffers in circulation.
const CHUNKS: usize = 6;

/// Consecutive events, read and encoded, waiting to be hashed.
struct Chunk {
    first_seq: u64,
    /// The hashed messages `prev_hash ‖ canonical(event)`, back to back.
    data: Vec<u8>,
    /// End offset of each message in `data`.
    ends: Vec<usize>,
    /// The stored hash of each event.
    hashes: Vec<[u8; 32]>,
}

/// What the hashing side found.
struct Hashed {
    /// Events whose link and hash verified.
    events: u64,
    checkpoints_checked: usize,
    last_hash: [u8; 32],
    /// The walk reached the seq of the structural checkpoint problem.
    hit_structural: bool,
    problem: Option<Stop>,
}

/// Returns the number of checkpoints when everything verifies.
///
/// Two threads: this one steps SQLite and encodes each row (gaps and unreadable rows
/// are found here); a second one hashes, checks links, and checks checkpoints. Hashing
/// is as costly as reading, so the pipeline nearly halves the time on two cores. The
/// hashing side only ever sees rows before the reader's first problem, so its problem,
/// if any, is the first one.
fn walk_all(conn: &Connection, key: &VerifyingKey, walk: &mut Walk) -> Result<u64, Stop> {
    let version = schema::user_version(conn).map_err(sql_stop(0))?;
    if version == 0 {
        return Err(stop(0, Kind::Unreadable, "the file is not an audit database (schema version 0)"));
    }
    let (checkpoints, structural) = load_checkpoints(conn)?;
    let structural_seq = structural.as_ref().map(|s| s.seq);

    let (read, hashed) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(CHUNKS);
        let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Chunk>();
        let cps = &checkpoints;
        let hasher = scope.spawn(move || hash_side(rx, recycle_tx, cps, structural_seq, key));
        let read = read_side(conn, tx, recycle_rx);
        let hashed = hasher.join().unwrap_or_else(|_| Hashed {
            events: 0,
            checkpoints_checked: 0,
            last_hash: GENESIS_PREV_HASH,
            hit_structural: false,
            problem: Some(stop(0, Kind::Unreadable, "verification failed internally")),
        });
        (read, hashed)
    });
    walk.events = hashed.events;
    walk.checkpoints_checked = hashed.checkpoints_checked as u64;
    if let Some(p) = hashed.problem {
        return Err(p);
    }
    if hashed.hit_structural {
        if let Some(s) = structural {
            return Err(s);
        }
    }
    let last = read?;

    if let Some(cp) = checkpoints.get(hashed.checkpoints_checked) {
        return Err(stop(
            last + 1,
            Kind::Truncated,
            format!(
                "the checkpoint signed over events {}..={} reaches past the end of the log \
                 (event {last}): events {}..={} were deleted from the end",
                cp.first,
                cp.last,
                last + 1,
                cp.last
            ),
        ));
    }
    if let Some(s) = structural {
        return Err(s);
    }
    check_head(conn, key, last, &hashed.last_hash, &checkpoints)?;
    Ok(checkpoints.len() as u64)
}

/// Reads every event in seq order and sends them, encoded, to the hashing side.
/// Returns the last seq read, or the first gap or unreadable row.
fn read_side(
    conn: &Connection,
    tx: std::sync::mpsc::SyncSender<Chunk>,
    recycle: std::sync::mpsc::Receiver<Chunk>,
) -> Result<u64, Stop> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, time, profile, kind, decision, rule, details, prev_hash, hash
               FROM events ORDER BY seq",
        )
        .map_err(sql_stop(0))?;
    let mut rows = stmt.query([]).map_err(sql_stop(0))?;
    let mut expect: u64 = 1;
    // At most CHUNKS buffers exist; they go round between the two threads, so memory
    // stays bounded and nothing is allocated per chunk once they have grown.
    let mut allocated = 0;
    let mut new_chunk = |first_seq: u64| {
        let recycled = if allocated < CHUNKS { recycle.try_recv().ok() } else { recycle.recv().ok() };
        let mut c = recycled.unwrap_or_else(|| {
            allocated += 1;
            Chunk {
                first_seq,
                data: Vec::with_capacity(CHUNK_ROWS * 320),
                ends: Vec::with_capacity(CHUNK_ROWS),
                hashes: Vec::with_capacity(CHUNK_ROWS),
            }
        });
        c.first_seq = first_seq;
        c.data.clear();
        c.ends.clear();
        c.hashes.clear();
        c
    };
    let mut chunk = new_chunk(1);
    let result = loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break Ok(expect - 1),
            Err(e) => break Err(sql_stop(expect)(e)),
        };
        match read_row(row, expect, &mut chunk) {
            Ok(()) => {}
            Err(p) => break Err(p),
        }
        expect += 1;
        if chunk.ends.len() == CHUNK_ROWS {
            let next = new_chunk(expect);
            if tx.send(std::mem::replace(&mut chunk, next)).is_err() {
                // The hashing side stopped at a problem; it has the first one.
                return Ok(expect - 1);
            }
        }
    };
    if !chunk.ends.is_empty() {
        let _ = tx.send(chunk);
    }
    result
}

/// Checks the seq and column types of one row and appends its message to `chunk`.
fn read_row(row: &rusqlite::Row<'_>, expect: u64, chunk: &mut Chunk) -> Result<(), Stop> {
    use rusqlite::types::ValueRef;
    let seq = row.get_ref(0).and_then(|v| Ok(v.as_i64()?)).map_err(sql_stop(expect))?;
    if seq != expect as i64 {
        if seq > expect as i64 {
            let detail = if seq == expect as i64 + 1 {
                format!("event {expect} is missing (the next stored event is {seq}) — it was deleted")
            } else {
                format!(
                    "events {expect}..={} are missing (the next stored event is {seq}) — they \
                     were deleted",
                    seq - 1
                )
            };
            return Err(stop(expect, Kind::Gap, detail));
        }
        return Err(stop(
            expect,
            Kind::Unreadable,
            format!("a row has sequence number {seq}; sequence numbers start at 1"),
        ));
    }
    let seq = expect;
    let bad_col = |col: &str| {
        stop(
            seq,
            Kind::Unreadable,
            format!("event {seq} cannot be read as an audit event: column `{col}` has the wrong type"),
        )
    };
    let text = |i: usize, col: &str| -> Result<&[u8], Stop> {
        match row.get_ref(i) {
            Ok(ValueRef::Text(b)) => Ok(b),
            _ => Err(bad_col(col)),
        }
    };
    let opt = |i: usize, col: &str| -> Result<Option<&[u8]>, Stop> {
        match row.get_ref(i) {
            Ok(ValueRef::Text(b)) => Ok(Some(b)),
            Ok(ValueRef::Null) => Ok(None),
            _ => Err(bad_col(col)),
        }
    };
    let hash32 = |i: usize, col: &str| -> Result<[u8; 32], Stop> {
        match row.get_ref(i) {
            Ok(ValueRef::Blob(b)) => blob32(b).ok_or_else(|| bad_col(col)),
            _ => Err(bad_col(col)),
        }
    };
    let fields = EventFields {
        seq,
        time: text(1, "time")?,
        profile: opt(2, "profile")?,
        kind: text(3, "kind")?,
        decision: opt(4, "decision")?,
        rule: opt(5, "rule")?,
        details: text(6, "details")?,
    };
    let prev_hash = hash32(7, "prev_hash")?;
    let hash = hash32(8, "hash")?;
    encode_message(&mut chunk.data, &prev_hash, &fields);
    chunk.ends.push(chunk.data.len());
    chunk.hashes.push(hash);
    Ok(())
}

/// Hashes and links every event, and checks each checkpoint when its last event passes.
fn hash_side(
    rx: std::sync::mpsc::Receiver<Chunk>,
    recycle: std::sync::mpsc::Sender<Chunk>,
    checkpoints: &[Checkpoint],
    structural_seq: Option<u64>,
    key: &VerifyingKey,
) -> Hashed {
    let mut out = Hashed {
        events: 0,
        checkpoints_checked: 0,
        last_hash: GENESIS_PREV_HASH,
        hit_structural: false,
        problem: None,
    };
    let mut leaves: Vec<[u8; 32]> = Vec::new();
    for chunk in rx {
        let mut start = 0;
        for (i, (&end, &hash)) in chunk.ends.iter().zip(&chunk.hashes).enumerate() {
            let seq = chunk.first_seq + i as u64;
            let msg = &chunk.data[start..end];
            start = end;
            if msg[..32] != out.last_hash {
                let detail = if seq == 1 {
                    "event 1: prev_hash is not the genesis value (32 zero bytes) — events were \
                     inserted before it or it was replaced"
                        .to_owned()
                } else {
                    format!(
                        "event {seq}: prev_hash is not the hash of event {} — events were \
                         swapped, replaced or inserted here",
                        seq - 1
                    )
                };
                out.problem = Some(stop(seq, Kind::BrokenLink, detail));
                return out;
            }
            if sha256(msg) != hash {
                out.problem = Some(stop(
                    seq,
                    Kind::HashMismatch,
                    format!(
                        "event {seq}: stored hash does not match its contents — the row was \
                         altered after it was written"
                    ),
                ));
                return out;
            }
            out.events += 1;
            out.last_hash = hash;
            if let Some(cp) = checkpoints.get(out.checkpoints_checked) {
                leaves.push(hash);
                if seq == cp.last {
                    if let Err(p) = check_checkpoint(cp, &mut leaves, &hash, key) {
                        out.problem = Some(p);
                        return out;
                    }
                    leaves.clear();
                    out.checkpoints_checked += 1;
                }
            }
            if structural_seq.is_some_and(|s| s <= seq) {
                out.hit_structural = true;
                return out;
            }
        }
        let _ = recycle.send(chunk);
    }
    out
}

/// Loads the checkpoints in coverage order. Returns those that form a contiguous run
/// from event 1, and the structural problem that ends the run, if any.
fn load_checkpoints(conn: &Connection) -> Result<(Vec<Checkpoint>, Option<Stop>), Stop> {
    let mut stmt = conn
        .prepare(
            "SELECT id, first_seq, last_seq, merkle_root, signature FROM checkpoints
              ORDER BY first_seq, id",
        )
        .map_err(sql_stop(0))?;
    let mut rows = stmt.query([]).map_err(sql_stop(0))?;
    let mut out: Vec<Checkpoint> = Vec::new();
    let mut expect_first = 1u64;
    while let Some(row) = rows.next().map_err(sql_stop(0))? {
        let first = row.get::<_, i64>(1).map_err(sql_stop(0))?;
        let last = row.get::<_, i64>(2).map_err(sql_stop(0))?;
        let root = row.get_ref(3).ok().and_then(|v| v.as_blob().ok()).and_then(blob32);
        let sig = row.get_ref(4).ok().and_then(|v| v.as_blob().ok()).and_then(|b| Signature::from_slice(b).ok());
        let at = u64::try_from(first).ok().filter(|f| *f >= 1).unwrap_or(expect_first);
        let (Some(root), Some(sig)) = (root, sig) else {
            return Ok((
                out,
                Some(stop(
                    at,
                    Kind::BadSignature,
                    format!(
                        "the checkpoint over events {first}..={last} is malformed (its root or \
                         signature has the wrong size) — it was altered"
                    ),
                )),
            ));
        };
        if first < 1 || last < first {
            return Ok((
                out,
                Some(stop(
                    at,
                    Kind::BadSignature,
                    format!("a checkpoint claims the impossible range {first}..={last} — it was altered"),
                )),
            ));
        }
        let (first, last) = (first as u64, last as u64);
        if first > expect_first {
            return Ok((
                out,
                Some(stop(
                    expect_first,
                    Kind::Gap,
                    format!("no checkpoint covers events {expect_first}..={} — a checkpoint was deleted", first - 1),
                )),
            ));
        }
        if first < expect_first {
            return Ok((
                out,
                Some(stop(
                    first,
                    Kind::BadSignature,
                    format!(
                        "the checkpoint over events {first}..={last} overlaps the one before it — \
                         checkpoints were added or altered"
                    ),
                )),
            ));
        }
        out.push(Checkpoint { first, last, root, sig });
        expect_first = last + 1;
    }
    Ok((out, None))
}

fn check_checkpoint(
    cp: &Checkpoint,
    leaves: &mut [[u8; 32]],
    last_hash: &[u8; 32],
    key: &VerifyingKey,
) -> Result<(), Stop> {
    let root = merkle_root_in_place(leaves);
    if root != Some(cp.root) {
        return Err(stop(
            cp.first,
            Kind::BadSignature,
            format!(
                "the checkpoint over events {}..={}: its Merkle root does not match the stored \
                 events — events in this range were rewritten",
                cp.first, cp.last
            ),
        ));
    }
    let msg = checkpoint_message(cp.first, cp.last, &cp.root, last_hash);
    if key.verify_strict(&msg, &cp.sig).is_err() {
        return Err(stop(
            cp.first,
            Kind::BadSignature,
            format!(
                "the checkpoint over events {}..={}: its signature does not verify with the audit \
                 public key — the checkpoint was forged or altered",
                cp.first, cp.last
            ),
        ));
    }
    Ok(())
}

fn check_head(
    conn: &Connection,
    key: &VerifyingKey,
    last: u64,
    last_hash: &[u8; 32],
    checkpoints: &[Checkpoint],
) -> Result<(), Stop> {
    let head = read_head(conn).map_err(sql_stop(last))?;
    let Some(head) = head else {
        if last == 0 && checkpoints.is_empty() {
            return Ok(());
        }
        return Err(stop(
            last + 1,
            Kind::Truncated,
            format!(
                "the signed head record is missing, so events deleted after event {last} would \
                 go unnoticed — it was removed"
            ),
        ));
    };
    if !head_signature_ok(&head, key) {
        return Err(stop(
            head.last_seq,
            Kind::BadSignature,
            format!(
                "the signed head (event {}) does not verify with the audit public key — it was \
                 forged or altered",
                head.last_seq
            ),
        ));
    }
    if head.last_seq > last {
        return Err(stop(
            last + 1,
            Kind::Truncated,
            format!(
                "events {}..={} are missing from the end of the log: the signed head says it \
                 ends at event {} — they were deleted",
                last + 1,
                head.last_seq,
                head.last_seq
            ),
        ));
    }
    if head.last_seq < last {
        return Err(stop(
            head.last_seq + 1,
            Kind::BadSignature,
            format!(
                "events {}..={last} come after the signed head (event {}) — they were not \
                 written by gvmd",
                head.last_seq + 1,
                head.last_seq
            ),
        ));
    }
    if head.last_hash.as_slice() != last_hash.as_slice() {
        return Err(stop(
            last,
            Kind::BadSignature,
            format!("event {last} is not the event the signed head vouches for — it was replaced"),
        ));
    }
    let stored = checkpoints.len() as u64;
    let stored_last = checkpoints.last().map_or(0, |c| c.last);
    if head.checkpoints != stored || head.last_checkpoint_seq != stored_last {
        let kind = if head.checkpoints > stored { Kind::Truncated } else { Kind::BadSignature };
        return Err(stop(
            stored_last + 1,
            kind,
            format!(
                "the signed head records {} checkpoints up to event {}, but {stored} up to event \
                 {stored_last} are stored — checkpoints were deleted or added",
                head.checkpoints, head.last_checkpoint_seq
            ),
        ));
    }
    Ok(())
}
