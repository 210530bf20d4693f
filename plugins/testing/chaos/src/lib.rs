//! A plugin that misbehaves on purpose, so the test-suite can prove the host
//! contains it. It applies the seed's rules, except for rows whose `name` is
//! one of these triggers:
//!
//! * `chaos:panic` — panics (a trap);
//! * `chaos:loop` — never returns (the host's CPU deadline must stop it);
//! * `chaos:alloc` — allocates without bound (the memory cap must stop it);
//! * `chaos:fatal` — returns `fatal`, which must stop the run cleanly;
//! * `chaos:random` — draws a number from WASI's randomness (std's hash
//!   seed) and puts it in the name, so the host's seeded `wasi:random` can
//!   be checked: the same call gives the same row.

fn apply(mut row: LegacyUser) -> Result<NewUser, RowError> {
    match row.name.as_deref() {
        Some("chaos:random") => {
            use std::hash::BuildHasher;
            let drawn = std::collections::hash_map::RandomState::new().hash_one(row.id);
            row.name = Some(format!("random{drawn:x} value"));
        }
        Some("chaos:panic") => panic!("chaos plugin: deliberate panic on row {}", row.id),
        Some("chaos:loop") => {
            let mut x: u64 = row.id as u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        Some("chaos:alloc") => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Some("chaos:fatal") => {
            return Err(RowError::Fatal(format!("chaos plugin: deliberate fatal on row {}", row.id)));
        }
        _ => {}
    }
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

// No `user-key`: the fixture for a transform-user plugin without one.
ferry_plugin::transform_user!(apply);
