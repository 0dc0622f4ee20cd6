//! An HTTP/1 request head as the agent sends it to the proxy or the transparent
//! listener: parsed by httparse (hyper's parser), then put through the gateway's own
//! checks in front of the decision — method case, framing (duplicate Host or
//! Content-Length, Transfer-Encoding other than one `chunked`, control bytes) and the
//! authority split of the Host header and of an absolute-form target.
#![no_main]

use gvm_gateway::fuzz_api::{check_head, split_authority};
use libfuzzer_sys::fuzz_target;

/// What the gateway reads from an authority must read back the same: the decision
/// and the upstream connection use the re-written form.
fn authority(s: &str) {
    if let Ok((host, port)) = split_authority(s) {
        let again = match port {
            Some(p) => format!("{}:{p}", host.url_form()),
            None => host.url_form().into_owned(),
        };
        assert_eq!(split_authority(&again), Ok((host, port)), "{s:?} -> {again:?} reads differently");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else { return };
    let (Some(method), Some(target)) = (req.method, req.path) else { return };
    // hyper's conversions; a head they refuse never reaches the gateway.
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return };
    let mut map = http::HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(h.name.as_bytes()), http::HeaderValue::from_bytes(h.value))
        else {
            return;
        };
        map.append(n, v);
    }
    let checked = check_head(&method, &map);
    if checked.is_ok() {
        assert!(!method.as_str().bytes().any(|b| b.is_ascii_lowercase()), "{method} passed the case check");
        assert!(map.get_all(http::header::HOST).iter().count() <= 1);
        let te = map.get_all(http::header::TRANSFER_ENCODING).iter().count();
        assert!(te == 0 || map.get(http::header::CONTENT_LENGTH).is_none(), "both TE and CL passed");
    }
    if let Some(host) = map.get(http::header::HOST).and_then(|v| v.to_str().ok()) {
        authority(host);
    }
    if method == http::Method::CONNECT {
        authority(target);
    } else if let Ok(uri) = target.parse::<http::Uri>() {
        if let Some(a) = uri.authority() {
            authority(a.as_str());
        }
    }
});
