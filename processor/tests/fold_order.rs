//! The fold's results do not depend on event order or batch boundaries: the fixture's
//! events, shuffled and cut into batches of any size, give the same tables.

use arrow::array::{Array, RecordBatch};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use ccstream_processor::batch::{DecodedBatch, Decoder};
use ccstream_processor::kpi::{CallFold, FoldOutput, Params};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;

mod common;

fn fold(events: &RecordBatch, order: &[u32], batch_rows: usize) -> FoldOutput {
    let idx = arrow::array::UInt32Array::from(order.to_vec());
    let shuffled = take_record_batch(events, &idx).unwrap();
    let mut decoder = Decoder::new();
    let mut decoded = DecodedBatch::default();
    let mut fold = CallFold::new(0);
    let mut start = 0;
    while start < shuffled.num_rows() {
        let n = batch_rows.min(shuffled.num_rows() - start);
        decoder.decode(&shuffled.slice(start, n), &mut decoded).unwrap();
        fold.update(&decoded, &decoder.dicts);
        start += n;
    }
    fold.output(&decoder.dicts, &Params::default(), 0).unwrap()
}

/// Sorts rows by the named key columns, so that tables compare as sets.
fn sorted(batch: &RecordBatch, keys: &[&str]) -> RecordBatch {
    let cols: Vec<SortColumn> =
        keys.iter().map(|k| SortColumn { values: batch.column_by_name(k).unwrap().clone(), options: None }).collect();
    let idx = lexsort_to_indices(&cols, None).unwrap();
    take_record_batch(batch, &idx).unwrap()
}

fn canonical(out: &FoldOutput) -> [RecordBatch; 3] {
    [
        sorted(&out.call_facts, &["call_id"]),
        sorted(&out.agent_legs, &["call_id", "agent_id"]),
        sorted(&out.interval_partials, &["tenant_id", "queue_id", "interval_start"]),
    ]
}

#[test]
fn file_order_counts() {
    let events = common::fixture_events();
    let order: Vec<u32> = (0..events.num_rows() as u32).collect();
    let out = fold(&events, &order, 64 * 1024);
    assert_eq!(out.call_facts.num_rows(), 1500);
    assert!(out.agent_legs.num_rows() > 1200);
    assert!(out.interval_partials.num_rows() > 600);
    assert_eq!(out.call_facts.column_by_name("call_id").unwrap().null_count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn order_and_batching_do_not_matter(seed in any::<u64>(), batch_rows in 1usize..4000) {
        let events = common::fixture_events();
        let order: Vec<u32> = (0..events.num_rows() as u32).collect();
        let reference = canonical(&fold(&events, &order, 64 * 1024));
        let mut shuffled = order.clone();
        shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let got = canonical(&fold(&events, &shuffled, batch_rows));
        for (r, g) in reference.iter().zip(&got) {
            prop_assert_eq!(r, g);
        }
    }
}

#[test]
fn slices_concatenate_to_the_whole_tables() {
    let events = common::fixture_events();
    let mut decoder = Decoder::new();
    let mut decoded = DecodedBatch::default();
    decoder.decode(&events, &mut decoded).unwrap();
    let mut fold = CallFold::new(0);
    fold.update(&decoded, &decoder.dicts);
    let params = Params::default();
    let whole = fold.output(&decoder.dicts, &params, 0).unwrap();
    let facts: Vec<RecordBatch> = fold.call_facts_slices(&decoder.dicts, &params, 97).map(Result::unwrap).collect();
    assert!(facts.len() > 10);
    assert_eq!(concat_batches(&facts[0].schema(), &facts).unwrap(), whole.call_facts);
    let legs: Vec<RecordBatch> = fold.agent_legs_slices(&decoder.dicts, &params, 97).map(Result::unwrap).collect();
    assert_eq!(concat_batches(&legs[0].schema(), &legs).unwrap(), whole.agent_legs);
}
