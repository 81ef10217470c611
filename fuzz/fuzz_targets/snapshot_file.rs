//! The snapshot file reader and the machine state inside: arbitrary file contents are refused
//! (never a panic, never an allocation from an unchecked length). A third of the inputs are raw
//! files; a third get a valid trailing checksum (so the fuzzer gets past the CRC to the header);
//! the rest are wrapped in a valid header and checksums around a fuzzed conf state and machine
//! state, in the current framed format or the older one-piece format (so it explores the decoding
//! of what a snapshot holds, as a stream and whole).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftnode::machine::Machine;
use raftnode::snapshot::{FORMAT_VERSION, LEGACY_VERSION, MAGIC, MAX_FRAME, SnapshotStore};

fn wrapped(input: &[u8], framed: bool) -> Vec<u8> {
    let cut = input
        .first()
        .map_or(0, |&b| usize::from(b))
        .min(input.len().saturating_sub(1));
    let (cs, data) = input.get(1..).unwrap_or_default().split_at(cut);
    let mut file = Vec::with_capacity(input.len() + 64);
    file.extend_from_slice(MAGIC);
    let version = if framed { FORMAT_VERSION } else { LEGACY_VERSION };
    file.extend_from_slice(&version.to_le_bytes());
    file.extend_from_slice(&1u64.to_le_bytes());
    file.extend_from_slice(&1u64.to_le_bytes());
    file.extend_from_slice(&(cs.len() as u32).to_le_bytes());
    file.extend_from_slice(cs);
    if framed {
        // Frames of a size the input picks (its first byte), each with its own CRC.
        let size = usize::from(input.first().copied().unwrap_or(1)).max(1).min(MAX_FRAME);
        for frame in data.chunks(size) {
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(&crc32fast::hash(frame).to_le_bytes());
            file.extend_from_slice(frame);
        }
        file.extend_from_slice(&0u32.to_le_bytes());
    }
    file.extend_from_slice(&(data.len() as u64).to_le_bytes());
    if !framed {
        file.extend_from_slice(data);
    }
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 4 {
        0 => rest.to_vec(),
        1 => {
            let mut b = rest.to_vec();
            b.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
            b
        }
        2 => wrapped(rest, false),
        _ => wrapped(rest, true),
    };
    let dir =
        tempfile::tempdir_in(std::env::var_os("FUZZ_TMP").unwrap_or_else(|| "/dev/shm".into()))
            .or_else(|_| tempfile::tempdir())
            .expect("a temp dir");
    let logger = raftnode::logging::discard();
    let store = SnapshotStore::open(dir.path(), logger).expect("open the store");
    // Every snapshot the fuzzer writes claims index 1 term 1, as its name says.
    let path = store.dir().join(format!("snap-{:020}-{:020}.snap", 1, 1));
    std::fs::write(&path, &bytes).expect("write");
    // Streamed, as a node loads it: what decodes so decodes whole too.
    let streamed = store
        .load_newest_with(|r, max| Machine::decode_from(r, max))
        .ok()
        .flatten();
    std::fs::write(&path, &bytes).expect("write");
    if let Ok(loaded) = store.load(&path) {
        let whole = Machine::decode(&loaded.data);
        if let Some((_, streamed)) = &streamed {
            let whole = whole.as_ref().expect("a state that decodes streamed decodes whole");
            assert_eq!(streamed.encode(), whole.encode(), "streamed and whole decodes differ");
        }
        if let Ok(machine) = whole {
            // What decodes encodes back to the same state.
            let again = Machine::decode(&machine.encode()).expect("re-decodes");
            assert_eq!(
                again.encode(),
                machine.encode(),
                "a machine state does not round-trip"
            );
        }
    }
});
