//! The page reader gives what the general path (Arrow reader, `Decoder::decode`) gives, for
//! the files pyarrow writes and for the layouts the parquet crate can write; it declines
//! files outside its layouts, and damaged files are errors, never panics.

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{GzipLevel, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};

use super::*;
use crate::batch::Decoder;

fn fixture() -> Bytes {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    std::fs::read(std::path::Path::new(&dir).join("../tests/fixtures/oracle/events.parquet")).unwrap().into()
}

fn fixture_batch() -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(fixture()).unwrap().build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

const U1: &str = "6f1c2a3e-1b2c-4d5e-8f90-0123456789ab";
const U2: &str = "0d2e4f60-7a8b-4c9d-a0b1-c2d3e4f5a6b7";

/// Rows each check of `Event::validate` rejects, ids that are not UUIDs or are empty,
/// non-finite media, all in `schema`'s columns.
fn odd_rows(schema: &SchemaRef) -> RecordBatch {
    type Row = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<i64>,
        Option<f64>,
    );
    // event_id, tenant_id, call_id, event_type, occurred_at, jitter_ms
    let rows: [Row; 11] = [
        (None, Some("t1"), Some(U1), Some("call_queued"), Some(1_000), None),
        (Some("a1b2c3d4-0000-4000-8000-000000000001"), None, Some(U1), Some("call_queued"), Some(1_000), None),
        (Some("a1b2c3d4-0000-4000-8000-000000000002"), Some("t1"), Some(U1), Some("call_queued"), None, None),
        (Some("a1b2c3d4-0000-4000-8000-000000000003"), Some("t1"), Some(U1), None, Some(2_000), Some(3.5)),
        (
            Some("a1b2c3d4-0000-4000-8000-000000000004"),
            Some("t1"),
            Some(U1),
            Some("call_teleported"),
            Some(2_000),
            None,
        ),
        (Some("a1b2c3d4-0000-4000-8000-000000000005"), Some("t1"), None, Some("call_answered"), Some(2_500), None),
        (
            Some("SBC-session-7"),
            Some("t2"),
            Some("CALL-NOT-A-UUID"),
            Some("call_queued"),
            Some(5_000),
            Some(f64::INFINITY),
        ),
        (Some(""), Some("t2"), Some(U2), Some("call_queued"), Some(5_000), None),
        (
            Some("a1b2c3d4-0000-4000-8000-000000000009"),
            Some("t2"),
            Some("CALL-NOT-A-UUID"),
            Some("call_answered"),
            Some(6_000),
            Some(12.25),
        ),
        (
            Some("A1B2C3D4-0000-4000-8000-00000000000A"),
            Some("t2"),
            Some(""),
            Some("agent_state_changed"),
            Some(7_000),
            Some(f64::NAN),
        ),
        (
            Some("a1b2c3d4-0000-4000-8000-00000000000b"),
            Some("t3"),
            Some(U2),
            Some("call_queued"),
            Some(-86_400_001),
            Some(-0.0),
        ),
    ];
    let n = rows.len();
    let text = |f: fn(&Row) -> Option<&'static str>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let a: ArrayRef = match f.name().as_str() {
                "event_id" => text(|r| r.0),
                "tenant_id" => text(|r| r.1),
                "call_id" => text(|r| r.2),
                "event_type" => text(|r| r.3),
                "queue_id" => text(|r| r.1.map(|_| "q-odd")),
                "agent_id" => text(|r| r.5.map(|_| "agent-odd")),
                "occurred_at" => {
                    let tz = match f.data_type() {
                        DataType::Timestamp(_, tz) => tz.clone(),
                        _ => None,
                    };
                    let t = TimestampMillisecondArray::from(rows.iter().map(|r| r.4).collect::<Vec<_>>());
                    Arc::new(t.with_timezone_opt(tz))
                }
                "jitter_ms" => Arc::new(Float64Array::from(rows.iter().map(|r| r.5).collect::<Vec<_>>())),
                _ => new_null_array(f.data_type(), n),
            };
            if a.data_type() == f.data_type() {
                a
            } else {
                cast(&a, f.data_type()).unwrap()
            }
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).unwrap()
}

fn input() -> RecordBatch {
    let base = fixture_batch();
    let odd = odd_rows(&base.schema());
    // The odd rows in the middle, so they land inside pages and batches.
    let (head, tail) = (base.slice(0, 700), base.slice(700, base.num_rows() - 700));
    concat_batches(&base.schema(), [&head, &odd, &tail]).unwrap()
}

fn write(batch: &RecordBatch, props: WriterProperties) -> Bytes {
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
    // In pieces, so that row groups and pages end where batches do not.
    for at in (0..batch.num_rows()).step_by(777) {
        w.write(&batch.slice(at, 777.min(batch.num_rows() - at))).unwrap();
    }
    w.close().unwrap();
    out.into()
}

/// Each row as text: ids and names resolved, media exactly, the reason of an invalid row.
fn row_text(d: &DecodedBatch, dicts: &Dictionaries, r: usize, reasons: &[(usize, String)]) -> String {
    let id = |k: IdKey| {
        let mut s = String::new();
        if k == NO_CALL {
            s.push('-');
        } else {
            dicts.ids.text(k, &mut s);
        }
        s
    };
    let reason = reasons.iter().find(|(row, _)| *row == r).map_or("", |(_, s)| s);
    if d.etype[r] == INVALID {
        // Columns of an invalid row are not read by anyone; its reason is what counts.
        return format!("invalid: {reason}");
    }
    format!(
        "{} {} {:?} {:?} {:?} {} {} {:?}",
        id(d.event_id[r]),
        id(d.call[r]),
        dicts.tenants.name(d.tenant[r]),
        dicts.queues.name(d.queue[r]),
        dicts.agents.name(d.agent[r]),
        d.etype[r],
        d.t_ms[r],
        d.media.iter().map(|m| m[r]).collect::<Vec<_>>(),
    )
}

/// The general path: the Arrow reader with the fold's hints, then `Decoder::decode`.
fn general(file: &Bytes) -> Vec<String> {
    let meta = ArrowReaderMetadata::load(file, ArrowReaderOptions::new()).unwrap();
    let hinted = ccstream_schemas::fold_read_schema(meta.schema());
    let meta =
        ArrowReaderMetadata::try_new(meta.metadata().clone(), ArrowReaderOptions::new().with_schema(hinted)).unwrap();
    let reader =
        ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), meta).with_batch_size(1000).build().unwrap();
    let (mut decoder, mut d, mut rows) = (Decoder::new(), DecodedBatch::default(), Vec::new());
    for b in reader {
        decoder.decode(&b.unwrap(), &mut d).unwrap();
        rows.extend((0..d.len()).map(|r| row_text(&d, &decoder.dicts, r, &d.invalid)));
    }
    rows
}

fn direct(file: &Bytes, batch_rows: usize) -> Vec<String> {
    let mut reader = FoldParquet::open(file.clone()).unwrap();
    let (mut dicts, mut remap, mut rows) = (Dictionaries::default(), Vec::new(), Vec::new());
    while let Some(mut b) = reader.next_batch(batch_rows).unwrap() {
        assert_eq!(b.first_row, rows.len() as u64);
        let d = b.adopt(&mut dicts, &mut remap);
        rows.extend((0..d.len()).map(|r| row_text(d, &dicts, r, &d.invalid)));
        reader.recycle(b);
    }
    assert_eq!(rows.len() as u64, reader.total_rows());
    rows
}

fn assert_same(file: &Bytes, what: &str) {
    let expected = general(file);
    assert!(expected.iter().filter(|r| r.starts_with("invalid")).count() >= 7, "{what}: odd rows missing");
    for batch_rows in [1000, 333, 64 * 1024] {
        let got = direct(file, batch_rows);
        assert_eq!(got.len(), expected.len(), "{what}, batches of {batch_rows}");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "{what}, batches of {batch_rows}: row {i}");
        }
    }
}

#[test]
fn reads_the_fixture_as_pyarrow_wrote_it() {
    let file = fixture();
    assert!(FoldParquet::open(file.clone()).is_ok());
    let rows = direct(&file, 1000);
    assert_eq!(rows, general(&file));
    assert!(rows.len() > 1000);
}

#[test]
fn odd_rows_are_checked_as_the_general_path_checks_them() {
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    assert_same(&write(&input(), props), "pyarrow-like layout");
}

#[test]
fn every_layout_it_accepts_reads_the_same() {
    let layouts = [
        (
            "plain values, Snappy, small pages and row groups",
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_dictionary_enabled(false)
                .set_data_page_row_count_limit(37)
                .set_write_batch_size(37)
                .set_max_row_group_row_count(Some(500)),
        ),
        (
            "dictionaries falling back to plain values, zstd",
            WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
                .set_dictionary_page_size_limit(512)
                .set_data_page_row_count_limit(100)
                .set_write_batch_size(100),
        ),
        (
            "dictionaries, uncompressed, one row group",
            WriterProperties::builder().set_compression(Compression::UNCOMPRESSED),
        ),
        (
            "v2 data pages, Snappy, dictionaries falling back to plain values",
            WriterProperties::builder()
                .set_writer_version(WriterVersion::PARQUET_2_0)
                .set_compression(Compression::SNAPPY)
                .set_encoding(Encoding::PLAIN)
                .set_dictionary_page_size_limit(1024)
                .set_data_page_row_count_limit(250)
                .set_write_batch_size(250),
        ),
        (
            "v2 data pages, uncompressed",
            WriterProperties::builder()
                .set_writer_version(WriterVersion::PARQUET_2_0)
                .set_compression(Compression::UNCOMPRESSED)
                .set_encoding(Encoding::PLAIN)
                .set_dictionary_enabled(false),
        ),
    ];
    let input = input();
    for (what, props) in layouts {
        let file = write(&input, props.build());
        if let Err(e) = FoldParquet::open(file.clone()) {
            panic!("{what}: declined: {e}");
        }
        assert_same(&file, what);
    }
}

#[test]
fn declines_layouts_it_does_not_read() {
    let input = input();
    let delta = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_dictionary_enabled(false)
        .set_compression(Compression::SNAPPY)
        .build();
    let why = FoldParquet::open(write(&input, delta)).unwrap_err();
    assert!(why.contains("DELTA"), "{why}");
    let gzip = WriterProperties::builder().set_compression(Compression::GZIP(GzipLevel::default())).build();
    let why = FoldParquet::open(write(&input, gzip)).unwrap_err();
    assert!(why.contains("GZIP"), "{why}");
    let micros = input.schema().index_of("occurred_at").unwrap();
    let mut columns = input.columns().to_vec();
    columns[micros] = cast(&columns[micros], &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))).unwrap();
    let schema = arrow::datatypes::Schema::new(
        input
            .schema()
            .fields()
            .iter()
            .zip(&columns)
            .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
            .collect::<Vec<_>>(),
    );
    let batch = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
    let why = FoldParquet::open(write(&batch, WriterProperties::builder().build())).unwrap_err();
    assert!(why.contains("occurred_at"), "{why}");
    let type_at = input.schema().index_of("event_type").unwrap();
    let without_type = input.project(&(0..input.num_columns()).filter(|&i| i != type_at).collect::<Vec<_>>()).unwrap();
    let why = FoldParquet::open(write(&without_type, WriterProperties::builder().build())).unwrap_err();
    assert!(why.contains("event_type"), "{why}");
    let file = fixture();
    assert!(FoldParquet::open(file.slice(..file.len() - 9)).is_err());
}

/// Reads every batch of `file`; `Ok` with the rows read, or the first error.
fn read_all(file: Bytes) -> Result<usize> {
    let Ok(mut reader) = FoldParquet::open(file) else { return Ok(0) };
    let (mut dicts, mut remap, mut rows) = (Dictionaries::default(), Vec::new(), 0);
    while let Some(mut b) = reader.next_batch(500)? {
        rows += b.adopt(&mut dicts, &mut remap).len();
    }
    Ok(rows)
}

fn small_pages() -> Bytes {
    static FILE: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_data_page_row_count_limit(200)
            .set_write_batch_size(200)
            .set_dictionary_page_size_limit(2048)
            .set_max_row_group_row_count(Some(1500));
        write(&input(), props.build())
    })
    .clone()
}

#[test]
fn a_damaged_page_is_an_error_naming_its_column() {
    let file = small_pages();
    let rows = read_all(file.clone()).unwrap();
    assert!(rows > 0);
    // Zeroing a stretch of the first column chunk (event ids) breaks a page header or body.
    let mut bad = file.to_vec();
    bad[4..64].fill(0xff);
    let err = read_all(bad.into()).unwrap_err().to_string();
    assert!(err.contains("event_id") && err.contains("row group 0"), "{err}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    #[test]
    fn damaged_files_never_panic(at in 4usize..60_000, bytes in proptest::collection::vec(proptest::num::u8::ANY, 1..24)) {
        let mut file = small_pages().to_vec();
        let at = at % (file.len() - 8);
        let end = (at + bytes.len()).min(file.len() - 8);
        file[at..end].copy_from_slice(&bytes[..end - at]);
        let _ = read_all(file.into());
    }
}

/// A Thrift compact `i32` field `delta` ids after the previous one.
fn i32_field(delta: u8, v: i32, out: &mut Vec<u8>) {
    out.push(delta << 4 | 5);
    let mut z = ((v << 1) ^ (v >> 31)) as u32;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A v1 data page (`PLAIN`, RLE levels) claiming `uncompressed` bytes and `values`
/// values, with `body` as its data.
fn hostile_page(uncompressed: i32, values: i32, body: &[u8]) -> Bytes {
    let mut b = Vec::new();
    i32_field(1, DATA_PAGE, &mut b);
    i32_field(1, uncompressed, &mut b);
    i32_field(1, body.len() as i32, &mut b);
    b.push(2 << 4 | 12); // field 5: the data page header
    i32_field(1, values, &mut b);
    i32_field(1, Encoding::PLAIN as i32, &mut b);
    i32_field(1, Encoding::RLE as i32, &mut b);
    i32_field(1, Encoding::RLE as i32, &mut b);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(body);
    b.into()
}

#[test]
fn a_page_claiming_a_huge_size_is_refused_before_anything_is_allocated() {
    let body = snap::raw::Encoder::new().compress_vec(&[7u8; 64]).unwrap();
    for (claimed, want) in
        [(i32::MAX, "more than"), (1_000_000, "decompresses to 64 bytes where its header says 1000000")]
    {
        let chunk = hostile_page(claimed, 8, &body);
        let mut c = Cursor::new(chunk, Compression::SNAPPY, false, Some(8), 8).unwrap();
        let err = c.next_data_page().unwrap_err();
        assert!(err.contains(want), "{err}");
        assert!(c.page.capacity() < 1 << 20, "{} bytes allocated", c.page.capacity());
    }
}

#[test]
fn a_page_claiming_more_values_than_its_row_group_has_is_refused() {
    let chunk = hostile_page(16, i32::MAX, &[0u8; 16]);
    let mut c = Cursor::new(chunk, Compression::UNCOMPRESSED, true, Some(8), 100).unwrap();
    let err = c.next_data_page().unwrap_err();
    assert!(err.contains("values where its row group has 100 rows left"), "{err}");
    assert!(c.valid.capacity() < 1024, "{} words allocated", c.valid.capacity());
}
