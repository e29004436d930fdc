//! How canonical events travel on the event log: one event per record.
//!
//! - **Value**: the event in one of two forms, told apart by the first byte:
//!   - its JSON form (one object, UTF-8, no newline), exactly as in JSONL files, so any
//!     producer that can write JSON can feed ccstream;
//!   - its binary form ([`encode_event`], [`decode_event`]), which ccstream's own ingestors
//!     write: about half the bytes, and read without a text parser. It starts with
//!     [`BINARY_MAGIC`], a byte that never begins JSON text (nor any UTF-8 text).
//! - **Key**: the call key — `call_id`, or `agent_id` for agent events, or `event_id` for
//!   anything else — so every event of one call lands in one log partition.
//! - **Dead letters**: input that an ingestor rejected still goes on the log, under the key
//!   [`DEAD_LETTER_KEY`] with a [`DeadLetterRecord`] as the value, so the processor commits
//!   it to `dead_letters` exactly once, with the same offsets as everything else.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventError, EventType, Validated};

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

/// First byte of a binary event record (`0xC1` is never valid in UTF-8).
pub const BINARY_MAGIC: u8 = 0xC1;
/// Second byte: the layout version this build writes and reads.
pub const BINARY_VERSION: u8 = 1;

/// The optional fields of the binary form, in the order their bits and values appear.
/// `event_type` and `occurred_at` are always present and come first, typed.
/// Each field's getter (to encode) and setter (to decode, in place).
#[derive(Clone, Copy)]
enum Slot {
    Text(for<'e> fn(&'e Event<'_>) -> Option<&'e str>, for<'e> fn(&mut Event<'e>, &'e str)),
    Time,
    Priority,
    Float(fn(&Event<'_>) -> Option<f64>, fn(&mut Event<'_>, f64)),
}

/// The slot of a text or float field: its getter and setter, of the same field.
macro_rules! text {
    ($field:ident) => {
        Slot::Text(|e| e.$field.as_deref(), |e, t| e.$field = Some(Cow::Borrowed(t)))
    };
}
macro_rules! float {
    ($field:ident) => {
        Slot::Float(|e| e.$field, |e, v| e.$field = Some(v))
    };
}

const SLOTS: [Slot; 21] = [
    text!(event_id),
    text!(tenant_id),
    text!(source),
    text!(call_id),
    text!(queue_id),
    text!(agent_id),
    Slot::Time,
    Slot::Priority,
    text!(overflow_from_queue_id),
    text!(transfer_type),
    text!(target_agent_id),
    text!(disconnect_by),
    text!(wrapup_code),
    text!(from_state),
    text!(to_state),
    text!(state_reason),
    float!(jitter_ms),
    float!(packet_loss_rate),
    float!(round_trip_ms),
    float!(audio_degradation),
    text!(payload),
];

/// Appends the binary form of `event` (already checked: `typed` is what
/// [`Event::validate`] returned) to `out`.
///
/// Layout (version 1; integers little-endian):
///
/// | bytes | content |
/// |---|---|
/// | 1 | [`BINARY_MAGIC`] |
/// | 1 | [`BINARY_VERSION`] |
/// | 4 | presence bits of the 21 optional fields, bit *i* = field *i* below |
/// | 1 | `event_type` (its discriminant) |
/// | 8 | `occurred_at`, epoch ms |
/// | … | each present field in order: `event_id`, `tenant_id`, `source`, `call_id`, `queue_id`, `agent_id` (text), `ingested_at` (8, epoch ms), `priority` (1), `overflow_from_queue_id`, `transfer_type`, `target_agent_id`, `disconnect_by`, `wrapup_code`, `from_state`, `to_state`, `state_reason` (text), `jitter_ms`, `packet_loss_rate`, `round_trip_ms`, `audio_degradation` (8, IEEE 754), `payload` (text) |
///
/// Text is a LEB128 length, then UTF-8 bytes.
pub fn encode_event(event: &Event<'_>, typed: &Validated, out: &mut Vec<u8>) {
    out.extend_from_slice(&[BINARY_MAGIC, BINARY_VERSION]);
    let bits_at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(typed.event_type as u8);
    out.extend_from_slice(&typed.occurred_at_ms.to_le_bytes());
    let mut bits = 0u32;
    for (i, slot) in SLOTS.iter().enumerate() {
        let present = match *slot {
            Slot::Text(get, _) => get(event).map(|t| {
                let mut n = t.len() as u64;
                while n >= 0x80 {
                    out.push(n as u8 | 0x80);
                    n >>= 7;
                }
                out.push(n as u8);
                out.extend_from_slice(t.as_bytes());
            }),
            Slot::Time => typed.ingested_at_ms.map(|t| out.extend_from_slice(&t.to_le_bytes())),
            Slot::Priority => event.priority.map(|p| out.push(p as u8)),
            Slot::Float(get, _) => get(event).map(|f| out.extend_from_slice(&f.to_le_bytes())),
        };
        bits |= (present.is_some() as u32) << i;
    }
    out[bits_at..bits_at + 4].copy_from_slice(&bits.to_le_bytes());
}

/// A cursor over a binary record; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EventError> {
        if self.rest.len() < n {
            return Err(EventError::Binary("truncated"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], EventError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn text(&mut self) -> Result<&'a str, EventError> {
        let mut n = 0u64;
        for shift in (0..35).step_by(7) {
            let [b] = self.fixed::<1>()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                let bytes = self.take(usize::try_from(n).map_err(|_| EventError::Binary("text too long"))?)?;
                // Ids and names are ASCII: checking that compares whole words, where UTF-8
                // validation walks the bytes (2.5× the time on 36-byte ids).
                if bytes.is_ascii() {
                    // SAFETY: ASCII bytes are valid UTF-8.
                    return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
                }
                return std::str::from_utf8(bytes).map_err(|_| EventError::Binary("text is not UTF-8"));
            }
        }
        Err(EventError::Binary("bad text length"))
    }
}

/// Reads a binary event record (see [`encode_event`]) and checks it as
/// [`Event::validate`] checks the JSON form. The event's text fields borrow from `value`;
/// `event_type` is set, `occurred_at` and `ingested_at` are not (they are in the
/// returned [`Validated`]). Never panics, whatever the bytes.
#[inline]
pub fn decode_event(value: &[u8]) -> Result<(Event<'_>, Validated), EventError> {
    let mut e = Event::default();
    let typed = decode_fields(value, &mut e)?;
    let typed = e.check(typed)?;
    Ok((e, typed))
}

/// [`decode_event`], the event pushed onto `out` (and taken off again if it is not valid):
/// its fields are set where it stays, instead of being built and then moved (some 500 bytes)
/// on its way there.
#[inline]
fn decode_event_into<'a>(value: &'a [u8], out: &mut Vec<(Event<'a>, Validated)>) -> Result<(), EventError> {
    let unset = Validated { event_type: EventType::ALL[0], occurred_at_ms: 0, ingested_at_ms: None };
    out.push((Event::default(), unset));
    let (e, typed) = out.last_mut().expect("pushed above");
    match decode_fields(value, e).and_then(|t| e.check(t)) {
        Ok(checked) => {
            *typed = checked;
            Ok(())
        }
        Err(err) => {
            out.pop();
            Err(err)
        }
    }
}

/// Reads a binary event record's fields into `e` (a default event: fields absent from the
/// record stay `None`), not checked; returns its typed fields.
#[inline(always)]
fn decode_fields<'a>(value: &'a [u8], e: &mut Event<'a>) -> Result<Validated, EventError> {
    let mut r = Reader { rest: value };
    let [magic, version] = r.fixed::<2>()?;
    if magic != BINARY_MAGIC {
        return Err(EventError::Binary("no binary marker"));
    }
    if version != BINARY_VERSION {
        return Err(EventError::Binary("unknown version"));
    }
    let bits = u32::from_le_bytes(r.fixed::<4>()?);
    if bits >> SLOTS.len() != 0 {
        return Err(EventError::Binary("unknown fields"));
    }
    let [code] = r.fixed::<1>()?;
    let event_type = *EventType::ALL.get(code as usize).ok_or(EventError::Binary("unknown event_type"))?;
    let occurred_at_ms = i64::from_le_bytes(r.fixed::<8>()?);
    let mut typed = Validated { event_type, occurred_at_ms, ingested_at_ms: None };
    e.event_type = Some(Cow::Borrowed(event_type.as_str()));
    for (i, slot) in SLOTS.iter().enumerate() {
        if bits & (1 << i) == 0 {
            continue;
        }
        match *slot {
            Slot::Text(_, set) => set(e, r.text()?),
            Slot::Time => typed.ingested_at_ms = Some(i64::from_le_bytes(r.fixed::<8>()?)),
            Slot::Priority => e.priority = Some(r.fixed::<1>()?[0] as i8),
            Slot::Float(_, set) => set(e, f64::from_le_bytes(r.fixed::<8>()?)),
        }
    }
    if !r.rest.is_empty() {
        return Err(EventError::Binary("trailing bytes"));
    }
    Ok(typed)
}

/// Reads a log record's value in either form: the event, checked, and its typed fields.
#[inline]
pub fn read_event(value: &[u8]) -> Result<(Event<'_>, Validated), EventError> {
    if value.first() == Some(&BINARY_MAGIC) {
        return decode_event(value);
    }
    let text = std::str::from_utf8(value).map_err(|e| EventError::Json(format!("not UTF-8: {e}")))?;
    Event::read_json(text)
}

/// [`read_event`], the event pushed onto `out` when it is valid: a batch of values read
/// into one vector builds each event in its place there.
#[inline]
pub fn read_event_into<'a>(value: &'a [u8], out: &mut Vec<(Event<'a>, Validated)>) -> Result<(), EventError> {
    if value.first() == Some(&BINARY_MAGIC) {
        return decode_event_into(value, out);
    }
    out.push(read_event(value)?);
    Ok(())
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
    use proptest::prelude::*;

    const LINE: &str = r#"{"event_id":"dbaa9c7d-cd26-480c-a685-5a09daff8667","tenant_id":"t0001","call_id":"b5c9f8a9-8be3-49c0-9f09-e77f216495fe","queue_id":"t0001-q02","agent_id":null,"event_type":"call_queued","occurred_at":"2026-01-04T17:00:21.926Z","priority":2}"#;

    fn binary(line: &str) -> Vec<u8> {
        let e = Event::from_json(line).unwrap();
        let mut out = Vec::new();
        encode_event(&e, &e.validate().unwrap(), &mut out);
        out
    }

    /// The same event read back from its JSON form and from its binary form.
    fn same_in_both_forms(line: &str) {
        let json = Event::from_json(line).unwrap();
        let typed = json.validate().unwrap();
        let bytes = binary(line);
        let (back, back_typed) = read_event(&bytes).unwrap();
        assert_eq!(back_typed, typed);
        let expected = Event { occurred_at: None, ingested_at: None, ..json.clone() };
        assert_eq!(back, expected);
        assert_eq!(read_event(line.as_bytes()).unwrap(), (json, typed));
    }

    #[test]
    fn event_types_are_stored_by_discriminant() {
        for (i, t) in EventType::ALL.into_iter().enumerate() {
            assert_eq!(t as usize, i);
        }
    }

    #[test]
    fn binary_form_layout() {
        // Golden bytes: changing the layout needs a new BINARY_VERSION.
        let bytes = binary(LINE);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        insta::assert_snapshot!(hex, @"c1019b0000000026e8f3899b0100002464626161396337642d636432362d343830632d613638352d3561303964616666383636370574303030312462356339663861392d386265332d343963302d396630392d6537376632313634393566650974303030312d71303202");
        assert!(bytes.len() * 2 < LINE.len(), "{} bytes for {} of JSON", bytes.len(), LINE.len());
        same_in_both_forms(LINE);
    }

    #[test]
    fn every_field_round_trips() {
        let full = r#"{"event_id":"e","tenant_id":"t","source":"sbc.cdr","call_id":"c","queue_id":"q","agent_id":"a","event_type":"media_stream","occurred_at":"2026-01-04T17:00:21.926Z","ingested_at":"2026-01-04T17:00:22.000Z","priority":-3,"overflow_from_queue_id":"o","transfer_type":"blind","target_agent_id":"b","disconnect_by":"caller","wrapup_code":"w","from_state":"f","to_state":"s","state_reason":"r","jitter_ms":1.5,"packet_loss_rate":0.01,"round_trip_ms":80.25,"audio_degradation":0.0,"payload":"{\"k\":\"\u00e9\"}"}"#;
        same_in_both_forms(full);
        let long = format!(
            r#"{{"event_id":"e","tenant_id":"t","event_type":"call_state","call_id":"c","occurred_at":"2026-01-04T17:00:21.926Z","payload":"{}"}}"#,
            "x".repeat(70_000)
        );
        same_in_both_forms(&long);
    }

    #[test]
    fn binary_records_are_checked_like_json() {
        let good = binary(LINE);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "truncated"),
            ([&good[..], b"x"].concat(), "trailing bytes"),
            (
                {
                    let mut b = good.clone();
                    b[1] = 9;
                    b
                },
                "unknown version",
            ),
            (
                {
                    let mut b = good.clone();
                    b[5] = 0x80;
                    b
                },
                "unknown fields",
            ),
            (
                {
                    let mut b = good.clone();
                    b[6] = 99;
                    b
                },
                "unknown event_type",
            ),
            (
                {
                    let mut b = good.clone();
                    b[2] &= !0b1000;
                    b
                },
                "trailing bytes",
            ),
        ];
        for (bytes, reason) in cases {
            assert_eq!(
                read_event(&bytes).unwrap_err().to_string(),
                format!("not a valid binary event record: {reason}")
            );
        }
        // The rules of the JSON form hold too: a call event needs its call.
        let mut e = Event::from_json(LINE).unwrap();
        let typed = e.validate().unwrap();
        e.call_id = None;
        let mut bytes = Vec::new();
        encode_event(&e, &typed, &mut bytes);
        assert_eq!(read_event(&bytes).unwrap_err(), EventError::NoCall("call_queued"));
        // Read into a vector, an event that fails its checks is taken off again.
        let (mut out, kept) = (Vec::new(), read_event(&good).unwrap());
        read_event_into(&good, &mut out).unwrap();
        assert_eq!(read_event_into(&bytes, &mut out).unwrap_err(), EventError::NoCall("call_queued"));
        read_event_into(LINE.as_bytes(), &mut out).unwrap();
        assert_eq!(out, vec![kept, read_event(LINE.as_bytes()).unwrap()]);
        let mut bad_utf8 = good.clone();
        let at = bad_utf8.iter().position(|&b| b == b'd').unwrap();
        bad_utf8[at] = 0xff;
        assert_eq!(read_event(&bad_utf8).unwrap_err(), EventError::Binary("text is not UTF-8"));
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_or_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..200), marked in any::<bool>()) {
            let mut bytes = bytes;
            if marked && bytes.len() >= 2 {
                bytes[0] = BINARY_MAGIC;
                bytes[1] = BINARY_VERSION;
            }
            let mut out = Vec::new();
            match (read_event(&bytes), read_event_into(&bytes, &mut out)) {
                (Ok(one), Ok(())) => prop_assert_eq!(out, vec![one]),
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a, b);
                    prop_assert!(out.is_empty());
                }
                (a, b) => prop_assert!(false, "read_event gave {:?}, read_event_into {:?}", a, b),
            }
        }

        #[test]
        fn encoded_events_read_back(
            ids in proptest::collection::vec(proptest::option::of("[a-z0-9\\-é]{1,40}"), 6),
            t in any::<i64>(), ingested in proptest::option::of(any::<i64>()), priority in proptest::option::of(any::<i8>()),
            code in 0usize..15, media in proptest::collection::vec(proptest::option::of(-1e9f64..1e9), 4),
            payload in proptest::option::of(".{0,300}"),
        ) {
            let event_type = EventType::ALL[code];
            let e = Event {
                event_id: Some("e".into()),
                tenant_id: Some("t".into()),
                call_id: Some(ids[0].clone().unwrap_or_else(|| "c".into()).into()),
                source: ids[1].clone().map(Into::into),
                queue_id: ids[2].clone().map(Into::into),
                agent_id: ids[3].clone().map(Into::into),
                wrapup_code: ids[4].clone().map(Into::into),
                state_reason: ids[5].clone().map(Into::into),
                event_type: Some(event_type.as_str().into()),
                priority,
                jitter_ms: media[0], packet_loss_rate: media[1], round_trip_ms: media[2], audio_degradation: media[3],
                payload: payload.map(Into::into),
                ..Event::default()
            };
            let typed = Validated { event_type, occurred_at_ms: t, ingested_at_ms: ingested };
            let mut bytes = Vec::new();
            encode_event(&e, &typed, &mut bytes);
            let (back, back_typed) = decode_event(&bytes).unwrap();
            prop_assert_eq!(back_typed, typed);
            prop_assert_eq!(&back, &e);
            let mut out = Vec::new();
            read_event_into(&bytes, &mut out).unwrap();
            prop_assert_eq!(out, vec![(e, typed)]);
        }
    }

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
