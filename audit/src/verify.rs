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

use crate::canon::{event_hash, merkle_root_in_place, EventFields, GENESIS_PREV_HASH};
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
    Stop {
        seq,
        kind,
        detail: detail.into(),
    }
}

fn report(events: u64, checkpoints: u64, problem: Option<Stop>) -> VerifyReport {
    VerifyReport {
        ok: problem.is_none(),
        events,
        checkpoints,
        problem: problem.map(|p| VerifyProblem {
            seq: p.seq,
            kind: p.kind,
            detail: p.detail,
        }),
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
        return unreadable(format!(
            "there is no audit database at {}; check the state directory",
            db_path.display()
        ));
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
    let mut walk = Walk {
        events: 0,
        checkpoints_checked: 0,
    };
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
            format!(
                "the database cannot be read as an audit chain at event {seq}: {}",
                chain_text(&e)
            ),
        )
    }
}

/// Returns the number of checkpoints when everything verifies.
fn walk_all(conn: &Connection, key: &VerifyingKey, walk: &mut Walk) -> Result<u64, Stop> {
    let version = schema::user_version(conn).map_err(sql_stop(0))?;
    if version == 0 {
        return Err(stop(
            0,
            Kind::Unreadable,
            "the file is not an audit database (schema version 0)",
        ));
    }
    let (checkpoints, mut structural) = load_checkpoints(conn)?;

    let mut stmt = conn
        .prepare(
            "SELECT seq, time, profile, kind, decision, rule, details, prev_hash, hash
               FROM events ORDER BY seq",
        )
        .map_err(sql_stop(0))?;
    let mut rows = stmt.query([]).map_err(sql_stop(0))?;
    let mut expect: u64 = 1;
    let mut prev = GENESIS_PREV_HASH;
    let mut buf = Vec::with_capacity(512);
    let mut leaves: Vec<[u8; 32]> = Vec::new();
    let mut cp_i = 0;

    while let Some(row) = rows.next().map_err(sql_stop(expect))? {
        let seq = row
            .get_ref(0)
            .and_then(|v| Ok(v.as_i64()?))
            .map_err(sql_stop(expect))?;
        if seq != expect as i64 {
            if seq > expect as i64 {
                let detail = if seq == expect as i64 + 1 {
                    format!("event {expect} is missing (the next stored event is {seq}) — it was deleted")
                } else {
                    format!(
                        "events {expect}..={} are missing (the next stored event is {seq}) — they were deleted",
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
                Ok(rusqlite::types::ValueRef::Text(b)) => Ok(b),
                _ => Err(bad_col(col)),
            }
        };
        let opt = |i: usize, col: &str| -> Result<Option<&[u8]>, Stop> {
            match row.get_ref(i) {
                Ok(rusqlite::types::ValueRef::Text(b)) => Ok(Some(b)),
                Ok(rusqlite::types::ValueRef::Null) => Ok(None),
                _ => Err(bad_col(col)),
            }
        };
        let hash32 = |i: usize, col: &str| -> Result<[u8; 32], Stop> {
            match row.get_ref(i) {
                Ok(rusqlite::types::ValueRef::Blob(b)) => blob32(b).ok_or_else(|| bad_col(col)),
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
        if prev_hash != prev {
            let detail = if seq == 1 {
                "event 1: prev_hash is not the genesis value (32 zero bytes) — events were \
                 inserted before it or it was replaced"
                    .to_owned()
            } else {
                format!(
                    "event {seq}: prev_hash is not the hash of event {} — events were swapped, \
                     replaced or inserted here",
                    seq - 1
                )
            };
            return Err(stop(seq, Kind::BrokenLink, detail));
        }
        if event_hash(&mut buf, &prev_hash, &fields) != hash {
            return Err(stop(
                seq,
                Kind::HashMismatch,
                format!(
                    "event {seq}: stored hash does not match its contents — the row was altered \
                     after it was written"
                ),
            ));
        }
        walk.events += 1;
        prev = hash;
        expect += 1;

        if let Some(cp) = checkpoints.get(cp_i) {
            leaves.push(hash);
            if seq == cp.last {
                check_checkpoint(cp, &mut leaves, &hash, key)?;
                leaves.clear();
                cp_i += 1;
                walk.checkpoints_checked += 1;
            }
        }
        if let Some(s) = structural.take_if(|s| s.seq <= seq) {
            return Err(s);
        }
    }
    drop(rows);
    let last = expect - 1;

    if let Some(cp) = checkpoints.get(cp_i) {
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
    check_head(conn, key, last, &prev, &checkpoints)?;
    Ok(checkpoints.len() as u64)
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
        let sig = row
            .get_ref(4)
            .ok()
            .and_then(|v| v.as_blob().ok())
            .and_then(|b| Signature::from_slice(b).ok());
        let at = u64::try_from(first)
            .ok()
            .filter(|f| *f >= 1)
            .unwrap_or(expect_first);
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
                    format!(
                        "a checkpoint claims the impossible range {first}..={last} — it was altered"
                    ),
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
                    format!(
                        "no checkpoint covers events {expect_first}..={} — a checkpoint was deleted",
                        first - 1
                    ),
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
        out.push(Checkpoint {
            first,
            last,
            root,
            sig,
        });
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
        let kind = if head.checkpoints > stored {
            Kind::Truncated
        } else {
            Kind::BadSignature
        };
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
