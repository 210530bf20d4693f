//! Table shapes: what a table looks like (columns, key), and what ferry
//! requires of the source and target tables of the `transform-user` plugin.

use serde::Serialize;

/// One column as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    /// The engine's type name, lowercase (`text`, `timestamp with time zone`, `jsonb`…).
    pub data_type: String,
    pub nullable: bool,
}

/// A table as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableShape {
    pub columns: Vec<Column>,
    /// Primary-key columns in key order (empty: no primary key).
    pub primary_key: Vec<String>,
}

impl TableShape {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Type families ferry maps engine types onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Integer,
    Text,
    Timestamp,
    Json,
}

impl Family {
    fn accepts(self, data_type: &str) -> bool {
        let t = data_type.to_ascii_lowercase();
        match self {
            Family::Integer => ["int", "integer", "bigint", "smallint", "int2", "int4", "int8"].contains(&t.as_str()),
            Family::Text => {
                t == "text"
                    || t.starts_with("character")
                    || t.starts_with("varchar")
                    || t.starts_with("char")
                    || t == "citext"
            }
            Family::Timestamp => t.starts_with("timestamp") || t == "datetime" || t == "date" || t == "text",
            Family::Json => t == "json" || t == "jsonb" || t == "text",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Family::Integer => "an integer type",
            Family::Text => "a text type",
            Family::Timestamp => "a timestamp type",
            Family::Json => "json, jsonb or text",
        }
    }
}

/// The source columns the `transform-user` contract reads.
pub const SOURCE_COLUMNS: [(&str, Family); 5] = [
    ("id", Family::Integer),
    ("name", Family::Text),
    ("email", Family::Text),
    ("created_at", Family::Timestamp),
    ("metadata", Family::Json),
];

/// The target columns the `transform-user` contract writes.
pub const TARGET_COLUMNS: [(&str, Family); 6] = [
    ("id", Family::Text),
    ("first_name", Family::Text),
    ("last_name", Family::Text),
    ("email", Family::Text),
    ("created_at", Family::Timestamp),
    ("settings", Family::Json),
];

/// Compares a table with the columns a contract needs and its key. Returns
/// one problem per line, empty when the table fits.
pub fn mismatches(shape: &TableShape, wanted: &[(&str, Family)], key: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, family) in wanted {
        match shape.column(name) {
            None => problems.push(format!("column `{name}` is missing (want {})", family.describe())),
            Some(col) if !family.accepts(&col.data_type) => {
                problems.push(format!("column `{name}` has type {} (want {})", col.data_type, family.describe()))
            }
            Some(_) => {}
        }
    }
    if shape.primary_key.is_empty() {
        problems.push(format!("the table has no primary key (want PRIMARY KEY ({key}))"));
    } else if shape.primary_key != [key] {
        problems.push(format!("the primary key is ({}) (want ({key}))", shape.primary_key.join(", ")));
    }
    problems
}
