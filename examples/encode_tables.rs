//! Encodes a table's Parquet files again, with the parquet crate's `ArrowWriter` and with
//! ccstream's `FlatWriter`, under the table's own writer settings, and prints the time and
//! size of each (a benchmark of the table encoders; see docs/performance.md).
//!
//!     cargo run --release --example encode_tables -- TABLE DIR [ROUNDS]
//!
//! `DIR` holds the table's Parquet files (searched recursively, e.g. one partition of a
//! replay's `call_facts`). Rows are re-encoded in row groups of 256 Ki rows.

use std::path::PathBuf;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use ccstream_processor::flat_parquet::FlatWriter;
use ccstream_processor::sink::writer_properties;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

const GROUP_ROWS: usize = 256 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, table, dir, rest @ ..] = args.as_slice() else {
        return Err("usage: encode_tables TABLE DIR [ROUNDS]".into());
    };
    let rounds: usize = rest.first().map(|r| r.parse()).transpose()?.unwrap_or(3);
    let (mut files, mut dirs) = (Vec::new(), vec![PathBuf::from(dir)]);
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                files.push(p);
            }
        }
    }
    let mut batches: Vec<RecordBatch> = Vec::new();
    for f in &files {
        for b in
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f)?)?.with_batch_size(GROUP_ROWS).build()?
        {
            batches.push(b?);
        }
    }
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Err(format!("no Parquet rows under {dir}").into());
    };
    let groups: Vec<RecordBatch> = batches
        .chunks(GROUP_ROWS / batches[0].num_rows().max(1))
        .map(|c| arrow::compute::concat_batches(&schema, c))
        .collect::<Result<_, _>>()?;
    let rows: usize = groups.iter().map(|g| g.num_rows()).sum();
    println!("{table}: {rows} rows, {} columns, {} files", schema.fields().len(), files.len());
    let props = writer_properties(table);
    for round in 1..=rounds {
        let t = Instant::now();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, schema.clone(), Some(props.clone()))?;
        for g in &groups {
            w.write(g)?;
            w.flush()?;
        }
        w.close()?;
        println!("round {round} ArrowWriter {:8.1} ms {:9} bytes", t.elapsed().as_secs_f64() * 1e3, out.len());
        let t = Instant::now();
        let mut out = Vec::new();
        let mut w = FlatWriter::try_new(&mut out, schema.clone(), props.clone())?;
        for g in &groups {
            w.write(g)?;
        }
        w.close()?;
        println!("round {round} FlatWriter  {:8.1} ms {:9} bytes", t.elapsed().as_secs_f64() * 1e3, out.len());
    }
    Ok(())
}
