//! Request paths as agents send them, classified and matched against path rules.
//! Properties the decision must keep for every path, whatever the bytes:
//! the query never matters; a denied path stays denied whatever the case of its
//! letters or their percent-encoding; a trailing `/` is not significant; and an allow
//! rule with a path allows only unambiguous paths under its prefix.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;
use std::time::SystemTime;

use gvm_policy::{parse_profile, Host, Profile, Request, Scheme, Verdict};
use libfuzzer_sys::fuzz_target;

const PROFILE: &str = r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test"
action = "allow"

[[network.rule]]
host = "api.test"
action = "deny"
path = "/admin/**"

[[network.rule]]
host = "api.test"
action = "deny"
path = "/v1/*/delete"

[[network.rule]]
host = "paths.test"
action = "allow"
path = "/v1/**"
"#;

fn profile() -> &'static Profile {
    static P: OnceLock<Profile> = OnceLock::new();
    P.get_or_init(|| parse_profile(Path::new("fuzz.toml"), PROFILE).expect("the fuzz profile parses"))
}

fn verdict(host: &Host, path: &str) -> Verdict {
    let req = Request { scheme: Scheme::Https, host, port: 443, method: "GET", path };
    profile().compiled.decide(&req, SystemTime::UNIX_EPOCH).verdict
}

fn pct_letters(p: &str) -> String {
    p.chars().map(|c| if c.is_ascii_alphabetic() { format!("%{:02X}", c as u32) } else { c.to_string() }).collect()
}

/// Percent-decodes, or `None` when an escape is malformed.
fn decode(p: &str) -> Option<Vec<u8>> {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let api = Host::parse("api.test").unwrap();
    let paths = Host::parse("paths.test").unwrap();
    let path = &raw[..raw.find(['?', '#']).unwrap_or(raw.len())];

    let v = verdict(&api, raw);
    assert_eq!(v, verdict(&api, path), "the query changed the decision for {raw:?}");
    if v == Verdict::Deny {
        for variant in [path.to_ascii_uppercase(), path.to_ascii_lowercase(), pct_letters(path)] {
            assert_eq!(verdict(&api, &variant), Verdict::Deny, "{path:?} is denied but {variant:?} is not");
        }
    }
    if !path.ends_with('/') {
        assert_eq!(verdict(&api, &format!("{path}/")), v, "a trailing / changed the decision for {path:?}");
    }

    let req = Request { scheme: Scheme::Https, host: &paths, port: 443, method: "GET", path: raw };
    let e = profile().compiled.explain(&req, SystemTime::UNIX_EPOCH);
    if e.decision.verdict == Verdict::Allow {
        assert!(!e.ambiguous_path, "ambiguous {raw:?} allowed by a path rule");
        let d = decode(path).expect("an allowed path has well-formed escapes");
        assert!(d == b"/v1" || d == b"/v1/" || d.starts_with(b"/v1/"), "{raw:?} allowed outside /v1/**");
    }
});
