//! RFC 3339 timestamps <-> UTC epoch milliseconds, without a calendar library.
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|z|±HH:MM)`, also with a space or `t` for `T`.
//! Fractions beyond milliseconds are truncated toward the past (floor), as Arrow does when it
//! casts to `timestamp[ms]`. Output is always `YYYY-MM-DDTHH:MM:SS.mmmZ`.

use std::fmt::Write as _;

/// Milliseconds in a UTC day.
pub const MS_PER_DAY: i64 = 86_400_000;

/// Width of one `interval_partials` row: 15 minutes. Every UTC offset in use is a multiple
/// of 15 minutes, so any 15/30/60-minute or daily rollup in any time zone is a union of
/// whole partial intervals.
pub const PARTIAL_INTERVAL_MS: i64 = 15 * 60_000;

/// Why a timestamp was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("timestamp {0:?} is not RFC 3339 (expected YYYY-MM-DDTHH:MM:SS[.fff]Z)")]
    Syntax(String),
    #[error("timestamp {0:?} has a field out of range")]
    Range(String),
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses an RFC 3339 timestamp to UTC epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, TimeError> {
    let syntax = || TimeError::Syntax(s.to_string());
    let b = s.as_bytes();
    let year = digits(b, 0, 4).ok_or_else(syntax)? as i64;
    let month = digits(b, 5, 2).ok_or_else(syntax)?;
    let day = digits(b, 8, 2).ok_or_else(syntax)?;
    let hour = digits(b, 11, 2).ok_or_else(syntax)?;
    let min = digits(b, 14, 2).ok_or_else(syntax)?;
    let sec = digits(b, 17, 2).ok_or_else(syntax)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return Err(syntax());
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) || hour > 23 || min > 59 || sec > 60 {
        return Err(TimeError::Range(s.to_string()));
    }
    let mut i = 19;
    let mut frac_ms: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                frac_ms = frac_ms * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return Err(syntax());
        }
        for _ in n..3 {
            frac_ms *= 10;
        }
    }
    let offset_s: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(b, i + 1, 2).ok_or_else(syntax)? as i64;
            let om = digits(b, i + 4, 2).ok_or_else(syntax)? as i64;
            if oh > 23 || om > 59 {
                return Err(TimeError::Range(s.to_string()));
            }
            let o = oh * 3600 + om * 60;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return Err(syntax()),
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour as i64 * 3600 + min as i64 * 60 + sec.min(59) as i64
        - offset_s;
    Ok(secs * 1000 + frac_ms)
}

/// UTC epoch milliseconds of a calendar date and time of day, or `None` when a field is out
/// of range (for sources whose timestamps are not RFC 3339).
pub fn utc_ms(year: i64, month: u32, day: u32, hour: u32, min: u32, sec: u32, ms: u32) -> Option<i64> {
    // Years of four digits, as RFC 3339 writes them: the arithmetic below cannot overflow.
    if !(0..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 60
        || ms > 999
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour as i64 * 3600 + min as i64 * 60 + sec.min(59) as i64;
    Some(secs * 1000 + ms as i64)
}

/// Formats UTC epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    let days = ms.div_euclid(MS_PER_DAY);
    let rem = ms.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339_ms("2026-01-05T10:40:00.123Z"), Ok(1_767_609_600_123));
        assert_eq!(parse_rfc3339_ms("2026-01-05T11:40:00.123+01:00"), Ok(1_767_609_600_123));
        assert_eq!(parse_rfc3339_ms("2026-01-05T10:40:00.1239Z"), Ok(1_767_609_600_123));
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59.999Z"), Ok(-1));
        assert_eq!(format_rfc3339_ms(1_767_609_600_123), "2026-01-05T10:40:00.123Z");
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "2026-01-05",
            "2026-01-05T10:40:00",
            "2026-13-05T10:40:00Z",
            "2026-02-30T10:40:00Z",
            "2026-01-05T10:40:00.Z",
            "2026-01-05T10:40:00.123Zjunk",
            "2026-01-05T10:40:00.123+0100",
            "2026-01-05T1é:40:00Z",
        ] {
            assert!(parse_rfc3339_ms(s).is_err(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn round_trip(ms in -62_135_596_800_000i64..253_402_300_799_999i64) {
            prop_assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Ok(ms));
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339_ms(&s);
        }
    }
}
