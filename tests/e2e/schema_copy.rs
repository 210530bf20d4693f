//! Real schemas, whole: a rental shop written the way applications write
//! schemas (fixtures/rental.sql: an extension's type, enum, domain,
//! composite and range types, sequences used by a DEFAULT without being
//! owned, identity and generated columns, a foreign-key cycle and a
//! self-reference, partitions on two levels, inheritance, triggers that
//! would corrupt the data if they fired on the load, views, a materialized
//! view, functions and a procedure, comments) migrated PostgreSQL to
//! PostgreSQL into an empty database and into one the application already
//! created. Judged by pg_dump's own output of both sides and by every
//! table's rows as PostgreSQL prints them, never by ferry's report.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use crate::tables::tables_pipeline;

const RENTAL: &str = include_str!("fixtures/rental.sql");
const RENTAL_ROWS: &str = include_str!("fixtures/rental_rows.sql");

async fn rental_source() -> PgDb {
    let db = PgDb::new("rental_src").await;
    db.exec(RENTAL).await;
    db.exec(RENTAL_ROWS).await;
    db.exec("ANALYZE").await;
    db
}

/// The whole database: every table, and (`copy = "database"`) every other
/// object, so that both sides' `pg_dump` must be equal.
fn pipeline(source: &PgDb, target: &PgDb, extra: &str) -> Pipeline {
    tables_pipeline(
        &source.url(),
        &target.url(),
        "include = [\"public.*\", \"inventory.*\"]",
        &format!("[schema]\ncopy = \"database\"\n{extra}"),
    )
}

/// `pg_dump --schema-only` of `db` without ferry's own schema (and psql's
/// per-dump `\restrict` key lines).
fn schema_of(db: &PgDb) -> String {
    let out = Command::new("pg_dump")
        .args(["--schema-only", "--exclude-schema=ferry", "--dbname"])
        .arg(db.url())
        .output()
        .expect("run pg_dump");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Creates in `target` what `pg_dump --schema-only` of `source` holds: the
/// schema the new application's migrations made.
fn restore_schema(source: &PgDb, target: &PgDb) {
    let dump = Command::new("pg_dump").args(["--schema-only", "--dbname"]).arg(source.url()).output().unwrap();
    assert!(dump.status.success());
    let mut psql = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "--dbname"])
        .arg(target.url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    psql.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
    assert!(psql.wait().unwrap().success(), "psql could not restore the schema");
}

/// Every table's (and materialized view's) rows of the fixture's schemas:
/// count and md5 of the rows' text in order, by PostgreSQL's own output.
async fn rows_of(db: &PgDb) -> BTreeMap<String, String> {
    let mut c = db.conn().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'm') AND n.nspname IN ('public', 'inventory') ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut rows = BTreeMap::new();
    for table in tables {
        let sig: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) || ' ' || md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) FROM ONLY {table} x"
        )))
        .fetch_one(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"));
        rows.insert(table, sig);
    }
    rows
}

/// What the application's next rows get: ids from sequences owned by their
/// column, identity, and one used by a DEFAULT without being owned.
async fn next_ids(db: &PgDb) -> Vec<i64> {
    vec![
        db.scalar_i64(
            "INSERT INTO customer (store_id, first_name, last_name) VALUES (1, 'New', 'Customer') RETURNING customer_id::int8",
        )
        .await,
        db.scalar_i64(
            "INSERT INTO rental (rented_at, item_id, customer_id, staff_id) \
             VALUES ('2025-01-01 00:00:00+00', 1, 100, 1) RETURNING invoice",
        )
        .await,
        db.scalar_i64("INSERT INTO payment (customer_id, staff_id, amount, paid_at) VALUES (100, 1, 1, now()) RETURNING payment_id")
            .await,
        db.scalar_i64("INSERT INTO store (manager_staff_id, address_id) VALUES (1, 1) RETURNING store_id::int8").await,
        db.scalar_i64("INSERT INTO event_log (at, message) VALUES (now(), 'x') RETURNING event_id").await,
        // The audit trigger exists and fires after the migration.
        db.scalar_i64("SELECT count(*) FROM customer_audit").await,
    ]
}

/// The details of `check --json`'s failed items, one per line.
fn failures(check: &Run) -> String {
    let report = check.json();
    let items = report["items"].as_array().expect("items");
    items
        .iter()
        .filter(|i| i["level"] == "fail")
        .map(|i| i["detail"].as_str().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_ok(run: &Run, what: &str) {
    assert_eq!(run.code, 0, "{what}: {run:?}");
}

#[tokio::test]
async fn a_real_schema_arrives_whole_in_an_empty_database() {
    let source = rental_source().await;
    let target = PgDb::new("rental_empty").await;
    let p = pipeline(&source, &target, "");

    let check = p.ferry(&["check", "--json"]);
    assert_ok(&check, "check");
    let report = check.json();
    let schema = report["items"].as_array().unwrap().iter().find(|i| i["name"] == "schema").expect("a schema item");
    let detail = schema["detail"].as_str().unwrap();
    for kind in ["1 extension", "1 domain", "17 table", "5 table attach", "3 trigger", "15 fk constraint"] {
        assert!(detail.contains(kind), "check names {kind}: {detail}");
    }
    assert_eq!(target.scalar_i64("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").await, 0);

    let migrate = p.ferry(&["migrate", "--json"]);
    assert_ok(&migrate, "migrate");
    assert_eq!(schema_of(&source), schema_of(&target), "pg_dump --schema-only of both sides");
    assert_eq!(rows_of(&source).await, rows_of(&target).await, "every table's rows");
    let v = p.ferry(&["validate", "--json"]);
    assert_ok(&v, "validate");
    assert_eq!(next_ids(&source).await, next_ids(&target).await, "the application's next ids");
}

#[tokio::test]
async fn a_schema_the_application_made_loads_without_a_hang_or_a_trigger_firing() {
    let source = rental_source().await;
    let target = PgDb::new("rental_made").await;
    restore_schema(&source, &target);
    let p = pipeline(&source, &target, "");

    let check = p.ferry(&["check"]);
    assert_ok(&check, "check");
    assert!(check.stdout.contains("target table exists"), "{check:?}");

    // The foreign-key cycle (store ⇄ staff) once made this wait for ever.
    let mut child = p.spawn(&["migrate", "--json"]);
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(180) {
            child.kill().ok();
            panic!("ferry migrate into the application's schema did not end in 3 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // No trigger fired on the load: the audit table holds the source's
    // rows only, and no last_update was rewritten.
    assert_eq!(rows_of(&source).await, rows_of(&target).await, "every table's rows");
    assert_eq!(schema_of(&source), schema_of(&target), "the application's schema is left as it was");
    assert_eq!(next_ids(&source).await, next_ids(&target).await, "the application's next ids");
}

#[tokio::test]
async fn a_schema_copy_killed_at_any_moment_resumes_exactly() {
    let source = rental_source().await;
    let target = PgDb::new("rental_killed").await;
    let p = pipeline(&source, &target, "");
    let kills = kill_until_done(|| p.command(&["migrate"]), &[0]);
    assert!(kills > 0, "the run was never interrupted");
    assert_eq!(schema_of(&source), schema_of(&target), "pg_dump --schema-only of both sides");
    assert_eq!(rows_of(&source).await, rows_of(&target).await, "every table's rows");
    assert_eq!(next_ids(&source).await, next_ids(&target).await, "the application's next ids");
}

#[tokio::test]
async fn check_says_before_anything_is_written_what_would_stop_the_migration() {
    let source = rental_source().await;

    // Without the schema copy, the tables' types are missing in the target.
    let target = PgDb::new("rental_notypes").await;
    let p = tables_pipeline(
        &source.url(),
        &target.url(),
        "include = [\"public.*\", \"inventory.*\"]\nkeyless = \"ctid\"",
        "[schema]\ncopy = \"none\"\n",
    );
    let check = p.ferry(&["check", "--json"]);
    assert_ne!(check.code, 0, "{check:?}");
    let failed = failures(&check);
    for missing in ["year", "mpaa_rating", "citext", "postal"] {
        assert!(failed.contains(&format!("type {missing},")), "check names type {missing}: {failed}");
    }
    let migrate = p.ferry(&["migrate"]);
    assert_ne!(migrate.code, 0, "{migrate:?}");
    assert!(migrate.stderr.contains("which the target lacks"), "{migrate:?}");
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").await,
        0,
        "migrate wrote nothing"
    );

    // A role that may not turn the target's foreign-key checks off, into
    // the application's schema with its cycle: refused, naming the cycle.
    let made = PgDb::new("rental_cycle").await;
    restore_schema(&source, &made);
    let role = format!("ferry_t_loader_{}_{}", std::process::id(), rand::random::<u32>());
    made.exec(&format!(
        "CREATE ROLE {role} LOGIN; GRANT ALL ON SCHEMA public, inventory TO {role}; \
         GRANT ALL ON ALL TABLES IN SCHEMA public, inventory TO {role}; \
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public, inventory TO {role}; GRANT CREATE ON DATABASE \"{}\" TO {role}",
        made.name
    ))
    .await;
    let url = made.url().replacen("postgres@", &format!("{role}@"), 1);
    let p = tables_pipeline(&source.url(), &url, "include = [\"public.*\", \"inventory.*\"]", "");
    // (The default scope: the role needs nothing beyond the tables.)
    let check = p.ferry(&["check", "--json"]);
    let migrate = p.ferry(&["migrate"]);
    made.exec(&format!(
        "REASSIGN OWNED BY {role} TO postgres; DROP OWNED BY {role}; \
         DO $$ BEGIN PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'; END $$"
    ))
    .await;
    made.exec(&format!("DROP ROLE {role}")).await;
    assert_ne!(check.code, 0, "{check:?}");
    let failed = failures(&check);
    assert!(
        failed.contains("public.store → public.staff → public.store")
            || failed.contains("public.staff → public.store → public.staff"),
        "check names the cycle: {failed}"
    );
    assert_ne!(migrate.code, 0, "{migrate:?}");
    assert_eq!(made.scalar_i64("SELECT count(*) FROM store").await, 0, "migrate wrote nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_survives_its_target_crashing_twice_and_ends_exact() {
    let source = rental_source().await;
    // Enough rows for the crashes to land mid-copy.
    source
        .exec(
            "CREATE TABLE inventory.stock_move (id bigint PRIMARY KEY, item_id int NOT NULL REFERENCES inventory.item, \
             moved_at timestamptz NOT NULL, note text); \
             INSERT INTO inventory.stock_move SELECT g, 1 + g % 900, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 s', \
             md5(g::text) || repeat(' note', g % 20) FROM generate_series(1, 300000) g; ANALYZE inventory.stock_move",
        )
        .await;
    let cluster = crate::cluster::Cluster::start();
    let target_url = format!("{}/postgres", cluster.url());
    let p = tables_pipeline(
        &source.url(),
        &target_url,
        "include = [\"public.*\", \"inventory.*\"]",
        "[migrate]\nbatch_size = 2000\n\n[schema]\ncopy = \"database\"\n",
    );
    let mut child = p.spawn(&["migrate"]);
    let loaded = || async {
        let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&target_url).await else { return 0 };
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(sum(extracted), 0)::int8 FROM ferry.table_progress WHERE table_name = 'inventory.stock_move'",
        )
        .fetch_one(&mut c)
        .await
        .unwrap_or(0)
    };
    // Twice, once its rows are arriving: the server dies, comes back a
    // second later; the same process must carry the run to its end.
    let mut seen = 0;
    for crash in 0..2 {
        let started = std::time::Instant::now();
        loop {
            let now = loaded().await;
            if now > seen {
                seen = now;
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                child.kill().ok();
                let out = child.wait_with_output().unwrap();
                panic!("no progress before crash {crash}: {}", String::from_utf8_lossy(&out.stderr));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster.crash(Duration::from_secs(1));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.matches("resuming the run").count() >= 2, "both crashes were survived: {stderr}");
    assert!(seen < 300_000, "the crashes landed mid-copy ({seen} rows in)");
    let target = target_db(&cluster);
    assert_eq!(rows_of(&source).await, rows_of(&target).await, "every table's rows, once");
    assert_eq!(schema_of(&source), schema_of(&target), "pg_dump --schema-only of both sides");
}

/// The throwaway cluster's `postgres` database, read like a test database
/// (never dropped: the cluster goes with the test).
fn target_db(cluster: &crate::cluster::Cluster) -> PgDb {
    PgDb::on(&cluster.url(), "postgres")
}

/// The default scope: the pipeline's tables and what they need and own —
/// never the objects of tables left out, nor free-standing ones.
#[tokio::test]
async fn the_default_scope_takes_what_the_tables_need_and_leaves_the_rest() {
    let source = rental_source().await;
    let target = PgDb::new("rental_scope").await;
    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"inventory.*\"]", "");
    let check = p.ferry(&["check", "--json"]);
    assert_ok(&check, "check");
    let report = check.json();
    let left_out: Vec<&str> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == "schema left out")
        .filter_map(|i| i["detail"].as_str())
        .collect();
    assert!(
        left_out.iter().any(|d| d.contains("item_store_id_fkey")),
        "the foreign key to store is named: {left_out:?}"
    );
    assert_ok(&p.ferry(&["migrate"]), "migrate");
    let exists = |what: &'static str| {
        let target = &target;
        async move { target.scalar_i64(&format!("SELECT count(*) FROM ({what}) x WHERE x IS NOT NULL")).await == 1 }
    };
    // What the tables need: their schema, types, the trigger's function.
    for needed in [
        "SELECT to_regnamespace('inventory')",
        "SELECT to_regtype('public.mpaa_rating')",
        "SELECT to_regtype('public.year')",
        "SELECT to_regtype('public.price_band')",
        "SELECT to_regprocedure('public.touch_last_update()')",
        "SELECT tgname FROM pg_trigger WHERE tgname = 'film_touched'",
        "SELECT conname FROM pg_constraint WHERE conname = 'item_film_id_fkey'",
        "SELECT to_regclass('inventory.film_fulltext_idx')",
    ] {
        assert!(exists(needed).await, "created: {needed}");
    }
    // What they neither need nor own.
    for other in [
        "SELECT to_regclass('public.store')",
        "SELECT to_regclass('public.customer_list')",
        "SELECT to_regtype('public.citext')",
        "SELECT to_regprocedure('public.close_rental(integer)')",
        "SELECT to_regprocedure('public.audit_customer()')",
        "SELECT conname FROM pg_constraint WHERE conname = 'item_store_id_fkey'",
    ] {
        assert!(!exists(other).await, "left alone: {other}");
    }
    assert_eq!(target.scalar_i64("SELECT count(*) FROM inventory.item").await, 900);
}

/// Rolling back a run that created the schema leaves the target as it was:
/// its rows go, then what its schema copy created, last created first; a
/// new run creates it all again.
#[tokio::test]
async fn rolling_back_a_run_drops_what_its_schema_copy_created() {
    let source = rental_source().await;
    let target = PgDb::new("rental_undo").await;
    let empty = PgDb::new("rental_none").await;
    let p = pipeline(&source, &target, "");
    assert_ok(&p.ferry(&["migrate"]), "migrate");
    let mut c = target.conn().await;
    let run_id: String = sqlx::query_scalar("SELECT run_id FROM ferry.runs").fetch_one(&mut c).await.unwrap();
    let rollback = p.ferry(&["rollback", &run_id]);
    assert_ok(&rollback, "rollback");
    assert!(rollback.stdout.contains("dropped what the run created"), "{rollback:?}");
    assert_eq!(schema_of(&target), schema_of(&empty), "nothing of the run's schema is left");
    // A new run makes it all again.
    assert_ok(&p.ferry(&["migrate"]), "migrate again");
    assert_eq!(schema_of(&source), schema_of(&target));
    assert_eq!(rows_of(&source).await, rows_of(&target).await);
}
