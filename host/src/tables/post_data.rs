//! Phase four of a migration: after the data. Sequences moved to where the
//! source's stand, then the keys, indexes, checks and foreign keys of the
//! tables ferry made.

use crate::db::Engine;
use crate::engines::{self, RowTarget};
use crate::schema::TableDef;
use crate::settings::Settings;

use super::plan::{Plan, PlannedTable};

/// Moves the target's sequences (identity and `serial` columns of tables
/// copied as they are) to where the source's stand now, so that rows
/// written into the target later get keys past the copied ones. Sequences
/// are not transactional and logical replication does not carry them, so
/// this runs after the data, and again whenever a change stream stops.
pub async fn advance_sequences(settings: &Settings, plan: &Plan, target: &mut dyn RowTarget) -> anyhow::Result<()> {
    let tables: Vec<&PlannedTable> =
        plan.tables.iter().filter(|t| t.plugin.is_none() && t.source.sequence_columns().next().is_some()).collect();
    if tables.is_empty() {
        return Ok(());
    }
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    for table in tables {
        let positions = source.sequence_positions(&table.source).await?;
        for output in &table.outputs {
            target.advance_sequences(&output.def, &positions).await?;
        }
    }
    Ok(())
}

/// `def` as ferry creates it: a copy into PostgreSQL gets its key after
/// the data (see [`TableDef::defer_key`]).
pub(super) fn built_later(table: &PlannedTable, def: &TableDef, engine: Engine) -> TableDef {
    let mut def = def.clone();
    def.defer_key = table.plugin.is_none() && engine == Engine::Postgres && !def.primary_key.is_empty();
    def
}
