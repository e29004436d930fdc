#![no_main]
use ccstream_ingest::acs::{parse_delivery, AcsMapper, Delivery};
libfuzzer_sys::fuzz_target!(|data: &[u8]| if let Ok(Delivery::Events(es)) = parse_delivery(data) { es.iter().for_each(|e| drop(AcsMapper::new("t", vec![]).map(e))) });
