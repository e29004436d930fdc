#![no_main]
use ccstream_ingest::sbc::{sip, SbcMapper};
libfuzzer_sys::fuzz_target!(|data: &[u8]| if let Ok(r) = sip::parse_request(data) { let _ = (sip::response(&r, 200, "OK", &[]), SbcMapper::new("t", vec![]).map_vq_report("s", r.body, 0)); });
