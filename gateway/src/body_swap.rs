//! Placeholders swapped for their values in request bodies (`[secrets.NAME] body =
//! true`): only to the secret's hosts, only over intercepted TLS (the profile decides
//! which secrets apply to a request, [`for_request`]). The body streams: a placeholder
//! split across chunks is found, and only the bytes that could still begin one are held
//! back (less than a placeholder's length). A swapped body changes length, so it is
//! sent chunked (its Content-Length removed).
//!
//! The exfiltration scan reads the body *before* the swap: the literal placeholder of
//! such a secret is let through ([`crate::exfil::Stream::allowing`]); any encoded form
//! of it, or the value itself sent by the agent, is still refused.

use aho_corasick::AhoCorasick;
use bytes::Bytes;

use crate::decide::ProfileState;

/// The placeholders to swap in one request body.
pub struct BodySwap {
    ac: AhoCorasick,
    values: Vec<Bytes>,
    placeholders: Vec<Vec<u8>>,
    /// Scan needles of those placeholders (allowed in their literal form).
    pub needles: Vec<usize>,
    /// Bytes that may begin a placeholder, held until the next chunk.
    pending: Vec<u8>,
}

/// The body swap of a request to `host` (`tls`: over intercepted TLS or `https://`),
/// when one of the profile's `body = true` secrets is bound to it (its `hosts`).
pub(crate) fn for_request(state: &ProfileState, tls: bool, host: &gvm_policy::Host) -> Option<BodySwap> {
    if state.body_secrets.is_empty() || !tls {
        return None;
    }
    let scan = state.scan.as_ref()?;
    let mut placeholders = Vec::new();
    let mut values = Vec::new();
    let mut needles = Vec::new();
    for name in &state.body_secrets {
        // Only the hosts the secret names: a rule's `inject` binds its header, not bodies.
        let bound = state.bound.get(name).is_some_and(|hs| hs.iter().any(|h| h.matches(host)));
        let (Some(ph), Some(Ok(value))) = (state.placeholders.get(name), state.secrets.get(name)) else { continue };
        if !bound {
            continue;
        }
        placeholders.push(ph.as_bytes().to_vec());
        values.push(Bytes::from(value.clone()));
        needles.extend(
            scan.needles()
                .iter()
                .enumerate()
                .filter(|(_, n)| {
                    n.kind == crate::exfil::NeedleKind::Placeholder && n.secret.as_deref() == Some(name.as_str())
                })
                .map(|(i, _)| i),
        );
    }
    if placeholders.is_empty() {
        return None;
    }
    let mut swap = BodySwap::new(placeholders.into_iter().zip(values).collect())?;
    swap.needles = needles;
    Some(swap)
}

impl BodySwap {
    /// Swaps each `(placeholder, value)`; `None` without any.
    pub fn new(pairs: Vec<(Vec<u8>, Bytes)>) -> Option<BodySwap> {
        let (placeholders, values): (Vec<Vec<u8>>, Vec<Bytes>) = pairs.into_iter().unzip();
        if placeholders.is_empty() {
            return None;
        }
        let ac = AhoCorasick::builder().match_kind(aho_corasick::MatchKind::LeftmostFirst).build(&placeholders).ok()?;
        Some(BodySwap { ac, values, placeholders, needles: Vec::new(), pending: Vec::new() })
    }

    /// The next chunk with the placeholders swapped; what may begin a placeholder is
    /// kept for the next call.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut last = 0;
        for m in self.ac.find_iter(&self.pending) {
            out.extend_from_slice(&self.pending[last..m.start()]);
            out.extend_from_slice(&self.values[m.pattern().as_usize()]);
            last = m.end();
        }
        let rest = &self.pending[last..];
        let longest = self.placeholders.iter().map(Vec::len).max().unwrap_or(1);
        let hold = (1..longest.min(rest.len() + 1))
            .rev()
            .find(|&k| self.placeholders.iter().any(|p| p.starts_with(&rest[rest.len() - k..])))
            .unwrap_or(0);
        out.extend_from_slice(&rest[..rest.len() - hold]);
        self.pending.drain(..self.pending.len() - hold);
        Bytes::from(out)
    }

    /// True while bytes are held.
    pub(crate) fn holds(&self) -> bool {
        !self.pending.is_empty()
    }

    /// What is still held at the end of the body.
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.pending))
    }

    /// A request with a body to swap loses its Content-Length (it is sent chunked); a
    /// request without a body (`empty`) has nothing to swap and goes as it came.
    pub(crate) fn prepare(swap: &mut Option<BodySwap>, empty: bool, headers: &mut http::HeaderMap) {
        if empty {
            *swap = None;
        }
        if swap.is_some() {
            headers.remove(http::header::CONTENT_LENGTH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swap() -> BodySwap {
        BodySwap::new(vec![
            (b"gvm-secret-a-XXXXXXXXXXXXXXXXXXXXXXXX".to_vec(), Bytes::from_static(b"VALUE-A")),
            (b"gvm-secret-b-YYYY".to_vec(), Bytes::from_static(b"VALUE-B")),
        ])
        .unwrap()
    }

    #[test]
    fn placeholders_are_swapped_at_every_split_point() {
        let body = b"{\"key\": \"gvm-secret-a-XXXXXXXXXXXXXXXXXXXXXXXX\", \"b\": \"gvm-secret-b-YYYY\", \"x\": \"gvm-secret-\"}";
        let want = b"{\"key\": \"VALUE-A\", \"b\": \"VALUE-B\", \"x\": \"gvm-secret-\"}".to_vec();
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let mut s = swap();
                let mut out = s.push(&body[..i]).to_vec();
                out.extend_from_slice(&s.push(&body[i..j]));
                out.extend_from_slice(&s.push(&body[j..]));
                out.extend_from_slice(&s.finish());
                assert_eq!(out, want, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn only_what_may_begin_a_placeholder_is_held() {
        let mut s = swap();
        assert_eq!(&s.push(b"hello gvm-sec")[..], b"hello ");
        assert_eq!(&s.push(b"ond")[..], b"gvm-second");
        assert_eq!(&s.finish()[..], b"");
    }
}
