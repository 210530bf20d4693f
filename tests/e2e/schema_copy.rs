//! Real schemas, whole: two applications written the way applications and
//! their ORMs write schemas — a rental shop (fixtures/rental.sql: an
//! extension's type, enum, domain, composite and range types, sequences
//! used by a DEFAULT without being owned, identity and generated columns, a
//! deferrable foreign-key cycle and a self-reference, partitions on two
//! levels, inheritance, triggers that would corrupt the data if they fired
//! on the load, views, a materialized view, functions and a procedure,
//! comments) and a multi-tenant tracker (fixtures/tracker.sql: three
//! extensions, an EXCLUDE constraint, GENERATED ALWAYS identities, a
//! sequence shared by two schemas' tables, a cycle that is not deferrable,
//! counter and sum triggers, a partitioned table with a generated column)
//! — migrated PostgreSQL to PostgreSQL into an empty database and into one
//! the application already created. Judged by pg_dump's own output of both
//! sides and by every table's rows as PostgreSQL prints them, never by
//! ferry's report.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use crate::tables::tables_pipeline;

/// A schema and its rows, as an application wrote them.
struct Fixture {
    name: &'static str,
    schema: &'static str,
    rows: &'static str,
    /// The schemas its tables live in.
    schemas: &'static [&'static str],
    /// What the application does next, each statement returning one int8:
    /// the ids its next rows get (from sequences owned by their column,
    /// identities, sequences a DEFAULT uses without owning them), and
    /// what its triggers maintain.
    next: &'static [&'static str],
    /// What `check` lists of the schema copy of the whole database.
    check_names: &'static [&'static str],
}

const RENTAL: Fixture = Fixture {
    name: "rental",
    schema: include_str!("fixtures/rental.sql"),
    rows: include_str!("fixtures/rental_rows.sql"),
    schemas: &["public", "inventory"],
    next: &[
        "INSERT INTO customer (store_id, first_name, last_name) VALUES (1, 'New', 'Customer') RETURNING customer_id::int8",
        "INSERT INTO rental (rented_at, item_id, customer_id, staff_id) \
         VALUES ('2025-01-01 00:00:00+00', 1, 100, 1) RETURNING invoice",
        "INSERT INTO payment (customer_id, staff_id, amount, paid_at) VALUES (100, 1, 1, now()) RETURNING payment_id",
        "INSERT INTO store (manager_staff_id, address_id) VALUES (1, 1) RETURNING store_id::int8",
        "INSERT INTO event_log (at, message) VALUES (now(), 'x') RETURNING event_id",
        // The audit trigger exists and fires after the migration.
        "SELECT count(*) FROM customer_audit",
    ],
    check_names: &["1 extension", "1 domain", "17 table", "5 table attach", "3 trigger", "15 fk constraint"],
};

const TRACKER: Fixture = Fixture {
    name: "tracker",
    schema: include_str!("fixtures/tracker.sql"),
    rows: include_str!("fixtures/tracker_rows.sql"),
    schemas: &["public", "billing"],
    next: &[
        // What the counter and sum triggers keep: 0 unless one fired twice.
        "SELECT (SELECT count(*) FROM projects p \
                 WHERE p.issue_count <> (SELECT count(*) FROM issues i WHERE i.project_id = p.id)) \
              + (SELECT count(*) FROM billing.invoices v \
                 WHERE v.subtotal <> (SELECT coalesce(sum(l.amount), 0) FROM billing.invoice_lines l \
                                      WHERE l.invoice_id = v.id))",
        "INSERT INTO organizations (name, slug) SELECT 'New organization', 'new-' || count(*) FROM organizations \
         RETURNING id",
        "INSERT INTO users (organization_id, email) SELECT 1, 'new' || count(*) || '@example.com' FROM users RETURNING id",
        "INSERT INTO projects (organization_id, slug, name) SELECT 1, 'new-' || count(*), 'New' FROM projects \
         RETURNING id::int8",
        "INSERT INTO issues (organization_id, project_id, title, reporter_id) VALUES (1, 1, 'New issue', 4) RETURNING id",
        "INSERT INTO issues (organization_id, project_id, title, reporter_id) VALUES (1, 1, 'New issue', 4) \
         RETURNING public_id",
        "INSERT INTO billing.invoices (organization_id) VALUES (1) RETURNING public_id",
        "INSERT INTO comments (issue_id, body) VALUES (1, 'New comment') RETURNING id",
        "INSERT INTO billing.subscriptions (organization_id, plan_code, period) VALUES (4, 'free', 'empty') \
         RETURNING id::int8",
        "SELECT issue_count::int8 FROM projects WHERE id = 1",
    ],
    check_names: &["3 extension", "2 domain", "16 table", "5 table attach", "4 trigger", "20 fk constraint"],
};

impl Fixture {
    async fn source(&self) -> PgDb {
        let db = PgDb::new(&format!("{}_src", self.name)).await;
        self.load(&db).await;
        db
    }

    async fn load(&self, db: &PgDb) {
        db.exec(self.schema).await;
        db.exec(self.rows).await;
        db.exec("ANALYZE").await;
    }

    /// The whole database: every table, and (`copy = "database"`) every
    /// other object, so that both sides' `pg_dump` must be equal.
    fn pipeline(&self, source: &PgDb, target: &PgDb, extra: &str) -> Pipeline {
        let include: Vec<String> = self.schemas.iter().map(|s| format!("\"{s}.*\"")).collect();
        tables_pipeline(
            &source.url(),
            &target.url(),
            &format!("include = [{}]", include.join(", ")),
            &format!("[schema]\ncopy = \"database\"\n{extra}"),
        )
    }

    /// Every table's (and materialized view's) rows: count and md5 of the
    /// rows' text in order, by PostgreSQL's own output.
    async fn rows_of(&self, db: &PgDb) -> BTreeMap<String, String> {
        let mut c = db.conn().await;
        let schemas: Vec<String> = self.schemas.iter().map(|s| s.to_string()).collect();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm') AND n.nspname = ANY($1) ORDER BY 1",
        )
        .bind(&schemas)
        .fetch_all(&mut c)
        .await
        .unwrap();
        let mut rows = BTreeMap::new();
        for table in tables {
            let sig: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) || ' ' || md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) \
                 FROM ONLY {table} x"
            )))
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
            rows.insert(table, sig);
        }
        rows
    }

    /// What the application's next statements return ([`Fixture::next`]).
    async fn next_ids(&self, db: &PgDb) -> Vec<i64> {
        self.next_ids_without(db, None).await
    }

    /// [`Fixture::next_ids`] but the statements naming `table`.
    async fn next_ids_without(&self, db: &PgDb, table: Option<&str>) -> Vec<i64> {
        let mut ids = Vec::new();
        for statement in self.next.iter().filter(|s| table.is_none_or(|t| !s.contains(t))) {
            ids.push(db.scalar_i64(statement).await);
        }
        ids
    }
}

/// `pg_dump --schema-only` of `db` without ferry's own schema (and psql's
/// per-dump `\restrict` key lines).
fn schema_of(db: &PgDb) -> String {
    schema_without(db, &[])
}

/// [`schema_of`] without what `excluded` names (pg_dump's options).
fn schema_without(db: &PgDb, excluded: &[&str]) -> String {
    let out = Command::new("pg_dump")
        .args(["--schema-only", "--exclude-schema=ferry", "--no-publications", "--no-subscriptions"])
        .args(excluded)
        .arg("--dbname")
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

/// Both sides' `pg_dump --schema-only` are equal; else the lines only one
/// side has.
fn assert_same_schema(source: &PgDb, target: &PgDb, what: &str) {
    assert_same_schema_without(source, target, &[], what);
}

fn assert_same_schema_without(source: &PgDb, target: &PgDb, excluded: &[&str], what: &str) {
    let (want, got) = (schema_without(source, excluded), schema_without(target, excluded));
    if want != got {
        let only = |a: &str, b: &str| -> Vec<String> {
            let b: std::collections::HashSet<&str> = b.lines().collect();
            a.lines().filter(|l| !b.contains(l)).map(str::to_string).collect()
        };
        panic!(
            "{what}: pg_dump --schema-only differs\nonly in the source:\n{}\nonly in the target:\n{}",
            only(&want, &got).join("\n"),
            only(&got, &want).join("\n")
        );
    }
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

/// Into an empty database: `check` lists the copy before anything is
/// written, `migrate` makes both sides' pg_dump and rows equal, `validate`
/// agrees, and the application's next statements return the same.
async fn arrives_whole_in_an_empty_database(fixture: &Fixture) {
    let source = fixture.source().await;
    let target = PgDb::new(&format!("{}_empty", fixture.name)).await;
    let p = fixture.pipeline(&source, &target, "");

    let check = p.ferry(&["check", "--json"]);
    assert_ok(&check, "check");
    let report = check.json();
    let schema = report["items"].as_array().unwrap().iter().find(|i| i["name"] == "schema").expect("a schema item");
    let detail = schema["detail"].as_str().unwrap();
    for kind in fixture.check_names {
        assert!(detail.contains(kind), "check names {kind}: {detail}");
    }
    assert_eq!(target.scalar_i64("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").await, 0);

    let migrate = p.ferry(&["migrate", "--json"]);
    assert_ok(&migrate, "migrate");
    assert_same_schema(&source, &target, "pg_dump --schema-only of both sides");
    assert_eq!(fixture.rows_of(&source).await, fixture.rows_of(&target).await, "every table's rows");
    let v = p.ferry(&["validate", "--json"]);
    assert_ok(&v, "validate");
    assert_eq!(fixture.next_ids(&source).await, fixture.next_ids(&target).await, "the application's next ids");
}

#[tokio::test]
async fn a_rental_shop_arrives_whole_in_an_empty_database() {
    arrives_whole_in_an_empty_database(&RENTAL).await;
}

#[tokio::test]
async fn a_tracker_arrives_whole_in_an_empty_database() {
    arrives_whole_in_an_empty_database(&TRACKER).await;
}

/// Into the schema the new application's migrations made (pg_dump
/// --schema-only of the source): its foreign-key cycle once made this wait
/// for ever; no trigger may fire on the load (counts and sums would
/// double, `last_update` be rewritten).
async fn loads_into_the_schema_the_application_made(fixture: &Fixture) {
    let source = fixture.source().await;
    let target = PgDb::new(&format!("{}_made", fixture.name)).await;
    restore_schema(&source, &target);
    let p = fixture.pipeline(&source, &target, "");

    let check = p.ferry(&["check"]);
    assert_ok(&check, "check");
    assert!(check.stdout.contains("target table exists"), "{check:?}");

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
    assert_eq!(fixture.rows_of(&source).await, fixture.rows_of(&target).await, "every table's rows");
    assert_same_schema(&source, &target, "the application's schema is left as it was");
    assert_eq!(fixture.next_ids(&source).await, fixture.next_ids(&target).await, "the application's next ids");
}

#[tokio::test]
async fn a_rental_shop_loads_into_the_schema_the_application_made() {
    loads_into_the_schema_the_application_made(&RENTAL).await;
}

#[tokio::test]
async fn a_tracker_loads_into_the_schema_the_application_made() {
    loads_into_the_schema_the_application_made(&TRACKER).await;
}

/// kill -9 at random moments until a run completes: exact.
async fn killed_at_any_moment_resumes_exactly(fixture: &Fixture) {
    let source = fixture.source().await;
    let target = PgDb::new(&format!("{}_killed", fixture.name)).await;
    let p = fixture.pipeline(&source, &target, "");
    let kills = kill_until_done(|| p.command(&["migrate"]), &[0]);
    assert!(kills > 0, "the run was never interrupted");
    assert_same_schema(&source, &target, "pg_dump --schema-only of both sides");
    assert_eq!(fixture.rows_of(&source).await, fixture.rows_of(&target).await, "every table's rows");
    assert_eq!(fixture.next_ids(&source).await, fixture.next_ids(&target).await, "the application's next ids");
}

#[tokio::test]
async fn a_rental_shop_killed_at_any_moment_resumes_exactly() {
    killed_at_any_moment_resumes_exactly(&RENTAL).await;
}

#[tokio::test]
async fn a_tracker_killed_at_any_moment_resumes_exactly() {
    killed_at_any_moment_resumes_exactly(&TRACKER).await;
}

#[tokio::test]
async fn check_says_before_anything_is_written_what_would_stop_the_migration() {
    let source = RENTAL.source().await;

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

    // The whole database, with an extension only a superuser may create
    // (pg_stat_statements: in most production databases), into a database
    // its owner may fill but is no superuser: refused, naming the fix.
    source.exec("CREATE EXTENSION pg_stat_statements").await;
    let role = format!("ferry_t_owner_{}_{}", std::process::id(), rand::random::<u32>());
    let owned = PgDb::new("rental_owned").await;
    owned.exec(&format!("CREATE ROLE {role} LOGIN; ALTER DATABASE \"{}\" OWNER TO {role}", owned.name)).await;
    let server = pg_server().replacen("postgres@", &format!("{role}@"), 1);
    let p = RENTAL.pipeline(&source, &PgDb::on(&server, &owned.name), "");
    let check = p.ferry(&["check", "--json"]);
    let migrate = p.ferry(&["migrate"]);
    let written = owned.scalar_i64("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").await;
    owned.exec(&format!("ALTER DATABASE \"{}\" OWNER TO postgres; DROP OWNED BY {role}", owned.name)).await;
    owned
        .exec(&format!(
            "DO $$ BEGIN PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'; END $$"
        ))
        .await;
    owned.exec(&format!("DROP ROLE {role}")).await;
    assert_ne!(check.code, 0, "{check:?}");
    let failed = failures(&check);
    assert!(
        failed.contains("extension pg_stat_statements can only be created by a superuser"),
        "check names the extension and the fix: {failed}"
    );
    assert_ne!(migrate.code, 0, "{migrate:?}");
    assert!(migrate.stderr.contains("pg_stat_statements"), "{migrate:?}");
    assert_eq!(written, 0, "migrate wrote nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_survives_its_target_crashing_twice_and_ends_exact() {
    let source = RENTAL.source().await;
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
    assert_eq!(RENTAL.rows_of(&source).await, RENTAL.rows_of(&target).await, "every table's rows, once");
    assert_same_schema(&source, &target, "pg_dump --schema-only of both sides");
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
    let source = RENTAL.source().await;
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
    let source = RENTAL.source().await;
    let target = PgDb::new("rental_undo").await;
    let empty = PgDb::new("rental_none").await;
    let p = RENTAL.pipeline(&source, &target, "");
    assert_ok(&p.ferry(&["migrate"]), "migrate");
    let mut c = target.conn().await;
    let run_id: String = sqlx::query_scalar("SELECT run_id FROM ferry.runs").fetch_one(&mut c).await.unwrap();
    let rollback = p.ferry(&["rollback", &run_id]);
    assert_ok(&rollback, "rollback");
    assert!(rollback.stdout.contains("dropped what the run created"), "{rollback:?}");
    assert_eq!(schema_of(&target), schema_of(&empty), "nothing of the run's schema is left");
    // A new run makes it all again.
    assert_ok(&p.ferry(&["migrate"]), "migrate again");
    assert_same_schema(&source, &target, "migrated again");
    assert_eq!(RENTAL.rows_of(&source).await, RENTAL.rows_of(&target).await);
}

/// `ferry sync` carries the schema like `ferry migrate` (its initial load
/// is a migration), then applies what the application keeps writing: ids
/// from a sequence no column owns, rows written by the source's triggers
/// (which must not fire again on the target: the audit table would hold
/// every change twice, `last_update` would be rewritten). When the stream
/// stops, every sequence the tables use stands where the source's does.
/// (The inheritance parent and its keyless child stay out: a stream
/// applies by key.)
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_carries_the_schema_and_leaves_no_trigger_or_sequence_behind() {
    let cluster = crate::cluster::Cluster::start();
    let source = target_db(&cluster);
    RENTAL.load(&source).await;
    let target = PgDb::new("rental_sync").await;
    let p = tables_pipeline(
        &source.url(),
        &target.url(),
        "include = [\"public.*\", \"inventory.*\"]\nexclude = [\"public.event_log\", \"public.event_log_archive\"]",
        "[schema]\ncopy = \"database\"\n",
    );
    assert_ok(&p.ferry(&["sync", "--idle-exit", "1"]), "the initial load");
    let outside = ["--exclude-table=public.event_log*"];
    assert_same_schema_without(&source, &target, &outside, "the schema around the stream's tables");

    // The application goes on: new customers (ids from the sequence their
    // DEFAULT calls without owning it; each audited by the trigger),
    // renamed ones (audited again), rentals with invoice numbers from
    // another such sequence, payments into every partition.
    source
        .exec(
            "INSERT INTO customer (store_id, first_name, last_name, email) \
               SELECT 1 + g % 2, 'Streamed', 'Customer ' || g, 'S' || g || '@Example.com' FROM generate_series(1, 40) g; \
             UPDATE customer SET last_name = last_name || ' Jr' WHERE customer_id % 10 = 3; \
             INSERT INTO rental (rented_at, item_id, customer_id, staff_id) \
               SELECT timestamptz '2025-03-01 00:00:00+00' + g * interval '1 hour', 1 + g, 100 + g, 1 + g % 3 \
               FROM generate_series(1, 25) g; \
             INSERT INTO payment (customer_id, staff_id, amount, paid_at) \
               SELECT 100 + g, 1, g * 1.5, timestamptz '2024-01-01 00:00:00+00' + g * interval '3 days' \
               FROM generate_series(1, 30) g; \
             UPDATE staff SET active = false WHERE staff_id = 3",
        )
        .await;
    let stream = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert_ok(&stream, "the stream");
    assert_eq!(stream.json()["stream"]["dead_lettered"], 0, "{stream:?}");

    let pipeline_rows = |mut rows: BTreeMap<String, String>| {
        rows.retain(|table, _| !table.starts_with("event_log"));
        rows
    };
    assert_eq!(
        pipeline_rows(RENTAL.rows_of(&source).await),
        pipeline_rows(RENTAL.rows_of(&target).await),
        "every table's rows: no trigger fired twice, no last_update rewritten"
    );
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM customer_audit a JOIN customer c USING (customer_id) WHERE c.first_name = 'Streamed'").await,
        40 + 4,
        "each streamed customer audited once on the source, its rename once more, nothing twice"
    );
    // Every sequence of the stream's tables (event_log is not one).
    assert_eq!(
        RENTAL.next_ids_without(&source, Some("event_log")).await,
        RENTAL.next_ids_without(&target, Some("event_log")).await,
        "the application's next ids"
    );
}

/// Into the application's schema the rows load with its foreign-key
/// checks off; a parent the pipeline leaves out holds no rows there, so
/// the references are verified after the load and the run does not
/// complete while one is broken (it names the key, the count, a row).
#[tokio::test]
async fn rows_loaded_with_the_checks_off_must_still_reference_their_parents() {
    let source = RENTAL.source().await;
    let target = PgDb::new("rental_orphans").await;
    restore_schema(&source, &target);
    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"public.rental\"]", "");
    let migrate = p.ferry(&["migrate"]);
    assert_ne!(migrate.code, 0, "{migrate:?}");
    for key in ["rental_customer_id_fkey", "rental_item_id_fkey", "rental_staff_id_fkey"] {
        assert!(migrate.stderr.contains(key), "names {key}: {}", migrate.stderr);
    }
    assert!(migrate.stderr.contains("reference no row of"), "{}", migrate.stderr);
    let mut c = target.conn().await;
    let status: String = sqlx::query_scalar("SELECT status FROM ferry.runs").fetch_one(&mut c).await.unwrap();
    assert_ne!(status, "completed", "the run is not complete while references are broken");
}
