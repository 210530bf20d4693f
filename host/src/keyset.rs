//! Keys and pages of any table: the currency of keyset pagination.
//!
//! A [`Key`] is the primary key of a row as the PostgreSQL text forms of its
//! values, in key order: exact for every type, comparable by the engine
//! that cast them back (`'…'::numeric(12,2)`), and stored as a JSON array in
//! the checkpoint (`ferry.table_progress.last_key`). A checkpoint is thus
//! the whole key, not an `i64`, and resuming after `kill -9` reads the rows
//! strictly after it.

use crate::model::DeadLetterKind;
use crate::schema::TableDef;
use crate::value::{Value, encode_pg_text};

/// A row: one value per column of its table, in the table's column order.
pub type Row = Vec<Value>;

/// A primary key (see the module's doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(pub Vec<String>);

impl Key {
    /// The key of `row` in `table`.
    pub fn of(table: &TableDef, row: &Row) -> Key {
        Key(table.primary_key.iter().map(|&i| encode_pg_text(&row[i]).unwrap_or_default()).collect())
    }

    /// The key of key values (key order; a shorter list is a prefix).
    pub fn of_values(values: &[Value]) -> Key {
        Key(values.iter().map(|v| encode_pg_text(v).unwrap_or_default()).collect())
    }

    /// As stored in checkpoints: a JSON array of strings.
    pub fn encode(&self) -> String {
        serde_json::to_string(&self.0).expect("strings serialise")
    }

    pub fn decode(text: &str) -> anyhow::Result<Key> {
        serde_json::from_str(text)
            .map(Key)
            .map_err(|e| anyhow::anyhow!("stored checkpoint `{text}` is not a key (JSON array of strings): {e}"))
    }

    /// What people read: the value of a one-column key, else the JSON array.
    pub fn label(&self) -> String {
        match self.0.as_slice() {
            [one] => one.clone(),
            _ => self.encode(),
        }
    }

    /// The key [`Key::label`] wrote, for a key of `columns` columns.
    pub fn from_label(label: &str, columns: usize) -> anyhow::Result<Key> {
        let key = match columns {
            1 => Key(vec![label.to_string()]),
            _ => Key::decode(label)?,
        };
        if key.0.len() != columns {
            anyhow::bail!("{} values for a key of {columns} columns", key.0.len());
        }
        Ok(key)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// A row of any table that did not make it, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RowDeadLetter {
    /// The source table (`schema.table`).
    pub table: String,
    pub key: Key,
    /// The source row as a JSON object of column → text form.
    pub row: serde_json::Value,
    pub kind: DeadLetterKind,
    pub reason: String,
}

/// Rows as the source engine wrote them for its own bulk load (PostgreSQL
/// COPY text): a same-engine copy forwards them without decoding.
#[derive(Debug, Clone)]
pub struct RawRows {
    pub data: Vec<u8>,
    pub rows: usize,
}

impl RawRows {
    /// COPY text `data` of whole lines: one row per line.
    pub fn of_copy_text(data: Vec<u8>) -> RawRows {
        let rows = data.iter().filter(|&&b| b == b'\n').count();
        RawRows { data, rows }
    }
}

/// A page read from a table, in key order.
#[derive(Debug, Default)]
pub struct RowPage {
    /// The page undecoded (then `rows` and `unreadable` are empty).
    pub raw: Option<RawRows>,
    pub rows: Vec<Row>,
    /// Rows that could be read but not represented: dead letters of kind
    /// `extract` with the reason (never dropped, never a stopped run).
    pub unreadable: Vec<RowDeadLetter>,
    /// The highest key of the page (rows and unreadable alike): the
    /// checkpoint once the page is committed.
    pub last_key: Option<Key>,
}

impl RowPage {
    pub fn len(&self) -> usize {
        self.rows.len() + self.unreadable.len() + self.raw.as_ref().map_or(0, |r| r.rows)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A row as a JSON object of column → PostgreSQL text form (NULL as null),
/// for dead letters: nothing about the value is lost.
pub fn row_json(table: &TableDef, row: &Row) -> serde_json::Value {
    serde_json::Value::Object(
        table.columns.iter().zip(row).map(|(c, v)| (c.name.clone(), encode_pg_text(v).into())).collect(),
    )
}

/// The same for a row read as text fields (before decoding failed).
pub fn text_row_json(table: &TableDef, fields: &[Option<String>]) -> serde_json::Value {
    serde_json::Value::Object(
        table.columns.iter().zip(fields).map(|(c, v)| (c.name.clone(), v.clone().into())).collect(),
    )
}
