//! Timestamps as ferry carries them: `i64` microseconds since the Unix epoch,
//! UTC; SQLite's text timestamps read without losing the microseconds.

use chrono::{DateTime, NaiveDateTime};

/// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Parses the text timestamps found in SQLite databases: `YYYY-MM-DD
/// HH:MM:SS[.ffffff]`, with `T` or space, optionally ending in `Z` or an
/// offset (naive times are taken as UTC); a bare date is midnight UTC.
pub fn parse_text(text: &str) -> Option<i64> {
    let s = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.timestamp_micros());
        }
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(naive, fmt) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    chrono::NaiveDate::parse_from_str(naive, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_text_keeps_microseconds() {
        let micros = 1_714_558_830_123_456;
        assert_eq!(parse_text("2024-05-01 10:20:30.123456"), Some(micros));
        assert_eq!(parse_text("2024-05-01T10:20:30.123456Z"), Some(micros));
        assert_eq!(parse_text("2024-05-01T10:20:30.123456+02:00"), Some(micros - 7_200_000_000));
        assert_eq!(parse_text("not a time"), None);
        // PostgreSQL's text output of timestamptz (as pgoutput sends it).
        assert_eq!(parse_text("2024-05-01 10:20:30.123456+00"), Some(micros));
        assert_eq!(parse_text("2024-05-01 12:20:30.123456+02"), Some(micros));
    }
}
