//! {{name}}: a ferry `transform-row` plugin. Each source row becomes one row
//! of a table of the same name and columns, its text values trimmed; a row
//! with an empty text value is rejected (dead-lettered with the reason).
//! Change the rules in `transform`, the output tables in `describe`.

ferry_plugin::transform_row!(Plugin);

use exports::ferry::transform::transform_row::Guest;
use ferry::transform::types::{OutputKey, OutputRow, RowError, TableSchema, Value};

struct Plugin;

/// `schema.table` → `table`: the output table keeps the source's name.
fn base_name(name: &str) -> String {
    name.rsplit('.').next().unwrap_or(name).to_string()
}

impl Guest for Plugin {
    fn describe(source: TableSchema) -> Result<Vec<TableSchema>, String> {
        Ok(vec![TableSchema { name: base_name(&source.name), ..source }])
    }

    fn transform_batch(table: String, rows: Vec<Vec<Value>>) -> Vec<Result<Vec<OutputRow>, RowError>> {
        rows.into_iter().map(|row| transform(&table, row)).collect()
    }

    fn target_keys(table: String, key: Vec<Value>) -> Result<Vec<OutputKey>, RowError> {
        Ok(vec![OutputKey { table: base_name(&table), key }])
    }
}

fn transform(table: &str, row: Vec<Value>) -> Result<Vec<OutputRow>, RowError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, value) in row.into_iter().enumerate() {
        values.push(match value {
            Value::Text(text) if text.trim().is_empty() => {
                return Err(RowError::Reject(format!("column {} is empty", i + 1)));
            }
            Value::Text(text) => Value::Text(text.trim().to_string()),
            other => other,
        });
    }
    Ok(vec![OutputRow { table: base_name(table), values }])
}
