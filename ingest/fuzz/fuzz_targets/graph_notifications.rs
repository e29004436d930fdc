#![no_main]
use ccstream_ingest::graph::{bot, logs, notify, presence};
libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = (bot::map(data, "t", 0), logs::map_page(logs::Log::DirectRouting, data, "t"), notify::parse(data).map(|n| n.iter().map(|n| n.resource_id()).count()), presence::parse(data)); });
