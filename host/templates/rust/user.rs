//! {{name}}: a ferry `transform-user` plugin (the seed's `legacy-user` →
//! `new-user`). `id` → `user_<id>`, the name split at its first space, the
//! e-mail lowercased, `created_at` kept (microseconds), `settings` `{}`; a
//! NULL name, e-mail or creation time is rejected (dead-lettered).

fn transform(row: LegacyUser) -> Result<NewUser, RowError> {
    let reject = |what: &str| RowError::Reject(format!("{what} is NULL"));
    let name = row.name.ok_or_else(|| reject("name"))?;
    let email = row.email.ok_or_else(|| reject("email"))?;
    let created_at = row.created_at.ok_or_else(|| reject("created_at"))?;
    let (first_name, last_name) = name.split_once(' ').unwrap_or((&name, ""));
    Ok(NewUser {
        id: target_key(row.id)?,
        first_name: first_name.to_string(),
        last_name: last_name.to_string(),
        email: email.to_lowercase(),
        created_at,
        settings: "{}".to_string(),
    })
}

fn target_key(id: i64) -> Result<String, RowError> {
    Ok(format!("user_{id}"))
}

ferry_plugin::transform_user!(transform, target_key = target_key);
