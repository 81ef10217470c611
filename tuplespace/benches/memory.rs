//! Resident memory of a 1,000,000-tuple space, and one timed snapshot encode/decode.
//!
//! A plain `main` (harness = false): `cargo bench -p tuplespace --bench memory` runs it and prints
//! the figures. The workload is the one `benches/space.rs` uses (`common/mod.rs`).
//!
//! - Heap: a counting global allocator tracks the bytes currently requested from mimalloc (the
//!   allocator the production programs, raftnode and microblog, install as their global
//!   allocator), and the peak. The space's heap is the live bytes after building minus before.
//!   Each tuple is generated and `out` at once, and the generator's temporaries are freed before
//!   the next tuple, so they are not counted.
//! - RSS: `VmRSS`/`VmHWM` from `/proc/self/status` before and after building. Their growth per
//!   tuple includes the allocator's per-block overhead and rounding, so it is the honest figure to
//!   hold against the resident-memory target.
//!
//! Criterion-style arguments (`--bench`, filters) are ignored, except that without `--bench` (as
//! under `cargo test --all-targets`, which runs bench targets unoptimised as smoke tests) it
//! builds 10,000 tuples instead of 1,000,000. `MEMORY_TUPLES=N` builds N tuples instead (the
//! scale figures at 3M and 10M).

// `GlobalAlloc` is an unsafe trait: implementing it, and forwarding to `MiMalloc`, needs `unsafe`.
// This file only wraps the allocator to count bytes; the crate itself stays safe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use mimalloc::MiMalloc;

use tuplespace::{Space, Value};

mod common;
use common::{PAYLOAD, RESIDENT, build_space};

/// mimalloc, counting live bytes (as requested, before any rounding) and blocks.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(now, Relaxed);
}

fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes, Relaxed);
}

// SAFETY: every method forwards to `MiMalloc` with the caller's arguments unchanged; the counters
// are only bookkeeping and never affect the pointers returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from our caller, who upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
            BLOCKS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
            BLOCKS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (that is, by `MiMalloc`) with `layout`.
        unsafe { MiMalloc.dealloc(ptr, layout) };
        shrank(layout.size());
        BLOCKS.fetch_sub(1, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` meets `realloc`'s contract per our caller.
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// `VmRSS` and `VmHWM` from `/proc/self/status`, in bytes (0 where unavailable).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let n = if std::env::args().any(|a| a == "--bench") {
        // MEMORY_TUPLES=3000000 (or 10000000) measures a bigger space.
        std::env::var("MEMORY_TUPLES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(RESIDENT)
    } else {
        println!("(no --bench argument: smoke run with 10,000 tuples)");
        10_000
    };
    let per = |bytes: u64| bytes as f64 / n as f64;

    let (rss_before, hwm_before) = rss();
    let heap_before = CURRENT.load(Relaxed);
    let blocks_before = BLOCKS.load(Relaxed);
    PEAK.store(heap_before, Relaxed);

    let started = Instant::now();
    let space = build_space(n);
    let build_time = started.elapsed();

    let heap_after = CURRENT.load(Relaxed);
    let blocks_after = BLOCKS.load(Relaxed);
    let heap_peak = PEAK.load(Relaxed);
    let (rss_after, hwm_after) = rss();
    assert_eq!(space.len(), n);

    let heap = (heap_after - heap_before) as u64;
    let blocks = (blocks_after - blocks_before) as u64;
    let rss_growth = rss_after.saturating_sub(rss_before);
    let data = (4 * std::mem::size_of::<Value>() + PAYLOAD) as u64;

    println!("tuplespace memory: {n} resident tuples (topic, user, int, 64-byte str)");
    println!(
        "  build time                     {:>12.3} s",
        build_time.as_secs_f64()
    );
    println!(
        "  live heap of the space         {:>12} B  ({:.1} MiB)  {:>8.1} B/tuple",
        heap,
        mib(heap),
        per(heap)
    );
    println!(
        "    of which fields + payload    {:>12} B  {:>31.1} B/tuple (4 x {}-byte Value + {}-byte str)",
        data * n as u64,
        data as f64,
        std::mem::size_of::<Value>(),
        PAYLOAD
    );
    println!(
        "    id store + index             {:>12} B  {:>31.1} B/tuple",
        heap.saturating_sub(data * n as u64),
        per(heap.saturating_sub(data * n as u64))
    );
    println!(
        "  live heap blocks               {:>12}    {:>31.2} blocks/tuple",
        blocks,
        per(blocks)
    );
    println!(
        "  heap peak during build         {:>12} B  ({:.1} MiB above the live heap)",
        (heap_peak - heap_before) as u64,
        mib((heap_peak - heap_after) as u64)
    );
    println!(
        "  VmRSS before / after           {:>8.1} / {:.1} MiB",
        mib(rss_before),
        mib(rss_after)
    );
    println!(
        "  VmHWM before / after           {:>8.1} / {:.1} MiB",
        mib(hwm_before),
        mib(hwm_after)
    );
    println!(
        "  RSS growth                     {:>12} B  ({:.1} MiB)  {:>8.1} B/tuple  (target <= 200: {})",
        rss_growth,
        mib(rss_growth),
        per(rss_growth),
        if per(rss_growth) <= 200.0 {
            "met"
        } else {
            "NOT met"
        }
    );

    let started = Instant::now();
    let bytes = space.encode();
    let encode_time = started.elapsed();
    println!(
        "  snapshot size                  {:>12} B  ({:.1} MiB)  {:>8.1} B/tuple",
        bytes.len(),
        mib(bytes.len() as u64),
        per(bytes.len() as u64)
    );
    println!(
        "  encode (once)                  {:>12.3} s  (target <= 1 s: {})",
        encode_time.as_secs_f64(),
        if encode_time.as_secs_f64() <= 1.0 {
            "met"
        } else {
            "NOT met"
        }
    );

    let heap_before_decode = CURRENT.load(Relaxed);
    let started = Instant::now();
    let decoded = Space::decode(&bytes).expect("a snapshot decodes");
    let decode_time = started.elapsed();
    let decoded_heap = (CURRENT.load(Relaxed) - heap_before_decode) as u64;
    assert_eq!(decoded.len(), n);
    println!(
        "  decode (once)                  {:>12.3} s  (target <= 1 s: {})",
        decode_time.as_secs_f64(),
        if decode_time.as_secs_f64() <= 1.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  live heap of the decoded space {:>12} B  ({:.1} MiB)  {:>8.1} B/tuple",
        decoded_heap,
        mib(decoded_heap),
        per(decoded_heap)
    );
    let (_, hwm_end) = rss();
    println!("  VmHWM at exit                  {:>8.1} MiB", mib(hwm_end));
    // Exit without freeing ~600 MB block by block.
    std::mem::forget(black_box((space, decoded, bytes)));
}
