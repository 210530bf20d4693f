//! The one place `bindgen!` runs: the WIT worlds `user-transform`
//! (`ferry:transform@0.1.0`) and `row-transform` (`@0.2.0`, in [`row`]),
//! and the conversions between their generated types and ferry's plain
//! `model` types. Conversions move the strings (no copies).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "user-transform",
});

pub use exports::ferry::transform::transform_user as wit;
pub use ferry::transform::types::RowError;

use crate::model::{LegacyUser, NewUser, Outcome};

/// The fully qualified name of the interface a plugin must export.
pub const INTERFACE: &str = "ferry:transform/transform-user@0.1.0";

/// The optional interface that maps source keys to target keys.
pub const KEY_INTERFACE: &str = "ferry:transform/user-key@0.1.0";

pub fn to_wit(row: LegacyUser) -> wit::LegacyUser {
    wit::LegacyUser { id: row.id, name: row.name, email: row.email, created_at: row.created_at, metadata: row.metadata }
}

pub fn from_wit(row: wit::LegacyUser) -> LegacyUser {
    LegacyUser { id: row.id, name: row.name, email: row.email, created_at: row.created_at, metadata: row.metadata }
}

pub fn outcome(result: Result<wit::NewUser, RowError>) -> Outcome {
    match result {
        Ok(u) => Outcome::Row(NewUser {
            id: u.id,
            first_name: u.first_name,
            last_name: u.last_name,
            email: u.email,
            created_at: u.created_at,
            settings: u.settings,
        }),
        Err(RowError::Reject(reason)) => Outcome::Rejected(reason),
        Err(RowError::Fatal(reason)) => Outcome::Fatal(reason),
    }
}

/// `ferry:transform@0.2.0`, world `row-transform`.
pub mod row {
    wasmtime::component::bindgen!({
        path: "../wit/row",
        world: "row-transform",
    });

    pub use ferry::transform::types::{
        Column, ColumnType, Interval, OutputRow, RowError, ScalarKind, TableSchema, Unsupported, Value,
    };

    /// The fully qualified name of the interface a row plugin exports.
    pub const INTERFACE: &str = "ferry:transform/transform-row@0.2.0";
}
