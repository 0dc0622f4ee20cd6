//! `Host::parse` reads hosts from rules, CONNECT targets, SNI, Host headers and DNS
//! questions. What it accepts must be a fixed point in canonical form: two parsers of
//! the same host must never disagree (a rule and the request it is matched on).
#![no_main]

use gvm_policy::Host;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let Ok(h) = Host::parse(input) else { return };
    let s = h.as_str();
    assert!(!s.is_empty() && s.is_ascii(), "{input:?} -> {s:?}");
    assert!(!s.bytes().any(|b| b.is_ascii_uppercase()), "{input:?} -> {s:?} not lower case");
    assert!(!s.ends_with('.'), "{input:?} -> {s:?} keeps a trailing dot");
    assert_eq!(Host::parse(s).as_ref(), Ok(&h), "{input:?} -> {s:?} is not a fixed point");
    assert_eq!(Host::parse(&h.url_form()).as_ref(), Ok(&h), "{input:?}: url_form does not parse back");
    assert_eq!(Host::parse(&s.to_ascii_uppercase()).as_ref(), Ok(&h), "{input:?}: case changes the host");
    match h.ip() {
        Some(ip) => assert_eq!(Host::from_ip(ip), h),
        // A name is never something an upstream or the resolver reads as an address.
        None => {
            assert!(s.parse::<std::net::IpAddr>().is_err(), "{input:?} -> name {s:?} is an IP address");
            assert_eq!(Host::parse(&format!("{s}.")).as_ref(), Ok(&h), "{input:?}: trailing dot changes the host");
        }
    }
});
