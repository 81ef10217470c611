//! The snapshot file reader and the machine state inside: arbitrary file contents are refused
//! (never a panic, never an allocation from an unchecked length). A third of the inputs are raw
//! files; a third get a valid trailing checksum (so the fuzzer gets past the CRC to the header);
//! a third are wrapped in a valid header and checksum around a fuzzed conf state and machine
//! state (so it explores the decoding of what a snapshot holds).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftnode::machine::Machine;
use raftnode::snapshot::{FORMAT_VERSION, MAGIC, SnapshotStore};

fn wrapped(input: &[u8]) -> Vec<u8> {
    let cut = input
        .first()
        .map_or(0, |&b| usize::from(b))
        .min(input.len().saturating_sub(1));
    let (cs, data) = input.get(1..).unwrap_or_default().split_at(cut);
    let mut file = Vec::with_capacity(input.len() + 48);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&1u64.to_le_bytes());
    file.extend_from_slice(&1u64.to_le_bytes());
    file.extend_from_slice(&(cs.len() as u32).to_le_bytes());
    file.extend_from_slice(cs);
    file.extend_from_slice(&(data.len() as u64).to_le_bytes());
    file.extend_from_slice(data);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 3 {
        0 => rest.to_vec(),
        1 => {
            let mut b = rest.to_vec();
            b.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
            b
        }
        _ => wrapped(rest),
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
    if let Ok(loaded) = store.load(&path) {
        if let Ok(machine) = Machine::decode(&loaded.data) {
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
