//! Path patterns in rules, and the request path they are matched against.
//!
//! A pattern is exact (`/v1/chat/completions`), has one-segment wildcards
//! (`/repos/*/issues`), or is a prefix (`/v1/**`, which also matches `/v1` itself).
//! Patterns are plain ASCII: no `%`, `;`, `?`, `#`, `\`, empty or dot segments.
//!
//! A request path is matched on the path only (the query is dropped), one trailing
//! `/` ignored on both sides, percent-escapes of ordinary characters decoded while
//! comparing. A request path that different servers could read differently is
//! *ambiguous*: `//`, `.` or `..` segments (plain or encoded), an encoded `/`, `\`,
//! `.`, `%` or control byte, a `;`, a `\`, a bad escape, or a path that does not
//! start with `/`. An ambiguous path never matches an allow or hold rule that has a
//! `path`, and always matches a deny rule that has one: it fails closed.

use std::fmt;

/// A validated path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    raw: Box<str>,
    segs: Box<[Seg]>,
    prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Box<str>),
    /// `*`: exactly one non-empty segment.
    One,
}

/// How specific a path pattern is; greater is more specific.
/// Exact beats wildcard beats prefix; within a kind, more literal segments win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PathRank {
    kind: u8,
    literals: u16,
    segments: u16,
}

impl PathRank {
    pub(crate) const NONE: PathRank = PathRank { kind: 0, literals: 0, segments: 0 };
}

/// Why a path pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(pub String);

const SEG_CHARS: &str = "-._~!$&'()+,=:@";

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, PathError> {
        let Some(body) = s.strip_prefix('/') else {
            return Err(PathError("a path must start with `/`".into()));
        };
        // One trailing slash is not significant (see module docs).
        let body = body.strip_suffix('/').unwrap_or(body);
        if body.is_empty() {
            return Ok(PathPattern { raw: s.into(), segs: Box::new([]), prefix: false });
        }
        let parts: Vec<&str> = body.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        let mut prefix = false;
        for (i, part) in parts.iter().enumerate() {
            match *part {
                "" => return Err(PathError("a path must not contain `//`".into())),
                "." | ".." => return Err(PathError("a path must not contain `.` or `..` segments".into())),
                "**" if i + 1 == parts.len() => prefix = true,
                "**" => return Err(PathError("`**` is only allowed as the last segment (`/v1/**`)".into())),
                "*" => segs.push(Seg::One),
                p => {
                    if let Some(c) = p.chars().find(|&c| !(c.is_ascii_alphanumeric() || SEG_CHARS.contains(c))) {
                        let why = match c {
                            '*' => "`*` must be a whole segment (`/repos/*/issues`) and `**` the last one".to_string(),
                            '%' => {
                                "percent-escapes are not allowed in a rule path; write the character itself".to_string()
                            }
                            '?' | '#' => "a rule path matches the path only; remove the query or fragment".to_string(),
                            c if c.is_control() || c.is_whitespace() => {
                                format!("a path must not contain U+{:04X}", c as u32)
                            }
                            c => format!("`{c}` is not allowed in a rule path"),
                        };
                        return Err(PathError(why));
                    }
                    segs.push(Seg::Lit(p.into()));
                }
            }
        }
        Ok(PathPattern { raw: s.into(), segs: segs.into(), prefix })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// A fingerprint of the first segment when it is a literal (0 = none): lets the
    /// matcher skip most path rules without touching them.
    pub(crate) fn first_key(&self) -> u64 {
        match self.segs.first() {
            Some(Seg::Lit(l)) => seg_key(l),
            _ => 0,
        }
    }

    /// True for a prefix pattern (`/v1/**`).
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    pub(crate) fn rank(&self) -> PathRank {
        let literals = self.segs.iter().filter(|s| matches!(s, Seg::Lit(_))).count();
        let has_one = self.segs.iter().any(|s| matches!(s, Seg::One));
        let kind = if self.prefix {
            1
        } else if has_one {
            2
        } else {
            3
        };
        PathRank {
            kind,
            literals: u16::try_from(literals).unwrap_or(u16::MAX),
            segments: u16::try_from(self.segs.len()).unwrap_or(u16::MAX),
        }
    }

    /// Matches an unambiguous request path (see [`ReqPath`]). With `fold`, ASCII
    /// letters match whatever their case (how deny rules match: see [`Fold`]).
    #[inline]
    pub(crate) fn matches_req(&self, req: &ReqPath<'_>, fold: Fold) -> bool {
        match req.segments() {
            Some(segs) => self.matches_segs(segs, req.pct, fold),
            None => self.matches(req.path, fold),
        }
    }

    #[inline]
    fn matches_segs(&self, req: &[&str], pct: bool, fold: Fold) -> bool {
        if req.len() < self.segs.len() || (!self.prefix && req.len() != self.segs.len()) {
            return false;
        }
        self.segs.iter().zip(req).all(|(seg, r)| match seg {
            Seg::One => !r.is_empty(),
            Seg::Lit(lit) if pct || fold == Fold::AnyCase => eq_decoded(r, lit, fold),
            Seg::Lit(lit) => **lit == **r,
        })
    }

    /// Slow path for very deep request paths.
    pub(crate) fn matches(&self, path: &str, fold: Fold) -> bool {
        let body = path.strip_prefix('/').unwrap_or(path);
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut req = body.split('/').filter(|_| !body.is_empty());
        for seg in self.segs.iter() {
            let Some(r) = req.next() else { return false };
            match seg {
                Seg::One => {
                    if r.is_empty() {
                        return false;
                    }
                }
                Seg::Lit(lit) => {
                    if !eq_decoded(r, lit, fold) {
                        return false;
                    }
                }
            }
        }
        self.prefix || req.next().is_none()
    }

    /// True when every path this pattern matches is also matched by `self`.
    /// Conservative: may say false for some covering pairs.
    pub(crate) fn covers(&self, other: &PathPattern) -> bool {
        if !self.prefix && other.prefix {
            return false;
        }
        if self.segs.len() > other.segs.len() || (!self.prefix && self.segs.len() != other.segs.len()) {
            return false;
        }
        self.segs.iter().zip(other.segs.iter()).all(|(a, b)| match (a, b) {
            (Seg::One, _) => true,
            (Seg::Lit(x), Seg::Lit(y)) => x == y,
            (Seg::Lit(_), Seg::One) => false,
        })
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// How the letters of a request path compare with a pattern's.
///
/// Paths are case-sensitive (RFC 3986 §6.2.2.1), but many upstreams route without
/// regard to case: Express by default, ASP.NET, IIS, anything on a case-insensitive
/// file system. A deny rule on `/admin/**` must then also catch `/ADMIN/x`, or it is
/// bypassed by a shift key. Allow and hold rules compare exactly: a case variant they
/// do not name falls to a less specific rule or the default, which fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fold {
    Exact,
    AnyCase,
}

/// Compares a raw request segment (percent-escapes allowed) with a literal pattern
/// segment, decoding escapes on the fly. Never allocates.
fn eq_decoded(raw: &str, lit: &str, fold: Fold) -> bool {
    let raw = raw.as_bytes();
    let lit = lit.as_bytes();
    let (mut i, mut j) = (0, 0);
    while i < raw.len() {
        let b = if raw[i] == b'%' {
            // ReqPath::new already refused bad escapes.
            let Some(v) = raw.get(i + 1..i + 3).and_then(hex2) else { return false };
            i += 3;
            v
        } else {
            i += 1;
            raw[i - 1]
        };
        let same = match (lit.get(j), fold) {
            (Some(l), Fold::Exact) => *l == b,
            (Some(l), Fold::AnyCase) => l.eq_ignore_ascii_case(&b),
            (None, _) => false,
        };
        if !same {
            return false;
        }
        j += 1;
    }
    j == lit.len()
}

/// Never 0 (0 means "no fingerprint").
#[inline]
fn seg_key(seg: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in seg.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

fn hex2(h: &[u8]) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16);
    u8::try_from(d(h[0])? * 16 + d(h[1])?).ok()
}

/// Request paths up to this many segments are split once per decision, on the
/// stack; deeper ones are split again for each path rule (still no allocation).
const MAX_SEGS: usize = 24;

/// A request's path, query removed, with its ambiguity decided and its segments
/// split once.
#[derive(Debug, Clone, Copy)]
pub struct ReqPath<'a> {
    pub path: &'a str,
    pub ambiguous: bool,
    /// Contains a percent-escape (compare decoded).
    pct: bool,
    segs: [&'a str; MAX_SEGS],
    /// `usize::MAX` when the path has more than `MAX_SEGS` segments.
    nsegs: usize,
    /// [`seg_key`] of the first segment, or 0 when it cannot be used (ambiguous
    /// or percent-encoded path).
    first_key: u64,
}

impl<'a> ReqPath<'a> {
    /// `raw` is the request target's path (and maybe query), origin-form.
    pub fn new(raw: &'a str) -> ReqPath<'a> {
        let path = match raw.find(['?', '#']) {
            Some(i) => &raw[..i],
            None => raw,
        };
        let path = if path.is_empty() { "/" } else { path };
        let mut rp = ReqPath {
            path,
            ambiguous: is_ambiguous(path),
            pct: path.contains('%'),
            segs: [""; MAX_SEGS],
            nsegs: 0,
            first_key: 0,
        };
        if !rp.ambiguous {
            let body = &path[1..];
            let body = body.strip_suffix('/').unwrap_or(body);
            if !rp.pct {
                rp.first_key = seg_key(body.split('/').next().unwrap_or(""));
            }
            if body.is_empty() {
                // The root has no segments: a pattern's literal first segment can
                // never match it, and "" fingerprints differently from any literal.
            } else {
                for seg in body.split('/') {
                    if rp.nsegs == MAX_SEGS {
                        rp.nsegs = usize::MAX;
                        break;
                    }
                    rp.segs[rp.nsegs] = seg;
                    rp.nsegs += 1;
                }
            }
        }
        rp
    }

    /// True when a pattern with first-segment fingerprint `key` cannot match.
    #[inline]
    pub(crate) fn first_differs(&self, key: u64) -> bool {
        key != 0 && self.first_key != 0 && key != self.first_key
    }

    fn segments(&self) -> Option<&[&'a str]> {
        self.segs.get(..self.nsegs)
    }
}

fn is_ambiguous(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return true;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' | b';' => return true,
            c if c < 0x20 || c == 0x7f => return true,
            b'%' => match b.get(i + 1..i + 3).and_then(hex2) {
                None => return true,
                Some(v) if v == b'/' || v == b'\\' || v == b'.' || v == b'%' || v == b';' || v < 0x20 || v == 0x7f => {
                    return true
                }
                Some(_) => i += 2,
            },
            _ => {}
        }
        i += 1;
    }
    // Empty, `.` and `..` segments; a single trailing `/` is fine.
    let body = &path[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        // "/" is the root; "//" is an empty segment.
        return path.len() > 1;
    }
    body.split('/').any(|s| s.is_empty() || s == "." || s == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pat: &str, path: &str) -> bool {
        let p = PathPattern::parse(pat).unwrap();
        let r = ReqPath::new(path);
        assert!(!r.ambiguous, "{path} is ambiguous");
        assert_eq!(p.matches(r.path, Fold::Exact), p.matches_req(&r, Fold::Exact), "{pat} {path}");
        p.matches_req(&r, Fold::Exact)
    }

    #[test]
    fn exact_prefix_and_one_segment() {
        assert!(m("/v1/chat/completions", "/v1/chat/completions"));
        assert!(m("/v1/chat/completions", "/v1/chat/completions/"));
        assert!(m("/v1/chat/completions/", "/v1/chat/completions"));
        assert!(m("/v1/chat/completions", "/v1/chat/completions?stream=true"));
        assert!(!m("/v1/chat/completions", "/v1/chat/completions/x"));
        assert!(!m("/v1/chat/completions", "/v1/chat"));
        assert!(!m("/v1/chat/completions", "/V1/chat/completions"));
        assert!(m("/v1/**", "/v1"));
        assert!(m("/v1/**", "/v1/"));
        assert!(m("/v1/**", "/v1/a/b/c"));
        assert!(!m("/v1/**", "/v1x"));
        assert!(!m("/v1/**", "/v2/v1"));
        assert!(m("/**", "/"));
        assert!(m("/**", "/anything"));
        assert!(m("/", "/"));
        assert!(m("/", ""));
        assert!(!m("/", "/a"));
        assert!(m("/repos/*/issues", "/repos/gvm/issues"));
        assert!(!m("/repos/*/issues", "/repos/issues"));
        assert!(!m("/repos/*/issues", "/repos/a/b/issues"));
        assert!(m("/repos/*/**", "/repos/a/b/issues"));
        // Deeper than MAX_SEGS: the slow path gives the same answers.
        let deep = format!("/v1{}", "/x".repeat(40));
        assert!(m("/v1/**", &deep));
        assert!(!m("/v1/x", &deep));
    }

    #[test]
    fn escapes_of_ordinary_characters_are_decoded() {
        assert!(m("/v1/charges", "/v1/ch%61rges"));
        assert!(m("/v1/charges", "/v1/ch%61rges"));
        assert!(m("/a:b", "/a%3Ab"));
        assert!(!m("/v1/charges", "/v1/charges%20"));
    }

    #[test]
    fn ambiguous_request_paths() {
        for p in [
            "//v1/charges",
            "/v1//charges",
            "/v1/./charges",
            "/v1/../admin",
            "/v1/..",
            "/.",
            "/v1/%2e%2e/admin",
            "/v1/%2E/charges",
            "/v1%2fcharges",
            "/v1%2Fcharges",
            "/v1%5ccharges",
            "/v1\\charges",
            "/v1/charges;jsessionid=x",
            "/v1/%3bx",
            "/v1/%00",
            "/v1/\0",
            "/v1/%zz",
            "/v1/%4",
            "/v1/%252f",
            "v1/charges",
            "*",
            "//",
        ] {
            assert!(ReqPath::new(p).ambiguous, "{p:?} should be ambiguous");
        }
        for p in ["/", "", "/v1/", "/a.b/c..d/.e", "/a%20b", "/x?y=/../z"] {
            assert!(!ReqPath::new(p).ambiguous, "{p:?} should not be ambiguous");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in [
            "v1", "/v1//x", "/v1/./x", "/v1/../x", "/v1/**/x", "/v1/a*", "/v1/%2f", "/v1;x", "/v1?x", "/v1\\x", "/v 1",
            "/***",
        ] {
            assert!(PathPattern::parse(p).is_err(), "{p}");
        }
    }

    #[test]
    fn rank_orders_exact_over_wildcard_over_prefix() {
        let r = |p: &str| PathPattern::parse(p).unwrap().rank();
        assert!(r("/v1/charges") > r("/v1/*"));
        assert!(r("/v1/*") > r("/v1/charges/**"));
        assert!(r("/v1/charges/**") > r("/v1/**"));
        assert!(r("/v1/**") > PathRank::NONE);
        assert!(r("/**") > PathRank::NONE);
    }

    #[test]
    fn covers() {
        let p = |s: &str| PathPattern::parse(s).unwrap();
        assert!(p("/v1/**").covers(&p("/v1/charges")));
        assert!(p("/v1/**").covers(&p("/v1/x/**")));
        assert!(p("/v1/**").covers(&p("/v1")));
        assert!(!p("/v1/charges").covers(&p("/v1/**")));
        assert!(p("/*/x").covers(&p("/a/x")));
        assert!(!p("/a/x").covers(&p("/*/x")));
    }
}
