//! Tables of any shape in SQLite: the catalog from `PRAGMA`s, keyset pages
//! with row-value comparison, multi-row inserts. Values follow SQLite's
//! storage classes (see [`from_sqlite`] and [`to_sqlite`]).

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, TypeInfo, ValueRef};

use super::connect;
use super::refuses_rows;
use crate::config::OnConflict;
use crate::db::{DbUrl, Engine, TableName, quote_ident};
use crate::error::Error;
use crate::keyset::{Key, Row as ValueRow, RowDeadLetter, RowPage};
use crate::model::DeadLetterKind;
use crate::schema::{ColumnDef, ForeignKeyDef, IndexDef, NameMap, TableDef, sqlite_kind};
use crate::sink::{Applied, ConflictError, FencedError, RowBatch, RowSink};
use crate::source::RowSource;
use crate::value::{BadValue, Kind, Value, decode_pg_text, encode_pg_text, format_timestamp};

/// SQLite's default limit of bound parameters per statement.
pub(super) const MAX_PARAMS: usize = 32_766;

/// A SQLite database read or written table by table.
pub struct SqliteTables {
    pub(super) conn: SqliteConnection,
    pub(super) url: DbUrl,
}

impl super::control::SqliteConn for SqliteTables {
    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

super::control::sqlite_control!(SqliteTables);

/// A value as SQLite stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// How ferry writes a value into SQLite: integers and booleans as INTEGER,
/// floats as REAL (NaN as the text `NaN` and -0 as its 8 bytes: SQLite
/// would store NULL and 0), bytes
/// as BLOB, everything else as its text — decimals exact, timestamps as
/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC; `+00:00` for `timestamptz`), which
/// sorts chronologically and SQLite's date functions read; arrays as JSON.
pub fn to_sqlite(value: &Value) -> Stored {
    match value {
        Value::Null => Stored::Null,
        Value::Bool(b) => Stored::Integer(i64::from(*b)),
        Value::Int16(n) => Stored::Integer(i64::from(*n)),
        Value::Int32(n) => Stored::Integer(i64::from(*n)),
        Value::Int64(n) => Stored::Integer(*n),
        // SQLite would store NULL for NaN and 0 for -0.
        Value::Float32(f) if f.is_nan() => Stored::Text("NaN".into()),
        Value::Float64(f) if f.is_nan() => Stored::Text("NaN".into()),
        // A REAL column turns the text "-0" into 0 too; 8 bytes it keeps.
        Value::Float32(f) if *f == 0.0 && f.is_sign_negative() => Stored::Blob((-0.0f64).to_be_bytes().to_vec()),
        Value::Float64(f) if *f == 0.0 && f.is_sign_negative() => Stored::Blob((-0.0f64).to_be_bytes().to_vec()),
        Value::Float32(f) => Stored::Real(f64::from(*f)),
        Value::Float64(f) => Stored::Real(*f),
        Value::Bytes(b) => Stored::Blob(b.clone()),
        Value::Timestamp(t) => Stored::Text(format_timestamp(*t, false)),
        Value::TimestampTz(t) if *t == i64::MAX || *t == i64::MIN => Stored::Text(format_timestamp(*t, false)),
        Value::TimestampTz(t) => {
            let local = format_timestamp(*t, false);
            Stored::Text(match local.strip_suffix(" BC") {
                Some(bc) => format!("{bc}+00:00 BC"),
                None => format!("{local}+00:00"),
            })
        }
        Value::Array { items, .. } => {
            Stored::Text(serde_json::Value::Array(items.iter().map(json_of).collect()).to_string())
        }
        other => Stored::Text(encode_pg_text(other).unwrap_or_default()),
    }
}

/// An array element as JSON: numbers and booleans as themselves, the rest
/// (decimals included, to stay exact) as their text.
fn json_of(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int16(n) => (*n).into(),
        Value::Int32(n) => (*n).into(),
        Value::Int64(n) => (*n).into(),
        Value::Float64(f) if f.is_finite() => (*f).into(),
        other => encode_pg_text(other).unwrap_or_default().into(),
    }
}

/// Reads a stored value as `kind`: what the storage class allows, exactly,
/// or why not.
pub fn from_sqlite(kind: &Kind, declared: &str, stored: Stored) -> Result<Value, BadValue> {
    let wrong = |what: &str| BadValue(format!("a {declared} column holds {what}"));
    Ok(match (kind, stored) {
        (_, Stored::Null) => Value::Null,
        (Kind::Bool, Stored::Integer(n)) if n == 0 || n == 1 => Value::Bool(n == 1),
        (Kind::Bool, Stored::Text(t)) => match t.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" => Value::Bool(true),
            "false" | "f" | "0" => Value::Bool(false),
            _ => return Err(wrong(&format!("the text {t:?}, not a boolean"))),
        },
        (Kind::Int16 | Kind::Int32 | Kind::Int64, Stored::Integer(n)) => Value::Int64(n),
        (Kind::Float32 | Kind::Float64, Stored::Real(f)) => Value::Float64(f),
        (Kind::Float32 | Kind::Float64, Stored::Integer(n)) if n.unsigned_abs() <= 1 << 53 => Value::Float64(n as f64),
        (Kind::Float32 | Kind::Float64, Stored::Blob(b)) if b.len() == 8 => {
            Value::Float64(f64::from_be_bytes(b.try_into().expect("8 bytes")))
        }
        (Kind::Float32 | Kind::Float64, Stored::Text(t)) if matches!(t.as_str(), "NaN" | "Infinity" | "-Infinity") => {
            decode_pg_text(&Kind::Float64, declared, &t)?
        }
        (Kind::Numeric, Stored::Integer(n)) => Value::Numeric(n.to_string()),
        (Kind::Numeric, Stored::Real(f)) if f.is_finite() => Value::Numeric(f.to_string()),
        (Kind::Numeric, Stored::Text(t)) if is_decimal(&t) => Value::Numeric(t),
        (Kind::Text | Kind::Other, Stored::Text(t)) => Value::Text(t),
        (Kind::Text | Kind::Other, Stored::Integer(n)) => Value::Text(n.to_string()),
        (Kind::Text | Kind::Other, Stored::Real(f)) => Value::Text(f.to_string()),
        (Kind::Bytes, Stored::Blob(b)) => Value::Bytes(b),
        (Kind::Bytes, Stored::Text(t)) => Value::Bytes(t.into_bytes()),
        (Kind::Json, Stored::Text(t)) => match serde_json::from_str::<serde::de::IgnoredAny>(&t) {
            Ok(_) => Value::Json(t),
            Err(e) => return Err(wrong(&format!("text that is not JSON ({e})"))),
        },
        (Kind::Json, Stored::Integer(n)) => Value::Json(n.to_string()),
        (Kind::Json, Stored::Real(f)) if f.is_finite() => Value::Json(f.to_string()),
        (Kind::Uuid, Stored::Blob(b)) if b.len() == 16 => Value::Uuid(uuid::Uuid::from_slice(&b).expect("16 bytes")),
        (Kind::Uuid, Stored::Text(t)) => Value::Uuid(t.parse().map_err(|_| wrong(&format!("{t:?}, not a UUID")))?),
        (Kind::Date | Kind::Time | Kind::Interval, Stored::Text(t)) => decode_pg_text(kind, declared, &t)?,
        (Kind::Timestamp | Kind::TimestampTz, Stored::Text(t)) => {
            // ferry's own form first (any year, BC), then the forms found in
            // SQLite databases (`T`, `Z`, offsets, a bare date).
            let micros = match decode_pg_text(kind, declared, &t) {
                Ok(Value::Timestamp(m) | Value::TimestampTz(m)) => m,
                _ => crate::time::parse_text(&t).ok_or_else(|| {
                    wrong(&format!("{t:?}, not a timestamp (expected YYYY-MM-DD HH:MM:SS[.ffffff][Z|±HH:MM])"))
                })?,
            };
            if *kind == Kind::Timestamp { Value::Timestamp(micros) } else { Value::TimestampTz(micros) }
        }
        (Kind::Timestamp | Kind::TimestampTz | Kind::Date, Stored::Integer(n)) => {
            return Err(wrong(&format!(
                "the integer {n}: integer times are ambiguous (seconds? milliseconds? days?); store them as text or declare the column INTEGER"
            )));
        }
        (Kind::Array(element), Stored::Text(t)) => {
            // What ferry could not read as a flat array (nested, with
            // bounds) it stored as PostgreSQL wrote it.
            let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(&t) else {
                return Ok(Value::Unsupported { type_name: declared.to_string(), text: t });
            };
            let items = items
                .into_iter()
                .map(|item| match item {
                    serde_json::Value::Null => Ok(Value::Null),
                    serde_json::Value::Bool(b) => Ok(Value::Bool(b)),
                    serde_json::Value::String(s) => decode_pg_text(element, declared, &s),
                    other => decode_pg_text(element, declared, &other.to_string()),
                })
                .collect::<Result<_, _>>()?;
            Value::Array { element: (**element).clone(), items }
        }
        (_, Stored::Integer(n)) => return Err(wrong(&format!("the integer {n}"))),
        (_, Stored::Real(f)) => return Err(wrong(&format!("the real {f}"))),
        (_, Stored::Text(t)) => return Err(wrong(&format!("the text {:?}", t.chars().take(60).collect::<String>()))),
        (_, Stored::Blob(b)) => return Err(wrong(&format!("a blob of {} bytes", b.len()))),
    })
}

fn is_decimal(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match t.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['-', '+']).unwrap_or(e))),
        None => (t, None),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    (!whole.is_empty() || !frac.is_empty())
        && digits(whole)
        && digits(frac)
        && exponent.is_none_or(|e| !e.is_empty() && digits(e))
        || matches!(text, "NaN" | "Infinity" | "-Infinity")
}

fn stored_of(row: &SqliteRow, index: usize) -> Result<Stored, sqlx::Error> {
    let raw = row.try_get_raw(index)?;
    if raw.is_null() {
        return Ok(Stored::Null);
    }
    let class = raw.type_info().name().to_string();
    Ok(match class.as_str() {
        "INTEGER" => Stored::Integer(row.try_get_unchecked(index)?),
        "REAL" => Stored::Real(row.try_get_unchecked(index)?),
        "BLOB" => Stored::Blob(row.try_get_unchecked(index)?),
        _ => Stored::Text(row.try_get_unchecked(index)?),
    })
}

/// A stored key value as this source's key text.
fn key_text(stored: &Stored) -> String {
    match stored {
        Stored::Null => String::new(),
        Stored::Integer(n) => n.to_string(),
        Stored::Real(f) => format!("{f:e}"),
        Stored::Text(t) => t.clone(),
        Stored::Blob(b) => hex::encode(b),
    }
}

/// The stored value a key text of `kind` stands for (see [`key_text`]).
fn stored_key(kind: &Kind, text: &str) -> Stored {
    match kind {
        Kind::Int16 | Kind::Int32 | Kind::Int64 | Kind::Bool | Kind::Numeric => match text.parse::<i64>() {
            Ok(n) => Stored::Integer(n),
            Err(_) => match text.parse::<f64>() {
                Ok(f) if *kind == Kind::Numeric => Stored::Real(f),
                _ => Stored::Text(text.to_string()),
            },
        },
        Kind::Float32 | Kind::Float64 => text.parse().map(Stored::Real).unwrap_or_else(|_| Stored::Text(text.into())),
        Kind::Bytes => hex::decode(text).map(Stored::Blob).unwrap_or_else(|_| Stored::Text(text.into())),
        _ => Stored::Text(text.to_string()),
    }
}

pub(super) fn push_stored(b: &mut sqlx::query_builder::Separated<'_, Sqlite, &'static str>, stored: Stored) {
    match stored {
        Stored::Null => b.push_bind(None::<i64>),
        Stored::Integer(n) => b.push_bind(n),
        Stored::Real(f) => b.push_bind(f),
        Stored::Text(t) => b.push_bind(t),
        Stored::Blob(v) => b.push_bind(v),
    };
}

impl SqliteTables {
    /// Whether `table` has rowids (is not `WITHOUT ROWID`).
    async fn has_rowid(&mut self, table: &TableName) -> anyhow::Result<bool> {
        let sql: Option<String> =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1")
                .bind(&table.name)
                .fetch_optional(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("reading the definition of {table}"), &e))?;
        Ok(!sql.unwrap_or_default().to_ascii_uppercase().contains("WITHOUT ROWID"))
    }

    /// The rowid SQLite gives the next row inserted without one: past the
    /// highest, and past every one ever used under `AUTOINCREMENT`.
    async fn rowid_next(&mut self, table: &TableName) -> anyhow::Result<i64> {
        let t = quote_ident(&table.name);
        let highest: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT coalesce(max(rowid), 0) FROM {t}")))
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("reading the rowids of {table}"), &e))?;
        let has_sequence: bool = sqlx::query_scalar(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'",
        )
        .fetch_one(&mut self.conn)
        .await
        .map_err(|e| self.err("reading sqlite_master".into(), &e))?;
        let used: Option<i64> = match has_sequence {
            true => sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = ?1")
                .bind(&table.name)
                .fetch_optional(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("reading the AUTOINCREMENT counter of {table}"), &e))?,
            false => None,
        };
        Ok(highest.max(used.unwrap_or(0)).saturating_add(1))
    }

    pub async fn connect(url: &DbUrl, role: &str) -> anyhow::Result<SqliteTables> {
        let conn = connect(url, role, role == "target").await?;
        Ok(SqliteTables { conn, url: url.clone() })
    }

    fn err(&self, what: String, e: &sqlx::Error) -> anyhow::Error {
        anyhow::anyhow!("{what} in {}: {e}", self.url)
    }

    fn decode_rows(table: &TableDef, rows: Vec<SqliteRow>) -> anyhow::Result<RowPage> {
        let mut page = RowPage::default();
        for row in rows {
            let mut stored = Vec::with_capacity(table.columns.len());
            for i in 0..table.columns.len() {
                stored.push(stored_of(&row, i)?);
            }
            let key = Key(table.primary_key.iter().map(|&i| key_text(&stored[i])).collect());
            let shown: serde_json::Value = serde_json::Value::Object(
                table
                    .columns
                    .iter()
                    .zip(&stored)
                    .map(|(c, s)| {
                        let v = match s {
                            Stored::Null => serde_json::Value::Null,
                            Stored::Blob(b) => format!("\\x{}", hex::encode(b)).into(),
                            other => key_text(other).into(),
                        };
                        (c.name.clone(), v)
                    })
                    .collect(),
            );
            let mut values = Vec::with_capacity(stored.len());
            let mut problem = None;
            for (column, s) in table.columns.iter().zip(stored) {
                match from_sqlite(&column.kind, &column.sql_type, s) {
                    Ok(v) => values.push(v),
                    Err(e) => {
                        problem = Some(format!("column {}: {e}", column.name));
                        break;
                    }
                }
            }
            match problem {
                None => page.rows.push(values),
                Some(reason) => page.unreadable.push(RowDeadLetter {
                    table: table.name.to_string(),
                    key: key.clone(),
                    row: shown,
                    kind: DeadLetterKind::Extract,
                    reason,
                }),
            }
            page.last_key = Some(key);
        }
        Ok(page)
    }

    /// Inserts `rows` under `policy` in statements of at most MAX_PARAMS
    /// parameters; the rows written.
    pub(super) async fn insert<R: std::borrow::Borrow<ValueRow> + Sync>(
        tx: &mut SqliteConnection,
        table: &TableDef,
        rows: &[R],
        policy: OnConflict,
    ) -> Result<u64, sqlx::Error> {
        let per_statement = (MAX_PARAMS / table.columns.len().max(1)).max(1);
        let mut written = 0;
        for chunk in rows.chunks(per_statement) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("INSERT INTO {} ({}) ", table.quoted(), table.column_list()));
            qb.push_values(chunk, |mut b, row| {
                for value in row.borrow() {
                    push_stored(&mut b, to_sqlite(value));
                }
            });
            let non_key: Vec<String> = (0..table.columns.len())
                .filter(|i| !table.primary_key.contains(i))
                .map(|i| {
                    let c = quote_ident(&table.columns[i].name);
                    format!("{c} = excluded.{c}")
                })
                .collect();
            match policy {
                OnConflict::Error => {}
                OnConflict::Overwrite if !non_key.is_empty() => {
                    qb.push(format!(" ON CONFLICT ({}) DO UPDATE SET {}", table.key_list(), non_key.join(", ")));
                }
                OnConflict::Skip | OnConflict::Overwrite => {
                    qb.push(format!(" ON CONFLICT ({}) DO NOTHING", table.key_list()));
                }
            }
            written += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        Ok(written)
    }
}

#[async_trait]
impl RowSource for SqliteTables {
    async fn list_tables(&mut self) -> anyhow::Result<Vec<TableName>> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             AND name NOT LIKE 'ferry\\_%' ESCAPE '\\' ORDER BY name",
        )
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.err("listing tables".into(), &e))?;
        Ok(names.into_iter().map(|name| TableName { schema: None, name }).collect())
    }

    async fn describe(&mut self, table: &TableName) -> anyhow::Result<Option<TableDef>> {
        let name = TableName { schema: None, name: table.name.clone() };
        let t = quote_ident(&table.name);
        let info = sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA table_info({t})")))
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("reading the definition of {name}"), &e))?;
        if info.is_empty() {
            return Ok(None);
        }
        let mut columns = Vec::new();
        let mut key: Vec<(i64, usize)> = Vec::new();
        for row in &info {
            let declared: String = row.try_get("type")?;
            let pk: i64 = row.try_get("pk")?;
            if pk > 0 {
                key.push((pk, columns.len()));
            }
            let nullable = row.try_get::<i64, _>("notnull")? == 0 && pk == 0;
            columns.push(ColumnDef::plain(
                row.try_get::<String, _>("name")?,
                &*declared,
                sqlite_kind(&declared),
                nullable,
            ));
        }
        key.sort();
        // `INTEGER PRIMARY KEY` is the rowid: SQLite hands out the next one
        // to a row inserted without it — an identity column by another name.
        if let [(_, at)] = key[..]
            && columns[at].sql_type.eq_ignore_ascii_case("INTEGER")
            && self.has_rowid(&name).await?
        {
            let next = self.rowid_next(&name).await?;
            columns[at].identity = Some(crate::schema::Identity { always: false, next });
        }
        let mut indexes = Vec::new();
        let list =
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA index_list({t})"))).fetch_all(&mut self.conn).await?;
        for row in &list {
            let origin: String = row.try_get("origin")?;
            if origin == "pk" {
                continue;
            }
            let index: String = row.try_get("name")?;
            let cols = sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA index_info({})", quote_ident(&index))))
                .fetch_all(&mut self.conn)
                .await?;
            let names: Vec<Option<String>> =
                cols.iter().map(|c| c.try_get::<Option<String>, _>("name")).collect::<Result<_, _>>()?;
            let partial: i64 = row.try_get("partial")?;
            if partial != 0 || names.iter().any(Option::is_none) {
                tracing::warn!("index {index} of {name} is on expressions or partial: not recreated on the target");
                continue;
            }
            indexes.push(IndexDef {
                name: index,
                unique: row.try_get::<i64, _>("unique")? != 0,
                columns: names.into_iter().flatten().collect(),
                pg_definition: None,
            });
        }
        let fks =
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA foreign_key_list({t})"))).fetch_all(&mut self.conn).await?;
        let mut foreign_keys: Vec<(i64, ForeignKeyDef)> = Vec::new();
        for row in &fks {
            let id: i64 = row.try_get("id")?;
            let parent: String = row.try_get("table")?;
            let from: String = row.try_get("from")?;
            let to: Option<String> = row.try_get("to")?;
            let actions =
                [("ON UPDATE", row.try_get::<String, _>("on_update")?), ("ON DELETE", row.try_get("on_delete")?)]
                    .into_iter()
                    .filter(|(_, a)| a != "NO ACTION")
                    .map(|(w, a)| format!("{w} {a}"))
                    .collect::<Vec<_>>()
                    .join(" ");
            match foreign_keys.iter_mut().find(|(i, _)| *i == id) {
                Some((_, fk)) => {
                    fk.columns.push(from);
                    fk.referenced_columns.extend(to);
                }
                None => foreign_keys.push((
                    id,
                    ForeignKeyDef {
                        name: format!("{}_{}_fkey", table.name, id),
                        columns: vec![from],
                        references: TableName { schema: None, name: parent },
                        referenced_columns: to.into_iter().collect(),
                        actions,
                    },
                )),
            }
        }
        let mut foreign_keys: Vec<ForeignKeyDef> = foreign_keys.into_iter().map(|(_, fk)| fk).collect();
        // `REFERENCES parent` without columns means the parent's key.
        for fk in foreign_keys.iter_mut().filter(|fk| fk.referenced_columns.is_empty()) {
            let info =
                sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA table_info({})", quote_ident(&fk.references.name))))
                    .fetch_all(&mut self.conn)
                    .await?;
            let mut pk: Vec<(i64, String)> = Vec::new();
            for row in &info {
                let n: i64 = row.try_get("pk")?;
                if n > 0 {
                    pk.push((n, row.try_get("name")?));
                }
            }
            pk.sort();
            fk.referenced_columns = pk.into_iter().map(|(_, n)| n).collect();
        }
        Ok(Some(TableDef {
            name,
            engine: Engine::Sqlite,
            columns,
            generated: Vec::new(),
            primary_key: key.into_iter().map(|(_, i)| i).collect(),
            indexes,
            foreign_keys,
            checks: Vec::new(),
            estimated_rows: 0,
            row_bytes: 0,
            key_index: None,
            defer_key: false,
            inherited: false,
            inherits: false,
        }))
    }

    async fn count_rows(&mut self, table: &TableDef) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {}", table.quoted())))
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("counting rows of {}", table.name), &e))?;
        Ok(n as u64)
    }

    async fn read_page(&mut self, table: &TableDef, after: Option<&Key>, limit: usize) -> anyhow::Result<RowPage> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {} FROM {}", table.column_list(), table.quoted()));
        if let Some(key) = after {
            qb.push(format!(" WHERE ({}) > (", table.key_list()));
            let mut b = qb.separated(", ");
            for (column, text) in table.key_columns().zip(&key.0) {
                push_stored(&mut b, stored_key(&column.kind, text));
            }
            qb.push(")");
        }
        qb.push(format!(" ORDER BY {} LIMIT ", table.key_list()));
        qb.push_bind(limit as i64);
        let rows =
            qb.build().fetch_all(&mut self.conn).await.map_err(|e| self.err(format!("reading {}", table.name), &e))?;
        Self::decode_rows(table, rows)
    }

    async fn sequence_positions(&mut self, table: &TableDef) -> anyhow::Result<Vec<(String, i64)>> {
        let mut positions = Vec::new();
        for (column, _) in table.sequence_columns() {
            positions.push((column.name.clone(), self.rowid_next(&table.name).await?));
        }
        Ok(positions)
    }

    /// SQLite's storage order is its rowids (a table without a key has
    /// them); the read transaction holds one snapshot (WAL mode).
    async fn begin_heap_scan(&mut self, table: &TableDef) -> anyhow::Result<Option<u64>> {
        let what = |e: sqlx::Error| Error::driver(format!("starting a storage-order read of {}", table.name), &e);
        sqlx::query("BEGIN").execute(&mut self.conn).await.map_err(what)?;
        let end: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(max(rowid), -1) + 1 FROM {}",
            table.quoted()
        )))
        .fetch_one(&mut self.conn)
        .await
        .map_err(what)?;
        Ok(Some(end.max(0) as u64))
    }

    /// Rowids `from..to`; the first range (`from` 0) also holds the
    /// negative rowids an application may have chosen.
    async fn read_heap(
        &mut self,
        table: &TableDef,
        from: u64,
        to: Option<u64>,
        _form: crate::source::PageForm,
    ) -> anyhow::Result<RowPage> {
        let mut bounds = Vec::new();
        if from > 0 {
            bounds.push(format!("rowid >= {from}"));
        }
        if let Some(to) = to {
            bounds.push(format!("rowid < {to}"));
        }
        let filter = if bounds.is_empty() { String::new() } else { format!(" WHERE {}", bounds.join(" AND ")) };
        let sql = format!("SELECT {} FROM {}{filter}", table.column_list(), table.quoted());
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("reading {}", table.name), &e))?;
        let mut page = Self::decode_rows(table, rows)?;
        let to = to.map_or_else(|| "end".to_string(), |to| to.to_string());
        page.last_key = Some(Key(vec![format!("rowids {from}..{to}")]));
        Ok(page)
    }

    async fn read_keys(&mut self, table: &TableDef, keys: &[Vec<Value>]) -> anyhow::Result<RowPage> {
        let mut page = RowPage::default();
        let per_statement = (MAX_PARAMS / table.primary_key.len().max(1)).max(1);
        for chunk in keys.chunks(per_statement) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
                "SELECT {} FROM {} WHERE ({}) IN (VALUES ",
                table.column_list(),
                table.quoted(),
                table.key_prefix_list(chunk[0].len())
            ));
            let mut first = true;
            for key in chunk {
                qb.push(if first { "(" } else { ", (" });
                first = false;
                let mut b = qb.separated(", ");
                for value in key {
                    push_stored(&mut b, to_sqlite(value));
                }
                qb.push(")");
            }
            qb.push(")");
            let rows = qb
                .build()
                .fetch_all(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("reading {}", table.name), &e))?;
            let part = Self::decode_rows(table, rows)?;
            page.rows.extend(part.rows);
            page.unreadable.extend(part.unreadable);
        }
        Ok(page)
    }
}

#[async_trait]
impl RowSink for SqliteTables {
    async fn create_table(&mut self, def: &TableDef, names: &NameMap) -> anyhow::Result<()> {
        let sql = def.create_sql(names, &Default::default());
        sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("creating table {}", def.name), &e))?;
        if let Some(sql) = def.key_index_sql() {
            sqlx::query(sqlx::AssertSqlSafe(&*sql))
                .execute(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("building the key index of {}", def.name), &e))?;
        }
        Ok(())
    }

    async fn build_indexes(&mut self, def: &TableDef) -> anyhow::Result<()> {
        for sql in def.index_sql() {
            sqlx::query(sqlx::AssertSqlSafe(&*sql))
                .execute(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("building an index of {} ({sql})", def.name), &e))?;
        }
        Ok(())
    }

    /// SQLite's foreign keys are declared with the table (it cannot add
    /// them later) and it has no named checks to copy.
    async fn add_constraints(&mut self, _def: &TableDef, _names: &NameMap) -> anyhow::Result<()> {
        Ok(())
    }

    async fn restart_table(&mut self, run_id: &str, table: &str, targets: &[&TableDef]) -> anyhow::Result<()> {
        let what = |e: sqlx::Error| Error::driver(format!("starting the copy of {table} over in {}", self.url), &e);
        let mut tx = self.conn.begin().await.map_err(what)?;
        for target in targets {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {}", target.quoted())))
                .execute(&mut *tx)
                .await
                .map_err(what)?;
        }
        for sql in [
            "DELETE FROM ferry_dead_letters WHERE run_id = ?1 AND source_table = ?2",
            "DELETE FROM ferry_lineage WHERE run_id = ?1 AND table_name = ?2",
        ] {
            sqlx::query(sql).bind(run_id).bind(table).execute(&mut *tx).await.map_err(what)?;
        }
        sqlx::query(
            "UPDATE ferry_table_progress SET last_key = NULL, phase = 'copying', batches = 0, extracted = 0, \
             transformed = 0, loaded = 0, skipped = 0, filtered = 0, dead_lettered = 0, \
             updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE run_id = ?1 AND table_name = ?2",
        )
        .bind(run_id)
        .bind(table)
        .execute(&mut *tx)
        .await
        .map_err(what)?;
        tx.commit().await.map_err(what)?;
        Ok(())
    }

    async fn commit_rows(&mut self, batch: &RowBatch, policy: OnConflict) -> anyhow::Result<Applied> {
        // IMMEDIATE: take the write lock now (waiting for it under the busy
        // timeout); a deferred transaction that reads first cannot wait.
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let stored: Option<Option<String>> =
            sqlx::query_scalar("SELECT last_key FROM ferry_table_progress WHERE run_id = ?1 AND table_name = ?2")
                .bind(&batch.run_id)
                .bind(&batch.table)
                .fetch_optional(&mut *tx)
                .await?;
        if stored != Some(batch.previous_key.as_ref().map(Key::encode)) {
            return Err(FencedError { run_id: batch.run_id.clone() }.into());
        }
        let replayed = if batch.replayed.is_empty() {
            0
        } else {
            let keys: Vec<String> = batch.replayed.iter().map(Key::label).collect();
            let gone = sqlx::query(
                "DELETE FROM ferry_dead_letters WHERE run_id = ?1 AND source_table = ?2 \
                 AND source_key IN (SELECT value FROM json_each(?3))",
            )
            .bind(&batch.run_id)
            .bind(&batch.table)
            .bind(serde_json::to_string(&keys)?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if gone != keys.len() as u64 {
                return Err(FencedError { run_id: batch.run_id.clone() }.into());
            }
            gone as i64
        };
        if let Some(replacing) = &batch.replacing {
            for (write, keys) in batch.writes.iter().zip(&replacing.deletes) {
                delete_prefixes(&mut tx, &write.target, keys).await.map_err(|e| self_err(&batch.table, &e))?;
            }
        }
        let mut refused: Vec<RowDeadLetter> = Vec::new();
        let mut written = Applied::default();
        for write in &batch.writes {
            let target = &write.target;
            let refused_before = refused.len();
            let loaded = match Self::insert(&mut tx, target, &write.rows, policy).await {
                Ok(n) => n,
                Err(e) if refuses_rows(&e, policy) => {
                    // The failed statement was undone, the transaction is
                    // intact: the rows go in one by one, the refused ones kept.
                    let mut n = 0;
                    for (index, row) in write.rows.iter().enumerate() {
                        match Self::insert(&mut tx, target, std::slice::from_ref(row), policy).await {
                            Ok(one) => n += one,
                            Err(e) if refuses_rows(&e, policy) => refused.push(RowDeadLetter {
                                table: batch.table.clone(),
                                key: write.keys[index].clone(),
                                row: crate::keyset::row_json(target, row),
                                kind: DeadLetterKind::Load,
                                reason: format!(
                                    "the target refused row {} of {}: {e}",
                                    crate::keyset::Key::of(target, row).label(),
                                    target.name
                                ),
                            }),
                            Err(e) => return Err(self_err(&batch.table, &e)),
                        }
                    }
                    n
                }
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    return Err(ConflictError { table: target.name.to_string(), key: db.message().to_string() }.into());
                }
                Err(e) => return Err(self_err(&batch.table, &e)),
            };
            let offered = (write.rows.len() - (refused.len() - refused_before)) as u64;
            written.loaded += loaded;
            written.skipped += offered.saturating_sub(loaded);
        }
        let refused_keys: std::collections::HashSet<&Key> = refused.iter().map(|d| &d.key).collect();
        // A source row is loaded whole or not at all (see the PostgreSQL sink).
        if batch.writes.len() > 1 && !refused_keys.is_empty() && policy == OnConflict::Error {
            for write in &batch.writes {
                let target = &write.target;
                let doomed: Vec<&ValueRow> = write
                    .rows
                    .iter()
                    .zip(&write.keys)
                    .filter(|(_, k)| refused_keys.contains(k))
                    .map(|(r, _)| r)
                    .collect();
                for chunk in doomed.chunks((MAX_PARAMS / target.primary_key.len().max(1)).max(1)) {
                    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
                        "DELETE FROM {} WHERE ({}) IN (VALUES ",
                        target.quoted(),
                        target.key_list()
                    ));
                    for (n, row) in chunk.iter().enumerate() {
                        qb.push(if n == 0 { "(" } else { ", (" });
                        let mut b = qb.separated(", ");
                        for &i in &target.primary_key {
                            push_stored(&mut b, to_sqlite(&row[i]));
                        }
                        qb.push(")");
                    }
                    qb.push(")");
                    let gone =
                        qb.build().execute(&mut *tx).await.map_err(|e| self_err(&batch.table, &e))?.rows_affected();
                    written.loaded = written.loaded.saturating_sub(gone);
                }
            }
        }
        let refused_sources = refused_keys.len() as u64;
        let (loaded, skipped) = batch.accounted(written, refused_sources);
        let applied = Applied { loaded, skipped };
        let (loaded_delta, filtered_delta) =
            crate::sink::Replacing::deltas(batch.replacing.as_ref(), loaded, batch.filtered);
        let dead: Vec<&RowDeadLetter> = batch.dead.iter().chain(&refused).collect();
        for d in &dead {
            sqlx::query(
                "INSERT INTO ferry_dead_letters (run_id, pipeline, source_table, source_key, source_row, kind, reason, plugin_sha256) \
                 SELECT ?1, pipeline, ?2, ?3, ?4, ?5, ?6, ?7 FROM ferry_runs WHERE run_id = ?1 ON CONFLICT DO NOTHING",
            )
            .bind(&batch.run_id)
            .bind(&batch.table)
            .bind(d.key.label())
            .bind(d.row.to_string())
            .bind(d.kind.as_str())
            .bind(&d.reason)
            .bind(&batch.plugin_sha256)
            .execute(&mut *tx)
            .await?;
        }
        let dead_count = (batch.dead.len() as u64 + refused_sources) as i64 - replayed;
        // A replay reads no new source rows: its counters move from dead
        // letters to loaded or filtered only.
        let transformed = match replayed {
            0 => {
                batch.extracted as i64 - batch.dead.iter().filter(|d| d.kind == DeadLetterKind::Extract).count() as i64
            }
            _ => 0,
        };
        if let Some((after, last, keys, rows)) = batch.lineage() {
            sqlx::query(
                "INSERT INTO ferry_lineage (run_id, table_name, after_key, last_key, keys, plugin_sha256, plugin_path, rows) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(&batch.run_id)
            .bind(&batch.table)
            .bind(after)
            .bind(last)
            .bind(keys)
            .bind(&batch.plugin_sha256)
            .bind(&batch.plugin_path)
            .bind(rows)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::driver(format!("recording the lineage of batch {} of {}", batch.seq, batch.table), &e))?;
        }
        sqlx::query(
            "UPDATE ferry_table_progress SET last_key = ?3, batches = batches + 1, extracted = extracted + ?4, \
             transformed = transformed + ?5, loaded = loaded + ?6, skipped = skipped + ?7, filtered = filtered + ?8, \
             dead_lettered = dead_lettered + ?9, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') \
             WHERE run_id = ?1 AND table_name = ?2",
        )
        .bind(&batch.run_id)
        .bind(&batch.table)
        .bind(batch.last_key.encode())
        .bind(batch.extracted as i64)
        .bind(transformed)
        .bind(loaded_delta)
        .bind(applied.skipped as i64)
        .bind(filtered_delta)
        .bind(dead_count)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE ferry_runs SET batches = batches + 1, extracted = extracted + ?2, transformed = transformed + ?3, \
             loaded = loaded + ?4, skipped = skipped + ?5, dead_lettered = dead_lettered + ?6, \
             updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE run_id = ?1",
        )
        .bind(&batch.run_id)
        .bind(batch.extracted as i64)
        .bind(transformed)
        .bind(loaded_delta)
        .bind(applied.skipped as i64)
        .bind(dead_count)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(written)
    }
}

/// Deletes the rows whose key starts with each of `keys` (whole keys or
/// prefixes), in chunks of SQLite's parameter limit.
async fn delete_prefixes(
    tx: &mut sqlx::SqliteConnection,
    table: &TableDef,
    keys: &[Vec<Value>],
) -> Result<(), sqlx::Error> {
    for n in 1..=table.primary_key.len() {
        let same: Vec<&Vec<Value>> = keys.iter().filter(|k| k.len() == n).collect();
        let columns: Vec<String> = table.key_columns().take(n).map(|c| crate::db::quote_ident(&c.name)).collect();
        for chunk in same.chunks((MAX_PARAMS / n).max(1)) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("DELETE FROM {} WHERE ({}) IN (VALUES ", table.quoted(), columns.join(", ")));
            for (i, key) in chunk.iter().enumerate() {
                qb.push(if i == 0 { "(" } else { ", (" });
                let mut b = qb.separated(", ");
                for value in key.iter() {
                    push_stored(&mut b, to_sqlite(value));
                }
                qb.push(")");
            }
            qb.push(")");
            qb.build().execute(&mut *tx).await?;
        }
    }
    Ok(())
}

fn self_err(table: &str, e: &sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!("loading rows of {table} into SQLite: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_storage_classes() {
        let cases = [
            (Kind::Bool, Value::Bool(true)),
            (Kind::Int64, Value::Int64(i64::MIN)),
            (Kind::Float64, Value::Float64(f64::NAN)),
            (Kind::Float64, Value::Float64(-0.0)),
            (Kind::Numeric, Value::Numeric("-12.3400".into())),
            (Kind::Json, Value::Json("{\"a\": [1, 2]}".into())),
            (Kind::Uuid, Value::Uuid(uuid::Uuid::nil())),
            (Kind::Date, Value::Date(i32::MAX)),
            (Kind::Timestamp, Value::Timestamp(1_714_558_830_123_456)),
            (Kind::TimestampTz, Value::TimestampTz(-1)),
            (Kind::TimestampTz, Value::TimestampTz(-210_866_803_200_000_000)),
            (Kind::Timestamp, Value::Timestamp(9_222_000_000_000_000_000)),
            (Kind::Interval, Value::Interval { months: -14, days: 3, micros: -500_000 }),
            (
                Kind::Array(Box::new(Kind::Numeric)),
                Value::Array { element: Kind::Numeric, items: vec![Value::Numeric("1.50".into()), Value::Null] },
            ),
        ];
        for (kind, value) in cases {
            let back = from_sqlite(&kind, "T", to_sqlite(&value)).unwrap();
            assert_eq!(format!("{back:?}"), format!("{value:?}"), "{kind:?}");
        }
        assert!(from_sqlite(&Kind::Timestamp, "DATETIME", Stored::Integer(5)).unwrap_err().0.contains("ambiguous"));
        assert!(from_sqlite(&Kind::Int64, "INTEGER", Stored::Text("abc".into())).is_err());
    }
}
