//! The on-disk format of FileLog segments, sans-IO: bytes in, frames out.
//!
//! A segment file is a 16-byte header followed by records:
//!
//! ```text
//! header: b"CCSLOG\0\x01" (magic + format version 1) | base_offset: u64 LE
//! record: body_len: u32 LE | crc32c(body): u32 LE | body
//! body:   offset: u64 LE | timestamp_ms: i64 LE | key_len: u32 LE | key | value
//! ```
//!
//! Invariants: records in a segment have consecutive offsets starting at `base_offset`; a
//! record is valid only if its whole body is present and its CRC matches. The first record
//! that is short or fails its CRC marks the end of the valid data (a torn tail after a crash);
//! the writer truncates there when it opens the log, readers treat it as "not yet written".

/// Magic and format version at the start of every segment.
pub const MAGIC: &[u8; 8] = b"CCSLOG\0\x01";
/// Bytes in the segment header.
pub const HEADER_LEN: usize = 16;
/// Bytes before a record's body (length and CRC).
pub const FRAME_PREFIX: usize = 8;
/// Fixed bytes at the start of a body (offset, timestamp, key length).
const BODY_FIXED: usize = 20;
/// The largest body a record may have (16 MiB).
pub const MAX_BODY: usize = 16 << 20;

/// One decoded record, borrowing from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// Bytes the whole record takes (prefix + body).
    pub len: usize,
}

/// Why no frame could be decoded at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends inside the record: `needed` bytes in all would hold it (or at least
    /// its prefix). At the end of a file this is a torn tail or a write in progress.
    Incomplete { needed: usize },
    /// The bytes are not a valid record.
    Corrupt(&'static str),
}

/// Encodes a segment header.
pub fn encode_header(base_offset: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&base_offset.to_le_bytes());
    h
}

/// Decodes a segment header, returning its base offset.
pub fn decode_header(buf: &[u8]) -> Result<u64, FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Incomplete { needed: HEADER_LEN });
    }
    if &buf[..8] != MAGIC {
        return Err(FrameError::Corrupt("not a ccstream log segment (bad magic or version)"));
    }
    Ok(u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")))
}

/// The number of bytes [`encode_record`] appends for this key and value.
pub fn encoded_len(key: &[u8], value: &[u8]) -> usize {
    FRAME_PREFIX + BODY_FIXED + key.len() + value.len()
}

/// Appends one record to `out`. The caller checks the size limit ([`MAX_BODY`]).
pub fn encode_record(out: &mut Vec<u8>, offset: u64, timestamp_ms: i64, key: &[u8], value: &[u8]) {
    let body_len = BODY_FIXED + key.len() + value.len();
    out.reserve(FRAME_PREFIX + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let body_at = out.len();
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32c::crc32c(&out[body_at..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the length prefix only: the total bytes of the record starting at `buf[0]`.
pub fn peek_len(buf: &[u8]) -> Result<usize, FrameError> {
    if buf.len() < FRAME_PREFIX {
        return Err(FrameError::Incomplete { needed: FRAME_PREFIX });
    }
    let body_len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if body_len < BODY_FIXED {
        return Err(FrameError::Corrupt("record shorter than its fixed fields"));
    }
    if body_len > MAX_BODY {
        return Err(FrameError::Corrupt("record length above the 16 MiB limit"));
    }
    Ok(FRAME_PREFIX + body_len)
}

/// Decodes the record at the start of `buf`, checking its CRC.
pub fn decode_record(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let len = peek_len(buf)?;
    if buf.len() < len {
        return Err(FrameError::Incomplete { needed: len });
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let body = &buf[FRAME_PREFIX..len];
    if crc32c::crc32c(body) != crc {
        return Err(FrameError::Corrupt("CRC mismatch"));
    }
    let offset = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let timestamp_ms = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let key_len = u32::from_le_bytes(body[16..20].try_into().expect("4 bytes")) as usize;
    let rest = &body[BODY_FIXED..];
    if key_len > rest.len() {
        return Err(FrameError::Corrupt("key length beyond the record"));
    }
    let (key, value) = rest.split_at(key_len);
    Ok(Frame { offset, timestamp_ms, key, value, len })
}

/// The first whole record in `buf` (searched at every byte) whose offset is `from` or
/// later, as its position and offset: evidence that bytes before it are damage, not a torn
/// tail. A candidate must have a sane length, fit in `buf`, carry an offset that `buf`
/// could hold records up to, and match its CRC.
pub fn find_record_after(buf: &[u8], from: u64) -> Option<(usize, u64)> {
    let max_offset = from.saturating_add((buf.len() / (FRAME_PREFIX + BODY_FIXED)) as u64);
    (1..buf.len().saturating_sub(FRAME_PREFIX + BODY_FIXED - 1)).find_map(|at| {
        let rest = &buf[at..];
        let len = peek_len(rest).ok()?;
        let offset = u64::from_le_bytes(rest[FRAME_PREFIX..FRAME_PREFIX + 8].try_into().expect("8 bytes"));
        if len > rest.len() || offset < from || offset > max_offset {
            return None;
        }
        decode_record(rest).ok().map(|f| (at, f.offset))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_record_bytes() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, 1_700_000_000_123, b"k", b"{}");
        // body = 20 fixed + 1 key + 2 value = 23 bytes.
        assert_eq!(&out[..4], &23u32.to_le_bytes());
        assert_eq!(&out[8..16], &7u64.to_le_bytes());
        assert_eq!(&out[28..], b"k{}");
        assert_eq!(out.len(), encoded_len(b"k", b"{}"));
        let f = decode_record(&out).unwrap();
        assert_eq!(
            (f.offset, f.timestamp_ms, f.key, f.value, f.len),
            (7, 1_700_000_000_123, &b"k"[..], &b"{}"[..], 31)
        );
    }

    #[test]
    fn header_round_trip_and_bad_magic() {
        assert_eq!(decode_header(&encode_header(42)), Ok(42));
        assert!(matches!(decode_header(b"NOTALOG!\0\0\0\0\0\0\0\0"), Err(FrameError::Corrupt(_))));
        assert_eq!(decode_header(b"CCS"), Err(FrameError::Incomplete { needed: HEADER_LEN }));
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let mut out = Vec::new();
        encode_record(&mut out, 1, 2, b"key", b"value");
        for i in 8..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode_record(&bad), Err(FrameError::Corrupt("CRC mismatch")), "byte {i}");
        }
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec((any::<i64>(), proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..200)), 0..20)) {
            let mut buf = Vec::new();
            for (i, (ts, k, v)) in records.iter().enumerate() {
                encode_record(&mut buf, i as u64, *ts, k, v);
            }
            let mut at = 0;
            for (i, (ts, k, v)) in records.iter().enumerate() {
                let f = decode_record(&buf[at..]).unwrap();
                prop_assert_eq!((f.offset, f.timestamp_ms, f.key, f.value), (i as u64, *ts, &k[..], &v[..]));
                at += f.len;
            }
            prop_assert_eq!(at, buf.len());
        }

        #[test]
        fn every_prefix_is_incomplete_never_a_panic(v in proptest::collection::vec(any::<u8>(), 0..100), cut in 0usize..150) {
            let mut buf = Vec::new();
            encode_record(&mut buf, 3, 4, b"abc", &v);
            let cut = cut.min(buf.len() - 1);
            let incomplete = matches!(decode_record(&buf[..cut]), Err(FrameError::Incomplete { .. }));
            prop_assert!(incomplete, "prefix of {} bytes", cut);
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_record(&buf);
            let _ = decode_header(&buf);
        }
    }
}
