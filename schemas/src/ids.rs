//! Identifier keys: event and call ids as 16-byte values.
//!
//! Most ids are lowercase canonical RFC 4122 UUIDs (`8-4-4-4-12` hex, variant `10`): those
//! become the UUID's own 128 bits, and format back to the same text. Any other id (an SBC
//! session id, an uppercase GUID, a Job Router job id) is interned by the caller into a
//! sequence number `n` and keyed as `OTHER_TAG | n`, whose variant bits are `11`: the two
//! key spaces never overlap, so equal keys mean equal ids, exactly.

/// A 128-bit key for an id string (see the module doc).
pub type IdKey = u128;

/// Variant bits (bits 62..64 of the low half) of keys that are not UUIDs.
pub const OTHER_TAG: u128 = 0b11 << 62;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Eight lowercase hex digits (the first in the lowest byte) to their 32-bit value, all
/// lanes at once (SWAR); `None` if any byte is not `0-9` or `a-f`.
#[inline(always)]
fn hex8(x: u64) -> Option<u32> {
    // Each lane b < 0x80 (checked first), so adding up to 0x50 never carries out of a lane.
    let ascii = x & HIGH == 0;
    let ge_0 = x.wrapping_add(ONES * (0x80 - b'0' as u64)) & HIGH;
    let gt_9 = x.wrapping_add(ONES * (0x7f - b'9' as u64)) & HIGH;
    let ge_a = x.wrapping_add(ONES * (0x80 - b'a' as u64)) & HIGH;
    let gt_f = x.wrapping_add(ONES * (0x7f - b'f' as u64)) & HIGH;
    let digit = (ge_0 & !gt_9) | (ge_a & !gt_f);
    if !ascii || digit != HIGH {
        return None;
    }
    // '0'..'9' are 0x30..0x39, 'a'..'f' are 0x61..0x66: the low nibble, plus 9 for letters.
    let v = (x & (ONES * 0x0f)) + ((x >> 6) & ONES) * 9;
    // Pack pairs of lanes into bytes (first digit high), then bytes into a u32.
    let v = ((v & 0x000f_000f_000f_000f) << 4) | ((v >> 8) & 0x000f_000f_000f_000f);
    let v = (v | (v >> 8)) & 0x0000_ffff_0000_ffff;
    let v = (v | (v >> 16)) & 0x0000_0000_ffff_ffff;
    Some((v as u32).swap_bytes())
}

#[inline(always)]
fn word(s: &[u8; 36], at: usize) -> u64 {
    u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"))
}

#[inline(always)]
fn half(s: &[u8; 36], at: usize) -> u64 {
    u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes")) as u64
}

/// Parses a lowercase canonical RFC 4122 UUID (variant `10`) into its 128 bits.
/// Anything else returns `None` and must be interned.
///
/// On x86-64 CPUs with SSSE3 (nearly all), the 32 digits are gathered, checked and packed
/// in two 16-byte registers; elsewhere eight digits at a time in 64-bit words. Both give the
/// same result for every input (tested against a digit-by-digit definition).
#[inline]
pub fn parse_uuid(s: &[u8]) -> Option<IdKey> {
    let s = dashed(s)?;
    #[cfg(target_arch = "x86_64")]
    let v = if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3 (checked just above).
        unsafe { simd::digits_ssse3(s) }
    } else {
        digits_swar(s)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let v = digits_swar(s);
    v.filter(|&v| is_uuid_key(v))
}

/// `s` if it is 36 bytes with dashes where a canonical UUID has them.
#[inline(always)]
fn dashed(s: &[u8]) -> Option<&[u8; 36]> {
    let s: &[u8; 36] = s.try_into().ok()?;
    (s[8] == b'-' && s[13] == b'-' && s[18] == b'-' && s[23] == b'-').then_some(s)
}

/// The 128 bits of a dashed UUID's 32 lowercase hex digits, 64-bit words only (any CPU);
/// `None` if any digit is not `0-9` or `a-f`.
#[inline]
fn digits_swar(s: &[u8; 36]) -> Option<IdKey> {
    // Groups 8-4-4-4-12, read as four runs of eight digits.
    let a = hex8(word(s, 0))?;
    let b = hex8(half(s, 9) | (half(s, 14) << 32))?;
    let c = hex8(half(s, 19) | (half(s, 24) << 32))?;
    let d = hex8(word(s, 28))?;
    let hi = ((a as u64) << 32) | b as u64;
    let lo = ((c as u64) << 32) | d as u64;
    Some(((hi as u128) << 64) | lo as u128)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::IdKey;

    /// [`super::digits_swar`] with SSSE3: the 32 digits gathered into two registers by byte
    /// shuffles, checked and converted lane by lane, and packed in pairs.
    ///
    /// # Safety
    /// The CPU must support SSSE3.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn digits_ssse3(s: &[u8; 36]) -> Option<IdKey> {
        // A shuffle index that yields 0.
        const Z: i8 = -128;
        // SAFETY: each load reads 16 bytes inside the 36-byte array (offsets 0, 16, 20).
        let (l0, l1, l2) = unsafe {
            (
                _mm_loadu_si128(s.as_ptr() as *const __m128i),
                _mm_loadu_si128(s.as_ptr().add(16) as *const __m128i),
                _mm_loadu_si128(s.as_ptr().add(20) as *const __m128i),
            )
        };
        // Digits 0..16: s[0..8], s[9..13], s[14..18]; digits 16..32: s[19..23], s[24..36].
        let a = _mm_or_si128(
            _mm_shuffle_epi8(l0, _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, Z, Z)),
            _mm_shuffle_epi8(l1, _mm_setr_epi8(Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, 0, 1)),
        );
        let b = _mm_or_si128(
            _mm_shuffle_epi8(l1, _mm_setr_epi8(3, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z)),
            _mm_shuffle_epi8(l2, _mm_setr_epi8(Z, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
        );
        let (a, b) = (nibbles(a)?, nibbles(b)?);
        // Pairs of digits to bytes (first digit high), both halves into one register.
        let weights = _mm_set1_epi16(0x0110); // bytes 16, 1
        let bytes = _mm_packus_epi16(_mm_maddubs_epi16(a, weights), _mm_maddubs_epi16(b, weights));
        let mut out = [0u8; 16];
        // SAFETY: `out` has 16 bytes.
        unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, bytes) };
        Some(u128::from_be_bytes(out))
    }

    /// Sixteen lowercase hex digits to their values (one per byte), or `None` if any byte
    /// is not `0-9` or `a-f`. Bytes ≥ 0x80 compare as negative, so never as digits.
    #[target_feature(enable = "ssse3")]
    fn nibbles(v: __m128i) -> Option<__m128i> {
        let between = |lo: u8, hi: u8| {
            _mm_and_si128(
                _mm_cmpgt_epi8(v, _mm_set1_epi8(lo as i8 - 1)),
                _mm_cmpgt_epi8(_mm_set1_epi8(hi as i8 + 1), v),
            )
        };
        let (digit, letter) = (between(b'0', b'9'), between(b'a', b'f'));
        if _mm_movemask_epi8(_mm_or_si128(digit, letter)) != 0xffff {
            return None;
        }
        // The low nibble, plus 9 for letters ('a' is 0x61).
        Some(_mm_add_epi8(_mm_and_si128(v, _mm_set1_epi8(0x0f)), _mm_and_si128(letter, _mm_set1_epi8(9))))
    }
}

/// A 32-bit value as eight lowercase hex digits, most significant first (SWAR).
#[inline(always)]
fn hex8_text(v: u32) -> [u8; 8] {
    // Spread the nibbles one per byte, least significant in the lowest byte …
    let x = v as u64;
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // … most significant first in memory, then to ASCII: '0' + d, plus 39 more for d ≥ 10.
    let x = x.swap_bytes();
    let letters = ((x + ONES * 6) >> 4) & ONES;
    (x + ONES * b'0' as u64 + letters * (b'a' - b'0' - 10) as u64).to_le_bytes()
}

/// A UUID key's canonical lowercase text, as bytes (all ASCII).
#[inline]
pub fn uuid_text(v: IdKey) -> [u8; 36] {
    let (hi, lo) = ((v >> 64) as u64, v as u64);
    let (a, b, c, d) =
        (hex8_text((hi >> 32) as u32), hex8_text(hi as u32), hex8_text((lo >> 32) as u32), hex8_text(lo as u32));
    let mut buf = [b'-'; 36];
    buf[..8].copy_from_slice(&a);
    buf[9..13].copy_from_slice(&b[..4]);
    buf[14..18].copy_from_slice(&b[4..]);
    buf[19..23].copy_from_slice(&c[..4]);
    buf[24..28].copy_from_slice(&c[4..]);
    buf[28..].copy_from_slice(&d);
    buf
}

/// Formats a UUID key back to its canonical lowercase text.
pub fn format_uuid(v: IdKey, out: &mut String) {
    out.push_str(std::str::from_utf8(&uuid_text(v)).expect("hex digits and dashes are ASCII"));
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

    /// Byte offsets of the 32 hex digits of a canonical UUID.
    const HEX_AT: [usize; 32] = [
        0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33,
        34, 35,
    ];

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

    /// `v` as 32 hex digits grouped 8-4-4-4-12, by the standard formatter.
    fn canonical(v: IdKey) -> String {
        let hex = format!("{v:032x}");
        format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
    }

    /// [`parse_uuid`] with the word-at-a-time digits whatever the CPU.
    fn swar(s: &[u8]) -> Option<IdKey> {
        digits_swar(dashed(s)?).filter(|&v| is_uuid_key(v))
    }

    /// The digit-by-digit definition `parse_uuid` must agree with.
    fn reference(s: &[u8]) -> Option<IdKey> {
        if s.len() != 36 || [8, 13, 18, 23].iter().any(|&i| s[i] != b'-') {
            return None;
        }
        let mut v: u128 = 0;
        for &i in &HEX_AT {
            let d = match s[i] {
                c @ b'0'..=b'9' => c - b'0',
                c @ b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            v = (v << 4) | d as u128;
        }
        is_uuid_key(v).then_some(v)
    }

    #[test]
    fn formats_like_the_standard_formatter() {
        for v in
            [0u128, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, 0xa0a0_0909_f0f0_1a2b_8c3d_4e5f_6789_abcd]
        {
            let mut s = String::new();
            format_uuid(v, &mut s);
            assert_eq!(s, canonical(v));
        }
    }

    #[test]
    fn every_byte_in_every_digit_position() {
        let base = *b"b5c9f8a9-8be3-49c0-9f09-e77f216495fe";
        for &i in &HEX_AT {
            for c in 0..=255u8 {
                let mut s = base;
                s[i] = c;
                assert_eq!(parse_uuid(&s), reference(&s), "byte {c:#04x} at {i}");
                assert_eq!(swar(&s), reference(&s), "byte {c:#04x} at {i}, SWAR");
            }
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(s in "[0-9a-fA-F-]{36}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-g]{4}-[0-9a-f]{12}") {
            prop_assert_eq!(parse_uuid(s.as_bytes()), reference(s.as_bytes()));
            prop_assert_eq!(swar(s.as_bytes()), reference(s.as_bytes()));
        }

        #[test]
        fn formats_any_value(v in any::<u128>()) {
            let mut s = String::new();
            format_uuid(v, &mut s);
            prop_assert_eq!(s, canonical(v));
        }

        #[test]
        fn formats_back(hi in any::<u64>(), lo in any::<u64>()) {
            let k = ((hi as u128) << 64) | (lo as u128 & !(0b11u128 << 62)) | (0b10u128 << 62);
            let mut s = String::new();
            format_uuid(k, &mut s);
            prop_assert_eq!(parse_uuid(s.as_bytes()), Some(k));
        }
    }
}
