//! Throughput of decoding and folding canonical events (the replay's hot loop), on the
//! oracle fixture (10,597 rows with late events and duplicates), 64 Ki-row batches.
//!
//!     cargo bench -p ccstream-processor --bench fold

use ccstream_processor::batch::{DecodedBatch, Decoder};
use ccstream_processor::kpi::{CallFold, Params};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "../tests/common/mod.rs"]
mod common;

fn bench(c: &mut Criterion) {
    let events = common::fixture_events();
    let mut g = c.benchmark_group("fold");
    g.throughput(Throughput::Elements(events.num_rows() as u64));
    g.bench_function("decode", |b| {
        let mut decoder = Decoder::new();
        let mut out = DecodedBatch::default();
        b.iter(|| decoder.decode(&events, &mut out).unwrap());
    });
    let mut decoder = Decoder::new();
    let mut decoded = DecodedBatch::default();
    decoder.decode(&events, &mut decoded).unwrap();
    g.bench_function("update", |b| {
        b.iter(|| {
            let mut fold = CallFold::new(0);
            fold.update(&decoded, &decoder.dicts);
            fold.calls()
        });
    });
    let mut fold = CallFold::new(0);
    fold.update(&decoded, &decoder.dicts);
    g.throughput(Throughput::Elements(fold.calls() as u64));
    g.bench_function("output_per_call", |b| {
        b.iter(|| fold.output(&decoder.dicts, &Params::default(), 0).unwrap());
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
