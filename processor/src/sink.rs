//! Delta tables under one data directory: `DIR/<table>/` (Parquet files + `_delta_log/`).
//!
//! `DIR` is a local path or a URL (`file://`, `memory://`). Each [`TableStore::overwrite`]
//! is one Delta commit: readers see the table's previous version until the commit lands,
//! then the new one; a failed write leaves the previous version readable.

use deltalake::kernel::transaction::CommitProperties;
use deltalake::parquet::basic::{Compression, Encoding, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use url::Url;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use ccstream_schemas::{is_low_cardinality, partition_columns, table_schema};

use crate::{Error, Result};

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

    /// Replaces the whole content of table `name` with `batches`, in one commit.
    /// Returns the table's new version.
    pub async fn overwrite(&self, name: &str, batches: Vec<RecordBatch>) -> Result<u64> {
        let url = self.table_url(name)?;
        let wrap =
            |source| Error::WriteTable { table: name.to_string(), location: url.to_string(), source: Box::new(source) };
        let table = DeltaTable::try_from_url(url.clone()).await.map_err(wrap)?;
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
        let props = props.build();
        let parts = partition_columns(name);
        let mut write = table
            .write(batches)
            .with_save_mode(SaveMode::Overwrite)
            .with_writer_properties(props)
            .with_table_name(name)
            .with_commit_properties(CommitProperties::default());
        if !parts.is_empty() {
            write = write.with_partition_columns(parts.iter().map(|s| s.to_string()));
        }
        let table = write.await.map_err(wrap)?;
        Ok(table.version().unwrap_or_default())
    }
}
