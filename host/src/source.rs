//! The source role: reading tables of any shape in key order.

use async_trait::async_trait;

/// Reads tables of any shape (see [`crate::schema`]), page by page.
///
/// Contract: `read_page(t, after, n)` returns the first `n` rows of `t`
/// whose key (`t.primary_key`, compared as a row: `(a, b) > (x, y)`) is
/// strictly greater than `after` (all rows when `None`), in ascending key
/// order, with the page's highest key — keyset pagination on the whole key,
/// never `OFFSET`. A value the engine holds but ferry cannot represent makes
/// its row an `extract` dead letter in the page, not an error. The page's
/// [`crate::keyset::Key`]s are in this source's own text form: only this
/// source reads them back. `read_keys` returns the rows whose key columns
/// hold these values (absent keys are absent), in no particular order.
#[async_trait]
pub trait RowSource: Send {
    /// The user tables this role can see (no system or ferry tables).
    async fn list_tables(&mut self) -> anyhow::Result<Vec<crate::db::TableName>>;
    /// The leaf partitions of a partitioned table (all levels), which hold
    /// its rows; empty for any other table. A copy into a target that keeps
    /// the partitioning copies each leaf as a table of its own.
    async fn partitions(&mut self, _table: &crate::db::TableName) -> anyhow::Result<Vec<crate::db::TableName>> {
        Ok(Vec::new())
    }
    /// A table's definition, or `None` if there is no such table.
    async fn describe(&mut self, table: &crate::db::TableName) -> anyhow::Result<Option<crate::schema::TableDef>>;
    async fn count_rows(&mut self, table: &crate::schema::TableDef) -> anyhow::Result<u64>;
    /// The engine's own estimate of a table's rows and its size on disk in
    /// bytes (table, indexes, TOAST), without reading it (rows counted when
    /// it has no statistics yet); `None` when the engine keeps none.
    async fn size_estimate(&mut self, _table: &crate::schema::TableDef) -> anyhow::Result<Option<(u64, u64)>> {
        Ok(None)
    }
    async fn read_page(
        &mut self,
        table: &crate::schema::TableDef,
        after: Option<&crate::keyset::Key>,
        limit: usize,
    ) -> anyhow::Result<crate::keyset::RowPage>;
    /// The rows with these keys (values in key order, all of one length; a
    /// key shorter than the table's is a prefix and matches every row that
    /// starts with it).
    async fn read_keys(
        &mut self,
        table: &crate::schema::TableDef,
        keys: &[Vec<crate::value::Value>],
    ) -> anyhow::Result<crate::keyset::RowPage>;
    /// [`RowSource::read_page`] undecoded, in the engine's own bulk format
    /// (`RowPage::raw`), for a sink of the same engine and types; `None`
    /// when the engine has no such format.
    async fn read_page_raw(
        &mut self,
        _table: &crate::schema::TableDef,
        _after: Option<&crate::keyset::Key>,
        _limit: usize,
    ) -> anyhow::Result<Option<crate::keyset::RowPage>> {
        Ok(None)
    }
    /// Starts reading `table` in storage order (PostgreSQL: heap blocks,
    /// no index; SQLite: rowids), in one snapshot held until the
    /// connection is dropped, with the table locked against rewrites;
    /// returns the size of its position space (blocks, or the highest
    /// rowid + 1), or `None` when the engine has no such order.
    ///
    /// Contract: the pages [`RowSource::read_heap`] returns for
    /// consecutive position ranges covering `0..` (the last one open-ended)
    /// hold every row of the snapshot exactly once. A position means
    /// nothing in another snapshot, so a copy in storage order cannot
    /// resume mid-table: an interrupted one starts its table over.
    async fn begin_heap_scan(&mut self, _table: &crate::schema::TableDef) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }
    /// The rows at positions `from..to` (`None`: to the end) of the scan
    /// [`RowSource::begin_heap_scan`] began, in `form`, with `last_key` the
    /// page's position (not a key of the table).
    async fn read_heap(
        &mut self,
        table: &crate::schema::TableDef,
        _from: u64,
        _to: Option<u64>,
        _form: PageForm,
    ) -> anyhow::Result<crate::keyset::RowPage> {
        anyhow::bail!("{}: this source has no storage order", table.name)
    }
    /// Where the sequence of each column of `table` fed by one (identity
    /// or `serial`) stands now: the value it hands out next. Sequences are
    /// outside transactions and outside logical replication, so a copy
    /// reads them after its rows (see [`RowSink::advance_sequences`]).
    ///
    /// [`RowSink::advance_sequences`]: crate::sink::RowSink::advance_sequences
    async fn sequence_positions(&mut self, _table: &crate::schema::TableDef) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(Vec::new())
    }
    /// Waits until the source transaction `xid` (of a change stream) is
    /// visible to this connection's next reads: a change arrives a moment
    /// before its transaction is visible to other sessions.
    async fn wait_visible(&mut self, _xid: u32) -> anyhow::Result<()> {
        Ok(())
    }
    /// Reads every following page in the exported snapshot `name`
    /// (PostgreSQL's `SET TRANSACTION SNAPSHOT`), until the connection is
    /// dropped.
    async fn use_snapshot(&mut self, name: &str) -> anyhow::Result<()> {
        Err(crate::error::Error::contract(format!("snapshot {name}: this source has no exported snapshots")))
    }
}

/// How [`RowSource::read_heap`] hands a page over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageForm {
    /// Decoded into rows.
    Decoded,
    /// Undecoded (`RowPage::raw`): the engine's own bulk-load text, for a
    /// target of the same engine.
    Raw,
    /// Undecoded, into a table made from this one's definition (the same
    /// types): the engine may use its binary form where every column's type
    /// allows (PostgreSQL: COPY binary — neither side formats or parses
    /// text).
    RawSameTypes,
}
