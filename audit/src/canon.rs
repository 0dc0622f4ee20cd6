//! The canonical encoding of an event, its hash, and the Merkle tree of checkpoints.
//!
//! These byte layouts are the chain's format: changing any of them breaks every
//! existing database. Add a new version instead.
//!
//! # Event hash
//!
//! ```text
//! str(b)      = u64_be(len(b)) ‖ b
//! opt(None)   = 0x00
//! opt(Some b) = 0x01 ‖ str(b)
//! canonical   = u64_be(seq) ‖ str(time) ‖ opt(profile) ‖ str(kind)
//!               ‖ opt(decision) ‖ opt(rule) ‖ str(details)
//! hash        = SHA-256(prev_hash ‖ canonical)      (prev_hash of event 1 = 32 zero bytes)
//! ```
//!
//! Text fields are their UTF-8 bytes exactly as stored in the database. `time` is
//! RFC 3339 UTC with exactly nine fractional digits (`format_time`). `details` is the
//! canonical JSON text of `canonical_json`: compact (no whitespace), object keys
//! sorted by their UTF-8 bytes, strings and numbers written by `serde_json`. The
//! database stores that text verbatim, so verification hashes what is stored and never
//! re-serialises.
//!
//! # Merkle root of a checkpoint
//!
//! ```text
//! leaf(h)    = SHA-256(0x00 ‖ h)        for each event hash h of first..=last, in seq order
//! node(l, r) = SHA-256(0x01 ‖ l ‖ r)
//! ```
//! Each level pairs neighbours left to right; an odd last node is promoted unchanged to
//! the next level; the single node left is the root. (One event: root = leaf(h).)

use sha2::{Digest, Sha256};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// `prev_hash` of event 1.
pub const GENESIS_PREV_HASH: [u8; 32] = [0; 32];

/// One event's hashed fields, borrowed (from a request or straight from a SQLite row).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventFields<'a> {
    pub seq: u64,
    pub time: &'a [u8],
    pub profile: Option<&'a [u8]>,
    pub kind: &'a [u8],
    pub decision: Option<&'a [u8]>,
    pub rule: Option<&'a [u8]>,
    pub details: &'a [u8],
}

fn put_str(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u64).to_be_bytes());
    buf.extend_from_slice(b);
}

fn put_opt(buf: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => buf.push(0),
        Some(b) => {
            buf.push(1);
            put_str(buf, b);
        }
    }
}

/// Appends the hashed message `prev_hash ‖ canonical(ev)` to `out`.
pub(crate) fn encode_message(out: &mut Vec<u8>, prev_hash: &[u8; 32], ev: &EventFields<'_>) {
    out.extend_from_slice(prev_hash);
    out.extend_from_slice(&ev.seq.to_be_bytes());
    put_str(out, ev.time);
    put_opt(out, ev.profile);
    put_str(out, ev.kind);
    put_opt(out, ev.decision);
    put_opt(out, ev.rule);
    put_str(out, ev.details);
}

/// `SHA-256(prev_hash ‖ canonical(ev))`, using `buf` as scratch space (no allocation once
/// it has grown to the size of the largest event).
pub(crate) fn event_hash(buf: &mut Vec<u8>, prev_hash: &[u8; 32], ev: &EventFields<'_>) -> [u8; 32] {
    buf.clear();
    encode_message(buf, prev_hash, ev);
    Sha256::digest(buf.as_slice()).into()
}

/// SHA-256 of an encoded message.
pub(crate) fn sha256(msg: &[u8]) -> [u8; 32] {
    Sha256::digest(msg).into()
}

/// The canonical JSON text of `v` (see the module docs). Independent of whether
/// `serde_json` was built with `preserve_order`.
pub(crate) fn canonical_json(v: &serde_json::Value) -> String {
    let mut out = Vec::with_capacity(128);
    write_json(&mut out, v);
    // Only UTF-8 was written (serde_json output and ASCII punctuation).
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn write_json(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        // Leaves: serde_json's compact form. Writing to a Vec cannot fail.
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            let mut write_entry = |i: usize, k: &String, item: &Value| {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write_json(out, item);
            };
            // serde_json's default map iterates in key order already; sort only when it
            // does not (the `preserve_order` feature).
            let sorted = map.keys().zip(map.keys().skip(1)).all(|(a, b)| a.as_bytes() < b.as_bytes());
            if sorted {
                for (i, (k, item)) in map.iter().enumerate() {
                    write_entry(i, k, item);
                }
            } else {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    write_entry(i, k, item);
                }
            }
            out.push(b'}');
        }
    }
}

const TIME_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// RFC 3339 UTC with exactly nine fractional digits, so that text order is time order.
/// (Written digit by digit: it runs once per event on the writer thread; the result is
/// byte-for-byte what `TIME_FORMAT` gives, see the tests.)
pub(crate) fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Formatting a UTC time with a fixed description only fails for years past 9999.
        return t.format(TIME_FORMAT).unwrap_or_else(|_| "9999-12-31T23:59:59.999999999Z".to_owned());
    }
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, u8::from(t.month()) as u32);
    put(8, 2, t.day() as u32);
    put(11, 2, t.hour() as u32);
    put(14, 2, t.minute() as u32);
    put(17, 2, t.second() as u32);
    put(20, 9, t.nanosecond());
    // Only ASCII digits and punctuation were written.
    String::from_utf8_lossy(&b).into_owned()
}

/// Parses any RFC 3339 time and returns it in the stored form, for range queries.
pub(crate) fn normalise_time(s: &str) -> Option<String> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok().map(format_time)
}

fn leaf(h: &[u8; 32]) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update([0u8]);
    d.update(h);
    d.finalize().into()
}

fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update([1u8]);
    d.update(l);
    d.update(r);
    d.finalize().into()
}

/// Merkle root over `nodes`, which holds the event hashes on entry and is used as
/// scratch space (its contents are destroyed). `None` for an empty range.
pub(crate) fn merkle_root_in_place(nodes: &mut [[u8; 32]]) -> Option<[u8; 32]> {
    if nodes.is_empty() {
        return None;
    }
    for n in nodes.iter_mut() {
        *n = leaf(n);
    }
    let mut len = nodes.len();
    while len > 1 {
        let mut w = 0;
        let mut i = 0;
        while i + 1 < len {
            nodes[w] = node(&nodes[i], &nodes[i + 1]);
            w += 1;
            i += 2;
        }
        if i < len {
            nodes[w] = nodes[i];
            w += 1;
        }
        len = w;
    }
    Some(nodes[0])
}

/// Merkle root over `hashes` (see the module docs).
pub(crate) fn merkle_root(hashes: &[[u8; 32]]) -> Option<[u8; 32]> {
    let mut scratch = hashes.to_vec();
    merkle_root_in_place(&mut scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> [u8; 32] {
        [b; 32]
    }

    #[test]
    fn format_time_matches_the_format_description() {
        let mut secs: i64 = 0;
        for i in 0..20_000i64 {
            // A spread of instants from 1970 to 9999, with varied nanoseconds.
            secs = (secs.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407 + i))
                .rem_euclid(253_402_300_799);
            let nanos = (secs.wrapping_mul(2862933555777941757) as u64 % 1_000_000_000) as i128;
            let t = OffsetDateTime::from_unix_timestamp_nanos(secs as i128 * 1_000_000_000 + nanos).unwrap();
            assert_eq!(format_time(t), t.format(TIME_FORMAT).unwrap(), "{t}");
        }
        let t = OffsetDateTime::from_unix_timestamp(0).unwrap();
        assert_eq!(format_time(t), "1970-01-01T00:00:00.000000000Z");
        let t = OffsetDateTime::from_unix_timestamp_nanos(253_402_300_799_999_999_999).unwrap();
        assert_eq!(format_time(t), "9999-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn canonical_json_sorts_keys_and_is_compact() {
        let v = serde_json::json!({"b": [1, {"z": null, "a": "é\"\n"}], "a": true, "10": 1.5});
        assert_eq!(canonical_json(&v), r#"{"10":1.5,"a":true,"b":[1,{"a":"é\"\n","z":null}]}"#);
    }

    #[test]
    fn time_has_nine_fraction_digits_in_utc() {
        let t = OffsetDateTime::parse("2026-11-23T11:00:00.5+01:00", &time::format_description::well_known::Rfc3339)
            .unwrap();
        assert_eq!(format_time(t), "2026-11-23T10:00:00.500000000Z");
        assert_eq!(normalise_time("2026-11-23T10:00:00Z").as_deref(), Some("2026-11-23T10:00:00.000000000Z"));
        assert_eq!(normalise_time("yesterday"), None);
    }

    #[test]
    fn event_hash_layout_is_the_documented_one() {
        let ev = EventFields {
            seq: 7,
            time: b"T",
            profile: None,
            kind: b"k",
            decision: Some(b"allow"),
            rule: None,
            details: b"{}",
        };
        let mut expect = Vec::new();
        expect.extend_from_slice(&[9u8; 32]);
        expect.extend_from_slice(&7u64.to_be_bytes());
        expect.extend_from_slice(&1u64.to_be_bytes());
        expect.extend_from_slice(b"T");
        expect.push(0);
        expect.extend_from_slice(&1u64.to_be_bytes());
        expect.extend_from_slice(b"k");
        expect.push(1);
        expect.extend_from_slice(&5u64.to_be_bytes());
        expect.extend_from_slice(b"allow");
        expect.push(0);
        expect.extend_from_slice(&2u64.to_be_bytes());
        expect.extend_from_slice(b"{}");
        let want: [u8; 32] = Sha256::digest(&expect).into();
        assert_eq!(event_hash(&mut Vec::new(), &[9u8; 32], &ev), want);
        // A None and an empty string hash differently.
        let empty = EventFields { profile: Some(b""), ..ev };
        assert_ne!(event_hash(&mut Vec::new(), &[9u8; 32], &empty), want);
    }

    #[test]
    fn merkle_root_promotes_the_odd_node() {
        assert_eq!(merkle_root(&[]), None);
        assert_eq!(merkle_root(&[h(1)]), Some(leaf(&h(1))));
        let (a, b, c) = (leaf(&h(1)), leaf(&h(2)), leaf(&h(3)));
        assert_eq!(merkle_root(&[h(1), h(2)]), Some(node(&a, &b)));
        assert_eq!(merkle_root(&[h(1), h(2), h(3)]), Some(node(&node(&a, &b), &c)));
        let (d, e) = (leaf(&h(4)), leaf(&h(5)));
        assert_eq!(merkle_root(&[h(1), h(2), h(3), h(4), h(5)]), Some(node(&node(&node(&a, &b), &node(&c, &d)), &e)));
    }
}
