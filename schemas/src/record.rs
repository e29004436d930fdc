//! How canonical events travel on the event log: one event per record.
//!
//! - **Value**: the event's JSON form (one object, UTF-8, no newline), exactly as in JSONL
//!   files, so any producer that can write JSON can feed ccstream.
//! - **Key**: the call key — `call_id`, or `agent_id` for agent events, or `event_id` for
//!   anything else — so every event of one call lands in one log partition.
//! - **Dead letters**: input that an ingestor rejected still goes on the log, under the key
//!   [`DEAD_LETTER_KEY`] with a [`DeadLetterRecord`] as the value, so the processor commits
//!   it to `dead_letters` exactly once, with the same offsets as everything else.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// The key of a dead-letter record. Starts with NUL, which no call key does.
pub const DEAD_LETTER_KEY: &[u8] = b"\0dead-letter";

/// The log key of an event (see the module docs).
pub fn event_key<'e>(event: &'e Event<'_>) -> &'e [u8] {
    [event.call_id.as_deref(), event.agent_id.as_deref(), event.event_id.as_deref()]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .unwrap_or("")
        .as_bytes()
}

/// Rejected input on its way to the `dead_letters` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterRecord {
    /// The source kind, e.g. `file.jsonl`.
    pub source: String,
    /// Where the input came from (a file path, a peer address).
    pub origin: String,
    /// The 1-based line or row in `origin`, when it has lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<i64>,
    pub reason: String,
    /// The raw input when it is UTF-8 …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// … and as hex when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_hex: Option<String>,
}

impl DeadLetterRecord {
    /// A dead letter for `raw` (kept whole: the table bounds what it stores).
    pub fn new(source: &str, origin: &str, line: Option<i64>, reason: String, raw: &[u8]) -> Self {
        let (raw, raw_hex) = match std::str::from_utf8(raw) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (None, Some(raw.iter().map(|b| format!("{b:02x}")).collect())),
        };
        DeadLetterRecord { source: source.to_string(), origin: origin.to_string(), line, reason, raw, raw_hex }
    }

    /// The raw input bytes.
    pub fn raw_bytes(&self) -> Vec<u8> {
        if let Some(s) = &self.raw {
            return s.as_bytes().to_vec();
        }
        let hex = self.raw_hex.as_deref().unwrap_or("").as_bytes();
        hex.chunks(2).filter_map(|c| std::str::from_utf8(c).ok().and_then(|s| u8::from_str_radix(s, 16).ok())).collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a dead letter always serializes")
    }

    pub fn from_json(value: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventType;

    #[test]
    fn keys_prefer_the_call() {
        let mut e = Event::new("e1".into(), "t".into(), EventType::AgentStateChanged, 0);
        assert_eq!(event_key(&e), b"e1");
        e.agent_id = Some("a1".into());
        assert_eq!(event_key(&e), b"a1");
        e.call_id = Some("c1".into());
        assert_eq!(event_key(&e), b"c1");
        e.call_id = Some("".into());
        assert_eq!(event_key(&e), b"a1");
    }

    #[test]
    fn dead_letters_keep_every_byte() {
        for raw in [&b"{\"event_id\": 1"[..], &[0xff, 0x00, 0x41][..]] {
            let d = DeadLetterRecord::new("file.jsonl", "x.jsonl", Some(3), "bad".into(), raw);
            let back = DeadLetterRecord::from_json(&d.to_json()).unwrap();
            assert_eq!(back, d);
            assert_eq!(back.raw_bytes(), raw);
        }
        insta::assert_snapshot!(
            String::from_utf8(DeadLetterRecord::new("file.jsonl", "in.jsonl", Some(7), "missing field".into(), b"{}").to_json()).unwrap(),
            @r#"{"source":"file.jsonl","origin":"in.jsonl","line":7,"reason":"missing field","raw":"{}"}"#
        );
    }
}
