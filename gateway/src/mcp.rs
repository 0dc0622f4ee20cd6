//! MCP-aware rules (`mcp = { tools = [...], deny_tools = [...], filter_list = ... }`):
//! the JSON-RPC body of a request to an MCP server (streamable HTTP, or the POSTs of
//! the older HTTP+SSE transport) is read whole (at most [`MAX_BODY`]) and checked
//! before anything is forwarded.
//!
//! What passes, message by message (a batch passes only when every message does):
//! * `initialize`, `ping`, `tools/list`, `logging/setLevel` and `notifications/*`
//!   (notifications carry no `id`): they call no tool;
//! * `tools/call` of a tool the rule's `tools` matches and no `deny_tools` matches;
//! * responses (`result` or `error`, no `method`): the agent answering the server's own
//!   requests (`ping`, `roots/list`, sampling);
//! * nothing else: `resources/*`, `prompts/*`, `completion/*` and unknown methods read
//!   or do what the tool list does not name, so they are refused (fail closed), as is a
//!   body that is not JSON-RPC.
//!
//! A refusal is answered the way the client reads errors: to the streamable-HTTP
//! transport (which accepts `application/json`) an HTTP 200 with a JSON-RPC error for
//! each request id, so the tool call fails with gvm's message; to the older SSE
//! transport, whose POSTs expect `202 Accepted` and whose answers come on the event
//! stream, an HTTP 403 with the same body (the client's `send` fails with it).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Response, StatusCode};
use http_body::{Body, Frame};
use serde_json::{json, Value};

use gvm_policy::McpTools;

use crate::answer::RespBody;
use crate::decide::{ProfileState, Ruling};
use crate::pipeline::Refusal;

/// The largest JSON-RPC body (request, or a `tools/list` answer or event to filter)
/// that is read; a larger request is refused.
pub const MAX_BODY: usize = 1 << 20;
/// The longest tool name matched (MCP says 1–128 characters); longer is refused, which
/// also bounds the glob's work.
pub(crate) const MAX_TOOL_NAME: usize = 256;
/// How much of a tool call's arguments the audit event keeps.
pub(crate) const ARGS_SUMMARY: usize = 200;
/// The JSON-RPC error code of a refused message (implementation-defined range).
pub(crate) const DENIED_CODE: i64 = -32001;

/// One JSON-RPC message of a request body, as far as the check needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `None`: a notification (or a response without id).
    pub id: Option<Value>,
    /// `None`: a response.
    pub method: Option<String>,
    /// `tools/call`: `params.name`.
    pub tool: Option<String>,
    /// `tools/call`: `params.arguments` as compact JSON (whole; cut when summarised).
    pub args: Option<String>,
}

/// A parsed request body: one message or a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub batch: bool,
    pub messages: Vec<Message>,
}

/// Reads a JSON-RPC 2.0 body. `Err`: why it is not one (the request is refused).
pub fn parse(body: &[u8]) -> Result<Parsed, String> {
    if body.len() > MAX_BODY {
        return Err(format!("the JSON-RPC body is larger than {MAX_BODY} bytes"));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let (batch, items) = match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Err("the JSON-RPC batch is empty".into());
            }
            (true, items)
        }
        v @ Value::Object(_) => (false, vec![v]),
        _ => return Err("the body is neither a JSON-RPC message nor a batch".into()),
    };
    let messages = items.into_iter().enumerate().map(|(i, m)| message(m).map_err(|e| format!("message {i}: {e}")));
    Ok(Parsed { batch, messages: messages.collect::<Result<_, _>>()? })
}

fn message(m: Value) -> Result<Message, String> {
    let Value::Object(mut m) = m else { return Err("not a JSON object".into()) };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("`jsonrpc` is not \"2.0\"".into());
    }
    let id = match m.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => return Err("`id` is neither a string nor a number".into()),
    };
    let method = match m.remove("method") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("`method` is not a string".into()),
    };
    if method.is_none() && !m.contains_key("result") && !m.contains_key("error") {
        return Err("neither a request (`method`) nor a response (`result`, `error`)".into());
    }
    let (mut tool, mut args) = (None, None);
    if method.as_deref() == Some("tools/call") {
        let params = m.get("params").and_then(Value::as_object).ok_or("tools/call without `params`")?;
        let name = params.get("name").and_then(Value::as_str).ok_or("tools/call without a string `params.name`")?;
        tool = Some(name.to_owned());
        args = params.get("arguments").map(Value::to_string);
    }
    Ok(Message { id, method, tool, args })
}

/// Why one message of a body is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub index: usize,
    pub reason: String,
}

/// Checks every message against the rule's tools. `Err`: the first refused message
/// (a batch passes only whole).
pub fn check(tools: &McpTools, p: &Parsed) -> Result<(), Refused> {
    for (index, m) in p.messages.iter().enumerate() {
        let refuse = |reason: String| Err(Refused { index, reason });
        let Some(method) = m.method.as_deref() else { continue }; // a response
        match method {
            "initialize" | "ping" | "tools/list" | "logging/setLevel" => {}
            "tools/call" => {
                let name = m.tool.as_deref().unwrap_or_default();
                if name.len() > MAX_TOOL_NAME {
                    return refuse(format!("gvm denied tool call: its name is longer than {MAX_TOOL_NAME} bytes"));
                }
                if !tools.allows(name) {
                    let why = if tools.tools.iter().any(|t| gvm_policy::mcp_glob(t, name)) {
                        "it is in the rule's deny_tools"
                    } else {
                        "it is not in the rule's tools"
                    };
                    return refuse(format!("gvm denied tool call: {name} ({why})"));
                }
            }
            n if n.starts_with("notifications/") => {
                if m.id.is_some() {
                    return refuse(format!("gvm denied {n}: a notification has no id"));
                }
            }
            other => return refuse(format!("gvm denied MCP method {other}: only tools/call of listed tools, initialize, ping, tools/list and notifications pass")),
        }
    }
    Ok(())
}

/// What the audit event says about the messages: method, tool and the first
/// [`ARGS_SUMMARY`] characters of the arguments (`redact` says whether they may be shown).
pub(crate) fn summary(p: &Parsed, redact: impl Fn(&str) -> bool) -> Value {
    let items: Vec<Value> = p
        .messages
        .iter()
        .map(|m| {
            let mut v = json!({ "method": m.method.as_deref().unwrap_or("response") });
            if let Some(t) = &m.tool {
                v["tool"] = json!(t);
            }
            if let Some(a) = &m.args {
                v["args"] = if redact(a) {
                    json!("[redacted: holds a protected value]")
                } else {
                    json!(a.chars().take(ARGS_SUMMARY).collect::<String>())
                };
            }
            v
        })
        .collect();
    Value::Array(items)
}

/// The answer to a refused body: a JSON-RPC error for each request id (one error
/// object, or an array for a batch); 200 for clients of the streamable-HTTP transport,
/// 403 for the others (see the module comment).
pub(crate) fn denied_answer(
    p: Option<&Parsed>,
    reason: &str,
    rule: Option<&str>,
    headers: &HeaderMap,
) -> Response<RespBody> {
    let message = format!("{reason} (rule {})", rule.unwrap_or("default"));
    let error = |id: Value| json!({"jsonrpc": "2.0", "id": id, "error": {"code": DENIED_CODE, "message": message}});
    let ids: Vec<Value> = p
        .map(|p| p.messages.iter().filter(|m| m.method.is_some()).filter_map(|m| m.id.clone()).collect())
        .unwrap_or_default();
    let body = match (p.is_some_and(|p| p.batch), ids.as_slice()) {
        (true, ids) if !ids.is_empty() => Value::Array(ids.iter().cloned().map(error).collect()),
        (_, [id, ..]) => error(id.clone()),
        _ => error(Value::Null),
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let streamable = accept.contains("application/json") && accept.contains("text/event-stream");
    let status = if streamable && !ids.is_empty() { StatusCode::OK } else { StatusCode::FORBIDDEN };
    let mut r = Response::new(crate::answer::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// Removes the tools `tools` does not allow from a JSON-RPC message (or batch) that
/// answers `tools/list` (`result.tools` is an array). `None`: nothing to change.
pub fn filter_list(tools: &McpTools, body: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let mut changed = false;
    let mut one = |m: &mut Value| {
        if let Some(list) = m.pointer_mut("/result/tools").and_then(Value::as_array_mut) {
            let before = list.len();
            list.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(|n| tools.allows(n)));
            changed |= list.len() != before;
        }
    };
    match &mut v {
        Value::Array(items) => items.iter_mut().for_each(&mut one),
        m => one(m),
    }
    changed.then(|| v.to_string().into_bytes())
}

/// Rewrites one server-sent event (without its blank-line end): its `data:` lines,
/// when they hold a `tools/list` answer, become one filtered `data:` line.
fn filter_event(tools: &McpTools, event: &str) -> Option<String> {
    let data: Vec<&str> =
        event.lines().filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d))).collect();
    if data.is_empty() {
        return None;
    }
    let new = filter_list(tools, data.join("\n").as_bytes())?;
    let mut out = String::new();
    let mut put = false;
    for l in event.lines() {
        if l.starts_with("data:") {
            if !put {
                out.push_str("data: ");
                out.push_str(&String::from_utf8_lossy(&new));
                out.push('\n');
                put = true;
            }
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    Some(out)
}

/// How a response is filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
    /// `application/json`: read whole (at most [`MAX_BODY`]), rewritten at the end.
    Json,
    /// `text/event-stream`: rewritten event by event, each at most [`MAX_BODY`].
    Sse,
    /// Compressed although gvm asked for no encoding: cannot be filtered, so nothing
    /// of it is passed on.
    Encoded,
}

impl ListKind {
    /// Which filter a response needs: `asked_list` is whether the request asked for
    /// `tools/list` (a JSON answer is read whole only then); an event stream is always
    /// watched (the older SSE transport answers every request on its GET stream).
    pub(crate) fn of(headers: &HeaderMap, asked_list: bool) -> Option<ListKind> {
        let enc = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity");
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let ct = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let kind = match ct.as_str() {
            "text/event-stream" => ListKind::Sse,
            "application/json" if asked_list => ListKind::Json,
            _ => return None,
        };
        Some(if enc.trim().eq_ignore_ascii_case("identity") { kind } else { ListKind::Encoded })
    }
}

/// A response body with `tools/list` answers filtered (`mcp.filter_list = true`), or
/// (`filter` = `None`) passed through. An answer too large to read is cut off where it
/// is: never passed on unfiltered (the client sees a truncated answer).
pub(crate) struct ListFilter<B> {
    inner: B,
    filter: Option<(Arc<McpTools>, ListKind)>,
    buf: BytesMut,
    done: bool,
}

impl<B> ListFilter<B> {
    /// The complete events in `buf`, each rewritten when it answers `tools/list`.
    fn take_events(&mut self, tools: &McpTools) -> Option<Bytes> {
        let mut out = BytesMut::new();
        loop {
            let text = &self.buf[..];
            let end = find_event_end(text)?;
            let (len, sep) = end;
            let event = String::from_utf8_lossy(&text[..len]).into_owned();
            match filter_event(tools, &event) {
                Some(new) => {
                    out.extend_from_slice(new.as_bytes());
                    out.extend_from_slice(b"\n");
                }
                None => out.extend_from_slice(&text[..len + sep]),
            }
            let _ = self.buf.split_to(len + sep);
            if self.buf.is_empty() || find_event_end(&self.buf).is_none() {
                break;
            }
        }
        Some(out.freeze())
    }
}

/// Where the first event of `b` ends: `(length, separator length)`.
fn find_event_end(b: &[u8]) -> Option<(usize, usize)> {
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| (i + 1, 1));
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i + 2, 2));
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(if a.0 <= c.0 { a } else { c }),
        (a, c) => a.or(c),
    }
}

impl<B> Body for ListFilter<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some((tools, kind)) = this.filter.clone() else { return Pin::new(&mut this.inner).poll_frame(cx) };
        if kind == ListKind::Encoded && !this.done {
            tracing::warn!("an MCP answer to filter came compressed: cut off");
            this.done = true;
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue }; // trailers: dropped
                    this.buf.extend_from_slice(&data);
                    if kind == ListKind::Sse {
                        if let Some(out) = this.take_events(&tools) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    if this.buf.len() > MAX_BODY {
                        tracing::warn!("an MCP answer to filter is larger than {MAX_BODY} bytes: cut off");
                        this.done = true;
                        return Poll::Ready(None);
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = std::mem::take(&mut this.buf).freeze();
                    let out = match kind {
                        ListKind::Json => filter_list(&tools, &rest).map(Bytes::from).unwrap_or(rest),
                        // An unfinished event: passed as it is (no client acts on it).
                        ListKind::Sse | ListKind::Encoded => rest,
                    };
                    return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.filter {
            None => self.inner.is_end_stream(),
            Some(_) => self.done,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.filter {
            None => self.inner.size_hint(),
            Some(_) => http_body::SizeHint::default(),
        }
    }
}

/// What the pipeline keeps of a checked request: whether its answer is to be filtered.
pub(crate) struct Checked {
    /// `Some`: `filter_list` is on; the bool says whether the request asked `tools/list`.
    pub filter: Option<(Arc<McpTools>, bool)>,
}

/// The body the pipeline forwards: the agent's as it streams in, or the one read here
/// for the check.
pub(crate) enum ReqBody {
    Stream(hyper::body::Incoming),
    Read(Option<Bytes>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Stream(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Read(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Stream(b) => b.is_end_stream(),
            ReqBody::Read(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ReqBody::Stream(b) => b.size_hint(),
            ReqBody::Read(b) => http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Reads and checks the JSON-RPC body of a POST decided by a rule with `mcp`; puts the
/// body back (read whole) and the messages into `details["mcp"]`. Other methods (the
/// GET of an event stream, DELETE of a session) pass as the rule's `methods` say.
/// `Err`: the refusal (watch mode: decision `watch` with `mcp_would_deny`, forwarded).
pub(crate) async fn check_request(
    state: &ProfileState,
    ruling: &mut Ruling,
    req: &mut http::Request<ReqBody>,
    details: &mut Value,
) -> Result<Checked, Refusal> {
    use http_body_util::BodyExt;
    let Some((tools, watch)) = ruling.mcp.clone() else { return Ok(Checked { filter: None }) };
    let rule = ruling.rule.as_deref();
    let headers = req.headers().clone();
    let refuse = |p: Option<&Parsed>, reason: String, details: &mut Value| {
        details["reason"] = json!(reason);
        let answer = denied_answer(p, &reason, rule, &headers);
        Refusal::Mcp { rule: rule.map(str::to_owned), details: std::mem::take(details), answer }
    };
    if req.method() != http::Method::POST {
        return Ok(Checked { filter: tools.filter_list.then(|| (tools.clone(), false)) });
    }
    let body = std::mem::replace(req.body_mut(), ReqBody::Read(None));
    let bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let reason = if e.is::<http_body_util::LengthLimitError>() {
                format!("gvm denied an MCP request: its body is larger than {MAX_BODY} bytes")
            } else {
                format!("gvm denied an MCP request: its body could not be read: {e}")
            };
            return Err(refuse(None, reason, details));
        }
    };
    let parsed = match parse(&bytes) {
        Ok(p) => p,
        Err(e) => return Err(refuse(None, format!("gvm denied an MCP request: {e}"), details)),
    };
    let scan = state.scan.as_ref();
    details["mcp"] = summary(&parsed, |a| scan.is_some_and(|s| s.scan_once(a.as_bytes()).is_some()));
    if let Err(r) = check(&tools, &parsed) {
        if !watch {
            details["mcp_refused"] = json!(r.index);
            return Err(refuse(Some(&parsed), r.reason, details));
        }
        details["mcp_would_deny"] = json!(r.reason);
        // Recorded as `watch`: let through what enforce mode would refuse.
        ruling.policy_verdict = crate::decide::Verdict::Deny;
    }
    let asked = parsed.messages.iter().any(|m| m.method.as_deref() == Some("tools/list"));
    *req.body_mut() = ReqBody::Read((!bytes.is_empty()).then_some(bytes));
    Ok(Checked { filter: tools.filter_list.then_some((tools, asked)) })
}

/// Asks the server for answers it can filter: no compression.
pub(crate) fn prepare_request(checked: &Checked, headers: &mut HeaderMap) {
    if checked.filter.is_some() {
        headers.remove(header::ACCEPT_ENCODING);
    }
}

/// The answer's body, in the `tools/list` filter when the rule asks for it (else
/// passed through untouched).
pub(crate) fn filter_response<B>(checked: &Checked, parts: &mut http::response::Parts, body: B) -> ListFilter<B> {
    let filter = checked.filter.as_ref().and_then(|(tools, asked)| {
        let kind = ListKind::of(&parts.headers, *asked)?;
        parts.headers.remove(header::CONTENT_LENGTH);
        Some((tools.clone(), kind))
    });
    ListFilter { inner: body, filter, buf: BytesMut::new(), done: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> McpTools {
        McpTools {
            tools: vec!["search".into(), "read_file".into()],
            deny_tools: vec!["delete_*".into()],
            filter_list: true,
        }
    }

    fn call(id: u32, name: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{"q":"x"}}}}}}"#
        )
    }

    #[test]
    fn listed_tools_pass_and_others_do_not() {
        let p = parse(call(1, "search").as_bytes()).unwrap();
        assert_eq!(check(&tools(), &p), Ok(()));
        assert_eq!(p.messages[0].args.as_deref(), Some(r#"{"q":"x"}"#));
        let p = parse(call(2, "delete_file").as_bytes()).unwrap();
        assert!(check(&tools(), &p).unwrap_err().reason.contains("delete_file"));
    }

    #[test]
    fn a_mixed_batch_is_refused_whole() {
        let body = format!("[{},{}]", call(1, "search"), call(2, "delete_file"));
        let p = parse(body.as_bytes()).unwrap();
        assert!(p.batch);
        assert_eq!(check(&tools(), &p).unwrap_err().index, 1);
    }

    #[test]
    fn lifecycle_messages_pass_and_other_methods_do_not() {
        let ok = r#"[{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}},
            {"jsonrpc":"2.0","method":"notifications/initialized"},
            {"jsonrpc":"2.0","id":"a","result":{}}]"#;
        assert_eq!(check(&tools(), &parse(ok.as_bytes()).unwrap()), Ok(()));
        let no = r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#;
        assert!(check(&tools(), &parse(no.as_bytes()).unwrap()).is_err());
    }

    #[test]
    fn garbage_is_not_json_rpc() {
        for b in [&b"hello"[..], b"[]", b"42", br#"{"id":1,"method":"tools/call"}"#, br#"{"jsonrpc":"2.0","id":1}"#] {
            assert!(parse(b).is_err(), "{}", String::from_utf8_lossy(b));
        }
        let no_name = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#;
        assert!(parse(no_name.as_bytes()).is_err());
    }

    #[test]
    fn tools_list_answers_keep_only_allowed_tools() {
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"search"},{"name":"delete_file"}]}}"#;
        let out = String::from_utf8(filter_list(&tools(), body.as_bytes()).unwrap()).unwrap();
        assert!(out.contains("search") && !out.contains("delete_file"), "{out}");
        let ev = format!("event: message\ndata: {body}");
        let out = filter_event(&tools(), &ev).unwrap();
        assert!(out.starts_with("event: message\ndata: {") && !out.contains("delete_file"), "{out}");
    }
}
