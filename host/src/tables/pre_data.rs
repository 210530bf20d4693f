//! Phase two of a migration: the schema before the data. Between
//! PostgreSQL databases the schema around the tables copied as they are
//! comes along (`[schema] copy`), through the engine's [`SchemaCopy`]; the
//! plan of it is part of the pipeline's plan, so `ferry check` reports
//! every problem `ferry migrate` would refuse on.

use crate::db::{Engine, TableName};
use crate::settings::Settings;

use super::plan::{Plan, Schema, copies_schema};

/// What the schema planning found.
#[derive(Debug, Default)]
pub struct Findings {
    /// What would stop the run (`migrate` refuses, `check` fails).
    pub problems: Vec<String>,
    /// What the user should know (`check` warns): triggers that will fire
    /// on the load.
    pub warnings: Vec<String>,
}

/// Plans the schema around the plan's tables copied as they are (under
/// their own names): sets `plan.schema` and marks those tables. Then
/// lists what would stop the run: the schema copy's problems, a cycle of
/// foreign keys the load cannot turn off, and for a table ferry creates
/// itself a column type the target lacks.
pub async fn plan(settings: &Settings, plan: &mut Plan) -> anyhow::Result<Findings> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if copies_schema(settings) {
        let tables: Vec<TableName> = plan
            .tables
            .iter()
            .filter(|t| t.plugin.is_none() && t.outputs.len() == 1 && t.target().name == t.source.name)
            .map(|t| t.source.name.clone())
            .collect();
        if !tables.is_empty() {
            let copy = crate::engines::open_schema_copy(settings, &tables).await?;
            for table in plan.tables.iter_mut() {
                table.schema_made = tables.contains(&table.source.name);
            }
            problems.extend(copy.plan().problems.iter().cloned());
            plan.schema = Some(Schema(copy));
        }
    }
    // Rows copied as they are into tables the target held load with its
    // triggers and foreign-key checks off where the target role may; else
    // in the order their foreign keys need, which a cycle makes impossible.
    let existing: Vec<crate::schema::TableDef> =
        plan.tables.iter().filter(|t| !t.creates()).map(|t| t.target().clone()).collect();
    if !existing.is_empty() {
        let mut target = crate::engines::open_row_target(settings).await?;
        plan.skip_triggers = target.may_skip_triggers().await?;
        for (table, trigger, always) in target.triggers(&existing).await? {
            let copied = plan.tables.iter().any(|t| t.plugin.is_none() && t.target().name.to_string() == table);
            if always || !(plan.skip_triggers && copied) {
                warnings.push(format!(
                    "trigger {trigger} on {table} will fire on every loaded row{}: disable it for the load \
                     (ALTER TABLE {table} DISABLE TRIGGER {trigger}) if it must not",
                    if always { " (ENABLE ALWAYS)" } else { "" }
                ));
            }
        }
    }
    if let Some(cycle) = plan.wait_cycle() {
        problems.push(match settings.target.url.engine() {
            Engine::Postgres => format!(
                "the target's tables {cycle} reference each other with foreign keys in force, so no load order \
                 satisfies them, and the target role may not turn them off for the load: run ferry as a superuser \
                 or GRANT SET ON PARAMETER session_replication_role TO it (PostgreSQL 15+), or drop one of the \
                 constraints for the load and add it back after"
            ),
            _ => format!(
                "the tables {cycle} reference each other with foreign keys, which SQLite enforces from CREATE \
                 TABLE on, so no load order satisfies them: create the target tables yourself with one of those \
                 foreign keys left out, or leave one of the tables out of the pipeline"
            ),
        });
    }
    if settings.target.url.engine() == Engine::Postgres {
        let mut types: Vec<(String, String, String)> = Vec::new();
        for table in plan.tables.iter().filter(|t| !t.schema_made) {
            for output in table.outputs.iter().filter(|o| o.create) {
                for column in &output.def.columns {
                    types.push((output.def.name.to_string(), column.name.clone(), column.sql_type.clone()));
                }
            }
        }
        // Types the schema copy creates before the data are not missing.
        let created: Vec<String> = plan
            .schema
            .iter()
            .flat_map(|s| s.0.plan().before.iter())
            .filter(|o| o.kind == "TYPE" || o.kind == "DOMAIN")
            .map(|o| o.name.rsplit('.').next().unwrap_or(&o.name).to_string())
            .collect();
        let missing = crate::engines::missing_types(settings, &types).await?;
        for (table, column, sql_type) in missing {
            let base = sql_type.trim_end_matches("[]").rsplit('.').next().unwrap_or_default().trim_matches('"');
            if created.iter().any(|c| c == base) {
                continue;
            }
            problems.push(format!(
                "column {table}.{column} has type {sql_type}, which the target lacks: create it there first \
                 (CREATE TYPE/DOMAIN/EXTENSION as in the source){}",
                if copies_schema(settings) { "" } else { ", or let ferry copy the schema: [schema] copy = \"tables\"" }
            ));
        }
    }
    Ok(Findings { problems, warnings })
}
