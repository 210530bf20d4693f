//! The schema-copy role: an engine that carries the schema around a
//! pipeline's tables into another database of its kind, in pgcopydb's
//! phases — what must exist before the data, what is built after it.
//!
//! Contract: [`SchemaCopy::plan`] says everything before anything is
//! written (so `ferry check` and `ferry migrate` read the same plan);
//! [`SchemaCopy::create_before_data`] is all or nothing; the builds after
//! the data skip what exists, so a run interrupted anywhere resumes; no
//! trigger exists on a table the copy created while its rows load.

use async_trait::async_trait;

use crate::db::TableName;

/// What a schema copy will do, decided from both catalogs.
#[derive(Debug, Clone, Default)]
pub struct SchemaPlan {
    /// The pipeline's tables the copy creates (the target lacks them).
    pub creates: Vec<TableName>,
    /// Objects created before the data, in order.
    pub before: Vec<SchemaObject>,
    /// Objects built after it (keys, indexes, triggers…), in order.
    pub after: Vec<SchemaObject>,
    /// Objects the target holds already: left as they are.
    pub present: usize,
    /// Objects of the pipeline's tables that cannot come along, and why.
    pub left_out: Vec<String>,
    /// What would make the copy fail, each with its fix: reported by
    /// `ferry check`, refused by `ferry migrate` before it writes.
    pub problems: Vec<String>,
}

/// One object of a schema copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaObject {
    /// `TABLE`, `TYPE`, `FK CONSTRAINT`, `COMMENT`…
    pub kind: String,
    /// Schema-qualified where it has a schema (`public.year`).
    pub name: String,
}

impl SchemaPlan {
    /// `3 types, 1 domain, …`: how many objects of each kind, in order.
    pub fn summary(objects: &[SchemaObject]) -> String {
        let mut kinds: Vec<(&str, usize)> = Vec::new();
        for object in objects {
            match kinds.iter_mut().find(|(k, _)| *k == object.kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((&object.kind, 1)),
            }
        }
        match kinds.is_empty() {
            true => "nothing".into(),
            false => kinds.iter().map(|(k, n)| format!("{n} {}", k.to_lowercase())).collect::<Vec<_>>().join(", "),
        }
    }
}

/// Carries a schema between two databases of one engine.
#[async_trait]
pub trait SchemaCopy: Send + Sync {
    fn plan(&self) -> &SchemaPlan;
    /// Creates what the data needs (extensions, schemas, types, sequences,
    /// functions, tables with their partitions, defaults, views), in one
    /// target transaction, recording under `run_id` what it created so
    /// that `ferry rollback` of the run drops it again.
    async fn create_before_data(&self, run_id: &str) -> anyhow::Result<()>;
    /// Builds the keys, indexes and checks of a table the run made, once
    /// its rows are in (not its triggers or foreign keys, which wait for
    /// every table).
    async fn build_table(&self, table: &TableName) -> anyhow::Result<()>;
    /// Once every table is loaded: what belongs to the tables the run made
    /// (`made`: foreign keys, triggers, partition indexes…) and to no table
    /// (comments…); sequences moved to the source's values; materialized
    /// views refreshed. A table the target held before keeps what it has.
    async fn build_after_data(&self, made: &[TableName]) -> anyhow::Result<()>;
}
