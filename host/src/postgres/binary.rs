//! PostgreSQL's binary COPY format for typed rows, both ways.
//!
//! Text COPY makes both ends format and parse every value: the source
//! backend prints timestamps and numbers, ferry parses them, ferry prints
//! them again and the target backend parses them once more. In the binary
//! format a timestamp is eight bytes each way and text needs no escaping,
//! which is cheaper for ferry and for both servers (they share the machine's
//! cores with it).
//!
//! Binary is used only where it is exactly equivalent to the text path:
//! - **reading**: a table whose columns are all scalar kinds ([`readable`])
//!   and have the kinds of their actual types (validation reads a target
//!   with the source's kinds: a `text` source column loaded into a `bigint`
//!   one is read as text); a page with any value ferry cannot represent from its binary form is
//!   read again as text, so dead letters keep the text path's reasons and
//!   the values' exact text ([`decode_page`] returns `None`);
//! - **writing**: a table whose columns' base types all have a [`Wire`]
//!   form (resolved from the target's own catalog, so `json` and `jsonb`,
//!   `int4` and `int8` are told apart), and only for a batch whose every
//!   value converts without loss ([`encode_rows`] returns `None` otherwise,
//!   and that batch goes as text, where PostgreSQL's own input functions
//!   decide).

use bytes::{Buf, BufMut};

use crate::keyset::{Key, Row, RowPage};
use crate::schema::TableDef;
use crate::time::PG_EPOCH_OFFSET_MICROS;
use crate::value::{Kind, Value};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Days between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_OFFSET_DAYS: i32 = 10_957;

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// Whether pages of `table` can be read in binary: every column of a
/// scalar kind (arrays and types ferry does not interpret go as text).
pub(super) fn readable(table: &TableDef) -> bool {
    table.columns.iter().all(|c| c.kind.is_scalar())
}

/// Decodes binary COPY `data` into a page of `table`'s rows, the last row's
/// key the page's; `None` when the data holds a value ferry cannot
/// represent (or is not what was asked for): the caller reads it as text.
pub(super) fn decode_page(table: &TableDef, data: &[u8]) -> Option<RowPage> {
    let mut buf = data;
    if buf.len() < SIGNATURE.len() + 8 || &buf[..SIGNATURE.len()] != SIGNATURE {
        return None;
    }
    buf.advance(SIGNATURE.len());
    let _flags = buf.get_i32();
    let extension = usize::try_from(buf.get_i32()).ok()?;
    if buf.len() < extension {
        return None;
    }
    buf.advance(extension);
    let mut page = RowPage::default();
    loop {
        if buf.len() < 2 {
            return None;
        }
        let fields = buf.get_i16();
        if fields == -1 {
            break;
        }
        if fields as usize != table.columns.len() {
            return None;
        }
        let mut row: Row = Vec::with_capacity(table.columns.len());
        for column in &table.columns {
            if buf.len() < 4 {
                return None;
            }
            let len = buf.get_i32();
            if len == -1 {
                row.push(Value::Null);
                continue;
            }
            let len = usize::try_from(len).ok()?;
            if buf.len() < len {
                return None;
            }
            row.push(decode_value(&column.kind, &buf[..len])?);
            buf.advance(len);
        }
        page.rows.push(row);
    }
    page.last_key = page.rows.last().map(|row| Key::of(table, row));
    Some(page)
}

fn decode_value(kind: &Kind, mut b: &[u8]) -> Option<Value> {
    let exact = |b: &[u8], n: usize| (b.len() == n).then_some(());
    Some(match kind {
        Kind::Bool => {
            exact(b, 1)?;
            Value::Bool(b[0] != 0)
        }
        Kind::Int16 => {
            exact(b, 2)?;
            Value::Int16(b.get_i16())
        }
        Kind::Int32 => {
            exact(b, 4)?;
            Value::Int32(b.get_i32())
        }
        Kind::Int64 => {
            exact(b, 8)?;
            Value::Int64(b.get_i64())
        }
        Kind::Float32 => {
            exact(b, 4)?;
            Value::Float32(b.get_f32())
        }
        Kind::Float64 => {
            exact(b, 8)?;
            Value::Float64(b.get_f64())
        }
        Kind::Numeric => Value::Numeric(numeric_text(b)?),
        Kind::Text => Value::Text(String::from_utf8(b.to_vec()).ok()?),
        // jsonb's binary form is a version byte (1) and the text; JSON text
        // itself never starts with that control character.
        Kind::Json => {
            let text = b.strip_prefix(&[1]).unwrap_or(b);
            Value::Json(String::from_utf8(text.to_vec()).ok()?)
        }
        Kind::Bytes => Value::Bytes(b.to_vec()),
        Kind::Uuid => Value::Uuid(uuid::Uuid::from_slice(b).ok()?),
        Kind::Date => {
            exact(b, 4)?;
            Value::Date(match b.get_i32() {
                d @ (i32::MAX | i32::MIN) => d,
                d => d.checked_add(PG_EPOCH_OFFSET_DAYS).filter(|d| *d != i32::MAX && *d != i32::MIN)?,
            })
        }
        Kind::Time => {
            exact(b, 8)?;
            Value::Time(b.get_i64())
        }
        Kind::Timestamp | Kind::TimestampTz => {
            exact(b, 8)?;
            let micros = match b.get_i64() {
                t @ (i64::MAX | i64::MIN) => t,
                // PostgreSQL's last 30 years do not fit ferry's range: the
                // text path names them.
                t => t.checked_add(PG_EPOCH_OFFSET_MICROS).filter(|t| *t != i64::MAX && *t != i64::MIN)?,
            };
            match kind {
                Kind::Timestamp => Value::Timestamp(micros),
                _ => Value::TimestampTz(micros),
            }
        }
        Kind::Interval => {
            exact(b, 16)?;
            let micros = b.get_i64();
            let days = b.get_i32();
            let months = b.get_i32();
            Value::Interval { months, days, micros }
        }
        Kind::Array(_) | Kind::Other => return None,
    })
}

/// PostgreSQL's text output of a binary `numeric` (as `numeric_out`
/// prints it: the integer part, then exactly `dscale` fraction digits).
fn numeric_text(mut b: &[u8]) -> Option<String> {
    if b.len() < 8 {
        return None;
    }
    let ndigits = usize::try_from(b.get_i16()).ok()?;
    let weight = i32::from(b.get_i16());
    let sign = b.get_u16();
    let dscale = usize::try_from(b.get_i16()).ok()?;
    if b.len() != ndigits * 2 {
        return None;
    }
    let digits: Vec<i16> = (0..ndigits).map(|_| b.get_i16()).collect();
    if digits.iter().any(|d| !(0..10_000).contains(d)) {
        return None;
    }
    match sign {
        NUMERIC_NAN => return Some("NaN".into()),
        NUMERIC_PINF => return Some("Infinity".into()),
        NUMERIC_NINF => return Some("-Infinity".into()),
        NUMERIC_POS | NUMERIC_NEG => {}
        _ => return None,
    }
    let digit = |d: i32| usize::try_from(d).ok().and_then(|d| digits.get(d)).copied().unwrap_or(0);
    let mut out = String::with_capacity(ndigits * 4 + dscale + 3);
    if sign == NUMERIC_NEG {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for d in 0..=weight {
            if d == 0 {
                out.push_str(&digit(d).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(d)));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let start = out.len();
        let mut d = weight + 1;
        while out.len() - start < dscale {
            out.push_str(&format!("{:04}", digit(d)));
            d += 1;
        }
        out.truncate(start + dscale);
    }
    Some(out)
}

/// The binary `numeric` of PostgreSQL's decimal text (`-12.340`, `NaN`,
/// `Infinity`); `None` for any other spelling (an exponent, spaces), which
/// the text path leaves to PostgreSQL.
fn numeric_binary(text: &str, out: &mut Vec<u8>) -> Option<()> {
    let special = |sign: u16, out: &mut Vec<u8>| {
        out.put_i16(0);
        out.put_i16(0);
        out.put_u16(sign);
        out.put_i16(0);
    };
    let sign = match text {
        "NaN" => Some(NUMERIC_NAN),
        "Infinity" => Some(NUMERIC_PINF),
        "-Infinity" => Some(NUMERIC_NINF),
        _ => None,
    };
    if let Some(sign) = sign {
        special(sign, out);
        return Some(());
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let dscale = i16::try_from(frac.len()).ok().filter(|s| *s <= 0x3FFF)?;
    let int = int.trim_start_matches('0');
    // Base-10000 groups aligned on the decimal point.
    let lead = (4 - int.len() % 4) % 4;
    let mut groups: Vec<i16> = Vec::with_capacity((int.len() + frac.len()) / 4 + 2);
    let group = |chunk: &[u8]| chunk.iter().fold(0i16, |n, b| n * 10 + i16::from(b - b'0'));
    let padded_int: Vec<u8> = std::iter::repeat_n(b'0', lead).chain(int.bytes()).collect();
    for chunk in padded_int.chunks(4) {
        groups.push(group(chunk));
    }
    let mut weight = (padded_int.len() / 4) as i32 - 1;
    let padded_frac: Vec<u8> = frac.bytes().chain(std::iter::repeat_n(b'0', (4 - frac.len() % 4) % 4)).collect();
    for chunk in padded_frac.chunks(4) {
        groups.push(group(chunk));
    }
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= leading as i32;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(i16::try_from(groups.len()).ok()?);
    out.put_i16(i16::try_from(weight).ok()?);
    out.put_u16(if negative && !groups.is_empty() { NUMERIC_NEG } else { NUMERIC_POS });
    out.put_i16(dscale);
    for g in groups {
        out.put_i16(g);
    }
    Some(())
}

/// How a target column's values travel in binary COPY: its base type's
/// binary form (`pg_type.typname` after domains are resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar, name, citext: the UTF-8 bytes.
    Text,
    Bytea,
    Json,
    /// Version byte 1, then the text.
    Jsonb,
    Uuid,
    Date,
    Time,
    /// timestamp and timestamptz: µs since 2000-01-01 (UTC).
    Timestamp,
    Interval,
}

impl Wire {
    /// The wire form of a base type, if ferry writes it in binary.
    pub(super) fn of_typname(typname: &str) -> Option<Wire> {
        Some(match typname {
            "bool" => Wire::Bool,
            "int2" => Wire::Int2,
            "int4" => Wire::Int4,
            "int8" => Wire::Int8,
            "float4" => Wire::Float4,
            "float8" => Wire::Float8,
            "numeric" => Wire::Numeric,
            "text" | "varchar" | "bpchar" | "name" | "citext" => Wire::Text,
            "bytea" => Wire::Bytea,
            "json" => Wire::Json,
            "jsonb" => Wire::Jsonb,
            "uuid" => Wire::Uuid,
            "date" => Wire::Date,
            "time" => Wire::Time,
            "timestamp" | "timestamptz" => Wire::Timestamp,
            "interval" => Wire::Interval,
            _ => return None,
        })
    }
}

/// Rows in binary COPY format for columns of `wires`, or `None` when a
/// value does not convert exactly (the batch then goes as text).
pub(super) fn encode_rows(wires: &[Wire], rows: &[Row], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    out.put_slice(SIGNATURE);
    out.put_i32(0);
    out.put_i32(0);
    for row in rows {
        if row.len() != wires.len() {
            return None;
        }
        out.put_i16(i16::try_from(row.len()).ok()?);
        for (wire, value) in wires.iter().zip(row) {
            encode_value(*wire, value, out)?;
        }
    }
    out.put_i16(-1);
    Some(())
}

/// Appends one field (length and bytes).
fn encode_value(wire: Wire, value: &Value, out: &mut Vec<u8>) -> Option<()> {
    if matches!(value, Value::Null) {
        out.put_i32(-1);
        return Some(());
    }
    let integer = |v: &Value| match v {
        Value::Int16(n) => Some(i64::from(*n)),
        Value::Int32(n) => Some(i64::from(*n)),
        Value::Int64(n) => Some(*n),
        _ => None,
    };
    let at = out.len();
    out.put_i32(0);
    match (wire, value) {
        (Wire::Bool, Value::Bool(b)) => out.put_u8(u8::from(*b)),
        (Wire::Int2, v) => out.put_i16(i16::try_from(integer(v)?).ok()?),
        (Wire::Int4, v) => out.put_i32(i32::try_from(integer(v)?).ok()?),
        (Wire::Int8, v) => out.put_i64(integer(v)?),
        (Wire::Float4, Value::Float32(f)) => out.put_f32(*f),
        (Wire::Float8, Value::Float64(f)) => out.put_f64(*f),
        (Wire::Numeric, Value::Numeric(text)) => numeric_binary(text, out)?,
        (Wire::Numeric, v) => numeric_binary(&integer(v)?.to_string(), out)?,
        (Wire::Text | Wire::Json, Value::Text(s) | Value::Json(s)) => out.put_slice(s.as_bytes()),
        (Wire::Text, Value::Numeric(s)) => out.put_slice(s.as_bytes()),
        (Wire::Jsonb, Value::Text(s) | Value::Json(s)) => {
            out.put_u8(1);
            out.put_slice(s.as_bytes());
        }
        (Wire::Bytea, Value::Bytes(b)) => out.put_slice(b),
        (Wire::Uuid, Value::Uuid(u)) => out.put_slice(u.as_bytes()),
        (Wire::Date, Value::Date(d)) => out.put_i32(match *d {
            d @ (i32::MAX | i32::MIN) => d,
            d => d.checked_sub(PG_EPOCH_OFFSET_DAYS)?,
        }),
        (Wire::Time, Value::Time(t)) => out.put_i64(*t),
        (Wire::Timestamp, Value::Timestamp(t) | Value::TimestampTz(t)) => out.put_i64(match *t {
            t @ (i64::MAX | i64::MIN) => t,
            t => t.checked_sub(PG_EPOCH_OFFSET_MICROS).filter(|t| *t != i64::MIN)?,
        }),
        (Wire::Interval, Value::Interval { months, days, micros }) => {
            out.put_i64(*micros);
            out.put_i32(*days);
            out.put_i32(*months);
        }
        _ => return None,
    }
    let len = i32::try_from(out.len() - at - 4).ok()?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        let mut out = Vec::new();
        numeric_binary(text, &mut out).unwrap_or_else(|| panic!("{text} encodes"));
        numeric_text(&out).unwrap()
    }

    #[test]
    fn numerics_keep_their_text_through_the_binary_form() {
        for text in [
            "0",
            "0.000",
            "1",
            "-1",
            "10000",
            "9999",
            "12345678.9",
            "-0.01",
            "1.50",
            "0.00000000000000000001",
            "123456789012345678901234567890.123456789012345678901234567890",
            "NaN",
            "Infinity",
            "-Infinity",
            "100000000",
            "0.0001",
            "0.1000",
        ] {
            assert_eq!(round_trip(text), text);
        }
        // As numeric_in reads them: no sign on zero, leading zeros dropped.
        assert_eq!(round_trip("-0.000"), "0.000");
        assert_eq!(round_trip("007.5"), "7.5");
        assert!(numeric_binary("1e5", &mut Vec::new()).is_none());
        assert!(numeric_binary(" 1", &mut Vec::new()).is_none());
        assert!(numeric_binary("", &mut Vec::new()).is_none());
    }

    #[test]
    fn numeric_binary_matches_postgresql_layout() {
        // 12345.678 → digits [1, 2345, 6780], weight 1, dscale 3.
        let mut out = Vec::new();
        numeric_binary("12345.678", &mut out).unwrap();
        let words: Vec<i16> = out.chunks(2).map(|c| i16::from_be_bytes([c[0], c[1]])).collect();
        assert_eq!(words, [3, 1, 0, 3, 1, 2345, 6780]);
    }

    #[test]
    fn values_that_do_not_convert_exactly_leave_the_batch_to_text() {
        let mut out = Vec::new();
        assert!(encode_rows(&[Wire::Int4], &[vec![Value::Int64(1 << 40)]], &mut out).is_none());
        assert!(encode_rows(&[Wire::Float8], &[vec![Value::Float32(0.1)]], &mut out).is_none());
        assert!(encode_rows(&[Wire::Uuid], &[vec![Value::Text("x".into())]], &mut out).is_none());
        assert!(encode_rows(&[Wire::Int8], &[vec![Value::Int32(7)]], &mut out).is_some());
    }
}
