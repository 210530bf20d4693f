//! A stream's tables changing shape while it runs.
//!
//! Each planned table has a version of its columns ([`TableVersion`]: each
//! column with its catalog number), stored in the target with the position
//! where it begins, in the transaction that applies it; a stream that
//! starts again plans its tables with the versions it stored, not with the
//! source's catalog of now, and meets the later changes in the stream.
//!
//! A change is seen two ways. With the DDL capture ([`crate::replication`])
//! every statement arrives as a message at its place, with the table's
//! columns after it: the numbers tell a rename from a drop and an add, and
//! the defaults and types are exact. Without it, pgoutput's Relation
//! message before the next change of the table carries only the new column
//! names: columns that went are dropped, but new names (an added column's
//! default, or a rename) cannot be told apart, so the stream pauses until
//! the target table is altered to match.
//!
//! A copied table's edits are applied to the target in the target
//! transaction that begins at the change (the changes before it commit
//! first), skipping what the target already has; an edit ferry will not
//! apply as it is (a narrowing type change, an added column whose values
//! the source computed per row) or one the target refuses pauses the
//! stream just before it. A plugin table's plugin is told the new shape
//! (`describe`); if it refuses it or declares other outputs, the stream
//! pauses until `ferry plugin deploy` brings a version that accepts it.
//! A paused stream stays connected, says why in `ferry status`, notifies,
//! and resumes by itself once the cause is gone (or stops on a signal, the
//! position just before the change).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Change, Op, TablesApplier, names_table};
use crate::cdc::ddl::{Captured, CapturedTable, PartitionOf};
use crate::cdc::pgoutput::Relation;
use crate::db::{Engine, TableName};
use crate::error::Error;
use crate::plugin::TableTransformer;
use crate::position::Position;
use crate::schema::TableDef;
use crate::schema_edit::{TableEdit, TableVersion, VersionColumn};
use crate::sink::{RowChangeBatch, SchemaRefused};
use crate::tables::{Output, PlannedTable};

/// A table's columns change here.
pub(crate) struct Step {
    /// The version before the step, and after it.
    pub(super) from: TableVersion,
    pub(super) version: TableVersion,
    /// Read from the stream's column list and the catalog of now, before
    /// the captured statement of the same transaction (which settles it).
    pub(super) provisional: bool,
    /// A copied table: the edits to make on its target table as it was
    /// (`before`, in the applier's `targets`).
    pub(super) edits: Vec<TableEdit>,
    pub(super) before: Option<usize>,
    /// A plugin table: its instance, told the new shape.
    pub(super) transformer: Option<TableTransformer>,
    /// The table's rows are not all in the stream (made by `CREATE TABLE
    /// AS`, followed once it has a key): copied again
    /// ([`super::TablesApplier::resync_step`]), asked in the transaction
    /// that makes it.
    pub(super) resync: bool,
}

impl Step {
    /// From `from` to `version`, with nothing to do yet (the caller adds
    /// edits, a plugin instance or a resync).
    fn new(from: TableVersion, version: TableVersion) -> Step {
        Step { from, version, provisional: false, edits: Vec::new(), before: None, transformer: None, resync: false }
    }

    /// The table is gone from the stream here (dropped, renamed out, or
    /// the old name of a rename): its version becomes the empty one.
    fn gone(from: TableVersion) -> Step {
        let version = TableVersion::gone(from.relation);
        Step::new(from, version)
    }
}

/// Where the stream stops until `until` holds.
pub(crate) struct Pause {
    pub(super) reason: String,
    pub(super) until: Until,
}

/// What resolves a pause.
#[derive(Clone)]
pub(crate) enum Until {
    /// The target table has these columns (with this type, when given)
    /// and not those.
    Target { table: TableName, has: Vec<(String, Option<String>)>, lacks: Vec<String> },
    /// Planned table `t` runs another plugin version than `sha256`.
    /// `shape`: the table's new shape, which a shadow deployment is tried
    /// against while the stream waits.
    Plugin { t: usize, sha256: String, shape: Option<Box<TableDef>> },
    /// Only a change of the pipeline resolves it: the stream waits to be
    /// stopped (and started again with the change).
    Restart,
}

/// A hold's [`Until::Target`] as the target records it.
#[derive(serde::Serialize, serde::Deserialize)]
struct HeldUntil {
    table: String,
    has: Vec<(String, Option<String>)>,
    lacks: Vec<String>,
}

impl Until {
    /// As recorded with a hold (only a target's shape resolves one).
    pub(super) fn to_json(&self) -> String {
        match self {
            Until::Target { table, has, lacks } => {
                let held = HeldUntil { table: table.to_string(), has: has.clone(), lacks: lacks.clone() };
                serde_json::to_string(&held).unwrap_or_default()
            }
            _ => String::new(),
        }
    }

    pub(super) fn from_json(text: &str) -> Option<Until> {
        let held: HeldUntil = serde_json::from_str(text).ok()?;
        Some(Until::Target { table: TableName::parse(&held.table).ok()?, has: held.has, lacks: held.lacks })
    }
}

/// What became of a segment of a group.
pub(super) enum Segment {
    Applied,
    /// The plugin said `fatal` (`report.stream.fatal` says where).
    Fatal,
    /// The target refused a schema change: nothing of the segment applied.
    Refused(SchemaRefused),
}

/// A column's name, catalog number and type OID.
type ColumnNumber = (String, i16, u32);

/// The statement of a step read from the stream's column list while the
/// DDL capture is installed (its message follows and settles it).
const PROVISIONAL: &str = "columns changed (its captured statement follows)";

/// How many of the source's rows a shadow version is tried on while the
/// stream waits for a version that handles a table's new shape.
const SHADOW_SAMPLE: usize = 100;

/// How often a paused stream looks for its resolution.
const PAUSE_POLL: Duration = Duration::from_secs(1);

/// Each planned table's version: the stored one, else its columns now
/// (read before the slot is made, so the stream's first changes have them).
pub(super) async fn known_versions(
    replication: &mut dyn crate::replication::ReplicationSource,
    plan: &crate::tables::Plan,
    stored: &[(String, TableVersion)],
) -> anyhow::Result<Vec<Option<TableVersion>>> {
    let mut out = Vec::with_capacity(plan.tables.len());
    for table in &plan.tables {
        let name = table.source.name.to_string();
        match stored.iter().find(|(t, _)| *t == name) {
            // Versions stored by an older ferry lack the relation's OID.
            Some((_, version)) if version.relation == 0 => {
                let relation = replication.relation_oid(&table.source.name).await?.unwrap_or(0);
                out.push(Some(TableVersion { relation, ..version.clone() }));
            }
            Some((_, version)) => out.push(Some(version.clone())),
            None => out.push(catalog_version(replication, &table.source).await?),
        }
    }
    Ok(out)
}

/// The version of `def` (as the source's catalog has it now).
async fn catalog_version(
    replication: &mut dyn crate::replication::ReplicationSource,
    def: &TableDef,
) -> anyhow::Result<Option<TableVersion>> {
    let oid = replication.relation_oid(&def.name).await?.unwrap_or(0);
    let numbers = replication.column_numbers(&def.name).await?;
    let indexes = def.indexes.iter().map(|i| (i.name.clone(), i.pg_definition.clone().unwrap_or_default()));
    let checks = def.checks.iter().cloned();
    let foreign_keys = def.foreign_keys.iter().map(|f| (f.name.clone(), String::new()));
    Ok(TableVersion::of(def, &numbers).map(|v| TableVersion {
        relation: oid,
        // Known by name: what later statements add or drop.
        indexes: Some(indexes.collect()),
        constraints: Some(checks.chain(foreign_keys).collect()),
        ..v
    }))
}

impl TablesApplier<'_> {
    /// Stores the versions the target does not hold yet (a stream's first
    /// start, a table new to the pipeline) at the stream's position.
    pub(super) async fn store_versions(&mut self, stored: &[(String, TableVersion)]) -> anyhow::Result<()> {
        let at = self.position.unwrap_or(Position { commit: 0, lsn: 0, seq: 0 });
        let versions: Vec<_> = self
            .plan
            .tables
            .iter()
            .zip(&self.versions)
            .filter_map(|(table, version)| {
                let name = table.source.name.to_string();
                let version = version.as_ref()?;
                (!stored.iter().any(|(t, _)| *t == name)).then(|| (name, at, version.clone()))
            })
            .collect();
        if versions.is_empty() {
            return Ok(());
        }
        let batch = RowChangeBatch { versions, ..self.batch(self.stored_seen) };
        self.target.apply_row_changes(&batch).await?;
        Ok(())
    }

    /// A message of the DDL capture at `position`.
    pub(super) fn captured(&mut self, content: &[u8], position: Position, out: &mut Vec<Change>) -> anyhow::Result<()> {
        let captured = match Captured::parse(content) {
            Ok(captured) => captured,
            Err(reason) => {
                // The column lists of the changes that follow still tell.
                tracing::warn!("{reason}");
                return Ok(());
            }
        };
        tracing::debug!(tag = %captured.tag, at = %position, tables = captured.tables.len(), "a captured statement");
        if !captured.enums.is_empty() && self.settings.target.url.engine() == Engine::Postgres {
            let names: Vec<String> = captured.enums.iter().map(|e| format!("{}.{}", e.schema, e.name)).collect();
            let statements = captured.enums.iter().flat_map(|e| e.sql()).collect();
            out.push(Change::at(position, None, names.join(", "), "schema change", Op::Types(statements)));
        }
        for dropped in &captured.dropped {
            let name = dropped.table_name();
            self.keyless_new.remove(&name);
            if let Some(t) = self.live_table(&name).filter(|t| !self.blocked.contains(t)) {
                self.drop_table(t, &captured.tag, position, out);
            }
        }
        for index in &captured.dropped_indexes {
            // Its table: the followed one whose version has it.
            let owner = (0..self.plan.tables.len()).find(|t| {
                !self.gone.contains(t)
                    && self.plan.tables[*t].source.name.schema.as_deref().is_none_or(|s| s == index.schema)
                    && self.versions[*t]
                        .as_ref()
                        .and_then(|v| v.indexes.as_ref())
                        .is_some_and(|list| list.iter().any(|(n, _)| *n == index.name))
            });
            if let Some(t) = owner.filter(|t| !self.blocked.contains(t)) {
                let mut version = self.versions[t].clone().expect("found above");
                version.indexes.get_or_insert_with(Vec::new).retain(|(n, _)| *n != index.name);
                self.schema_change(t, version, false, &captured.tag, position, out)?;
            }
        }
        for table in &captured.tables {
            match self.live_table(&table.table_name()) {
                Some(t) if self.blocked.contains(&t) => {}
                Some(t) => {
                    let version = table.version();
                    if !self.settle_provisional(t, &version, table.rewritten, position, out) {
                        self.schema_change(t, version, table.rewritten, &captured.tag, position, out)?;
                    }
                }
                None => match self.renamed(table) {
                    Some(t) if self.blocked.contains(&t) => {}
                    Some(t) => self.rename_table(t, table, &captured.tag, position, out)?,
                    None if self.follows_new(table, &captured.tag) => {
                        self.new_table(table, &captured.tag, position, out)
                    }
                    None if self.entered(table, &captured.tag) => {
                        let name = table.table_name();
                        let reason = format!(
                            "table {name} entered the pipeline ({}: renamed or moved to a name source.include brings \
                             in), but the stream did not follow it before, so its rows are not in the stream. Stop \
                             ferry sync, then leave it out (source.exclude) or load it (`ferry sync --teardown`, then \
                             `ferry sync`)",
                            captured.tag
                        );
                        let pause = Pause { reason, until: Until::Restart };
                        out.push(Change::at(
                            position,
                            None,
                            name.to_string(),
                            "schema change",
                            Op::Pause(Box::new(pause)),
                        ));
                    }
                    None => {}
                },
            }
        }
        Ok(())
    }

    /// The planned table the stream follows whose source relation `table`
    /// is, under another name: a rename (or a move to another schema).
    fn renamed(&self, table: &CapturedTable) -> Option<usize> {
        if table.oid == 0 {
            return None;
        }
        let by_version = (0..self.plan.tables.len())
            .find(|t| !self.gone.contains(t) && self.versions[*t].as_ref().is_some_and(|v| v.relation == table.oid));
        by_version.or_else(|| self.mapped.get(&table.oid).and_then(|m| m.table).filter(|t| !self.gone.contains(t)))
    }

    /// Table `t` was renamed in the source to `table`'s name at `position`.
    /// A table `include` brings in under its new name too is followed under
    /// it, its target table renamed in the transaction that begins there
    /// (a copied table's target keeps the source's name); one its new name
    /// leaves out stops being followed (its target table stays as it was,
    /// and it leaves the publication); one `[[tables]]` names (by its old
    /// name) pauses the stream until the entry names the new one.
    fn rename_table(
        &mut self,
        t: usize,
        table: &CapturedTable,
        tag: &str,
        position: Position,
        out: &mut Vec<Change>,
    ) -> anyhow::Result<()> {
        let from = self.plan.tables[t].source.name.clone();
        let to = table.table_name();
        let Some(selection) = self.selection.clone() else { return Ok(()) };
        self.keyless_new.remove(&to);
        let version = self.versions[t].clone().unwrap_or_default();
        if selection.spec(&from).is_some() || self.plan.tables[t].plugin.is_some() {
            let reason = format!(
                "the source renamed table {from} to {to} ({tag}), and the pipeline names it as {from} in \
                 [[tables]]: change the entry's name to \"{to}\" (and rename its target table, if the entry has \
                 none of its own), then start `ferry sync` again: the stream goes on from the rename"
            );
            return self.pause_here(t, position, reason, Until::Restart, out);
        }
        let target = self.targets[self.outputs[t][0]].clone();
        if !selection.includes(&to) {
            tracing::warn!(
                table = %from, to = %to, at = %position,
                "the source renamed a table of the pipeline to a name source.include does not bring in: the \
                 stream stops following it, and target table {} stays as it was at the rename", target.name
            );
            self.gone.insert(t);
            self.left.insert(to.clone());
            self.unpublish.push(to);
            self.versions[t] = Some(TableVersion::gone(version.relation));
            self.mapped.retain(|_, m| m.table != Some(t));
            let step = Step::gone(version);
            out.push(Change::at(position, Some(t), from.to_string(), "schema change", Op::Schema(Box::new(step))));
            return Ok(());
        }
        tracing::info!(table = %from, to = %to, at = %position, "the source renamed a table of the pipeline: renamed on the target, then followed under its new name");
        let engine = self.settings.target.url.engine();
        let target_name = crate::tables::target_name_of(&to, engine);
        // The old name is gone from the stream; the new one goes on.
        let forget = Step::gone(version.clone());
        out.push(Change::at(position, Some(t), from.to_string(), "schema change", Op::Schema(Box::new(forget))));
        let step = Step {
            edits: vec![TableEdit::RenameTable { schema: target_name.schema.clone(), name: target_name.name.clone() }],
            before: Some(self.outputs[t][0]),
            ..Step::new(version.clone(), version.clone())
        };
        for def in [&mut self.plan.tables[t].source, &mut self.base[t]] {
            def.name = to.clone();
        }
        for output in &mut self.plan.tables[t].outputs {
            output.def.name = target_name.clone();
        }
        let mut renamed = target;
        renamed.name = target_name;
        let at = self.targets.len();
        std::sync::Arc::make_mut(&mut self.targets).push(renamed);
        self.outputs[t] = vec![at];
        self.mapped.retain(|_, m| m.table != Some(t));
        out.push(Change::at(position, Some(t), to.to_string(), "schema change", Op::Schema(Box::new(step))));
        Ok(())
    }

    /// The planned table named `name` that the stream follows now.
    pub(super) fn live_table(&self, name: &TableName) -> Option<usize> {
        (0..self.plan.tables.len()).find(|t| {
            !self.gone.contains(t) && names_table(&self.plan.tables[*t].source, name.schema.as_deref(), &name.name)
        })
    }

    /// Whether a table the statement `tag` touched, outside the plan, is a
    /// new one the pipeline's `include` brings in (itself or, for a
    /// partition, its parent).
    fn follows_new(&self, table: &CapturedTable, tag: &str) -> bool {
        let Some(selection) = &self.selection else { return false };
        let name = table.table_name();
        let created = matches!(tag, "CREATE TABLE" | "CREATE TABLE AS" | "SELECT INTO");
        let parent = table.partition_of.as_ref().map(PartitionOf::table_name);
        (created || self.keyless_new.contains(&name))
            && (selection.includes(&name)
                || parent.is_some_and(|p| selection.includes(&p) && self.live_table(&p).is_none()))
    }

    /// Whether `table`, which the stream does not follow and the statement
    /// `tag` altered, now has a name `include` brings in: renamed (or moved)
    /// into the pipeline, with rows the stream never carried.
    fn entered(&self, table: &CapturedTable, tag: &str) -> bool {
        let name = table.table_name();
        tag == "ALTER TABLE"
            && !table.partitioned
            && !self.keyless_new.contains(&name)
            && self.selection.as_ref().is_some_and(|s| s.includes(&name))
    }

    /// `table`, created in the source and brought in by the pipeline's
    /// `include`: from `position` on a copied table like the others, made
    /// on the target in the transaction that begins there (its rows all
    /// follow in the stream: the capture published it in the transaction
    /// that created it). Without a key yet, it waits for a statement that
    /// gives it one.
    fn new_table(&mut self, table: &CapturedTable, tag: &str, position: Position, out: &mut Vec<Change>) {
        let name = table.table_name();
        let version = table.version();
        let Some(source) = table.def(&version) else {
            tracing::info!(table = %name, "the source created a table without a primary key: followed once it has one");
            self.keyless_new.insert(name);
            return;
        };
        self.keyless_new.remove(&name);
        let engine = self.settings.target.url.engine();
        let mut target = source.for_target(crate::tables::target_name_of(&name, engine), engine);
        target.defer_key = false;
        let partition_of = table
            .partition_of
            .as_ref()
            .filter(|_| engine == Engine::Postgres)
            .map(|p| (p.table_name().quoted(), p.bound.clone()));
        let o = self.targets.len();
        std::sync::Arc::make_mut(&mut self.targets).push(target.clone());
        let planned = PlannedTable {
            source: source.clone(),
            outputs: vec![Output { def: target, create: true }],
            plugin: None,
            on_conflict: self.settings.on_conflict,
            schema_made: false,
        };
        // A table dropped earlier in the stream under the same name: its place.
        let again = (0..self.plan.tables.len()).find(|t| {
            self.gone.contains(t) && names_table(&self.plan.tables[*t].source, Some(&table.schema), &table.name)
        });
        let t = match again {
            Some(t) => {
                self.plan.tables[t] = planned;
                self.outputs[t] = vec![o];
                self.base[t] = source;
                self.versions[t] = Some(version.clone());
                self.gone.remove(&t);
                self.transformers.remove(&t);
                t
            }
            None => {
                self.plan.tables.push(planned);
                self.outputs.push(vec![o]);
                self.base.push(source);
                self.versions.push(Some(version.clone()));
                self.plan.tables.len() - 1
            }
        };
        self.added.insert(t);
        // Relations read before as outside the pipeline are mapped again.
        self.mapped.retain(|_, m| m.table.is_some());
        tracing::info!(table = %name, at = %position, "the source created a table the pipeline includes: made on the target, then followed");
        // Its indexes and constraints, made with it.
        let bare = TableVersion { indexes: Some(Vec::new()), constraints: Some(Vec::new()), ..Default::default() };
        let made = bare.index_edits(&version);
        let step = Step {
            edits: std::iter::once(TableEdit::Create { partition_of }).chain(made).collect(),
            before: Some(o),
            // Followed from a later statement (a key added to a table
            // `CREATE TABLE AS` filled): its rows before it are not in
            // the stream.
            resync: !matches!(tag, "CREATE TABLE" | "CREATE TABLE AS" | "SELECT INTO"),
            ..Step::new(TableVersion::default(), version)
        };
        out.push(Change::at(position, Some(t), name.to_string(), "schema change", Op::Schema(Box::new(step))));
    }

    /// Table `t` was dropped in the source at `position`: a copied table's
    /// target table goes in the transaction that begins there; a plugin's
    /// tables stay (other tables may write them). Its version becomes the
    /// empty one (a stream that starts again knows it is gone).
    fn drop_table(&mut self, t: usize, tag: &str, position: Position, out: &mut Vec<Change>) {
        let label = self.plan.tables[t].source.name.to_string();
        let copy = self.plan.tables[t].plugin.is_none();
        tracing::info!(table = %label, statement = tag, at = %position, copy, "the source dropped a table of the pipeline");
        let from = self.versions[t].clone().unwrap_or_default();
        self.gone.insert(t);
        self.versions[t] = Some(TableVersion::gone(from.relation));
        self.mapped.retain(|_, m| m.table != Some(t));
        let step = Step {
            edits: if copy { vec![TableEdit::DropTable] } else { Vec::new() },
            before: copy.then(|| self.outputs[t][0]),
            ..Step::gone(from)
        };
        out.push(Change::at(position, Some(t), label, "schema change", Op::Schema(Box::new(step))));
    }

    /// The statement's message came after changes of its own transaction
    /// that already had the new columns (a provisional step in `out`): the
    /// step takes the statement's exact version (defaults), or becomes a
    /// pause if the statement says it cannot be applied as it is, or if
    /// the two disagree. `false`: no such step.
    fn settle_provisional(
        &mut self,
        t: usize,
        version: &TableVersion,
        rewritten: bool,
        position: Position,
        out: &mut [Change],
    ) -> bool {
        let Some(change) = out.iter_mut().rev().find(|c| {
            c.table == Some(t)
                && c.position.is_some_and(|p| p.commit == position.commit)
                && matches!(&c.op, Op::Schema(step) if step.provisional)
        }) else {
            return false;
        };
        let Op::Schema(step) = &mut change.op else { unreachable!("matched above") };
        // By type OID: the catalog of now and the capture may name one
        // type with and without its schema.
        let shape = |v: &TableVersion| -> Vec<(i16, String, u32)> {
            v.columns.iter().map(|c| (c.number, c.def.name.clone(), c.type_oid)).collect()
        };
        let label = self.plan.tables[t].source.name.to_string();
        let edits = step.from.edits(version);
        let unsafe_reason = if shape(&step.version) != shape(version) {
            Some(format!(
                "the stream's columns of {label} ({}) are not the captured statement's ({})",
                step.version.names().join(", "),
                version.names().join(", ")
            ))
        } else {
            edits.iter().find_map(|e| e.unsafe_reason(rewritten).map(|r| format!("{label}: {r}")))
        };
        step.provisional = false;
        match unsafe_reason {
            None => {
                if step.before.is_some() {
                    step.edits = edits;
                }
                step.version = version.clone();
                self.versions[t] = Some(version.clone());
            }
            Some(reason) => {
                let reason = format!(
                    "{reason}. Alter the target table to what the source has, with the values the source holds; \
                     the stream goes on by itself once it matches"
                );
                let until = match self.plan.tables[t].plugin.as_ref() {
                    Some(plugin) => Until::Plugin { t, sha256: plugin.sha256().to_string(), shape: None },
                    None => self.until_target(t, &self.plan.tables[t].source.clone()),
                };
                self.blocked.insert(t);
                change.op = Op::Pause(Box::new(Pause { reason, until }));
            }
        }
        true
    }

    /// Table `t` has `version` from `position` on: a step (or a pause) in
    /// `out`, and the table's definition as the changes after it have it.
    pub(super) fn schema_change(
        &mut self,
        t: usize,
        version: TableVersion,
        rewritten: bool,
        what: &str,
        position: Position,
        out: &mut Vec<Change>,
    ) -> anyhow::Result<()> {
        let label = self.plan.tables[t].source.name.to_string();
        let Some(old) = self.versions[t].clone() else {
            return Ok(());
        };
        let mut edits = old.edits(&version);
        if self.plan.tables[t].plugin.is_some() {
            // A plugin's tables are its own: the source's indexes are not theirs.
            edits.retain(TableEdit::of_columns);
        }
        if edits.is_empty() {
            // Constraints, indexes, …: the columns are as they were.
            self.versions[t] = Some(version);
            return Ok(());
        }
        let said: Vec<String> = edits.iter().map(ToString::to_string).collect();
        tracing::info!(table = %label, statement = what, edits = %said.join("; "), "the source changed a table's columns");
        // The key found again under its new names.
        let mut renamed = self.plan.tables[t].source.clone();
        for edit in &edits {
            if let TableEdit::Rename { from, to } = edit
                && let Some(i) = renamed.column_index(from)
            {
                renamed.columns[i].name = to.clone();
            }
        }
        let Some(source) = version.apply_to(&renamed) else {
            let reason = format!(
                "the source dropped a key column of {label} ({}): the stream applies changes by key; tear it down \
                 (`ferry sync --teardown`) and start it again",
                said.join("; ")
            );
            return self.pause_here(t, position, reason, self.until_plugin_or_target(t, &version), out);
        };
        let mut step = Step { provisional: what == PROVISIONAL, ..Step::new(old.clone(), version.clone()) };
        match self.plan.tables[t].plugin.clone() {
            None => {
                if let Some(reason) = edits.iter().find_map(|e| e.unsafe_reason(rewritten)) {
                    let reason = format!(
                        "{label}: {reason}. Alter the target table to what the source has ({}), with the values \
                         the source holds; the stream goes on by itself once it matches",
                        said.join("; ")
                    );
                    let until = self.until_target(t, &source);
                    return self.pause_here(t, position, reason, until, out);
                }
                step.before = Some(self.outputs[t][0]);
                step.edits = edits;
                self.retarget(t, &source);
            }
            Some(plugin) => {
                // The rows before the change still need the old shape's instance.
                self.transformer(t)?;
                let mut instance = tokio::task::block_in_place(|| plugin.instantiate())?;
                let declared = tokio::task::block_in_place(|| instance.describe(&source));
                let refused = match declared {
                    Err(e) => Some(format!("it refuses the new shape: {e}")),
                    Ok(outputs) => self.other_outputs(t, &outputs),
                };
                if let Some(why) = refused {
                    let reason = format!(
                        "{label} changed on the source ({}), and plugin {} of the table cannot follow: {why}. Deploy \
                         a version that handles the new columns (`ferry plugin deploy`); the stream goes on by \
                         itself from this change",
                        said.join("; "),
                        &plugin.sha256()[..12]
                    );
                    let shape = Some(Box::new(source.clone()));
                    let until = Until::Plugin { t, sha256: plugin.sha256().to_string(), shape };
                    return self.pause_here(t, position, reason, until, out);
                }
                step.transformer = Some(instance);
            }
        }
        self.plan.tables[t].source = source;
        self.versions[t] = Some(version);
        self.mapped.retain(|_, m| m.table != Some(t));
        out.push(Change::at(position, Some(t), label, "schema change", Op::Schema(Box::new(step))));
        Ok(())
    }

    /// Table `t`'s changes arrive with other columns (names or types) than
    /// its version's, and no captured statement said why.
    pub(super) async fn relation_changed(
        &mut self,
        t: usize,
        relation: &Relation,
        position: Position,
        out: &mut Vec<Change>,
    ) -> anyhow::Result<()> {
        let label = self.plan.tables[t].source.name.to_string();
        let names: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
        tracing::debug!(table = %label, at = %position, columns = %names.join(", "), "new columns in the stream");
        let Some(old) = self.versions[t].clone() else {
            anyhow::bail!("the stream's {label} has columns ({}) the pipeline does not know", names.join(", "));
        };
        // Columns whose name and type the version has are as they were; the
        // others are found in the source's catalog of now, where it still
        // has them with the type the stream names.
        let unchanged = |name: &str, oid: u32| {
            old.columns.iter().find(|c| c.def.name == name && (c.type_oid == 0 || c.type_oid == oid)).cloned()
        };
        let mut now: Option<(Option<TableDef>, Vec<ColumnNumber>)> = None;
        let mut columns = Vec::with_capacity(names.len());
        for column in &relation.columns {
            if let Some(known) = unchanged(&column.name, column.type_oid) {
                columns.push(Some(known));
                continue;
            }
            if now.is_none() {
                let name = self.plan.tables[t].source.name.clone();
                let def = self.reread().await?.describe(&name).await?;
                let mut replication = crate::engines::open_replication_source(&self.settings.source.url).await?;
                now = Some((def, replication.column_numbers(&self.plan.tables[t].source.name).await?));
            }
            let (def, numbers) = now.as_ref().expect("read above");
            let found = numbers.iter().find(|(n, _, oid)| *n == column.name && *oid == column.type_oid).and_then(
                |(_, number, type_oid)| {
                    let def = def.as_ref()?.columns.iter().find(|c| c.name == column.name)?.clone();
                    Some(VersionColumn { number: *number, def, type_oid: *type_oid })
                },
            );
            columns.push(found);
        }
        let version = columns.into_iter().collect::<Option<Vec<_>>>().map(|columns| TableVersion {
            columns,
            relation: relation.oid,
            // A column list says nothing of them.
            indexes: old.indexes.clone(),
            constraints: old.constraints.clone(),
        });
        // Added: a number the version does not have (a rename keeps it).
        let added: Vec<String> = match &version {
            Some(v) => v
                .columns
                .iter()
                .filter(|c| !old.columns.iter().any(|o| o.number == c.number))
                .map(|c| c.def.name.clone())
                .collect(),
            None => {
                names.iter().filter(|n| !old.columns.iter().any(|c| c.def.name == **n)).map(|n| n.to_string()).collect()
            }
        };
        let copy = self.plan.tables[t].plugin.is_none();
        let target_name = self.targets[self.outputs[t][0]].name.clone();
        match version {
            // The captured statement of this transaction follows and
            // settles the step (defaults, whether rows were rewritten).
            Some(version) if self.capture => {
                return self.schema_change(t, version, false, PROVISIONAL, position, out);
            }
            // Drops and type changes, or a plugin told the new shape: no
            // value of an existing row to guess.
            Some(version) if added.is_empty() || !copy => {
                return self.schema_change(t, version, false, "columns changed", position, out);
            }
            Some(version) => {
                let existing = self.target.describe(&target_name).await?;
                if existing.as_ref().is_some_and(|d| added.iter().all(|n| d.column_index(n).is_some())) {
                    tracing::info!(table = %label, added = %added.join(", "), "the target table was altered to match");
                    return self.schema_change(t, version, false, "columns changed", position, out);
                }
            }
            None => {}
        }
        let type_of = |name: &str| {
            now.as_ref()
                .and_then(|(def, _)| def.as_ref()?.columns.iter().find(|c| c.name == name).map(|c| c.sql_type.clone()))
                .unwrap_or_else(|| "<type>".to_string())
        };
        let suggestion: Vec<String> = added
            .iter()
            .map(|name| {
                format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    target_name.quoted(),
                    crate::db::quote_ident(name),
                    type_of(name)
                )
            })
            .collect();
        let reason = format!(
            "the columns of {label} changed on the source (now {}; the stream had {}), and without the DDL capture \
             ferry cannot tell a rename from a drop and an add, nor what the source gave the existing rows. Alter \
             the target table to match ({}; then set the existing rows' values as the source did): the stream \
             goes on by itself, carrying the new columns from this change. To carry later changes as they come, \
             set [source] capture_ddl = true",
            names.join(", "),
            old.names().join(", "),
            if suggestion.is_empty() { "the same types as the source".to_string() } else { suggestion.join("; ") }
        );
        let until = Until::Target {
            table: target_name,
            has: names.iter().map(|n| (n.to_string(), None)).collect(),
            lacks: Vec::new(),
        };
        self.pause_here(t, position, reason, until, out)
    }

    /// Copied table `t`'s target, from here on, as `source` has it: a new
    /// definition in `targets` (the changes read before keep theirs).
    fn retarget(&mut self, t: usize, source: &TableDef) {
        let name = self.targets[self.outputs[t][0]].name.clone();
        let mut after = source.for_target(name, self.settings.target.url.engine());
        after.defer_key = false;
        let at = self.targets.len();
        std::sync::Arc::make_mut(&mut self.targets).push(after);
        self.outputs[t] = vec![at];
    }

    /// Table `t` cannot go past `position`: nothing of it is read until the
    /// pause is resolved (and the stream reads again from there).
    fn pause_here(
        &mut self,
        t: usize,
        position: Position,
        reason: String,
        until: Until,
        out: &mut Vec<Change>,
    ) -> anyhow::Result<()> {
        self.blocked.insert(t);
        out.push(Change::at(
            position,
            Some(t),
            self.plan.tables[t].source.name.to_string(),
            "schema change",
            Op::Pause(Box::new(Pause { reason, until })),
        ));
        Ok(())
    }

    /// Resolved when the target table of copied table `t` has `source`'s
    /// columns with their types.
    fn until_target(&self, t: usize, source: &TableDef) -> Until {
        let target = self.targets[self.outputs[t][0]].name.clone();
        let pg = self.settings.target.url.engine() == crate::db::Engine::Postgres;
        Until::Target {
            table: target,
            has: source.columns.iter().map(|c| (c.name.clone(), pg.then(|| c.sql_type.clone()))).collect(),
            lacks: Vec::new(),
        }
    }

    fn until_plugin_or_target(&self, t: usize, version: &TableVersion) -> Until {
        match &self.plan.tables[t].plugin {
            Some(plugin) => Until::Plugin { t, sha256: plugin.sha256().to_string(), shape: None },
            None => Until::Target {
                table: self.targets[self.outputs[t][0]].name.clone(),
                has: version.columns.iter().map(|c| (c.def.name.clone(), None)).collect(),
                lacks: Vec::new(),
            },
        }
    }

    /// How the outputs a plugin declares for the new shape differ from the
    /// tables it writes now (`None`: the same).
    fn other_outputs(&self, t: usize, declared: &[TableDef]) -> Option<String> {
        let now: Vec<(&str, Vec<&str>)> = self.outputs[t]
            .iter()
            .map(|&o| &self.targets[o])
            .map(|d| (d.name.name.as_str(), d.columns.iter().map(|c| c.name.as_str()).collect()))
            .collect();
        for table in declared {
            let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
            match now.iter().find(|(name, _)| *name == table.name.name) {
                None => return Some(format!("it declares table {}, which it did not write before", table.name)),
                Some((_, had)) if *had != columns => {
                    return Some(format!(
                        "it declares {} with columns ({}), where the target has ({})",
                        table.name,
                        columns.join(", "),
                        had.join(", ")
                    ));
                }
                Some(_) => {}
            }
        }
        None
    }

    /// A copied table's step, at the start of the target transaction that
    /// applies it: the edits the target already has are left out (a table
    /// altered by hand, a step applied before ferry stopped).
    pub(super) async fn settle(&mut self, step: &mut Step) -> anyhow::Result<()> {
        let Some(before) = step.before else { return Ok(()) };
        let Some(there) = self.target.describe(&self.targets[before].name).await? else {
            // Dropped or renamed already (a step applied before ferry stopped).
            step.edits.retain(|edit| !matches!(edit, TableEdit::DropTable | TableEdit::RenameTable { .. }));
            return Ok(());
        };
        let has = |name: &str| there.column_index(name).map(|i| &there.columns[i]);
        step.edits.retain(|edit| match edit {
            TableEdit::Create { .. } => false,
            TableEdit::DropTable | TableEdit::RenameTable { .. } => true,
            TableEdit::Add { column } => has(&column.name).is_none(),
            TableEdit::Drop { name } => has(name).is_some(),
            TableEdit::Rename { from, to } => has(from).is_some() && has(to).is_none(),
            TableEdit::Retype { column, .. } => has(&column.name).is_none_or(|c| c.sql_type != column.sql_type),
            TableEdit::Nullable { name, nullable } => has(name).is_some_and(|c| c.nullable != *nullable),
            TableEdit::Default { .. } => true,
            TableEdit::AddIndex { name, .. } => !there.indexes.iter().any(|i| i.name == *name),
            TableEdit::AddConstraint { name, .. } => {
                !there.checks.iter().any(|(c, _)| c == name) && !there.foreign_keys.iter().any(|f| f.name == *name)
            }
            TableEdit::DropIndex { .. } | TableEdit::DropConstraint { .. } => true,
        });
        Ok(())
    }

    /// The pause of a schema change the target refused.
    pub(super) fn refused_pause(&self, refused: &SchemaRefused) -> Pause {
        let t = self.outputs.iter().position(|o| o.iter().any(|&i| self.targets[i].name.to_string() == refused.table));
        let source = t.map(|t| self.plan.tables[t].source.clone());
        let until = match (t, &source) {
            (Some(t), Some(source)) => self.until_target(t, source),
            _ => Until::Target {
                table: TableName::parse(&refused.table)
                    .unwrap_or_else(|_| TableName { schema: None, name: refused.table.clone() }),
                has: Vec::new(),
                lacks: Vec::new(),
            },
        };
        Pause {
            reason: format!(
                "the target refused a schema change of the source: {refused}. Alter the target table to what the \
                 source has; the stream goes on by itself once it matches"
            ),
            until,
        }
    }

    /// Whether the pause of table `t` at `position` can hold that table
    /// alone, the others going on: a copied table waiting for its target
    /// table's shape, that no foreign key ties to another table of the
    /// pipeline and that the source does not write in the same transactions
    /// as others (seen so far, or in the pause's own transaction in
    /// `items`). Otherwise the whole stream pauses: holding it alone would
    /// apply a transaction, or a parent and its child, in part.
    pub(super) fn holdable(&self, t: usize, pause: &Pause, position: Option<Position>, items: &[Change]) -> bool {
        let same_transaction = |c: &Change| {
            c.table.is_some_and(|u| u != t) && c.position.zip(position).is_some_and(|(a, b)| a.commit == b.commit)
        };
        let source = &self.plan.tables[t].source;
        let tied = (0..self.plan.tables.len()).filter(|u| *u != t && !self.gone.contains(u)).any(|u| {
            let other = &self.plan.tables[u].source;
            other.foreign_keys.iter().any(|f| names_table(source, f.references.schema.as_deref(), &f.references.name))
                || source
                    .foreign_keys
                    .iter()
                    .any(|f| names_table(other, f.references.schema.as_deref(), &f.references.name))
        });
        self.plan.tables[t].plugin.is_none()
            && matches!(pause.until, Until::Target { .. })
            && !self.co_written.contains(&t)
            && !tied
            && !items.iter().any(same_transaction)
    }

    /// Table `t` is held from here on: its changes are skipped until
    /// `pause` is resolved, then it is copied again (the hold is recorded
    /// with the position of the segment that holds it).
    pub(super) async fn hold_table(&mut self, t: usize, pause: &Pause) {
        let label = self.plan.tables[t].source.name.to_string();
        tracing::error!(table = %label, "a table is held, the other tables go on: {}", pause.reason);
        self.holds.insert(t, pause.until.clone());
        self.report.stream.held.push(format!("{label}: {}", pause.reason));
        metrics::gauge!(crate::daemon::names::PAUSED_TABLES).set(self.holds.len() as f64);
        let pipeline = self.settings.pipeline.clone();
        let details = serde_json::json!({ "pipeline": pipeline, "held": label, "reason": pause.reason });
        let said = format!("{label} held: {}", pause.reason);
        crate::notify::send(&self.settings.notify, &pipeline, crate::notify::Event::StreamPaused, said, details).await;
    }

    /// The holds the target records (a stream that starts again keeps them).
    pub(super) async fn load_holds(&mut self) -> anyhow::Result<()> {
        for resync in self.target.resyncs(&self.settings.pipeline).await? {
            let (Some(reason), Some(until)) = (&resync.held, resync.until.as_deref().and_then(Until::from_json)) else {
                continue;
            };
            if let Some(t) = TableName::parse(&resync.table).ok().and_then(|n| self.live_table(&n)) {
                self.holds.insert(t, until);
                self.report.stream.held.push(format!("{}: {reason}", resync.table));
            }
        }
        self.blocked.extend(self.holds.keys().copied());
        metrics::gauge!(crate::daemon::names::PAUSED_TABLES).set(self.holds.len() as f64);
        Ok(())
    }

    /// Releases each held table whose hold is resolved: its shape read from
    /// the source's catalog of now, stored as its version at the stream's
    /// position, and a resync asked in the same target transaction; its
    /// changes are followed again from here.
    pub(super) async fn release_holds(&mut self) -> anyhow::Result<()> {
        let held: Vec<(usize, Until)> = self.holds.iter().map(|(t, u)| (*t, u.clone())).collect();
        for (t, until) in held {
            if !self.resolved(&until).await? {
                continue;
            }
            let name = self.plan.tables[t].source.name.clone();
            let Some(def) = self.reread().await?.describe(&name).await? else {
                continue;
            };
            let mut replication = crate::engines::open_replication_source(&self.settings.source.url).await?;
            let version = catalog_version(replication.as_mut(), &def).await?;
            self.retarget(t, &def);
            self.plan.tables[t].source = def.clone();
            self.base[t] = def;
            self.versions[t] = version.clone();
            self.mapped.retain(|_, m| m.table != Some(t));
            self.holds.remove(&t);
            self.blocked.remove(&t);
            let held = format!("{name}: ");
            self.report.stream.held.retain(|h| !h.starts_with(&held));
            metrics::gauge!(crate::daemon::names::PAUSED_TABLES).set(self.holds.len() as f64);
            let step = Step { resync: true, ..Step::new(TableVersion::default(), version.unwrap_or_default()) };
            let at = self.position.unwrap_or(Position { commit: 0, lsn: 0, seq: 0 });
            let change = Change::at(at, Some(t), name.to_string(), "schema change", Op::Schema(Box::new(step)));
            match self.apply_segment(vec![change], None).await? {
                Segment::Applied => {
                    tracing::info!(table = %name, "resolved: the held table is copied again, then followed")
                }
                _ => anyhow::bail!("releasing held table {name}: the target refused"),
            }
        }
        Ok(())
    }

    /// Holds the stream where `pause` is (everything before it applied):
    /// says so, then waits until it is resolved — `Err(transient)`: read
    /// again from the stored position — or the stream is stopped
    /// (`Ok(false)`, the report saying why it paused).
    pub(super) async fn pause(&mut self, pause: Pause) -> anyhow::Result<bool> {
        let reason = pause.reason.clone();
        if !self.hold(pause).await? {
            return Ok(false);
        }
        Err(Error::transient(format!("resuming after a pause ({reason})")))
    }

    /// Holds the stream until `pause` is resolved (`Ok(true)`) or the stream
    /// is stopped (`Ok(false)`), saying so.
    pub(super) async fn hold(&mut self, pause: Pause) -> anyhow::Result<bool> {
        let Pause { reason, until } = pause;
        tracing::error!("the stream is paused: {reason}");
        let pipeline = self.settings.pipeline.clone();
        self.target.set_stream_paused(&pipeline, Some(&reason)).await?;
        // The stream's tables wait; the held ones count as themselves.
        metrics::gauge!(crate::daemon::names::PAUSED_TABLES).set((self.holds.len() + 1) as f64);
        let details = serde_json::json!({ "pipeline": pipeline, "paused": reason, "position": self.position });
        let event = crate::notify::Event::StreamPaused;
        crate::notify::send(&self.settings.notify, &pipeline, event, format!("paused: {reason}"), details.clone())
            .await;
        self.report.stream.paused = Some(reason.clone());
        // A version deployed meanwhile is checked against the new shape,
        // and a shadow one is tried on the source's rows of that shape.
        let trial = match &until {
            Until::Plugin { t, shape: Some(shape), .. } => Some((*t, (**shape).clone())),
            _ => None,
        };
        if let Some((t, shape)) = &trial {
            self.swapper.set_shape(*t, Some(shape.clone()));
        }
        let mut tried = false;
        let resolved = loop {
            for _ in 0..5 {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(PAUSE_POLL / 5).await;
            }
            if self.stop.load(Ordering::Relaxed) {
                break false;
            }
            crate::daemon::health().beat("paused");
            self.between().await?;
            if let Some((t, shape)) = trial.as_ref().filter(|(t, _)| !tried && self.swapper.shadows(*t)) {
                self.try_shadow(*t, shape).await?;
                tried = true;
            }
            if self.resolved(&until).await? {
                break true;
            }
        };
        if let Some((t, _)) = &trial {
            self.swapper.set_shape(*t, None);
        }
        if !resolved {
            return Ok(false);
        }
        self.target.set_stream_paused(&pipeline, None).await?;
        metrics::gauge!(crate::daemon::names::PAUSED_TABLES).set(self.holds.len() as f64);
        self.report.stream.paused = None;
        tracing::info!("resolved: the stream goes on from the change it paused at");
        crate::notify::send(&self.settings.notify, &pipeline, event, format!("resumed after: {reason}"), details).await;
        Ok(true)
    }

    /// A shadow version of paused plugin table `t` tried on the source's
    /// first rows of its new `shape` (which the live version refuses): its
    /// outcomes are stored as the shadow's report, each row counted as
    /// differing from the live version's refusal, with examples.
    async fn try_shadow(&mut self, t: usize, shape: &TableDef) -> anyhow::Result<()> {
        let source = self.reread().await?;
        let page = source.read_page(shape, None, SHADOW_SAMPLE).await?;
        let live: Vec<crate::plugin::RowOutcome> = page
            .rows
            .iter()
            .map(|_| crate::plugin::RowOutcome::Rejected("the live version refuses the new shape".into()))
            .collect();
        let name = shape.name.to_string();
        let (targets, outputs) = (&self.targets, &self.outputs[t]);
        let key = |row: &crate::keyset::Row| crate::keyset::Key::of(shape, row).label();
        let columns = |table: &str| {
            let def =
                outputs.iter().map(|&o| &targets[o]).find(|d| d.name.name == table || d.name.to_string() == table);
            def.map(|d| d.columns.iter().map(|c| c.name.clone()).collect())
        };
        tokio::task::block_in_place(|| self.swapper.shadow(t, &name, &page.rows, &live, key, columns));
        self.swapper.flush(self.target.as_mut()).await?;
        tracing::info!(table = %name, rows = page.rows.len(), "a shadow version tried on the table's new shape");
        Ok(())
    }

    /// A Debezium event of table `t` whose `after` has other `fields` than
    /// the table's columns (`ferry apply`): the same rules as a stream's
    /// column list without the DDL capture, with the source's catalog of
    /// now (`source.url`) telling what each new field is. A column the
    /// events lack is dropped only if the source's catalog no longer has
    /// it either (a connector may leave columns out); a new column is
    /// carried once the target table has it (nothing tells what the
    /// source gave the existing rows); a plugin table's plugin is told the
    /// new shape. `Ok`: the step, before the event; `Err`: why it waits.
    pub(super) async fn debezium_shape(
        &mut self,
        t: usize,
        fields: &[String],
        position: Option<Position>,
    ) -> anyhow::Result<Result<Change, Pause>> {
        let old = self.plan.tables[t].source.clone();
        let label = old.name.to_string();
        let now = self.reread().await?.describe(&old.name).await?;
        let copy = self.plan.tables[t].plugin.is_none();
        let target_name = self.targets[self.outputs[t][0]].name.clone();
        let there = if copy { self.target.describe(&target_name).await? } else { None };
        let column = |def: &Option<TableDef>, name: &str| {
            def.as_ref().and_then(|d| d.column_index(name).map(|i| d.columns[i].clone()))
        };
        let restart = |reason: String| Ok(Err(Pause { reason, until: Until::Restart }));
        let dropped: Vec<String> =
            old.columns.iter().filter(|c| !fields.contains(&c.name)).map(|c| c.name.clone()).collect();
        if let Some(kept) = dropped.iter().find(|c| column(&now, c).is_some()) {
            return restart(format!(
                "the events of {label} lack column {kept}, which {} still has: the connector leaves it out \
                 (column.exclude.list?). Carry it in the events, or leave it out of the pipeline, then start \
                 `ferry apply` again: it goes on from this event",
                self.settings.source.url
            ));
        }
        let mut columns = Vec::with_capacity(fields.len());
        for field in fields {
            match column(&Some(old.clone()), field).or_else(|| column(&now, field)).or_else(|| column(&there, field)) {
                Some(c) => columns.push(c),
                None => {
                    return restart(format!(
                        "the events of {label} carry field {field}, which neither {} nor the target table has: \
                         ferry cannot tell its type. Point source.url at the database the connector reads, or add \
                         the column to the target table, then start `ferry apply` again: it goes on from this event",
                        self.settings.source.url
                    ));
                }
            }
        }
        let added: Vec<String> =
            fields.iter().filter(|f| old.column_index(f).is_none()).map(|f| f.to_string()).collect();
        let mut source = old.clone();
        source.columns = columns;
        let key: Option<Vec<usize>> = old.key_columns().map(|k| source.column_index(&k.name)).collect();
        let Some(key) = key else {
            return restart(format!(
                "the events of {label} lack a key column ({}): changes apply by key. Load the table again with                  its new key, then start `ferry apply` again",
                dropped.join(", ")
            ));
        };
        source.primary_key = key;
        source.generated.retain(|g| !source.columns.iter().any(|c| c.name == g.name));
        let said = format!(
            "{}{}{}",
            if added.is_empty() { String::new() } else { format!("new columns {}", added.join(", ")) },
            if added.is_empty() || dropped.is_empty() { "" } else { "; " },
            if dropped.is_empty() { String::new() } else { format!("columns gone: {}", dropped.join(", ")) }
        );
        tracing::info!(table = %label, change = %said, "the events carry a table's new shape");
        let mut step = Step::new(TableVersion::default(), TableVersion::default());
        match self.plan.tables[t].plugin.clone() {
            None => {
                let lacking: Vec<&String> = added.iter().filter(|a| column(&there, a).is_none()).collect();
                if !lacking.is_empty() {
                    let suggestion: Vec<String> = lacking
                        .iter()
                        .map(|name| {
                            let sql_type = column(&Some(source.clone()), name).map(|c| c.sql_type).unwrap_or_default();
                            let name = crate::db::quote_ident(name);
                            format!("ALTER TABLE {} ADD COLUMN {name} {sql_type}", target_name.quoted())
                        })
                        .collect();
                    let reason = format!(
                        "the events of {label} carry {said}, and nothing in them tells what the source gave the \
                         existing rows. Alter the target table to match ({}; then set the existing rows' values \
                         as the source did): `ferry apply` goes on by itself from this event",
                        suggestion.join("; ")
                    );
                    let has = lacking.iter().map(|n| (n.to_string(), None)).collect();
                    return Ok(Err(Pause {
                        reason,
                        until: Until::Target { table: target_name, has, lacks: Vec::new() },
                    }));
                }
                step.before = Some(self.outputs[t][0]);
                step.edits = dropped.iter().map(|name| TableEdit::Drop { name: name.clone() }).collect();
                self.retarget(t, &source);
            }
            Some(plugin) => {
                self.transformer(t)?;
                let mut instance = tokio::task::block_in_place(|| plugin.instantiate())?;
                let refused = match tokio::task::block_in_place(|| instance.describe(&source)) {
                    Err(e) => Some(format!("it refuses the new shape: {e}")),
                    Ok(outputs) => self.other_outputs(t, &outputs),
                };
                if let Some(why) = refused {
                    let reason = format!(
                        "the events of {label} carry {said}, and plugin {} of the table cannot follow: {why}. Deploy \
                         a version that handles them (`ferry plugin deploy`): `ferry apply` goes on by itself from \
                         this event",
                        &plugin.sha256()[..12]
                    );
                    let shape = Some(Box::new(source.clone()));
                    let until = Until::Plugin { t, sha256: plugin.sha256().to_string(), shape };
                    return Ok(Err(Pause { reason, until }));
                }
                step.transformer = Some(instance);
            }
        }
        self.plan.tables[t].source = source;
        let at = position.unwrap_or(Position { commit: 0, lsn: 0, seq: 0 });
        let mut change = Change::at(at, Some(t), label, "schema change", Op::Schema(Box::new(step)));
        // A snapshot read has no position of its own.
        change.position = position;
        Ok(Ok(change))
    }

    async fn resolved(&mut self, until: &Until) -> anyhow::Result<bool> {
        Ok(match until {
            Until::Restart => false,
            Until::Plugin { t, sha256, .. } => {
                self.plan.tables[*t].plugin.as_ref().is_some_and(|p| p.sha256() != sha256)
            }
            Until::Target { table, has, lacks } => match self.target.describe(table).await? {
                None => false,
                Some(def) => {
                    let holds = |(name, sql_type): &(String, Option<String>)| {
                        def.column_index(name).is_some_and(|i| {
                            sql_type.as_ref().is_none_or(|t| crate::schema_edit::widens(t, &def.columns[i].sql_type))
                        })
                    };
                    has.iter().all(holds) && lacks.iter().all(|n| def.column_index(n).is_none())
                }
            },
        })
    }

    /// After a lost connection or a resolved pause: the tables as the
    /// target's stored versions have them (what was received past the
    /// stored position is read again).
    pub(super) async fn reset_versions(&mut self) -> anyhow::Result<()> {
        let stored = self.target.stream_versions(&self.settings.pipeline).await?;
        self.blocked.clear();
        for t in 0..self.plan.tables.len() {
            let name = self.base[t].name.to_string();
            let Some((_, version)) = stored.iter().find(|(n, _)| *n == name) else {
                // Made past the stored position: its statement comes again.
                if self.added.contains(&t) {
                    self.gone.insert(t);
                }
                continue;
            };
            if version.columns.is_empty() {
                self.gone.insert(t);
                self.versions[t] = Some(version.clone());
                continue;
            }
            self.gone.remove(&t);
            if self.versions[t].as_ref().is_some_and(|v| v.columns == version.columns) {
                continue;
            }
            let Some(source) = version.apply_to(&self.base[t]) else { continue };
            if self.plan.tables[t].plugin.is_none() {
                self.retarget(t, &source);
            } else {
                self.transformers.remove(&t);
            }
            self.plan.tables[t].source = source;
            self.versions[t] = Some(version.clone());
            self.mapped.retain(|_, m| m.table != Some(t));
        }
        Ok(())
    }
}
