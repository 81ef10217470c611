//! The guard's reading of a client's ZMTP stream: any bytes, cut into any pieces, never panic,
//! always make progress, never ask to reserve (or buffer) more than the limit, and never give
//! out more message bytes than came in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftnode::guard::{Limits, Reader};

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
    let mut reader = Reader::new(limits);
    let piece = usize::from(chunk & 0x7f).max(1);
    let mut messages = Vec::new();
    for mut input in stream.chunks(piece) {
        while !input.is_empty() {
            let Ok(fed) = reader.feed(input, &mut messages) else {
                return;
            };
            assert!(fed.consumed > 0 || fed.reserve > 0, "no progress: a connection would spin");
            assert!(fed.reserve <= LIMIT, "asked to reserve {} past the limit", fed.reserve);
            if fed.reserve > 0 {
                reader.reserved();
            }
            input = &input[fed.consumed..];
        }
    }
    let given: usize = messages.iter().flatten().map(|part| part.len()).sum();
    assert!(given <= stream.len(), "gave out more than came in");
});
