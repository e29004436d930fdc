#![no_main]
use ccstream_ingest::sbc::SbcMapper;
libfuzzer_sys::fuzz_target!(|data: &[u8]| data.split(|b| *b == b'\n').for_each(|l| drop(SbcMapper::new("t", vec![]).map_cdr_line("s", l, 0))));
