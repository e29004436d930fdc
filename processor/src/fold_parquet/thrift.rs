//! Parquet page headers, read from their Thrift compact encoding.
//!
//! Only the fields a flat column's reader needs are kept; every other field (statistics,
//! CRCs, index pages) is skipped by its wire type. Sans-IO and total: any input gives a
//! header or an error, never a panic, and nesting deeper than [`MAX_DEPTH`] is an error
//! rather than a deep recursion.

/// Page types (`PageType` in `parquet.thrift`).
pub(super) const DATA_PAGE: i32 = 0;
pub(super) const DICTIONARY_PAGE: i32 = 2;
pub(super) const DATA_PAGE_V2: i32 = 3;

/// Structs nest at most this deep (a page header nests three levels; statistics two more).
const MAX_DEPTH: u32 = 16;

/// The fields of a page header a flat column reader uses. Fields of the kinds of page a
/// header is not stay at their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PageHeader {
    pub page_type: i32,
    pub uncompressed_size: usize,
    pub compressed_size: usize,
    /// Values (levels included, so rows for a flat column) of a data or dictionary page.
    pub num_values: usize,
    /// Encoding of the values.
    pub encoding: i32,
    /// Encoding of the definition levels (v1 data pages).
    pub def_level_encoding: i32,
    /// Bytes of definition and repetition levels ahead of the values (v2 data pages,
    /// stored uncompressed).
    pub def_levels_len: usize,
    pub rep_levels_len: usize,
    /// Whether the values of a v2 data page are compressed (v1 pages always are, when the
    /// chunk has a codec).
    pub is_compressed: bool,
}

impl Default for PageHeader {
    fn default() -> Self {
        PageHeader {
            page_type: -1,
            uncompressed_size: 0,
            compressed_size: 0,
            num_values: 0,
            encoding: 0,
            def_level_encoding: 0,
            def_levels_len: 0,
            rep_levels_len: 0,
            is_compressed: true,
        }
    }
}

/// Compact protocol wire types.
const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;

/// An unsigned LEB128 varint at the start of `b` (at most 10 bytes), and its length.
pub(super) fn uleb(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

struct Input<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.buf.get(self.pos).ok_or("page header cut short")?;
        self.pos += 1;
        Ok(b)
    }

    fn skip_bytes(&mut self, n: u64) -> Result<(), String> {
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n)).filter(|&e| e <= self.buf.len());
        self.pos = end.ok_or("page header cut short")?;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, String> {
        let (v, len) = uleb(&self.buf[self.pos..]).ok_or("page header has a varint cut short or over 10 bytes")?;
        self.pos += len;
        Ok(v)
    }

    fn zigzag(&mut self) -> Result<i64, String> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn i32(&mut self, t: u8) -> Result<i32, String> {
        if t != I32 {
            return Err(format!("page header field has wire type {t} where an i32 belongs"));
        }
        i32::try_from(self.zigzag()?).map_err(|_| "page header i32 out of range".to_string())
    }

    fn size(&mut self, t: u8) -> Result<usize, String> {
        usize::try_from(self.i32(t)?).map_err(|_| "page header has a negative size".to_string())
    }

    /// The next field's id and wire type, `None` at the struct's end.
    fn field(&mut self, last: &mut i16) -> Result<Option<(i16, u8)>, String> {
        let b = self.byte()?;
        if b == 0 {
            return Ok(None);
        }
        let delta = b >> 4;
        let id = if delta == 0 {
            i16::try_from(self.zigzag()?).map_err(|_| "page header field id out of range")?
        } else {
            last.checked_add(i16::from(delta)).ok_or("page header field id out of range")?
        };
        *last = id;
        Ok(Some((id, b & 0x0f)))
    }

    fn skip(&mut self, t: u8, depth: u32) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("page header nests too deep".into());
        }
        match t {
            BOOL_TRUE | BOOL_FALSE => Ok(()),
            BYTE => self.byte().map(drop),
            I16 | I32 | I64 => self.varint().map(drop),
            DOUBLE => self.skip_bytes(8),
            BINARY => {
                let n = self.varint()?;
                self.skip_bytes(n)
            }
            LIST | SET => {
                let h = self.byte()?;
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                // Every element takes at least a byte: a count past the bytes left is damage,
                // not a reason to loop.
                self.check_count(n, 1)?;
                let elem = h & 0x0f;
                for _ in 0..n {
                    self.skip_element(elem, depth)?;
                }
                Ok(())
            }
            MAP => {
                let n = self.varint()?;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                self.check_count(n, 2)?;
                for _ in 0..n {
                    self.skip_element(kv >> 4, depth)?;
                    self.skip_element(kv & 0x0f, depth)?;
                }
                Ok(())
            }
            STRUCT => {
                let mut last = 0;
                while let Some((_, t)) = self.field(&mut last)? {
                    self.skip(t, depth + 1)?;
                }
                Ok(())
            }
            other => Err(format!("page header has unknown wire type {other}")),
        }
    }

    /// A collection element: booleans in a collection are a byte each.
    fn skip_element(&mut self, t: u8, depth: u32) -> Result<(), String> {
        if t == BOOL_TRUE || t == BOOL_FALSE {
            self.byte().map(drop)
        } else {
            self.skip(t, depth + 1)
        }
    }

    /// Refuses a count of `n` elements of at least `bytes_each` bytes that the bytes left
    /// cannot hold.
    fn check_count(&self, n: u64, bytes_each: u64) -> Result<(), String> {
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(bytes_each) > left {
            return Err(format!("page header has a collection of {n} elements in {left} bytes"));
        }
        Ok(())
    }

    fn expect_struct(t: u8) -> Result<(), String> {
        if t == STRUCT {
            Ok(())
        } else {
            Err(format!("page header field has wire type {t} where a struct belongs"))
        }
    }

    /// `DataPageHeader` (v1) or `DictionaryPageHeader`: `num_values`, `encoding`, and for v1
    /// the definition levels' encoding.
    fn page_fields(&mut self, h: &mut PageHeader) -> Result<(), String> {
        let mut last = 0;
        while let Some((id, t)) = self.field(&mut last)? {
            match id {
                1 => h.num_values = self.size(t)?,
                2 => h.encoding = self.i32(t)?,
                3 if h.page_type == DATA_PAGE => h.def_level_encoding = self.i32(t)?,
                _ => self.skip(t, 2)?,
            }
        }
        Ok(())
    }

    /// `DataPageHeaderV2`.
    fn v2_fields(&mut self, h: &mut PageHeader) -> Result<(), String> {
        let mut last = 0;
        while let Some((id, t)) = self.field(&mut last)? {
            match (id, t) {
                (1, _) => h.num_values = self.size(t)?,
                (4, _) => h.encoding = self.i32(t)?,
                (5, _) => h.def_levels_len = self.size(t)?,
                (6, _) => h.rep_levels_len = self.size(t)?,
                (7, BOOL_TRUE) => h.is_compressed = true,
                (7, BOOL_FALSE) => h.is_compressed = false,
                _ => self.skip(t, 2)?,
            }
        }
        Ok(())
    }
}

/// Reads the page header at the start of `buf`: the header and its length in bytes.
pub(super) fn page_header(buf: &[u8]) -> Result<(PageHeader, usize), String> {
    let mut input = Input { buf, pos: 0 };
    let mut h = PageHeader::default();
    let (mut uncompressed, mut compressed) = (None, None);
    // Nested headers name the page type they are for; the type field comes first in every
    // writer, but the nested header is read by the type it belongs to, whatever the order.
    let mut last = 0;
    while let Some((id, t)) = input.field(&mut last)? {
        match id {
            1 => h.page_type = input.i32(t)?,
            2 => uncompressed = Some(input.size(t)?),
            3 => compressed = Some(input.size(t)?),
            5 | 7 => {
                Input::expect_struct(t)?;
                let kind = if id == 5 { DATA_PAGE } else { DICTIONARY_PAGE };
                let mut nested = PageHeader { page_type: kind, ..PageHeader::default() };
                input.page_fields(&mut nested)?;
                h = PageHeader { page_type: h.page_type, ..nested };
            }
            8 => {
                Input::expect_struct(t)?;
                input.v2_fields(&mut h)?;
            }
            _ => input.skip(t, 1)?,
        }
    }
    h.uncompressed_size = uncompressed.ok_or("page header has no uncompressed_page_size")?;
    h.compressed_size = compressed.ok_or("page header has no compressed_page_size")?;
    if h.page_type < 0 {
        return Err("page header has no type".into());
    }
    Ok((h, input.pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flat_parquet::uleb as varint;

    fn i32_field(delta: u8, v: i32, out: &mut Vec<u8>) {
        out.push(delta << 4 | I32);
        varint(((v << 1) ^ (v >> 31)) as u32 as u64, out);
    }

    /// A v1 data page header as parquet writers lay it out, with statistics to skip.
    fn data_page_v1() -> Vec<u8> {
        let mut b = Vec::new();
        i32_field(1, DATA_PAGE, &mut b);
        i32_field(1, 1000, &mut b);
        i32_field(1, 400, &mut b);
        i32_field(1, 12345, &mut b); // crc
        b.push(1 << 4 | STRUCT); // 5: data_page_header
        i32_field(1, 25, &mut b);
        i32_field(1, 8, &mut b); // RLE_DICTIONARY
        i32_field(1, 3, &mut b); // RLE
        i32_field(1, 3, &mut b);
        b.push(1 << 4 | STRUCT); // 5: statistics
        b.push(1 << 4 | BINARY);
        varint(3, &mut b);
        b.extend_from_slice(b"max");
        b.push(1 << 4 | BINARY);
        varint(3, &mut b);
        b.extend_from_slice(b"min");
        b.push(1 << 4 | I64);
        varint(4, &mut b);
        b.push(0); // end statistics
        b.push(0); // end data_page_header
        b.push(0); // end page header
        b
    }

    #[test]
    fn reads_a_v1_data_page_header_and_skips_the_rest() {
        let mut b = data_page_v1();
        let len = b.len();
        b.extend_from_slice(b"page bytes");
        let (h, n) = page_header(&b).unwrap();
        assert_eq!(n, len);
        assert_eq!(
            h,
            PageHeader {
                page_type: DATA_PAGE,
                uncompressed_size: 1000,
                compressed_size: 400,
                num_values: 25,
                encoding: 8,
                def_level_encoding: 3,
                ..PageHeader::default()
            }
        );
    }

    #[test]
    fn reads_a_v2_header_with_long_field_ids_and_an_uncompressed_flag() {
        let mut b = Vec::new();
        i32_field(1, DATA_PAGE_V2, &mut b);
        i32_field(1, 50, &mut b);
        i32_field(1, 40, &mut b);
        // Field 8 with the long form (delta 0, then the id zigzagged).
        b.push(STRUCT);
        varint(16, &mut b);
        i32_field(1, 7, &mut b);
        i32_field(1, 2, &mut b);
        i32_field(1, 7, &mut b);
        i32_field(1, 0, &mut b); // encoding PLAIN
        i32_field(1, 3, &mut b);
        i32_field(1, 0, &mut b);
        b.push(1 << 4 | BOOL_FALSE);
        b.push(0);
        b.push(0);
        let (h, n) = page_header(&b).unwrap();
        assert_eq!(n, b.len());
        assert_eq!(
            h,
            PageHeader {
                page_type: DATA_PAGE_V2,
                uncompressed_size: 50,
                compressed_size: 40,
                num_values: 7,
                def_levels_len: 3,
                is_compressed: false,
                ..PageHeader::default()
            }
        );
    }

    #[test]
    fn every_cut_of_a_header_is_an_error() {
        let b = data_page_v1();
        for end in 0..b.len() {
            assert!(page_header(&b[..end]).is_err(), "cut at {end}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut b = Vec::new();
        i32_field(1, DATA_PAGE, &mut b);
        // Field 9 (unknown: skipped), a struct whose first field is a struct, and so on.
        b.push(8 << 4 | STRUCT);
        for _ in 0..100_000 {
            b.push(1 << 4 | STRUCT);
        }
        assert!(page_header(&b).is_err());
    }

    /// A map of 2^62 booleans (no bytes each, as a skipper that reads them like fields
    /// would take them) ends at once.
    #[test]
    fn a_huge_collection_count_is_an_error_not_a_loop() {
        // Field 9 (delta 9), type MAP: count varint 2^62, key/value types BOOL_TRUE.
        let mut b = vec![0x9b];
        b.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0x11]);
        let started = std::time::Instant::now();
        assert!(page_header(&b).is_err());
        // Field 9, type LIST: 15 = a varint count, then 2^62 booleans.
        let b = [0x99, 0xf1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        assert!(page_header(&b).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = page_header(&bytes);
        }

        #[test]
        fn never_panics_after_a_valid_prefix(cut in 0usize..40, tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut b = data_page_v1();
            b.truncate(cut.min(b.len()));
            b.extend(tail);
            let _ = page_header(&b);
        }
    }
}
