//! Log record values decoded row by row (`JsonDecoder::read_values`, `Decoder::decode_events`,
//! `JsonDecoder::events_batch`, `EventsByPartition`) give what the columnar path gives for the same events
//! (`JsonDecoder::decode`, `Decoder::decode`, `to_events_schema`).

use std::io::Read;
use std::path::Path;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::DataType;
use ccstream_processor::batch::{
    events_rows_schema, to_events_schema, DecodedBatch, Decoder, EventsByPartition, JsonDecoder,
};
use ccstream_schemas::{encode_event, events_schema, Event};

/// The oracle fixture's JSON lines, one per event (with its malformed lines).
fn fixture_lines() -> Vec<String> {
    let path = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/oracle/events.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_string(&mut text).unwrap();
    text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// Every third valid line in its binary form, the others as JSON text.
fn values(lines: &[String]) -> Vec<Vec<u8>> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| match Event::read_json(line) {
            Ok((e, typed)) if i % 3 == 0 => {
                let mut out = Vec::new();
                encode_event(&e, &typed, &mut out);
                out
            }
            _ => line.as_bytes().to_vec(),
        })
        .collect()
}

/// `batch` in [`events_schema`]: its dictionary-encoded text as text.
fn plain(batch: &RecordBatch) -> RecordBatch {
    let schema = events_schema();
    let columns = schema.fields().iter().zip(batch.columns()).map(|(f, c)| cast(c, f.data_type()).unwrap()).collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

fn assert_same(a: &DecodedBatch, b: &DecodedBatch) {
    assert_eq!(a.event_id, b.event_id);
    assert_eq!(a.call, b.call);
    assert_eq!(a.tenant, b.tenant);
    assert_eq!(a.queue, b.queue);
    assert_eq!(a.agent, b.agent);
    assert_eq!(a.etype, b.etype);
    assert_eq!(a.t_ms, b.t_ms);
    for (x, y) in a.media.iter().zip(&b.media) {
        let bits = |v: &Vec<f64>| v.iter().map(|f| if f.is_nan() { u64::MAX } else { f.to_bits() }).collect::<Vec<_>>();
        assert_eq!(bits(x), bits(y));
    }
}

#[test]
fn row_decoding_matches_the_columnar_path() {
    let lines = fixture_lines();
    let values = values(&lines);
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let json = JsonDecoder::new("log", 1_234);

    let texts: Vec<&str> = lines.iter().map(String::as_str).collect();
    let (batch, rows, rejected) = json.decode(&texts).unwrap();
    let mut columnar = Decoder::new();
    let mut expected = DecodedBatch::default();
    columnar.decode(&batch, &mut expected).unwrap();

    let read = json.read_values(&refs);
    assert!(!read.rejected.is_empty(), "the fixture carries malformed lines");
    assert_eq!(read.rows, rows);
    assert_eq!(
        read.rejected.iter().map(|r| (r.line, r.reason.as_str())).collect::<Vec<_>>(),
        rejected.iter().map(|r| (r.line, r.reason.as_str())).collect::<Vec<_>>()
    );
    let mut rowwise = Decoder::new();
    let mut got = DecodedBatch::default();
    rowwise.decode_events(&read.events, &mut got);
    assert_same(&got, &expected);
    assert!(got.invalid.is_empty() && expected.invalid.is_empty());
    for (a, b) in [
        (&rowwise.dicts.tenants, &columnar.dicts.tenants),
        (&rowwise.dicts.queues, &columnar.dicts.queues),
        (&rowwise.dicts.agents, &columnar.dicts.agents),
    ] {
        assert_eq!(a.len(), b.len());
        assert!((0..a.len() as u32).all(|i| a.name(i) == b.name(i)), "names interned in the same order");
    }

    // `events` rows, for a subset in any order, equal the same rows taken from the batch.
    let all = to_events_schema(&batch, "unused", 0).unwrap();
    let n = read.events.len() as u32;
    let indices: Vec<u32> = (0..n).rev().filter(|i| i % 5 != 1).collect();
    let built = json.events_batch(&read.events, &indices).unwrap();
    assert_eq!(built, take_record_batch(&all, &UInt32Array::from(indices)).unwrap());
    assert_eq!(json.events_batch(&read.events, &[]).unwrap().num_rows(), 0);

    // Gathered by partition (here: by event type, as a stand-in key), each partition's rows
    // equal the same rows taken from the batch, in arrival order.
    // Queues, agents and event types come keyed by the decoder's ids: as text, the same.
    let mut by_part = EventsByPartition::default();
    let key = |r: usize| (read.events[r].1.event_type as u32, 0);
    for r in (0..read.events.len()).filter(|r| r % 5 != 1) {
        let (ev, v) = &read.events[r];
        by_part.push(&json, key(r), ev, v, (got.queue[r], got.agent[r]));
    }
    assert_eq!(by_part.rows(), (0..read.events.len()).filter(|r| r % 5 != 1).count());
    let parts = by_part.finish(&rowwise.dicts).unwrap();
    assert!(parts.len() > 1);
    assert!(by_part.is_empty());
    for part in parts {
        assert_eq!(part.schema(), events_rows_schema());
        assert!(matches!(part.column_by_name("agent_id").unwrap().data_type(), DataType::Dictionary(_, _)));
        let part = plain(&part);
        let kind = part.column_by_name("event_type").unwrap().as_string::<i32>().value(0).to_string();
        let rows: Vec<u32> = (0..read.events.len())
            .filter(|&r| r % 5 != 1 && read.events[r].1.event_type.as_str() == kind)
            .map(|r| r as u32)
            .collect();
        assert_eq!(part, take_record_batch(&all, &UInt32Array::from(rows)).unwrap(), "{kind}");
    }
}
