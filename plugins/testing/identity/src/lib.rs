//! Test fixture: every source row goes unchanged into a table of the same
//! (unqualified) name and columns. With it a PostgreSQL → PostgreSQL copy
//! decodes and re-encodes every value (a copy without a plugin forwards
//! COPY's bytes undecoded), so the tests can hold ferry's own value I/O to
//! PostgreSQL's.

ferry_plugin::transform_row!(Plugin);

use exports::ferry::transform::transform_row::Guest;
use ferry::transform::types::{OutputKey, OutputRow, RowError, TableSchema, Value};

struct Plugin;

fn base_name(name: &str) -> String {
    name.rsplit('.').next().unwrap_or(name).to_string()
}

impl Guest for Plugin {
    fn describe(source: TableSchema) -> Result<Vec<TableSchema>, String> {
        Ok(vec![TableSchema { name: base_name(&source.name), ..source }])
    }

    fn transform_batch(table: String, rows: Vec<Vec<Value>>) -> Vec<Result<Vec<OutputRow>, RowError>> {
        let name = base_name(&table);
        rows.into_iter().map(|values| Ok(vec![OutputRow { table: name.clone(), values }])).collect()
    }

    fn target_keys(table: String, key: Vec<Value>) -> Result<Vec<OutputKey>, RowError> {
        Ok(vec![OutputKey { table: base_name(&table), key }])
    }
}
