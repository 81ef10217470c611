//! The client request path: any bytes a client sends are decoded, their signature (if any)
//! checked, and planned (every tuple and template inside checked) without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = raftnode::proto::Request::decode(data) {
        // Unsigned, as sent.
        let _ = raftnode::server::plan(request.clone(), None);
        // Through the signature check (forged signatures are refused; the inner request, if
        // one opens, is planned as the node would).
        if let Ok(opened) = raftnode::identity::open(request, 7) {
            let _ = raftnode::server::plan(opened.request, opened.signer.as_ref());
        }
    }
});
