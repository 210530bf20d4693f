//! Misbehaving plugins are contained: a panic, an endless loop, unbounded
//! allocation or recursion and a gigantic output each cost one row
//! (dead-lettered with the trap message), never the run — in Rust
//! (`plugins/testing/chaos`) and in Python (`plugins/python/chaos`, with the
//! whole CPython runtime inside the component); and a plugin that tries the
//! world outside through WASI (files, environment, sockets, clock,
//! randomness) gets nothing.

use std::path::{Path, PathBuf};

use crate::support::*;

/// The Python chaos plugin, built from source.
fn python_chaos() -> PathBuf {
    python_plugin("chaos", "wit", "user-transform")
}

/// Migrates 500 rows with the Rust chaos plugin, row 123 set to `trigger`;
/// returns the dead-letter reason recorded for row 123.
async fn contained(trigger: &str, plugin_keys: &str) -> String {
    contained_in(&plugins().chaos, trigger, plugin_keys).await
}

/// [`contained`] with any chaos plugin.
async fn contained_in(plugin: &Path, trigger: &str, plugin_keys: &str) -> String {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, 500).await;
    source.exec(&format!("UPDATE users SET name = '{trigger}' WHERE id = 123")).await;
    let p =
        Pipeline::new(&source.url(), &target.url(), plugin, &format!("{plugin_keys}\n[migrate]\nbatch_size = 100\n"));
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "the run finishes: {run:?}");
    let j = run.json();
    assert_eq!(j["ending"], "completed");
    assert_eq!(j["stats"]["dead_lettered"], invalid_rows(500) + 1, "{run:?}");
    assert_eq!(j["stats"]["loaded"], 500 - invalid_rows(500) - 1);
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

#[tokio::test]
async fn a_python_exception_costs_one_row() {
    let reason = contained_in(&python_chaos(), "chaos:panic", "").await;
    assert!(reason.contains("plugin trapped"), "{reason}");
    assert!(
        reason.contains("RuntimeError: chaos plugin: deliberate panic on row 123"),
        "the traceback is kept: {reason}"
    );
}

#[tokio::test]
async fn a_python_endless_loop_hits_the_cpu_deadline() {
    let started = std::time::Instant::now();
    let reason = contained_in(&python_chaos(), "chaos:loop", "call_timeout_ms = 300").await;
    assert!(reason.contains("CPU deadline of 300 ms"), "{reason}");
    // The looping row costs its deadline in the batch call and once more
    // alone; the run as a whole stays within seconds of that.
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn python_unbounded_allocation_recursion_and_a_gigantic_row_hit_the_caps() {
    for trigger in ["chaos:alloc", "chaos:recurse", "chaos:huge"] {
        let reason = contained_in(&python_chaos(), trigger, "memory_limit_mb = 128").await;
        assert!(reason.contains("plugin trapped"), "{trigger}: {reason}");
    }
}

/// Migrates with the Python chaos plugin; what its two `chaos:escape` rows
/// (ids 3 and 7) saw of the world outside, as they wrote it in `settings`.
async fn escapes(p: &Pipeline, target: &SqliteDb) -> Vec<serde_json::Value> {
    let run = p.ferry(&["migrate", "--json"]);
    assert!([0, 4].contains(&run.code), "{run:?}");
    let settings: Vec<String> =
        sqlx::query_scalar("SELECT settings FROM users WHERE id IN ('user_3', 'user_7') ORDER BY id")
            .fetch_all(&mut target.conn().await)
            .await
            .unwrap();
    assert_eq!(settings.len(), 2, "{run:?}");
    settings.iter().map(|s| serde_json::from_str(s).unwrap()).collect()
}

/// Files, directories, environment, sockets: denied; the clock: frozen at
/// the epoch; randomness: seeded, the same in every instance and run.
#[tokio::test]
async fn a_python_plugin_reaching_outside_gets_nothing() {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (source, target) = (SqliteDb::new(), SqliteDb::new());
        seed_sqlite_legacy(&source, 10).await;
        source.exec("UPDATE users SET name = 'chaos:escape' WHERE id IN (3, 7)").await;
        let p = Pipeline::new(&source.url(), &target.url(), &python_chaos(), "");
        let check = p.ferry(&["check", "--json"]);
        let grants = check.json()["items"].as_array().unwrap().iter().find(|i| i["name"] == "plugin grants").cloned();
        assert_eq!(grants.unwrap()["level"], "ok", "deny-all by default");
        let settings = escapes(&p, &target).await;
        for s in &settings {
            for denied in ["file", "listdir", "socket"] {
                assert!(s[denied].as_str().unwrap().starts_with("denied"), "{denied} was granted: {s}");
            }
            assert_eq!(s["env"], 0, "the environment is empty: {s}");
            assert_eq!(s["time"], 0.0, "the clock is frozen at the epoch: {s}");
        }
        seen.push(settings);
    }
    assert_eq!(seen[0], seen[1], "randomness is seeded: the same rows in every run");
}

/// What a pipeline grants (`[plugin] grants`) is all a plugin gets: the
/// host's clocks and randomness reach it, files, sockets and the
/// environment still do not, and `ferry check` warns that its output may
/// now vary; a grant that does not exist is a configuration error.
#[tokio::test]
async fn granted_clocks_and_randomness_reach_the_plugin_and_nothing_else() {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, 10).await;
    source.exec("UPDATE users SET name = 'chaos:escape' WHERE id IN (3, 7)").await;
    let granted = "grants = [\"clocks\", \"random\"]\n";
    let p = Pipeline::new(&source.url(), &target.url(), &python_chaos(), granted);
    let check = p.ferry(&["check", "--json"]);
    let item =
        check.json()["items"].as_array().unwrap().iter().find(|i| i["name"] == "plugin grants").cloned().unwrap();
    assert_eq!(item["level"], "warn", "{item}");
    assert!(item["detail"].as_str().unwrap().contains("clocks and random"), "{item}");
    let mut runs = Vec::new();
    for target in [&target, &SqliteDb::new()] {
        let p = Pipeline::new(&source.url(), &target.url(), &python_chaos(), granted);
        runs.push(escapes(&p, target).await);
    }
    for s in runs.iter().flatten() {
        assert!(s["time"].as_f64().unwrap() > 1.7e9, "the host's clock: {s}");
        for denied in ["file", "listdir", "socket"] {
            assert!(s[denied].as_str().unwrap().starts_with("denied"), "{denied} was granted: {s}");
        }
        assert_eq!(s["env"], 0, "{s}");
    }
    assert_ne!(runs[0][0]["urandom"], runs[1][0]["urandom"], "the host's randomness differs between runs: {runs:?}");
    let denied = Pipeline::new(&source.url(), &target.url(), &python_chaos(), "grants = [\"files\"]\n");
    let bad = denied.ferry(&["check"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("`files` is not a grant; the grants are clocks and random"), "{bad:?}");
}
