//! The state the writer resumes from (newest event, newest checkpoint, events not yet
//! covered by a checkpoint), and the O(1)-ish check run before gvmd extends a chain:
//! the signed head must match the newest event and checkpoint, the newest event must
//! hash correctly, and the newest checkpoint must verify. A full walk is `verify`.

use ed25519_dalek::{Signature, VerifyingKey};
use rusqlite::{Connection, OptionalExtension};

use crate::canon::{event_hash, merkle_root_in_place, EventFields, GENESIS_PREV_HASH};
use crate::keys::{checkpoint_message, head_message};

/// Where the chain stands.
#[derive(Debug, Clone)]
pub(crate) struct ChainState {
    pub last_seq: u64,
    pub last_hash: [u8; 32],
    pub checkpoints: u64,
    pub last_checkpoint_seq: u64,
    /// Hashes of events `last_checkpoint_seq + 1 ..= last_seq`, in order.
    pub pending: Vec<[u8; 32]>,
}

/// Why a chain cannot be resumed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("reading the chain state failed")]
    Sql(#[from] rusqlite::Error),
    #[error("at event {seq}, {detail}")]
    Broken { seq: u64, detail: String },
}

fn broken(seq: u64, detail: impl Into<String>) -> LoadError {
    LoadError::Broken { seq, detail: detail.into() }
}

pub(crate) fn blob32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

/// Reads the chain state. Checks only what is needed to extend it correctly: the
/// uncovered events are contiguous and their hashes are 32 bytes.
pub(crate) fn load(conn: &Connection) -> Result<ChainState, LoadError> {
    let last: Option<(u64, Vec<u8>)> = conn
        .query_row("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (last_seq, last_hash) = match last {
        None => (0, GENESIS_PREV_HASH),
        Some((seq, h)) => (seq, blob32(&h).ok_or_else(|| broken(seq, "the stored hash is not 32 bytes"))?),
    };
    let (checkpoints, last_checkpoint_seq): (u64, u64) =
        conn.query_row("SELECT COUNT(*), COALESCE(MAX(last_seq), 0) FROM checkpoints", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    if last_checkpoint_seq > last_seq {
        return Err(broken(
            last_seq + 1,
            format!(
                "a signed checkpoint covers events up to {last_checkpoint_seq}, but the log ends \
                 at event {last_seq}: events were deleted from the end"
            ),
        ));
    }
    let mut pending = Vec::with_capacity((last_seq - last_checkpoint_seq) as usize);
    let mut stmt = conn.prepare("SELECT seq, hash FROM events WHERE seq > ?1 ORDER BY seq")?;
    let mut rows = stmt.query([last_checkpoint_seq])?;
    let mut expect = last_checkpoint_seq + 1;
    while let Some(row) = rows.next()? {
        let seq: u64 = row.get(0)?;
        if seq != expect {
            return Err(broken(expect, "the event is missing: events were deleted"));
        }
        let h = row.get_ref(1)?.as_blob().ok().and_then(blob32);
        pending.push(h.ok_or_else(|| broken(seq, "the stored hash is not 32 bytes"))?);
        expect += 1;
    }
    Ok(ChainState { last_seq, last_hash, checkpoints, last_checkpoint_seq, pending })
}

/// The signed head row, as stored.
pub(crate) struct HeadRow {
    pub last_seq: u64,
    pub last_hash: Vec<u8>,
    pub checkpoints: u64,
    pub last_checkpoint_seq: u64,
    pub signature: Vec<u8>,
}

pub(crate) fn read_head(conn: &Connection) -> rusqlite::Result<Option<HeadRow>> {
    conn.query_row(
        "SELECT last_seq, last_hash, checkpoints, last_checkpoint_seq, signature
           FROM head WHERE id = 1",
        [],
        |r| {
            Ok(HeadRow {
                last_seq: r.get(0)?,
                last_hash: r.get(1)?,
                checkpoints: r.get(2)?,
                last_checkpoint_seq: r.get(3)?,
                signature: r.get(4)?,
            })
        },
    )
    .optional()
}

pub(crate) fn head_signature_ok(head: &HeadRow, key: &VerifyingKey) -> bool {
    let (Some(hash), Ok(sig)) = (blob32(&head.last_hash), Signature::from_slice(&head.signature)) else {
        return false;
    };
    let msg = head_message(head.last_seq, &hash, head.checkpoints, head.last_checkpoint_seq);
    key.verify_strict(&msg, &sig).is_ok()
}

/// Loads the chain and refuses it unless its end is vouched for by `key`.
pub(crate) fn load_and_check(conn: &Connection, key: &VerifyingKey) -> Result<ChainState, LoadError> {
    let state = load(conn)?;
    let head = read_head(conn)?;
    let Some(head) = head else {
        if state.last_seq == 0 && state.checkpoints == 0 {
            return Ok(state);
        }
        return Err(broken(state.last_seq, "the signed head record is missing, so deleted events cannot be ruled out"));
    };
    if !head_signature_ok(&head, key) {
        return Err(broken(
            head.last_seq,
            "the signed head does not verify with the audit key (it was altered, or the key \
             was replaced)",
        ));
    }
    if head.last_seq > state.last_seq {
        return Err(broken(
            state.last_seq + 1,
            format!(
                "events {}..={} were deleted from the end of the log (the signed head says it \
                 ends at event {})",
                state.last_seq + 1,
                head.last_seq,
                head.last_seq
            ),
        ));
    }
    if head.last_seq < state.last_seq {
        return Err(broken(
            head.last_seq + 1,
            format!("events {}..={} were added after the signed head, not by gvmd", head.last_seq + 1, state.last_seq),
        ));
    }
    if head.last_hash.as_slice() != state.last_hash.as_slice() {
        return Err(broken(
            state.last_seq,
            "the newest event is not the one the signed head vouches for (it was replaced)",
        ));
    }
    if head.checkpoints != state.checkpoints || head.last_checkpoint_seq != state.last_checkpoint_seq {
        return Err(broken(
            state.last_checkpoint_seq + 1,
            format!(
                "the signed head records {} checkpoints up to event {}, but {} up to event {} \
                 are stored (checkpoints were deleted or added)",
                head.checkpoints, head.last_checkpoint_seq, state.checkpoints, state.last_checkpoint_seq
            ),
        ));
    }
    check_newest_event(conn, &state)?;
    check_newest_checkpoint(conn, &state, key)?;
    Ok(state)
}

/// The newest event hashes to its stored hash and links to the one before it.
fn check_newest_event(conn: &Connection, state: &ChainState) -> Result<(), LoadError> {
    if state.last_seq == 0 {
        return Ok(());
    }
    let mut stmt = conn.prepare(
        "SELECT seq, time, profile, kind, decision, rule, details, prev_hash, hash
           FROM events WHERE seq >= ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([state.last_seq.saturating_sub(1).max(1)])?;
    let mut prev: Option<[u8; 32]> = (state.last_seq == 1).then_some(GENESIS_PREV_HASH);
    let mut buf = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: u64 = row.get(0)?;
        let text = |i| -> rusqlite::Result<&[u8]> { row.get_ref(i)?.as_bytes().map_err(Into::into) };
        let opt = |i| -> rusqlite::Result<Option<&[u8]>> { row.get_ref(i)?.as_bytes_or_null().map_err(Into::into) };
        let fields = EventFields {
            seq,
            time: text(1)?,
            profile: opt(2)?,
            kind: text(3)?,
            decision: opt(4)?,
            rule: opt(5)?,
            details: text(6)?,
        };
        let prev_hash = blob32(text(7)?);
        let hash = blob32(text(8)?);
        if seq == state.last_seq {
            let (Some(prev_hash), Some(hash)) = (prev_hash, hash) else {
                return Err(broken(seq, "the newest event's hashes are not 32 bytes"));
            };
            if prev.is_some_and(|p| p != prev_hash) {
                return Err(broken(seq, "the newest event does not link to the event before it"));
            }
            if event_hash(&mut buf, &prev_hash, &fields) != hash {
                return Err(broken(
                    seq,
                    "the newest event's stored hash does not match its contents (the row was \
                     altered)",
                ));
            }
        } else {
            prev = hash;
        }
    }
    Ok(())
}

/// The newest checkpoint's Merkle root and signature verify.
fn check_newest_checkpoint(conn: &Connection, state: &ChainState, key: &VerifyingKey) -> Result<(), LoadError> {
    let row: Option<(u64, u64, Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT first_seq, last_seq, merkle_root, signature FROM checkpoints
              ORDER BY last_seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((first, last, root, sig)) = row else {
        return Ok(());
    };
    let bad = || {
        broken(
            first,
            format!(
                "the newest checkpoint (events {first}..={last}) does not verify (it or the \
                 events it covers were altered)"
            ),
        )
    };
    if first == 0 || first > last || last != state.last_checkpoint_seq {
        return Err(bad());
    }
    let mut hashes = Vec::with_capacity((last - first + 1) as usize);
    let mut stmt = conn.prepare("SELECT seq, hash FROM events WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq")?;
    let mut rows = stmt.query([first, last])?;
    while let Some(row) = rows.next()? {
        let h = row.get_ref(1)?.as_blob().ok().and_then(blob32);
        hashes.push(h.ok_or_else(bad)?);
    }
    if hashes.len() as u64 != last - first + 1 {
        return Err(bad());
    }
    let last_hash = hashes[hashes.len() - 1];
    let computed = merkle_root_in_place(&mut hashes).ok_or_else(bad)?;
    let (Some(root), Ok(sig)) = (blob32(&root), Signature::from_slice(&sig)) else {
        return Err(bad());
    };
    if computed != root || key.verify_strict(&checkpoint_message(first, last, &root, &last_hash), &sig).is_err() {
        return Err(bad());
    }
    Ok(())
}
