//! The server_name read from the first TLS record on the transparent listener, before
//! any TLS library sees the connection.
#![no_main]

use gvm_gateway::fuzz_api::client_hello_sni;
use gvm_policy::Host;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = client_hello_sni(data) {
        assert!(name.len() < data.len(), "the name comes from inside the record");
        // What the gateway does next: normalise it like any other host.
        let _ = Host::parse(&name);
    }
});
