//! The fake OpenAI-compatible model server of the agent tests answers as a real client
//! expects: tool calls named after the tools the request advertised, in JSON and as
//! server-sent events, the model list, and a record of every request.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::fake_llm::*;
use serde_json::{json, Value};

fn post(port: u16, body: &Value) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: llm\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.read_to_string(&mut out).expect("the server closes after answering a `Connection: close` request");
    out
}

fn script() -> Vec<Turn> {
    vec![
        Turn::Tools(vec![Call::new(
            "read a file",
            named(&["read_file", "file_read"]),
            |t| json!({ t.param(&["path", "file_path"]): "notes.txt" }),
        )]),
        Turn::Tools(vec![Call::new("run a shell", named(&["terminal"]), |_| json!({"command": "id"}))]),
        Turn::Text("The report is written.".into()),
    ]
}

fn request(stream: bool, history: Value) -> Value {
    json!({
        "model": MODEL, "stream": stream, "messages": history,
        "tools": [
            {"type": "function", "function": {"name": "terminal", "description": "shell", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "read_file", "description": "read", "parameters": {"type": "object", "properties": {"file_path": {"type": "string"}}}}},
        ],
    })
}

#[test]
fn plays_its_script_with_the_advertised_tools_in_json_and_sse() {
    let llm = FakeLlm::start(script(), None);
    let one = post(llm.port(), &request(false, json!([{"role": "user", "content": "go"}])));
    assert!(one.starts_with("HTTP/1.1 200"), "{one}");
    let body: Value = serde_json::from_str(one.split_once("\r\n\r\n").unwrap().1).unwrap();
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "read_file", "{body}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"file_path": "notes.txt"}), "the argument is named as the tool's schema names it");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    let history = json!([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "the notes"},
    ]);
    let two = post(llm.port(), &request(true, history.clone()));
    assert!(two.contains("Content-Type: text/event-stream"), "{two}");
    assert!(two.contains("\"name\":\"terminal\""), "{two}");
    assert!(two.contains("data: [DONE]"), "{two}");
    assert!(two.contains("\"finish_reason\":\"tool_calls\""), "{two}");

    let three = post(llm.port(), &request(true, history));
    let text: String = three
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "The report is written.");
    assert_eq!(llm.played(), 3);
    assert!(llm.errors().is_empty(), "{:?}", llm.errors());
    assert_eq!(llm.tool_results(), vec![("read_file".to_string(), "the notes".to_string())]);
    assert!(llm.received("the notes") && !llm.received("never sent"));
}

#[test]
fn lists_its_model_and_reports_a_call_no_advertised_tool_fits() {
    let llm = FakeLlm::start(vec![Turn::Tools(vec![Call::new("browse", named(&["browser"]), |_| json!({}))])], None);
    let mut s = TcpStream::connect(("127.0.0.1", llm.port())).unwrap();
    write!(s, "GET /v1/models HTTP/1.1\r\nHost: llm\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.contains(MODEL), "{text}");
    let out = post(llm.port(), &request(false, json!([{"role": "user", "content": "go"}])));
    assert!(out.contains("No tool fits"), "{out}");
    let errors = llm.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("\"browse\"") && errors[0].contains("terminal"), "{errors:?}");
}
