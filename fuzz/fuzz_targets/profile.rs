//! A profile file as a user (or a tool writing for them) may leave it: any bytes.
//! Parsing either yields a profile that can be checked and decided on, or a
//! diagnostic that renders (its line:col and snippet come from spans into the text).
#![no_main]

use std::path::Path;
use std::time::SystemTime;

use gvm_policy::{check, parse_profile, Host, Request, Scheme};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = Path::new("/etc/gvm/profiles/fuzz.toml");
    match parse_profile(file, text) {
        Ok(p) => {
            let _ = check(&p);
            let now = SystemTime::now();
            for (host, port, method, path) in [
                ("api.example.com", 443, "GET", "/v1/models"),
                ("127.0.0.1", 80, "POST", "/%2e%2e/admin?x=1"),
                ("xn--bcher-kva.example", 8443, "DELETE", "//a/./b/"),
            ] {
                let host = Host::parse(host).unwrap();
                let req = Request { scheme: Scheme::Https, host: &host, port, method, path };
                let d = p.compiled.decide(&req, now);
                let e = p.compiled.explain(&req, now);
                assert_eq!(d.verdict, e.decision.verdict, "explain disagrees with decide for {req:?}");
                let _ = p.compiled.decide_connect(&host, port, now);
            }
        }
        Err(d) => {
            let shown = d.to_string();
            assert!(shown.contains("fuzz.toml"), "a diagnostic names the file: {shown}");
        }
    }
});
