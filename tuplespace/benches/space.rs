//! Throughput of the space's operations on a space of 1,000,000 resident tuples.
//!
//! Workload (see `common/mod.rs`): 4-field tuples `(topic, user, int, payload)` with 1,000 topics
//! (so ~1,000 tuples per topic), 10,000 users and a 64-byte payload, built deterministically.
//!
//! What each benchmark times (everything else happens outside the timed region):
//!
//! - `out/out`: `space.out(tuple, None)` on a space of 1M..1.01M tuples. Tuples are generated
//!   before the clock starts (moved out of a pre-filled `Vec`); the timed loop also pushes each
//!   returned id into a pre-allocated `Vec`. Work is done in chunks of 10,000: after each chunk
//!   the new tuples are taken back out (`take_id`, newest first, untimed) so the space stays at
//!   ~1M and memory does not grow with the iteration count.
//! - `inp/take`: `space.inp(("topic-NNNN", _, _, _))` alone, cycling over the 1,000 topics, in
//!   chunks of 10,000 takes (so the space never drops below 990k); after each chunk the taken
//!   tuples are `out` again, untimed. Includes pushing each taken tuple into a pre-allocated `Vec`.
//! - `inp/take_then_out`: one `inp` of the same template followed by an `out` of the tuple taken,
//!   both timed: the steady state of a space that stays at exactly 1M. One element = one pair.
//! - `rdp/rdp`: `space.rdp(("topic-NNNN", _, ?int, _), 0)` cycling over topics (read-only).
//! - `inp_miss/no_such_topic`: `inp(("no-such-topic", _, _, _))`: an index miss.
//! - `inp_miss/scan_topic_no_such_user`: `inp(("topic-NNNN", "no-such-user", _, _))` cycling over
//!   topics: this is a *scan* of the topic's ~1,000 tuples that matches nothing.
//! - `snapshot/encode`, `snapshot/decode`: `Space::encode` / `Space::decode` of the whole 1M
//!   space, 10 samples each, flat sampling; the result is dropped outside the timed region.
//!
//! Run with `cargo bench -p tuplespace --bench space`. Without `--bench` (e.g. under
//! `cargo test --all-targets`, where criterion runs each benchmark once as a smoke test) the space
//! holds 10,000 tuples instead, so the test stays quick in a debug build.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tuplespace::{Field, Kind, Space, Template, Tuple, TupleId, Value};

mod common;
use common::{Gen, RESIDENT, TOPICS, build_space, topic};

/// Work per untimed refill/cleanup step of the chunked benchmarks.
const CHUNK: usize = 10_000;

/// Resident tuples: the full 1M when benchmarking, a small space when criterion only smoke-tests.
fn resident() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        RESIDENT
    } else {
        10_000
    }
}

fn built(space: &mut Option<Space>) -> &mut Space {
    space.get_or_insert_with(|| build_space(resident()))
}

/// `(topic, rest...)` for every topic.
fn per_topic(rest: impl Fn() -> Vec<Field>) -> Vec<Template> {
    (0..TOPICS)
        .map(|n| {
            let mut fields = vec![Field::Literal(Value::from(topic(n)))];
            fields.extend(rest());
            Template::new(fields)
        })
        .collect()
}

fn bench_out(c: &mut Criterion) {
    let mut space = None;
    let mut group = c.benchmark_group("out");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(6));
    let mut g = Gen::new(2);
    group.bench_function("out", |b| {
        let space = built(&mut space);
        let mut pool: Vec<Tuple> = Vec::with_capacity(CHUNK);
        let mut ids: Vec<TupleId> = Vec::with_capacity(CHUNK);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                pool.extend((0..n).map(|_| g.tuple()));
                let start = Instant::now();
                for t in pool.drain(..) {
                    ids.push(space.out(t, None).id);
                }
                timed += start.elapsed();
                for id in ids.drain(..).rev() {
                    black_box(space.take_id(id));
                }
                left -= n as u64;
            }
            timed
        });
    });
    group.finish();
}

fn bench_inp(c: &mut Criterion) {
    let mut space = None;
    let templates = per_topic(|| vec![Field::Any, Field::Any, Field::Any]);
    let mut group = c.benchmark_group("inp");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(6));
    let mut next = 0usize;
    group.bench_function("take", |b| {
        let space = built(&mut space);
        let mut taken: Vec<Tuple> = Vec::with_capacity(CHUNK);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                let start = Instant::now();
                for _ in 0..n {
                    let (_, t) = space
                        .inp(&templates[next])
                        .expect("every topic has resident tuples");
                    taken.push(t);
                    next = (next + 1) % templates.len();
                }
                timed += start.elapsed();
                for t in taken.drain(..) {
                    space.out(t, None);
                }
                left -= n as u64;
            }
            timed
        });
    });
    group.bench_function("take_then_out", |b| {
        let space = built(&mut space);
        b.iter(|| {
            let (_, t) = space
                .inp(&templates[next])
                .expect("every topic has resident tuples");
            next = (next + 1) % templates.len();
            black_box(space.out(t, None).id)
        });
    });
    group.finish();
}

fn bench_rdp(c: &mut Criterion) {
    let mut space = None;
    let templates = per_topic(|| vec![Field::Any, Field::Formal(Kind::Int), Field::Any]);
    let mut group = c.benchmark_group("rdp");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(5));
    let mut next = 0usize;
    group.bench_function("rdp", |b| {
        let space: &Space = built(&mut space);
        b.iter(|| {
            let found = space.rdp(&templates[next], 0).map(|(id, _)| id);
            next = (next + 1) % templates.len();
            black_box(found.expect("every topic has resident tuples"))
        });
    });
    group.finish();
}

fn bench_miss(c: &mut Criterion) {
    let mut space = None;
    let no_topic = Template::new(vec![
        Field::Literal(Value::from("no-such-topic")),
        Field::Any,
        Field::Any,
        Field::Any,
    ]);
    let no_user = per_topic(|| {
        vec![
            Field::Literal(Value::from("no-such-user")),
            Field::Any,
            Field::Any,
        ]
    });
    let mut group = c.benchmark_group("inp_miss");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("no_such_topic", |b| {
        let space = built(&mut space);
        b.iter(|| black_box(space.inp(&no_topic).is_none()));
    });
    let mut next = 0usize;
    group.bench_function("scan_topic_no_such_user", |b| {
        let space = built(&mut space);
        b.iter(|| {
            let miss = space.inp(&no_user[next]).is_none();
            next = (next + 1) % no_user.len();
            black_box(miss)
        });
    });
    group.finish();
}

fn bench_snapshot(c: &mut Criterion) {
    // Built on first use, so a filtered run (`-- rdp`) does not pay for it.
    let mut state: Option<(Space, Vec<u8>)> = None;
    fn built(state: &mut Option<(Space, Vec<u8>)>) -> &(Space, Vec<u8>) {
        state.get_or_insert_with(|| {
            let space = build_space(resident());
            let bytes = space.encode();
            let decoded = Space::decode(&bytes).expect("a snapshot decodes");
            assert_eq!(decoded.len(), space.len());
            (space, bytes)
        })
    }
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(12));
    group.bench_function("encode", |b| {
        let (space, _) = built(&mut state);
        b.iter_batched(|| (), |()| space.encode(), BatchSize::PerIteration);
    });
    group.bench_function("decode", |b| {
        let (_, bytes) = built(&mut state);
        b.iter_batched(
            || (),
            |()| Space::decode(black_box(bytes)),
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_out,
    bench_inp,
    bench_rdp,
    bench_miss,
    bench_snapshot
);
criterion_main!(benches);
