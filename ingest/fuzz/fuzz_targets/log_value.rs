#![no_main]
use ccstream_schemas::{decode_event, encode_event, read_event};
// A log record value (binary or JSON form) is read or rejected, never a panic; what is read
// encodes to a binary form that reads back the same.
libfuzzer_sys::fuzz_target!(|data: &[u8]| if let Ok((event, typed)) = read_event(data) {
    let mut bytes = Vec::new();
    encode_event(&event, &typed, &mut bytes);
    let (again, again_typed) = decode_event(&bytes).expect("an encoded event reads back");
    assert_eq!(again_typed, typed);
    assert_eq!((again.event_id, again.call_id, again.payload), (event.event_id, event.call_id, event.payload));
});
