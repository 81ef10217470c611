//! What a signed request costs in CPU: signing a request in the client, and checking its
//! signature in the node, one by one (`verify_strict`) and in batches of the requests a node
//! has waiting (`verify_batch`, as the client endpoint's verifier does).
//!
//! Run with `cargo bench -p raftnode --bench identity`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signature, VerifyingKey};
use raftnode::identity::{Identity, REQUEST_DOMAIN};
use raftnode::proto;

/// A signed `out` of a 4-field tuple, as the bench writes it, with its signature message.
fn signed(alice: &Identity, seq: u64) -> (Vec<u8>, Signature, VerifyingKey) {
    let request = proto::Request {
        session: 0x1234_5678,
        seq,
        ack: seq - 1,
        op: Some(proto::request::Op::Count(proto::Count::default())),
        ..Default::default()
    };
    let sealed = alice.seal(request, 42);
    let mut message = REQUEST_DOMAIN.to_vec();
    message.extend_from_slice(&sealed.signed);
    let signature = Signature::from_slice(&sealed.signature).expect("64 bytes");
    let key = VerifyingKey::from_bytes(&alice.public_key()).expect("a key");
    (message, signature, key)
}

fn bench(c: &mut Criterion) {
    let users: Vec<Identity> = (0..64)
        .map(|i| Identity::from_seed(&format!("user{i}"), [i as u8; 32]))
        .collect();
    let requests: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| signed(u, i as u64 + 1))
        .collect();

    let mut group = c.benchmark_group("sign");
    group.throughput(Throughput::Elements(1));
    let (message, _, _) = &requests[0];
    group.bench_function("request", |b| b.iter(|| users[0].sign(black_box(message))));
    group.finish();

    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("strict", |b| {
        let (message, signature, key) = &requests[0];
        b.iter(|| key.verify_strict(black_box(message), signature).is_ok())
    });
    for n in [1usize, 4, 16, 64] {
        group.throughput(Throughput::Elements(n as u64));
        let messages: Vec<&[u8]> = requests[..n].iter().map(|r| r.0.as_slice()).collect();
        let signatures: Vec<Signature> = requests[..n].iter().map(|r| r.1).collect();
        let keys: Vec<VerifyingKey> = requests[..n].iter().map(|r| r.2).collect();
        group.bench_function(format!("batch_{n}"), |b| {
            b.iter(|| ed25519_dalek::verify_batch(black_box(&messages), &signatures, &keys).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
