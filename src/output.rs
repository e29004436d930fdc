//! Writing query results: an aligned table for people, CSV and JSON lines for programs.

use std::io::Write;

use anyhow::Result;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

/// Output formats of `ccstream sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns with a header
    Table,
    /// RFC 4180 CSV with a header; timestamps RFC 3339 UTC
    Csv,
    /// One JSON object per row
    Json,
}

pub(crate) fn write(out: &mut dyn Write, format: Format, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    match format {
        Format::Table => {
            let table = arrow::util::pretty::pretty_format_batches(batches)?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(out, "{}", names.join(" | "))?;
                writeln!(out, "(0 rows)")?;
            } else {
                writeln!(out, "{table}")?;
            }
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.3fZ".to_string())
                .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.3f".to_string())
                .build(&mut *out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}
