//! Tables of any shape in PostgreSQL: the catalog (definitions), keyset
//! pages read with `COPY (SELECT …) TO STDOUT`, rows written with
//! `COPY … FROM STDIN`: in binary format where it is exactly equivalent
//! ([`super::binary`]), else in text format under
//! [`crate::value::PG_SESSION`] so every type round-trips exactly through
//! its own text I/O.

use async_trait::async_trait;
use futures_util::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use super::binary::{self, Wire};
use super::refuses_rows;
use super::undo::Journal;
use crate::config::OnConflict;
use crate::db::{DbUrl, Engine, TableName, quote_ident};
use crate::error::Error;
use crate::keyset::{Key, Row as ValueRow, RowDeadLetter, RowPage, text_row_json};
use crate::model::DeadLetterKind;
use crate::schema::{ColumnDef, ColumnDefault, ForeignKeyDef, IndexDef, TableDef};
use crate::sink::{Applied, ConflictError, FencedError, RowBatch, RowSink};
use crate::source::{PageForm, RowSource};
use crate::undo_journal::UndoMode;
use crate::value::{Kind, Value, copy_escape, copy_unescape, decode_pg_text, write_pg_text};

/// A PostgreSQL database read or written table by table.
pub struct PgTables {
    pub(super) conn: PgConnection,
    pub(super) url: DbUrl,
    /// Scratch buffer for COPY data.
    buf: String,
    /// Each table's columns and their base types (`pg_type.typname` after
    /// domains), from its catalog: what binary COPY may be used for.
    base_types: std::collections::HashMap<String, Vec<(String, String)>>,
    /// COPY in text format only (`target.load_method = "copy-text"`: a
    /// PostgreSQL-compatible server without binary COPY).
    pub text_only: bool,
    /// This session's transactions carry a replication origin
    /// ([`crate::sink::RowChangeSink::mark_origin`]).
    pub(super) origin_marked: bool,
    /// The undo journal's mode of each (run, target table) this session
    /// wrote ([`super::undo::mode`]).
    pub(super) undo: std::collections::HashMap<(String, String), Option<(i32, crate::undo_journal::UndoMode)>>,
}

impl super::control::PgConn for PgTables {
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    fn url(&self) -> &DbUrl {
        &self.url
    }
}

super::control::pg_control!(PgTables);

/// The value the sequence of column `column` (an SQL expression) of table
/// `table` (one giving its quoted name) hands out next, as a scalar
/// subquery; NULL when the column has none or its state is unreadable.
fn sequence_next(table: &str, column: &str) -> String {
    format!(
        "(SELECT coalesce(s.last_value + s.increment_by, s.start_value) FROM pg_sequences s \
          WHERE format('%I.%I', s.schemaname, s.sequencename)::regclass = {})",
        column_sequence(table, column)
    )
}

/// SQL: the sequence (regclass) feeding column `column` of `table` (SQL
/// expressions of a name and a column name): the one it owns (identity,
/// `serial`; a partition's is its root's), else one its DEFAULT calls
/// `nextval` on without owning it.
fn column_sequence(table: &str, column: &str) -> String {
    format!(
        "coalesce(pg_get_serial_sequence(coalesce(pg_partition_root({table}::regclass), {table}::regclass)::text, \
                                         {column})::regclass, \
           (SELECT d.refobjid::regclass FROM pg_attrdef ad \
              JOIN pg_attribute att ON att.attrelid = ad.adrelid AND att.attnum = ad.adnum \
              JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid \
                AND d.refclassid = 'pg_class'::regclass \
              JOIN pg_class sq ON sq.oid = d.refobjid AND sq.relkind = 'S' \
            WHERE ad.adrelid = {table}::regclass AND att.attname = {column} LIMIT 1))"
    )
}

/// A SQL literal of `text` cast to `sql_type` (COPY takes no parameters).
/// A text holding a NUL character (which no PostgreSQL text can, and no
/// query string may carry) is written as its UTF-8 bytes converted back:
/// the server refuses that value as COPY would ("invalid byte sequence
/// … 0x00"), so the row is isolated and dead-lettered like any refused row.
pub(super) fn literal(text: &str, sql_type: &str) -> String {
    if text.contains('\0') {
        return format!("convert_from('\\x{}'::bytea, 'UTF8')::{sql_type}", hex::encode(text.as_bytes()));
    }
    format!("{}::{sql_type}", crate::db::quote_literal(text))
}

impl PgTables {
    /// `CREATE TABLE` in one transaction with a sequence of its own for
    /// each `serial` column (named as PostgreSQL would, or with a number
    /// added when that name is taken), owned by the column.
    async fn create_with_sequences(
        &mut self,
        def: &TableDef,
        names: &crate::schema::NameMap,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.conn.begin().await?;
        let mut sequences = std::collections::HashMap::new();
        for (column, base) in def.serial_columns() {
            let qualified = |name: &str| TableName { schema: def.name.schema.clone(), name: name.to_string() }.quoted();
            let mut name = base.clone();
            for n in 1.. {
                let taken: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                    .bind(qualified(&name))
                    .fetch_one(&mut *tx)
                    .await?;
                if !taken {
                    break;
                }
                name = format!("{}{n}", &base[..base.len().min(60)]);
            }
            let integer = ["smallint", "integer", "bigint"].contains(&column.sql_type.as_str());
            let next = column.sequence_next().unwrap_or(1);
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SEQUENCE {}{} START WITH {next} MINVALUE {}",
                qualified(&name),
                if integer { format!(" AS {}", column.sql_type) } else { String::new() },
                next.min(1)
            )))
            .execute(&mut *tx)
            .await?;
            sequences.insert(column.name.clone(), qualified(&name));
        }
        sqlx::query(sqlx::AssertSqlSafe(def.create_sql(names, &sequences))).execute(&mut *tx).await?;
        for (column, sequence) in &sequences {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER SEQUENCE {sequence} OWNED BY {}.{}",
                def.quoted(),
                quote_ident(column)
            )))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// `role` is "source" or "target" (for messages). Targets commit
    /// batches asynchronously: a batch and its checkpoint are lost or kept
    /// together.
    pub async fn connect(url: &DbUrl, role: &str) -> anyhow::Result<PgTables> {
        let mut settings: Vec<(&str, &str)> = crate::value::PG_SESSION.to_vec();
        settings.push(("standard_conforming_strings", "on"));
        if role == "target" {
            settings.push(("synchronous_commit", "off"));
        }
        let conn = super::connect_with(url, role, &settings).await?;
        Ok(PgTables {
            conn,
            url: url.clone(),
            buf: String::new(),
            base_types: Default::default(),
            text_only: false,
            origin_marked: false,
            undo: Default::default(),
        })
    }

    /// `enable_seqscan` for this session's next statements.
    async fn set_seqscan(&mut self, on: bool) -> anyhow::Result<()> {
        let sql = if on { "RESET enable_seqscan" } else { "SET enable_seqscan = off" };
        sqlx::query(sql).execute(&mut self.conn).await.map_err(|e| self.err("setting enable_seqscan".into(), &e))?;
        Ok(())
    }

    fn err(&self, what: String, e: &sqlx::Error) -> anyhow::Error {
        Error::driver(format!("{what} in {}", self.url), e)
    }

    /// The table's oid and its schema-qualified name, if it exists.
    async fn resolve(&mut self, table: &TableName) -> anyhow::Result<Option<(i64, TableName)>> {
        let row: Option<(i64, String, String)> = sqlx::query_as(
            "SELECT c.oid::int8, n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
        )
        .bind(table.quoted())
        .fetch_optional(&mut self.conn)
        .await
        .map_err(|e| self.err(format!("looking up table {table}"), &e))?;
        Ok(row.map(|(oid, schema, name)| (oid, TableName { schema: Some(schema), name })))
    }

    /// Runs a `COPY (query) TO STDOUT`: its text-format bytes, whole lines.
    async fn copy_out_bytes(&mut self, table: &TableDef, query: &str) -> anyhow::Result<Vec<u8>> {
        self.copy_out_format(table, query, "").await
    }

    /// [`Self::copy_out_bytes`] with COPY `options` (e.g. ` (FORMAT binary)`).
    async fn copy_out_format(&mut self, table: &TableDef, query: &str, options: &str) -> anyhow::Result<Vec<u8>> {
        let sql = format!("COPY ({query}) TO STDOUT{options}");
        let mut data: Vec<u8> = Vec::new();
        let mut stream =
            self.conn.copy_out_raw(&sql).await.map_err(|e| Error::driver(format!("reading {}", table.name), &e))?;
        while let Some(chunk) =
            stream.try_next().await.map_err(|e| Error::driver(format!("reading {}", table.name), &e))?
        {
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }

    /// Runs a `COPY (query) TO STDOUT` and decodes its rows for `table`:
    /// in binary where the table allows, and as text when the binary page
    /// holds a value ferry cannot represent (its dead letter then shows the
    /// value's text and the text path's reason).
    async fn copy_out(&mut self, table: &TableDef, query: &str) -> anyhow::Result<RowPage> {
        if self.binary_readable(table).await? {
            let data = self.copy_out_format(table, query, " (FORMAT binary)").await?;
            if let Some(page) = binary::decode_page(table, &data) {
                return Ok(page);
            }
        }
        let data = self.copy_out_bytes(table, query).await?;
        Ok(decode_lines(table, &data))
    }

    /// Whether pages of `table` can be read in binary: all its columns are
    /// scalar and of the kinds their actual types have (a definition read
    /// with another table's kinds, as validation reads a target, is not).
    async fn binary_readable(&mut self, table: &TableDef) -> anyhow::Result<bool> {
        if self.text_only || !binary::readable(table) {
            return Ok(false);
        }
        let types = self.base_types(table).await?;
        Ok(table
            .columns
            .iter()
            .all(|c| types.iter().find(|(n, _)| *n == c.name).is_some_and(|(_, t)| Kind::from_pg_typname(t) == c.kind)))
    }

    /// The binary wire forms of `table`'s columns in the target (`None`
    /// when one has no binary form ferry writes).
    async fn wires(&mut self, table: &TableDef) -> anyhow::Result<Option<Vec<Wire>>> {
        if self.text_only {
            return Ok(None);
        }
        let types = self.base_types(table).await?;
        Ok(table
            .columns
            .iter()
            .map(|c| types.iter().find(|(n, _)| *n == c.name).and_then(|(_, t)| Wire::of_typname(t)))
            .collect())
    }

    /// `table`'s columns and their base types (cached once found).
    async fn base_types(&mut self, table: &TableDef) -> anyhow::Result<&[(String, String)]> {
        let name = table.quoted();
        if !self.base_types.contains_key(&name) {
            let types: Vec<(String, String)> = sqlx::query_as(
                "SELECT a.attname::text, bt.typname::text FROM pg_attribute a \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            )
            .bind(&name)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("reading the column types of {name}"), &e))?;
            if types.is_empty() {
                // No such table (yet): asked again next time.
                return Ok(&[]);
            }
            self.base_types.insert(name.clone(), types);
        }
        Ok(&self.base_types[&name])
    }

    /// The keyset query of a page (see [`RowSource::read_page`]).
    fn page_query(table: &TableDef, after: Option<&Key>, limit: usize) -> String {
        let key_types: Vec<&str> = table.key_columns().map(|c| c.sql_type.as_str()).collect();
        let filter = match after {
            None => String::new(),
            Some(key) => format!(
                " WHERE ({}) > ({})",
                table.key_list(),
                key.0.iter().zip(&key_types).map(|(v, t)| literal(v, t)).collect::<Vec<_>>().join(", ")
            ),
        };
        format!(
            "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {limit}",
            table.column_list(),
            table.relation(),
            table.key_list()
        )
    }

    /// Writes `rows` with COPY (or through a staging table for skip and
    /// overwrite), in binary when `wires` are known and every value
    /// converts; `Err` is the database's refusal.
    async fn apply(
        tx: &mut PgConnection,
        buf: &mut String,
        table: &TableDef,
        rows: &[ValueRow],
        policy: OnConflict,
        wires: Option<&[Wire]>,
        journal: Option<Journal<'_>>,
    ) -> Result<Applied, sqlx::Error> {
        if rows.is_empty() {
            return Ok(Applied::default());
        }
        if let Some(wires) = wires {
            let mut data = Vec::with_capacity(buf.capacity());
            if binary::encode_rows(wires, rows, &mut data).is_some() {
                return Self::apply_data(tx, data, rows.len() as u64, table, policy, true, journal).await;
            }
        }
        encode_rows(rows, buf);
        Self::apply_data(tx, std::mem::take(buf).into_bytes(), rows.len() as u64, table, policy, false, journal).await
    }

    /// Writes COPY `data` (text, or binary) holding `total` rows under
    /// `policy`: straight in with COPY, or through a staging table (skip
    /// and overwrite, and every write whose before-images are journaled:
    /// read from the stage's keys); then marks the (sub)transaction as the
    /// run's (`journal`).
    #[allow(clippy::too_many_arguments)]
    async fn apply_data(
        tx: &mut PgConnection,
        data: Vec<u8>,
        total: u64,
        table: &TableDef,
        policy: OnConflict,
        binary: bool,
        journal: Option<Journal<'_>>,
    ) -> Result<Applied, sqlx::Error> {
        let columns = table.column_list();
        let format = if binary { " (FORMAT binary)" } else { "" };
        let copy_into = |name: &str| format!("COPY {name} ({columns}) FROM STDIN{format}");
        let before_images = journal.filter(|j| j.mode == UndoMode::BeforeImages);
        let applied = match policy {
            OnConflict::Error if before_images.is_none() => {
                let mut copy = tx.copy_in_raw(&copy_into(&table.quoted())).await?;
                copy.send(data).await?;
                let loaded = copy.finish().await?;
                Applied { loaded, skipped: 0 }
            }
            _ => {
                sqlx::query("DROP TABLE IF EXISTS pg_temp.ferry_rows_stage").execute(&mut *tx).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TEMP TABLE ferry_rows_stage ON COMMIT DROP AS SELECT {columns} FROM {} WITH NO DATA",
                    table.quoted()
                )))
                .execute(&mut *tx)
                .await?;
                let mut copy = tx.copy_in_raw(&copy_into("ferry_rows_stage")).await?;
                copy.send(data).await?;
                copy.finish().await?;
                if let Some(journal) = before_images {
                    super::undo::journal_from(tx, journal.id, table, "ferry_rows_stage ferry_new").await?;
                }
                let key: Vec<usize> = table.primary_key.clone();
                let non_key: Vec<String> = (0..table.columns.len())
                    .filter(|i| !key.contains(i))
                    .map(|i| {
                        let c = quote_ident(&table.columns[i].name);
                        format!("{c} = EXCLUDED.{c}")
                    })
                    .collect();
                let action = if policy == OnConflict::Error {
                    String::new()
                } else if policy == OnConflict::Skip || non_key.is_empty() {
                    format!(" ON CONFLICT ({}) DO NOTHING", table.key_list())
                } else {
                    format!(" ON CONFLICT ({}) DO UPDATE SET {}", table.key_list(), non_key.join(", "))
                };
                let sql = format!(
                    "INSERT INTO {} ({columns}) OVERRIDING SYSTEM VALUE SELECT {columns} FROM ferry_rows_stage{action}",
                    table.quoted(),
                );
                let written = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?.rows_affected();
                sqlx::query("DROP TABLE pg_temp.ferry_rows_stage").execute(&mut *tx).await?;
                Applied { loaded: written, skipped: total - written }
            }
        };
        if let Some(journal) = journal {
            super::undo::mark(tx, journal.run_id).await?;
        }
        Ok(applied)
    }

    /// [`Self::apply`], isolating the rows the target refuses by bisection
    /// under savepoints of the same transaction (as the `users` sink does).
    async fn apply_isolating(
        tx: &mut PgConnection,
        buf: &mut String,
        table: &TableDef,
        rows: &[ValueRow],
        policy: OnConflict,
        wires: Option<&[Wire]>,
        journal: Option<Journal<'_>>,
    ) -> Result<(Applied, Vec<(usize, String)>), sqlx::Error> {
        let mut applied = Applied::default();
        let mut refused = Vec::new();
        let mut todo = vec![(0, rows.len())];
        while let Some((from, to)) = todo.pop() {
            sqlx::query("SAVEPOINT ferry_rows").execute(&mut *tx).await?;
            match Self::apply(tx, buf, table, &rows[from..to], policy, wires, journal).await {
                Ok(a) => {
                    sqlx::query("RELEASE SAVEPOINT ferry_rows").execute(&mut *tx).await?;
                    applied.loaded += a.loaded;
                    applied.skipped += a.skipped;
                }
                Err(e) if refuses_rows(&e, policy) => {
                    buf.clear();
                    sqlx::query("ROLLBACK TO SAVEPOINT ferry_rows").execute(&mut *tx).await?;
                    sqlx::query("RELEASE SAVEPOINT ferry_rows").execute(&mut *tx).await?;
                    if to - from == 1 {
                        refused.push((from, super::describe_error(&e)));
                    } else {
                        super::split_refused(from, to, &mut todo);
                    }
                }
                Err(e) => {
                    buf.clear();
                    return Err(e);
                }
            }
        }
        Ok((applied, refused))
    }
}

/// `('a'::text, '1'::integer), (…)`: key values as literals of the key's types.
fn key_tuples(table: &TableDef, keys: &[Vec<crate::value::Value>]) -> String {
    let key_types: Vec<&str> = table.key_columns().map(|c| c.sql_type.as_str()).collect();
    keys.iter()
        .map(|key| {
            let parts: Vec<String> = key
                .iter()
                .zip(&key_types)
                .map(|(v, t)| literal(&crate::value::encode_pg_text(v).unwrap_or_default(), t))
                .collect();
            format!("({})", parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `DELETE`s of the rows whose key starts with each of `keys` (whole keys
/// or prefixes), one statement per prefix length.
fn prefix_deletes(table: &TableDef, keys: &[Vec<crate::value::Value>]) -> Vec<String> {
    let mut by_length: std::collections::BTreeMap<usize, Vec<Vec<crate::value::Value>>> = Default::default();
    for key in keys.iter().filter(|k| !k.is_empty() && k.len() <= table.primary_key.len()) {
        by_length.entry(key.len()).or_default().push(key.clone());
    }
    by_length
        .into_iter()
        .map(|(n, keys)| {
            let columns: Vec<String> = table.key_columns().take(n).map(|c| quote_ident(&c.name)).collect();
            format!("DELETE FROM {} WHERE ({}) IN ({})", table.relation(), columns.join(", "), key_tuples(table, &keys))
        })
        .collect()
}

/// A batch the target would not take: a key conflict under
/// `on_conflict = error` names the key; anything else says which batch.
fn load_error(e: sqlx::Error, batch: &RowBatch, target: &TableDef, url: &DbUrl) -> anyhow::Error {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("23505")
    {
        let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
        let key = pg
            .and_then(|p| p.detail())
            .and_then(|d| d.split_once(")=(").map(|(_, rest)| rest.trim_end_matches(") already exists.").to_string()))
            .unwrap_or_else(|| db.message().to_string());
        return ConflictError { table: target.name.to_string(), key }.into();
    }
    Error::driver(format!("loading batch {} of {} into {} in {url}", batch.seq, batch.table, target.name), &e)
}

/// The lines of COPY text data (each without its `\n`).
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    body.split(|&b| b == b'\n').take(if data.is_empty() { 0 } else { usize::MAX })
}

/// Decodes COPY text data into a page of `table`'s rows (and unreadable
/// rows), its last key the last line's.
fn decode_lines(table: &TableDef, data: &[u8]) -> RowPage {
    let mut page = RowPage::default();
    let mut lines = lines(data).peekable();
    while let Some(line) = lines.next() {
        decode_line(table, line, &mut page, lines.peek().is_none());
    }
    page
}

/// Decodes one COPY text line into a row of `table` (or an unreadable row);
/// the `last` line's key becomes the page's.
fn decode_line(table: &TableDef, line: &[u8], page: &mut RowPage, last: bool) {
    let mut fields: Vec<Option<String>> = Vec::with_capacity(table.columns.len());
    let mut problem = None;
    for raw in line.split(|&b| b == b'\t') {
        match copy_unescape(raw) {
            Ok(field) => fields.push(field),
            Err(e) => {
                fields.push(Some(String::from_utf8_lossy(raw).into_owned()));
                problem.get_or_insert(e.0);
            }
        }
    }
    let key_of = |fields: &[Option<String>]| {
        Key(table.primary_key.iter().map(|&i| fields.get(i).cloned().flatten().unwrap_or_default()).collect())
    };
    let key = last.then(|| key_of(&fields));
    let mut row = Vec::with_capacity(table.columns.len());
    if problem.is_none() {
        for (i, column) in table.columns.iter().enumerate().take(fields.len()) {
            // Text kinds keep the field itself (no second copy).
            let value = match (&column.kind, fields[i].take()) {
                (_, None) => Ok(Value::Null),
                (Kind::Text, Some(text)) => Ok(Value::Text(text)),
                (Kind::Json, Some(text)) => Ok(Value::Json(text)),
                (Kind::Numeric, Some(text)) => Ok(Value::Numeric(text)),
                (kind, Some(text)) => {
                    let value = decode_pg_text(kind, &column.sql_type, &text);
                    fields[i] = Some(text);
                    value
                }
            };
            match value {
                Ok(v) => row.push(v),
                Err(e) => {
                    problem = Some(format!("column {}: {e}", column.name));
                    break;
                }
            }
        }
        if problem.is_some() {
            // The dead letter shows every field as read.
            for (field, value) in fields.iter_mut().zip(&row) {
                if let Value::Text(text) | Value::Json(text) | Value::Numeric(text) = value {
                    *field = Some(text.clone());
                }
            }
        }
    }
    if fields.len() != table.columns.len() && problem.is_none() {
        problem = Some(format!("COPY returned {} fields for {} columns", fields.len(), table.columns.len()));
    }
    match problem {
        None => page.rows.push(row),
        Some(reason) => page.unreadable.push(RowDeadLetter {
            table: table.name.to_string(),
            key: key.clone().unwrap_or_else(|| key_of(&fields)),
            row: text_row_json(table, &fields),
            kind: DeadLetterKind::Extract,
            reason,
        }),
    }
    if key.is_some() {
        page.last_key = key;
    }
}

/// Appends `rows` to `buf` in COPY's text format.
fn encode_rows(rows: &[ValueRow], buf: &mut String) {
    buf.clear();
    let mut scratch = String::new();
    for row in rows {
        for (i, value) in row.iter().enumerate() {
            if i > 0 {
                buf.push('\t');
            }
            match value {
                Value::Null => buf.push_str("\\N"),
                // Text as it is, escaped on the way in: no copy in between.
                Value::Text(s) | Value::Json(s) | Value::Numeric(s) => copy_escape(s, buf),
                Value::Unsupported { text, .. } => copy_escape(text, buf),
                // Their text never holds a byte COPY escapes.
                Value::Bool(_)
                | Value::Int16(_)
                | Value::Int32(_)
                | Value::Int64(_)
                | Value::Float32(_)
                | Value::Float64(_)
                | Value::Uuid(_)
                | Value::Date(_)
                | Value::Time(_)
                | Value::Timestamp(_)
                | Value::TimestampTz(_)
                | Value::Interval { .. } => {
                    write_pg_text(value, buf);
                }
                // `\x…` and arrays: their backslashes and quotes escaped.
                Value::Bytes(_) | Value::Array { .. } => {
                    scratch.clear();
                    write_pg_text(value, &mut scratch);
                    copy_escape(&scratch, buf);
                }
            }
        }
        buf.push('\n');
    }
}

/// `ON UPDATE … ON DELETE …` and deferrability of a foreign key.
fn fk_actions(update: &str, delete: &str, matching: &str, deferrable: bool, deferred: bool) -> String {
    let action = |c: &str| match c {
        "r" => Some("RESTRICT"),
        "c" => Some("CASCADE"),
        "n" => Some("SET NULL"),
        "d" => Some("SET DEFAULT"),
        _ => None,
    };
    let mut parts = Vec::new();
    if matching == "f" {
        parts.push("MATCH FULL".to_string());
    }
    if let Some(a) = action(update) {
        parts.push(format!("ON UPDATE {a}"));
    }
    if let Some(a) = action(delete) {
        parts.push(format!("ON DELETE {a}"));
    }
    if deferrable {
        parts.push(if deferred { "DEFERRABLE INITIALLY DEFERRED" } else { "DEFERRABLE" }.to_string());
    }
    parts.join(" ")
}

#[async_trait]
impl RowSource for PgTables {
    async fn wait_visible(&mut self, xid: u32) -> anyhow::Result<()> {
        super::wait_visible(&mut self.conn, xid).await
    }

    async fn use_snapshot(&mut self, name: &str) -> anyhow::Result<()> {
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut self.conn).await?;
        // SET TRANSACTION SNAPSHOT takes a literal, not a parameter.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET TRANSACTION SNAPSHOT {}", crate::db::quote_literal(name))))
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("importing the replication slot's snapshot {name}"), &e))?;
        Ok(())
    }

    async fn list_tables(&mut self) -> anyhow::Result<Vec<TableName>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'ferry') AND n.nspname NOT LIKE 'pg\\_%' \
             ORDER BY 1, 2",
        )
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.err("listing tables".into(), &e))?;
        Ok(rows.into_iter().map(|(schema, name)| TableName { schema: Some(schema), name }).collect())
    }

    async fn partitions(&mut self, table: &TableName) -> anyhow::Result<Vec<TableName>> {
        let Some((oid, name)) = self.resolve(table).await? else { return Ok(Vec::new()) };
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text FROM pg_partition_tree($1::oid::regclass) t \
             JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE t.isleaf AND t.relid <> $1::oid::regclass ORDER BY t.level, 1, 2",
        )
        .bind(oid)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.err(format!("listing the partitions of {name}"), &e))?;
        Ok(rows.into_iter().map(|(schema, name)| TableName { schema: Some(schema), name }).collect())
    }

    async fn describe(&mut self, table: &TableName) -> anyhow::Result<Option<TableDef>> {
        let Some((oid, name)) = self.resolve(table).await? else { return Ok(None) };
        let what = |e: sqlx::Error| Error::driver(format!("reading the definition of {name}"), &e);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS sql_type, a.attnotnull, \
                    bt.typname::text AS base, bt.typcategory::text AS category, et.typname::text AS elem, \
                    a.attidentity::text AS identity, a.attgenerated::text AS generated, \
                    pg_get_expr(d.adbin, d.adrelid) AS default_expr, \
                    pg_get_serial_sequence($2, a.attname) IS NOT NULL AS owns_sequence, \
                    {} AS sequence_next \
             FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A' \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            sequence_next("$2", "a.attname")
        )))
        .bind(oid)
        .bind(name.quoted())
        .fetch_all(&mut self.conn)
        .await
        .map_err(what)?;
        let mut columns = Vec::with_capacity(rows.len());
        let mut generated = Vec::new();
        for row in &rows {
            let column: String = row.try_get("name")?;
            let sql_type: String = row.try_get("sql_type")?;
            let default_expr: Option<String> = row.try_get("default_expr")?;
            if !row.try_get::<String, _>("generated")?.is_empty() {
                generated.push(crate::schema::GeneratedColumn {
                    name: column,
                    sql_type,
                    expression: default_expr.unwrap_or_default(),
                    position: columns.len(),
                });
                continue;
            }
            let base: String = row.try_get("base")?;
            let category: String = row.try_get("category")?;
            let elem: Option<String> = row.try_get("elem")?;
            let kind = Kind::from_pg_column(&base, &category, elem.as_deref());
            // Unreadable (no privilege on the sequence): from 1.
            let next = row.try_get::<Option<i64>, _>("sequence_next")?.unwrap_or(1);
            let identity = match row.try_get::<String, _>("identity")?.as_str() {
                "" => None,
                kind => Some(crate::schema::Identity { always: kind == "a", next }),
            };
            let default = match default_expr {
                _ if identity.is_some() => None,
                Some(_) if row.try_get::<bool, _>("owns_sequence")? => Some(ColumnDefault::Serial { next }),
                Some(expression) if expression.contains("nextval(") => {
                    // Recreated by the schema copy (with the sequence); a
                    // table ferry makes from its columns goes without it.
                    tracing::debug!(
                        "the default of {name}.{column} ({expression}) takes values from a sequence the column \
                         does not own: not part of the table's definition"
                    );
                    row.try_get::<Option<i64>, _>("sequence_next")?.map(|next| ColumnDefault::Sequence { next })
                }
                Some(expression) => Some(ColumnDefault::Expression(expression)),
                // A partition's column fed by its root's identity or
                // serial sequence.
                None => row.try_get::<Option<i64>, _>("sequence_next")?.map(|next| ColumnDefault::Sequence { next }),
            };
            let nullable = !row.try_get::<bool, _>("attnotnull")?;
            columns.push(ColumnDef { name: column, sql_type, kind, nullable, identity, default });
        }
        let key_names: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.ord",
        )
        .bind(oid)
        .fetch_all(&mut self.conn)
        .await
        .map_err(what)?;
        let primary_key = key_names.iter().filter_map(|k| columns.iter().position(|c| &c.name == k)).collect();
        let indexes = sqlx::query(
            "SELECT ci.relname::text AS name, i.indisunique, pg_get_indexdef(i.indexrelid) AS def, \
                    (i.indexprs IS NULL AND i.indpred IS NULL) AS plain, \
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord) AS cols \
             FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid \
             WHERE i.indrelid = $1::oid AND NOT i.indisprimary ORDER BY 1",
        )
        .bind(oid)
        .fetch_all(&mut self.conn)
        .await
        .map_err(what)?
        .iter()
        .map(|row| -> Result<IndexDef, sqlx::Error> {
            let plain: bool = row.try_get("plain")?;
            Ok(IndexDef {
                name: row.try_get("name")?,
                unique: row.try_get("indisunique")?,
                columns: if plain { row.try_get("cols")? } else { Vec::new() },
                pg_definition: Some(row.try_get("def")?),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
        let foreign_keys = sqlx::query(
            "SELECT c.conname::text AS name, fn.nspname::text AS ref_schema, fc.relname::text AS ref_table, \
                    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(n, o) \
                          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o) AS cols, \
                    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(n, o) \
                          JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o) AS ref_cols, \
                    c.confupdtype::text AS upd, c.confdeltype::text AS del, c.confmatchtype::text AS matching, \
                    c.condeferrable, c.condeferred \
             FROM pg_constraint c JOIN pg_class fc ON fc.oid = c.confrelid \
             JOIN pg_namespace fn ON fn.oid = fc.relnamespace \
             WHERE c.conrelid = $1::oid AND c.contype = 'f' ORDER BY 1",
        )
        .bind(oid)
        .fetch_all(&mut self.conn)
        .await
        .map_err(what)?
        .iter()
        .map(|row| -> Result<ForeignKeyDef, sqlx::Error> {
            Ok(ForeignKeyDef {
                name: row.try_get("name")?,
                columns: row.try_get("cols")?,
                references: TableName { schema: Some(row.try_get("ref_schema")?), name: row.try_get("ref_table")? },
                referenced_columns: row.try_get("ref_cols")?,
                actions: fk_actions(
                    &row.try_get::<String, _>("upd")?,
                    &row.try_get::<String, _>("del")?,
                    &row.try_get::<String, _>("matching")?,
                    row.try_get("condeferrable")?,
                    row.try_get("condeferred")?,
                ),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
        let checks: Vec<(String, String)> = sqlx::query_as(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = $1::oid AND contype = 'c' ORDER BY 1",
        )
        .bind(oid)
        .fetch_all(&mut self.conn)
        .await
        .map_err(what)?;
        let (estimate, row_bytes, inherited, inherits): (f32, Option<f64>, bool, bool) = sqlx::query_as(
            "SELECT reltuples, CASE WHEN reltuples > 0 THEN pg_table_size(oid) / reltuples END, \
                    EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid \
                            WHERE i.inhparent = c.oid AND NOT k.relispartition), \
                    NOT relispartition AND EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid) \
             FROM pg_class c WHERE oid = $1::oid",
        )
        .bind(oid)
        .fetch_one(&mut self.conn)
        .await
        .map_err(what)?;
        Ok(Some(TableDef {
            name,
            engine: Engine::Postgres,
            columns,
            generated,
            primary_key,
            indexes,
            foreign_keys,
            checks,
            estimated_rows: estimate.max(0.0) as u64,
            row_bytes: row_bytes.unwrap_or(0.0).max(0.0) as u64,
            key_index: None,
            defer_key: false,
            inherited,
            inherits,
        }))
    }

    async fn count_rows(&mut self, table: &TableDef) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {}", table.relation())))
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("counting rows of {}", table.name), &e))?;
        Ok(n as u64)
    }

    async fn size_estimate(&mut self, table: &TableDef) -> anyhow::Result<Option<(u64, u64)>> {
        let (rows, bytes): (f32, i64) = sqlx::query_as(
            "SELECT c.reltuples, pg_total_relation_size(c.oid) FROM pg_class c WHERE c.oid = $1::regclass",
        )
        .bind(table.quoted())
        .fetch_one(&mut self.conn)
        .await
        .map_err(|e| self.err(format!("estimating the size of {}", table.name), &e))?;
        // -1: never vacuumed or analyzed: counted.
        let rows = if rows >= 0.0 { rows as u64 } else { self.count_rows(table).await? };
        Ok(Some((rows, bytes as u64)))
    }

    async fn read_page(&mut self, table: &TableDef, after: Option<&Key>, limit: usize) -> anyhow::Result<RowPage> {
        let query = Self::page_query(table, after, limit);
        self.copy_out(table, &query).await
    }

    /// The page as PostgreSQL wrote it (COPY text), for a PostgreSQL target
    /// of the same types: nothing decoded but the last row's key.
    async fn read_page_raw(
        &mut self,
        table: &TableDef,
        after: Option<&Key>,
        limit: usize,
    ) -> anyhow::Result<Option<RowPage>> {
        let query = Self::page_query(table, after, limit);
        let data = self.copy_out_bytes(table, &query).await?;
        let mut page = RowPage::default();
        let Some(last) = lines(&data).last() else { return Ok(Some(page)) };
        let fields: Vec<&[u8]> = last.split(|&b| b == b'\t').collect();
        let key = table
            .primary_key
            .iter()
            .map(|&i| copy_unescape(fields.get(i).copied().unwrap_or_default()).map(Option::unwrap_or_default))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| anyhow::anyhow!("reading the key of the last row of a page of {}: {e}", table.name))?;
        page.last_key = Some(Key(key));
        page.raw = Some(crate::keyset::RawRows::of_copy_text(data));
        Ok(Some(page))
    }

    async fn begin_heap_scan(&mut self, table: &TableDef) -> anyhow::Result<Option<u64>> {
        let what = |e: sqlx::Error| Error::driver(format!("starting a heap-order read of {}", table.name), &e);
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut self.conn).await.map_err(what)?;
        // Locked before the snapshot is taken: no VACUUM FULL or CLUSTER
        // can renumber the blocks while they are read.
        sqlx::query(sqlx::AssertSqlSafe(format!("LOCK TABLE {} IN ACCESS SHARE MODE", table.quoted())))
            .execute(&mut self.conn)
            .await
            .map_err(what)?;
        let blocks: i64 =
            sqlx::query_scalar("SELECT pg_relation_size(to_regclass($1)) / current_setting('block_size')::int8")
                .bind(table.quoted())
                .fetch_one(&mut self.conn)
                .await
                .map_err(what)?;
        Ok(Some(blocks.max(0) as u64))
    }

    async fn read_heap(
        &mut self,
        table: &TableDef,
        from: u64,
        to: Option<u64>,
        form: PageForm,
    ) -> anyhow::Result<RowPage> {
        let upper = to.map(|to| format!(" AND ctid < '({to},0)'::tid")).unwrap_or_default();
        let query =
            format!("SELECT {} FROM {} WHERE ctid >= '({from},0)'::tid{upper}", table.column_list(), table.relation());
        // Binary where the target's types are these and every one has a
        // binary form ferry can also decode (to isolate a refused row).
        let binary = form == PageForm::RawSameTypes && self.binary_readable(table).await?;
        let raw = match form {
            PageForm::Decoded => None,
            _ if binary => {
                let data = self.copy_out_format(table, &query, " (FORMAT binary)").await?;
                Some(crate::keyset::RawRows::of_copy_binary(data).ok_or_else(|| {
                    anyhow::anyhow!("reading {}: COPY returned data that is not its binary format", table.name)
                })?)
            }
            _ => Some(crate::keyset::RawRows::of_copy_text(self.copy_out_bytes(table, &query).await?)),
        };
        let mut page = match raw {
            Some(raw) => RowPage { raw: Some(raw), ..RowPage::default() },
            None => self.copy_out(table, &query).await?,
        };
        let to = to.map_or_else(|| "end".to_string(), |to| to.to_string());
        page.last_key = Some(Key(vec![format!("heap blocks {from}..{to}")]));
        Ok(page)
    }

    async fn sequence_positions(&mut self, table: &TableDef) -> anyhow::Result<Vec<(String, i64)>> {
        let columns: Vec<String> = table.sequence_columns().map(|(c, _)| c.name.clone()).collect();
        if columns.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT c.name, {} FROM unnest($2::text[]) AS c(name)",
            sequence_next("$1", "c.name")
        )))
        .bind(table.quoted())
        .bind(&columns)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.err(format!("reading the sequences of {}", table.name), &e))?;
        Ok(rows.into_iter().filter_map(|(column, next)| Some((column, next?))).collect())
    }

    async fn read_keys(&mut self, table: &TableDef, keys: &[Vec<crate::value::Value>]) -> anyhow::Result<RowPage> {
        if keys.is_empty() {
            return Ok(RowPage::default());
        }
        let query = format!(
            "SELECT {} FROM {} WHERE ({}) IN ({})",
            table.column_list(),
            table.relation(),
            table.key_prefix_list(keys[0].len()),
            key_tuples(table, keys)
        );
        // Thousands of keys make the planner guess a scan of the whole
        // table (in parallel) cheaper than as many index probes: 95 ms a
        // page of 5,000 keys on 1M rows, and a validation quadratic in the
        // table's size. The probes take 10–30 ms.
        self.set_seqscan(false).await?;
        let page = self.copy_out(table, &query).await;
        self.set_seqscan(true).await?;
        page
    }
}

#[async_trait]
impl RowSink for PgTables {
    async fn create_table(&mut self, def: &TableDef, names: &crate::schema::NameMap) -> anyhow::Result<()> {
        if let Some(schema) = &def.name.schema {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema))))
                .execute(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("creating schema {schema}"), &e))?;
        }
        let exists = super::exists(&mut self.conn, &def.quoted())
            .await
            .map_err(|e| self.err(format!("looking for table {}", def.name), &e))?;
        if !exists {
            self.create_with_sequences(def, names).await.map_err(|e| {
                let hint = if super::describe_error(&e).contains("does not exist") {
                    " (a type or function the table uses — an enum, a domain, an extension's type, a default's \
                     function — must exist in the target first: create it, e.g. from `pg_dump --schema-only` \
                     of the source)"
                } else {
                    ""
                };
                anyhow::anyhow!("{}{hint}", self.err(format!("creating table {}", def.name), &e))
            })?;
        }
        if let Some(sql) = def.key_index_sql().filter(|_| !def.defer_key) {
            sqlx::query(sqlx::AssertSqlSafe(&*sql))
                .execute(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("building the key index of {}", def.name), &e))?;
        }
        Ok(())
    }

    async fn build_indexes(&mut self, def: &TableDef) -> anyhow::Result<()> {
        if def.defer_key && def.key_index.is_none() {
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_index WHERE indrelid = to_regclass($1) AND indisprimary")
                    .bind(def.quoted())
                    .fetch_optional(&mut self.conn)
                    .await?;
            if exists.is_none() {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER TABLE {} ADD PRIMARY KEY ({})",
                    def.quoted(),
                    def.key_list()
                )))
                .execute(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("building the primary key of {}", def.name), &e))?;
            }
        }
        for sql in def.index_sql() {
            sqlx::query(sqlx::AssertSqlSafe(&*sql))
                .execute(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("building an index of {} ({sql})", def.name), &e))?;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {}", def.quoted())))
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("analyzing {}", def.name), &e))?;
        Ok(())
    }

    async fn add_constraints(&mut self, def: &TableDef, names: &crate::schema::NameMap) -> anyhow::Result<()> {
        for (name, sql) in def.constraint_sql(names) {
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2")
                    .bind(def.quoted())
                    .bind(&name)
                    .fetch_optional(&mut self.conn)
                    .await?;
            if exists.is_none() {
                sqlx::query(sqlx::AssertSqlSafe(&*sql))
                    .execute(&mut self.conn)
                    .await
                    .map_err(|e| self.err(format!("adding constraint {name} to {}", def.name), &e))?;
            }
        }
        Ok(())
    }

    async fn advance_sequences(&mut self, table: &TableDef, positions: &[(String, i64)]) -> anyhow::Result<()> {
        for (column, next) in positions {
            // `setval(s, n, false)`: n is handed out next.
            sqlx::query(
                sqlx::AssertSqlSafe(format!(
                    "SELECT setval(seq, greatest($3, coalesce((SELECT s.last_value + s.increment_by FROM pg_sequences s \
                                     WHERE format('%I.%I', s.schemaname, s.sequencename)::regclass = seq), $3)), false) \
                     FROM (SELECT {} AS seq) q WHERE seq IS NOT NULL",
                    column_sequence("$1", "$2")
                )),
            )
            .bind(table.quoted())
            .bind(column)
            .bind(next)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("moving the sequence of {}.{column} to {next}", table.name), &e))?;
        }
        Ok(())
    }

    async fn broken_references(&mut self, tables: &[TableDef]) -> anyhow::Result<Vec<String>> {
        let names: Vec<String> = tables.iter().map(|t| t.quoted()).collect();
        // Each foreign key: its child and parent, their columns in order.
        // A partition holds its own copy of its parent's (checked on the
        // partition's rows); the copies PostgreSQL adds per partition of a
        // referenced partitioned table are skipped (the key covers them).
        let keys: Vec<(String, String, String, Vec<String>, Vec<String>)> = sqlx::query_as(
            "SELECT c.conname::text, c.conrelid::regclass::text, c.confrelid::regclass::text, \
                    array(SELECT quote_ident(a.attname) FROM unnest(c.conkey) WITH ORDINALITY k(n, i) \
                          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i), \
                    array(SELECT quote_ident(a.attname) FROM unnest(c.confkey) WITH ORDINALITY k(n, i) \
                          JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i) \
             FROM pg_constraint c \
             WHERE c.contype = 'f' \
               AND (c.conparentid = 0 OR c.confrelid = (SELECT pc.confrelid FROM pg_constraint pc WHERE pc.oid = c.conparentid)) \
               AND c.conrelid IN (SELECT to_regclass(x) FROM unnest($1::text[]) x) ORDER BY 2, 1",
        )
        .bind(&names)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.err("listing the target's foreign keys".into(), &e))?;
        let mut broken = Vec::new();
        for (name, child, parent, columns, referenced) in keys {
            // MATCH SIMPLE: a row with a NULL in the key references nothing.
            let present: Vec<String> = columns.iter().map(|c| format!("c.{c} IS NOT NULL")).collect();
            let joined: Vec<String> = columns.iter().zip(&referenced).map(|(c, p)| format!("p.{p} = c.{c}")).collect();
            let shown: Vec<String> = columns.iter().map(|c| format!("c.{c}")).collect();
            let (count, example): (i64, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT count(*), min(ROW({})::text) FROM {child} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {})",
                shown.join(", "),
                present.join(" AND "),
                joined.join(" AND ")
            )))
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("checking foreign key {name} of {child}"), &e))?;
            if count > 0 {
                broken.push(format!(
                    "foreign key {name} of {child}: {count} row(s) reference no row of {parent} (e.g. ({}) = {})",
                    columns.join(", "),
                    example.unwrap_or_default()
                ));
            }
        }
        Ok(broken)
    }

    async fn triggers(&mut self, tables: &[TableDef]) -> anyhow::Result<Vec<(String, String, bool)>> {
        let names: Vec<String> = tables.iter().map(|t| t.quoted()).collect();
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT n.nspname || '.' || c.relname, t.tgname::text, t.tgenabled = 'A' FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT t.tgisinternal AND t.tgenabled IN ('O', 'A') \
               AND t.tgrelid IN (SELECT to_regclass(x) FROM unnest($1::text[]) x) \
               AND (t.tgtype & 28) <> 0 ORDER BY 1, 2",
        )
        .bind(&names)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.err("listing the target's triggers".into(), &e))?;
        Ok(rows)
    }

    async fn may_skip_triggers(&mut self) -> anyhow::Result<bool> {
        // A superuser's, or granted (PostgreSQL 15: GRANT SET ON PARAMETER
        // session_replication_role): tried, never assumed.
        let mut tx = self.conn.begin().await.map_err(|e| Error::driver("probing session_replication_role", &e))?;
        let allowed = sqlx::raw_sql("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.is_ok();
        tx.rollback().await.ok();
        Ok(allowed)
    }

    async fn skip_triggers(&mut self, on: bool) -> anyhow::Result<()> {
        let role = if on { "replica" } else { "origin" };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET session_replication_role = {role}")))
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("setting session_replication_role = {role}"), &e))?;
        Ok(())
    }

    async fn restart_table(&mut self, run_id: &str, table: &str, targets: &[&TableDef]) -> anyhow::Result<()> {
        let what = |e: sqlx::Error| Error::driver(format!("starting the copy of {table} over"), &e);
        let mut tx = self.conn.begin().await.map_err(what)?;
        if !targets.is_empty() {
            let list: Vec<String> = targets.iter().map(|t| t.relation()).collect();
            sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {}", list.join(", "))))
                .execute(&mut *tx)
                .await
                .map_err(what)?;
        }
        for sql in [
            "DELETE FROM ferry.dead_letters WHERE run_id = $1 AND source_table = $2",
            "DELETE FROM ferry.lineage WHERE run_id = $1 AND table_name = $2",
        ] {
            sqlx::query(sql).bind(run_id).bind(table).execute(&mut *tx).await.map_err(what)?;
        }
        sqlx::query(
            "UPDATE ferry.table_progress SET last_key = NULL, phase = 'copying', batches = 0, extracted = 0, \
             transformed = 0, loaded = 0, skipped = 0, filtered = 0, dead_lettered = 0, updated_at = now() \
             WHERE run_id = $1 AND table_name = $2",
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
        let url = self.url.clone();
        let mut wires = Vec::with_capacity(batch.writes.len());
        for write in &batch.writes {
            wires.push(match write.raw {
                Some(_) => None,
                None => self.wires(&write.target).await?,
            });
        }
        let mut journals = Vec::with_capacity(batch.writes.len());
        for write in &batch.writes {
            let mode = super::undo::mode(&mut self.conn, &mut self.undo, &batch.run_id, &write.target).await?;
            journals.push(mode.map(|(id, mode)| Journal { run_id: &batch.run_id, id, mode }));
        }
        let buf = &mut self.buf;
        let mut tx = self.conn.begin().await?;
        let stored: Option<Option<String>> = sqlx::query_scalar(
            "SELECT last_key FROM ferry.table_progress WHERE run_id = $1 AND table_name = $2 FOR UPDATE",
        )
        .bind(&batch.run_id)
        .bind(&batch.table)
        .fetch_optional(&mut *tx)
        .await?;
        let expected = batch.previous_key.as_ref().map(Key::encode);
        if stored != Some(expected) {
            return Err(FencedError { run_id: batch.run_id.clone() }.into());
        }
        let replayed = if batch.replayed.is_empty() {
            0
        } else {
            let keys: Vec<String> = batch.replayed.iter().map(Key::label).collect();
            let gone = sqlx::query(
                "DELETE FROM ferry.dead_letters WHERE run_id = $1 AND source_table = $2 AND source_key = ANY($3)",
            )
            .bind(&batch.run_id)
            .bind(&batch.table)
            .bind(&keys)
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
                for sql in prefix_deletes(&write.target, keys) {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| load_error(e, batch, &write.target, &url))?;
                }
            }
        }
        let mut written = Applied::default();
        let mut refused: Vec<RowDeadLetter> = Vec::new();
        for ((write, wires), &journal) in batch.writes.iter().zip(&wires).zip(&journals) {
            let target = &write.target;
            // Undecoded rows go straight in; only if the target refuses some
            // are they decoded, to isolate those.
            let decoded;
            let (rows, keys) = match &write.raw {
                None => (&write.rows, &write.keys),
                Some(raw) => {
                    sqlx::query("SAVEPOINT ferry_raw").execute(&mut *tx).await?;
                    let (data, rows) = (raw.data.clone(), raw.rows as u64);
                    match Self::apply_data(&mut tx, data, rows, target, policy, raw.binary, journal).await {
                        Ok(applied) => {
                            sqlx::query("RELEASE SAVEPOINT ferry_raw").execute(&mut *tx).await?;
                            written.loaded += applied.loaded;
                            written.skipped += applied.skipped;
                            continue;
                        }
                        Err(e) if refuses_rows(&e, policy) => {
                            sqlx::query("ROLLBACK TO SAVEPOINT ferry_raw").execute(&mut *tx).await?;
                            sqlx::query("RELEASE SAVEPOINT ferry_raw").execute(&mut *tx).await?;
                            let page = match raw.binary {
                                true => binary::decode_page(target, &raw.data).ok_or_else(|| {
                                    anyhow::anyhow!("decoding a refused binary page of {}", target.name)
                                })?,
                                false => decode_lines(target, &raw.data),
                            };
                            let keys: Vec<Key> = page.rows.iter().map(|r| Key::of(target, r)).collect();
                            refused.extend(page.unreadable);
                            decoded = (page.rows, keys);
                            (&decoded.0, &decoded.1)
                        }
                        Err(e) => return Err(load_error(e, batch, target, &url)),
                    }
                }
            };
            let (applied, refused_rows) =
                match Self::apply_isolating(&mut tx, buf, target, rows, policy, wires.as_deref(), journal).await {
                    Ok(a) => a,
                    Err(e) => return Err(load_error(e, batch, target, &url)),
                };
            written.loaded += applied.loaded;
            written.skipped += applied.skipped;
            refused.extend(refused_rows.into_iter().map(|(index, message)| RowDeadLetter {
                table: batch.table.clone(),
                key: keys[index].clone(),
                row: crate::keyset::row_json(target, &rows[index]),
                kind: DeadLetterKind::Load,
                reason: format!(
                    "the target refused row {} of {}: {message}",
                    Key::of(target, &rows[index]).label(),
                    target.name
                ),
            }));
        }
        let refused_keys: std::collections::HashSet<&Key> = refused.iter().map(|d| &d.key).collect();
        // A source row is loaded whole or not at all: when the target
        // refused one of its rows, the rows it wrote into the other tables
        // are taken back (all of them were inserted by this transaction
        // under `on_conflict = error`).
        if batch.writes.len() > 1 && !refused_keys.is_empty() && policy == OnConflict::Error {
            for write in &batch.writes {
                let target = &write.target;
                let keys: Vec<Vec<crate::value::Value>> = write
                    .rows
                    .iter()
                    .zip(&write.keys)
                    .filter(|(_, k)| refused_keys.contains(k))
                    .map(|(r, _)| target.primary_key.iter().map(|&i| r[i].clone()).collect())
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                let sql = format!(
                    "DELETE FROM {} WHERE ({}) IN ({})",
                    target.relation(),
                    target.key_list(),
                    key_tuples(target, &keys)
                );
                let gone = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| load_error(e, batch, target, &url))?
                    .rows_affected();
                written.loaded = written.loaded.saturating_sub(gone);
            }
        }
        let refused_sources = refused_keys.len() as u64;
        let (loaded, skipped) = batch.accounted(written, refused_sources);
        let (loaded_delta, filtered_delta) =
            crate::sink::Replacing::deltas(batch.replacing.as_ref(), loaded, batch.filtered);
        let dead: Vec<&RowDeadLetter> = batch.dead.iter().chain(&refused).collect();
        if !dead.is_empty() {
            let keys: Vec<String> = dead.iter().map(|d| d.key.label()).collect();
            let rows: Vec<String> = dead.iter().map(|d| d.row.to_string().replace("\\u0000", "\\\\u0000")).collect();
            let kinds: Vec<&str> = dead.iter().map(|d| d.kind.as_str()).collect();
            let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
            sqlx::query(
                "INSERT INTO ferry.dead_letters (run_id, pipeline, source_table, source_key, source_row, kind, reason, plugin_sha256) \
                 SELECT $1, r.pipeline, $2, k, j::jsonb, kd, rs, $7 FROM ferry.runs r, \
                        unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS d(k, j, kd, rs) \
                 WHERE r.run_id = $1 ON CONFLICT DO NOTHING",
            )
            .bind(&batch.run_id)
            .bind(&batch.table)
            .bind(&keys)
            .bind(&rows)
            .bind(&kinds)
            .bind(&reasons)
            .bind(&batch.plugin_sha256)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::driver(format!("recording dead letters of {}", batch.table), &e))?;
        }
        let dead_count = dead.len() as i64 - replayed;
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
                "INSERT INTO ferry.lineage (run_id, table_name, after_key, last_key, keys, plugin_sha256, plugin_path, rows) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
            "UPDATE ferry.table_progress SET last_key = $3, batches = batches + 1, extracted = extracted + $4, \
             transformed = transformed + $5, loaded = loaded + $6, skipped = skipped + $7, filtered = filtered + $8, \
             dead_lettered = dead_lettered + $9, updated_at = now() WHERE run_id = $1 AND table_name = $2",
        )
        .bind(&batch.run_id)
        .bind(&batch.table)
        .bind(batch.last_key.encode())
        .bind(batch.extracted as i64)
        .bind(transformed)
        .bind(loaded_delta)
        .bind(skipped as i64)
        .bind(filtered_delta)
        .bind(dead_count)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE ferry.runs SET batches = batches + 1, extracted = extracted + $2, transformed = transformed + $3, \
             loaded = loaded + $4, skipped = skipped + $5, dead_lettered = dead_lettered + $6, updated_at = now() \
             WHERE run_id = $1",
        )
        .bind(&batch.run_id)
        .bind(batch.extracted as i64)
        .bind(transformed)
        .bind(loaded_delta)
        .bind(skipped as i64)
        .bind(dead_count)
        .execute(&mut *tx)
        .await?;
        tx.commit()
            .await
            .map_err(|e| Error::driver(format!("committing batch {} of {}", batch.seq, batch.table), &e))?;
        Ok(written)
    }
}
