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
        Some(text) => match serde_json::from_str::<Metadata>(text) {
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
    out.push_str(&theme.to_string());
    out.push_str(",\"notifications\":");
    out.push_str(&notifications.to_string());
    out.push('}');
    Ok(out)
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
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(_) | Value::Object(_) => false,
    }
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

    #[test]
    fn falsy_theme_and_nullish_notifications() {
        let out = transform(&row("a", Some(r#"{"theme":0,"notifications":false}"#))).unwrap();
        assert_eq!(out.settings, r#"{"theme":"light","notifications":false}"#);
    }
}
