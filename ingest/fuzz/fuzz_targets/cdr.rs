#![no_main]
use ccstream_ingest::sbc::SbcMapper;
libfuzzer_sys::fuzz_target!(|data: &[u8]| { let mut m = SbcMapper::new("t", vec![]); data.split(|b| *b == b'\n').for_each(|l| drop(m.map_cdr_line("s", l, 0))); });
