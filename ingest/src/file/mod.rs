//! Canonical events files: discovery and chunked reading.
//!
//! Formats by extension: `.jsonl`, `.ndjson`, `.json` (one JSON object per line; `.gz`
//! appended for gzip) and `.parquet` (canonical column names; extra columns are ignored).
//! A directory stands for every such file under it, in path order. A JSON chunk always
//! ends at a line end, so no line is ever split; line numbers are 1-based.

pub mod records;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use flate2::read::MultiGzDecoder;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::reader::ChunkReader;

use crate::{Error, Result};

/// The format of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl { gzip: bool },
    Parquet,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub format: Format,
    /// Size on disk (for progress).
    pub bytes: u64,
}

/// The format a path's extension names, if any.
pub fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, gzip) = match name.strip_suffix(".gz") {
        Some(s) => (s.to_string(), true),
        None => (name, false),
    };
    if stem.ends_with(".parquet") && !gzip {
        Some(Format::Parquet)
    } else if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") || stem.ends_with(".json") {
        Some(Format::Jsonl { gzip })
    } else {
        None
    }
}

/// Rows of a Parquet file according to its footer (`None` for other formats or on error).
pub fn parquet_rows(file: &InputFile) -> Option<u64> {
    if file.format != Format::Parquet {
        return None;
    }
    let f = File::open(&file.path).ok()?;
    let reader = parquet::file::reader::SerializedFileReader::new(f).ok()?;
    use parquet::file::reader::FileReader as _;
    Some(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Expands paths (files or directories) into input files. A file named explicitly must
/// have a known format; files under a directory without one are skipped.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<InputFile>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| Error::Read { path: p.display().to_string(), source })?;
        if meta.is_dir() {
            let before = out.len();
            walk(p, &mut out)?;
            if out.len() == before {
                return Err(Error::NoInput(p.display().to_string()));
            }
        } else {
            let format = format_of(p).ok_or_else(|| Error::UnknownFormat { path: p.display().to_string() })?;
            out.push(InputFile { path: p.clone(), format, bytes: meta.len() });
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<InputFile>) -> Result<()> {
    let read_err = |source| Error::Read { path: dir.display().to_string(), source };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort();
    for p in entries {
        let meta = std::fs::metadata(&p).map_err(|source| Error::Read { path: p.display().to_string(), source })?;
        if meta.is_dir() {
            walk(&p, out)?;
        } else if let Some(format) = format_of(&p) {
            out.push(InputFile { path: p, format, bytes: meta.len() });
        }
    }
    Ok(())
}

/// A piece of an input file.
#[derive(Debug)]
pub enum Chunk {
    /// Whole lines of a JSON Lines file; `first_line` is the 1-based number of the first.
    Lines { first_line: u64, data: Vec<u8> },
    /// Rows of a Parquet file; `first_row` is the 0-based index of the first.
    Batch { first_row: u64, batch: RecordBatch },
}

/// How to read files.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Target size of a JSON chunk, in bytes.
    pub chunk_bytes: usize,
    /// Rows per Parquet batch.
    pub batch_rows: usize,
    /// Parquet columns to read (all when `None`); absent names are ignored.
    pub columns: Option<Vec<String>>,
    /// Read Parquet string columns in the shapes the fold decodes fastest
    /// ([`ccstream_schemas::fold_read_schema`]): low-cardinality ones as
    /// `Dictionary(Int32, Utf8)` (kept encoded: decoding interns each distinct value once
    /// per batch, not once per row), and the unique ids as `Utf8View`.
    pub fold_hints: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { chunk_bytes: 4 << 20, batch_rows: 64 * 1024, columns: None, fold_hints: false }
    }
}

/// Reads one input file chunk by chunk.
#[derive(Debug)]
pub struct FileReader {
    inner: Inner,
    path: String,
    total_rows: Option<u64>,
}

enum Inner {
    Jsonl { reader: Box<dyn BufRead + Send>, next_line: u64, chunk_bytes: usize, done: bool },
    Parquet { reader: ParquetRecordBatchReader, next_row: u64 },
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inner::Jsonl { next_line, .. } => f.debug_struct("Jsonl").field("next_line", next_line).finish(),
            Inner::Parquet { next_row, .. } => f.debug_struct("Parquet").field("next_row", next_row).finish(),
        }
    }
}

/// `f` mapped into memory, for reading Parquet without copying it: the column chunks are
/// read in place from the page cache, not copied into fresh buffers by `read` calls.
/// `None` when it cannot be mapped (an empty file, a pipe); the caller reads it instead.
///
/// The mapping is read-only and private. A file truncated by another process while a
/// replay reads it makes the process fault (SIGBUS), as with any memory-mapped reader:
/// replay and ingest files once they are complete.
fn map_file(f: &File) -> Option<bytes::Bytes> {
    // SAFETY: the map is only read, through `Bytes`, which never hands out a mutable
    // reference; another process changing the file under it is the caveat in the doc.
    let map = unsafe { memmap2::Mmap::map(f) }.ok()?;
    // Read in order, once: tell the kernel to read ahead and drop pages behind.
    let _ = map.advise(memmap2::Advice::Sequential);
    Some(bytes::Bytes::from_owner(map))
}

/// A Parquet file's bytes, mapped into memory (`None` when it cannot be mapped: the caller
/// reads it with [`FileReader`] instead). See [`map_file`] for the caveat.
pub fn map_parquet(file: &InputFile) -> Result<Option<bytes::Bytes>> {
    let f = File::open(&file.path).map_err(|source| Error::Read { path: file.path.display().to_string(), source })?;
    Ok(map_file(&f))
}

/// Rows `rows` (0-based, ascending, within the file) of Parquet `file`, with `opts`'
/// columns and hints, as one record batch: for tracing back rows read another way (dead
/// letters).
pub fn read_parquet_rows(file: &InputFile, opts: &ReadOptions, rows: &[u64]) -> Result<RecordBatch> {
    use parquet::arrow::arrow_reader::RowSelection;
    let path = file.path.display().to_string();
    let pq = |source| Error::Parquet { path: path.clone(), source };
    let f = File::open(&file.path).map_err(|source| Error::Read { path: path.clone(), source })?;
    let (builder, total) = parquet_builder(&path, f, opts)?;
    let ranges = rows.iter().map(|&r| r as usize..r as usize + 1);
    let reader = builder.with_row_selection(RowSelection::from_consecutive_ranges(ranges, total as usize)).build();
    let batches = reader.map_err(pq)?.collect::<Result<Vec<_>, _>>().map_err(|e| pq(e.into()))?;
    let schema = batches.first().map(|b| b.schema()).ok_or_else(|| pq(ParquetError::General("no such rows".into())))?;
    arrow::compute::concat_batches(&schema, &batches).map_err(|e| pq(e.into()))
}

/// A record batch reader builder over Parquet `source`, with `opts`' columns and batch
/// size, and the file's row count. The footer is read once, also for the fold's schema hints.
fn parquet_builder<T: ChunkReader + 'static>(
    path: &str,
    source: T,
    opts: &ReadOptions,
) -> Result<(ParquetRecordBatchReaderBuilder<T>, u64)> {
    let pq = |source| Error::Parquet { path: path.to_string(), source };
    let mut metadata = ArrowReaderMetadata::load(&source, ArrowReaderOptions::new()).map_err(pq)?;
    let rows = metadata.metadata().file_metadata().num_rows().max(0) as u64;
    if opts.fold_hints {
        let hinted = ccstream_schemas::fold_read_schema(metadata.schema());
        metadata =
            ArrowReaderMetadata::try_new(metadata.metadata().clone(), ArrowReaderOptions::new().with_schema(hinted))
                .map_err(pq)?;
    }
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(source, metadata);
    let builder = match &opts.columns {
        None => builder,
        Some(cols) => {
            let schema = builder.parquet_schema();
            let idx: Vec<usize> =
                (0..schema.num_columns()).filter(|&i| cols.iter().any(|c| c == schema.column(i).name())).collect();
            let mask = ProjectionMask::leaves(schema, idx);
            builder.with_projection(mask)
        }
    };
    Ok((builder.with_batch_size(opts.batch_rows), rows))
}

/// A record batch reader over Parquet `source` (see [`parquet_builder`]).
fn parquet_reader<T: ChunkReader + 'static>(
    path: &str,
    source: T,
    opts: &ReadOptions,
) -> Result<(ParquetRecordBatchReader, u64)> {
    let (builder, rows) = parquet_builder(path, source, opts)?;
    let reader = builder.build().map_err(|source| Error::Parquet { path: path.to_string(), source })?;
    Ok((reader, rows))
}

impl FileReader {
    pub fn open(file: &InputFile, opts: &ReadOptions) -> Result<Self> {
        let path = file.path.display().to_string();
        let f = File::open(&file.path).map_err(|source| Error::Read { path: path.clone(), source })?;
        let mut total_rows = None;
        let inner = match file.format {
            Format::Jsonl { gzip } => {
                let raw: Box<dyn Read + Send> = if gzip { Box::new(MultiGzDecoder::new(f)) } else { Box::new(f) };
                Inner::Jsonl {
                    reader: Box::new(BufReader::with_capacity(1 << 20, raw)),
                    next_line: 1,
                    chunk_bytes: opts.chunk_bytes,
                    done: false,
                }
            }
            Format::Parquet => {
                let (reader, rows) = match map_file(&f) {
                    Some(bytes) => parquet_reader(&path, bytes, opts)?,
                    None => parquet_reader(&path, f, opts)?,
                };
                total_rows = Some(rows);
                Inner::Parquet { reader, next_row: 0 }
            }
        };
        Ok(FileReader { inner, path, total_rows })
    }

    /// Rows in the file, when its format says (Parquet) — for progress.
    pub fn total_rows(&self) -> Option<u64> {
        self.total_rows
    }

    /// The next chunk, or `None` at the end of the file.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        match &mut self.inner {
            Inner::Jsonl { reader, next_line, chunk_bytes, done } => {
                if *done {
                    return Ok(None);
                }
                let mut data = Vec::with_capacity(*chunk_bytes + 4096);
                let first_line = *next_line;
                while data.len() < *chunk_bytes {
                    let n = reader
                        .read_until(b'\n', &mut data)
                        .map_err(|source| Error::Read { path: self.path.clone(), source })?;
                    if n == 0 {
                        *done = true;
                        break;
                    }
                    *next_line += 1;
                }
                if data.is_empty() {
                    return Ok(None);
                }
                Ok(Some(Chunk::Lines { first_line, data }))
            }
            Inner::Parquet { reader, next_row } => match reader.next() {
                None => Ok(None),
                Some(Err(e)) => Err(Error::Parquet { path: self.path.clone(), source: e.into() }),
                Some(Ok(batch)) => {
                    let first_row = *next_row;
                    *next_row += batch.num_rows() as u64;
                    Ok(Some(Chunk::Batch { first_row, batch }))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn formats_by_extension() {
        assert_eq!(format_of(Path::new("a/events.jsonl")), Some(Format::Jsonl { gzip: false }));
        assert_eq!(format_of(Path::new("events.NDJSON.gz")), Some(Format::Jsonl { gzip: true }));
        assert_eq!(format_of(Path::new("events.parquet")), Some(Format::Parquet));
        assert_eq!(format_of(Path::new("events.csv")), None);
        assert_eq!(format_of(Path::new("events.parquet.gz")), None);
    }

    #[test]
    fn lines_are_never_split_and_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl.gz");
        let mut gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::fast());
        for i in 0..1000 {
            writeln!(gz, "{{\"n\":{i}}}").unwrap();
        }
        write!(gz, "{{\"last\":true}}").unwrap(); // no final newline
        gz.finish().unwrap();
        let files = discover(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(files.len(), 1);
        let mut r = FileReader::open(&files[0], &ReadOptions { chunk_bytes: 100, ..Default::default() }).unwrap();
        let mut lines = Vec::new();
        let mut expect_line = 1;
        while let Some(Chunk::Lines { first_line, data }) = r.next_chunk().unwrap() {
            assert_eq!(first_line, expect_line);
            let text = String::from_utf8(data).unwrap();
            let n = text.lines().count() as u64;
            expect_line += n;
            lines.extend(text.lines().map(str::to_string));
        }
        assert_eq!(lines.len(), 1001);
        assert_eq!(lines[999], "{\"n\":999}");
        assert_eq!(lines[1000], "{\"last\":true}");
    }

    #[test]
    fn unknown_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "a,b\n").unwrap();
        assert!(matches!(discover(&[p]), Err(Error::UnknownFormat { .. })));
        assert!(matches!(discover(&[dir.path().to_path_buf()]), Err(Error::NoInput(_))));
    }

    /// The project's oracle fixture, read in place (mapped) and through `read` calls: the
    /// same batches, with a projection and fold hints.
    #[test]
    fn mapped_and_read_parquet_agree() {
        let path = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/oracle/events.parquet");
        let opts = ReadOptions {
            columns: Some(vec!["event_id".into(), "call_id".into(), "occurred_at".into()]),
            fold_hints: true,
            batch_rows: 1000,
            ..ReadOptions::default()
        };
        let batches = |reader: ParquetRecordBatchReader| reader.collect::<std::result::Result<Vec<_>, _>>().unwrap();
        let f = File::open(&path).unwrap();
        let map = map_file(&f).expect("a regular file maps");
        let (mapped, rows) = parquet_reader("mapped", map, &opts).unwrap();
        let (read, rows_read) = parquet_reader("read", f, &opts).unwrap();
        let (mapped, read) = (batches(mapped), batches(read));
        assert_eq!(rows, rows_read);
        assert_eq!(mapped.iter().map(|b| b.num_rows() as u64).sum::<u64>(), rows);
        assert!(mapped.len() > 1);
        assert_eq!(mapped, read);
    }

    /// An empty `.parquet` file cannot be mapped: it is read, and fails with its name.
    #[test]
    fn empty_parquet_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.parquet");
        std::fs::write(&p, b"").unwrap();
        let files = discover(&[p]).unwrap();
        let err = FileReader::open(&files[0], &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Parquet { .. }), "{err}");
        assert!(err.to_string().contains("empty.parquet"), "{err}");
    }
}
