//! The JSON-RPC reader of MCP-aware rules (`gateway/src/mcp.rs`) on any body. Properties:
//! a body is read or refused, never half-read (a batch is `[`, every tools/call has
//! its tool name); a batch passes the tool check exactly when each of its messages
//! would pass alone, and what passes names only callable tools; a filtered `tools/list`
//! answer is JSON, lists only callable tools and is a fixed point of the filter; the
//! tool-name glob agrees with a plain recursive matcher.
#![no_main]

use gvm_gateway::fuzz_api::{mcp_check, mcp_filter_list, mcp_parse, McpParsed};
use gvm_policy::{mcp_glob, McpTools};
use libfuzzer_sys::fuzz_target;

/// `*` = any run of bytes, everything else itself: the definition, as a table of
/// "pattern prefix i matches name prefix j".
fn reference(p: &[u8], n: &[u8]) -> bool {
    let mut m = vec![vec![false; n.len() + 1]; p.len() + 1];
    m[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=n.len() {
            m[i][j] = if p[i - 1] == b'*' {
                m[i - 1][j] || (j > 0 && m[i][j - 1])
            } else {
                j > 0 && m[i - 1][j - 1] && p[i - 1] == n[j - 1]
            };
        }
    }
    m[p.len()][n.len()]
}

fuzz_target!(|data: &[u8]| {
    let tools = McpTools {
        tools: vec!["search".into(), "read_*".into(), "*_file".into()],
        deny_tools: vec!["read_secret*".into(), "delete_*".into()],
        filter_list: true,
    };
    if let Ok(p) = mcp_parse(data) {
        assert!(!p.messages.is_empty());
        let first = data.iter().find(|b| !b.is_ascii_whitespace());
        assert_eq!(p.batch, first == Some(&b'['), "batch flag");
        let alone: Vec<bool> = p
            .messages
            .iter()
            .map(|m| {
                assert_eq!(m.method.as_deref() == Some("tools/call"), m.tool.is_some(), "{m:?}");
                mcp_check(&tools, &McpParsed { batch: false, messages: vec![m.clone()] }).is_ok()
            })
            .collect();
        match mcp_check(&tools, &p) {
            Ok(()) => {
                assert!(alone.iter().all(|ok| *ok), "a batch passed with a refused message");
                for m in &p.messages {
                    if let Some(t) = &m.tool {
                        assert!(tools.allows(t), "tool {t} passed");
                    }
                }
            }
            Err(r) => assert!(!alone[r.index], "refused message {} passes alone", r.index),
        }
    }
    if let Some(out) = mcp_filter_list(&tools, data) {
        let v: serde_json::Value = serde_json::from_slice(&out).expect("the filter writes JSON");
        let msgs = match &v {
            serde_json::Value::Array(a) => a.clone(),
            m => vec![m.clone()],
        };
        for m in msgs {
            for t in m.pointer("/result/tools").and_then(|t| t.as_array()).into_iter().flatten() {
                let name = t.get("name").and_then(|n| n.as_str()).expect("a kept tool has a name");
                assert!(tools.allows(name), "{name} kept");
            }
        }
        assert_eq!(mcp_filter_list(&tools, &out), None, "filtering twice changed it");
    }
    if let Some(i) = data.iter().position(|b| *b == 0) {
        let (p, n) = (&data[..i], &data[i + 1..]);
        if let (Ok(p), Ok(n)) = (std::str::from_utf8(p), std::str::from_utf8(n)) {
            if p.len() <= 16 && n.len() <= 64 {
                assert_eq!(mcp_glob(p, n), reference(p.as_bytes(), n.as_bytes()), "glob({p:?}, {n:?})");
            }
        }
    }
});
