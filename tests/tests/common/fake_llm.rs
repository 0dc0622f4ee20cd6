//! A small OpenAI-compatible model server for the agent tests: `POST /v1/chat/completions`
//! (a JSON answer, or server-sent events when the request says `"stream": true`) and
//! `GET /v1/models`, over plain HTTP or TLS under a [`TestCa`](super::agent::TestCa).
//!
//! It plays a script: each chat request takes the next [`Turn`], which answers either with
//! tool calls or with a final text. Agents name their tools differently (`read_file`,
//! `file_read`, `terminal`, `shell`, ...), so a tool call names no tool: it picks one from
//! the list the agent advertised in the request's `tools` ([`Pick`]) and builds its
//! arguments from that tool's parameter schema. Every request is recorded, so a test can
//! assert on what the agent sent back (tool results, and what must never reach a model).
//!
//! An agent reaches it through gvm's gateway like any model provider: listen on the
//! host's 127.0.0.1 here, map a test host name to 127.0.0.1 in gvmd.toml's
//! `[gateway.hosts]`, allow that host and port in the profile.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// A tool the agent advertised: its name, description and JSON-schema parameters.
#[derive(Clone, Debug)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

impl Tool {
    /// Names of the tool's parameters (the `properties` of its schema).
    pub fn params(&self) -> Vec<String> {
        self.parameters["properties"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }

    /// The first of `candidates` that is a parameter of this tool (e.g. `["path",
    /// "file_path", "filename"]`), or the first candidate when none is.
    pub fn param<'a>(&self, candidates: &[&'a str]) -> &'a str {
        let have = self.params();
        candidates.iter().copied().find(|c| have.iter().any(|h| h == c)).unwrap_or(candidates[0])
    }
}

/// Chooses a tool among the advertised ones.
pub type Pick = Box<dyn Fn(&Tool) -> bool + Send + Sync>;
/// Builds a tool call's arguments from the chosen tool (its schema names the fields).
pub type Args = Box<dyn Fn(&Tool) -> Value + Send + Sync>;

/// One tool call of a turn: which tool, with what arguments.
pub struct Call {
    pub what: String,
    pub pick: Pick,
    pub args: Args,
}

impl Call {
    /// `what` describes the call for failure messages (e.g. "read a file").
    pub fn new(
        what: &str,
        pick: impl Fn(&Tool) -> bool + Send + Sync + 'static,
        args: impl Fn(&Tool) -> Value + Send + Sync + 'static,
    ) -> Call {
        Call { what: what.to_string(), pick: Box::new(pick), args: Box::new(args) }
    }
}

/// What the model answers to one chat request.
pub enum Turn {
    /// Tool calls, all in one assistant message.
    Tools(Vec<Call>),
    /// A final text (the agent's task ends here).
    Text(String),
}

/// A tool name predicate: the name is one of `names`.
pub fn named(names: &'static [&'static str]) -> impl Fn(&Tool) -> bool + Send + Sync {
    move |t| names.contains(&t.name.as_str())
}

/// One request the server got.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when empty or not JSON).
    pub json: Value,
    /// The raw body.
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The tools advertised in this (chat) request.
    pub fn tools(&self) -> Vec<Tool> {
        self.json["tools"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        let f = &t["function"];
                        Tool {
                            name: f["name"].as_str().unwrap_or("").to_string(),
                            description: f["description"].as_str().unwrap_or("").to_string(),
                            parameters: f["parameters"].clone(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct State {
    script: Vec<Turn>,
    next: usize,
    seen: Vec<Seen>,
    /// Problems of the script met while answering (no advertised tool matched, ...).
    errors: Vec<String>,
}

/// The server; stops accepting on drop.
pub struct FakeLlm {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

/// The model id the server lists and answers as.
pub const MODEL: &str = "gvm-fake-model";

impl FakeLlm {
    /// Listens on 127.0.0.1 (a free port); plain HTTP when `tls` is None.
    pub fn start(script: Vec<Turn>, tls: Option<Arc<rustls::ServerConfig>>) -> FakeLlm {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State { script, next: 0, seen: Vec::new(), errors: Vec::new() }));
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, st) = (stop.clone(), state.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
                let (st, tls) = (st.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve(conn, &st),
                    Some(cfg) => {
                        let Ok(server) = rustls::ServerConnection::new(cfg) else { return };
                        serve(rustls::StreamOwned::new(server, conn), &st);
                    }
                });
            }
        });
        FakeLlm { addr, state, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The chat completion requests so far.
    pub fn chats(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.method == "POST" && s.path.ends_with("/chat/completions")).collect()
    }

    /// How many turns of the script were played.
    pub fn played(&self) -> usize {
        self.state.lock().unwrap().next
    }

    /// Script problems met while answering (empty when every call found its tool).
    pub fn errors(&self) -> Vec<String> {
        self.state.lock().unwrap().errors.clone()
    }

    /// The content of every `role: tool` message the agent sent back, in the order of
    /// the last chat request (it carries the whole conversation), paired with the name
    /// of the tool call it answers.
    pub fn tool_results(&self) -> Vec<(String, String)> {
        let Some(last) = self.chats().pop() else { return Vec::new() };
        let msgs = last.json["messages"].as_array().cloned().unwrap_or_default();
        let mut names = std::collections::HashMap::new();
        for m in &msgs {
            for c in m["tool_calls"].as_array().into_iter().flatten() {
                names.insert(
                    c["id"].as_str().unwrap_or("").to_string(),
                    c["function"]["name"].as_str().unwrap_or("").to_string(),
                );
            }
        }
        msgs.iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| {
                let id = m["tool_call_id"].as_str().unwrap_or("");
                (names.get(id).cloned().unwrap_or_default(), content_text(&m["content"]))
            })
            .collect()
    }

    /// True when `needle` appears in any request the server got (headers or body).
    pub fn received(&self, needle: &str) -> bool {
        self.seen()
            .iter()
            .any(|s| s.body.contains(needle) || s.headers.iter().any(|(n, v)| n.contains(needle) || v.contains(needle)))
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// A message content as text: a string, or the text parts of a list of parts.
pub fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn read_request(reader: &mut impl BufRead) -> Option<Seen> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.to_ascii_lowercase());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body).ok()?;
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    Some(Seen { method, path, headers, json, body })
}

fn serve<S: Read + Write>(conn: S, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let path = req.path.split('?').next().unwrap_or("").to_string();
        state.lock().unwrap().seen.push(req.clone());
        let conn = reader.get_mut();
        let ok = if req.method == "GET" && path.ends_with("/models") {
            let models = json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "gvm-tests"}]});
            respond(conn, 200, "application/json", &models.to_string())
        } else if req.method == "GET" && path.contains("/models/") {
            let model = json!({"id": MODEL, "object": "model", "created": 0, "owned_by": "gvm-tests"});
            respond(conn, 200, "application/json", &model.to_string())
        } else if req.method == "POST" && path.ends_with("/chat/completions") {
            let message = answer(&req, state);
            if req.json["stream"] == true {
                stream(conn, &message)
            } else {
                let finish = if message.get("tool_calls").is_some() { "tool_calls" } else { "stop" };
                let body = json!({
                    "id": "chatcmpl-gvm", "object": "chat.completion", "created": 0, "model": MODEL,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                });
                respond(conn, 200, "application/json", &body.to_string())
            }
        } else {
            let err = json!({"error": {"message": format!("fake model server: no {} {}", req.method, path), "type": "not_found"}});
            respond(conn, 404, "application/json", &err.to_string())
        };
        let close = req.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if !ok || close {
            return;
        }
    }
}

/// The assistant message of the next turn (a final text once the script is played).
fn answer(req: &Seen, state: &Mutex<State>) -> Value {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let tools = req.tools();
    let mut st = state.lock().unwrap();
    let turn = st.next;
    st.next += 1;
    let mut errors = Vec::new();
    let message = match st.script.get(turn) {
        None => json!({"role": "assistant", "content": "All done."}),
        Some(Turn::Text(t)) => json!({"role": "assistant", "content": t}),
        Some(Turn::Tools(calls)) => {
            let mut out = Vec::new();
            for call in calls {
                let Some(tool) = tools.iter().find(|t| (call.pick)(t)) else {
                    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
                    errors.push(format!(
                        "turn {turn}: no advertised tool fits \"{}\" (advertised: {names:?})",
                        call.what
                    ));
                    continue;
                };
                let n = CALLS.fetch_add(1, Ordering::Relaxed);
                out.push(json!({
                    "id": format!("call_{n}"), "type": "function",
                    "function": {"name": tool.name, "arguments": (call.args)(tool).to_string()},
                }));
            }
            if out.is_empty() {
                json!({"role": "assistant", "content": "No tool fits; stopping."})
            } else {
                json!({"role": "assistant", "content": null, "tool_calls": out})
            }
        }
    };
    st.errors.extend(errors);
    message
}

fn respond(conn: &mut impl Write, status: u16, ctype: &str, body: &str) -> bool {
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let whole =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    conn.write_all(whole.as_bytes()).and_then(|()| conn.flush()).is_ok()
}

/// Server-sent events in chunked encoding: the role, then the content word by word or
/// each tool call in two pieces of arguments, then the finish reason with usage, then
/// `[DONE]`. Each event is flushed on its own (a proxy that buffers stalls the agent).
fn stream(conn: &mut impl Write, message: &Value) -> bool {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-gvm", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    let finish = if let Some(calls) = message["tool_calls"].as_array() {
        for (i, c) in calls.iter().enumerate() {
            let args = c["function"]["arguments"].as_str().unwrap_or("");
            let (a, b) = args.split_at(args.len() / 2);
            events.push(chunk(
                json!({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                       "function": {"name": c["function"]["name"], "arguments": a}}]}),
                Value::Null,
            ));
            events.push(chunk(json!({"tool_calls": [{"index": i, "function": {"arguments": b}}]}), Value::Null));
        }
        "tool_calls"
    } else {
        let text = message["content"].as_str().unwrap_or("");
        for word in text.split_inclusive(' ') {
            events.push(chunk(json!({"content": word}), Value::Null));
        }
        "stop"
    };
    let mut last = chunk(json!({}), json!(finish));
    last["usage"] = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
    events.push(last);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    if conn.write_all(head.as_bytes()).and_then(|()| conn.flush()).is_err() {
        return false;
    }
    let mut datas: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    datas.push("data: [DONE]\n\n".to_string());
    for d in datas {
        let piece = format!("{:x}\r\n{d}\r\n", d.len());
        if conn.write_all(piece.as_bytes()).and_then(|()| conn.flush()).is_err() {
            return false;
        }
    }
    conn.write_all(b"0\r\n\r\n").and_then(|()| conn.flush()).is_ok()
}
