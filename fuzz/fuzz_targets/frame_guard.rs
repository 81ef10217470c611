//! The frame guard's reading of a client's ZMTP stream: any bytes, cut into any pieces, never
//! panic, never pass on a header announcing more than the limit, and pass on at most what came in
//! (plus the rewritten READY).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftnode::guard::{Inspector, Limits};

const LIMIT: u64 = 100_000;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_frame: LIMIT,
        max_message: LIMIT + 10,
        max_frames_per_message: 4,
        socket_types: &["REQ", "DEALER"],
    };
    // Usually a valid handshake first, so the fuzzer spends its time on frames.
    let mut stream = Vec::with_capacity(rest.len() + 100);
    if chunk & 0x80 == 0 {
        let mut greeting = [0u8; 64];
        greeting[0] = 0xff;
        greeting[9] = 0x7f;
        greeting[10] = 3;
        greeting[12..16].copy_from_slice(b"NULL");
        stream.extend_from_slice(&greeting);
        stream.extend_from_slice(&[0x04, 25, 5]);
        stream.extend_from_slice(b"READY");
        stream.push(11);
        stream.extend_from_slice(b"Socket-Type");
        stream.extend_from_slice(&3u32.to_be_bytes());
        stream.extend_from_slice(b"REQ");
    }
    stream.extend_from_slice(rest);
    let mut inspector = Inspector::new(limits, b"127.0.0.1:1#1".to_vec());
    let piece = usize::from(chunk & 0x7f).max(1);
    let mut passed = 0usize;
    for mut input in stream.chunks(piece) {
        while !input.is_empty() {
            let mut out = Vec::new();
            let Ok(fed) = inspector.feed(input, &mut out) else {
                return;
            };
            assert!(fed.consumed > 0, "no progress: the relay would spin");
            assert!(
                fed.reserve <= LIMIT,
                "reserved {} past the limit",
                fed.reserve
            );
            input = &input[fed.consumed..];
            passed += out.len();
        }
    }
    assert!(passed <= stream.len() + 64, "passed on more than came in");
});
