//! Input files framed as event-log records (sans-IO): each valid event becomes one record
//! (key = call key, value = its binary form); each rejected line or row becomes a dead-letter
//! record with its file, line and reason. See `ccstream_schemas::event_key` and
//! `DeadLetterRecord` for the record contract.

use std::ops::Range;

use arrow::array::RecordBatch;
use ccstream_eventlog::RecordRef;
use ccstream_schemas::{
    encode_event, event_key, format_rfc3339_ms, DeadLetterRecord, Event, Validated, DEAD_LETTER_KEY,
};

use super::{Format, InputFile};
use crate::Error;

/// The form of event record values (both are part of the log contract; the processor
/// reads either).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ValueForm {
    /// The binary form: half the bytes, no text parsing in the processor.
    #[default]
    Binary,
    /// The JSON form, for other consumers of the same topic.
    Json,
}

/// Log records built from a chunk, in input order, in one buffer.
#[derive(Debug, Default)]
pub struct LogRecords {
    bytes: Vec<u8>,
    spans: Vec<(Range<usize>, Range<usize>)>,
    timestamp_ms: i64,
    form: ValueForm,
    /// Valid events among the records.
    pub events: u64,
    /// Dead letters among the records.
    pub dead_letters: u64,
}

impl LogRecords {
    /// Empty, stamping records with `timestamp_ms` (the ingestion time).
    pub fn new(timestamp_ms: i64) -> Self {
        LogRecords { timestamp_ms, ..LogRecords::default() }
    }

    /// Writes event values in `form` (binary unless told).
    pub fn with_value_form(mut self, form: ValueForm) -> Self {
        self.form = form;
        self
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Forgets the records (keeps the buffers and the counters).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    /// The records, ready for `EventLog::append`.
    pub fn refs(&self) -> Vec<RecordRef<'_>> {
        self.spans
            .iter()
            .map(|(k, v)| RecordRef {
                key: &self.bytes[k.clone()],
                value: &self.bytes[v.clone()],
                timestamp_ms: self.timestamp_ms,
            })
            .collect()
    }

    fn push(&mut self, key: &[u8], value: &[u8]) {
        let k0 = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let v0 = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.spans.push((k0..v0, v0..self.bytes.len()));
    }

    /// Adds a checked event as a record; `text` is its JSON form as read, if it was.
    fn push_event(&mut self, event: &Event<'_>, typed: &Validated, text: Option<&str>) {
        let k0 = self.bytes.len();
        self.bytes.extend_from_slice(event_key(event));
        let v0 = self.bytes.len();
        match (self.form, text) {
            (ValueForm::Binary, _) => encode_event(event, typed, &mut self.bytes),
            (ValueForm::Json, Some(text)) => self.bytes.extend_from_slice(text.trim().as_bytes()),
            (ValueForm::Json, None) => {
                let stamped =
                    Event { ingested_at: typed.ingested_at_ms.map(|t| format_rfc3339_ms(t).into()), ..event.clone() };
                self.bytes.extend_from_slice(stamped.to_json().as_bytes());
            }
        }
        self.spans.push((k0..v0, v0..self.bytes.len()));
        self.events += 1;
    }

    fn push_dead(&mut self, file: &InputFile, line: u64, reason: String, raw: &[u8]) {
        let d = DeadLetterRecord::new(
            source_name(file.format),
            &file.path.display().to_string(),
            Some(line as i64),
            reason,
            raw,
        );
        self.push(DEAD_LETTER_KEY, &d.to_json());
        self.dead_letters += 1;
    }

    /// Adds one JSON line (number `line` of `file`): an event record or a dead letter.
    /// Blank lines are skipped.
    pub fn add_line(&mut self, file: &InputFile, line: u64, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => return self.push_dead(file, line, format!("not UTF-8: {e}"), raw),
        };
        match Event::read_json(text) {
            Ok((event, typed)) => self.push_event(&event, &typed, Some(text)),
            Err(e) => self.push_dead(file, line, e.to_string(), raw),
        }
    }

    /// Adds the lines of a JSON Lines chunk whose first line is number `first_line`.
    pub fn add_lines(&mut self, file: &InputFile, first_line: u64, data: &[u8]) {
        for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
            self.add_line(file, first_line + i as u64, raw);
        }
    }

    /// Adds the lines of an SBC CDR file (`path`, first line number `first_line`) mapped by
    /// `mapper`: an event per CDR row, a dead letter per rejected line; title rows and blank
    /// lines add nothing.
    pub fn add_cdr_lines(&mut self, mapper: &mut crate::sbc::SbcMapper, path: &str, first_line: u64, data: &[u8]) {
        for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let mapped = match mapper.map_cdr_line(path, raw, self.timestamp_ms) {
                Ok(None) => continue,
                Ok(Some(e)) => e
                    .validate()
                    .map(|typed| (e, Validated { ingested_at_ms: Some(self.timestamp_ms), ..typed }))
                    .map_err(|err| err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            match mapped {
                Ok((e, typed)) => self.push_event(&e, &typed, None),
                Err(reason) => {
                    let line = (first_line + i as u64) as i64;
                    let d = DeadLetterRecord::new(crate::sbc::SOURCE_CDR, path, Some(line), reason, raw);
                    self.push(DEAD_LETTER_KEY, &d.to_json());
                    self.dead_letters += 1;
                }
            }
        }
    }

    /// Adds the rows of a Parquet batch whose first row has 0-based index `first_row`
    /// (each row is written as its JSON form, then checked like a line). A `day` column
    /// (the `events` table's partition, derived from `occurred_at`: files of that table and
    /// `ccstream generate --format parquet` carry it) is left out, not taken for an
    /// unknown field.
    pub fn add_batch(&mut self, file: &InputFile, first_row: u64, batch: &RecordBatch) -> Result<(), Error> {
        let mut batch = batch.clone();
        if let Ok(day) = batch.schema().index_of("day") {
            batch.remove_column(day);
        }
        let mut buf = Vec::with_capacity(batch.num_rows() * 300);
        {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
            w.write(&batch).map_err(|e| Error::Json { path: file.path.display().to_string(), source: e })?;
            w.finish().map_err(|e| Error::Json { path: file.path.display().to_string(), source: e })?;
        }
        let mut row = first_row + 1;
        for raw in buf.split(|&b| b == b'\n') {
            if raw.is_empty() {
                continue;
            }
            self.add_line(file, row, raw);
            row += 1;
        }
        Ok(())
    }
}

/// The `source` of a file's dead letters.
pub fn source_name(format: Format) -> &'static str {
    match format {
        Format::Jsonl { .. } => "file.jsonl",
        Format::Parquet => "file.parquet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file() -> InputFile {
        InputFile { path: PathBuf::from("in.jsonl"), format: Format::Jsonl { gzip: false }, bytes: 0 }
    }

    #[test]
    fn lines_become_keyed_records_or_dead_letters() {
        let data = b"{\"event_id\":\"e1\",\"tenant_id\":\"t\",\"call_id\":\"c9\",\"event_type\":\"call_queued\",\"occurred_at\":\"2025-01-01T00:00:00.000Z\"}\n\
                     \n\
                     {\"event_id\": broken\n\
                     {\"event_id\":\"e2\",\"tenant_id\":\"t\",\"event_type\":\"call_queued\",\"occurred_at\":\"2025-01-01T00:00:00.000Z\"}";
        let mut r = LogRecords::new(5);
        r.add_lines(&file(), 10, data);
        assert_eq!((r.events, r.dead_letters, r.len()), (1, 2, 3));
        let refs = r.refs();
        assert_eq!(refs[0].key, b"c9");
        let (event, typed) = ccstream_schemas::decode_event(refs[0].value).unwrap();
        assert_eq!((event.event_id.as_deref(), event.call_id.as_deref()), (Some("e1"), Some("c9")));
        assert_eq!(typed.occurred_at_ms, 1_735_689_600_000);
        assert_eq!(refs[0].timestamp_ms, 5);
        assert_eq!(refs[1].key, DEAD_LETTER_KEY);
        let d = DeadLetterRecord::from_json(refs[1].value).unwrap();
        assert_eq!((d.line, d.origin.as_str()), (Some(12), "in.jsonl"));
        let d = DeadLetterRecord::from_json(refs[2].value).unwrap();
        assert_eq!(d.line, Some(13));
        assert!(d.reason.contains("call_id"), "{}", d.reason);
    }

    #[test]
    fn parquet_rows_with_the_events_day_column_are_events() {
        use arrow::array::{ArrayRef, Date32Array, StringArray};
        use std::sync::Arc;
        let text = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
        let batch = RecordBatch::try_from_iter([
            ("event_id", text("e1")),
            ("tenant_id", text("t")),
            ("call_id", text("c9")),
            ("event_type", text("call_queued")),
            ("occurred_at", text("2025-01-01T00:00:00.000Z")),
            ("day", Arc::new(Date32Array::from(vec![20089])) as ArrayRef),
        ])
        .unwrap();
        let parquet = InputFile { path: PathBuf::from("in.parquet"), format: Format::Parquet, bytes: 0 };
        let mut r = LogRecords::new(5);
        r.add_batch(&parquet, 0, &batch).unwrap();
        assert_eq!((r.events, r.dead_letters), (1, 0));
        // Any other unknown column is still a dead letter.
        let other = RecordBatch::try_from_iter([("event_id", text("e2")), ("colour", text("red"))]).unwrap();
        r.add_batch(&parquet, 1, &other).unwrap();
        assert_eq!((r.events, r.dead_letters), (1, 1));
    }
}
