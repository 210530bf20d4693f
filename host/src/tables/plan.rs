//! Phase one of a migration: the plan. The selection resolved against both
//! catalogs — tables, keys, target names, plugin outputs checked against
//! existing target tables, load order — and every problem found reported
//! at once with its fix. `ferry check` runs this same code, so check and
//! migrate cannot disagree.

use std::collections::HashMap;

use crate::config::{Keyless, OnConflict};
use crate::control::TableProgress;
use crate::db::{Engine, TableName};
use crate::engines::RowTarget;
use crate::plugin::TablePlugin;
use crate::schema::{NameMap, TableDef, dependency_order};
use crate::settings::{Settings, TableSelection};
use crate::source::RowSource;

use super::IDENTITY;

/// A table the pipeline writes.
#[derive(Debug, Clone)]
pub struct Output {
    /// The target table as ferry writes it.
    pub def: TableDef,
    /// It does not exist: ferry creates it.
    pub create: bool,
}

/// One source table of the plan.
#[derive(Debug, Clone)]
pub struct PlannedTable {
    pub source: TableDef,
    /// Where its rows go: for a copy, one table with the source's columns;
    /// for a plugin, the tables it declared (in its own column order).
    pub outputs: Vec<Output>,
    /// `None`: copied as it is, no WASM on the path.
    pub plugin: Option<TablePlugin>,
    pub on_conflict: OnConflict,
    /// Its target table is created by the schema copy (pg_dump's
    /// definition, built after the data by it too), not from `source`.
    pub schema_made: bool,
}

impl PlannedTable {
    /// The first (for a copy, the only) target table.
    pub fn target(&self) -> &TableDef {
        &self.outputs[0].def
    }

    pub fn target_names(&self) -> String {
        self.outputs.iter().map(|o| o.def.name.to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Whether ferry creates one of its target tables in this attempt.
    pub fn creates(&self) -> bool {
        self.outputs.iter().any(|o| o.create)
    }

    /// Whether ferry made its target tables in this run (this attempt or an
    /// earlier one, as recorded).
    pub(super) fn made_by_ferry(&self, progress: &HashMap<String, TableProgress>) -> bool {
        progress.get(&self.source.name.to_string()).map_or(self.creates(), |p| p.created)
    }

    /// No key (the plan let it through: `keyless = "ctid"`): copied in
    /// storage order, validated as a multiset of rows.
    pub fn keyless(&self) -> bool {
        self.source.primary_key.is_empty()
    }

    /// What produced the rows: the plugin's SHA-256, or [`IDENTITY`].
    pub fn producer(&self) -> &str {
        self.plugin.as_ref().map_or(IDENTITY, |p| p.sha256())
    }
}

/// The schema copy of a plan (shared by the copy workers).
#[derive(Clone)]
pub struct Schema(pub std::sync::Arc<dyn crate::schema_copy::SchemaCopy>);

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Schema").field(self.0.plan()).finish()
    }
}

/// Whether the pipeline's schema comes along (PostgreSQL to PostgreSQL,
/// unless `[schema] copy = "none"`).
pub fn copies_schema(settings: &Settings) -> bool {
    settings.schema.copy != crate::config::SchemaCopy::None
        && settings.source.url.engine() == Engine::Postgres
        && settings.target.url.engine() == Engine::Postgres
}

/// What a many-table pipeline will do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// In load order (parents before children).
    pub tables: Vec<PlannedTable>,
    pub names: NameMap,
    /// The schema around the tables, when it comes along (PostgreSQL to
    /// PostgreSQL): set by [`super::pre_data::plan`].
    pub schema: Option<Schema>,
    /// Rows copied as they are into tables the target held load with its
    /// triggers and foreign-key checks off (the target role may:
    /// [`crate::sink::RowSink::skip_triggers`]), in any order; set by
    /// [`super::pre_data::plan`].
    pub skip_triggers: bool,
    /// A change stream's tables that `include` brings in but the stream
    /// has not met yet: made past its stored position (it makes them when
    /// it reads the statement that made them), or new to the pipeline.
    pub later: Vec<TableName>,
    /// A change stream's tables the source dropped past its stored
    /// position: planned from their stored version and target table until
    /// the stream reads the drop.
    pub dropped: Vec<TableName>,
}

impl Plan {
    /// Whether the rows of `table` load with the target's triggers off.
    pub fn skips_triggers(&self, table: &PlannedTable) -> bool {
        self.skip_triggers && table.plugin.is_none() && !table.creates()
    }

    /// For each table (by index), the tables whose rows must be in before
    /// its own: where the target's foreign keys are in force during the
    /// load — a table the target held, or one ferry creates on an engine
    /// that takes them only in `CREATE TABLE` (SQLite) — a table waits for
    /// the tables it references. (PostgreSQL tables ferry creates get them
    /// after the data.)
    pub fn load_after(&self) -> Vec<Vec<usize>> {
        let position = |name: &TableName| self.tables.iter().position(|t| &t.source.name == name);
        let keys_later = |table: &PlannedTable| table.creates() && table.target().engine == Engine::Postgres;
        self.tables
            .iter()
            .enumerate()
            .map(|(i, table)| match keys_later(table) || self.skips_triggers(table) {
                true => Vec::new(),
                false => table
                    .source
                    .foreign_keys
                    .iter()
                    .filter_map(|fk| position(&fk.references))
                    .filter(|&p| p != i)
                    .collect(),
            })
            .collect()
    }

    /// Tables whose waits ([`Plan::load_after`]) form a cycle, which no
    /// order can load: `a → b → a`.
    pub fn wait_cycle(&self) -> Option<String> {
        let after = self.load_after();
        // Depth-first: 0 unseen, 1 on the path, 2 done.
        fn visit(i: usize, after: &[Vec<usize>], state: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
            state[i] = 1;
            path.push(i);
            for &p in &after[i] {
                if state[p] == 1 {
                    let from = path.iter().position(|&x| x == p).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(p);
                    return Some(cycle);
                }
                if state[p] == 0
                    && let Some(cycle) = visit(p, after, state, path)
                {
                    return Some(cycle);
                }
            }
            path.pop();
            state[i] = 2;
            None
        }
        let mut state = vec![0u8; after.len()];
        for i in 0..after.len() {
            if state[i] == 0
                && let Some(cycle) = visit(i, &after, &mut state, &mut Vec::new())
            {
                let names: Vec<String> = cycle.iter().map(|&t| self.tables[t].source.name.to_string()).collect();
                return Some(names.join(" → "));
            }
        }
        None
    }
}

/// Resolves the selection against both catalogs. Every problem found is
/// reported at once (a table without a key, a missing column…), with its fix.
pub async fn plan(
    settings: &Settings,
    selection: &TableSelection,
    source: &mut dyn RowSource,
    target: &mut dyn RowTarget,
) -> anyhow::Result<Plan> {
    plan_as_of(settings, selection, source, target, &[]).await
}

/// [`plan`] with the columns a change stream knows of some tables (the
/// version its stored position has, `(source table, version)`) in place
/// of the columns the source's catalog has now: a stream resumes where its
/// tables had those columns, before the schema changes it has yet to read.
pub async fn plan_as_of(
    settings: &Settings,
    selection: &TableSelection,
    source: &mut dyn RowSource,
    target: &mut dyn RowTarget,
    versions: &[(String, crate::schema_edit::TableVersion)],
) -> anyhow::Result<Plan> {
    let target_engine = settings.target.url.engine();
    let mut names: Vec<TableName> = Vec::new();
    for spec in &selection.tables {
        names.push(spec.source.clone());
    }
    if !selection.include.is_empty() {
        for name in source.list_tables().await? {
            if TableSelection::matches(&selection.include, &name)
                && !TableSelection::matches(&selection.exclude, &name)
                && selection.spec(&name).is_none()
            {
                names.push(name);
            }
        }
    }
    // A partitioned table whose schema comes along is copied leaf by leaf
    // into the same partitions (each leaf is a table with its own key).
    if copies_schema(settings) {
        let mut leaves = Vec::with_capacity(names.len());
        for name in names {
            let spec = selection.spec(&name);
            let as_is = spec.is_none_or(|s| s.plugin.is_none() && s.target.is_none());
            let parts = if as_is { source.partitions(&name).await? } else { Vec::new() };
            match parts.is_empty() {
                true => leaves.push(name),
                false => {
                    for part in parts {
                        if !leaves.contains(&part) {
                            leaves.push(part);
                        }
                    }
                }
            }
        }
        names = leaves;
    }
    // A change stream knows its tables by their stored versions (an empty
    // one: dropped): what it does not know yet waits for the statement
    // that made it, and what the source dropped since stays until the
    // stream reads the drop.
    let (mut later, mut dropped, mut stay) = (Vec::new(), Vec::new(), Vec::new());
    let known = |name: &TableName| versions.iter().any(|(t, v)| *t == name.to_string() && !v.columns.is_empty());
    if !versions.is_empty() {
        names.retain(|name| {
            let keep = known(name) || selection.spec(name).is_some();
            if !keep {
                later.push(name.clone());
            }
            keep
        });
        for (table, version) in versions.iter().filter(|(_, v)| !v.columns.is_empty()) {
            let Ok(name) = TableName::parse(table) else { continue };
            if names.contains(&name) || source.describe(&name).await?.is_some() {
                continue;
            }
            let target_name = target_name_of(&name, target_engine);
            let Some(there) = target.describe(&target_name).await? else { continue };
            let engine = settings.source.url.engine();
            let Some(def) = version.apply_to(&TableDef { name: name.clone(), engine, ..there }) else { continue };
            let output = Output { def: def.for_target(target_name, target_engine), create: false };
            dropped.push(name);
            stay.push(PlannedTable {
                source: def,
                outputs: vec![output],
                plugin: None,
                on_conflict: settings.on_conflict,
                schema_made: false,
            });
        }
    }
    let mut problems = Vec::new();
    let mut kind = crate::error::ErrorKind::Contract;
    let mut tables = stay;
    let mut seen_targets: HashMap<TableName, TableName> = HashMap::new();
    for name in names {
        let spec = selection.spec(&name);
        let Some(mut def) = source.describe(&name).await? else {
            problems
                .push(format!("source table {name} does not exist in {}; check [[tables]] name", settings.source.url));
            continue;
        };
        if let Some((_, version)) = versions.iter().find(|(table, _)| *table == def.name.to_string()) {
            match version.apply_to(&def) {
                Some(then) => def = then,
                None => problems.push(format!(
                    "the change stream knows table {} with columns ({}), whose key is no longer in the source's \
                     catalog; tear the stream down (`ferry sync --teardown`) and start it again",
                    def.name,
                    version.names().join(", ")
                )),
            }
        }
        if let Some(key) = spec.and_then(|s| s.key.as_ref()) {
            match chosen_key(&def, key) {
                Ok((indexes, index)) => {
                    def.primary_key = indexes;
                    def.key_index = index;
                }
                Err(e) => {
                    problems.push(format!("table {}: {e}", def.name));
                    continue;
                }
            }
        } else if def.primary_key.is_empty() {
            // A child of inheritance whose schema comes along: its parent's
            // key does not make its own rows unique, and the target table
            // is new, so it is copied whole in storage order.
            let inherited_copy = def.inherits
                && copies_schema(settings)
                && spec.is_none_or(|s| s.plugin.is_none() && s.target.is_none());
            let keyless = match spec.map_or(selection.keyless, |s| s.keyless) {
                Keyless::Refuse if inherited_copy => Keyless::Ctid,
                keyless => keyless,
            };
            if keyless == Keyless::Refuse {
                problems.push(format!(
                    "table {} has no primary key: ferry pages, checkpoints and validates by key. Add a primary key, \
                     or name a unique NOT NULL key: [[tables]] name = \"{}\" key = [\"column\", …], or copy it in \
                     storage order into a table holding nothing else: keyless = \"ctid\" (in [[tables]] or [source])",
                    def.name, def.name
                ));
                continue;
            }
            if spec.is_some_and(|s| s.plugin.is_some()) {
                problems.push(format!(
                    "table {} has no primary key and a plugin: a transformed table needs a key (its dead letters \
                     and target keys are named by it); add a primary key or name one: key = [\"column\", …]",
                    def.name
                ));
                continue;
            }
        }
        let target_name = match spec.and_then(|s| s.target.clone()) {
            Some(t) => t,
            None => target_name_of(&def.name, target_engine),
        };
        let on_conflict = spec.and_then(|s| s.on_conflict).unwrap_or(settings.on_conflict);
        let plugin = match spec.and_then(|s| s.plugin.clone()) {
            None => None,
            Some(ps) => {
                let loaded = tokio::task::spawn_blocking(move || TablePlugin::load(&ps.path, &ps.options)).await?;
                match loaded {
                    Ok(p) => Some(p),
                    Err(e) => {
                        // A plugin that cannot run at all says so in the exit code.
                        let e = anyhow::Error::from(e);
                        if crate::error::ErrorKind::of(&e) == crate::error::ErrorKind::Plugin {
                            kind = crate::error::ErrorKind::Plugin;
                        }
                        problems.push(format!("table {}: {e}", def.name));
                        continue;
                    }
                }
            }
        };
        // What the table becomes: itself, or the plugin's declared tables.
        let wanted: Vec<TableDef> = match &plugin {
            None => vec![def.for_target(target_name.clone(), target_engine)],
            Some(plugin) => {
                let (p, source_def) = (plugin.clone(), def.clone());
                let declared = tokio::task::spawn_blocking(move || p.instantiate()?.describe(&source_def)).await?;
                match declared {
                    Err(e) => {
                        problems.push(format!("table {}: {e}", def.name));
                        continue;
                    }
                    Ok(declared) => declared
                        .into_iter()
                        .map(|out| {
                            let name = match (&out.name.schema, target_engine) {
                                (_, Engine::Sqlite) => TableName { schema: None, name: out.name.name.clone() },
                                (Some(_), _) => out.name.clone(),
                                (None, _) => {
                                    TableName { schema: target_name.schema.clone(), name: out.name.name.clone() }
                                }
                            };
                            let mut t = out.for_target(name.clone(), target_engine);
                            t.name = name;
                            t
                        })
                        .collect(),
                }
            }
        };
        let mut outputs = Vec::new();
        for wanted in wanted {
            let target_name = wanted.name.clone();
            if let Some(other) = seen_targets.insert(target_name.clone(), def.name.clone()) {
                // Several source tables may merge into one plugin-declared
                // table; a copy needs a table of its own.
                let merging = plugin.is_some()
                    && tables.iter().any(|t: &PlannedTable| t.plugin.is_some() && t.source.name == other);
                if !merging {
                    problems.push(format!(
                        "tables {other} and {} would both be copied into {target_name}; give one a `target` in [[tables]]",
                        def.name
                    ));
                    continue;
                }
            }
            let existing = target.describe(&target_name).await?;
            let already = tables.iter().flat_map(|t| &t.outputs).any(|o| o.def.name == target_name && o.create);
            if let Some(existing) = &existing {
                // A plugin declares its output's types: a target column
                // that cannot hold them would refuse every row.
                let mut mismatches: Vec<String> = Vec::new();
                for c in &wanted.columns {
                    match existing.column_index(&c.name).map(|i| &existing.columns[i]) {
                        None => mismatches.push(format!("column `{}` is missing", c.name)),
                        Some(there)
                            if plugin.is_some()
                                && target_engine == Engine::Postgres
                                && !holds(&there.kind, &c.kind) =>
                        {
                            mismatches.push(format!(
                                "column `{}` has type {} but the plugin writes {:?} values",
                                c.name, there.sql_type, c.kind
                            ))
                        }
                        Some(_) => {}
                    }
                }
                if !mismatches.is_empty() {
                    let what = if plugin.is_some() { "the plugin's output for" } else { "the copy of" };
                    problems.push(format!(
                        "target table {target_name} does not match {what} {}: {}; fix the target table, or drop it \
                         and ferry creates it",
                        def.name,
                        mismatches.join("; ")
                    ));
                    continue;
                }
            }
            outputs.push(Output { def: wanted, create: existing.is_none() && !already });
        }
        if outputs.is_empty() {
            continue;
        }
        tables.push(PlannedTable { source: def, outputs, plugin, on_conflict, schema_made: false });
    }
    if !problems.is_empty() {
        return Err(crate::error::Error::raise(
            kind,
            format!("the pipeline's tables cannot be copied:\n  - {}", problems.join("\n  - ")),
        ));
    }
    if tables.is_empty() {
        anyhow::bail!(crate::config::ConfigError::Invalid {
            path: "pipeline".into(),
            message: format!("no source table matches source.include in {}; check the patterns", settings.source.url),
        });
    }
    let map = NameMap(
        tables
            .iter()
            .filter(|t| t.plugin.is_none())
            .map(|t| (t.source.name.clone(), t.target().name.clone()))
            .collect(),
    );
    let defs: Vec<TableDef> = tables.iter().map(|t| t.source.clone()).collect();
    let order = dependency_order(&defs);
    let tables = order.into_iter().map(|i| tables[i].clone()).collect();
    Ok(Plan { tables, names: map, schema: None, skip_triggers: false, later, dropped })
}

/// Whether a PostgreSQL column of kind `column` holds values of kind
/// `value` as they are: numbers in number columns, times in time columns,
/// anything in a text (or unknown) column; never text into a number.
fn holds(column: &crate::value::Kind, value: &crate::value::Kind) -> bool {
    use crate::value::Kind::*;
    let number = |k: &crate::value::Kind| matches!(k, Int16 | Int32 | Int64 | Float32 | Float64 | Numeric);
    let instant = |k: &crate::value::Kind| matches!(k, Date | Timestamp | TimestampTz);
    match (column, value) {
        (Text | Other, _) | (_, Other) => true,
        (Json, Json | Text) | (Uuid, Uuid | Text) => true,
        (Array(c), Array(v)) => holds(c, v),
        (c, v) if number(c) => number(v),
        (c, v) if instant(c) => instant(v),
        (c, v) => c == v,
    }
}

/// The column indexes of a user-chosen key (columns that exist, are NOT
/// NULL and carry a unique index) and that index (`None` if it is the
/// primary key), else why not.
fn chosen_key(def: &TableDef, key: &[String]) -> Result<(Vec<usize>, Option<String>), String> {
    let mut indexes = Vec::new();
    for name in key {
        let i = def.column_index(name).ok_or_else(|| format!("key column {name} does not exist"))?;
        if def.columns[i].nullable {
            return Err(format!("key column {name} is nullable; a key's columns must be NOT NULL"));
        }
        indexes.push(i);
    }
    if def.primary_key == indexes {
        return Ok((indexes, None));
    }
    let index = def
        .indexes
        .iter()
        .find(|ix| ix.unique && ix.columns.len() == key.len() && key.iter().all(|k| ix.columns.contains(k)));
    let Some(index) = index else {
        return Err(format!(
            "no unique index on ({}): a key must be unique; create one (CREATE UNIQUE INDEX … ON {} ({}))",
            key.join(", "),
            def.name,
            key.join(", ")
        ));
    };
    Ok((indexes, Some(index.name.clone())))
}

/// The target table a source table is copied into when nothing names one:
/// the same schema and name (SQLite has no schemas).
pub fn target_name_of(source: &TableName, engine: Engine) -> TableName {
    match engine {
        Engine::Sqlite => TableName { schema: None, name: source.name.clone() },
        _ => source.clone(),
    }
}
