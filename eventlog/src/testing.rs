//! Test support (feature `testing`): where the Kafka-protocol broker for the Kafka suites is.
//!
//! `.ci/run` starts a broker (tansu) and exports `CCSTREAM_KAFKA_BROKERS`. A Kafka test that
//! finds no broker fails with this module's message; it never passes without one.

use std::sync::atomic::{AtomicU32, Ordering};

/// The broker list from `CCSTREAM_KAFKA_BROKERS`; panics with instructions when it is unset.
pub fn kafka_brokers() -> String {
    match std::env::var("CCSTREAM_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "this test needs a Kafka-protocol broker: set CCSTREAM_KAFKA_BROKERS=HOST:PORT \
             (`.ci/run` installs and starts tansu and sets it)"
        ),
    }
}

/// A topic name no other test (or earlier run against the same broker) uses.
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}-{}", std::process::id(), nanos % 1_000_000_000, N.fetch_add(1, Ordering::Relaxed))
}

/// `kafka://BROKERS/TOPIC?QUERY` for a fresh topic. The query comes from
/// `CCSTREAM_KAFKA_URL_QUERY`, by default `seek=scan` (the CI broker, tansu 0.6, cannot fetch
/// from inside a record batch); set it to `seek=exact` against Apache Kafka or Redpanda.
pub fn kafka_url(prefix: &str) -> String {
    let query = std::env::var("CCSTREAM_KAFKA_URL_QUERY").unwrap_or_else(|_| "seek=scan".into());
    format!("kafka://{}/{}?{query}", kafka_brokers(), unique_topic(prefix))
}
