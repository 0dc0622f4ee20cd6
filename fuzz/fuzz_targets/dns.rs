//! DNS queries from the agent (UDP and TCP): parsing never panics, and every answer
//! gvmd builds is a response to exactly the question asked.
#![no_main]

use gvm_gateway::fuzz_api::{dns_answer, dns_parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((id, name, qtype)) = dns_parse(data) else { return };
    assert!(name.len() <= 253, "{name:?}");
    assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?} not lower case");
    // The name read is the name asked: its labels, re-encoded, are the wire labels.
    let mut wire = Vec::new();
    for l in name.split('.').filter(|l| !l.is_empty()) {
        wire.push(l.len() as u8);
        wire.extend_from_slice(l.as_bytes());
    }
    wire.push(0);
    let asked: Vec<u8> = data[12..12 + wire.len()].iter().map(u8::to_ascii_lowercase).collect();
    assert_eq!(asked, wire, "{name:?} does not spell the question's labels");
    for addr in [None, Some([127, 0, 0, 1])] {
        let out = dns_answer(data, addr);
        assert_eq!(u16::from_be_bytes([out[0], out[1]]), id, "the answer carries the query's id");
        assert!(out[2] & 0x80 != 0, "QR set");
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), u16::from(addr.is_some()), "ANCOUNT");
        // The question echoed back is the one that was parsed.
        let mut q = out.clone();
        q[2] &= 0x7f;
        let (id2, name2, qtype2) = dns_parse(&q).expect("the echoed question parses");
        assert_eq!((id2, name2.as_str(), qtype2), (id, name.as_str(), qtype));
    }
});
