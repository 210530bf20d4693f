//! The source's schema changing under `ferry sync`: the application's
//! migrations (add a column with a default and write it, rename a column,
//! drop one, widen a type) while writers run and ferry is killed -9 after
//! each, with and without the DDL capture. Judged by the source's own rows
//! and by a fresh migration of the final source (`pg_dump --schema-only`
//! of the table), never by ferry's counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use sqlx::{Connection, PgConnection};

use crate::cluster::Cluster;
use crate::support::*;
use crate::tables::tables_pipeline;

/// An application's tables: `items` changes shape; `events` is written
/// beside it in the same transactions and never changes.
const APP_DDL: &str = r#"
CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, price numeric(10, 2), doc text NOT NULL);
CREATE TABLE events (id bigint PRIMARY KEY, item_id bigint NOT NULL, kind text NOT NULL);
INSERT INTO items SELECT g, g % 100, g * 0.5,
    (SELECT string_agg(md5(g::text || r::text), '') FROM generate_series(1, 150) r) FROM generate_series(1, 2000) g;
"#;

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap()
}

async fn exec(url: &str, sql: &str) {
    let mut c = connect(url).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut c).await.unwrap_or_else(|e| panic!("{e}: {sql}"));
}

async fn scalar(url: &str, sql: &str) -> i64 {
    let mut c = connect(url).await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"))
}

/// Every row of `table`, as PostgreSQL prints it, in key order.
async fn rows(url: &str, table: &str) -> Vec<String> {
    let mut c = connect(url).await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {table} t ORDER BY id")))
        .fetch_all(&mut c)
        .await
        .unwrap()
}

/// `pg_dump --schema-only` of one table, without what differs between
/// databases (comments, settings, owners).
fn dump_table(url: &str, table: &str) -> String {
    let out = std::process::Command::new("pg_dump")
        .args(["--schema-only", "--no-owner", "--no-privileges", "-t", table, url])
        .output()
        .expect("pg_dump");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            !l.starts_with("--")
                && !l.starts_with("SET ")
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
                && !l.starts_with("SELECT pg_catalog")
                && !l.is_empty()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A writer that keeps changing both tables in shared transactions
/// (an item's document and an event about it) until told to stop, with
/// the columns every version of `items` has.
fn writer(url: String, running: Arc<AtomicBool>, written: Arc<AtomicI64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut c = connect(&url).await;
        let mut n: i64 = 0;
        while running.load(Ordering::Relaxed) {
            n += 1;
            let id = 1 + (n * 37) % 2000;
            let sql = format!(
                "BEGIN; UPDATE items SET doc = md5(doc) || repeat(md5('{n}'), 60) WHERE id = {id}; \
                 INSERT INTO events VALUES ({n}, {id}, 'touched'); \
                 COMMIT;"
            );
            if sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.is_err() {
                // A migration's lock timed out or the like: try again.
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut c).await;
                continue;
            }
            written.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
    })
}

/// Waits until `sql` on `url` returns true.
async fn until(url: &str, what: &str, sql: &str) {
    let (url, sql) = (url.to_string(), sql.to_string());
    eventually(what, || {
        let (url, sql) = (url.clone(), sql.clone());
        async move {
            let mut c = connect(&url).await;
            sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(sql)).fetch_one(&mut c).await.unwrap_or(false)
        }
    })
    .await;
}

fn daemon(p: &Pipeline) -> std::process::Child {
    p.daemon()
}

fn has_column(table: &str, column: &str, sql_type: &str) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = '{column}' \
         AND NOT attisdropped AND format_type(atttypid, atttypmod) = '{sql_type}')"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_follows_the_applications_migrations_through_kill_9() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    exec(&source, APP_DDL).await;
    let target = PgDb::new("evolve").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.*\"]\ncapture_ddl = true", "");
    let mut child = daemon(&p);
    let running = Arc::new(AtomicBool::new(true));
    let written = Arc::new(AtomicI64::new(0));
    let writing = writer(source.clone(), Arc::clone(&running), Arc::clone(&written));
    until(&target.url(), "the initial load", "SELECT count(*) = 2000 FROM items").await;

    // Each migration as an application ships it, then rows that use it;
    // once the target has the change, ferry is killed -9 mid-stream and
    // started again.
    let gone = |column: &str| format!("SELECT NOT ({})", has_column("items", column, "numeric(10,2)"));
    let migrations: [(&str, String); 7] = [
        (
            "ALTER TABLE items ADD COLUMN note text NOT NULL DEFAULT 'none'; \
             UPDATE items SET note = 'note ' || id WHERE id % 7 = 0; \
             INSERT INTO items (id, qty, price, doc, note) SELECT g, 1, 1, 'new', 'fresh ' || g FROM generate_series(3001, 3100) g;",
            has_column("items", "note", "text"),
        ),
        (
            "BEGIN; ALTER TABLE items RENAME COLUMN note TO remark; \
             UPDATE items SET remark = remark || ' (renamed)' WHERE id % 11 = 0; COMMIT;",
            has_column("items", "remark", "text"),
        ),
        ("ALTER TABLE items DROP COLUMN price; UPDATE items SET qty = qty + 1 WHERE id % 13 = 0;", gone("price")),
        (
            "ALTER TABLE items ALTER COLUMN qty TYPE bigint; \
             UPDATE items SET qty = 5000000000 + id WHERE id % 17 = 0;",
            has_column("items", "qty", "bigint"),
        ),
        (
            // A table the writers insert into while it changes; its rows
            // written with the new column in the statement's transaction.
            "ALTER TABLE events ADD COLUMN origin text; \
             INSERT INTO events (id, item_id, kind, origin) VALUES (-1, 1, 'migrated', 'backfill'), (-2, 2, 'migrated', NULL);",
            has_column("events", "origin", "text"),
        ),
        (
            // New tables `include` brings in, as ORMs write them: an
            // identity key, rows in the creating transaction; a table
            // whose key comes with a second statement; one that goes.
            "CREATE TABLE notes (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, item_id bigint NOT NULL, \
                 body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO notes (item_id, body) SELECT g, repeat(md5(g::text), 100) FROM generate_series(1, 300) g; \
             CREATE TABLE tags (id int NOT NULL, name text); ALTER TABLE tags ADD PRIMARY KEY (id); \
             INSERT INTO tags SELECT g, 'tag ' || g FROM generate_series(1, 50) g; \
             CREATE TABLE scratch (id int PRIMARY KEY, v text); INSERT INTO scratch VALUES (1, 'a');",
            "SELECT (SELECT count(*) FROM notes) = 300 AND (SELECT count(*) FROM tags) = 50 \
             AND (SELECT count(*) FROM scratch) = 1"
                .into(),
        ),
        (
            "UPDATE scratch SET v = 'b'; DROP TABLE scratch; TRUNCATE tags; INSERT INTO tags VALUES (9, 'after'); \
             UPDATE notes SET body = 'edited' WHERE id % 10 = 0;",
            "SELECT to_regclass('public.scratch') IS NULL AND (SELECT count(*) FROM tags) = 1".into(),
        ),
    ];
    let mut kills = 0;
    for (sql, applied) in migrations {
        exec(&source, sql).await;
        until(&target.url(), &format!("the target has: {sql}"), &applied).await;
        // Writers keep going while ferry dies.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        child = daemon(&p);
    }
    assert_eq!(kills, 7);
    // While ferry is down: a table made and written, another written and
    // dropped. The stream meets both past where it stopped.
    child.kill().unwrap();
    child.wait().unwrap();
    exec(
        &source,
        "CREATE TABLE archive (id int PRIMARY KEY, v text); INSERT INTO archive SELECT g, 'v' || g FROM generate_series(1, 40) g; \
         INSERT INTO tags VALUES (10, 'before the drop'); DROP TABLE tags;",
    )
    .await;
    child = daemon(&p);
    until(
        &target.url(),
        "the stream's made and dropped tables",
        "SELECT to_regclass('public.tags') IS NULL AND (SELECT count(*) FROM archive) = 40",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    running.store(false, Ordering::Relaxed);
    writing.await.unwrap();
    assert!(written.load(Ordering::Relaxed) > 50, "the writers ran");
    child.kill().unwrap();
    child.wait().unwrap();
    let last = p.ferry(&["sync", "--idle-exit", "2", "--json"]);
    assert_eq!(last.code, 0, "{last:?}");

    // The rows are the source's, every value the migrations wrote among them.
    for table in ["items", "events", "notes", "archive"] {
        let (got, want) = (rows(&target.url(), table).await, rows(&source, table).await);
        assert_eq!(got.len(), want.len(), "{table}: row counts");
        let first = got.iter().zip(&want).find(|(g, w)| g != w);
        assert!(got == want, "{table} differs from the source; first: {first:?}");
    }
    for check in [
        "SELECT count(*) FROM items WHERE remark LIKE 'note %'",
        "SELECT count(*) FROM items WHERE remark LIKE 'fresh %'",
        "SELECT count(*) FROM items WHERE remark LIKE '%(renamed)'",
        "SELECT count(*) FROM items WHERE qty > 5000000000",
    ] {
        let n = scalar(&source, check).await;
        assert!(n > 0 && scalar(&target.url(), check).await == n, "{check}: {n} on the source");
    }

    // The table's definition is what a fresh migration of the final source makes.
    let oracle = PgDb::new("evolve_oracle").await;
    let fresh = tables_pipeline(&source, &oracle.url(), "include = [\"public.*\"]", "");
    let migrated = fresh.ferry(&["migrate"]);
    assert_eq!(migrated.code, 0, "{migrated:?}");
    for table in ["public.items", "public.events", "public.archive"] {
        assert_eq!(dump_table(&target.url(), table), dump_table(&oracle.url(), table));
    }
    assert_eq!(target.scalar_i64("SELECT count(*) FROM events WHERE origin = 'backfill'").await, 1);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM notes WHERE body = 'edited'").await, 30);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM pg_tables WHERE tablename IN ('scratch', 'tags')").await, 0);
    // Nothing of the made and dropped tables became a dead letter (the
    // row written into `tags` while ferry was down was applied, then the
    // table went).
    let dead = target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await;
    assert_eq!(dead, 0, "{:?}", rows(&target.url(), "ferry.change_dead_letters").await);

    // status shows the versions and the capture; teardown removes it.
    let st = p.ferry(&["status", "--json"]).json();
    assert_eq!(st["stream"]["ddl_capture"], true, "{st}");
    let columns = &st["stream"]["table_columns"];
    assert!(columns.to_string().contains(r#"["id","qty","doc","remark"]"#), "{st}");
    let check = p.ferry(&["check", "--json"]).json();
    let item = check["items"].as_array().unwrap().iter().find(|i| i["name"] == "DDL capture").cloned();
    assert!(
        item.as_ref().is_some_and(|i| i["level"] == "ok" && i["detail"].as_str().unwrap().contains("installed")),
        "{check}"
    );
    assert_eq!(p.ferry(&["sync", "--teardown"]).code, 0);
    assert_eq!(scalar(&source, "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'ferry%'").await, 0);
}

/// A partitioned table that `include` names by its parent: the month's
/// partition the application creates (as a scheduled job does) joins the
/// stream in its creating transaction — the capture matches the parent —
/// and is made on the target as a partition of the same parent, with the
/// rows routed to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_partition_joins_the_stream_as_a_partition_of_its_parent() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    exec(
        &source,
        "CREATE TABLE readings (id bigint NOT NULL, taken date NOT NULL, value numeric(8, 3), \
             PRIMARY KEY (id, taken)) PARTITION BY RANGE (taken); \
         CREATE TABLE readings_2026_11 PARTITION OF readings FOR VALUES FROM ('2026-11-01') TO ('2026-12-01'); \
         CREATE TABLE readings_2026_12 PARTITION OF readings FOR VALUES FROM ('2026-12-01') TO ('2027-01-01'); \
         INSERT INTO readings SELECT g, date '2026-11-01' + (g % 61), g / 7.0 FROM generate_series(1, 600) g;",
    )
    .await;
    let target = PgDb::new("evolve_parts").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.readings\"]\ncapture_ddl = true", "");
    let mut child = daemon(&p);
    until(&target.url(), "the initial load", "SELECT count(*) = 600 FROM readings").await;

    exec(
        &source,
        "CREATE TABLE readings_2027_01 PARTITION OF readings FOR VALUES FROM ('2027-01-01') TO ('2027-02-01'); \
         INSERT INTO readings SELECT g, date '2027-01-01' + (g % 31), g / 3.0 FROM generate_series(601, 700) g; \
         UPDATE readings SET value = -value WHERE id % 10 = 0;",
    )
    .await;
    until(&target.url(), "the new partition's rows", "SELECT count(*) = 100 FROM readings_2027_01").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let last = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(last.code, 0, "{last:?}");

    let parent = "SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = 'readings_2027_01'::regclass";
    let mut c = connect(&target.url()).await;
    let on_target: String = sqlx::query_scalar(parent).fetch_one(&mut c).await.unwrap();
    assert_eq!(on_target, "readings", "a partition of the same parent on the target");
    let bound = "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = 'readings_2027_01'::regclass";
    let mut s = connect(&source).await;
    let want: String = sqlx::query_scalar(bound).fetch_one(&mut s).await.unwrap();
    let got: String = sqlx::query_scalar(bound).fetch_one(&mut c).await.unwrap();
    assert_eq!(got, want);
    let all = |url: String| async move {
        let mut c = connect(&url).await;
        sqlx::query_scalar::<_, String>("SELECT r::text FROM readings r ORDER BY id, taken")
            .fetch_all(&mut c)
            .await
            .unwrap()
    };
    assert_eq!(all(target.url()).await, all(source.clone()).await, "every row, in every partition");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 0);
}

/// The renames an application's migrations make, while rows flow: a table
/// renamed in the transaction that writes it; the expand/contract swap (a
/// new table filled beside the old one, their names exchanged in one
/// transaction, the old one dropped); a table renamed while ferry is
/// killed; one moved to a schema `include` leaves out. The target follows
/// each under the source's name, every row with it; the one moved out
/// stays as it was at the move and leaves the publication. Judged by the
/// source's rows, the server's publication and no dead letters.
#[tokio::test(flavor = "multi_thread")]
async fn renamed_tables_are_followed_under_their_new_names() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    exec(&source, APP_DDL).await;
    exec(
        &source,
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL); \
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 50) g;",
    )
    .await;
    let target = PgDb::new("evolve_renames").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.*\"]\ncapture_ddl = true", "");
    let mut child = daemon(&p);
    until(&target.url(), "the initial load", "SELECT count(*) = 50 FROM notes").await;

    exec(
        &source,
        "INSERT INTO events VALUES (1, 1, 'before'); \
         BEGIN; \
         INSERT INTO events VALUES (2, 2, 'same transaction, before'); \
         ALTER TABLE events RENAME TO item_events; \
         INSERT INTO item_events VALUES (3, 3, 'same transaction, after'); \
         COMMIT; \
         UPDATE item_events SET kind = 'renamed' WHERE id = 1;",
    )
    .await;
    until(&target.url(), "the renamed table", "SELECT count(*) = 1 FROM item_events WHERE kind = 'renamed'").await;

    // The swap: `items_new` (another shape) built and filled beside
    // `items`, then the names exchanged and the old table dropped.
    exec(
        &source,
        "CREATE TABLE items_new (id bigint PRIMARY KEY, qty bigint NOT NULL, price numeric(12, 2), \
             doc text NOT NULL, label text NOT NULL DEFAULT 'v2'); \
         INSERT INTO items_new (id, qty, price, doc) SELECT id, qty, price, doc FROM items; \
         BEGIN; \
         ALTER TABLE items RENAME TO items_old; \
         ALTER TABLE items_new RENAME TO items; \
         UPDATE items SET label = 'swapped', doc = md5(doc) || doc WHERE id % 100 = 0; \
         COMMIT; \
         DROP TABLE items_old; \
         INSERT INTO items VALUES (2001, 1, 1.5, 'after the swap', 'v2');",
    )
    .await;
    until(&target.url(), "the swapped table", "SELECT count(*) = 2001 FROM items").await;

    // Renamed while ferry is down: found again by its relation.
    child.kill().unwrap();
    child.wait().unwrap();
    exec(
        &source,
        "ALTER TABLE notes RENAME TO memos; \
         INSERT INTO memos VALUES (51, 'written under the new name, ferry down'); \
         UPDATE memos SET body = upper(body) WHERE id <= 10;",
    )
    .await;
    let mut child = daemon(&p);
    until(&target.url(), "the memo written while ferry was down", "SELECT count(*) = 51 FROM memos").await;

    // Moved out of what `include` names: no longer followed.
    exec(
        &source,
        "CREATE SCHEMA archive; \
         ALTER TABLE item_events SET SCHEMA archive; \
         INSERT INTO archive.item_events VALUES (4, 4, 'archived'); \
         INSERT INTO memos VALUES (52, 'the last one');",
    )
    .await;
    until(&target.url(), "the last memo", "SELECT count(*) = 52 FROM memos").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let last = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(last.code, 0, "{last:?}");

    for table in ["items", "memos"] {
        assert_eq!(rows(&target.url(), table).await, rows(&source, table).await, "{table}");
    }
    let archived = rows(&source, "archive.item_events").await;
    assert_eq!(rows(&target.url(), "public.item_events").await, archived[..3], "as it was at the move");
    let tables = "SELECT string_agg(schemaname || '.' || tablename, ' ' ORDER BY schemaname, tablename) FROM pg_tables \
                  WHERE schemaname IN ('public', 'archive')";
    let mut c = connect(&target.url()).await;
    let on_target: String = sqlx::query_scalar(tables).fetch_one(&mut c).await.unwrap();
    assert_eq!(on_target, "public.item_events public.items public.memos", "the source's names, nothing left behind");
    let published = "SELECT count(*) FROM pg_publication_tables WHERE schemaname = 'archive'";
    assert_eq!(scalar(&source, published).await, 0, "the moved table left the publication");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 0);
}

/// A table made by `CREATE TABLE AS` (its rows written before the capture
/// could publish it, and without a key) then given one, as migrations do:
/// followed from its key on, and its rows copied again inside the stream,
/// writes to it going on. Judged by the source's rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_made_by_create_table_as_is_copied_once_it_has_a_key() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    exec(&source, APP_DDL).await;
    let target = PgDb::new("evolve_ctas").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.*\"]\ncapture_ddl = true", "");
    let mut child = daemon(&p);
    until(&target.url(), "the initial load", "SELECT count(*) = 2000 FROM items").await;
    exec(
        &source,
        "CREATE TABLE totals AS SELECT id, qty * 2 AS doubled, doc FROM items; \
         ALTER TABLE totals ADD PRIMARY KEY (id); \
         UPDATE totals SET doubled = -doubled WHERE id % 10 = 0; \
         INSERT INTO totals VALUES (99999, 1, 'after the key'); \
         DELETE FROM totals WHERE id % 13 = 0;",
    )
    .await;
    let want = rows(&source, "totals").await;
    let url = target.url();
    eventually("the table's rows", || {
        let (url, want) = (url.clone(), want.clone());
        async move {
            let mut c = connect(&url).await;
            let got: Result<Vec<String>, _> =
                sqlx::query_scalar("SELECT t::text FROM totals t ORDER BY id").fetch_all(&mut c).await;
            got.is_ok_and(|got| got == want)
        }
    })
    .await;
    until(&target.url(), "the copy done", "SELECT done_at IS NOT NULL FROM ferry.stream_resyncs").await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 0);
}

/// The indexes and constraints an application's migrations add and drop
/// while rows flow — a partial index, one built CONCURRENTLY, a unique
/// constraint, CHECKs, a foreign key, a new table with its own — are made
/// and dropped on the target in stream order. Judged by `pg_dump` of the
/// target against a fresh migration of the final source.
#[tokio::test(flavor = "multi_thread")]
async fn indexes_and_constraints_follow_the_source() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    exec(&source, APP_DDL).await;
    let target = PgDb::new("evolve_indexes").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.*\"]\ncapture_ddl = true", "");
    let mut child = daemon(&p);
    until(&target.url(), "the initial load", "SELECT count(*) = 2000 FROM items").await;
    exec(
        &source,
        "INSERT INTO events SELECT g, g, 'seen' FROM generate_series(1, 50) g; \
         CREATE INDEX items_busy_idx ON items (qty) WHERE qty > 10; \
         CREATE INDEX items_price_idx ON items (price); \
         ALTER TABLE items ADD CONSTRAINT qty_nonneg CHECK (qty >= 0), ADD CONSTRAINT qty_small CHECK (qty < 1000000); \
         ALTER TABLE events ADD CONSTRAINT events_item_fk FOREIGN KEY (item_id) REFERENCES items (id), \
             ADD CONSTRAINT events_kind_key UNIQUE (id, kind); \
         INSERT INTO events SELECT g, g, 'after' FROM generate_series(51, 60) g;",
    )
    .await;
    exec(&source, "CREATE INDEX CONCURRENTLY events_item_idx ON events (item_id)").await;
    exec(
        &source,
        "DROP INDEX items_price_idx; \
         ALTER TABLE items DROP CONSTRAINT qty_nonneg; \
         CREATE TABLE notes (id bigint PRIMARY KEY, item_id bigint NOT NULL REFERENCES items, body text UNIQUE); \
         CREATE INDEX notes_item_idx ON notes (item_id); \
         INSERT INTO notes VALUES (1, 1, 'one'), (2, 2, 'two'); \
         INSERT INTO events VALUES (61, 3, 'last');",
    )
    .await;
    until(&target.url(), "the last change", "SELECT count(*) = 1 FROM events WHERE id = 61").await;
    child.kill().unwrap();
    child.wait().unwrap();

    let oracle = PgDb::new("evolve_indexes_oracle").await;
    let fresh = tables_pipeline(&source, &oracle.url(), "include = [\"public.*\"]", "");
    let migrated = fresh.ferry(&["migrate"]);
    assert_eq!(migrated.code, 0, "{migrated:?}");
    for table in ["items", "events", "notes"] {
        assert_eq!(dump_table(&target.url(), table), dump_table(&oracle.url(), table), "{table}");
    }
    let dump = dump_table(&target.url(), "items");
    assert!(dump.contains("items_busy_idx") && !dump.contains("items_price_idx"), "{dump}");
    assert!(dump.contains("qty_small") && !dump.contains("qty_nonneg"), "{dump}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 0);
}

/// A table `include` brings in, created without a key and written: the
/// stream cannot apply its rows by key, so it pauses before them (the
/// changes before applied, none after) and says the way out; stopped
/// (exit 11), the table left out (`source.exclude`), it goes on — the
/// table's changes skipped, never dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_table_without_a_key_pauses_the_stream_until_it_is_left_out() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    exec(&source, APP_DDL).await;
    let target = PgDb::new("evolve_keyless").await;
    let keys = "include = [\"public.*\"]\ncapture_ddl = true";
    let p = tables_pipeline(&source, &target.url(), keys, "");
    let first = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(first.code, 0, "{first:?}");
    exec(
        &source,
        "INSERT INTO events VALUES (1, 1, 'before'); \
         CREATE TABLE audit_log (at timestamptz NOT NULL DEFAULT now(), line text); \
         INSERT INTO audit_log (line) VALUES ('one'), ('two');",
    )
    .await;
    exec(&source, "INSERT INTO events VALUES (2, 2, 'after');").await;
    let child = p.spawn(&["sync"]);
    until(&target.url(), "the stream pauses", "SELECT paused IS NOT NULL FROM ferry.change_checkpoints").await;
    let st = p.ferry(&["status", "--json"]).json();
    assert_eq!(st["phase"], "paused", "{st}");
    let said = st["stream"]["paused"].as_str().unwrap();
    assert!(said.contains("public.audit_log") && said.contains("without a primary key"), "{said}");
    assert!(said.contains("source.exclude"), "the way out: {said}");
    // Everything before the table's first row is applied, nothing after.
    assert_eq!(target.scalar_i64("SELECT count(*) FROM events").await, 1, "only the row before");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM events WHERE kind = 'before'").await, 1);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", String::from_utf8_lossy(&out.stderr));

    let excluded = format!("{keys}\nexclude = [\"public.audit_log\"]");
    let p = tables_pipeline(&source, &target.url(), &excluded, "");
    let again = p.ferry(&["sync", "--idle-exit", "2", "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["stream"]["skipped_excluded"], 2, "{again:?}");
    assert_eq!(rows(&target.url(), "events").await, rows(&source, "events").await);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'audit_log'").await, 0);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_capture_a_new_column_pauses_the_stream_until_the_target_has_it() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    exec(&source, APP_DDL).await;
    let target = PgDb::new("evolve_pause").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.*\"]", "");
    let first = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(first.code, 0, "{first:?}");

    // A dropped column flows (nothing to guess); a new one pauses.
    exec(&source, "ALTER TABLE items DROP COLUMN price; UPDATE items SET qty = 7 WHERE id <= 10;").await;
    exec(
        &source,
        "ALTER TABLE items ADD COLUMN note text; UPDATE items SET note = 'n' || id WHERE id % 5 = 0; \
         INSERT INTO events VALUES (1, 1, 'after the change');",
    )
    .await;
    let child = p.spawn(&["sync"]);
    until(&target.url(), "the stream pauses", "SELECT paused IS NOT NULL FROM ferry.change_checkpoints").await;
    // Everything before the change is applied, nothing after it.
    assert_eq!(target.scalar_i64("SELECT count(*) FROM items WHERE qty = 7 AND id <= 10").await, 10);
    assert!(!column_exists(&target, "items", "price").await, "the drop flowed");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM events").await, 0);
    let st = p.ferry(&["status", "--json"]);
    assert_eq!(st.json()["phase"], "paused", "{st:?}");
    let said = st.json()["stream"]["paused"].as_str().unwrap().to_string();
    assert!(said.contains("ADD COLUMN \"note\" text") && said.contains("capture_ddl"), "{said}");

    // The operator adds the column (as the source did: no default); the
    // stream goes on by itself and carries its values.
    target.exec("ALTER TABLE items ADD COLUMN note text").await;
    until(&target.url(), "the stream resumes", "SELECT count(*) = 1 FROM events").await;
    // SIGTERM: ferry stops after acknowledging what it applied.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for table in ["items", "events"] {
        assert_eq!(rows(&target.url(), table).await, rows(&source, table).await, "{table}");
    }
    assert_eq!(target.scalar_i64("SELECT count(*) FROM items WHERE note IS NOT NULL").await, 400);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_checkpoints WHERE paused IS NULL").await, 1);
}

/// A table the source writes on its own (no foreign key, no transaction
/// shared with another table) that cannot follow a change is held alone:
/// the other tables go on, through a kill -9; once the target table is
/// fixed, the held table is copied again inside the stream and followed.
/// Judged by the source's rows while both tables are written.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_that_cannot_follow_is_held_alone_while_the_others_go_on() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    exec(&source, APP_DDL).await;
    let target = PgDb::new("evolve_hold").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.*\"]", "");
    assert_eq!(p.ferry(&["sync", "--idle-exit", "1"]).code, 0);
    let running = Arc::new(AtomicBool::new(true));
    // Each table written in transactions of its own.
    let write = |sql: fn(i64) -> String| {
        let (url, running) = (source.clone(), Arc::clone(&running));
        tokio::spawn(async move {
            let mut c = connect(&url).await;
            let mut n = 0;
            while running.load(Ordering::Relaxed) {
                n += 1;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql(n))).execute(&mut c).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let items = write(|n| format!("UPDATE items SET qty = qty + 1, doc = md5(doc) || doc WHERE id = {}", 1 + n % 2000));
    let events = write(|n| format!("INSERT INTO events VALUES ({n}, {}, 'seen')", n % 2000));
    let mut child = daemon(&p);
    until(&target.url(), "events flow", "SELECT count(*) > 20 FROM events").await;
    exec(&source, "ALTER TABLE items ADD COLUMN note text DEFAULT 'none'").await;
    let held = "SELECT held_reason IS NOT NULL FROM ferry.stream_resyncs WHERE source_table = 'public.items'";
    until(&target.url(), "items held", held).await;
    let st = p.ferry(&["status", "--json"]).json();
    assert_eq!(st["phase"], "streaming", "{st}");
    let said = st["stream"]["resyncs"][0]["held"].as_str().unwrap_or_default().to_string();
    assert!(said.contains(r#"ADD COLUMN "note" text"#), "{said}");

    // The other table goes on, through a kill -9.
    let before = target.scalar_i64("SELECT count(*) FROM events").await;
    until(&target.url(), "events go on", &format!("SELECT count(*) > {before} + 20 FROM events")).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = daemon(&p);
    let before = target.scalar_i64("SELECT count(*) FROM events").await;
    until(&target.url(), "events go on again", &format!("SELECT count(*) > {before} + 20 FROM events")).await;
    assert_eq!(target.scalar_i64(&format!("SELECT ({held})::int::int8")).await, 1, "still held");

    // Fixed on the target: copied again, then followed.
    target.exec("ALTER TABLE items ADD COLUMN note text DEFAULT 'none'").await;
    let done = "SELECT done_at IS NOT NULL AND held_reason IS NULL FROM ferry.stream_resyncs";
    until(&target.url(), "the held table copied again", done).await;
    exec(&source, "UPDATE items SET note = 'after' WHERE id % 100 = 0").await;
    running.store(false, Ordering::Relaxed);
    items.await.unwrap();
    events.await.unwrap();
    let url = target.url();
    let converged = || {
        let (url, source) = (url.clone(), source.clone());
        async move {
            rows(&url, "items").await == rows(&source, "items").await
                && rows(&url, "events").await == rows(&source, "events").await
        }
    };
    eventually("the target equals the source", converged).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 0);
}

/// A schema as an ORM writes one — enum types, a domain, a foreign-key
/// cycle (authors and their favourite book), a self-reference, a trigger
/// and a view — changed while rows flow the way such applications change
/// it: a label added to an enum (after one, before one) and used at once,
/// a new enum type for a new column. The target gets each type's labels in
/// the source's order before the rows that use them. Judged by the
/// source's rows and catalog, and by `pg_dump` against a fresh migration.
#[tokio::test(flavor = "multi_thread")]
async fn an_orm_schema_changes_its_enums_while_rows_flow() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    exec(
        &source,
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
         CREATE DOMAIN positive AS integer CHECK (VALUE > 0); \
         CREATE TABLE categories (id bigint PRIMARY KEY, parent_id bigint REFERENCES categories, name text NOT NULL); \
         CREATE TABLE authors (id bigint PRIMARY KEY, name text NOT NULL, mood mood NOT NULL DEFAULT 'ok', \
             favorite_book bigint, updated_at timestamptz); \
         CREATE TABLE books (id bigint PRIMARY KEY, author_id bigint NOT NULL REFERENCES authors, \
             category_id bigint REFERENCES categories, pages positive NOT NULL, title text NOT NULL); \
         ALTER TABLE authors ADD CONSTRAINT authors_favorite_fk FOREIGN KEY (favorite_book) REFERENCES books \
             DEFERRABLE INITIALLY DEFERRED; \
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$; \
         CREATE TRIGGER authors_touch BEFORE UPDATE ON authors FOR EACH ROW EXECUTE FUNCTION touch(); \
         CREATE VIEW happy_authors AS SELECT id, name FROM authors WHERE mood = 'happy'; \
         INSERT INTO categories VALUES (1, NULL, 'fiction'), (2, 1, 'crime'), (3, 2, 'noir'); \
         INSERT INTO authors SELECT g, 'author ' || g, (ARRAY['sad', 'ok', 'happy']::mood[])[1 + g % 3], NULL, NULL \
             FROM generate_series(1, 300) g; \
         INSERT INTO books SELECT g, 1 + g % 300, 1 + g % 3, 100 + g, 'book ' || g FROM generate_series(1, 600) g; \
         UPDATE authors SET favorite_book = id WHERE id <= 300;",
    )
    .await;
    let target = PgDb::new("evolve_orm").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.*\"]\ncapture_ddl = true", "");
    let mut child = daemon(&p);
    until(&target.url(), "the initial load", "SELECT count(*) = 600 FROM books").await;

    exec(&source, "ALTER TYPE mood ADD VALUE 'ecstatic' AFTER 'happy'").await;
    exec(&source, "UPDATE authors SET mood = 'ecstatic' WHERE id % 5 = 0").await;
    exec(
        &source,
        "CREATE TYPE tier AS ENUM ('free', 'pro'); \
         ALTER TABLE authors ADD COLUMN tier tier NOT NULL DEFAULT 'free'; \
         UPDATE authors SET tier = 'pro' WHERE id % 4 = 0;",
    )
    .await;
    exec(&source, "ALTER TYPE mood ADD VALUE 'meh' BEFORE 'sad'").await;
    exec(
        &source,
        "BEGIN; \
         INSERT INTO authors (id, name, mood, favorite_book, tier) VALUES (301, 'new', 'meh', 601, 'pro'); \
         INSERT INTO books VALUES (601, 301, 3, 42, 'a cycle, in one transaction'); \
         COMMIT;",
    )
    .await;
    until(&target.url(), "the last book", "SELECT count(*) = 1 FROM books WHERE id = 601").await;
    child.kill().unwrap();
    child.wait().unwrap();

    for table in ["categories", "authors", "books"] {
        assert_eq!(rows(&target.url(), table).await, rows(&source, table).await, "{table}");
    }
    for labels in ["SELECT enum_range(NULL::mood)::text", "SELECT enum_range(NULL::tier)::text"] {
        let (mut s, mut t) = (connect(&source).await, connect(&target.url()).await);
        let want: String = sqlx::query_scalar(labels).fetch_one(&mut s).await.unwrap();
        let got: String = sqlx::query_scalar(labels).fetch_one(&mut t).await.unwrap();
        assert_eq!(got, want, "{labels}");
    }
    let oracle = PgDb::new("evolve_orm_oracle").await;
    let fresh = tables_pipeline(&source, &oracle.url(), "include = [\"public.*\"]", "");
    assert_eq!(fresh.ferry(&["migrate"]).code, 0);
    assert_eq!(dump_table(&target.url(), "authors"), dump_table(&oracle.url(), "authors"));
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 0);
}

async fn column_exists(db: &PgDb, table: &str, column: &str) -> bool {
    db.scalar_i64(&format!(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = '{column}' AND NOT attisdropped"
    ))
    .await
        > 0
}

/// Legacy orders (items in a JSON column) split by the `split-orders`
/// plugin into orders and order_items.
const ORDERS_DDL: &str = r#"
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers, placed_at timestamp NOT NULL,
    status text NOT NULL, items json NOT NULL);
INSERT INTO customers SELECT g, 'C' || g FROM generate_series(1, 10) g;
INSERT INTO orders SELECT g, 1 + g % 10, '2024-03-01 10:00:00'::timestamp + g * interval '1 hour', 'paid',
    json_build_array(json_build_object('sku', 'a' || g, 'qty', 1, 'price', '1.50'))
    FROM generate_series(1, 100) g;
"#;

fn order_sql(id: i64, status_column: &str) -> String {
    format!(
        "INSERT INTO orders (id, customer_id, placed_at, {status_column}, items) VALUES ({id}, 1, '2024-06-01', 'paid', \
         json_build_array(json_build_object('sku', 'x{id}', 'qty', 2, 'price', '3.00'), \
                          json_build_object('sku', 'y{id}', 'qty', 1, 'price', '4.00')))"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_table_pauses_on_a_shape_its_plugin_refuses_until_a_version_that_handles_it_is_deployed() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    exec(&source, ORDERS_DDL).await;
    let target = PgDb::new("evolve_plugin").await;
    let extra = format!("[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n", plugins().split_orders.display());
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.customers\"]\ncapture_ddl = true", &extra);
    let first = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM order_items").await, 100);
    let mut daemon = daemon(&p);

    // A column the plugin does not read: it accepts the new shape, no pause.
    exec(&source, &format!("ALTER TABLE orders ADD COLUMN note text; {}", order_sql(1001, "status"))).await;
    until(&target.url(), "order 1001", "SELECT count(*) = 2 FROM order_items WHERE order_id = 1001").await;
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_checkpoints WHERE paused IS NOT NULL").await, 0);

    // A rename the plugin cannot follow: the stream pauses just before it.
    exec(&source, &format!("ALTER TABLE orders RENAME COLUMN status TO state; {}", order_sql(1002, "state"))).await;
    exec(&source, "INSERT INTO customers VALUES (11, 'after the rename')").await;
    until(&target.url(), "the pause", "SELECT paused IS NOT NULL FROM ferry.change_checkpoints").await;
    let st = p.ferry(&["status", "--json"]).json();
    assert_eq!(st["phase"], "paused", "{st}");
    let said = st["stream"]["paused"].as_str().unwrap();
    assert!(said.contains("split-orders needs a column `status`") && said.contains("ferry plugin deploy"), "{said}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders WHERE id = 1002").await, 0);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM customers WHERE id = 11").await, 0, "nothing passes a pause");

    // The next version reads `state`: first tried as a shadow against the
    // new shape, on the source's rows (the live version refuses them)...
    let v2_path = plugins().split_orders_v2.to_str().unwrap();
    let shadow = p.ferry(&["plugin", "deploy", v2_path, "--shadow", "--json"]);
    assert_eq!(shadow.code, 0, "{shadow:?}");
    assert_eq!(shadow.json()["state"], "shadow", "accepted against the new shape: {shadow:?}");
    let report = || {
        let st = p.ferry(&["status", "--json"]).json();
        st["deployments"].as_array().and_then(|d| d.last().cloned()).unwrap_or_default()["shadow_report"].clone()
    };
    eventually("the shadow tried", || async { report()["rows"].as_u64().is_some_and(|n| n > 0) }).await;
    let report = report();
    assert_eq!(report["rows"].as_u64(), Some(100), "the source's first orders, as the new shape has them: {report}");
    let outcome = report["fields"]["outcome"]["examples"][0].to_string();
    assert!(outcome.contains("refuses the new shape"), "the live side of each example: {report}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders WHERE id = 1002").await, 0, "still paused");
    // ...then promoted: the stream goes on from the change.
    let v2 = p.ferry(&["plugin", "promote", "--json"]);
    assert_eq!(v2.code, 0, "{v2:?}");
    until(
        &target.url(),
        "order 1002 by v2",
        "SELECT count(*) = 2 FROM order_items WHERE order_id = 1002 AND sku = upper(sku)",
    )
    .await;
    until(&target.url(), "what came after it", "SELECT count(*) = 1 FROM customers WHERE id = 11").await;
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_checkpoints WHERE paused IS NULL").await, 1);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders").await, 102);
}
