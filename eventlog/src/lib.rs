//! ccstream's event log: an ordered, durable, replayable log of canonical events between the
//! ingestors and the processors.
//!
//! # Contract (every [`EventLog`] implementation)
//!
//! - **Partitions and keys.** A log has a fixed number of partitions. A record goes to
//!   [`partition_for`]`(key, partitions)`: the same function for every implementation, so all
//!   records of one call (keyed by the call key) land in one partition whatever the log.
//! - **Order.** Within a partition, records are delivered in append order, at consecutive
//!   offsets starting at 0. Nothing is promised across partitions.
//! - **Durability.** When [`EventLog::append`] returns `Ok`, every record of the call is
//!   durable (FileLog: written and, under the default fsync policy, fsynced; KafkaLog:
//!   acknowledged by all in-sync replicas) and its `(partition, offset)` is final. On `Err`,
//!   any prefix of the records may have been appended: appending them again is allowed
//!   (at-least-once), which is why consumers are idempotent on `event_id`.
//! - **Delivery.** At least once. A consumer reads from the positions *it* chooses
//!   ([`LogConsumer::seek`]); the log never commits positions on its own. Offsets handed to
//!   [`LogConsumer::commit`] are advisory (they let operators see lag with the usual tools) and
//!   must be positions from which the consumer can safely restart.
//! - **Groups.** Consumers subscribe with a group name. The log assigns each partition to one
//!   member of the group and tells the consumer through [`Poll::Assigned`] and
//!   [`Poll::Revoked`]; after `Assigned`, the consumer seeks each new partition to its own
//!   restart position before it processes records of that partition. FileLog, the
//!   single-machine log, allows one member per group and assigns it every partition.
//! - **Retention.** Old records may be deleted by retention; a seek below the earliest
//!   retained offset is an error ([`Error::OffsetOutOfRange`]), never a silent skip.
//!
//! Two implementations, chosen by URL ([`open`]): `file://DIR` ([`file::FileLog`], the embedded
//! default) and `kafka://HOST:PORT[,HOST:PORT…]/TOPIC[?seek=scan]` ([`kafka::KafkaLog`], through rdkafka).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

pub use bytes::Bytes;

pub mod file;
pub mod kafka;
#[cfg(feature = "testing")]
pub mod testing;

/// A log partition number.
pub type Partition = u32;
/// A record's position within its partition.
pub type Offset = u64;

/// A record to append. The key chooses the partition ([`partition_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The producer's timestamp (Unix ms): the time of ingestion, not the event time.
    pub timestamp_ms: i64,
}

/// A record read from the log. Its key and value are shared views of what the log read
/// (FileLog: slices of the segment chunk, no copy per record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub partition: Partition,
    pub offset: Offset,
    pub timestamp_ms: i64,
    pub key: Bytes,
    pub value: Bytes,
}

/// What one [`LogConsumer::poll`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Records, in order within each partition.
    Records(Vec<Delivered>),
    /// These partitions now belong to this consumer: seek each before reading it.
    Assigned(Vec<Partition>),
    /// These partitions no longer belong to this consumer (a rebalance): stop and let go of
    /// their state; records of them already returned stay valid.
    Revoked(Vec<Partition>),
    /// Nothing arrived within the timeout.
    Idle,
}

/// The partition of a record with this key: CRC-32C of the key modulo the partition count.
/// Every implementation uses it, so a call's records meet in one partition in every log.
pub fn partition_for(key: &[u8], partitions: u32) -> Partition {
    debug_assert!(partitions > 0);
    crc32c::crc32c(key) % partitions.max(1)
}

/// An ordered, durable, replayable log; see the crate documentation for the contract.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + Debug {
    /// Where the log is, as given to [`open`] (without credentials).
    fn url(&self) -> &str;

    /// The number of partitions.
    async fn partitions(&self) -> Result<u32>;

    /// Appends `records` (each to its key's partition, in slice order within a partition) and
    /// returns each record's `(partition, offset)`, in slice order. Durable when it returns.
    async fn append(&self, records: &[RecordRef<'_>]) -> Result<Vec<(Partition, Offset)>>;

    /// For every partition, the offset the next appended record will get (the end).
    async fn end_offsets(&self) -> Result<Vec<Offset>>;

    /// For every partition, the earliest offset still retained.
    async fn start_offsets(&self) -> Result<Vec<Offset>>;

    /// Joins consumer group `group`.
    async fn subscribe(&self, group: &str) -> Result<Box<dyn LogConsumer>>;
}

/// One member of a consumer group; see the crate documentation for the contract.
#[async_trait::async_trait]
pub trait LogConsumer: Send + Debug {
    /// Waits up to `timeout` for records (at most `max_records`) or an assignment change.
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<Poll>;

    /// The next record delivered from `partition` will be the one at `offset`. Records of that
    /// partition below `offset` that are already in flight are dropped.
    async fn seek(&mut self, partition: Partition, offset: Offset) -> Result<()>;

    /// Records restart positions for operators' tools (advisory; see the contract).
    async fn commit(&mut self, positions: &[(Partition, Offset)]) -> Result<()>;

    /// The partitions this consumer holds now.
    fn assignment(&self) -> Vec<Partition>;
}

/// How a log is opened: what `open` needs beyond the URL.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Partitions to create the log (or Kafka topic) with when it does not exist yet.
    /// `None` opens an existing log only.
    pub create_partitions: Option<u32>,
    /// Extra client properties for KafkaLog (`key=value`, librdkafka names), e.g. security.
    pub kafka_properties: Vec<(String, String)>,
}

/// Opens the log at `url`: `file://DIR` (or a plain path) or `kafka://BROKERS/TOPIC`.
pub async fn open(url: &str, options: &OpenOptions) -> Result<Arc<dyn EventLog>> {
    if let Some(rest) = url.strip_prefix("kafka://") {
        let (brokers, topic) = rest
            .split_once('/')
            .filter(|(b, t)| !b.is_empty() && !t.is_empty() && !t.starts_with('?') && !t.contains('/'))
            .ok_or_else(|| Error::BadUrl { url: url.to_string(), reason: "expected kafka://HOST:PORT/TOPIC".into() })?;
        let log = kafka::KafkaLog::open(brokers, topic, options).await?;
        return Ok(Arc::new(log));
    }
    if url.contains("://") && !url.starts_with("file://") {
        return Err(Error::BadUrl { url: url.to_string(), reason: "the scheme must be file:// or kafka://".into() });
    }
    let config = file::FileLogConfig::from_url(url)?;
    let log = file::FileLog::open(config, options.create_partitions)?;
    Ok(Arc::new(log))
}

/// What failed in the event log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("log URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("log at {path} does not exist (create it with `ccstream ingest ... --partitions N`)")]
    NotFound { path: String },
    #[error("log at {path} has {found} partitions, not {wanted}")]
    PartitionCount { path: String, found: u32, wanted: u32 },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt record in {path} at byte {position}: {reason}")]
    Corrupt { path: String, position: u64, reason: String },
    #[error(
        "damaged record in {path} at byte {position} (partition {partition}, offset {offset}), with whole \
         records after it (offset {later} at byte {later_position}): refusing to truncate records that may \
         have been acknowledged. Keep a copy of the segment, then drop offset {offset} and everything after \
         it with `ccstream log truncate --log {log} --partition {partition} --offset {offset}` (the dropped \
         bytes are kept beside the segment); see docs/operations.md"
    )]
    Damaged {
        path: String,
        log: String,
        partition: Partition,
        position: u64,
        offset: Offset,
        later: Offset,
        later_position: u64,
    },
    #[error("partition {partition}: offset {offset} is below the earliest retained offset {earliest}")]
    OffsetOutOfRange { partition: Partition, offset: Offset, earliest: Offset },
    #[error("partition {partition} does not exist (the log has {partitions})")]
    NoSuchPartition { partition: Partition, partitions: u32 },
    #[error("consumer group {group:?} of {path} already has a member (FileLog allows one per group)")]
    GroupBusy { group: String, path: String },
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("Kafka {op}: {source}")]
    Kafka {
        op: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "partition {partition}: after a seek to offset {wanted} the broker returned {got} first; \
         if it cannot fetch from inside a record batch, add `?seek=scan` to the log URL"
    )]
    Gap { partition: Partition, wanted: Offset, got: Offset },
    #[error("Kafka topic {topic:?}: {reason}")]
    Topic { topic: String, reason: String },
}

impl Error {
    /// Whether trying the same call again later can succeed (a broker or disk hiccup), as
    /// opposed to a mistake in the request or the data.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Io { .. } => true,
            Error::Kafka { source, .. } => !matches!(source, rdkafka::error::KafkaError::ClientCreation(_)),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_for_is_stable_and_in_range() {
        // The mapping is part of the on-log format: pin a few values.
        assert_eq!(partition_for(b"", 4), 0);
        assert_eq!(partition_for(b"call-1", 1), 0);
        let a = partition_for(b"8c3f6f0e-52a4-4a8e-9a65-0d1c2b3a4f5e", 8);
        assert_eq!(a, crc32c::crc32c(b"8c3f6f0e-52a4-4a8e-9a65-0d1c2b3a4f5e") % 8);
        for n in 1..20u32 {
            for k in 0..100u32 {
                assert!(partition_for(&k.to_le_bytes(), n) < n);
            }
        }
    }

    #[tokio::test]
    async fn bad_urls_are_clear_errors() {
        for url in ["kafka://", "kafka://host:9092", "kafka:///topic", "s3://bucket/log"] {
            let err = open(url, &OpenOptions::default()).await.unwrap_err();
            assert!(matches!(err, Error::BadUrl { .. }), "{url}: {err}");
        }
    }
}
