//! Typed values: what a row of any table is made of once ferry has read it.
//!
//! [`Value`] mirrors the `value` variant of the `transform-row` contract:
//! the scalar kinds ferry understands exactly, one-dimensional arrays of
//! them, and [`Value::Unsupported`] for everything else (enums, ranges,
//! geometric types, `money`, `inet`…), which keeps the engine's type name
//! and its exact text so a same-engine copy stays byte-exact and nothing is
//! ever silently stringified into another type.
//!
//! PostgreSQL's text I/O is the interchange format on the PostgreSQL side
//! (COPY in and out): [`decode_pg_text`] and [`encode_pg_text`] convert
//! under the session settings ferry's connections pin (`DateStyle=ISO`,
//! `TimeZone=UTC`, `IntervalStyle=iso_8601`, `extra_float_digits=3`,
//! `bytea_output=hex`; see [`PG_SESSION`]).
//!
//! Time is microseconds (PostgreSQL's precision): dates are days since
//! 1970-01-01, timestamps µs since 1970-01-01T00:00:00 (UTC for
//! `timestamptz`); `infinity`/`-infinity` are the extreme values of the
//! integer, as PostgreSQL stores them.

use std::fmt::Write as _;

/// Session settings under which [`decode_pg_text`] reads PostgreSQL's output.
pub const PG_SESSION: [(&str, &str); 5] = [
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// The logical type of a column (or of an array's elements).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Exact decimal (`numeric`, `decimal`).
    Numeric,
    Text,
    Bytes,
    Json,
    Uuid,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
    /// One-dimensional array of a scalar kind, elements nullable.
    Array(Box<Kind>),
    /// Any other type: carried as the engine's exact text.
    Other,
}

impl Kind {
    /// The kind of a PostgreSQL column from its base type (domains
    /// resolved), the base type's category and, for an array, its
    /// element type.
    pub fn from_pg_column(base: &str, category: &str, elem: Option<&str>) -> Kind {
        match (category, elem) {
            ("A", Some(elem)) => match Kind::from_pg_typname(elem) {
                k if k.is_scalar() => Kind::Array(Box::new(k)),
                _ => Kind::Other,
            },
            _ => Kind::from_pg_typname(base),
        }
    }

    /// The kind of a PostgreSQL base type (`pg_type.typname`, after domains
    /// are resolved to their base type); arrays are handled by the caller.
    pub fn from_pg_typname(typname: &str) -> Kind {
        match typname {
            "bool" => Kind::Bool,
            "int2" => Kind::Int16,
            "int4" => Kind::Int32,
            "int8" => Kind::Int64,
            "float4" => Kind::Float32,
            "float8" => Kind::Float64,
            "numeric" => Kind::Numeric,
            "text" | "varchar" | "bpchar" | "name" | "citext" => Kind::Text,
            "bytea" => Kind::Bytes,
            "json" | "jsonb" => Kind::Json,
            "uuid" => Kind::Uuid,
            "date" => Kind::Date,
            "time" => Kind::Time,
            "timestamp" => Kind::Timestamp,
            "timestamptz" => Kind::TimestampTz,
            "interval" => Kind::Interval,
            _ => Kind::Other,
        }
    }

    pub fn is_scalar(&self) -> bool {
        !matches!(self, Kind::Array(_) | Kind::Other)
    }

    /// The PostgreSQL type ferry creates for this kind when nothing more
    /// precise is known (e.g. a SQLite source column).
    pub fn pg_type(&self) -> String {
        match self {
            Kind::Bool => "boolean".into(),
            Kind::Int16 => "smallint".into(),
            Kind::Int32 => "integer".into(),
            Kind::Int64 => "bigint".into(),
            Kind::Float32 => "real".into(),
            Kind::Float64 => "double precision".into(),
            Kind::Numeric => "numeric".into(),
            Kind::Text | Kind::Other => "text".into(),
            Kind::Bytes => "bytea".into(),
            Kind::Json => "jsonb".into(),
            Kind::Uuid => "uuid".into(),
            Kind::Date => "date".into(),
            Kind::Time => "time".into(),
            Kind::Timestamp => "timestamp".into(),
            Kind::TimestampTz => "timestamptz".into(),
            Kind::Interval => "interval".into(),
            Kind::Array(element) => format!("{}[]", element.pg_type()),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Array(element) => write!(f, "array of {element}"),
            other => f.write_str(
                &serde_json::to_value(other).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            ),
        }
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    /// Exact decimal as text: `-12.340`, `NaN`, `Infinity`.
    Numeric(String),
    Text(String),
    Bytes(Vec<u8>),
    /// A JSON document as text, exactly as stored.
    Json(String),
    Uuid(uuid::Uuid),
    /// Days since 1970-01-01; `i32::MAX`/`i32::MIN` are ±infinity.
    Date(i32),
    /// Microseconds since midnight (`24:00:00` is 86 400 000 000).
    Time(i64),
    /// Microseconds since 1970-01-01T00:00:00; `i64::MAX`/`MIN` are ±infinity.
    Timestamp(i64),
    /// Microseconds since 1970-01-01T00:00:00Z; `i64::MAX`/`MIN` are ±infinity.
    TimestampTz(i64),
    Interval {
        months: i32,
        days: i32,
        micros: i64,
    },
    /// A one-dimensional array; every element is `Null` or of the kind.
    Array {
        element: Kind,
        items: Vec<Value>,
    },
    /// A value of a type ferry does not interpret: its type and exact text.
    Unsupported {
        type_name: String,
        text: String,
    },
}

/// A value that cannot be read as its column's type: the row becomes a
/// dead letter of kind `extract` with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

fn bad(kind: &str, text: &str) -> BadValue {
    let shown: String = text.chars().take(80).collect();
    BadValue(format!("`{shown}` is not a valid {kind}"))
}

/// PostgreSQL's last 30 years (294247–294276 AD) do not fit in 64-bit
/// microseconds since 1970 (PostgreSQL counts from 2000).
fn bad_time(kind: &str, text: &str) -> BadValue {
    BadValue(format!(
        "`{text}` is not a valid {kind} within ferry's range (64-bit microseconds since 1970: 290308 BC to 294246 AD)"
    ))
}

/// Reads PostgreSQL's text output of a value of kind `kind` (see
/// [`PG_SESSION`]); `type_name` is the column's SQL type, kept for
/// [`Value::Unsupported`].
pub fn decode_pg_text(kind: &Kind, type_name: &str, text: &str) -> Result<Value, BadValue> {
    Ok(match kind {
        Kind::Bool => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(bad("boolean", text)),
        },
        Kind::Int16 => Value::Int16(text.parse().map_err(|_| bad("smallint", text))?),
        Kind::Int32 => Value::Int32(text.parse().map_err(|_| bad("integer", text))?),
        Kind::Int64 => Value::Int64(text.parse().map_err(|_| bad("bigint", text))?),
        Kind::Float32 => Value::Float32(parse_float(text).map(|f| f as f32).ok_or_else(|| bad("real", text))?),
        Kind::Float64 => Value::Float64(parse_float(text).ok_or_else(|| bad("double precision", text))?),
        Kind::Numeric => Value::Numeric(text.to_string()),
        Kind::Text => Value::Text(text.to_string()),
        Kind::Json => Value::Json(text.to_string()),
        Kind::Bytes => {
            let hex = text.strip_prefix("\\x").ok_or_else(|| bad("bytea (hex output)", text))?;
            Value::Bytes(hex::decode(hex).map_err(|_| bad("bytea", text))?)
        }
        Kind::Uuid => Value::Uuid(text.parse().map_err(|_| bad("uuid", text))?),
        Kind::Date => Value::Date(parse_date(text).ok_or_else(|| bad("date", text))?),
        Kind::Time => Value::Time(parse_time(text).ok_or_else(|| bad("time", text))?),
        Kind::Timestamp => Value::Timestamp(parse_timestamp(text, false).ok_or_else(|| bad_time("timestamp", text))?),
        Kind::TimestampTz => {
            Value::TimestampTz(parse_timestamp(text, true).ok_or_else(|| bad_time("timestamp with time zone", text))?)
        }
        Kind::Interval => {
            let (months, days, micros) = parse_interval(text).ok_or_else(|| bad("interval (ISO 8601)", text))?;
            Value::Interval { months, days, micros }
        }
        Kind::Array(element) => match parse_pg_array(text) {
            Some(items) => Value::Array {
                element: (**element).clone(),
                items: items
                    .into_iter()
                    .map(|item| match item {
                        None => Ok(Value::Null),
                        Some(s) => decode_pg_text(element, type_name, &s),
                    })
                    .collect::<Result<_, _>>()?,
            },
            // Multi-dimensional or with explicit bounds: kept exactly.
            None => Value::Unsupported { type_name: type_name.to_string(), text: text.to_string() },
        },
        Kind::Other => Value::Unsupported { type_name: type_name.to_string(), text: text.to_string() },
    })
}

/// Writes a value as PostgreSQL's text input (`None` for NULL).
pub fn encode_pg_text(value: &Value) -> Option<String> {
    let mut out = String::new();
    if write_pg_text(value, &mut out) { Some(out) } else { None }
}

/// Appends the PostgreSQL text form of `value`; false for NULL.
pub fn write_pg_text(value: &Value, out: &mut String) -> bool {
    match value {
        Value::Null => return false,
        Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Value::Int16(n) => write!(out, "{n}").unwrap(),
        Value::Int32(n) => write!(out, "{n}").unwrap(),
        Value::Int64(n) => write!(out, "{n}").unwrap(),
        Value::Float32(f) => write_float(*f as f64, Some(*f), out),
        Value::Float64(f) => write_float(*f, None, out),
        Value::Numeric(s) | Value::Text(s) | Value::Json(s) => out.push_str(s),
        Value::Unsupported { text, .. } => out.push_str(text),
        Value::Bytes(b) => {
            out.push_str("\\x");
            out.push_str(&hex::encode(b));
        }
        Value::Uuid(u) => write!(out, "{}", u.hyphenated()).unwrap(),
        Value::Date(d) => out.push_str(&format_date(*d)),
        Value::Time(t) => write_time(*t, out),
        Value::Timestamp(t) => write_timestamp(*t, false, out),
        Value::TimestampTz(t) => write_timestamp(*t, true, out),
        Value::Interval { months, days, micros } => out.push_str(&format_interval(*months, *days, *micros)),
        Value::Array { items, .. } => {
            out.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let mut element = String::new();
                if !write_pg_text(item, &mut element) {
                    out.push_str("NULL");
                    continue;
                }
                out.push('"');
                for c in element.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            out.push('}');
        }
    }
    true
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok().filter(|f: &f64| f.is_finite()),
    }
}

fn write_float(f: f64, single: Option<f32>, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        // Rust's shortest round-trip form, which PostgreSQL reads exactly.
        match single {
            Some(s) => write!(out, "{s:e}").unwrap(),
            None => write!(out, "{f:e}").unwrap(),
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical years:
/// 1 BC is year 0). After Howard Hinnant's `days_from_civil`.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// `YYYY-MM-DD` (years may have more digits), optional ` BC`; days since
/// 1970-01-01.
fn parse_civil(text: &str) -> Option<i64> {
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    let mut parts = text.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    if year < 1 || !(1..=12).contains(&month) {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    (day >= 1 && day <= days_in_month(year, month)).then(|| days_from_civil(year, month, day))
}

fn parse_date(text: &str) -> Option<i32> {
    match text {
        "infinity" => Some(i32::MAX),
        "-infinity" => Some(i32::MIN),
        _ => i32::try_from(parse_civil(text)?).ok().filter(|d| *d != i32::MAX && *d != i32::MIN),
    }
}

pub fn format_date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => civil_text(d as i64),
    }
}

fn civil_text(days: i64) -> String {
    let (year, month, day) = civil_from_days(days);
    if year <= 0 { format!("{:04}-{month:02}-{day:02} BC", 1 - year) } else { format!("{year:04}-{month:02}-{day:02}") }
}

const DAY_MICROS: i64 = 86_400_000_000;

/// `HH:MM:SS[.ffffff]` → µs since midnight (up to `24:00:00`).
fn parse_time(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let s = parts.next()?;
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = whole.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) || !(0..60).contains(&m) || !(0..=60).contains(&sec)
    {
        return None;
    }
    let micros: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
    let total = ((h * 60 + m) * 60 + sec) * 1_000_000 + micros;
    (0..=DAY_MICROS).contains(&total).then_some(total)
}

pub fn format_time(micros: i64) -> String {
    let mut s = String::with_capacity(15);
    write_time(micros, &mut s);
    s
}

/// [`format_time`] appended to `out`.
fn write_time(micros: i64, out: &mut String) {
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    write!(out, "{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60).unwrap();
    if frac != 0 {
        let (mut digits, mut frac) = (6, frac);
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        write!(out, ".{frac:0digits$}").unwrap();
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]` or ±infinity.
fn parse_timestamp(text: &str, zoned: bool) -> Option<i64> {
    match text {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    let (date, rest) = text.split_once([' ', 'T'])?;
    let (time, offset) = if zoned {
        let at = rest.rfind(['+', '-'])?;
        (&rest[..at], parse_offset(&rest[at..])?)
    } else {
        (rest, 0)
    };
    let days = parse_civil(&if bc { format!("{date} BC") } else { date.to_string() })?;
    let micros = parse_time(time)?;
    let local = days.checked_mul(DAY_MICROS)?.checked_add(micros)?;
    local.checked_sub(offset * 1_000_000).filter(|t| *t != i64::MAX && *t != i64::MIN)
}

/// `+HH`, `-HH:MM`, `+HH:MM:SS` → seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    let sign = if text.starts_with('-') { -1 } else { 1 };
    let mut total = 0;
    for (i, part) in text[1..].split(':').enumerate() {
        if i > 2 || part.len() != 2 {
            return None;
        }
        total += part.parse::<i64>().ok()? * [3600, 60, 1][i];
    }
    Some(sign * total)
}

pub fn format_timestamp(micros: i64, zoned: bool) -> String {
    let mut s = String::with_capacity(32);
    write_timestamp(micros, zoned, &mut s);
    s
}

/// [`format_timestamp`] appended to `out`.
fn write_timestamp(micros: i64, zoned: bool, out: &mut String) {
    match micros {
        i64::MAX => return out.push_str("infinity"),
        i64::MIN => return out.push_str("-infinity"),
        _ => {}
    }
    let (year, month, day) = civil_from_days(micros.div_euclid(DAY_MICROS));
    write!(out, "{:04}-{month:02}-{day:02} ", if year <= 0 { 1 - year } else { year }).unwrap();
    write_time(micros.rem_euclid(DAY_MICROS), out);
    if zoned {
        out.push_str("+00");
    }
    if year <= 0 {
        out.push_str(" BC");
    }
}

/// ISO 8601 with designators, as PostgreSQL writes under
/// `IntervalStyle=iso_8601`: `P1Y2M3DT4H5M6.5S`, parts may be negative.
fn parse_interval(text: &str) -> Option<(i32, i32, i64)> {
    let body = text.strip_prefix('P')?;
    let (date, time) = body.split_once('T').unwrap_or((body, ""));
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    let mut number = String::new();
    for c in date.chars() {
        match c {
            'Y' => months += take_int(&mut number)? * 12,
            'M' => months += take_int(&mut number)?,
            'W' => days += take_int(&mut number)? * 7,
            'D' => days += take_int(&mut number)?,
            _ => number.push(c),
        }
    }
    if !number.is_empty() {
        return None;
    }
    for c in time.chars() {
        match c {
            'H' => micros += take_int(&mut number)? * 3_600_000_000,
            'M' => micros += take_int(&mut number)? * 60_000_000,
            'S' => {
                let (whole, frac) = number.split_once('.').unwrap_or((&number, ""));
                let negative = whole.starts_with('-');
                let w: i64 = whole.parse().ok()?;
                if frac.len() > 6 {
                    return None;
                }
                let f: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
                micros += w * 1_000_000 + if negative { -f } else { f };
                number.clear();
            }
            _ => number.push(c),
        }
    }
    if !number.is_empty() {
        return None;
    }
    Some((i32::try_from(months).ok()?, i32::try_from(days).ok()?, micros))
}

fn take_int(number: &mut String) -> Option<i64> {
    let n = number.parse().ok();
    number.clear();
    n
}

pub fn format_interval(months: i32, days: i32, micros: i64) -> String {
    let mut s = format!("P{}Y{}M{}DT", months / 12, months % 12, days);
    let (h, rest) = (micros / 3_600_000_000, micros % 3_600_000_000);
    let (m, rest) = (rest / 60_000_000, rest % 60_000_000);
    write!(s, "{h}H{m}M").unwrap();
    let (sec, frac) = (rest / 1_000_000, rest % 1_000_000);
    if frac == 0 {
        write!(s, "{sec}S").unwrap();
    } else {
        let sign = if rest < 0 { "-" } else { "" };
        let f = format!("{:06}", frac.abs());
        write!(s, "{sign}{}.{}S", sec.abs(), f.trim_end_matches('0')).unwrap();
    }
    s
}

/// The elements of a one-dimensional PostgreSQL array literal (`None` for
/// NULL); `None` overall for anything else (nested, explicit bounds).
fn parse_pg_array(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        match chars.peek() {
            Some('{') => return None,
            Some('"') => {
                chars.next();
                let mut item = String::new();
                loop {
                    match chars.next()? {
                        '\\' => item.push(chars.next()?),
                        '"' => break,
                        c => item.push(c),
                    }
                }
                items.push(Some(item));
            }
            _ => {
                let mut item = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    if c == '\\' {
                        chars.next();
                        item.push(chars.next()?);
                        continue;
                    }
                    item.push(c);
                    chars.next();
                }
                let item = item.trim().to_string();
                items.push(if item.eq_ignore_ascii_case("NULL") { None } else { Some(item) });
            }
        }
        match chars.next() {
            None => return Some(items),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

/// Appends `text` escaped for COPY's text format.
pub fn copy_escape(text: &str, out: &mut String) {
    // Runs between special bytes are copied whole (the four are ASCII, so
    // every cut falls on a character boundary).
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        let escaped = match b {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&text[start..]);
}

/// Reads one field of COPY's text format (`None` for `\N`).
pub fn copy_unescape(field: &[u8]) -> Result<Option<String>, BadValue> {
    if field == b"\\N" {
        return Ok(None);
    }
    let invalid = |_| BadValue("COPY field is not valid UTF-8".into());
    if !field.contains(&b'\\') {
        // Most fields: nothing to unescape.
        return std::str::from_utf8(field).map(|s| Some(s.to_owned())).map_err(invalid);
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = field[i + 1];
        i += 2;
        match next {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut n = (next - b'0') as u32;
                for _ in 0..2 {
                    if i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                        n = n * 8 + (field[i] - b'0') as u32;
                        i += 1;
                    }
                }
                out.push(n as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).map(Some).map_err(|e| invalid(e.utf8_error()))
}

/// Canonical JSON text: object keys sorted, no whitespace, integral numbers
/// without a fraction (`1.0` and `1e0` are `1`), so that PostgreSQL's jsonb
/// normalisation and the plugin's own formatting compare equal. Invalid JSON
/// is returned unchanged (and then differs).
pub fn canonical_json(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => {
            let mut out = String::with_capacity(text.len());
            write_canonical(&v, &mut out);
            out
        }
        Err(_) => text.to_string(),
    }
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let sorted: std::collections::BTreeMap<&String, &serde_json::Value> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => out.push_str(&(f as i64).to_string()),
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(kind: Kind, text: &str) {
        let value = decode_pg_text(&kind, "t", text).unwrap_or_else(|e| panic!("{kind:?} {text}: {e}"));
        assert_eq!(encode_pg_text(&value).as_deref(), Some(text), "{kind:?} {value:?}");
    }

    #[test]
    fn civil_dates_convert_both_ways() {
        for days in [-2_000_000i64, -719_468, -1, 0, 1, 10_957, 2_932_896, 2_147_483_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(2000, 1, 1), 10_957);
    }

    #[test]
    fn postgres_text_round_trips() {
        round_trip(Kind::Date, "2024-02-29");
        round_trip(Kind::Date, "4713-01-01 BC");
        round_trip(Kind::Date, "5874897-12-31");
        round_trip(Kind::Date, "infinity");
        round_trip(Kind::Time, "24:00:00");
        round_trip(Kind::Time, "13:45:06.000001");
        round_trip(Kind::Timestamp, "294246-12-31 23:59:59.999999");
        assert!(decode_pg_text(&Kind::Timestamp, "t", "294276-12-31 23:59:59").unwrap_err().0.contains("range"));
        round_trip(Kind::Timestamp, "0044-03-15 12:00:00 BC");
        round_trip(Kind::TimestampTz, "2024-05-01 10:20:30.123456+00");
        round_trip(Kind::TimestampTz, "-infinity");
        round_trip(Kind::Bytes, "\\x00ff10");
        round_trip(Kind::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        round_trip(Kind::Array(Box::new(Kind::Text)), "{\"a b\",NULL,\"q\\\"uote\",\"\"}");
        round_trip(Kind::Interval, "P1Y2M3DT4H5M6.5S");
        round_trip(Kind::Interval, "P-1Y-2M3DT-4H-5M-6.5S");
        assert_eq!(
            decode_pg_text(&Kind::TimestampTz, "t", "2024-05-01 12:20:30.5+02").unwrap(),
            decode_pg_text(&Kind::TimestampTz, "t", "2024-05-01 10:20:30.5+00").unwrap()
        );
        assert_eq!(
            decode_pg_text(&Kind::Interval, "t", "PT0S").unwrap(),
            Value::Interval { months: 0, days: 0, micros: 0 }
        );
        let floats = ["0", "-0", "1.5", "1e+300", "NaN", "-Infinity", "0.1"];
        for f in floats {
            let v = decode_pg_text(&Kind::Float64, "t", f).unwrap();
            let back = decode_pg_text(&Kind::Float64, "t", &encode_pg_text(&v).unwrap()).unwrap();
            assert!(format!("{v:?}") == format!("{back:?}"), "{f}");
        }
    }

    #[test]
    fn nested_arrays_are_kept_as_text() {
        let kind = Kind::Array(Box::new(Kind::Int32));
        let v = decode_pg_text(&kind, "integer[]", "{{1,2},{3,4}}").unwrap();
        assert!(matches!(v, Value::Unsupported { .. }));
        assert_eq!(encode_pg_text(&v).unwrap(), "{{1,2},{3,4}}");
        assert!(matches!(decode_pg_text(&kind, "integer[]", "[0:1]={1,2}").unwrap(), Value::Unsupported { .. }));
    }

    #[test]
    fn bad_values_are_named() {
        let e = decode_pg_text(&Kind::Date, "date", "2023-02-29").unwrap_err();
        assert!(e.0.contains("2023-02-29") && e.0.contains("date"), "{e}");
    }

    #[test]
    fn copy_fields_unescape() {
        assert_eq!(copy_unescape(b"a\\tb\\\\c\\n").unwrap().unwrap(), "a\tb\\c\n");
        assert_eq!(copy_unescape(b"\\N").unwrap(), None);
        let mut s = String::new();
        copy_escape("x\ty\\", &mut s);
        assert_eq!(s, "x\\ty\\\\");
        // Runs of multi-byte text between escapes, and at both ends.
        s.clear();
        copy_escape("\nÉté\r日本\\ö", &mut s);
        assert_eq!(s, "\\nÉté\\r日本\\\\ö");
        assert_eq!(copy_unescape(s.as_bytes()).unwrap().unwrap(), "\nÉté\r日本\\ö");
        assert_eq!(copy_unescape("plain ü".as_bytes()).unwrap().unwrap(), "plain ü");
        assert!(copy_unescape(&[0xff, 0xfe]).is_err(), "not UTF-8");
    }

    #[test]
    fn times_keep_only_significant_fraction_digits() {
        assert_eq!(format_time(0), "00:00:00");
        assert_eq!(format_time(1), "00:00:00.000001");
        assert_eq!(format_time(3_723_500_000), "01:02:03.5");
        assert_eq!(format_time(86_399_120_000), "23:59:59.12");
        assert_eq!(format_timestamp(-1, true), "1969-12-31 23:59:59.999999+00");
        assert_eq!(format_timestamp(i64::MAX, false), "infinity");
    }
}
