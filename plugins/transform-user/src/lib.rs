//! The seed's users transform, exported as `ferry:transform/transform-user`
//! (with `user-key`). The rules live in the `user-rules` crate; this file
//! only maps the contract's records onto them.

fn transform(row: LegacyUser) -> Result<NewUser, RowError> {
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

fn target_key(id: i64) -> Result<String, RowError> {
    Ok(user_rules::target_key(id))
}

ferry_plugin::transform_user!(transform, target_key = target_key);
