#![no_main]
use ccstream_ingest::graph::callrecord::{map_record, parse_record};
libfuzzer_sys::fuzz_target!(|data: &[u8]| if let Ok(r) = parse_record(data) { let _ = map_record(&r, "", "t"); });
