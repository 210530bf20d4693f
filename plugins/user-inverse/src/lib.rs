//! The seed's users transform inverted, exported as
//! `ferry:transform/transform-row`: the reverse stream of a parallel run
//! (`ferry sync --reverse`) writes rows of the new `users` table back into
//! the legacy one. The rules (and what cannot be inverted exactly) live in
//! `user_rules::invert`; this file maps the contract's values onto them.

ferry_plugin::transform_row!(Plugin);

use std::cell::RefCell;

use exports::ferry::transform::transform_row::Guest;
use ferry::transform::types::{Column, ColumnType, OutputKey, OutputRow, RowError, ScalarKind, TableSchema, Value};

/// Positions of id, first_name, last_name, email, created_at, settings.
type Positions = [usize; 6];

const COLUMNS: [&str; 6] = ["id", "first_name", "last_name", "email", "created_at", "settings"];

thread_local! {
    static POSITIONS: RefCell<Option<Positions>> = const { RefCell::new(None) };
}

struct Plugin;

fn column(name: &str, kind: ScalarKind, nullable: bool) -> Column {
    Column { name: name.into(), type_: ColumnType::Scalar(kind), nullable }
}

fn text(value: &Value, name: &str) -> Result<String, String> {
    match value {
        Value::Text(s) | Value::Json(s) => Ok(s.clone()),
        Value::Null => Err(format!("{name} is NULL")),
        other => Err(format!("{name} is not text: {other:?}")),
    }
}

fn invert(p: &Positions, row: &[Value]) -> Result<Vec<OutputRow>, RowError> {
    let created_at = match &row[p[4]] {
        Value::Timestamptz(t) | Value::Timestamp(t) => *t,
        other => return Err(RowError::Reject(format!("created_at is not a timestamp: {other:?}"))),
    };
    let new = user_rules::NewUser {
        id: text(&row[p[0]], "id").map_err(RowError::Reject)?,
        first_name: text(&row[p[1]], "first_name").map_err(RowError::Reject)?,
        last_name: text(&row[p[2]], "last_name").map_err(RowError::Reject)?,
        email: text(&row[p[3]], "email").map_err(RowError::Reject)?,
        created_at,
        settings: text(&row[p[5]], "settings").map_err(RowError::Reject)?,
    };
    let legacy = user_rules::invert(&new).map_err(RowError::Reject)?;
    Ok(vec![OutputRow {
        table: "users".into(),
        values: vec![
            Value::Int64(legacy.id),
            Value::Text(legacy.name),
            Value::Text(legacy.email),
            // The legacy column has no time zone: the same instant in UTC,
            // as the forward rules read it.
            Value::Timestamp(legacy.created_at),
            Value::Text(legacy.metadata),
        ],
    }])
}

impl Guest for Plugin {
    fn describe(source: TableSchema) -> Result<Vec<TableSchema>, String> {
        let mut positions = [0; 6];
        for (slot, name) in positions.iter_mut().zip(COLUMNS) {
            *slot = source.columns.iter().position(|c| c.name == name).ok_or_else(|| {
                format!(
                    "user-inverse reads the new users' columns {}; {} has no `{name}`",
                    COLUMNS.join(", "),
                    source.name
                )
            })?;
        }
        POSITIONS.with(|p| *p.borrow_mut() = Some(positions));
        Ok(vec![TableSchema {
            name: "users".into(),
            columns: vec![
                column("id", ScalarKind::Int64, false),
                column("name", ScalarKind::Text, true),
                column("email", ScalarKind::Text, true),
                column("created_at", ScalarKind::Timestamp, true),
                column("metadata", ScalarKind::Text, true),
            ],
            primary_key: vec!["id".into()],
        }])
    }

    fn transform_batch(_table: String, rows: Vec<Vec<Value>>) -> Vec<Result<Vec<OutputRow>, RowError>> {
        let Some(p) = POSITIONS.with(|p| *p.borrow()) else {
            let fatal = RowError::Fatal("transform-batch called before describe".into());
            return rows.iter().map(|_| Err(fatal.clone())).collect();
        };
        rows.iter().map(|row| invert(&p, row)).collect()
    }

    fn target_keys(_table: String, key: Vec<Value>) -> Result<Vec<OutputKey>, RowError> {
        let [Value::Text(id)] = key.as_slice() else {
            return Err(RowError::Reject(format!("the new users' key is one text id, not {key:?}")));
        };
        let id = user_rules::legacy_key(id).map_err(RowError::Reject)?;
        Ok(vec![OutputKey { table: "users".into(), key: vec![Value::Int64(id)] }])
    }
}
