//! KafkaLog: the event log on a Kafka-protocol broker (Apache Kafka, Redpanda, Event Hubs,
//! tansu…), through rdkafka.
//!
//! - One topic; the partition of a record is chosen here ([`crate::partition_for`]), not by
//!   librdkafka's partitioner, so FileLog and KafkaLog route keys identically.
//! - The producer is idempotent with `acks=all`: `append` returns once every record is
//!   acknowledged by all in-sync replicas, and librdkafka's retries neither reorder nor
//!   duplicate within a partition.
//! - Consumers join a group for partition assignment only. Auto-commit and the offset store
//!   are off; positions are the caller's ([`LogConsumer::seek`]). While a seek is pending
//!   (librdkafka refuses seeks on a partition that is not fetching yet), records of that
//!   partition are dropped rather than delivered out of order, and the seek is retried on
//!   the next poll.
//! - Extra librdkafka properties (security, timeouts) come from
//!   [`crate::OpenOptions::kafka_properties`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::{Delivered, Error, EventLog, LogConsumer, Offset, OpenOptions, Partition, Poll, RecordRef, Result};

/// How long metadata and watermark requests may take.
const META_TIMEOUT: Duration = Duration::from_secs(10);

/// The event log on a Kafka topic.
pub struct KafkaLog {
    url: String,
    topic: String,
    config: ClientConfig,
    producer: FutureProducer,
    partitions: u32,
    seek_mode: SeekMode,
    /// Reads watermarks and confirms ends; created once, used under the lock.
    watermark_client: Arc<Mutex<BaseConsumer>>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog").field("url", &self.url).field("partitions", &self.partitions).finish()
    }
}

fn kafka(op: &'static str) -> impl FnOnce(KafkaError) -> Error {
    move |source| Error::Kafka { op, source }
}

impl KafkaLog {
    /// Connects to `brokers` (comma-separated `HOST:PORT`) and opens `topic`, creating it
    /// with `options.create_partitions` partitions when it is missing and that is set.
    pub async fn open(brokers: &str, topic: &str, options: &OpenOptions) -> Result<Self> {
        let url = format!("kafka://{brokers}/{topic}");
        let (topic, query) = topic.split_once('?').unwrap_or((topic, ""));
        let mut seek_mode = SeekMode::Exact;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv {
                "seek=exact" => seek_mode = SeekMode::Exact,
                "seek=scan" => seek_mode = SeekMode::Scan,
                _ => {
                    return Err(Error::BadUrl {
                        url,
                        reason: format!("unknown setting `{kv}` (known: seek=exact|scan)"),
                    })
                }
            }
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        for (k, v) in &options.kafka_properties {
            config.set(k, v);
        }
        let found = topic_partitions(&config, topic).await?;
        let partitions = match (found, options.create_partitions) {
            (Some(found), Some(wanted)) if found != wanted => {
                return Err(Error::PartitionCount { path: format!("kafka topic {topic}"), found, wanted })
            }
            (Some(found), _) => found,
            (None, Some(wanted)) => {
                create_topic(&config, topic, wanted.max(1)).await?;
                wanted.max(1)
            }
            (None, None) => return Err(Error::NotFound { path: format!("kafka topic {topic} on {brokers}") }),
        };
        let producer: FutureProducer = config
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .create()
            .map_err(kafka("create producer"))?;
        let watermark_client: BaseConsumer = config
            .clone()
            .set("group.id", "ccstream-watermarks")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(kafka("create watermark client"))?;
        let watermark_client = Arc::new(Mutex::new(watermark_client));
        Ok(KafkaLog { url, topic: topic.to_string(), config, producer, partitions, seek_mode, watermark_client })
    }
}

/// The partition count of `topic`, or `None` if the broker does not know it.
async fn topic_partitions(config: &ClientConfig, topic: &str) -> Result<Option<u32>> {
    let consumer: BaseConsumer = config.create().map_err(kafka("create metadata client"))?;
    let topic = topic.to_string();
    let meta = tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&topic), META_TIMEOUT))
        .await
        .expect("metadata task panicked")
        .map_err(kafka("fetch metadata"))?;
    let Some(t) = meta.topics().first() else { return Ok(None) };
    match t.error() {
        None if !t.partitions().is_empty() => Ok(Some(t.partitions().len() as u32)),
        _ => Ok(None),
    }
}

async fn create_topic(config: &ClientConfig, topic: &str, partitions: u32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(kafka("create admin client"))?;
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(META_TIMEOUT));
    let results = admin.create_topics([&new], &opts).await.map_err(kafka("create topic"))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(Error::Topic { topic: name, reason: code.to_string() }),
        }
    }
    // The broker may take a moment to serve metadata for the new topic.
    for _ in 0..50 {
        if topic_partitions(config, topic).await? == Some(partitions) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Topic { topic: topic.to_string(), reason: "created, but the broker does not list it".into() })
}

#[async_trait::async_trait]
impl EventLog for KafkaLog {
    fn url(&self) -> &str {
        &self.url
    }

    async fn partitions(&self) -> Result<u32> {
        Ok(self.partitions)
    }

    async fn append(&self, records: &[RecordRef<'_>]) -> Result<Vec<(Partition, Offset)>> {
        let mut pending = VecDeque::with_capacity(records.len());
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let partition = crate::partition_for(r.key, self.partitions) as i32;
            let mut record = FutureRecord::to(&self.topic)
                .partition(partition)
                .key(r.key)
                .payload(r.value)
                .timestamp(r.timestamp_ms);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for the oldest delivery, then retry.
                        record = back;
                        match pending.pop_front() {
                            Some(d) => out.push(delivered(d.await)?),
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((e, _)) => return Err(kafka("produce")(e)),
                }
            }
        }
        while let Some(d) = pending.pop_front() {
            out.push(delivered(d.await)?);
        }
        Ok(out)
    }

    async fn end_offsets(&self) -> Result<Vec<Offset>> {
        Ok(self.watermarks(true).await?.into_iter().map(|(_, high)| high).collect())
    }

    async fn start_offsets(&self) -> Result<Vec<Offset>> {
        Ok(self.watermarks(false).await?.into_iter().map(|(low, _)| low).collect())
    }

    async fn subscribe(&self, group: &str) -> Result<Box<dyn LogConsumer>> {
        let consumer: StreamConsumer<GroupContext> = self
            .config
            .clone()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .create_with_context(GroupContext::default())
            .map_err(kafka("create consumer"))?;
        consumer.subscribe(&[&self.topic]).map_err(kafka("subscribe"))?;
        Ok(Box::new(KafkaConsumer {
            consumer,
            topic: self.topic.clone(),
            assigned: BTreeSet::new(),
            floor: HashMap::new(),
            pending_seeks: HashMap::new(),
            held: VecDeque::new(),
            first_after_seek: HashMap::new(),
            seek_mode: self.seek_mode,
        }))
    }
}

impl KafkaLog {
    /// `(earliest, end)` per partition. The end is confirmed by reading the last batch: some
    /// brokers (tansu 0.6) report the high watermark as the last batch's base offset + 1.
    async fn watermarks(&self, confirm: bool) -> Result<Vec<(Offset, Offset)>> {
        let consumer = Arc::clone(&self.watermark_client);
        let topic = self.topic.clone();
        let n = self.partitions;
        tokio::task::spawn_blocking(move || {
            // One request at a time: the client's assignment is part of `confirm_end`.
            let consumer = consumer.lock().unwrap_or_else(|p| p.into_inner());
            (0..n as i32)
                .map(|p| {
                    let (low, high) =
                        consumer.fetch_watermarks(&topic, p, META_TIMEOUT).map_err(kafka("fetch watermarks"))?;
                    let (low, high) = (low.max(0), high.max(0));
                    if high <= low || !confirm {
                        return Ok((low as Offset, high as Offset));
                    }
                    Ok((low as Offset, confirm_end(&consumer, &topic, p, high)? as Offset))
                })
                .collect()
        })
        .await
        .expect("watermark task panicked")
    }
}

/// Reads partition `p` from `high - 1` to the end of what the broker returns and gives the
/// offset after the last record seen.
fn confirm_end(consumer: &BaseConsumer, topic: &str, p: i32, high: i64) -> Result<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(high - 1)).map_err(kafka("assign"))?;
    consumer.assign(&tpl).map_err(kafka("assign"))?;
    let deadline = std::time::Instant::now() + META_TIMEOUT;
    let mut end = high;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.partition() == p => end = end.max(m.offset() + 1),
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(kafka("read last batch")(e)),
            None => {}
        }
    }
    consumer.unassign().map_err(kafka("unassign"))?;
    Ok(end)
}

fn delivered(
    d: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
) -> Result<(Partition, Offset)> {
    match d {
        Ok(Ok(d)) => Ok((d.partition as Partition, d.offset as Offset)),
        Ok(Err((e, _))) => Err(kafka("produce")(e)),
        Err(_) => Err(kafka("produce")(KafkaError::Canceled)),
    }
}

/// Collects assignment changes, which librdkafka reports inside `poll`.
#[derive(Debug, Default)]
struct GroupContext {
    changes: Mutex<VecDeque<Poll>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions_of(tpl);
            self.changes.lock().unwrap_or_else(|p| p.into_inner()).push_back(Poll::Revoked(parts));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = partitions_of(tpl);
            self.changes.lock().unwrap_or_else(|p| p.into_inner()).push_back(Poll::Assigned(parts));
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<Partition> {
    let mut v: Vec<Partition> = tpl.elements().iter().map(|e| e.partition() as Partition).collect();
    v.sort_unstable();
    v
}

/// One member of a Kafka consumer group.
struct KafkaConsumer {
    consumer: StreamConsumer<GroupContext>,
    topic: String,
    assigned: BTreeSet<Partition>,
    /// Per partition, the seek position: records below it are dropped.
    floor: HashMap<Partition, Offset>,
    /// Seeks librdkafka has not accepted yet; records of these partitions are dropped.
    pending_seeks: HashMap<Partition, Offset>,
    /// Records received together with an assignment change, delivered on the next poll.
    held: VecDeque<Delivered>,
    /// Per partition, the offset the first record after a seek must have.
    first_after_seek: HashMap<Partition, Offset>,
    seek_mode: SeekMode,
}

/// How a consumer positions the broker's fetch for a seek.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekMode {
    /// Fetch from the seek offset (any Kafka broker).
    Exact,
    /// Fetch from the earliest retained offset and skip up to the seek offset, for brokers
    /// that cannot serve a fetch starting inside a record batch (tansu 0.6). URL: `?seek=scan`.
    Scan,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer").field("topic", &self.topic).field("assigned", &self.assigned).finish()
    }
}

impl KafkaConsumer {
    fn next_change(&mut self) -> Option<Poll> {
        let change = self.consumer.context().changes.lock().unwrap_or_else(|p| p.into_inner()).pop_front()?;
        match &change {
            Poll::Assigned(parts) => self.assigned.extend(parts.iter().copied()),
            Poll::Revoked(parts) => {
                for p in parts {
                    self.assigned.remove(p);
                    self.floor.remove(p);
                    self.pending_seeks.remove(p);
                    self.first_after_seek.remove(p);
                }
                self.held.retain(|d| !parts.contains(&d.partition));
            }
            _ => {}
        }
        Some(change)
    }

    fn retry_seeks(&mut self) {
        let pending: Vec<(Partition, Offset)> = self.pending_seeks.iter().map(|(p, o)| (*p, *o)).collect();
        for (p, o) in pending {
            let to = match self.seek_mode {
                SeekMode::Exact => rdkafka::Offset::Offset(o as i64),
                SeekMode::Scan => rdkafka::Offset::Beginning,
            };
            if self.consumer.seek(&self.topic, p as i32, to, Duration::ZERO).is_ok() {
                self.pending_seeks.remove(&p);
            }
        }
    }

    /// Whether to deliver `d`; an error if the broker skipped records after a seek.
    fn accept(&mut self, d: &Delivered) -> Result<bool> {
        if !self.assigned.contains(&d.partition) || self.pending_seeks.contains_key(&d.partition) {
            return Ok(false);
        }
        if self.floor.get(&d.partition).is_some_and(|f| d.offset < *f) {
            return Ok(false);
        }
        if let Some(first) = self.first_after_seek.remove(&d.partition) {
            if d.offset > first {
                return Err(Error::Gap { partition: d.partition, wanted: first, got: d.offset });
            }
        }
        Ok(true)
    }

    fn convert(m: &rdkafka::message::BorrowedMessage<'_>) -> Delivered {
        Delivered {
            partition: m.partition() as Partition,
            offset: m.offset() as Offset,
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
            key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
            value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        }
    }
}

#[async_trait::async_trait]
impl LogConsumer for KafkaConsumer {
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<Poll> {
        if let Some(change) = self.next_change() {
            return Ok(change);
        }
        self.retry_seeks();
        let mut out: Vec<Delivered> = Vec::new();
        while let Some(d) = self.held.pop_front() {
            if self.accept(&d)? {
                out.push(d);
            }
        }
        if out.is_empty() {
            let first = match tokio::time::timeout(timeout, self.consumer.recv()).await {
                Err(_) => None,
                Ok(Ok(m)) => Some(Self::convert(&m)),
                Ok(Err(e)) => return Err(kafka("consume")(e)),
            };
            if let Some(change) = self.next_change() {
                // Keep the record until the caller has seen the change (and seeked).
                self.held.extend(first);
                return Ok(change);
            }
            match first {
                Some(d) => {
                    if self.accept(&d)? {
                        out.push(d);
                    }
                }
                None => return Ok(Poll::Idle),
            }
        }
        while out.len() < max_records {
            let Some(next) = self.consumer.recv().now_or_never() else { break };
            let d = Self::convert(&next.map_err(kafka("consume"))?);
            if self.consumer.context().changes.lock().unwrap_or_else(|p| p.into_inner()).front().is_some() {
                self.held.push_back(d);
                break;
            }
            if self.accept(&d)? {
                out.push(d);
            }
        }
        Ok(if out.is_empty() { Poll::Idle } else { Poll::Records(out) })
    }

    async fn seek(&mut self, partition: Partition, offset: Offset) -> Result<()> {
        self.floor.insert(partition, offset);
        self.first_after_seek.insert(partition, offset);
        self.held.retain(|d| d.partition != partition);
        self.pending_seeks.insert(partition, offset);
        self.retry_seeks();
        Ok(())
    }

    async fn commit(&mut self, positions: &[(Partition, Offset)]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in positions {
            if self.assigned.contains(p) {
                tpl.add_partition_offset(&self.topic, *p as i32, rdkafka::Offset::Offset(*o as i64))
                    .map_err(kafka("commit"))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&tpl, CommitMode::Async).map_err(kafka("commit"))
    }

    fn assignment(&self) -> Vec<Partition> {
        self.assigned.iter().copied().collect()
    }
}
