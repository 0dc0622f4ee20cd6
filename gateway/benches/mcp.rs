//! What an MCP-aware rule costs per request (harness = false): reading and checking a
//! JSON-RPC body (one `tools/call` with ~1 KiB of arguments; a batch of 10), and
//! filtering a `tools/list` answer of 50 tools. `cargo bench -p gvm-gateway --bench mcp`.
//!
//! On the 2-core shared dev machine (another build running, so noisy): one tools/call
//! of 1.1 KB 3.9 µs, a batch of 10 (11 KB) 55 µs, a 50-tool list (4 KB) filtered in
//! 105 µs — against the audit event every request already waits for, not measurable.

use std::time::Instant;

use gvm_gateway::mcp_rpc::{check, filter_list, parse};
use gvm_policy::McpTools;

fn per_op(n: u32, f: &mut dyn FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / f64::from(n));
    }
    best * 1e6
}

fn main() {
    let tools = McpTools {
        tools: vec!["search".into(), "read_*".into()],
        deny_tools: vec!["delete_*".into()],
        filter_list: true,
    };
    let call = |id: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"read_file","arguments":{{"path":"/workspace/src/main.rs","note":"{}"}}}}}}"#,
            "x".repeat(1000)
        )
    };
    let one = call(1);
    let batch = format!("[{}]", (0..10).map(call).collect::<Vec<_>>().join(","));
    let list = format!(
        r#"{{"jsonrpc":"2.0","id":3,"result":{{"tools":[{}]}}}}"#,
        (0..50)
            .map(|i| {
                let name = if i % 5 == 0 { format!("delete_{i}") } else { format!("read_{i}") };
                format!(r#"{{"name":"{name}","description":"tool number {i}","inputSchema":{{"type":"object"}}}}"#)
            })
            .collect::<Vec<_>>()
            .join(",")
    );
    let check_body = |b: &str| {
        let p = parse(b.as_bytes()).unwrap();
        check(&tools, &p).unwrap();
        std::hint::black_box(p);
    };
    let t1 = per_op(20_000, &mut || check_body(&one));
    let t10 = per_op(2_000, &mut || check_body(&batch));
    let tl = per_op(5_000, &mut || {
        std::hint::black_box(filter_list(&tools, list.as_bytes()).unwrap());
    });
    println!("parse+check one tools/call ({} B): {t1:.2} µs", one.len());
    println!("parse+check batch of 10 ({} B): {t10:.2} µs", batch.len());
    println!("filter tools/list of 50 tools ({} B): {tl:.2} µs", list.len());
}
