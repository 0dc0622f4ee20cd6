//! LLM usage: what a response from a priced host (`[prices."HOST"]` in gvmd.toml)
//! costs, read from the response as it streams to the agent (never delaying it) and
//! charged to the request's money budgets when the response ends.
//!
//! Understood: a JSON body with OpenAI-style `usage.prompt_tokens` /
//! `completion_tokens` or Anthropic-style `usage.input_tokens` / `output_tokens` (and
//! `model`), and Server-Sent Events (`data:` lines): OpenAI's chunk that carries
//! `usage`, Anthropic's `message_start` (model, input tokens) and `message_delta`
//! (output tokens so far). A priced response is **never free**: when its usage cannot
//! be read (malformed, missing, cut off, more than [`MAX_TAP`] bytes) it is charged
//! [`UNREAD_TOKENS`] tokens at the highest price of the host's table; a model missing
//! from the table is charged its tokens at that highest price. Requests to a priced
//! host go without `Accept-Encoding`, so that the usage is readable.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;

/// Tokens charged for a priced response whose usage cannot be read.
pub const UNREAD_TOKENS: u64 = 100_000;
/// The most of a response kept to read its usage.
pub const MAX_TAP: usize = 8 << 20;

/// Per million tokens, in the budgets' currency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

/// Host → model → price (`[prices."api.openai.com"] "gpt-4o" = { input = 2.5, output = 10.0 }`).
pub type Prices = HashMap<String, HashMap<String, Price>>;

/// Tokens a response reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub model: Option<String>,
    pub input: u64,
    pub output: u64,
}

fn tokens(v: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_u64))
}

/// The usage in one JSON object (a whole body, or one event of a stream) merged into
/// `u`; true when it carried any.
fn merge(v: &Value, u: &mut Usage) -> bool {
    let mut found = false;
    if let Some(m) = v.get("model").and_then(Value::as_str) {
        u.model = Some(m.to_string());
    }
    // Anthropic's stream: the message's start, then cumulative output counts.
    if v.get("type").and_then(Value::as_str) == Some("message_start") {
        if let Some(msg) = v.get("message") {
            return merge(msg, u);
        }
    }
    if let Some(usage) = v.get("usage").filter(|x| x.is_object()) {
        if let Some(i) = tokens(usage, &["prompt_tokens", "input_tokens"]) {
            u.input = i;
            found = true;
        }
        if let Some(o) = tokens(usage, &["completion_tokens", "output_tokens"]) {
            u.output = o;
            found = true;
        }
    }
    found
}

/// Reads the usage of a whole response: JSON, or an SSE stream of `data:` lines.
pub(crate) fn parse(body: &[u8]) -> Option<Usage> {
    let text = std::str::from_utf8(body).ok()?;
    let mut u = Usage::default();
    if text.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(text).ok()?;
        return merge(&v, &mut u).then_some(u);
    }
    let mut found = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else { continue };
        let data = data.trim();
        if data.is_empty() || data == "[DONE]" {
            continue;
        }
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            found |= merge(&v, &mut u);
        }
    }
    found.then_some(u)
}

/// What a response costs under `table` (one host's prices).
pub(crate) fn cost(table: &HashMap<String, Price>, usage: Option<&Usage>) -> f64 {
    let highest = table.values().flat_map(|p| [p.input, p.output]).fold(0.0, f64::max);
    let per = 1e6;
    match usage {
        None => highest * UNREAD_TOKENS as f64 / per,
        Some(u) => match u.model.as_deref().and_then(|m| table.get(m)) {
            Some(p) => (p.input * u.input as f64 + p.output * u.output as f64) / per,
            None => highest * (u.input + u.output) as f64 / per,
        },
    }
}

/// Called once with what the response carried (`None`: cut off or too large).
pub(crate) type OnEnd = Box<dyn FnOnce(Option<&[u8]>) + Send + Sync>;

/// A response body passed through frame by frame, a copy of it kept (up to
/// [`MAX_TAP`]) to read its usage when it ends or is dropped.
pub(crate) struct UsageTap<B: Body> {
    inner: B,
    kept: Vec<u8>,
    whole: bool,
    on_end: Option<OnEnd>,
}

impl<B: Body> UsageTap<B> {
    pub(crate) fn new(inner: B, on_end: OnEnd) -> Self {
        UsageTap { inner, kept: Vec::new(), whole: true, on_end: Some(on_end) }
    }

    fn end(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            f((complete && self.whole).then_some(self.kept.as_slice()));
        }
    }
}

impl<B: Body> Drop for UsageTap<B> {
    fn drop(&mut self) {
        // hyper drops a body whose end it knows (a length) without reading past it.
        let complete = self.inner.is_end_stream();
        self.end(complete);
    }
}

impl<B> Body for UsageTap<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    if self.whole && self.kept.len() + d.len() <= MAX_TAP {
                        self.kept.extend_from_slice(d);
                    } else {
                        self.whole = false;
                        self.kept = Vec::new();
                    }
                }
                if self.inner.is_end_stream() {
                    self.end(true);
                }
            }
            Poll::Ready(None) => self.end(true),
            Poll::Ready(Some(Err(_))) => self.end(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> HashMap<String, Price> {
        HashMap::from([
            ("gpt-4o".to_string(), Price { input: 2.5, output: 10.0 }),
            ("gpt-4o-mini".to_string(), Price { input: 0.15, output: 0.6 }),
        ])
    }

    #[test]
    fn json_bodies_of_both_styles() {
        let openai = br#"{"id":"x","model":"gpt-4o","usage":{"prompt_tokens":1000,"completion_tokens":200}}"#;
        let u = parse(openai).unwrap();
        assert_eq!((u.model.as_deref(), u.input, u.output), (Some("gpt-4o"), 1000, 200));
        assert!((cost(&table(), Some(&u)) - 0.0045).abs() < 1e-12);
        let anthropic = br#"{"model":"claude","usage":{"input_tokens":10,"output_tokens":20}}"#;
        assert_eq!(parse(anthropic).unwrap(), Usage { model: Some("claude".into()), input: 10, output: 20 });
    }

    #[test]
    fn streams_of_both_styles() {
        let openai = "data: {\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                      data: {\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n\
                      data: [DONE]\n\n";
        assert_eq!(parse(openai.as_bytes()).unwrap(), Usage { model: Some("gpt-4o-mini".into()), input: 5, output: 7 });
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
                         event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"a\"}}\n\n\
                         event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        assert_eq!(
            parse(anthropic.as_bytes()).unwrap(),
            Usage { model: Some("claude-x".into()), input: 25, output: 15 }
        );
    }

    #[test]
    fn unreadable_usage_is_never_free() {
        for bad in [&b"not json"[..], b"{\"model\":\"gpt-4o\"}", b"{\"usage\":{\"prompt_tokens\":\"many\"}}", b"\xff"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // The highest price of the table (10.0 per million) × 100,000 tokens.
        assert!((cost(&table(), None) - 1.0).abs() < 1e-12);
        // An unknown model: its tokens at the highest price.
        let u = Usage { model: Some("gpt-9".into()), input: 1_000_000, output: 0 };
        assert!((cost(&table(), Some(&u)) - 10.0).abs() < 1e-12);
    }
}
