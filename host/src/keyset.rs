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
    /// PostgreSQL's binary COPY format (with its header and trailer), not
    /// its text.
    pub binary: bool,
}

impl RawRows {
    /// COPY text `data` of whole lines: one row per line.
    pub fn of_copy_text(data: Vec<u8>) -> RawRows {
        let rows = data.iter().filter(|&&b| b == b'\n').count();
        RawRows { data, rows, binary: false }
    }

    /// Binary COPY `data`, whole: its tuples counted by walking their
    /// field lengths; `None` when it is not that format.
    pub fn of_copy_binary(data: Vec<u8>) -> Option<RawRows> {
        const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
        let int = |at: usize, n: usize| -> Option<i64> {
            let bytes = data.get(at..at + n)?;
            Some(bytes.iter().fold(0i64, |v, &b| (v << 8) | i64::from(b)))
        };
        if !data.starts_with(SIGNATURE) {
            return None;
        }
        // Flags (4 bytes), then the header extension's length and bytes.
        let mut at = SIGNATURE.len() + 4;
        at += 4 + usize::try_from(int(at, 4)?).ok()?;
        let mut rows = 0;
        loop {
            let fields = int(at, 2)? as i16;
            at += 2;
            if fields == -1 {
                return (at == data.len()).then_some(RawRows { data, rows, binary: true });
            }
            for _ in 0..fields {
                let len = int(at, 4)? as i32;
                at += 4 + usize::try_from(len.max(0)).ok()?;
            }
            rows += 1;
        }
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

#[cfg(test)]
mod tests {
    use super::RawRows;

    /// Binary COPY of `tuples` (each a list of fields, `None` for NULL),
    /// as PostgreSQL writes it: signature, flags, an extension, the
    /// tuples, the trailer.
    fn copy_binary(tuples: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut data = b"PGCOPY\n\xff\r\n\0".to_vec();
        data.extend_from_slice(&0i32.to_be_bytes());
        data.extend_from_slice(&3i32.to_be_bytes());
        data.extend_from_slice(b"ext");
        for tuple in tuples {
            data.extend_from_slice(&(tuple.len() as i16).to_be_bytes());
            for field in tuple {
                match field {
                    None => data.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        data.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        data.extend_from_slice(bytes);
                    }
                }
            }
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        data
    }

    #[test]
    fn binary_copy_rows_are_counted_by_their_fields() {
        let tuples = vec![
            vec![Some(&[0u8, 0, 0, 1][..]), None],
            // A field holding what looks like a trailer and newlines.
            vec![Some(&[0xff, 0xff, b'\n', b'\n'][..]), Some(&b""[..])],
            vec![None, None],
        ];
        let raw = RawRows::of_copy_binary(copy_binary(&tuples)).expect("binary COPY");
        assert_eq!((raw.rows, raw.binary), (3, true));
        assert_eq!(RawRows::of_copy_binary(copy_binary(&[])).map(|r| r.rows), Some(0));
    }

    #[test]
    fn what_is_not_whole_binary_copy_is_refused() {
        let data = copy_binary(&[vec![Some(&b"abc"[..])]]);
        assert!(RawRows::of_copy_binary(data[..data.len() - 2].to_vec()).is_none(), "no trailer");
        assert!(RawRows::of_copy_binary(data[..data.len() - 4].to_vec()).is_none(), "a cut field");
        let mut extra = data.clone();
        extra.push(0);
        assert!(RawRows::of_copy_binary(extra).is_none(), "bytes after the trailer");
        assert!(RawRows::of_copy_binary(b"1\tx\n".to_vec()).is_none(), "COPY text");
    }
}
