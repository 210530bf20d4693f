//! Encoding rows for `COPY … FROM STDIN`, binary and text formats.
//!
//! Binary is the default: no escaping, no number/date formatting, and
//! PostgreSQL does not parse text for timestamps or jsonb.

use bytes::{BufMut, BytesMut};

use crate::model::NewUser;
use crate::time::PG_EPOCH_OFFSET_MICROS;

/// How one target column is encoded, decided from its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnEncoding {
    /// text, varchar, char, citext, json: UTF-8 bytes.
    Text,
    /// jsonb: version byte 1, then the JSON text.
    Jsonb,
    /// timestamp / timestamptz: i64 microseconds since 2000-01-01.
    Timestamp,
    /// a text column holding a timestamp: RFC 3339 with microseconds.
    TimestampAsText,
}

impl ColumnEncoding {
    pub fn for_type(data_type: &str, is_timestamp_field: bool) -> ColumnEncoding {
        match (data_type, is_timestamp_field) {
            ("jsonb", _) => ColumnEncoding::Jsonb,
            (t, true) if t.starts_with("timestamp") => ColumnEncoding::Timestamp,
            (_, true) => ColumnEncoding::TimestampAsText,
            _ => ColumnEncoding::Text,
        }
    }
}

const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Encodes rows in COPY binary format (header, tuples, trailer).
pub fn encode_binary(rows: &[NewUser], encodings: &[ColumnEncoding; 6], buf: &mut BytesMut) {
    buf.clear();
    buf.reserve(19 + rows.len() * 160);
    buf.put_slice(BINARY_HEADER);
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension length
    for row in rows {
        buf.put_i16(6);
        put_text(buf, &row.id);
        put_text(buf, &row.first_name);
        put_text(buf, &row.last_name);
        put_text(buf, &row.email);
        match encodings[4] {
            ColumnEncoding::Timestamp => {
                buf.put_i32(8);
                buf.put_i64(row.created_at - PG_EPOCH_OFFSET_MICROS);
            }
            _ => put_text(buf, &crate::time::format_rfc3339_micros(row.created_at)),
        }
        match encodings[5] {
            ColumnEncoding::Jsonb => {
                buf.put_i32(row.settings.len() as i32 + 1);
                buf.put_u8(1);
                buf.put_slice(row.settings.as_bytes());
            }
            _ => put_text(buf, &row.settings),
        }
    }
    buf.put_i16(-1);
}

fn put_text(buf: &mut BytesMut, s: &str) {
    buf.put_i32(s.len() as i32);
    buf.put_slice(s.as_bytes());
}

/// Encodes rows in COPY text format (tab-separated, backslash escapes).
pub fn encode_text(rows: &[NewUser], buf: &mut BytesMut) {
    buf.clear();
    for row in rows {
        for (i, field) in [&row.id, &row.first_name, &row.last_name, &row.email].into_iter().enumerate() {
            if i > 0 {
                buf.put_u8(b'\t');
            }
            put_escaped(buf, field);
        }
        buf.put_u8(b'\t');
        put_escaped(buf, &crate::time::format_rfc3339_micros(row.created_at));
        buf.put_u8(b'\t');
        put_escaped(buf, &row.settings);
        buf.put_u8(b'\n');
    }
}

fn put_escaped(buf: &mut BytesMut, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => buf.put_slice(b"\\\\"),
            b'\t' => buf.put_slice(b"\\t"),
            b'\n' => buf.put_slice(b"\\n"),
            b'\r' => buf.put_slice(b"\\r"),
            _ => buf.put_u8(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_escapes_control_characters() {
        let row = NewUser {
            id: "user_1".into(),
            first_name: "a\tb".into(),
            last_name: "c\\d\ne".into(),
            email: "x".into(),
            created_at: 0,
            settings: "{}".into(),
        };
        let mut buf = BytesMut::new();
        encode_text(&[row], &mut buf);
        assert_eq!(&buf[..], b"user_1\ta\\tb\tc\\\\d\\ne\tx\t1970-01-01T00:00:00.000000Z\t{}\n");
    }
}
