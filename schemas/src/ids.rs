//! Identifier keys: event and call ids as 16-byte values.
//!
//! Most ids are lowercase canonical RFC 4122 UUIDs (`8-4-4-4-12` hex, variant `10`): those
//! become the UUID's own 128 bits, and format back to the same text. Any other id (an SBC
//! session id, an uppercase GUID, a Job Router job id) is interned by the caller into a
//! sequence number `n` and keyed as `OTHER_TAG | n`, whose variant bits are `11`: the two
//! key spaces never overlap, so equal keys mean equal ids, exactly.

/// A 128-bit key for an id string (see the module doc).
pub type IdKey = u128;

const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Variant bits (bits 62..64 of the low half) of keys that are not UUIDs.
pub const OTHER_TAG: u128 = 0b11 << 62;

/// Byte offsets of the 32 hex digits of a canonical UUID.
const HEX_AT: [usize; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
    35,
];

/// Parses a lowercase canonical RFC 4122 UUID (variant `10`) into its 128 bits.
/// Anything else returns `None` and must be interned.
#[inline]
pub fn parse_uuid(s: &[u8]) -> Option<IdKey> {
    let s: &[u8; 36] = s.try_into().ok()?;
    if s[8] != b'-' || s[13] != b'-' || s[18] != b'-' || s[23] != b'-' {
        return None;
    }
    // Two 64-bit halves, no branches per digit; invalid digits map to 0xff and are
    // caught once at the end.
    let mut hi: u64 = 0;
    let mut lo: u64 = 0;
    let mut bad = 0u8;
    for &i in &HEX_AT[..16] {
        let h = HEX[s[i] as usize];
        bad |= h;
        hi = (hi << 4) | (h & 0x0f) as u64;
    }
    for &i in &HEX_AT[16..] {
        let h = HEX[s[i] as usize];
        bad |= h;
        lo = (lo << 4) | (h & 0x0f) as u64;
    }
    if bad & 0xf0 != 0 || lo >> 62 != 0b10 {
        return None;
    }
    Some(((hi as u128) << 64) | lo as u128)
}

/// Formats a UUID key back to its canonical lowercase text.
pub fn format_uuid(v: IdKey, out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [b'-'; 36];
    for (n, &i) in HEX_AT.iter().enumerate() {
        buf[i] = DIGITS[((v >> (124 - 4 * n)) & 0xf) as usize];
    }
    out.push_str(std::str::from_utf8(&buf).expect("hex digits and dashes are ASCII"));
}

/// Whether a key came from [`parse_uuid`] (as opposed to an interned id).
#[inline]
pub fn is_uuid_key(v: IdKey) -> bool {
    (v >> 62) & 0b11 == 0b10
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uuid_round_trip() {
        let s = "b5c9f8a9-8be3-49c0-9f09-e77f216495fe";
        let k = parse_uuid(s.as_bytes()).unwrap();
        let mut out = String::new();
        format_uuid(k, &mut out);
        assert_eq!(out, s);
        assert!(is_uuid_key(k));
        assert!(!is_uuid_key(OTHER_TAG | 7));
    }

    #[test]
    fn non_canonical_is_not_a_uuid() {
        for s in [
            "B5C9F8A9-8BE3-49C0-9F09-E77F216495FE",
            "b5c9f8a9-8be3-49c0-1f09-e77f216495fe", // variant 0
            "b5c9f8a98be349c09f09e77f216495fe",
            "a3e7b2:46:173",
            "",
        ] {
            assert_eq!(parse_uuid(s.as_bytes()), None, "{s}");
        }
    }

    proptest! {
        #[test]
        fn formats_back(hi in any::<u64>(), lo in any::<u64>()) {
            let k = ((hi as u128) << 64) | (lo as u128 & !(0b11u128 << 62)) | (0b10u128 << 62);
            let mut s = String::new();
            format_uuid(k, &mut s);
            prop_assert_eq!(parse_uuid(s.as_bytes()), Some(k));
        }
    }
}
