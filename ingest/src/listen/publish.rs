//! The one writer of every source loop: events and dead letters in, durable log appends out.
//!
//! Loops hand over a [`Batch`] and (for protocols that acknowledge, i.e. HTTP) wait until it
//! is durable. Batches that arrive while an append is in flight are appended together, so a
//! thousand concurrent webhook calls cost a few durable writes, not a thousand.
//!
//! Dead letters are evidence, not an amplifier: the rejections of one batch (a request
//! body, a syslog read, a burst of datagrams) from one origin become one dead letter with
//! the reasons of its lines inside, and each source may write at most
//! [`DeadLetterBudget`]'s rate of them; what is past it is counted
//! (`ccstream_ingest_dead_letters_dropped_total`), not written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    /// The rejections, one entry per origin: each becomes one dead letter.
    rejections: Vec<Rejections>,
    pub events: usize,
    /// Inputs rejected (lines, messages, notifications).
    pub dead_letters: usize,
}

/// Reasons listed in a dead letter that stands for several rejected inputs, at most.
const LISTED_REASONS: usize = 16;
/// A listed reason, at most (bytes).
const REASON_BYTES: usize = 512;

/// The rejected inputs of one origin in one batch.
#[derive(Debug)]
struct Rejections {
    source: String,
    origin: String,
    /// The first rejected input's line.
    line: Option<i64>,
    reasons: Vec<(Option<i64>, String)>,
    count: usize,
    /// Their raw bytes, each on its line, at most `DEAD_LETTER_RAW_BYTES`.
    raw: Vec<u8>,
}

impl Rejections {
    fn record(self) -> DeadLetterRecord {
        let reason = if self.count == 1 {
            self.reasons.into_iter().next().map(|(_, r)| r).unwrap_or_default()
        } else {
            let mut text = format!("{} inputs rejected", self.count);
            for (line, reason) in &self.reasons {
                match line {
                    Some(l) => text.push_str(&format!("; line {l}: {reason}")),
                    None => text.push_str(&format!("; {reason}")),
                }
            }
            if self.count > self.reasons.len() {
                text.push_str(&format!("; and {} more", self.count - self.reasons.len()));
            }
            text
        };
        DeadLetterRecord::new(&self.source, &self.origin, self.line, reason, &self.raw)
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Batch {
    pub fn new(source: &'static str) -> Self {
        Batch { source, records: Vec::new(), rejections: Vec::new(), events: 0, dead_letters: 0 }
    }

    /// Adds an event, stamped as ingested at `now_ms`.
    /// A mapping always makes valid events; should one not be, it goes on the log as JSON
    /// and the processor dead-letters it with the reason.
    pub fn event(&mut self, mut event: Event<'_>, now_ms: i64) {
        match event.validate() {
            Ok(typed) => self.validated_event(&event, typed, now_ms),
            Err(_) => {
                event.ingested_at = Some(format_rfc3339_ms(now_ms).into());
                self.records.push((event_key(&event).to_vec(), event.to_json().into_bytes()));
                self.events += 1;
            }
        }
    }

    /// Adds an event the caller has checked (`typed` is its [`Event::validate`]), stamped as
    /// ingested at `now_ms`.
    pub fn validated_event(&mut self, event: &Event<'_>, typed: Validated, now_ms: i64) {
        let mut value = Vec::with_capacity(160);
        encode_event(event, &Validated { ingested_at_ms: Some(now_ms), ..typed }, &mut value);
        self.records.push((event_key(event).to_vec(), value));
        self.events += 1;
    }

    /// Adds a rejected input from `origin` (its 1-based `line` when it has lines): it joins
    /// the dead letter of the origin's other rejections in this batch.
    pub fn reject(&mut self, source: &str, origin: &str, line: Option<i64>, reason: String, raw: &[u8]) {
        self.dead_letters += 1;
        // Most batches have one origin: the last one is looked at first.
        let same = |r: &Rejections| r.origin == origin && r.source == source;
        let last = self.rejections.len().checked_sub(1).filter(|&i| same(&self.rejections[i]));
        let at = match last.or_else(|| self.rejections.iter().position(same)) {
            Some(at) => at,
            None => {
                self.rejections.push(Rejections {
                    source: source.to_string(),
                    origin: origin.to_string(),
                    line,
                    reasons: Vec::new(),
                    count: 0,
                    raw: Vec::new(),
                });
                self.rejections.len() - 1
            }
        };
        let r = &mut self.rejections[at];
        r.count += 1;
        if r.reasons.len() < LISTED_REASONS {
            let reason =
                if reason.len() > REASON_BYTES { format!("{}…", prefix(&reason, REASON_BYTES)) } else { reason };
            r.reasons.push((line, reason));
        }
        let room = super::DEAD_LETTER_RAW_BYTES.saturating_sub(r.raw.len() + usize::from(!r.raw.is_empty()));
        if room > 0 {
            if !r.raw.is_empty() {
                r.raw.push(b'\n');
            }
            r.raw.extend_from_slice(&raw[..raw.len().min(room)]);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.rejections.is_empty()
    }

    /// Turns the rejections into dead letters, as many as `budget` allows.
    fn seal(&mut self, budget: &DeadLetterBudget, telemetry: &Telemetry) {
        for r in self.rejections.drain(..) {
            if budget.take(self.source) {
                self.records.push((DEAD_LETTER_KEY.to_vec(), r.record().to_json()));
            } else {
                telemetry.dead_letters_dropped.with_label_values(&[self.source]).inc();
            }
        }
    }
}

/// At most `per_second` dead letters per source on average, in bursts of at most `burst`
/// (a token bucket per source).
#[derive(Debug)]
pub struct DeadLetterBudget {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<&'static str, (f64, Instant, bool)>>,
}

impl DeadLetterBudget {
    pub fn new(per_second: f64, burst: u32) -> Self {
        DeadLetterBudget { per_second, burst: f64::from(burst.max(1)), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one dead letter of `source` from its bucket; false when it is empty.
    pub fn take(&self, source: &'static str) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at, dropping) = buckets.entry(source).or_insert((self.burst, now, false));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            if std::mem::take(dropping) {
                tracing::info!(source, "dead letters are written again");
            }
            true
        } else {
            if !std::mem::replace(dropping, true) {
                tracing::warn!(
                    source,
                    per_second = self.per_second,
                    "dead letters past the source's rate are dropped (counted in ccstream_ingest_dead_letters_dropped_total)"
                );
            }
            false
        }
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
    budget: Arc<DeadLetterBudget>,
    telemetry: Arc<Telemetry>,
}

/// Records per append, at most.
const MAX_APPEND: usize = 8192;

impl Publisher {
    /// Starts the writer task on `log`, stamping records with `now_ms()`; dead letters are
    /// written within `budget`.
    pub fn spawn(
        log: Arc<dyn EventLog>,
        telemetry: Arc<Telemetry>,
        budget: DeadLetterBudget,
        now_ms: fn() -> i64,
    ) -> Publisher {
        let (tx, mut rx) = mpsc::channel::<(Batch, Option<Ack>)>(1024);
        let publisher = Publisher { tx, budget: Arc::new(budget), telemetry: Arc::clone(&telemetry) };
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
        publisher
    }

    /// Appends `batch` and waits until it is durable.
    pub async fn publish(&self, mut batch: Batch) -> Result<(), PublishError> {
        batch.seal(&self.budget, &self.telemetry);
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
    pub async fn send(&self, mut batch: Batch) -> Result<(), PublishError> {
        batch.seal(&self.budget, &self.telemetry);
        if batch.is_empty() {
            return Ok(());
        }
        self.tx.send((batch, None)).await.map_err(|_| PublishError("the writer stopped".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letters(b: &Batch) -> Vec<DeadLetterRecord> {
        b.records
            .iter()
            .filter(|(k, _)| k == DEAD_LETTER_KEY)
            .map(|(_, v)| serde_json::from_slice(v).unwrap())
            .collect()
    }

    #[test]
    fn the_rejections_of_an_origin_are_one_dead_letter_with_their_reasons() {
        let mut b = Batch::new("events");
        for line in 1..=40 {
            b.reject("events", "peer a", Some(line), format!("bad {line}"), &[b'x'; 4096]);
        }
        b.reject("events", "peer b", None, "alone".into(), b"y");
        b.seal(&DeadLetterBudget::new(1.0, 10), &Telemetry::new());
        let d = dead_letters(&b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].line, Some(1));
        assert!(d[0].reason.starts_with("40 inputs rejected; line 1: bad 1; line 2: bad 2;"), "{}", d[0].reason);
        assert!(d[0].reason.ends_with("line 16: bad 16; and 24 more"), "{}", d[0].reason);
        let raw = d[0].raw.as_deref().unwrap();
        assert_eq!(raw.len(), super::super::DEAD_LETTER_RAW_BYTES);
        assert!(raw.starts_with(&format!("{}\nxx", "x".repeat(4096))));
        assert_eq!((d[1].reason.as_str(), d[1].raw.as_deref(), d[1].line), ("alone", Some("y"), None));
        assert_eq!(b.dead_letters, 41);
    }

    #[test]
    fn a_source_past_its_budget_writes_no_more_dead_letters() {
        let (budget, telemetry) = (DeadLetterBudget::new(0.0001, 3), Telemetry::new());
        let mut written = 0;
        for i in 0..10 {
            let mut b = Batch::new("sbc");
            b.reject("sbc", &format!("peer {i}"), None, "garbage".into(), b"x");
            b.seal(&budget, &telemetry);
            written += dead_letters(&b).len();
        }
        assert_eq!(written, 3);
        assert_eq!(telemetry.dead_letters_dropped.with_label_values(&["sbc"]).get(), 7);
        // Another source has its own bucket.
        assert!(budget.take("events"));
    }
}
