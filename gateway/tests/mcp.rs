//! MCP-aware rules: a streamable-HTTP MCP server with three tools behind the gateway;
//! the rule lets the agent call `search` and `read_file`, never `delete_*`.

mod common;

use common::mcp_server::ran;
use common::*;

const POLICY: &str = r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
path = "/mcp"
action = "allow"
mcp = { tools = ["search", "read_file", "delete_*"], deny_tools = ["delete_*"], filter_list = true }
"#;

const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
const JSON: (&str, &str) = ("content-type", "application/json");

async fn post(env: &Env, query: &str, body: &str) -> Resp {
    let mut c = proxy_conn(env).await;
    let url = format!("http://{HOST}:{}/mcp{query}", env.up_http);
    send_full(&mut c, "POST", &url, &format!("{HOST}:{}", env.up_http), &[ACCEPT, JSON], body).await
}

fn call(id: u32, tool: &str, args: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#)
}

/// The audit events of decisions on the MCP endpoint whose details name `tool`.
fn tool_events(env: &Env, tool: &str) -> Vec<gvm_audit::AuditEvent> {
    events(env)
        .into_iter()
        .filter(|e| {
            e.kind == "http" && e.details["mcp"].as_array().is_some_and(|a| a.iter().any(|m| m["tool"] == tool))
        })
        .collect()
}

#[tokio::test]
async fn allowed_tool_runs_and_denied_tool_gets_a_json_rpc_error() {
    let env = env_named("mcp-calls", POLICY).await;
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let r = post(&env, "", init).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"]["serverInfo"]["name"], "test-mcp");
    let r = post(&env, "", r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;
    assert_eq!(r.status, 202, "{}", r.body);

    let r = post(&env, "", &call(1, "search", r#"{"q":"rust mcp"}"#)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["id"], 1);
    assert!(j["result"]["content"][0]["text"].as_str().unwrap().starts_with("search ran"), "{j}");
    assert!(ran("search", "rust mcp"));

    // The denied tool: the JSON-RPC error a client hands to the model, same id.
    let r = post(&env, "", &call(2, "delete_file", r#"{"path":"/workspace/notes.md"}"#)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["jsonrpc"], "2.0");
    assert_eq!(j["id"], 2);
    assert_eq!(j["error"]["code"], -32001);
    let msg = j["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("gvm denied tool call: delete_file"), "{msg}");
    assert!(msg.contains("network.rule[0]"), "{msg}");
    assert!(!ran("delete_file", "notes.md"), "the server ran a refused tool");

    // Both decisions audited with the tool name and a bounded argument summary.
    let ok = tool_events(&env, "search");
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].decision.as_deref(), Some("allow"));
    assert_eq!(ok[0].details["mcp"][0]["args"], r#"{"q":"rust mcp"}"#);
    let no = tool_events(&env, "delete_file");
    assert_eq!(no.len(), 1);
    assert_eq!(no[0].decision.as_deref(), Some("deny"));
    assert!(no[0].details["reason"].as_str().unwrap().contains("deny_tools"), "{}", no[0].details);
    assert_eq!(no[0].details["mcp"][0]["args"], r#"{"path":"/workspace/notes.md"}"#);
}

#[tokio::test]
async fn a_batch_mixing_allowed_and_denied_calls_is_refused_whole() {
    let env = env_named("mcp-batch", POLICY).await;
    let body = format!(
        "[{},{}]",
        call(7, "read_file", r#"{"path":"batch-a"}"#),
        call(8, "delete_file", r#"{"path":"batch-b"}"#)
    );
    let r = post(&env, "", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    let errs = j.as_array().expect("a batch is answered with a batch");
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0]["id"], 7);
    assert_eq!(errs[1]["id"], 8);
    assert!(errs.iter().all(|e| e["error"]["code"] == -32001));
    assert!(!ran("read_file", "batch-a") && !ran("delete_file", "batch-b"), "part of a refused batch ran");
    let ev = tool_events(&env, "delete_file");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].details["mcp_refused"], 1);
    assert_eq!(ev[0].details["mcp"][0]["tool"], "read_file");
    // The same batch without the denied call goes through whole.
    let body = format!("[{},{}]", call(9, "read_file", r#"{"path":"batch-c"}"#), call(10, "search", r#"{}"#));
    let r = post(&env, "", &body).await;
    assert_eq!(r.json().as_array().unwrap().len(), 2, "{}", r.body);
    assert!(ran("read_file", "batch-c"));
}

#[tokio::test]
async fn garbage_and_unlisted_methods_are_denied() {
    let env = env_named("mcp-garbage", POLICY).await;
    for body in [
        "not json",
        "[]",
        r#"{"id":1,"method":"tools/call"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
    ] {
        let r = post(&env, "", body).await;
        assert_eq!(r.status, 403, "{body}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], -32001, "{body}");
    }
    let r =
        post(&env, "", r#"{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#)
            .await;
    assert_eq!(r.json()["error"]["code"], -32001, "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("resources/read"));
    // Too large: refused unread.
    let big = format!(r#"{{"jsonrpc":"2.0","id":5,"method":"ping","params":{{"pad":"{}"}}}}"#, "x".repeat(1 << 20));
    let r = post(&env, "", &big).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("larger than"), "{}", r.body);
    let denied = events(&env).into_iter().filter(|e| e.kind == "http" && e.decision.as_deref() == Some("deny")).count();
    assert_eq!(denied, 6);
}

#[tokio::test]
async fn filter_list_hides_the_denied_tool_in_json_and_event_streams() {
    let env = env_named("mcp-list", POLICY).await;
    let list = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#;
    for query in ["", "?sse"] {
        let r = post(&env, query, list).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let json = match query {
            "" => r.body.clone(),
            _ => {
                assert!(r.body.starts_with("event: message\ndata: "), "{}", r.body);
                r.body.lines().find_map(|l| l.strip_prefix("data: ")).unwrap().to_string()
            }
        };
        let j: serde_json::Value = serde_json::from_str(&json).unwrap();
        let names: Vec<&str> =
            j["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["search", "read_file"], "{query}");
    }
}

#[tokio::test]
async fn a_list_answer_that_cannot_be_filtered_is_not_passed_on() {
    let env = env_named("mcp-gzip", POLICY).await;
    let r = post(&env, "?gzip", r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#).await;
    assert!(!r.body.contains("delete_file"), "{}", r.body);
    assert!(r.body.is_empty(), "{}", r.body);
}

#[tokio::test]
async fn tool_call_arguments_in_the_audit_are_bounded() {
    let env = env_named("mcp-args", POLICY).await;
    let long = format!(r#"{{"q":"{}"}}"#, "y".repeat(1000));
    let r = post(&env, "", &call(11, "search", &long)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ev = tool_events(&env, "search");
    assert_eq!(ev[0].details["mcp"][0]["args"].as_str().unwrap().chars().count(), 200);
}

#[tokio::test]
async fn a_secret_in_tool_arguments_never_reaches_the_audit() {
    const REAL: &str = "sk-live-mcp-9f8e7d6c5b4a39281706";
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), format!("{REAL}\n")).unwrap();
    let policy = format!(
        "{POLICY}\n[secrets]\nkey = {{ file = \"{}\", env = \"KEY\", hosts = [\"other.test.example\"] }}\n",
        secret.path().display()
    );
    let env = env_named("mcp-secret", &policy).await;
    let _ = env.gw.agent_env(&gvm_policy::parse_profile(&env.dir.path().join("mcp-secret.toml"), &policy).unwrap());
    let args = format!(r#"{{"path":"x","token":"{REAL}"}}"#);
    let r = post(&env, "", &call(21, "delete_file", &args)).await;
    assert_eq!(r.json()["error"]["code"], -32001, "{}", r.body);
    let r = post(&env, "", &call(22, "search", &args)).await;
    assert_eq!(r.status, 403, "the scan lets a secret through to the wrong host: {}", r.body);
    assert!(!ran("search", REAL));
    let all = events(&env);
    let redacted = all.iter().filter(|e| e.details["mcp"][0]["args"] == "[redacted: holds a protected value]").count();
    // The refusal, the allow the body scan then stopped, and its exfiltration event.
    assert_eq!(redacted, 3, "{all:?}");
    for e in &all {
        assert!(!e.details.to_string().contains(REAL), "the audit holds the secret: {}", e.details);
    }
}

#[tokio::test]
async fn watch_mode_forwards_a_refused_call_and_records_it_as_watch() {
    let policy = format!("[agent]\nmode = \"watch\"\n{POLICY}");
    let env = env_named("mcp-watch", &policy).await;
    let r = post(&env, "", &call(31, "delete_file", r#"{"path":"watched"}"#)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["result"].is_object(), "{}", r.body);
    assert!(ran("delete_file", "watched"));
    let ev = tool_events(&env, "delete_file");
    assert_eq!(ev[0].decision.as_deref(), Some("watch"));
    assert!(ev[0].details["mcp_would_deny"].as_str().unwrap().contains("delete_file"));
}

#[tokio::test]
async fn a_client_of_the_sse_transport_gets_403_with_the_json_rpc_error() {
    // The HTTP+SSE transport's POSTs do not accept an answer in the body (it comes on
    // the event stream), so the refusal fails the POST itself, with gvm's message.
    let env = env_named("mcp-ssepost", POLICY).await;
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/mcp", env.up_http);
    let body = call(41, "delete_file", r#"{"path":"old-transport"}"#);
    let r = send_full(&mut c, "POST", &url, &format!("{HOST}:{}", env.up_http), &[JSON], &body).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["id"], 41);
    assert!(r.json()["error"]["message"].as_str().unwrap().starts_with("gvm denied tool call: delete_file"));
    assert!(!ran("delete_file", "old-transport"));
}
