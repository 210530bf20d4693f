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

use serde_json::{Map, Value};

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
    Ok(NewUser {
        id: format!("user_{}", row.id),
        first_name,
        last_name,
        email: email.to_lowercase(),
        created_at,
        settings,
    })
}

fn settings(metadata: Option<&str>) -> Result<String, String> {
    let empty = Map::new();
    let parsed;
    let object: &Map<String, Value> = match metadata {
        None | Some("") => &empty,
        Some(text) => {
            parsed = serde_json::from_str::<Value>(text).map_err(|e| format!("metadata is not valid JSON: {e}"))?;
            match &parsed {
                Value::Object(map) => map,
                Value::Null => {
                    return Err("metadata is JSON null (the seed reads null.theme and throws a TypeError)".to_string());
                }
                // A number, string, boolean or array has no `theme` or
                // `notifications` property in JavaScript: defaults apply.
                _ => &empty,
            }
        }
    };
    let theme = match object.get("theme") {
        Some(v) if !js_falsy(v) => v.clone(),
        _ => Value::String("light".into()),
    };
    let notifications = match object.get("notifications") {
        None | Some(Value::Null) => Value::Bool(true),
        Some(v) => v.clone(),
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
    fn falsy_theme_and_nullish_notifications() {
        let out = transform(&row("a", Some(r#"{"theme":0,"notifications":false}"#))).unwrap();
        assert_eq!(out.settings, r#"{"theme":"light","notifications":false}"#);
    }
}
