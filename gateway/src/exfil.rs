//! The exfiltration scan: does an outgoing request carry a value the agent must not
//! send — a secret's real value, a secret's placeholder (allowed only where bound), or
//! a value from a file the profile masks with `[files] deny_read`?
//!
//! Pure: needles in, a compiled automaton out; [`Scanner::scan_once`] on a whole
//! buffer and [`Stream::feed`] on a body chunk by chunk. No I/O, no policy.
//!
//! Each value is searched in the forms an agent's code (or an LLM) produces without
//! trying hard: the literal bytes; percent-encoded (only the bytes URL encoders escape,
//! and every byte), upper- and lower-case hex digits; base64, standard and URL-safe
//! alphabets, at each of the three alignments the value can have inside a longer
//! encoded text (the value is encoded after 0, 1 and 2 prefix bytes and the characters
//! that depend on bytes outside it are cut off, so padding does not matter); hex, lower
//! and upper case. What it cannot see: anything else (compression, encryption, base32,
//! MIME line-wrapped base64, a value split into pieces, a value mixed with other
//! case), and what leaves through a tunnel that is not intercepted.
//!
//! Streaming keeps `max_len - 1` bytes of the previous chunks (the longest pattern
//! less one): a match that straddles chunks is found in the chunk that completes it,
//! before that chunk is passed on, and memory stays bounded whatever the body's size.
//! Because the automaton's state at a byte depends only on the last `max_len` bytes,
//! a stream reports exactly the hit `scan_once` reports on the concatenation (the
//! fuzz target `exfil` checks that property).

use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// Values shorter than this are not searched: they would match ordinary text.
pub const MIN_VALUE_LEN: usize = 8;

/// Up to this many patterns (needles × forms, ~10 per needle) the automaton is a full
/// DFA (its memory grows with the patterns' total length: ~20 MiB at 1,000).
const DFA_MAX_PATTERNS: usize = 1000;

/// What a needle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeedleKind {
    /// A secret's real value: never sent by the agent.
    Secret,
    /// A secret's placeholder: replaced where the secret is bound, refused elsewhere.
    Placeholder,
    /// A value read from a file masked by `deny_read`.
    File,
}

/// One value to look for.
#[derive(Clone)]
pub struct Needle {
    pub kind: NeedleKind,
    /// What a refusal says (never the value): `secret openai`,
    /// `.env value DB_PASSWORD from /ws/.env`.
    pub label: Arc<str>,
    /// The secret's name, for `Secret` and `Placeholder`.
    pub secret: Option<Arc<str>>,
    pub value: Vec<u8>,
}

impl fmt::Debug for Needle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the value.
        f.debug_struct("Needle").field("kind", &self.kind).field("label", &self.label).finish_non_exhaustive()
    }
}

/// The form a value was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Literal,
    Percent,
    Base64,
    Base64Url,
    Hex,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Literal => "literal",
            Encoding::Percent => "percent-encoded",
            Encoding::Base64 => "base64",
            Encoding::Base64Url => "base64url",
            Encoding::Hex => "hex",
        }
    }
}

/// A needle found: which one, in which form, and the offset just past its last byte
/// (counted from the start of the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub needle: usize,
    pub encoding: Encoding,
    pub end: u64,
}

/// The compiled needles.
pub struct Scanner {
    ac: AhoCorasick,
    /// Per automaton pattern: (needle, encoding).
    pats: Vec<(usize, Encoding)>,
    needles: Vec<Needle>,
    max_len: usize,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("needles", &self.needles.len())
            .field("patterns", &self.pats.len())
            .finish_non_exhaustive()
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of `data` without padding.
pub fn base64(data: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        let chars = c.len() + 1;
        for i in 0..chars {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize]);
        }
    }
    out
}

/// The base64 characters that depend only on `value`'s bytes when it sits after
/// `prefix` bytes of something else: the alignment-independent core.
fn base64_core(value: &[u8], prefix: usize, alphabet: &[u8; 64]) -> Vec<u8> {
    let mut data = vec![0u8; prefix];
    data.extend_from_slice(value);
    let enc = base64(&data, alphabet);
    let first = (8 * prefix).div_ceil(6);
    let last = (8 * (prefix + value.len())) / 6;
    enc.get(first..last).map(<[u8]>::to_vec).unwrap_or_default()
}

fn percent(value: &[u8], all: bool, upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if !all && (b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', digits[usize::from(b >> 4)], digits[usize::from(b & 15)]]);
        }
    }
    out
}

fn hex(value: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    value.iter().flat_map(|b| [digits[usize::from(b >> 4)], digits[usize::from(b & 15)]]).collect()
}

/// Every form `value` is searched in, literal first.
pub fn forms(value: &[u8]) -> Vec<(Encoding, Vec<u8>)> {
    let mut out = vec![(Encoding::Literal, value.to_vec())];
    for all in [false, true] {
        for upper in [true, false] {
            out.push((Encoding::Percent, percent(value, all, upper)));
        }
    }
    for prefix in 0..3 {
        out.push((Encoding::Base64, base64_core(value, prefix, B64)));
        out.push((Encoding::Base64Url, base64_core(value, prefix, B64URL)));
    }
    out.push((Encoding::Hex, hex(value, false)));
    out.push((Encoding::Hex, hex(value, true)));
    out
}

impl Scanner {
    /// Compiles `needles`; values shorter than [`MIN_VALUE_LEN`] are left out (the
    /// caller says so). `None` when nothing is left to search for.
    pub fn new(needles: Vec<Needle>) -> Option<Scanner> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut pats = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, n) in needles.iter().enumerate() {
            if n.value.len() < MIN_VALUE_LEN {
                continue;
            }
            for (enc, p) in forms(&n.value) {
                if p.is_empty() || !seen.insert(p.clone()) {
                    continue;
                }
                patterns.push(p);
                pats.push((i, enc));
            }
        }
        if patterns.is_empty() {
            return None;
        }
        let max_len = patterns.iter().map(Vec::len).max().unwrap_or(1);
        // A full DFA: one table lookup per byte, ~2.7x the throughput of the default
        // contiguous NFA at 500 patterns (337 vs 120 MB/s streamed), for ~9 MiB per
        // profile at 50 needles; past DFA_MAX_PATTERNS the builder's own choice keeps
        // memory bounded.
        let kind = (patterns.len() <= DFA_MAX_PATTERNS).then_some(AhoCorasickKind::DFA);
        let ac = AhoCorasick::builder().match_kind(MatchKind::Standard).kind(kind).build(&patterns).ok()?;
        Some(Scanner { ac, pats, needles, max_len })
    }

    pub fn needles(&self) -> &[Needle] {
        &self.needles
    }

    /// The longest pattern, in bytes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// How many patterns (needles × forms, duplicates removed) the automaton holds.
    pub fn patterns(&self) -> usize {
        self.pats.len()
    }

    /// Heap bytes the automaton uses.
    pub fn memory_usage(&self) -> usize {
        self.ac.memory_usage()
    }

    fn hit(&self, m: aho_corasick::Match, base: u64) -> Hit {
        let (needle, encoding) = self.pats[m.pattern().as_usize()];
        Hit { needle, encoding, end: base + m.end() as u64 }
    }

    /// The first hit in `data`: the one that ends first.
    pub fn scan_once(&self, data: &[u8]) -> Option<Hit> {
        self.ac.find(data).map(|m| self.hit(m, 0))
    }

    /// Every hit in `data` (overlapping ones too), by end offset.
    pub fn scan_all(&self, data: &[u8]) -> Vec<Hit> {
        self.ac.find_overlapping_iter(data).map(|m| self.hit(m, 0)).collect()
    }

    /// A streaming scan over one body.
    pub fn stream(self: &Arc<Self>) -> Stream {
        Stream { scanner: self.clone(), tail: Vec::new(), buf: Vec::new(), fed: 0, hit: None, allowed: Vec::new() }
    }
}

/// One body being scanned chunk by chunk, in bounded memory.
#[derive(Debug)]
pub struct Stream {
    scanner: Arc<Scanner>,
    /// The last `max_len - 1` bytes fed.
    tail: Vec<u8>,
    buf: Vec<u8>,
    /// Bytes fed so far.
    fed: u64,
    hit: Option<Hit>,
    /// Needles whose literal form is not a hit in this body (placeholders swapped in
    /// the body, `[secrets.NAME] body = true`).
    allowed: Vec<usize>,
}

impl Stream {
    /// Scans the next chunk; the first hit is returned again for every later chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Hit> {
        if self.hit.is_some() {
            return self.hit;
        }
        let base = self.fed - self.tail.len() as u64;
        self.buf.clear();
        self.buf.extend_from_slice(&self.tail);
        self.buf.extend_from_slice(chunk);
        self.fed += chunk.len() as u64;
        let m = if self.allowed.is_empty() {
            self.scanner.ac.find(&self.buf[..])
        } else {
            let allowed = |m: &aho_corasick::Match| {
                let (needle, enc) = self.scanner.pats[m.pattern().as_usize()];
                enc == Encoding::Literal && self.allowed.contains(&needle)
            };
            self.scanner.ac.find_overlapping_iter(&self.buf[..]).find(|m| !allowed(m))
        };
        if let Some(m) = m {
            self.hit = Some(self.scanner.hit(m, base));
            return self.hit;
        }
        let keep = (self.scanner.max_len - 1).min(self.buf.len());
        self.tail.clear();
        self.tail.extend_from_slice(&self.buf[self.buf.len() - keep..]);
        None
    }

    pub fn scanner(&self) -> &Arc<Scanner> {
        &self.scanner
    }

    /// Lets the literal form of these needles through (they are swapped, see
    /// `body::Swap`); every other form of them, and every other needle, is still a hit.
    pub fn allowing(mut self, needles: Vec<usize>) -> Stream {
        self.allowed = needles;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needle(kind: NeedleKind, label: &str, value: &[u8]) -> Needle {
        Needle { kind, label: label.into(), secret: None, value: value.to_vec() }
    }

    fn scanner() -> Arc<Scanner> {
        Arc::new(
            Scanner::new(vec![
                needle(NeedleKind::Secret, "secret openai", b"sk-live-0123456789abcdef"),
                needle(NeedleKind::File, ".env value DB_PASSWORD", b"hunter2-is/long+enough"),
                needle(NeedleKind::File, "short", b"1234567"),
            ])
            .unwrap(),
        )
    }

    #[test]
    fn base64_matches_a_reference_encoder() {
        assert_eq!(base64(b"", B64), b"");
        assert_eq!(base64(b"f", B64), b"Zg");
        assert_eq!(base64(b"fo", B64), b"Zm8");
        assert_eq!(base64(b"foo", B64), b"Zm9v");
        assert_eq!(base64(b"foob", B64), b"Zm9vYg");
        assert_eq!(base64(&[0xfb, 0xff], B64), b"+/8");
        assert_eq!(base64(&[0xfb, 0xff], B64URL), b"-_8");
    }

    /// Encodes `prefix ‖ value ‖ suffix` whole, padded, in both alphabets: the value
    /// must be found at every alignment.
    #[test]
    fn base64_found_at_every_alignment_padded_or_not() {
        let s = scanner();
        for value in [&b"sk-live-0123456789abcdef"[..], b"hunter2-is/long+enough"] {
            for pre in 0..6 {
                for suf in 0..4 {
                    let mut data = b"xyzxyz"[..pre].to_vec();
                    data.extend_from_slice(value);
                    data.extend_from_slice(&b"\xff\xfe\x01"[..suf]);
                    for alpha in [B64, B64URL] {
                        let mut enc = base64(&data, alpha);
                        while !enc.len().is_multiple_of(4) {
                            enc.push(b'=');
                        }
                        let hit = s.scan_once(&enc).unwrap_or_else(|| panic!("pre {pre} suf {suf}"));
                        assert!(matches!(hit.encoding, Encoding::Base64 | Encoding::Base64Url | Encoding::Literal));
                        let unpadded: Vec<u8> = enc.iter().copied().filter(|c| *c != b'=').collect();
                        assert!(s.scan_once(&unpadded).is_some());
                    }
                }
            }
        }
    }

    #[test]
    fn literal_percent_and_hex_forms() {
        let s = scanner();
        let v = b"hunter2-is/long+enough";
        let cases: Vec<(Vec<u8>, Encoding)> = vec![
            (v.to_vec(), Encoding::Literal),
            (b"q=hunter2-is%2Flong%2Benough&x".to_vec(), Encoding::Percent),
            (b"q=hunter2-is%2flong%2benough".to_vec(), Encoding::Percent),
            (percent(v, true, true), Encoding::Percent),
            (percent(v, true, false), Encoding::Percent),
            (hex(v, false), Encoding::Hex),
            (hex(v, true), Encoding::Hex),
        ];
        for (data, enc) in cases {
            let hit = s.scan_once(&data).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&data)));
            assert_eq!(hit.encoding, enc, "{}", String::from_utf8_lossy(&data));
            assert_eq!(s.needles()[hit.needle].label.as_ref(), ".env value DB_PASSWORD");
        }
        assert!(s.scan_once(b"hunter2-is/long+enougX").is_none());
        assert!(s.scan_once(b"1234567 is too short to be searched").is_none());
    }

    #[test]
    fn a_match_split_across_two_chunks_is_found_at_every_split_point() {
        let s = scanner();
        let value = b"sk-live-0123456789abcdef";
        for form in forms(value) {
            let mut data = b"POST body: ".to_vec();
            data.extend_from_slice(&form.1);
            data.extend_from_slice(b" and more");
            let once = s.scan_once(&data).unwrap();
            for split in 0..=data.len() {
                let mut st = s.stream();
                let first = st.feed(&data[..split]);
                let second = st.feed(&data[split..]);
                let end = form.1.len() + b"POST body: ".len();
                if split >= end {
                    assert_eq!(first, Some(once), "{:?} split {split}", form.0);
                } else {
                    assert_eq!(first, None, "{:?} split {split}", form.0);
                    assert_eq!(second, Some(once), "{:?} split {split}", form.0);
                }
            }
        }
    }

    #[test]
    fn streaming_in_single_bytes_agrees_with_scan_once() {
        let s = scanner();
        let data = b"aaaa c2stbGl2ZS0wMTIzNDU2Nzg5YWJjZGVm zzz";
        let once = s.scan_once(data);
        assert!(once.is_some());
        let mut st = s.stream();
        let mut got = None;
        for b in data.chunks(1) {
            got = got.or(st.feed(b));
        }
        assert_eq!(got, once);
        assert_eq!(st.feed(b"more"), once, "a hit is sticky");
    }

    #[test]
    fn no_needles_no_scanner() {
        assert!(Scanner::new(vec![]).is_none());
        assert!(Scanner::new(vec![needle(NeedleKind::File, "x", b"short")]).is_none());
    }

    #[test]
    fn debug_never_prints_a_value() {
        let s = scanner();
        let text = format!("{:?} {:?}", s, s.needles());
        assert!(!text.contains("hunter2") && !text.contains("sk-live"), "{text}");
    }
}
