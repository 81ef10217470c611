//! The client request path: any bytes a client sends are decoded and planned (every tuple and
//! template inside checked) without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = raftnode::proto::Request::decode(data) {
        let _ = raftnode::server::plan(request);
    }
});
