//! Database addresses and identifiers: which engine a URL names, how it is
//! shown (never with its password), and how table names are quoted.

use std::fmt;

/// The database engines ferry reads from and writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    Sqlite,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Postgres => "PostgreSQL",
            Engine::Sqlite => "SQLite",
        })
    }
}

/// A connection URL. `Display` and `Debug` redact the password: the raw URL
/// is only reachable through [`DbUrl::expose`], used when connecting.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    engine: Engine,
    raw: String,
}

impl DbUrl {
    /// Parses `postgres://…`/`postgresql://…` or `sqlite://path` / `sqlite:path`.
    pub fn parse(raw: &str) -> Result<DbUrl, String> {
        let engine = if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Engine::Postgres
        } else if raw.starts_with("sqlite:") {
            Engine::Sqlite
        } else {
            return Err(format!(
                "unsupported database URL `{}`: use postgres://user@host:port/db or sqlite://path/to/file.db",
                redact(raw)
            ));
        };
        Ok(DbUrl { engine, raw: raw.to_string() })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The URL with its password, for the driver only. Never print this.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The SQLite file path (for `sqlite:` URLs).
    pub fn sqlite_path(&self) -> Option<&str> {
        let rest = self.raw.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        Some(rest.split('?').next().unwrap_or(rest))
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.raw))
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", redact(&self.raw))
    }
}

/// Replaces the password of a URL (and any `password=` query parameter) by `***`.
pub fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") { "***".into() } else { v.into_owned() };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        // Not a URL we can parse: if it may hold credentials, show only the scheme.
        Err(_) if raw.contains('@') => format!("{}:***", raw.split(':').next().unwrap_or("")),
        Err(_) => raw.to_string(),
    }
}

/// A table name, optionally schema-qualified, as given in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    /// `users` or `schema.users` (a dot separates schema and table; quote
    /// nothing: ferry quotes every identifier it writes into SQL).
    pub fn parse(text: &str) -> Result<TableName, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let valid = |s: &str| !s.is_empty() && !s.contains('\0');
        match parts.as_slice() {
            [name] if valid(name) => Ok(TableName { schema: None, name: name.to_string() }),
            [schema, name] if valid(schema) && valid(name) => {
                Ok(TableName { schema: Some(schema.to_string()), name: name.to_string() })
            }
            _ => Err(format!("invalid table name `{text}`: write `table` or `schema.table`")),
        }
    }

    /// The quoted SQL form: `"schema"."name"`.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl serde::Serialize for TableName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Quotes an SQL identifier (PostgreSQL and SQLite agree on `"…"` with `""`).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes an SQL string literal (`'…'` with `''`; standard strings, as
/// both engines read them).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The statements of a DDL script (statements end with `;` at a line end).
pub fn ddl_statements(script: &str) -> impl Iterator<Item = &str> {
    script.split(";\n").map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_shown() {
        let url = DbUrl::parse("postgres://app:hunter2@db.example:5432/legacy?sslmode=disable&password=x").unwrap();
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("=x"), "{shown}");
        assert!(shown.contains("app:***@db.example"), "{shown}");
    }

    #[test]
    fn identifiers_are_quoted() {
        let t = TableName::parse("odd\"schema.users").unwrap();
        assert_eq!(t.quoted(), "\"odd\"\"schema\".\"users\"");
        assert!(TableName::parse("a.b.c").is_err());
    }
}
