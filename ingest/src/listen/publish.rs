//! The one writer of every source loop: events and dead letters in, durable log appends out.
//!
//! Loops hand over a [`Batch`] and (for protocols that acknowledge, i.e. HTTP) wait until it
//! is durable. Batches that arrive while an append is in flight are appended together, so a
//! thousand concurrent webhook calls cost a few durable writes, not a thousand.

use std::sync::Arc;

use ccstream_eventlog::{EventLog, RecordRef};
use ccstream_schemas::{
    encode_event, event_key, format_rfc3339_ms, DeadLetterRecord, Event, Validated, DEAD_LETTER_KEY,
};
use tokio::sync::{mpsc, oneshot};

use crate::telemetry::Telemetry;

/// Records for the log, encoded.
#[derive(Debug)]
pub struct Batch {
    /// The source the records came from (for the failure count).
    pub source: &'static str,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    pub events: usize,
    pub dead_letters: usize,
}

impl Batch {
    pub fn new(source: &'static str) -> Self {
        Batch { source, records: Vec::new(), events: 0, dead_letters: 0 }
    }

    /// Adds an event, stamped as ingested at `now_ms`.
    /// A mapping always makes valid events; should one not be, it goes on the log as JSON
    /// and the processor dead-letters it with the reason.
    pub fn event(&mut self, mut event: Event<'_>, now_ms: i64) {
        let value = match event.validate() {
            Ok(typed) => {
                let mut value = Vec::with_capacity(160);
                encode_event(&event, &Validated { ingested_at_ms: Some(now_ms), ..typed }, &mut value);
                value
            }
            Err(_) => {
                event.ingested_at = Some(format_rfc3339_ms(now_ms).into());
                event.to_json().into_bytes()
            }
        };
        self.records.push((event_key(&event).to_vec(), value));
        self.events += 1;
    }

    pub fn dead_letter(&mut self, d: &DeadLetterRecord) {
        self.records.push((DEAD_LETTER_KEY.to_vec(), d.to_json()));
        self.dead_letters += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Why a batch did not reach the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("appending to the event log failed: {0}")]
pub struct PublishError(pub String);

type Ack = oneshot::Sender<Result<(), PublishError>>;

/// A handle to the writer task (cheap to clone).
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<(Batch, Option<Ack>)>,
}

/// Records per append, at most.
const MAX_APPEND: usize = 8192;

impl Publisher {
    /// Starts the writer task on `log`, stamping records with `now_ms()`.
    pub fn spawn(log: Arc<dyn EventLog>, telemetry: Arc<Telemetry>, now_ms: fn() -> i64) -> Publisher {
        let (tx, mut rx) = mpsc::channel::<(Batch, Option<Ack>)>(1024);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                let mut n = group[0].0.records.len();
                while n < MAX_APPEND {
                    match rx.try_recv() {
                        Ok(next) => {
                            n += next.0.records.len();
                            group.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let ts = now_ms();
                let refs: Vec<RecordRef<'_>> = group
                    .iter()
                    .flat_map(|(b, _)| b.records.iter())
                    .map(|(k, v)| RecordRef { key: k, value: v, timestamp_ms: ts })
                    .collect();
                let result = if refs.is_empty() {
                    Ok(()) // only flush markers
                } else {
                    log.append(&refs).await.map(|_| ()).map_err(|e| PublishError(e.to_string()))
                };
                drop(refs);
                for (batch, ack) in group {
                    if let Err(e) = &result {
                        telemetry.append_failures.with_label_values(&[batch.source]).inc();
                        if ack.is_none() {
                            tracing::error!(source = %batch.source, error = %e, "input lost: the log did not take it");
                        }
                    } else {
                        telemetry.accepted.with_label_values(&[batch.source]).inc_by(batch.events as u64);
                    }
                    if let Some(ack) = ack {
                        let _ = ack.send(result.clone());
                    }
                }
            }
        });
        Publisher { tx }
    }

    /// Appends `batch` and waits until it is durable.
    pub async fn publish(&self, batch: Batch) -> Result<(), PublishError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        self.tx.send((batch, Some(ack))).await.map_err(|_| PublishError("the writer stopped".into()))?;
        done.await.map_err(|_| PublishError("the writer stopped".into()))?
    }

    /// Waits until every batch queued before this call is appended (the writer takes batches
    /// in order).
    pub async fn flush(&self) -> Result<(), PublishError> {
        let (ack, done) = oneshot::channel();
        self.tx.send((Batch::new("flush"), Some(ack))).await.map_err(|_| PublishError("the writer stopped".into()))?;
        done.await.map_err(|_| PublishError("the writer stopped".into()))?
    }

    /// Queues `batch` without waiting (for protocols without acknowledgements, e.g. UDP);
    /// waits only while the queue is full.
    pub async fn send(&self, batch: Batch) -> Result<(), PublishError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.tx.send((batch, None)).await.map_err(|_| PublishError("the writer stopped".into()))
    }
}
