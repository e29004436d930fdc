//! What the processor's tests and benchmarks share.

use std::fs::File;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The committed oracle fixture's events (`tests/fixtures/oracle/events.parquet`), as one batch.
pub(crate) fn fixture_events() -> RecordBatch {
    let path = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/oracle/events.parquet");
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap().build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    concat_batches(&batches[0].schema(), &batches).unwrap()
}
