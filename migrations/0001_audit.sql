-- gvm audit chain, schema version 1. Applied by gvm-audit (audit/src/schema.rs),
-- tracked with PRAGMA user_version. Never edit a released migration: add 0002_*.sql.
--
-- Hashes, roots and signatures are raw BLOBs (32 / 32 / 64 bytes), not hex.
-- Times are RFC 3339 UTC with exactly nine fractional digits
-- (`2026-11-23T10:00:00.123456789Z`), so text order is time order.

-- One row per event. `seq` is the rowid: 1, 2, 3... with no gaps.
-- hash = SHA-256(prev_hash || canonical(event)), see audit/src/canon.rs.
-- `details` holds exactly the canonical JSON text that was hashed.
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY,
    time      TEXT    NOT NULL,
    profile   TEXT,
    kind      TEXT    NOT NULL,
    decision  TEXT,
    rule      TEXT,
    details   TEXT    NOT NULL,
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL
);
CREATE INDEX events_profile ON events (profile);
CREATE INDEX events_time ON events (time);

-- Signed Merkle checkpoints. They cover 1..=N contiguously, in id order.
-- signature = ed25519 over checkpoint_message(first_seq, last_seq, merkle_root,
-- hash of event last_seq), see audit/src/keys.rs.
CREATE TABLE checkpoints (
    id          INTEGER PRIMARY KEY,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    merkle_root BLOB    NOT NULL,
    signature   BLOB    NOT NULL,
    time        TEXT    NOT NULL
);

-- The signed head: one row, rewritten in the same transaction as every commit.
-- It vouches for the newest event and the newest checkpoint, so deleting events or
-- checkpoints from the end of the log is detected.
CREATE TABLE head (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq            INTEGER NOT NULL,
    last_hash           BLOB    NOT NULL,
    checkpoints         INTEGER NOT NULL,
    last_checkpoint_seq INTEGER NOT NULL,
    signature           BLOB    NOT NULL,
    time                TEXT    NOT NULL
);
