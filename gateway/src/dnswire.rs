//! The DNS wire format, just enough to answer one question (RFC 1035 §4).
//!
//! Only queries are parsed; compression pointers in a question are refused; answers
//! carry at most one record. Nothing here does I/O.

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    pub id: u16,
    pub flags: u16,
    /// Lower-cased, dot-separated, no trailing dot; raw label bytes (may be non-ASCII:
    /// the caller validates it as a host name).
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Offset just past the question, for echoing it.
    question_end: usize,
}

pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_AAAA: u16 = 28;
pub(crate) const RCODE_NOERROR: u8 = 0;
pub(crate) const RCODE_FORMERR: u8 = 1;
pub(crate) const RCODE_NXDOMAIN: u8 = 3;
pub(crate) const RCODE_NOTIMP: u8 = 4;
pub(crate) const RCODE_REFUSED: u8 = 5;

/// Parses a query; `Err(Some(id))` is a malformed query that can get FORMERR.
pub(crate) fn parse_query(b: &[u8]) -> Result<Query, Option<u16>> {
    if b.len() < 12 {
        return Err(None);
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    let flags = u16::from_be_bytes([b[2], b[3]]);
    if flags & 0x8000 != 0 {
        return Err(None); // a response, not a query: never answer it
    }
    let qd = u16::from_be_bytes([b[4], b[5]]);
    if qd != 1 {
        return Err(Some(id));
    }
    let mut i = 12;
    let mut name = Vec::new();
    loop {
        let len = *b.get(i).ok_or(Some(id))? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return Err(Some(id));
        }
        let label = b.get(i..i + len).ok_or(Some(id))?;
        // A `.` inside a label would make `a.b` (one label) read as two: the name the
        // policy decides must be the name the agent asked for.
        if label.contains(&b'.') {
            return Err(Some(id));
        }
        if !name.is_empty() {
            name.push(b'.');
        }
        name.extend(label.iter().map(u8::to_ascii_lowercase));
        i += len;
        if name.len() > 253 {
            return Err(Some(id));
        }
    }
    let q = b.get(i..i + 4).ok_or(Some(id))?;
    let qtype = u16::from_be_bytes([q[0], q[1]]);
    let qclass = u16::from_be_bytes([q[2], q[3]]);
    let name = String::from_utf8(name).map_err(|_| Some(id))?;
    Ok(Query { id, flags, name, qtype, qclass, question_end: i + 4 })
}

/// Builds the answer to `q` from the raw query bytes `raw`: `rcode` and optionally one
/// record of `q.qtype` with `rdata`.
pub(crate) fn answer(raw: &[u8], q: &Query, rcode: u8, rdata: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.question_end + 32);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR=1, opcode copied, AA=1, RD copied, RA=1.
    let flags: u16 = 0x8000 | (q.flags & 0x7800) | 0x0400 | (q.flags & 0x0100) | 0x0080;
    out.extend_from_slice(&(flags | u16::from(rcode & 0x0f)).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::from(rdata.is_some()).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&raw[12..q.question_end]);
    if let Some(rdata) = rdata {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&5u32.to_be_bytes()); // short TTL: policy may change
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
    }
    out
}

/// A bare error answer when the question could not be parsed.
pub(crate) fn error_answer(id: u16, rcode: u8) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&(0x8000u16 | u16::from(rcode)).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

#[cfg(test)]
pub(crate) fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let raw = build_query(7, "Api.Example.COM.", TYPE_A);
        let q = parse_query(&raw).unwrap();
        assert_eq!(q.name, "api.example.com");
        assert_eq!(q.qtype, TYPE_A);
        let a = answer(&raw, &q, RCODE_NOERROR, Some(&[10, 0, 0, 1]));
        assert_eq!(&a[..2], &7u16.to_be_bytes());
        assert_eq!(a[3] & 0x0f, 0);
        assert_eq!(&a[6..8], &[0, 1]);
        assert_eq!(&a[a.len() - 4..], &[10, 0, 0, 1]);
        let nx = answer(&raw, &q, RCODE_NXDOMAIN, None);
        assert_eq!(nx[3] & 0x0f, 3);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse_query(&[0; 5]), Err(None));
        let mut raw = build_query(9, "a.b", TYPE_A);
        raw[12] = 0xc0; // compression pointer in the question
        assert_eq!(parse_query(&raw), Err(Some(9)));
    }

    /// Found by the `dns` fuzz target: one label `api.example` must not read as the
    /// two labels of the name `api.example`.
    #[test]
    fn a_dot_inside_a_label_is_refused() {
        let mut raw = 5u16.to_be_bytes().to_vec();
        raw.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        raw.push(11);
        raw.extend_from_slice(b"api.example");
        raw.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse_query(&raw), Err(Some(5)));
    }
}
