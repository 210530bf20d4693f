//! Misbehaving plugins are contained: a panic, an endless loop and unbounded
//! allocation each cost one row (dead-lettered with the trap message), never
//! the run.

use crate::support::*;

/// Migrates 500 rows with the chaos plugin, row 123 set to `trigger`;
/// returns the dead-letter reason recorded for row 250.
async fn contained(trigger: &str, plugin_keys: &str) -> String {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, 500).await;
    source.exec(&format!("UPDATE users SET name = '{trigger}' WHERE id = 123")).await;
    let p = Pipeline::new(
        &source.url(),
        &target.url(),
        &plugins().chaos,
        &format!("{plugin_keys}\n[migrate]\nbatch_size = 100\n"),
    );
    let run = p.ferry(&["migrate", "--json", "--create-table"]);
    assert_eq!(run.code, 4, "the run finishes: {run:?}");
    let j = run.json();
    assert_eq!(j["ending"], "completed");
    assert_eq!(j["stats"]["dead_lettered"], invalid_rows(500) + 1, "{run:?}");
    assert_eq!(j["stats"]["loaded"], 500 - invalid_rows(500) - 1);
    assert!(j["traps"].as_u64().unwrap() >= 1);
    let mut c = target.conn().await;
    let (kind, reason): (String, String) =
        sqlx::query_as("SELECT kind, reason FROM ferry_dead_letters WHERE source_key = '123'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(kind, "trap");
    // Its neighbours in the same batch were loaded by a fresh instance.
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE id IN ('user_122', 'user_124')").await, 2);
    reason
}

#[tokio::test]
async fn a_panicking_plugin_costs_one_row() {
    let reason = contained("chaos:panic", "").await;
    assert!(reason.contains("plugin trapped"), "{reason}");
    assert!(reason.contains("deliberate panic on row 123"), "the panic message is kept: {reason}");
}

#[tokio::test]
async fn an_endless_loop_hits_the_cpu_deadline() {
    let reason = contained("chaos:loop", "call_timeout_ms = 300").await;
    assert!(reason.contains("CPU deadline of 300 ms"), "{reason}");
}

#[tokio::test]
async fn unbounded_allocation_hits_the_memory_cap() {
    let reason = contained("chaos:alloc", "memory_limit_mb = 16").await;
    assert!(reason.contains("plugin trapped") && reason.contains("memory"), "{reason}");
}
