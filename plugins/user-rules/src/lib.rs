//! The seed's `transformUser`, with its JavaScript semantics made exact.
//!
//! This crate knows nothing of WebAssembly: the components in this workspace
//! wrap it. Rules (see the seed, `shared/seed/data-migration.md`):
//!
//! * `id` → `"user_" + id`;
//! * `name` is split at the FIRST space (`String.split(' ')` then
//!   `rest.join(' ')`): no space → last name `""`, a leading space → empty
//!   first name; a NULL name is rejected (the seed throws a TypeError);
//! * `email` is lowercased with full Unicode rules (like `toLowerCase`);
//!   a NULL email is rejected;
//! * `created_at` is passed through unchanged, microseconds included; NULL is
//!   rejected (the new schema requires it);
//! * `metadata` NULL or `""` → `{}`; invalid JSON → rejected with the
//!   parser's message; JSON `null` → rejected (the seed reads `null.theme`);
//!   any other non-object → no keys, so defaults;
//! * `theme` = `metadata.theme || 'light'` (JS-falsy: missing, `null`,
//!   `false`, `0`, `""`); `notifications` = `metadata.notifications ?? true`
//!   (only missing or `null` take the default).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A legacy row, host-independent.
#[derive(Debug, Clone, PartialEq)]
pub struct Legacy<'a> {
    pub id: i64,
    pub name: Option<&'a str>,
    pub email: Option<&'a str>,
    pub created_at: Option<i64>,
    pub metadata: Option<&'a str>,
}

/// A transformed row.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUser {
    pub id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub created_at: i64,
    /// A JSON object, serialised.
    pub settings: String,
}

/// The new table's key for a legacy id (the same rule as [`transform`]'s).
pub fn target_key(id: i64) -> String {
    format!("user_{id}")
}

/// Transforms one row; `Err` is a rejection reason.
pub fn transform(row: &Legacy<'_>) -> Result<NewUser, String> {
    let name = row.name.ok_or_else(|| "name is NULL (the seed's name.split(' ') throws a TypeError)".to_string())?;
    let email =
        row.email.ok_or_else(|| "email is NULL (the seed's email.toLowerCase() throws a TypeError)".to_string())?;
    let created_at =
        row.created_at.ok_or_else(|| "created_at is NULL (the new users table requires it)".to_string())?;
    let (first_name, last_name) = match name.split_once(' ') {
        Some((first, rest)) => (first.to_string(), rest.to_string()),
        None => (name.to_string(), String::new()),
    };
    let settings = settings(row.metadata)?;
    Ok(NewUser { id: target_key(row.id), first_name, last_name, email: email.to_lowercase(), created_at, settings })
}

fn settings(metadata: Option<&str>) -> Result<String, String> {
    let (theme, notifications) = match metadata {
        None | Some("") => (None, None),
        Some(text) => match refuse_unportable(text)
            .and_then(|()| serde_json::from_str::<Metadata>(text).map_err(|e| e.to_string()))
        {
            Err(e) => return Err(format!("metadata is not valid JSON: {e}")),
            Ok(Metadata::Null) => {
                return Err("metadata is JSON null (the seed reads null.theme and throws a TypeError)".to_string());
            }
            Ok(Metadata::Object { theme, notifications }) => (theme, notifications),
            // A number, string, boolean or array has no `theme` or
            // `notifications` property in JavaScript: defaults apply.
            Ok(Metadata::Other) => (None, None),
        },
    };
    let theme = match theme {
        Some(v) if !js_falsy(&v) => v,
        _ => Value::String("light".into()),
    };
    let notifications = match notifications {
        None | Some(Value::Null) => Value::Bool(true),
        Some(v) => v,
    };
    // Written by hand to keep the seed's key order (theme, notifications).
    let mut out = String::with_capacity(48);
    out.push_str("{\"theme\":");
    write_js_json(&theme, &mut out);
    out.push_str(",\"notifications\":");
    write_js_json(&notifications, &mut out);
    out.push('}');
    Ok(out)
}

/// Writes `value` as JavaScript's `JSON.stringify(JSON.parse(text))` does,
/// the seed being JavaScript: every number is a double written the
/// ECMAScript way (`1.0` → `1`, `1e21` → `1e+21`, beyond the double range →
/// `null`, integers past 2^53 rounded), and object keys that are array
/// indices (`"0"`…`"4294967294"`) come first in ascending order, the others
/// in document order (a repeated key keeps its first place, last value).
pub fn write_js_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_js_number(js_double(n), out),
        Value::String(s) => write_js_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_js_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut indices: Vec<(u32, &String, &Value)> =
                map.iter().filter_map(|(k, v)| array_index(k).map(|i| (i, k, v))).collect();
            indices.sort_by_key(|(i, _, _)| *i);
            let others = map.iter().filter(|(k, _)| array_index(k).is_none());
            out.push('{');
            for (n, (key, v)) in indices.into_iter().map(|(_, k, v)| (k, v)).chain(others).enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_js_string(key, out);
                out.push(':');
                write_js_json(v, out);
            }
            out.push('}');
        }
    }
}

/// The double JavaScript's `JSON.parse` makes of a JSON number (correctly
/// rounded; out of range is infinite).
fn js_double(n: &serde_json::Number) -> f64 {
    n.to_string().parse::<f64>().unwrap_or(f64::NAN)
}

/// A key JavaScript orders as an array index: the canonical decimal of an
/// integer below 2^32 − 1.
fn array_index(key: &str) -> Option<u32> {
    let i: u32 = key.parse().ok()?;
    (i != u32::MAX && i.to_string() == key).then_some(i)
}

/// ECMAScript's Number::toString (what `JSON.stringify` writes), from the
/// shortest round-trip digits; NaN and ±Infinity are `null` in JSON.
pub fn write_js_number(x: f64, out: &mut String) {
    if !x.is_finite() {
        out.push_str("null");
        return;
    }
    if x == 0.0 {
        out.push('0');
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    // ryu gives the shortest digits that round-trip and, of those, the
    // closest to the exact value, as ECMAScript requires (Rust's own `{:e}`
    // may pick another of the shortest: …002.3 where JavaScript writes
    // …002.2). Its layout varies (`1e16`, `0.001`, `12.5`): normalise.
    let mut buffer = ryu::Buffer::new();
    let written = buffer.format_finite(x.abs());
    let (mantissa, exp) = written.split_once('e').unwrap_or((written, "0"));
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{whole}{frac}");
    let significant = all.trim_start_matches('0');
    // The value is 0.<digits> × 10^n.
    let n = whole.len() as i32 + exp.parse::<i32>().expect("ryu's exponent is an integer")
        - (all.len() - significant.len()) as i32;
    let digits = significant.trim_end_matches('0');
    let k = digits.len() as i32;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n - 1 < 0 { '-' } else { '+' });
        out.push_str(&(n - 1).abs().to_string());
    }
}

/// A JSON string as `JSON.stringify` writes it (serde_json escapes the same
/// characters: `"`, `\\`, and controls, `\b\f\n\r\t` or `\u00xx`).
fn write_js_string(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).expect("a string serialises"));
}

/// The deepest nesting a metadata document may have.
pub const MAX_DEPTH: usize = 128;

/// Refuses, before parsing, the two things JSON parsers disagree on, so the
/// plugins in every language (and `validate` re-running them) agree: nesting
/// deeper than [`MAX_DEPTH`] and a surrogate escape (`\\ud800`) that is not
/// half of a pair, which no UTF-8 text can hold. The Python and JavaScript
/// seed plugins make the same scan with the same messages.
pub fn refuse_unportable(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let brackets = bytes.iter().filter(|b| matches!(b, b'[' | b'{')).count();
    if brackets <= MAX_DEPTH && !text.contains("\\u") {
        return Ok(());
    }
    let lone = || Err("a lone surrogate escape is not text".to_string());
    let (mut depth, mut in_string, mut high, mut i) = (0usize, false, false, 0);
    while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            if c == b'\\' && bytes.get(i + 1) == Some(&b'u') {
                let unit = text.get(i + 2..i + 6).and_then(|h| u16::from_str_radix(h, 16).ok());
                // A high half must be followed at once by a low half.
                match unit {
                    Some(0xD800..=0xDBFF) if !high => high = true,
                    Some(0xDC00..=0xDFFF) if high => high = false,
                    Some(0xD800..=0xDFFF) => return lone(),
                    // Not hex: the parser says what is wrong.
                    _ if high => return lone(),
                    _ => {}
                }
                i += 6;
                continue;
            }
            if high {
                return lone();
            }
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        } else if c == b'[' || c == b'{' {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(format!("nested deeper than {MAX_DEPTH} levels"));
            }
        } else if c == b']' || c == b'}' {
            depth = depth.saturating_sub(1);
        }
        i += 1;
    }
    Ok(())
}

/// What the transform needs of the metadata document. Parsing into this
/// validates the whole document (as `JSON.parse` does) but keeps only the two
/// keys it reads: the rest is skipped without building a map.
enum Metadata {
    /// An object: its `theme` and `notifications` (the last one wins when a
    /// key repeats, as in `JSON.parse`).
    Object { theme: Option<Value>, notifications: Option<Value> },
    /// JSON `null`.
    Null,
    /// Any other JSON value.
    Other,
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MetadataVisitor)
    }
}

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = Metadata;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
        let (mut theme, mut notifications) = (None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Theme => theme = Some(map.next_value()?),
                Key::Notifications => notifications = Some(map.next_value()?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Metadata::Object { theme, notifications })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Metadata, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Metadata::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Metadata, E> {
        Ok(Metadata::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Metadata, E> {
        Ok(Metadata::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Metadata, E> {
        Ok(Metadata::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Metadata, E> {
        Ok(Metadata::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Metadata, E> {
        Ok(Metadata::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Metadata, E> {
        Ok(Metadata::Other)
    }
}

/// An object key, recognised without allocating.
enum Key {
    Theme,
    Notifications,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "theme" => Key::Theme,
                    "notifications" => Key::Notifications,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// JavaScript falsiness of a JSON value (`NaN` and `undefined` cannot occur).
fn js_falsy(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => js_double(n) == 0.0,
        Value::String(s) => s.is_empty(),
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// A legacy row the inverse writes (owned).
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyRow {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub created_at: i64,
    pub metadata: String,
}

/// The legacy id of a new key (`user_42` → 42), the inverse of [`target_key`].
pub fn legacy_key(id: &str) -> Result<i64, String> {
    id.strip_prefix("user_")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| target_key(*n) == id)
        .ok_or_else(|| format!("id {id:?} is not user_<integer>, so it has no legacy id"))
}

/// The inverse of [`transform`] (the parallel run's reverse stream): a new
/// row back into a legacy one — `user_N` → `N`, `first_name + ' ' +
/// last_name` → `name` (just `first_name` when `last_name` is empty),
/// `email` as it is, `settings` → `metadata`.
///
/// What the new schema dropped cannot come back: legacy `metadata` keys
/// other than `theme` and `notifications` are gone, so `metadata` becomes
/// the settings object. Every other difference is refused: the result must
/// transform back into exactly `row` (else the two databases would
/// disagree), and `Err` says which column would not survive the round trip
/// and why — a `first_name` with a space (the legacy name splits at the
/// first space), an email with capitals (the forward rules lowercase it), a
/// falsy theme (it becomes `light`), settings that are not an object.
pub fn invert(row: &NewUser) -> Result<LegacyRow, String> {
    let id = legacy_key(&row.id)?;
    let name =
        if row.last_name.is_empty() { row.first_name.clone() } else { format!("{} {}", row.first_name, row.last_name) };
    let legacy =
        Legacy { id, name: Some(&name), email: Some(&row.email), created_at: Some(row.created_at), metadata: None };
    let settings: Value = serde_json::from_str(&row.settings).map_err(|e| format!("settings is not JSON: {e}"))?;
    if !settings.is_object() {
        return Err(format!("settings {} is not a JSON object, which the legacy metadata cannot carry", row.settings));
    }
    let metadata = row.settings.clone();
    let back = transform(&Legacy { metadata: Some(&metadata), ..legacy })
        .map_err(|e| format!("the legacy row would be rejected going forward again: {e}"))?;
    let same_settings = serde_json::from_str::<Value>(&back.settings).is_ok_and(|b| b == settings);
    let differs = [
        ("first_name", &back.first_name, &row.first_name, "the legacy name splits at its first space"),
        ("last_name", &back.last_name, &row.last_name, "the legacy name splits at its first space"),
        ("email", &back.email, &row.email, "the forward rules lowercase emails"),
    ]
    .into_iter()
    .find(|(_, back, now, _)| back != now);
    if let Some((column, back, now, why)) = differs {
        return Err(format!("{column} {now:?} would come back as {back:?} ({why}): not invertible exactly"));
    }
    if !same_settings {
        return Err(format!(
            "settings {} would come back as {} (a falsy theme becomes \"light\", a missing or null \
             notifications true): not invertible exactly",
            row.settings, back.settings
        ));
    }
    // Written as the forward rules write settings: compact, theme first.
    Ok(LegacyRow { id, name, email: row.email.clone(), created_at: row.created_at, metadata: back.settings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(name: &'a str, metadata: Option<&'a str>) -> Legacy<'a> {
        Legacy { id: 7, name: Some(name), email: Some("A@B.C"), created_at: Some(1), metadata }
    }

    #[test]
    fn splits_at_first_space_only() {
        let out = transform(&row("Mary Ann de la Cruz", None)).unwrap();
        assert_eq!((out.first_name.as_str(), out.last_name.as_str()), ("Mary", "Ann de la Cruz"));
        let out = transform(&row(" Leading", None)).unwrap();
        assert_eq!((out.first_name.as_str(), out.last_name.as_str()), ("", "Leading"));
    }

    #[test]
    fn repeated_keys_keep_the_last_value_like_json_parse() {
        let out = transform(&row("a", Some(r#"{"theme":"dark","x":{"theme":1},"theme":"blue"}"#))).unwrap();
        assert_eq!(out.settings, r#"{"theme":"blue","notifications":true}"#);
    }

    #[test]
    fn escaped_keys_are_recognised() {
        let out = transform(&row("a", Some(r#"{"the\u006de":"dark"}"#))).unwrap();
        assert_eq!(out.settings, r#"{"theme":"dark","notifications":true}"#);
    }

    #[test]
    fn trailing_garbage_is_invalid() {
        assert!(transform(&row("a", Some(r#"{} x"#))).unwrap_err().contains("trailing characters"));
    }

    fn settings_of(metadata: &str) -> String {
        transform(&row("a", Some(metadata))).unwrap().settings
    }

    #[test]
    fn numbers_are_written_as_javascript_writes_them() {
        for (written, js) in [
            ("1.0", "1"),
            ("-1.50", "-1.5"),
            ("1e21", "1e+21"),
            ("1E20", "100000000000000000000"),
            ("123456789012345678901", "123456789012345680000"),
            ("12345678901234567890", "12345678901234567000"),
            ("9007199254740993", "9007199254740992"),
            ("0.000001", "0.000001"),
            ("1e-7", "1e-7"),
            ("-1.5e-7", "-1.5e-7"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
            ("1e400", "null"),
            ("0.1", "0.1"),
            // Two shortest forms round-trip; JavaScript writes the closer.
            ("-1113178120592002.2", "-1113178120592002.2"),
            ("-233891771783429.63", "-233891771783429.62"),
            ("100", "100"),
        ] {
            assert_eq!(
                settings_of(&format!(r#"{{"theme":{written}}}"#)),
                format!(r#"{{"theme":{js},"notifications":true}}"#),
                "{written}"
            );
        }
        // -0 and 0e5 are falsy like 0.
        assert_eq!(settings_of(r#"{"theme":-0.0e5}"#), r#"{"theme":"light","notifications":true}"#);
        assert_eq!(settings_of(r#"{"notifications":-0}"#), r#"{"theme":"light","notifications":0}"#);
    }

    #[test]
    fn objects_keep_javascript_key_order() {
        assert_eq!(
            settings_of(r#"{"theme":{"b":1,"10":2,"a":[1.0,{"z":null}],"2":3,"01":4,"b":5,"4294967295":6}}"#),
            r#"{"theme":{"2":3,"10":2,"b":5,"a":[1,{"z":null}],"01":4,"4294967295":6},"notifications":true}"#
        );
    }

    #[test]
    fn strings_are_escaped_as_javascript_escapes_them() {
        assert_eq!(
            settings_of("{\"theme\":\"\\u0001\\t\\\"é\\u2028/\\ud83d\\ude00\"}"),
            "{\"theme\":\"\\u0001\\t\\\"é\u{2028}/😀\",\"notifications\":true}"
        );
    }

    #[test]
    fn falsy_theme_and_nullish_notifications() {
        let out = transform(&row("a", Some(r#"{"theme":0,"notifications":false}"#))).unwrap();
        assert_eq!(out.settings, r#"{"theme":"light","notifications":false}"#);
    }

    fn new_user(first: &str, last: &str, email: &str, settings: &str) -> NewUser {
        NewUser {
            id: "user_7".into(),
            first_name: first.into(),
            last_name: last.into(),
            email: email.into(),
            created_at: 1_700_000_000_123_456,
            settings: settings.into(),
        }
    }

    #[test]
    fn inverse_round_trips_what_it_accepts() {
        for (first, last, settings) in [
            ("Mary", "Ann de la Cruz", r#"{"theme": "dark", "notifications": false}"#),
            ("Prince", "", r#"{"notifications":true,"theme":"light"}"#),
            ("", "Leading", r#"{"theme":{"a":1},"notifications":0}"#),
            ("Zoë", "Ångström", r#"{"theme":"dark","notifications":"yes"}"#),
        ] {
            let new = new_user(first, last, "zoë@example.com", settings);
            let legacy = invert(&new).unwrap_or_else(|e| panic!("{first} {last}: {e}"));
            assert_eq!(legacy.id, 7);
            let back = transform(&Legacy {
                id: legacy.id,
                name: Some(&legacy.name),
                email: Some(&legacy.email),
                created_at: Some(legacy.created_at),
                metadata: Some(&legacy.metadata),
            });
            let back = back.unwrap();
            assert_eq!((&back.id, &back.first_name, &back.last_name), (&new.id, &new.first_name, &new.last_name));
            assert_eq!((&back.email, back.created_at), (&new.email, new.created_at));
            let (a, b): (Value, Value) =
                (serde_json::from_str(&back.settings).unwrap(), serde_json::from_str(&new.settings).unwrap());
            assert_eq!(a, b, "{settings}");
        }
    }

    #[test]
    fn inverse_refuses_what_would_not_come_back() {
        let cases = [
            (new_user("Mary Ann", "Cruz", "m@x", r#"{"theme":"dark","notifications":true}"#), "first_name"),
            (new_user("Mary", "", "M@X", r#"{"theme":"dark","notifications":true}"#), "email"),
            (new_user("Mary", "", "m@x", r#"{"theme":"","notifications":true}"#), "settings"),
            (new_user("Mary", "", "m@x", r#"{"theme":"dark"}"#), "settings"),
            (new_user("Mary", "", "m@x", r#"[1]"#), "not a JSON object"),
            (NewUser { id: "admin".into(), ..new_user("M", "", "m@x", "{}") }, "user_<integer>"),
            (NewUser { id: "user_007".into(), ..new_user("M", "", "m@x", "{}") }, "user_<integer>"),
        ];
        for (row, says) in cases {
            let err = invert(&row).expect_err(&format!("{row:?}"));
            assert!(err.contains(says), "{row:?}: {err}");
        }
    }
}
