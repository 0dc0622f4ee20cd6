//! The exfiltration scan streams request bodies chunk by chunk. Property: whatever the
//! chunking, a stream reports exactly the hit (needle, form, end offset) that one
//! `scan_once` of the whole body reports — a value split across chunks is never
//! missed, and nothing is found that is not there.
#![no_main]

use gvm_gateway::fuzz_api::{Needle, NeedleKind, Scanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // [n][len_1 value_1]...[len_n value_n][chunk sizes as one byte each, 0xff][body]
    let Some((&n, mut rest)) = data.split_first() else { return };
    let mut needles = Vec::new();
    for i in 0..(n % 6) {
        let Some((&len, r)) = rest.split_first() else { return };
        let len = usize::from(len % 40);
        if r.len() < len {
            return;
        }
        needles.push(Needle {
            kind: NeedleKind::File,
            label: format!("n{i}").into(),
            secret: None,
            value: r[..len].to_vec(),
        });
        rest = &r[len..];
    }
    let Some(scanner) = Scanner::new(needles) else { return };
    let scanner = std::sync::Arc::new(scanner);
    let split = rest.iter().position(|b| *b == 0xff).unwrap_or(rest.len().min(8));
    let (sizes, body) = rest.split_at(split);
    let body = body.get(1..).unwrap_or(&[]);
    let once = scanner.scan_once(body);
    let mut stream = scanner.stream();
    let mut got = None;
    let mut at = 0;
    let mut sizes = sizes.iter().cycle();
    while at < body.len() {
        let step = sizes.next().map_or(body.len(), |s| usize::from(*s).max(1)).min(body.len() - at);
        let hit = stream.feed(&body[at..at + step]);
        at += step;
        if got.is_none() {
            if let Some(h) = hit {
                // Found in the chunk that completes it, not later.
                assert!(h.end <= at as u64 && h.end > (at - step) as u64, "{h:?} outside chunk ending {at}");
                got = Some(h);
            }
        }
    }
    assert_eq!(got, once, "streaming and scan_once disagree");
});
