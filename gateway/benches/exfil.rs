//! The exfiltration scan's cost (harness = false): MB/s of a request body scanned for
//! 50 needles in all their forms (~650 patterns), whole and streamed in 16 KiB
//! chunks, beside the same body passed through with no scan (a copy per chunk, what
//! forwarding a frame costs at least). `cargo bench -p gvm-gateway --bench exfil`.
//!
//! On the 2-core shared dev machine (LTO off): 487 patterns in a 9.3 MiB DFA; no scan
//! 16,800 MB/s, scan_once 373 MB/s, streamed in 16 KiB chunks 337 MB/s, i.e. ~2.9 ms
//! of one core per MB scanned. With the builder's default (a contiguous NFA) streaming
//! was 120 MB/s. Either is above the default `[limits] request_body_per_sec` (32 MB/s).
//!
//! `body = true` (same machine, shared with 4 other builds, so noisy): the streamed scan
//! with one literal allowed ran at 307 MB/s against 195 MB/s without in the same run —
//! no measurable cost; the placeholder swap itself 7,000 MB/s (copy alone: 7,264).

use std::sync::Arc;
use std::time::Instant;

use gvm_gateway::scan::{Needle, NeedleKind, Scanner};

fn main() {
    // A body of JSON-ish ASCII text (the common case: LLM API requests), 64 MiB.
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789{}\":,.-_/+=";
    let body: Vec<u8> = (0..64 << 20).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
    let needles: Vec<Needle> = (0..50)
        .map(|i| Needle {
            kind: NeedleKind::File,
            label: format!("value {i}").into(),
            secret: None,
            value: (0..24).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect(),
        })
        .collect();
    let scanner = Arc::new(Scanner::new(needles).unwrap());
    let mb = body.len() as f64 / (1 << 20) as f64;
    let rate = |f: &mut dyn FnMut()| {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        mb / best
    };
    let mut sink = Vec::with_capacity(16 << 10);
    let none = rate(&mut || {
        for c in body.chunks(16 << 10) {
            sink.clear();
            sink.extend_from_slice(c);
            std::hint::black_box(&sink);
        }
    });
    let once = rate(&mut || {
        assert!(scanner.scan_once(&body).is_none());
    });
    let streamed = rate(&mut || {
        let mut st = scanner.stream();
        for c in body.chunks(16 << 10) {
            assert!(st.feed(c).is_none());
        }
    });
    println!(
        "exfil scan, 50 needles x all forms = {} patterns (DFA {:.1} MiB), {mb:.0} MiB body:",
        scanner.patterns(),
        scanner.memory_usage() as f64 / (1 << 20) as f64
    );
    println!("  no scan (copy per 16 KiB chunk): {none:>8.0} MB/s");
    println!("  scan_once (whole body):           {once:>8.0} MB/s");
    println!("  streamed (16 KiB chunks):         {streamed:>8.0} MB/s");
    println!("  added cost: {:.2} ms per MB scanned (streamed)", 1e3 / streamed - 1e3 / none);

    // `[secrets.NAME] body = true`: the scan lets one needle's literal form through
    // (every hit is then looked at), and the placeholders are swapped after it.
    let allowed = rate(&mut || {
        let mut st = scanner.stream().allowing(vec![0]);
        for c in body.chunks(16 << 10) {
            assert!(st.feed(c).is_none());
        }
    });
    let placeholder = b"gvm-secret-openai-AAAAAAAAAAAAAAAAAAAAAAAA".to_vec();
    let pairs = || vec![(placeholder.clone(), bytes::Bytes::from_static(b"sk-proj-0123456789abcdef0123456789"))];
    let swapped = rate(&mut || {
        let mut sw = gvm_gateway::scan::BodySwap::new(pairs()).unwrap();
        for c in body.chunks(16 << 10) {
            std::hint::black_box(sw.push(c));
        }
        std::hint::black_box(sw.finish());
    });
    println!("  streamed, one literal allowed:    {allowed:>8.0} MB/s");
    println!("  placeholder swap (16 KiB chunks): {swapped:>8.0} MB/s");
}
