//! Debezium event values of any table as typed values.
//!
//! With `schemas.enable`, each field's schema names its logical type and
//! the value is decoded exactly: `org.apache.kafka.connect.data.Decimal`
//! (base64 big-endian two's-complement unscaled value, `scale` parameter),
//! `io.debezium.data.VariableScaleDecimal` (`{scale, value}`),
//! `io.debezium.time.Date` (days), `Time`/`MicroTime`/`NanoTime`,
//! `Timestamp`/`MicroTimestamp`/`NanoTimestamp`, `ZonedTimestamp` (ISO
//! 8601), `MicroDuration` and `Interval`, `io.debezium.data.Json` and
//! `Uuid`, `bytes` (base64) and arrays of any of these. Without a schema the
//! column's kind in the pipeline's table decides (integer times in the
//! unit given by `--integer-time`).

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::Value as Json;

use super::debezium::IntegerTime;
use crate::keyset::Row;
use crate::schema::{ColumnDef, TableDef};
use crate::value::{Kind, Value, decode_pg_text};

/// The field schemas of `before` or `after` in an event's value schema.
pub fn field_schemas<'a>(schema: Option<&'a Json>, side: &str) -> HashMap<&'a str, &'a Json> {
    let mut out = HashMap::new();
    let sides = schema.and_then(|s| s.get("fields")).and_then(Json::as_array);
    let Some(side) = sides.and_then(|f| f.iter().find(|f| f.get("field").and_then(Json::as_str) == Some(side))) else {
        return out;
    };
    for field in side.get("fields").and_then(Json::as_array).into_iter().flatten() {
        if let Some(name) = field.get("field").and_then(Json::as_str) {
            out.insert(name, field);
        }
    }
    out
}

/// The field names of an event's `side` in the order its `schema` block
/// lists them (`None`: no schema block).
pub fn field_order(schema: Option<&Json>, side: &str) -> Option<Vec<String>> {
    let sides = schema?.get("fields")?.as_array()?;
    let side = sides.iter().find(|f| f.get("field").and_then(Json::as_str) == Some(side))?;
    let fields = side.get("fields")?.as_array()?;
    Some(fields.iter().filter_map(|f| f.get("field").and_then(Json::as_str)).map(str::to_string).collect())
}

/// The row of `def` in `map` (an event's `before` or `after`); `Err` names
/// the column. A column absent from `map` is an error unless `partial`
/// (then it is `Null`: a key-only `before`).
pub fn row_of(
    def: &TableDef,
    map: &serde_json::Map<String, Json>,
    fields: &HashMap<&str, &Json>,
    unit: IntegerTime,
) -> Result<Row, String> {
    def.columns
        .iter()
        .map(|column| match map.get(&column.name) {
            None => Err(format!("the event has no column `{}`", column.name)),
            Some(json) => value_of(column, &column.kind, json, fields.get(column.name.as_str()).copied(), unit)
                .map_err(|e| format!("column `{}`: {e}", column.name)),
        })
        .collect()
}

/// The key values (key order) of `def` in `map`.
pub fn key_of(
    def: &TableDef,
    map: &serde_json::Map<String, Json>,
    fields: &HashMap<&str, &Json>,
    unit: IntegerTime,
) -> Result<Row, String> {
    def.primary_key
        .iter()
        .map(|&i| {
            let column = &def.columns[i];
            match map.get(&column.name) {
                None | Some(Json::Null) => Err(format!("key column `{}` is missing", column.name)),
                Some(json) => value_of(column, &column.kind, json, fields.get(column.name.as_str()).copied(), unit)
                    .map_err(|e| format!("key column `{}`: {e}", column.name)),
            }
        })
        .collect()
}

fn logical(field: Option<&Json>) -> Option<&str> {
    field.and_then(|f| f.get("name")).and_then(Json::as_str)
}

fn int(json: &Json) -> Result<i64, String> {
    json.as_i64().ok_or_else(|| format!("{json} is not an integer"))
}

/// One value of `column` (of kind `kind`: the column's, or its arrays'
/// element kind).
fn value_of(
    column: &ColumnDef,
    kind: &Kind,
    json: &Json,
    field: Option<&Json>,
    unit: IntegerTime,
) -> Result<Value, String> {
    if json.is_null() {
        return Ok(Value::Null);
    }
    let scaled = |n: i64, per_micro: IntegerTime| -> i64 {
        match per_micro {
            IntegerTime::Micros => n,
            IntegerTime::Millis => n * 1000,
            IntegerTime::Nanos => n.div_euclid(1000),
        }
    };
    let unit_of = |name: Option<&str>| match name {
        Some("io.debezium.time.Timestamp" | "io.debezium.time.Time" | "org.apache.kafka.connect.data.Timestamp") => {
            IntegerTime::Millis
        }
        Some("io.debezium.time.NanoTimestamp" | "io.debezium.time.NanoTime") => IntegerTime::Nanos,
        Some(_) => IntegerTime::Micros,
        None => unit,
    };
    let name = logical(field);
    match (name, kind, json) {
        (Some("org.apache.kafka.connect.data.Decimal"), _, Json::String(b64)) => {
            let scale = field
                .and_then(|f| f.get("parameters"))
                .and_then(|p| p.get("scale"))
                .and_then(|s| s.as_str().and_then(|s| s.parse().ok()).or_else(|| s.as_u64()))
                .unwrap_or(0) as u32;
            Ok(Value::Numeric(decimal(b64, scale)?))
        }
        (Some("io.debezium.data.VariableScaleDecimal"), _, Json::Object(o)) => {
            let scale = o.get("scale").and_then(Json::as_u64).ok_or("VariableScaleDecimal without a scale")? as u32;
            let b64 = o.get("value").and_then(Json::as_str).ok_or("VariableScaleDecimal without a value")?;
            Ok(Value::Numeric(decimal(b64, scale)?))
        }
        (Some("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date"), _, _) => {
            Ok(Value::Date(i32::try_from(int(json)?).map_err(|_| "date out of range")?))
        }
        (Some("io.debezium.time.ZonedTimestamp"), _, Json::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Value::TimestampTz(t.timestamp_micros()))
            .map_err(|e| format!("ZonedTimestamp {s:?}: {e}")),
        (Some("io.debezium.time.MicroDuration"), _, _) => {
            Ok(Value::Interval { months: 0, days: 0, micros: int(json)? })
        }
        (_, Kind::Bool, Json::Bool(b)) => Ok(Value::Bool(*b)),
        (_, Kind::Int16, _) => i16::try_from(int(json)?).map(Value::Int16).map_err(|e| e.to_string()),
        (_, Kind::Int32, _) => i32::try_from(int(json)?).map(Value::Int32).map_err(|e| e.to_string()),
        (_, Kind::Int64, _) => int(json).map(Value::Int64),
        (_, Kind::Float32, Json::Number(n)) => Ok(Value::Float32(n.as_f64().unwrap_or(f64::NAN) as f32)),
        (_, Kind::Float64, Json::Number(n)) => Ok(Value::Float64(n.as_f64().unwrap_or(f64::NAN))),
        // A decimal in `double` or `string` handling mode: as written.
        (_, Kind::Numeric, Json::Number(n)) => Ok(Value::Numeric(n.to_string())),
        (_, Kind::Bytes, Json::String(b64)) if field.is_some() => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Value::Bytes)
            .map_err(|e| format!("bytes are not base64: {e}")),
        (_, Kind::Time, Json::Number(_)) => Ok(Value::Time(scaled(int(json)?, unit_of(name)))),
        (_, Kind::Timestamp, Json::Number(_)) => Ok(Value::Timestamp(scaled(int(json)?, unit_of(name)))),
        (_, Kind::TimestampTz, Json::Number(_)) => Ok(Value::TimestampTz(scaled(int(json)?, unit_of(name)))),
        (_, Kind::TimestampTz, Json::String(s)) if s.contains('T') => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Value::TimestampTz(t.timestamp_micros()))
            .map_err(|e| format!("{s:?}: {e}")),
        (_, Kind::Date, Json::Number(_)) => {
            Ok(Value::Date(i32::try_from(int(json)?).map_err(|_| "date out of range")?))
        }
        (_, Kind::Array(element), Json::Array(items)) => {
            let item_field = field.and_then(|f| f.get("items"));
            Ok(Value::Array {
                element: (**element).clone(),
                items: items
                    .iter()
                    .map(|item| value_of(column, element, item, item_field, unit))
                    .collect::<Result<_, _>>()?,
            })
        }
        (_, Kind::Other, Json::String(s)) => {
            Ok(Value::Unsupported { type_name: column.sql_type.clone(), text: s.clone() })
        }
        // Anything else written as text (uuid, json, decimals in string
        // mode, NaN, intervals in ISO 8601, text): PostgreSQL's text form.
        (_, _, Json::String(s)) => decode_pg_text(kind, &column.sql_type, s).map_err(|e| e.to_string()),
        (_, _, other) => Err(format!("{other} does not fit a {} column", column.sql_type)),
    }
}

/// The decimal text of a base64 big-endian two's-complement integer
/// scaled by 10^-scale.
fn decimal(b64: &str, scale: u32) -> Result<String, String> {
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("decimal {b64:?} is not base64: {e}"))?;
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    if negative {
        // Two's complement: invert and add one.
        for b in bytes.iter_mut() {
            *b = !*b;
        }
        for b in bytes.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    // Base 256 to base 10 by repeated division.
    let mut digits = Vec::new();
    let mut number: Vec<u8> = bytes.into_iter().skip_while(|&b| b == 0).collect();
    while !number.is_empty() {
        let mut rest = 0u32;
        for b in number.iter_mut() {
            let acc = (rest << 8) | u32::from(*b);
            *b = (acc / 10) as u8;
            rest = acc % 10;
        }
        digits.push(b'0' + rest as u8);
        let zeros = number.iter().take_while(|&&b| b == 0).count();
        number.drain(..zeros);
    }
    let scale = scale as usize;
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let mut text = String::from_utf8(digits).expect("ASCII digits");
    if scale > 0 {
        text.insert(text.len() - scale, '.');
    }
    if negative {
        text.insert(0, '-');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_from_unscaled_bytes() {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(decimal(&b64(&[0x30, 0x39]), 2).unwrap(), "123.45");
        assert_eq!(decimal(&b64(&[0xcf, 0xc7]), 2).unwrap(), "-123.45");
        assert_eq!(decimal(&b64(&[0x00]), 3).unwrap(), "0.000");
        assert_eq!(decimal(&b64(&[0x05]), 3).unwrap(), "0.005");
        assert_eq!(decimal(&b64(&[0xff]), 0).unwrap(), "-1");
        // 2^64: beyond any machine integer.
        assert_eq!(decimal(&b64(&[0x01, 0, 0, 0, 0, 0, 0, 0, 0]), 4).unwrap(), "1844674407370955.1616");
    }
}
