//! Delta tables under one data directory: `DIR/<table>/` (Parquet files + `_delta_log/`).
//!
//! `DIR` is a local path or a URL (`file://`, `memory://`). A table is replaced by writing
//! new Parquet files, then one Delta commit that adds them and removes the previous ones
//! ([`TableStore::overwrite_streaming`], [`TableStore::replace`]): readers see the
//! previous version until the commit lands, then the new one; a failed run leaves the
//! previous version readable (its stray files are never referenced).

use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::Action;
use deltalake::parquet::basic::{Compression, Encoding, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::DeltaOperation;
use deltalake::protocol::SaveMode;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use url::Url;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use ccstream_schemas::{is_low_cardinality, partition_columns, table_schema};

use crate::{Error, Result};

/// Parquet settings of table `name`'s files.
fn writer_properties(name: &str) -> WriterProperties {
    // Dictionary pages only where values repeat (tenants, queues, agents, enums): for
    // unique ids a dictionary is pure cost.
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("level 1 is valid")))
        .set_dictionary_enabled(false);
    // Integers and timestamps as deltas (call rows come roughly in time order), floats
    // split by byte: both shrink the files, and writing them is what costs.
    if let Some(schema) = table_schema(name) {
        for field in schema.fields() {
            if is_low_cardinality(field.name()) {
                props = props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), true);
            }
            let encoding = match field.data_type() {
                DataType::Int32 | DataType::Int64 | DataType::Date32 | DataType::Timestamp(_, _) => {
                    Encoding::DELTA_BINARY_PACKED
                }
                DataType::Float64 => Encoding::BYTE_STREAM_SPLIT,
                _ => continue,
            };
            props = props.set_column_encoding(ColumnPath::from(field.name().as_str()), encoding);
        }
    }
    props.build()
}

/// The data directory that holds ccstream's tables.
#[derive(Debug, Clone)]
pub struct TableStore {
    root: Url,
}

impl TableStore {
    /// Opens (and for a local path, creates) the data directory `location`.
    pub fn new(location: &str) -> Result<Self> {
        let root = deltalake::ensure_table_uri(location)
            .map_err(|e| Error::Location { location: location.to_string(), reason: e.to_string() })?;
        Ok(TableStore { root })
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The URL of table `name`.
    pub fn table_url(&self, name: &str) -> Result<Url> {
        let mut root = self.root.clone();
        if !root.path().ends_with('/') {
            let p = format!("{}/", root.path());
            root.set_path(&p);
        }
        let url = root
            .join(&format!("{name}/"))
            .map_err(|e| Error::Location { location: format!("{}{name}", self.root), reason: e.to_string() })?;
        if url.scheme() == "file" {
            if let Ok(path) = url.to_file_path() {
                std::fs::create_dir_all(&path)
                    .map_err(|e| Error::Location { location: path.display().to_string(), reason: e.to_string() })?;
            }
        }
        Ok(url)
    }

    /// Replaces the whole content of table `name` with `batch`, in one commit, writing it
    /// in slices of `slice_rows` (no second copy of the table). Returns the rows written and
    /// the table's new version.
    pub async fn replace(&self, name: &str, batch: RecordBatch, slice_rows: usize) -> Result<(u64, u64)> {
        let mut w = self.overwrite_streaming(name, batch.schema(), usize::MAX).await?;
        let mut at = 0;
        while at < batch.num_rows() {
            let n = slice_rows.max(1).min(batch.num_rows() - at);
            w.write(batch.slice(at, n)).await?;
            at += n;
        }
        w.commit().await
    }

    /// Starts replacing the whole content of table `name` with batches written one at a
    /// time ([`Overwrite::write`]); nothing is visible until [`Overwrite::commit`], which
    /// is one Delta commit. Memory stays bounded: files are finished every
    /// `flush_rows` rows.
    pub async fn overwrite_streaming(&self, name: &str, schema: SchemaRef, flush_rows: usize) -> Result<Overwrite> {
        self.start_write(name, schema, flush_rows, SaveMode::Overwrite).await
    }

    /// Like [`TableStore::overwrite_streaming`], but the commit adds the new files to what the
    /// table holds instead of replacing it.
    pub async fn append_streaming(&self, name: &str, schema: SchemaRef, flush_rows: usize) -> Result<Overwrite> {
        self.start_write(name, schema, flush_rows, SaveMode::Append).await
    }

    /// The versions of the application transactions `app_ids` recorded in table `name`
    /// (`None` for an id never committed, or a table that does not exist yet).
    pub async fn transaction_versions(&self, name: &str, app_ids: &[String]) -> Result<Vec<Option<i64>>> {
        let url = self.table_url(name)?;
        let wrap =
            |source| Error::WriteTable { table: name.to_string(), location: url.to_string(), source: Box::new(source) };
        let mut table = DeltaTable::try_from_url(url.clone()).await.map_err(wrap)?;
        if table.load().await.is_err() || table.version().is_none() {
            return Ok(vec![None; app_ids.len()]);
        }
        let snapshot = table.snapshot().map_err(wrap)?;
        let mut out = Vec::with_capacity(app_ids.len());
        for id in app_ids {
            out.push(snapshot.transaction_version(table.log_store().as_ref(), id).await.map_err(wrap)?);
        }
        Ok(out)
    }

    async fn start_write(&self, name: &str, schema: SchemaRef, flush_rows: usize, mode: SaveMode) -> Result<Overwrite> {
        let url = self.table_url(name)?;
        let wrap =
            |source| Error::WriteTable { table: name.to_string(), location: url.to_string(), source: Box::new(source) };
        let mut table = DeltaTable::try_from_url(url.clone()).await.map_err(wrap)?;
        let parts: Vec<String> = partition_columns(name).iter().map(|s| s.to_string()).collect();
        if table.version().is_none() {
            // A new table: commit its schema (no files) first, so the writer has metadata.
            table = table
                .write(vec![RecordBatch::new_empty(schema.clone())])
                .with_save_mode(SaveMode::Overwrite)
                .with_table_name(name)
                .with_partition_columns(parts.clone())
                .await
                .map_err(wrap)?;
        }
        let removes: Vec<Action> = match mode {
            SaveMode::Overwrite => table
                .snapshot()
                .map_err(wrap)?
                .log_data()
                .iter()
                .map(|f| Action::Remove(f.remove_action(true)))
                .collect(),
            _ => Vec::new(),
        };
        let writer =
            RecordBatchWriter::for_table(&table).map_err(wrap)?.with_writer_properties(writer_properties(name));
        Ok(Overwrite {
            name: name.to_string(),
            location: url.to_string(),
            table,
            writer,
            removes,
            adds: Vec::new(),
            partition_by: parts,
            flush_rows: flush_rows.max(1),
            buffered: 0,
            rows: 0,
            mode,
            transactions: Vec::new(),
        })
    }
}

/// A table replacement in progress (see [`TableStore::overwrite_streaming`]).
pub struct Overwrite {
    name: String,
    location: String,
    table: DeltaTable,
    writer: RecordBatchWriter,
    removes: Vec<Action>,
    adds: Vec<Action>,
    partition_by: Vec<String>,
    flush_rows: usize,
    buffered: usize,
    rows: u64,
    mode: SaveMode,
    transactions: Vec<(String, i64)>,
}

impl std::fmt::Debug for Overwrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overwrite").field("table", &self.name).field("rows", &self.rows).finish()
    }
}

impl Overwrite {
    fn wrap(&self, source: deltalake::DeltaTableError) -> Error {
        Error::WriteTable { table: self.name.clone(), location: self.location.clone(), source: Box::new(source) }
    }

    /// Encodes `batch` into the table's new files.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        if let Err(e) = self.writer.write(batch).await {
            return Err(self.wrap(e));
        }
        self.buffered += n;
        self.rows += n as u64;
        if self.buffered >= self.flush_rows {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        match self.writer.flush().await {
            Ok(adds) => self.adds.extend(adds.into_iter().map(Action::Add)),
            Err(e) => return Err(self.wrap(e)),
        }
        self.buffered = 0;
        Ok(())
    }

    /// Records application transactions `(app_id, version)` in the same commit (the
    /// processor's consumed offsets: they land with the rows or not at all).
    pub fn with_transactions(&mut self, transactions: &[(String, i64)]) {
        self.transactions.extend_from_slice(transactions);
    }

    /// Finishes the files and commits them (replacing the previous content, or adding to
    /// it for [`TableStore::append_streaming`]) in one commit.
    /// Returns the rows written and the table's new version.
    pub async fn commit(mut self) -> Result<(u64, u64)> {
        self.flush().await?;
        let mut actions = std::mem::take(&mut self.adds);
        actions.append(&mut self.removes);
        for (app_id, version) in self.transactions.drain(..) {
            actions.push(Action::Txn(deltalake::kernel::Transaction::new(app_id, version)));
        }
        let operation = DeltaOperation::Write {
            mode: self.mode,
            partition_by: (!self.partition_by.is_empty()).then(|| self.partition_by.clone()),
            predicate: None,
        };
        let snapshot = match self.table.snapshot() {
            Ok(s) => s,
            Err(e) => return Err(self.wrap(e)),
        };
        let done = CommitBuilder::default()
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await;
        match done {
            Ok(c) => Ok((self.rows, c.version())),
            Err(e) => Err(self.wrap(e)),
        }
    }
}
