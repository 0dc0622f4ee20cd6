//! A small MCP server (streamable HTTP, protocol 2025-03-26) with three tools —
//! `search`, `read_file`, `delete_file` — that answers in JSON, or as an event stream
//! when the URL has `?sse`. It records every tool it ran, so a test can tell that a
//! refused call never reached it.

use std::sync::Mutex;

use serde_json::{json, Value};

/// Every `tools/call` this server ran: `"NAME ARGUMENTS"`.
pub static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// True when the server ran `tool` (with arguments containing `args`).
pub fn ran(tool: &str, args: &str) -> bool {
    RAN.lock().unwrap().iter().any(|t| t.split_once(' ').is_some_and(|(n, a)| n == tool && a.contains(args)))
}

fn answer(m: &Value) -> Option<Value> {
    let id = m.get("id")?.clone();
    let method = m.get("method")?.as_str()?;
    let result = match method {
        "initialize" => json!({
            "protocolVersion": "2025-03-26",
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "test-mcp", "version": "1.0"},
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": [
            {"name": "search", "description": "search the corpus", "inputSchema": {"type": "object"}},
            {"name": "read_file", "description": "read a file", "inputSchema": {"type": "object"}},
            {"name": "delete_file", "description": "delete a file", "inputSchema": {"type": "object"}},
        ]}),
        "tools/call" => {
            let name = m.pointer("/params/name").and_then(Value::as_str).unwrap_or_default().to_string();
            let args = m.pointer("/params/arguments").cloned().unwrap_or(Value::Null);
            RAN.lock().unwrap().push(format!("{name} {args}"));
            json!({"content": [{"type": "text", "text": format!("{name} ran with {args}")}], "isError": false})
        }
        other => {
            return Some(
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("no method {other}")}}),
            )
        }
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// `(status, content type, body)` for a POST of `body`.
pub fn handle(body: &[u8], sse: bool) -> (u16, &'static str, String) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (
            400,
            "application/json",
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}}).to_string(),
        );
    };
    let out = match &v {
        Value::Array(items) => {
            let a: Vec<Value> = items.iter().filter_map(answer).collect();
            (!a.is_empty()).then_some(Value::Array(a))
        }
        m => answer(m),
    };
    match out {
        None => (202, "application/json", String::new()),
        Some(o) if sse => (200, "text/event-stream", format!("event: message\ndata: {o}\n\n")),
        Some(o) => (200, "application/json", o.to_string()),
    }
}
