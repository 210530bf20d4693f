//! The seed's users transform, exported as `ferry:transform/transform-user`.
//! The rules live in the `user-rules` crate; this file only crosses the WIT
//! border.

wit_bindgen::generate!({
    path: "../../wit",
    world: "user-transform-keyed",
});

use exports::ferry::transform::transform_user::{Guest, LegacyUser, NewUser, RowError};

struct Plugin;

fn apply(row: LegacyUser) -> Result<NewUser, RowError> {
    let legacy = user_rules::Legacy {
        id: row.id,
        name: row.name.as_deref(),
        email: row.email.as_deref(),
        created_at: row.created_at,
        metadata: row.metadata.as_deref(),
    };
    user_rules::transform(&legacy)
        .map(|u| NewUser {
            id: u.id,
            first_name: u.first_name,
            last_name: u.last_name,
            email: u.email,
            created_at: u.created_at,
            settings: u.settings,
        })
        .map_err(RowError::Reject)
}

impl Guest for Plugin {
    fn transform(row: LegacyUser) -> Result<NewUser, RowError> {
        apply(row)
    }

    fn transform_batch(rows: Vec<LegacyUser>) -> Vec<Result<NewUser, RowError>> {
        rows.into_iter().map(apply).collect()
    }
}

impl exports::ferry::transform::user_key::Guest for Plugin {
    fn target_key(id: i64) -> Result<String, RowError> {
        Ok(user_rules::target_key(id))
    }
}

export!(Plugin);
