//! Pipelines of many tables copied as they are: every PostgreSQL type
//! byte-exact, composite and text keys resumed exactly after kill -9,
//! foreign keys and indexes rebuilt after the data, PostgreSQL ↔ SQLite.
//! Results are judged by queries of the test's own on both databases.

use crate::support::*;

/// A many-table pipeline file: `[source]` with `source_keys` (e.g. the
/// include patterns), `[target]`, then `extra` verbatim.
pub fn tables_pipeline(source: &str, target: &str, source_keys: &str, extra: &str) -> Pipeline {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ferry.toml");
    let text = format!(
        "name = \"tables\"\n\n[source]\nurl = \"{source}\"\n{source_keys}\n\n[target]\nurl = \"{target}\"\n\n{extra}\n"
    );
    std::fs::write(&config, text).expect("write config");
    Pipeline { _dir: dir, config }
}

/// Every row of `table` as PostgreSQL prints it, in key order: the output
/// functions of each type, so equal text means equal values.
pub(crate) async fn rows_text(db: &PgDb, table: &str, order: &str) -> Vec<String> {
    let mut c = db.conn().await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT whole_row::text FROM {table} whole_row ORDER BY {order}")))
        .fetch_all(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{e}: {table}"))
}

/// Column names and declared types of a table.
async fn column_types(db: &PgDb, table: &str) -> Vec<(String, String)> {
    let mut c = db.conn().await;
    sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(&mut c)
    .await
    .unwrap()
}

pub(crate) const TYPES_DDL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
"#;

pub(crate) const EVERYTHING_DDL: &str = r#"
CREATE TABLE everything (
    id int PRIMARY KEY,
    b boolean, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
    n numeric, n2 numeric(12, 2), t text, vc varchar(10), ch char(5), by bytea,
    j json, jb jsonb, u uuid, d date, tm time, ts timestamp, tz timestamptz,
    iv interval, ia int[], ta text[], na numeric[], nested int[], m mood, ma mood[],
    dom positive_int, ip inet, cidr_ cidr, mon money, bits bit varying(8), pt point, r int4range,
    x xml, tsv tsvector
);
"#;

pub(crate) const EVERYTHING_ROWS: &str = r#"
INSERT INTO everything VALUES
 (1, true, 32767, 2147483647, 9223372036854775807, 3.4028235e38, 1.7976931348623157e308,
  123456789012345678901234567890.123456789012345678901234567890, 1234567890.12, 'Zoë 🚀 "quoted" \back\slash', 'ten chars!', 'ab',
  '\x00ff5c0a09', '{ "keep" : [1, 2.50, "spacing"] }', '{"b": 1, "a": [true, null]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '5874897-12-31', '24:00:00', '294246-12-31 23:59:59.999999', '2024-05-01 10:20:30.123456+00',
  '-1 year -2 mons +3 days -04:05:06.5', '{1,NULL,-3}', '{"a b",NULL,"q\"uote","","NULL"}', '{1.50,NaN,-0.001}',
  '{{1,2},{3,4}}', 'happy', '{sad,happy}', 7, '192.168.0.1/24', '10.0.0.0/8', '$1,234.56', B'1011', '(1.5,-2)', '[1,10)',
  '<a x="1">t</a>', 'fat:2 rat:3'),
 (2, false, -32768, -2147483648, -9223372036854775808, -1.17549435e-38, 5e-324,
  'NaN', -0.01, '', '', '', '\x', 'null', '[]', '00000000-0000-0000-0000-000000000000',
  '4713-01-01 BC', '00:00:00', '4713-01-01 00:00:00 BC', '0044-03-15 12:00:00.000001+00 BC',
  '0 seconds', '{}', '{}', '{}', '{}', 'sad', '{}', 1, '::1', '::/0', '-$0.01', B'', '(0,0)', 'empty',
  '<empty/>', ''),
 (3, NULL, NULL, NULL, NULL, 'NaN', '-Infinity', 'Infinity', NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, 'infinity', NULL, '-infinity', 'infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, true, 0, 0, 0, '-0', '-0', '-0.000', 0, E'tab\there\nnewline\r\\', 'x', 'y', '\x5c4e', '"\u00e9 \\u0000"', '"\u00e9"',
  'ffffffff-ffff-ffff-ffff-ffffffffffff', '2000-02-29', '23:59:59.999999', '1970-01-01 00:00:00', '1969-12-31 23:59:59.999999+00',
  '178000000 years', '{0}', '{"\\"}', '{1e-20}', '[0:1]={5,6}', 'ok', '{NULL}', 2147483647, '0.0.0.0', '0.0.0.0/0', 0, B'11111111',
  '(-1e300,1e-300)', '(,)', '<x/>', 'a:1A');
-- PostgreSQL's last 30 years of timestamps do not fit ferry's 64-bit
-- microseconds since 1970: copied as they are between PostgreSQL databases,
-- a dead letter wherever the value must be read (never a silent change).
INSERT INTO everything (id, ts) VALUES (5, '294276-12-31 23:59:59.999999');
"#;

#[tokio::test]
async fn every_postgres_type_round_trips_byte_exact() {
    let (source, target) = (PgDb::new("types_src").await, PgDb::new("types_dst").await);
    source.exec(&format!("{TYPES_DDL}{EVERYTHING_DDL}{EVERYTHING_ROWS}")).await;
    // ferry copies tables, not the types they use: the target has them.
    target.exec(TYPES_DDL).await;
    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"public.*\"]", "");
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["tables"][0]["loaded"], 5, "{report}");
    assert_eq!(report["accounted"], true);
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "rows ferry cannot read compare by their exact text: {v:?}");
    assert_eq!(v.json()["tables"][0]["matched"], 5, "{v:?}");

    // Into SQLite the values must be read: the row that cannot be is a
    // dead letter with the reason and its exact text.
    let file = SqliteDb::new();
    let to_sqlite = tables_pipeline(&source.url(), &file.url(), "include = [\"public.*\"]", "");
    let run = to_sqlite.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "completed with a dead letter: {run:?}");
    let report = run.json();
    assert_eq!(
        (report["tables"][0]["loaded"].as_u64(), report["tables"][0]["dead_lettered"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(
        file.scalar_i64(
            "SELECT count(*) FROM ferry_dead_letters WHERE source_table = 'public.everything' AND source_key = '5' \
             AND kind = 'extract' AND reason LIKE 'column ts: `294276-12-31 23:59:59.999999` is not a valid timestamp within%' \
             AND json_extract(source_row, '$.ts') = '294276-12-31 23:59:59.999999'"
        )
        .await,
        1
    );
    let dlq = to_sqlite.ferry(&["dlq", "list", "--json", "--table", "everything"]);
    assert_eq!(dlq.code, 0, "{dlq:?}");
    assert_eq!(dlq.json()[0]["source_key"], "5", "{dlq:?}");
    let v = to_sqlite.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "the dead letter explains the missing row: {v:?}");
    let v = v.json();
    assert_eq!((v["tables"][0]["matched"].as_u64(), v["tables"][0]["explained"].as_u64()), (Some(4), Some(1)), "{v}");

    assert_eq!(column_types(&target, "everything").await, column_types(&source, "everything").await, "same types");
    let (want, got) = (rows_text(&source, "everything", "id").await, rows_text(&target, "everything", "id").await);
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g, "row differs");
    }
    assert_eq!(want.len(), got.len());
    // And a second opinion that does not go through text output at all.
    let digest = "SELECT md5(string_agg(md5(w::text) || (b, i8, f8, n, by, jb, tz, iv)::text, ',' ORDER BY id)) FROM everything w";
    let mut s = source.conn().await;
    let mut t = target.conn().await;
    let a: String = sqlx::query_scalar(digest).fetch_one(&mut s).await.unwrap();
    let b: String = sqlx::query_scalar(digest).fetch_one(&mut t).await.unwrap();
    assert_eq!(a, b);
    // Doubles compare equal as values too (text output could hide -0).
    let exact = "SELECT count(*) FROM everything WHERE f8::text LIKE '-0' OR f4::text = '-0'";
    assert_eq!(source.scalar_i64(exact).await, target.scalar_i64(exact).await);
}

const SCALARS_DDL: &str = r#"
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE DOMAIN doc AS jsonb;
CREATE TABLE scalars (
    id int PRIMARY KEY,
    b boolean, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
    n numeric, n2 numeric(12, 2), t text, vc varchar(10), ch char(5), nm name, by bytea,
    j json, jb jsonb, u uuid, d date, tm time, ts timestamp, tz timestamptz,
    iv interval, dom positive_int, dj doc
);
"#;

/// Every scalar type's edge values; pages of 4 rows put the last two rows,
/// one of them beyond ferry's timestamp range, in a page of their own.
const SCALARS_ROWS: &str = r#"
INSERT INTO scalars VALUES
 (1, true, 32767, 2147483647, 9223372036854775807, 3.4028235e38, 1.7976931348623157e308,
  123456789012345678901234567890.123456789012345678901234567890, 1234567890.12, 'Zoë 🚀 "quoted" \back\slash',
  'ten chars!', 'ab', 'a name', '\x00ff5c0a09', '{ "keep" : [1, 2.50, "spacing"] }', '{"b": 1, "a": [true, null]}',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '5874897-12-31', '24:00:00', '294246-12-31 23:59:59.999999',
  '2024-05-01 10:20:30.123456+00', '-1 year -2 mons +3 days -04:05:06.5', 7, '{"z": 1}'),
 (2, false, -32768, -2147483648, -9223372036854775808, -1.17549435e-38, 5e-324, 'NaN', -0.01, '', '', '', '',
  '\x', 'null', '[]', '00000000-0000-0000-0000-000000000000', '4713-01-01 BC', '00:00:00',
  '4713-01-01 00:00:00 BC', '0044-03-15 12:00:00.000001+00 BC', '0 seconds', 1, 'null'),
 (3, NULL, NULL, NULL, NULL, 'NaN', '-Infinity', 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  'infinity', NULL, '-infinity', 'infinity', NULL, NULL, NULL),
 (4, true, 0, 0, 0, '-0', '-0', '-0.000', 0, E'tab\there\nnewline\r\\', 'x', 'y', 'z', '\x5c4e', '"\u00e9 \\u0000"',
  '"\u00e9"', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '2000-02-29', '23:59:59.999999', '1970-01-01 00:00:00',
  '1969-12-31 23:59:59.999999+00', '178000000 years', 2147483647, '[1, 2]'),
 (5, NULL, NULL, NULL, NULL, 'Infinity', 'NaN', '-Infinity', -9999999999.99, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, '-infinity', NULL, 'infinity', '-infinity', '-178000000 years -1 mons -2 days -00:00:00.000001', NULL, NULL),
 (6, NULL, NULL, NULL, NULL, 1.5, 0.1, '0.00000000000000000001', 0.5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  '1999-12-31', '12:00:00.5', '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00+00', '1 mon', NULL, NULL),
 (7, NULL, NULL, NULL, NULL, NULL, NULL, '100000000', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL),
 (8, NULL, NULL, NULL, NULL, NULL, NULL, '0.1000', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL),
 (9, NULL, NULL, NULL, NULL, NULL, NULL, '-12345.678', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL);
INSERT INTO scalars (id, ts) VALUES (10, '294276-12-31 23:59:59.999999');
"#;

/// A table of scalar types is read and written in binary COPY when ferry
/// must decode it (here through a plugin that changes nothing): every value
/// must come out as PostgreSQL itself prints it, a page holding a value
/// ferry cannot represent must fall back to text (the row a dead letter
/// with its exact text, the others loaded), and the staged writes of
/// `on_conflict = "overwrite"` must do the same.
#[tokio::test]
async fn decoded_values_of_every_scalar_type_equal_postgresqls_own() {
    let (source, target) = (PgDb::new("scalars_src").await, PgDb::new("scalars_dst").await);
    source.exec(&format!("{SCALARS_DDL}{SCALARS_ROWS}")).await;
    // The target's own types (domains, char(5), numeric(12,2), json and
    // jsonb) decide how values are written.
    target.exec(SCALARS_DDL).await;
    let identity = plugins().identity.display().to_string();
    for policy in ["error", "overwrite"] {
        let p = tables_pipeline(
            &source.url(),
            &target.url(),
            "",
            &format!(
                "[migrate]\nbatch_size = 4\n\n[[tables]]\nname = \"public.scalars\"\nplugin = \"{identity}\"\non_conflict = \"{policy}\"\n"
            ),
        );
        // The second round writes over the first's rows (a new run).
        let run = p.ferry(if policy == "error" { &["migrate", "--json"] } else { &["migrate", "--restart", "--json"] });
        assert_eq!(run.code, 4, "{policy}: completed with one dead letter: {run:?}");
        let report = run.json();
        assert_eq!(
            (report["tables"][0]["loaded"].as_u64(), report["tables"][0]["dead_lettered"].as_u64()),
            (Some(9), Some(1)),
            "{policy}: {report}"
        );
        assert_eq!(
            target
                .scalar_i64(
                    "SELECT count(*) FROM ferry.dead_letters WHERE source_key = '10' AND kind = 'extract' \
                     AND reason LIKE 'column ts: `294276-12-31 23:59:59.999999` is not a valid timestamp within%' \
                     AND source_row ->> 'ts' = '294276-12-31 23:59:59.999999' AND source_row ->> 'id' = '10'"
                )
                .await,
            1 + i64::from(policy == "overwrite"),
            "{policy}: the row beyond ferry's range is a dead letter with its exact text"
        );
        let v = p.ferry(&["validate", "--json"]);
        assert_eq!(v.code, 0, "{policy}: {v:?}");
        assert_eq!(v.json()["tables"][0]["matched"], 9, "{v:?}");
    }
    // The decoder on its own (a round trip would hide an error made the
    // same way both ways): each page ferry reads, against PostgreSQL's COPY
    // text of the same rows read by ferry's text decoder.
    use ferry::value::{PG_SESSION, copy_unescape, decode_pg_text, encode_pg_text};
    let url = ferry::db::DbUrl::parse(&source.url()).unwrap();
    let mut reader = ferry::engines::open_row_source(&url, "source").await.unwrap();
    let def = reader.describe(&ferry::db::TableName::parse("scalars").unwrap()).await.unwrap().unwrap();
    let page = reader.read_page(&def, None, 9).await.unwrap();
    assert_eq!((page.rows.len(), page.unreadable.len()), (9, 0), "rows 1-9 are all representable");
    let mut c = source.conn().await;
    for (name, value) in PG_SESSION {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET {name} = '{value}'"))).execute(&mut c).await.unwrap();
    }
    let mut text = Vec::new();
    let mut copy = c.copy_out_raw("COPY (SELECT * FROM scalars WHERE id < 10 ORDER BY id) TO STDOUT").await.unwrap();
    while let Some(chunk) = futures_util::TryStreamExt::try_next(&mut copy).await.unwrap() {
        text.extend_from_slice(&chunk);
    }
    drop(copy);
    let lines: Vec<&[u8]> = text.strip_suffix(b"\n").unwrap().split(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), 9);
    for (line, row) in lines.iter().zip(&page.rows) {
        for ((field, column), value) in line.split(|&b| b == b'\t').zip(&def.columns).zip(row) {
            let want =
                copy_unescape(field).unwrap().map(|t| decode_pg_text(&column.kind, &column.sql_type, &t).unwrap());
            let want = want.as_ref().and_then(encode_pg_text);
            assert_eq!(encode_pg_text(value), want, "column {} of {}", column.name, String::from_utf8_lossy(line));
        }
    }
    // PostgreSQL's own text of every row, and a digest of values whose
    // text could hide a difference (-0, float bits, jsonb).
    let (want, got) = (
        rows_text(&source, "(SELECT * FROM scalars WHERE id < 10)", "id").await,
        rows_text(&target, "scalars", "id").await,
    );
    assert_eq!(want.len(), 9);
    assert_eq!(want, got);
    let digest = "SELECT md5(string_agg(concat_ws('|', float8send(f8), float4send(f4), numeric_send(n), jb, \
                  timestamptz_send(tz), interval_send(iv)), ',' ORDER BY id)) FROM scalars WHERE id < 10";
    let a: String = sqlx::query_scalar(digest).fetch_one(&mut source.conn().await).await.unwrap();
    let b: String = sqlx::query_scalar(digest).fetch_one(&mut target.conn().await).await.unwrap();
    assert_eq!(a, b);
}

/// Validation reads a target table with the source's kinds: where the
/// target's own types differ (digits in a `text` source column, loaded into
/// a `bigint` one), it must read them as PostgreSQL prints them, not as the
/// other type's binary form.
#[tokio::test]
async fn validate_reads_a_target_of_other_column_types_by_their_text() {
    let (source, target) = (PgDb::new("othertypes_src").await, PgDb::new("othertypes_dst").await);
    source
        .exec(
            "CREATE TABLE codes (id int PRIMARY KEY, code text NOT NULL); \
             INSERT INTO codes SELECT g, g::text FROM generate_series(1, 50) g",
        )
        .await;
    // (A bigint's binary form is eight bytes that are valid UTF-8 for
    // numbers below 128: read as text, they would be a silently wrong value.)
    target.exec("CREATE TABLE codes (id int PRIMARY KEY, code bigint NOT NULL)").await;
    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"public.*\"]", "");
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(target.scalar_i64("SELECT sum(code)::int8 FROM codes").await, 50 * 51 / 2);
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["tables"][0]["matched"], 50, "{v:?}");
    // A control schema an older ferry made has no lineage table: the
    // read-only commands do without it.
    target.exec("DROP TABLE ferry.lineage").await;
    assert_eq!(p.ferry(&["validate"]).code, 0);
    assert_eq!(p.ferry(&["status"]).code, 0);
}

#[tokio::test]
async fn composite_and_text_keys_resume_exactly_after_kill_9() {
    let (source, target) = (PgDb::new("keys_src").await, PgDb::new("keys_dst").await);
    source
        .exec(
            "CREATE TABLE order_lines (order_ref text, line int, sku text NOT NULL, qty numeric(10,3), \
               PRIMARY KEY (order_ref, line));
             INSERT INTO order_lines SELECT \
               (ARRAY['A', 'a', 'É', 'ö''s', ' sp ace', 'z\"q', '日本'])[1 + g % 7] || (g / 7)::text, g % 5, \
               'sku-' || g, g / 1000.0 FROM generate_series(1, 40000) g;
             CREATE TABLE events (id uuid PRIMARY KEY, at timestamptz NOT NULL, body jsonb);
             INSERT INTO events SELECT md5(g::text)::uuid, '2020-01-01'::timestamptz + g * interval '1.000001 second', \
               jsonb_build_object('n', g, 'doc', repeat(md5(g::text), 20)) FROM generate_series(1, 20000) g;
             CREATE TABLE readings (sensor text, at timestamptz, value double precision, PRIMARY KEY (sensor, at));
             INSERT INTO readings SELECT 's' || (g % 13), '2021-06-01'::timestamptz + g * interval '1 microsecond', \
               g * 1.1 FROM generate_series(1, 30000) g;
             CREATE TABLE documents (owner text, version int, doc text NOT NULL, PRIMARY KEY (owner, version));
             INSERT INTO documents SELECT 'ówner ' || (g % 37), g, \
               (SELECT string_agg(md5(g::text || '/' || i::text), '') FROM generate_series(1, 300) i) \
               FROM generate_series(1, 2000) g;",
        )
        .await;
    // The documents (~9.6 KB of incompressible text each) are stored out of line.
    assert!(
        source
            .scalar_i64("SELECT pg_relation_size(reltoastrelid)::int8 FROM pg_class WHERE relname = 'documents'")
            .await
            > 5_000_000,
        "the documents are TOASTed"
    );
    let p = tables_pipeline(
        &source.url(),
        &target.url(),
        "include = [\"public.*\"]",
        "[migrate]\nbatch_size = 300\nworkers = 2\n",
    );
    let kills = kill_until_done(|| p.command(&["migrate", "--json"]), &[0]);
    assert!(kills >= 2, "only {kills} kills landed: the test did not exercise resume");
    for (table, order) in [
        ("order_lines", "order_ref, line"),
        ("events", "id"),
        ("readings", "sensor, at"),
        ("documents", "owner, version"),
    ] {
        assert!(rows_text(&target, table, order).await == rows_text(&source, table, order).await, "{table} differs");
    }
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.runs").await, 1, "one run, resumed");
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM pg_index WHERE indisprimary AND indrelid::regclass::text IN ('order_lines', 'events', 'readings', 'documents')").await,
        4,
        "each primary key, built after the data, holds: no row was loaded twice"
    );
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.dead_letters").await, 0);
    assert_eq!(
        target.scalar_i64("SELECT sum(loaded)::int8 FROM ferry.table_progress").await,
        92_000,
        "the ledger counts every row once"
    );
}

/// Starts `ferry migrate` and kills it (SIGKILL) once `table`'s copy in
/// storage order has committed a few pages, as the target's ledger shows.
async fn kill_during_heap_copy(p: &Pipeline, target: &PgDb, table: &str) {
    let mut child = p
        .command(&["migrate"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut seen = false;
    let mut observer = target.conn().await;
    while started.elapsed() < std::time::Duration::from_secs(120) {
        // Absent until ferry made its control tables: then not yet.
        let progress: Option<(String, i64)> =
            sqlx::query_as("SELECT phase, batches FROM ferry.table_progress WHERE table_name = $1")
                .bind(table)
                .fetch_optional(&mut observer)
                .await
                .unwrap_or(None);
        if progress.is_some_and(|(phase, batches)| phase == "copying_heap" && batches >= 3) {
            seen = true;
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the copy finished before it could be interrupted");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen, "the copy of {table} was never seen in storage order with pages committed");
}

/// A fresh copy into a table ferry creates reads the source in heap order
/// (no index walk); killed in the middle, it starts that table over, in key
/// order, and the result is still exact.
#[tokio::test]
async fn an_interrupted_heap_order_copy_starts_its_table_over_exactly() {
    let (source, target) = (PgDb::new("heap_src").await, PgDb::new("heap_dst").await);
    // Keys in random heap order (md5), rows of ~1 KB of incompressible text,
    // updated rows scattered: heap order is nothing like key order.
    source
        .exec(
            "CREATE TABLE items (id uuid PRIMARY KEY, n int NOT NULL, body text NOT NULL);
             INSERT INTO items SELECT md5(g::text)::uuid, g, \
               (SELECT string_agg(md5(g::text || '/' || i::text), '') FROM generate_series(1, 32) i) \
               FROM generate_series(1, 60000) g;
             UPDATE items SET n = -n WHERE n % 97 = 0;
             ANALYZE items;",
        )
        .await;
    let p =
        tables_pipeline(&source.url(), &target.url(), "include = [\"public.items\"]", "[migrate]\nbatch_size = 500\n");

    // Kill the first run once it has committed a few heap-order pages.
    kill_during_heap_copy(&p, &target, "public.items").await;
    let partial = target.scalar_i64("SELECT count(*) FROM items").await;
    assert!(partial > 0 && partial < 60000, "killed in the middle: {partial} rows were in");

    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("copying the table again, in key order"), "{run:?}");
    assert!(
        rows_text(&target, "items", "id").await == rows_text(&source, "items", "id").await,
        "the copy differs from the source"
    );
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM pg_index WHERE indisprimary AND indrelid = 'items'::regclass").await,
        1,
        "the primary key, built after the data, holds: no row was loaded twice"
    );
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.runs").await, 1, "one run, resumed");
    assert_eq!(
        target.scalar_i64("SELECT loaded FROM ferry.table_progress WHERE table_name = 'public.items'").await,
        60000,
        "the ledger counts every row once, not the discarded first attempt"
    );
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
}

/// Identity columns stay identity columns (ALWAYS or BY DEFAULT), and the
/// target's sequence continues where the source's would: the next row
/// inserted on either side gets the same id.
#[tokio::test]
async fn identity_columns_are_kept_and_continue_where_the_source_left_off() {
    let (source, target) = (PgDb::new("ident_src").await, PgDb::new("ident_dst").await);
    source
        .exec(
            "CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL);
             CREATE TABLE tags (id int GENERATED BY DEFAULT AS IDENTITY (START WITH 100 INCREMENT BY 5) PRIMARY KEY,
                 name text);
             INSERT INTO tickets (title) SELECT 't' || g FROM generate_series(1, 500) g;
             DELETE FROM tickets WHERE id > 490;
             INSERT INTO tags (name) SELECT 'g' || g FROM generate_series(1, 10) g;",
        )
        .await;
    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"public.*\"]", "");
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 0, "{run:?}");
    for (table, order) in [("tickets", "id"), ("tags", "id")] {
        assert!(rows_text(&target, table, order).await == rows_text(&source, table, order).await, "{table} differs");
    }
    let kinds = "SELECT string_agg(attrelid::regclass::text || '=' || attidentity::text, ',' ORDER BY attrelid::regclass::text) \
                 FROM pg_attribute WHERE attrelid IN ('tickets'::regclass, 'tags'::regclass) AND attname = 'id'";
    let kind = |db: &PgDb| {
        let url = db.url();
        async move {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, String>(kinds).fetch_one(&mut c).await.unwrap()
        }
    };
    assert_eq!(kind(&target).await, kind(&source).await);
    for insert in [
        "INSERT INTO tickets (title) VALUES ('new') RETURNING id::int8",
        "INSERT INTO tags (name) VALUES ('new') RETURNING id::int8",
    ] {
        let (next_source, next_target) = (source.scalar_i64(insert).await, target.scalar_i64(insert).await);
        assert_eq!(next_target, next_source, "{insert}");
    }
    assert_eq!(target.scalar_i64("SELECT max(id)::int8 FROM tickets").await, 501, "after the deleted 491..500");
}

/// A column's definition as the catalog holds it: type, NOT NULL, default
/// expression (sequence names included), generated kind and expression,
/// and whether it owns a sequence.
async fn column_definitions(db: &PgDb, table: &str) -> Vec<String> {
    let mut c = db.conn().await;
    sqlx::query_scalar(
        "SELECT concat_ws(' | ', a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull::text, \
                 coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), a.attgenerated::text, a.attidentity::text, \
                 (pg_get_serial_sequence($1, a.attname) IS NOT NULL)::text) \
         FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(&mut c)
    .await
    .unwrap()
}

/// Serial columns keep a sequence of their own, defaults and stored
/// generated columns are recreated where they were, and after the copy
/// every sequence — in a table ferry created or one that was there — hands
/// out what the source's would next (the source's run ahead of max(id)).
#[tokio::test]
async fn serials_defaults_and_generated_columns_are_recreated_and_sequences_follow_the_source() {
    let (source, target) = (PgDb::new("serial_src").await, PgDb::new("serial_dst").await);
    let ledger = "CREATE TABLE ledger (id bigserial PRIMARY KEY, amount numeric(12, 2) NOT NULL);";
    source
        .exec(&format!(
            "CREATE TABLE accounts (id serial PRIMARY KEY, code bigserial NOT NULL, name text NOT NULL DEFAULT 'anon',
                 created timestamptz NOT NULL DEFAULT now(), status text DEFAULT 'new'::text,
                 name_len int GENERATED ALWAYS AS (length(name) * 2) STORED, note text);
             CREATE TABLE \"Odd \"\"Name\" (\"Id\" smallserial PRIMARY KEY, v text);
             {ledger}
             INSERT INTO accounts (name, note) SELECT 'n' || g, 'x' FROM generate_series(1, 300) g;
             DELETE FROM accounts WHERE id > 290;
             INSERT INTO \"Odd \"\"Name\" (v) VALUES ('a'), ('b');
             INSERT INTO ledger (amount) SELECT g * 1.5 FROM generate_series(1, 40) g;"
        ))
        .await;
    // A target table that is already there, its sequence at its start.
    target.exec(ledger).await;
    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"public.*\"]", "");
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 0, "{run:?}");
    for table in ["accounts", "\"Odd \"\"Name\""] {
        assert_eq!(column_definitions(&target, table).await, column_definitions(&source, table).await, "{table}");
    }
    assert_eq!(rows_text(&target, "accounts", "id").await, rows_text(&source, "accounts", "id").await);
    for insert in [
        "INSERT INTO accounts (name) VALUES ('later') RETURNING id::int8 * 1000000 + code",
        "INSERT INTO \"Odd \"\"Name\" (v) VALUES ('c') RETURNING \"Id\"::int8",
        "INSERT INTO ledger (amount) VALUES (1) RETURNING id",
    ] {
        let (next_source, next_target) = (source.scalar_i64(insert).await, target.scalar_i64(insert).await);
        assert_eq!(next_target, next_source, "{insert}");
    }
    assert_eq!(
        target.scalar_i64("SELECT id::int8 FROM accounts WHERE name = 'later'").await,
        301,
        "past the deleted rows"
    );
    assert_eq!(
        target.scalar_i64("SELECT name_len::int8 FROM accounts WHERE name = 'later'").await,
        10,
        "computed by the target"
    );
}

/// SQLite's `INTEGER PRIMARY KEY` is its rowid, handed out to rows
/// inserted without one: copied into PostgreSQL it becomes an identity
/// column (BY DEFAULT) whose next value is the one SQLite would give —
/// past deleted rows under `AUTOINCREMENT`, max + 1 otherwise.
#[tokio::test]
async fn sqlite_rowid_keys_become_identity_columns_that_continue_where_sqlite_would() {
    let (file, target) = (SqliteDb::new(), PgDb::new("rowid_dst").await);
    file.exec(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
         CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE pairs (a INTEGER, b INTEGER, PRIMARY KEY (a, b));
         INSERT INTO notes (body) VALUES ('a'), ('b'), ('c'), ('d');
         DELETE FROM notes WHERE id >= 3;
         INSERT INTO tags (name) VALUES ('x'), ('y'), ('z');
         DELETE FROM tags WHERE id = 3;
         INSERT INTO pairs VALUES (1, 2);",
    )
    .await;
    let p = tables_pipeline(&file.url(), &target.url(), "include = [\"*\"]", "");
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 0, "{run:?}");
    let identity = |table: &str| {
        format!("SELECT count(*) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attidentity = 'd'")
    };
    assert_eq!(target.scalar_i64(&identity("notes")).await, 1);
    assert_eq!(target.scalar_i64(&identity("pairs")).await, 0, "a composite key is no rowid");
    for (insert, table) in [
        ("INSERT INTO notes (body) VALUES ('new') RETURNING id", "notes"),
        ("INSERT INTO tags (name) VALUES ('new') RETURNING id", "tags"),
    ] {
        let in_sqlite = file.scalar_i64(insert).await;
        assert_eq!(target.scalar_i64(insert).await, in_sqlite, "{table}");
    }
    assert_eq!(file.scalar_i64("SELECT max(id) FROM notes").await, 5, "AUTOINCREMENT skipped the deleted 3 and 4");
}

/// A table without a key as a multiset of rows, by a query of our own:
/// each distinct row (as PostgreSQL prints it) with how often it occurs.
async fn row_multiset(db: &PgDb, table: &str) -> Vec<(String, i64)> {
    let mut c = db.conn().await;
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT md5(r::text), count(*) FROM {table} r GROUP BY 1 ORDER BY 1")))
        .fetch_all(&mut c)
        .await
        .unwrap()
}

/// A log table with no key: duplicates, all-NULL rows, out-of-line
/// TOASTed bodies of incompressible text.
const KEYLESS_DDL: &str = "
CREATE TABLE kinds (code text PRIMARY KEY, label text);
INSERT INTO kinds VALUES ('a', 'A'), ('dup', 'twice');
CREATE TABLE events (at timestamptz, kind text, body text, n numeric);
INSERT INTO events SELECT '2024-01-01'::timestamptz + g * interval '1 ms', 'a', 'event ' || g, g / 7.0
    FROM generate_series(1, 3000) g;
INSERT INTO events SELECT '2024-06-01', 'dup', 'same', 1.50 FROM generate_series(1, 3);
INSERT INTO events VALUES (NULL, NULL, NULL, NULL), (NULL, NULL, NULL, NULL);
INSERT INTO events SELECT now(), 'big', (SELECT string_agg(md5(g::text || '/' || i::text), '') FROM generate_series(1, 256) i), g
    FROM generate_series(1, 40) g;
ANALYZE events;";

/// A table without a key is refused, with the ways out; opted into
/// storage order (`keyless = "ctid"`) it is copied exactly — duplicates
/// and all — validated as a multiset, and a difference seeded in the
/// target is found; a change stream and a second copy into the non-empty
/// table are refused.
#[tokio::test]
async fn a_keyless_table_is_refused_unless_copied_in_storage_order_and_then_compared_as_a_multiset() {
    let (source, target) = (PgDb::new("keyless_src").await, PgDb::new("keyless_dst").await);
    source.exec(KEYLESS_DDL).await;
    let refused = tables_pipeline(&source.url(), &target.url(), "include = [\"public.*\"]", "");
    let run = refused.ferry(&["migrate"]);
    assert_eq!(run.code, 8, "{run:?}");
    assert!(
        run.stderr.contains("public.events has no primary key") && run.stderr.contains("keyless = \"ctid\""),
        "{run:?}"
    );
    assert_eq!(target.scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'events'").await, 0, "nothing created");

    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"public.*\"]\nkeyless = \"ctid\"", "");
    let check = p.ferry(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(check.stdout.contains("no key: copied in storage order"), "{check:?}");
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    let events = report["tables"].as_array().unwrap().iter().find(|t| t["table"] == "public.events").unwrap();
    assert_eq!((events["source_rows"].as_u64(), events["loaded"].as_u64()), (Some(3045), Some(3045)), "{report}");
    assert_eq!(events["accounted"], true);
    assert_eq!(row_multiset(&target, "events").await, row_multiset(&source, "events").await);
    assert!(
        source.scalar_i64("SELECT count(*) FROM events WHERE pg_column_size(body) > 2000").await >= 40,
        "the big bodies are out of line"
    );

    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    let line = v.json()["tables"].as_array().unwrap().iter().find(|t| t["table"] == "public.events").cloned().unwrap();
    assert_eq!(line["matched"], 3045, "{line}");

    // One of three equal rows lost, one row that never was added.
    target
        .exec(
            "DELETE FROM events WHERE ctid = (SELECT ctid FROM events WHERE kind = 'dup' LIMIT 1);
             INSERT INTO events VALUES ('2030-01-01', 'ghost', 'never in the source', 0);",
        )
        .await;
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 3, "{v:?}");
    let line = v.json()["tables"].as_array().unwrap().iter().find(|t| t["table"] == "public.events").cloned().unwrap();
    assert_eq!(
        (line["matched"].as_u64(), line["missing"].as_u64(), line["extra"].as_u64()),
        (Some(3044), Some(1), Some(1)),
        "{line}"
    );
    let listed = line["differences"].to_string();
    assert!(listed.contains("same") && listed.contains("never in the source"), "{listed}");

    // Everything missing, matched a few buckets per pass (pages of 50 rows:
    // at most ~1,000 rows held per pass, so several passes): every row counted.
    let small = tables_pipeline(
        &source.url(),
        &target.url(),
        "include = [\"public.*\"]\nkeyless = \"ctid\"",
        "[migrate]\nbatch_size = 50\n",
    );
    let (mut all_missing, held) = (target.conn().await, "CREATE TABLE held AS SELECT * FROM events; TRUNCATE events");
    sqlx::raw_sql(held).execute(&mut all_missing).await.unwrap();
    let v = small.ferry(&["validate", "--json", "--table", "public.events"]);
    assert_eq!(v.code, 3, "{v:?}");
    let line = v.json()["tables"][0].clone();
    assert_eq!((line["matched"].as_u64(), line["missing"].as_u64()), (Some(0), Some(3045)), "{line}");
    assert_eq!(line["differences"].as_array().map(Vec::len), Some(20), "the first 20 listed: {line}");
    sqlx::raw_sql("INSERT INTO events SELECT * FROM held; DROP TABLE held").execute(&mut all_missing).await.unwrap();

    // No key to apply updates and deletes by; no key to skip existing rows by.
    let sync = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(sync.code, 8, "{sync:?}");
    assert!(sync.stderr.contains("a change stream applies updates and deletes by key"), "{sync:?}");
    let again = p.ferry(&["migrate", "--restart"]);
    assert_eq!(again.code, 8, "{again:?}");
    assert!(again.stderr.contains("already holds 3045 rows"), "{again:?}");
}

/// Storage order on SQLite is rowids: a keyless table goes to SQLite and
/// back (negative rowids included) and validates as a multiset both ways.
#[tokio::test]
async fn a_keyless_table_goes_to_sqlite_and_back_in_storage_order() {
    let (source, back) = (PgDb::new("keyless_rt_src").await, PgDb::new("keyless_rt_back").await);
    source.exec(KEYLESS_DDL).await;
    // Three rows ferry cannot represent (its times are 64-bit µs): each is
    // a dead letter of its own, though no key tells them apart.
    source.exec("INSERT INTO events SELECT '294276-12-31 23:59:59+00', 'far', 'future ' || g, g FROM generate_series(1, 3) g").await;
    let file = SqliteDb::new();
    let keys = "include = [\"public.events\"]\nkeyless = \"ctid\"";
    let to_sqlite = tables_pipeline(&source.url(), &file.url(), keys, "[migrate]\nbatch_size = 700\n");
    let run = to_sqlite.ferry(&["migrate"]);
    assert_eq!(run.code, 4, "dead letters: {run:?}");
    assert_eq!(file.scalar_i64("SELECT count(*) FROM events").await, 3045);
    assert_eq!(
        file.scalar_i64("SELECT count(DISTINCT source_key) FROM ferry_dead_letters WHERE source_row LIKE '%future%'")
            .await,
        3,
        "three dead letters, three names"
    );
    let v = to_sqlite.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "the missing rows are explained by their dead letters: {v:?}");
    assert_eq!(v.json()["tables"][0]["explained"], 3, "{v:?}");
    // An application's own negative rowid, before the first range.
    file.exec("INSERT INTO events (rowid, kind) VALUES (-5, 'negative')").await;
    let v = to_sqlite.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 3, "the extra SQLite row is found: {v:?}");
    assert_eq!(v.json()["tables"][0]["extra"], 1, "{v:?}");
    source.exec("DELETE FROM events WHERE kind = 'far'").await;

    let from_sqlite = tables_pipeline(
        &file.url(),
        &back.url(),
        "include = [\"events\"]\nkeyless = \"ctid\"",
        "[migrate]\nbatch_size = 700\n",
    );
    let run = from_sqlite.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["tables"][0]["loaded"], 3046, "{run:?}");
    let v = from_sqlite.ferry(&["validate"]);
    assert_eq!(v.code, 0, "{v:?}");
    back.exec("DELETE FROM events WHERE kind = 'negative'").await;
    let columns = "SELECT md5((at, kind, body, n::numeric)::text), count(*) FROM events GROUP BY 1 ORDER BY 1";
    let (mut a, mut b) = (source.conn().await, back.conn().await);
    let original: Vec<(String, i64)> = sqlx::query_as(columns).fetch_all(&mut a).await.unwrap();
    let round_trip: Vec<(String, i64)> = sqlx::query_as(columns).fetch_all(&mut b).await.unwrap();
    assert_eq!(round_trip, original, "the same rows came back");
}

/// Killed in the middle, a keyless copy empties its target and starts the
/// table over (there is no key to resume after): exact, counted once.
#[tokio::test]
async fn an_interrupted_keyless_copy_starts_its_table_over_exactly() {
    let (source, target) = (PgDb::new("keyless_kill_src").await, PgDb::new("keyless_kill_dst").await);
    source
        .exec(
            "CREATE TABLE log (n int, body text);
             INSERT INTO log SELECT g % 1000, (SELECT string_agg(md5(g::text || '/' || i::text), '') FROM generate_series(1, 32) i)
                 FROM generate_series(1, 60000) g;
             INSERT INTO log SELECT n, body FROM log WHERE n = 7;
             ANALYZE log;",
        )
        .await;
    let p = tables_pipeline(
        &source.url(),
        &target.url(),
        "include = [\"public.log\"]\nkeyless = \"ctid\"",
        "[migrate]\nbatch_size = 500\n",
    );
    kill_during_heap_copy(&p, &target, "public.log").await;
    let partial = target.scalar_i64("SELECT count(*) FROM log").await;
    assert!(partial > 0 && partial < 60060, "killed in the middle: {partial} rows were in");

    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("copying the table again, in storage order"), "{run:?}");
    assert_eq!(row_multiset(&target, "log").await, row_multiset(&source, "log").await);
    assert_eq!(
        target.scalar_i64("SELECT loaded FROM ferry.table_progress WHERE table_name = 'public.log'").await,
        60060,
        "the ledger counts every row once"
    );
    assert_eq!(p.ferry(&["validate"]).code, 0);
}

const SHOP_DDL: &str = r#"
CREATE SCHEMA shop;
CREATE TABLE shop.customers (id bigint PRIMARY KEY, email text NOT NULL, name text, joined timestamptz NOT NULL);
CREATE UNIQUE INDEX customers_email ON shop.customers (lower(email));
CREATE TABLE shop.products (sku text PRIMARY KEY, price numeric(10, 2) NOT NULL CHECK (price >= 0), tags text[]);
CREATE TABLE shop.orders (id uuid PRIMARY KEY, customer_id bigint NOT NULL REFERENCES shop.customers (id) ON DELETE CASCADE,
    placed date NOT NULL, note text);
CREATE INDEX orders_customer ON shop.orders (customer_id);
CREATE INDEX orders_open ON shop.orders (placed) WHERE note IS NULL;
CREATE TABLE shop.order_items (order_id uuid REFERENCES shop.orders (id), line int, sku text NOT NULL REFERENCES shop.products,
    qty int NOT NULL, PRIMARY KEY (order_id, line));
CREATE TABLE shop.audit (at timestamptz NOT NULL, what text NOT NULL, seq bigint NOT NULL);
CREATE UNIQUE INDEX audit_seq ON shop.audit (seq);
INSERT INTO shop.customers SELECT g, 'User' || g || '@Example.com', CASE WHEN g % 9 = 0 THEN NULL ELSE 'Name ' || g END,
    '2019-01-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 3000) g;
INSERT INTO shop.products SELECT 'P' || g, g * 1.25, ARRAY['t' || (g % 3), NULL] FROM generate_series(1, 200) g;
INSERT INTO shop.orders SELECT md5('o' || g)::uuid, 1 + g % 3000, '2023-01-01'::date + g % 365,
    CASE WHEN g % 4 = 0 THEN 'gift' END FROM generate_series(1, 8000) g;
INSERT INTO shop.order_items SELECT md5('o' || g)::uuid, l, 'P' || (1 + (g * l) % 200), l FROM generate_series(1, 8000) g,
    generate_series(1, 3) l;
INSERT INTO shop.audit SELECT '2024-01-01'::timestamptz + g * interval '1 second', 'event ' || g, g FROM generate_series(1, 500) g;
"#;

const SHOP: [(&str, &str); 5] = [
    ("shop.customers", "id"),
    ("shop.products", "sku"),
    ("shop.orders", "id"),
    ("shop.order_items", "order_id, line"),
    ("shop.audit", "seq"),
];

#[tokio::test]
async fn a_schema_with_foreign_keys_is_copied_and_its_constraints_rebuilt_after_the_data() {
    let (source, target) = (PgDb::new("shop_src").await, PgDb::new("shop_dst").await);
    source.exec(SHOP_DDL).await;

    // A table without a primary key is refused, with the way out.
    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"shop.*\"]", "");
    let refused = p.ferry(&["migrate"]);
    assert_eq!(refused.code, 8, "{refused:?}");
    assert!(
        refused.stderr.contains("shop.audit has no primary key") && refused.stderr.contains("key = [\"column\""),
        "{refused:?}"
    );
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM pg_tables WHERE schemaname = 'shop'").await,
        0,
        "nothing written"
    );

    let check = p.ferry(&["check"]);
    assert_eq!(check.code, 3, "{check:?}");
    assert!(check.stdout.contains("shop.audit has no primary key"), "{check:?}");

    let p = tables_pipeline(
        &source.url(),
        &target.url(),
        "include = [\"shop.*\"]",
        "[migrate]\nworkers = 3\nbatch_size = 1000\n\n[[tables]]\nname = \"shop.audit\"\nkey = [\"seq\"]\n",
    );
    let check = p.ferry(&["check", "--json"]);
    assert_eq!(check.code, 0, "{check:?}");
    let items = check.json()["items"].to_string();
    assert!(items.contains("table shop.order_items") && items.contains("key (order_id, line)"), "{items}");
    assert!(items.contains("key (seq) (a unique index)"), "{items}");
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["tables"].as_array().unwrap().len(), 5, "{report}");
    assert_eq!(report["source_rows"], 3000 + 200 + 8000 + 24000 + 500);
    assert_eq!(report["accounted"], true);
    for (table, order) in SHOP {
        assert_eq!(rows_text(&target, table, order).await, rows_text(&source, table, order).await, "{table}");
    }
    // Indexes (expression and partial ones too), checks and foreign keys,
    // as the source defines them, read from the target's catalog.
    let defs = "SELECT string_agg(pg_get_indexdef(indexrelid), '; ' ORDER BY pg_get_indexdef(indexrelid)) FROM pg_index \
                WHERE indrelid::regclass::text LIKE 'shop.%' AND NOT indisprimary";
    let constraints = "SELECT string_agg(conrelid::regclass || ' ' || pg_get_constraintdef(oid), '; ' \
                       ORDER BY conrelid::regclass::text, pg_get_constraintdef(oid)) \
                       FROM pg_constraint WHERE connamespace = 'shop'::regnamespace AND contype IN ('f', 'c')";
    let mut s = source.conn().await;
    let mut t = target.conn().await;
    for sql in [defs, constraints] {
        let a: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut s).await.unwrap();
        let b: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut t).await.unwrap();
        assert!(a.is_some());
        assert_eq!(a, b, "{sql}");
    }
    assert_eq!(
        target
            .scalar_i64("SELECT count(*) FROM pg_constraint WHERE conrelid = 'shop.audit'::regclass AND contype = 'p'")
            .await,
        0,
        "the chosen key stays a unique index, as in the source"
    );
    // The foreign keys hold: a child without its parent is refused.
    let orphan = sqlx::query("INSERT INTO shop.orders VALUES (gen_random_uuid(), 999999, '2024-01-01', NULL)")
        .execute(&mut t)
        .await;
    assert!(orphan.is_err(), "the foreign key was rebuilt");

    let status = p.ferry(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let status = status.json();
    assert_eq!(status["tables"].as_array().unwrap().len(), 5, "{status}");
    assert!(status["tables"].as_array().unwrap().iter().all(|t| t["phase"] == "done"), "{status}");
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    let items = v.json()["tables"].as_array().unwrap().iter().find(|t| t["table"] == "shop.order_items").cloned();
    assert_eq!(items.unwrap()["matched"], 24000, "{v:?}");

    // Someone changes the target behind ferry's back: validate names the
    // rows, table by table, and only them.
    target
        .exec(
            "UPDATE shop.customers SET name = 'changed' WHERE id = 42;
             DELETE FROM shop.order_items WHERE order_id = md5('o7')::uuid AND line = 2;
             INSERT INTO shop.products VALUES ('EXTRA', 1, NULL);",
        )
        .await;
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 3, "{v:?}");
    let v = v.json();
    let differences: Vec<(String, String, String)> = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| {
            t["differences"].as_array().unwrap().iter().map(move |d| {
                (
                    t["table"].as_str().unwrap().to_string(),
                    d["key"].as_str().unwrap().to_string(),
                    d["kind"].to_string(),
                )
            })
        })
        .collect();
    let order = sqlx::query_scalar::<_, String>("SELECT md5('o7')::uuid::text").fetch_one(&mut t).await.unwrap();
    assert_eq!(
        differences,
        vec![
            ("shop.customers".into(), "42".into(), "\"different\"".into()),
            ("shop.products".into(), "EXTRA".into(), "\"extra\"".into()),
            ("shop.order_items".into(), format!("[\"{order}\",\"2\"]"), "\"missing\"".into()),
        ]
        .into_iter()
        .filter(|d: &(String, String, String)| differences.contains(d))
        .collect::<Vec<_>>(),
    );
    assert_eq!(differences.len(), 3, "{v}");
    let narrowed = p.ferry(&["validate", "--json", "--table", "shop.orders"]);
    assert_eq!(narrowed.code, 0, "{narrowed:?}");
    assert_eq!(narrowed.json()["tables"].as_array().unwrap().len(), 1);
    target.exec("DELETE FROM shop.products WHERE sku = 'EXTRA'").await;

    // Again: the completed run has nothing to do.
    let again = p.ferry(&["migrate", "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["ending"], "already_completed");
}

#[tokio::test]
async fn existing_target_tables_with_foreign_keys_are_loaded_parents_first() {
    let (source, target) = (PgDb::new("fk_src").await, PgDb::new("fk_dst").await);
    source.exec(SHOP_DDL).await;
    // The target schema exists with its constraints (e.g. made by the
    // application's migrations): loading a child before its parent would fail.
    target.exec(&SHOP_DDL[..SHOP_DDL.find("INSERT").unwrap()]).await;
    let p = tables_pipeline(
        &source.url(),
        &target.url(),
        "include = [\"shop.*\"]\nexclude = [\"shop.audit\"]",
        "[migrate]\nworkers = 4\nbatch_size = 500\n",
    );
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    for (table, order) in &SHOP[..4] {
        assert_eq!(rows_text(&target, table, order).await, rows_text(&source, table, order).await, "{table}");
    }
    assert_eq!(target.scalar_i64("SELECT count(*) FROM shop.audit").await, 0, "excluded");
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM ferry.dead_letters").await,
        0,
        "no row refused by a foreign key"
    );
}

#[tokio::test]
async fn postgres_to_sqlite_and_back_keeps_every_value() {
    let (source, back) = (PgDb::new("rt_src").await, PgDb::new("rt_back").await);
    source.exec(SHOP_DDL).await;
    source.exec("ALTER TABLE shop.audit ADD PRIMARY KEY (seq)").await;
    let file = SqliteDb::new();
    let to_sqlite = tables_pipeline(&source.url(), &file.url(), "include = [\"shop.*\"]", "[migrate]\nworkers = 2\n");
    let run = to_sqlite.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(file.scalar_i64("SELECT count(*) FROM order_items").await, 24000);
    assert_eq!(file.scalar_i64("SELECT count(*) FROM ferry_dead_letters").await, 0);
    assert_eq!(
        file.scalar_i64(
            "SELECT count(*) FROM sqlite_master WHERE name = 'orders' AND sql LIKE '%REFERENCES \"customers\"%'"
        )
        .await,
        1,
        "SQLite gets the foreign keys in CREATE TABLE"
    );
    assert_eq!(file.scalar_i64("SELECT count(*) FROM sqlite_master WHERE name = 'orders_customer'").await, 1);
    // SQLite's own view of what it holds: exact decimals as text, UTC times.
    let mut c = file.conn().await;
    let (price, joined): (String, String) =
        sqlx::query_as("SELECT price, joined FROM customers JOIN products ON sku = 'P3' WHERE id = 2")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!((price.as_str(), joined.as_str()), ("3.75", "2019-01-01 02:00:00+00:00"));

    let from_sqlite = tables_pipeline(&file.url(), &back.url(), "include = [\"*\"]", "[migrate]\nworkers = 2\n");
    let run = from_sqlite.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    // Same values, compared column by column through the types PostgreSQL
    // gave them the first time.
    for (table, columns, order) in [
        ("customers", "id, email, name, joined", "id"),
        ("products", "sku, price, tags", "sku"),
        ("orders", "id, customer_id, placed, note", "id"),
        ("order_items", "order_id, line, sku, qty", "order_id, line"),
        ("audit", "at, what, seq", "seq"),
    ] {
        let sql = |schema: &str| format!("SELECT ({columns})::text FROM {schema}{table} ORDER BY {order}");
        let mut a = source.conn().await;
        let mut b = back.conn().await;
        let want: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql("shop."))).fetch_all(&mut a).await.unwrap();
        let got: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql(""))).fetch_all(&mut b).await.unwrap();
        assert_eq!(want, got, "{table}");
    }
    for p in [&to_sqlite, &from_sqlite] {
        let v = p.ferry(&["validate"]);
        assert_eq!(v.code, 0, "{v:?}");
        assert!(v.stdout.contains("every row matches"), "{v:?}");
    }
}

/// The legacy shop of the quickstart: the seed's users, orders keeping their
/// items in JSON, and a lookup table.
pub const LEGACY_SHOP: &str = r#"
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, created_at TIMESTAMP, metadata TEXT);
INSERT INTO users VALUES
 (1, 'Mary Ann de la Cruz', 'Mary.Ann@Example.COM', '2024-01-15 09:30:00.123456', '{"theme":"dark"}'),
 (2, 'Zoë Ångström', 'ZOË@Example.com', '2023-06-01 12:00:00.000001', NULL),
 (3, 'Broken Json', 'broken@example.com', '2020-01-01 00:00:00', '{"theme": "dark"');
CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT NOT NULL, eu BOOLEAN NOT NULL);
INSERT INTO countries VALUES ('FR', 'France', 1), ('CH', 'Suisse', 0), ('DE', 'Deutschland', 1);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, placed_at DATETIME NOT NULL,
    status TEXT NOT NULL, country TEXT REFERENCES countries (code), items JSON NOT NULL);
INSERT INTO orders VALUES
 (10, 1, '2024-02-01 10:00:00.5', 'paid', 'FR', '[{"sku":"P1","qty":2,"price":"12.50"},{"sku":"P2","qty":1,"price":0.1}]'),
 (11, 2, '2024-02-02 11:00:00', 'shipped', 'CH', '[{"sku":"P3","qty":5,"price":"1999.99"}]'),
 (12, 1, '2024-02-03 12:00:00', 'test', 'FR', '[{"sku":"P1","qty":1,"price":"12.50"}]'),
 (13, 2, '2024-02-04 13:00:00', 'paid', 'DE', '{"sku":"not a list"}'),
 (14, 1, '2024-02-05 14:00:00', 'paid', NULL, '[]');
"#;

#[tokio::test]
async fn tables_are_transformed_split_filtered_and_copied_in_one_pipeline() {
    let (legacy, target) = (SqliteDb::new(), PgDb::new("split_dst").await);
    legacy.exec(LEGACY_SHOP).await;
    let plugins = plugins();
    let extra = format!(
        "[[tables]]\nname = \"users\"\nplugin = \"{}\"\n\n[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n",
        plugins.transform_user.display(),
        plugins.split_orders.display()
    );
    let p = tables_pipeline(&legacy.url(), &target.url(), "include = [\"*\"]", &extra);
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "completed with dead letters: {run:?}");
    let report = run.json();
    let line = |name: &str| report["tables"].as_array().unwrap().iter().find(|t| t["table"] == name).cloned().unwrap();
    let orders = line("orders");
    assert_eq!(
        (
            orders["source_rows"].as_u64(),
            orders["loaded"].as_u64(),
            orders["filtered"].as_u64(),
            orders["dead_lettered"].as_u64()
        ),
        (Some(5), Some(3), Some(1), Some(1)),
        "5 orders = 3 loaded + 1 filtered (a test order) + 1 dead letter: {orders}"
    );
    assert_eq!(orders["target"], "orders, order_items");
    assert_eq!(line("users")["dead_lettered"], 1, "the seed plugin rejects the broken JSON");
    assert_eq!(line("countries")["loaded"], 3);
    assert_eq!(report["accounted"], true);

    // The new schema, as PostgreSQL holds it.
    let mut c = target.conn().await;
    let items: Vec<(i64, i32, String, i32, String)> =
        sqlx::query_as("SELECT order_id, line, sku, qty, price::text FROM order_items ORDER BY order_id, line")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(
        items,
        vec![
            (10, 1, "P1".into(), 2, "12.50".into()),
            (10, 2, "P2".into(), 1, "0.1".into()),
            (11, 1, "P3".into(), 5, "1999.99".into())
        ]
    );
    let placed: String = sqlx::query_scalar("SELECT to_char(placed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' ' || item_count FROM orders WHERE id = 10")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(placed, "2024-02-01 10:00:00.500000 2");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders WHERE id IN (12, 13)").await, 0, "filtered and rejected");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders WHERE id = 14 AND item_count = 0").await, 1);
    let (first, settings): (String, serde_json::Value) =
        sqlx::query_as("SELECT first_name, settings FROM users WHERE id = 'user_1'").fetch_one(&mut c).await.unwrap();
    assert_eq!(first, "Mary");
    assert_eq!(settings, serde_json::json!({"theme": "dark", "notifications": true}));
    assert_eq!(
        target
            .scalar_i64("SELECT count(*) FROM ferry.dead_letters WHERE source_table = 'orders' AND source_key = '13' AND kind = 'reject' AND reason = 'items is not a JSON array'")
            .await,
        1
    );
    let eu: bool = sqlx::query_scalar("SELECT eu FROM countries WHERE code = 'FR'").fetch_one(&mut c).await.unwrap();
    assert!(eu, "SQLite's 1 is PostgreSQL's true");

    // validate re-runs each plugin on the source and compares every output row.
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    target.exec("UPDATE order_items SET qty = 3 WHERE order_id = 10 AND line = 2").await;
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 3, "{v:?}");
    let v = v.json();
    let orders = v["tables"].as_array().unwrap().iter().find(|t| t["table"] == "orders").cloned().unwrap();
    assert_eq!(orders["differences"][0]["key"], "10 → order_items", "{orders}");
    assert_eq!(orders["differences"][0]["columns"], serde_json::json!(["qty"]));
}

#[tokio::test]
async fn rows_the_target_refuses_are_dead_lettered_and_the_rest_loads() {
    let (source, target) = (PgDb::new("refuse_src").await, PgDb::new("refuse_dst").await);
    source
        .exec(
            "CREATE TABLE stock (sku text PRIMARY KEY, qty int NOT NULL, code text NOT NULL);
             INSERT INTO stock SELECT 'S' || g, g % 103, CASE WHEN g % 97 = 0 THEN 'TOOLONG' ELSE 'ok' END
             FROM generate_series(1, 3000) g;",
        )
        .await;
    // The new schema is stricter than the old data.
    target
        .exec("CREATE TABLE stock (sku text PRIMARY KEY, qty int NOT NULL CHECK (qty < 100), code varchar(3) NOT NULL)")
        .await;
    let refused = source.scalar_i64("SELECT count(*) FROM stock WHERE qty >= 100 OR length(code) > 3").await;
    assert!(refused > 100, "{refused}");
    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"public.*\"]", "[migrate]\nbatch_size = 250\n");
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    let report = run.json();
    assert_eq!(report["tables"][0]["loaded"].as_i64(), Some(3000 - refused), "{report}");
    assert_eq!(report["tables"][0]["dead_lettered"].as_i64(), Some(refused), "{report}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM stock").await, 3000 - refused);
    assert_eq!(
        target
            .scalar_i64(
                "SELECT count(*) FROM ferry.dead_letters WHERE kind = 'load' AND (reason LIKE '%violates check constraint%' \
                 OR reason LIKE '%value too long%') AND source_row->>'sku' = source_key"
            )
            .await,
        refused,
        "each refused row is a dead letter with the database's reason and the row"
    );
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "refused rows are explained: {v:?}");
    assert_eq!(v.json()["tables"][0]["explained"].as_i64(), Some(refused));
}

#[test]
fn plugin_info_names_the_contract_of_either_version() {
    let plugins = plugins();
    let row = ferry(&["plugin", "info", "--json", plugins.split_orders.to_str().unwrap()]);
    assert_eq!(row.code, 0, "{row:?}");
    assert_eq!(row.json()["exports"], "ferry:transform/transform-row@0.2.0");
    let user = ferry(&["plugin", "info", "--json", plugins.transform_user.to_str().unwrap()]);
    let facts = user.json();
    assert_eq!(facts["exports"], "ferry:transform/transform-user@0.1.0");
    // Every export and import the component declares, its size and what
    // compiling it cost: read from the component, checked against the file.
    let contract = facts["contract"].to_string();
    assert!(contract.contains("transform-user@0.1.0") && contract.contains("user-key@0.1.0"), "{facts}");
    assert!(facts["imports"].to_string().contains("wasi:"), "a Rust wasip2 component imports WASI: {facts}");
    assert_eq!(facts["bytes"].as_u64(), Some(std::fs::metadata(&plugins.transform_user).unwrap().len()));
    assert!(facts["compile_seconds"].as_f64().is_some_and(|s| s > 0.0), "{facts}");
    let chaos = ferry(&["plugin", "info", "--json", plugins.chaos.to_str().unwrap()]);
    assert!(!chaos.json()["contract"].to_string().contains("user-key"), "{chaos:?}");
    let wrong = ferry(&["plugin", "info", plugins.wrong_world.to_str().unwrap()]);
    assert_eq!(wrong.code, 8, "another contract: {wrong:?}");
    assert!(
        wrong.stderr.contains("transform-row@0.2.0") && wrong.stderr.contains("world `row-transform`"),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn a_source_row_is_loaded_whole_or_not_at_all_across_its_output_tables() {
    let (legacy, target) = (SqliteDb::new(), PgDb::new("whole_dst").await);
    legacy.exec(LEGACY_SHOP).await;
    // The new schema exists, stricter than the legacy data: at most 4 per line.
    target
        .exec(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, placed_at timestamptz NOT NULL,
                 status text NOT NULL, item_count integer NOT NULL);
             CREATE TABLE order_items (order_id bigint, line integer, sku text NOT NULL, qty integer NOT NULL CHECK (qty < 5),
                 price numeric NOT NULL, PRIMARY KEY (order_id, line));",
        )
        .await;
    let extra = format!("[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n", plugins().split_orders.display());
    let p = tables_pipeline(&legacy.url(), &target.url(), "", &extra);
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    let orders = run.json()["tables"][0].clone();
    assert_eq!(
        (orders["loaded"].as_u64(), orders["filtered"].as_u64(), orders["dead_lettered"].as_u64()),
        (Some(2), Some(1), Some(2)),
        "{orders}"
    );
    // Order 11's item (qty 5) is refused: the order itself must not stay.
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders WHERE id = 11").await, 0, "no half-loaded order");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM order_items WHERE order_id = 11").await, 0);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders").await, 2);
    assert_eq!(
        target
            .scalar_i64(
                "SELECT count(*) FROM ferry.dead_letters WHERE source_key = '11' AND kind = 'load' \
                 AND reason LIKE '%order_items%check constraint%'"
            )
            .await,
        1
    );
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "the refused order is explained: {v:?}");

    // The same into SQLite.
    let file = SqliteDb::new();
    file.exec(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, placed_at TIMESTAMPTZ NOT NULL,
             status TEXT NOT NULL, item_count INTEGER NOT NULL);
         CREATE TABLE order_items (order_id INTEGER, line INTEGER, sku TEXT NOT NULL, qty INTEGER NOT NULL CHECK (qty < 5),
             price \"NUMERIC TEXT\" NOT NULL, PRIMARY KEY (order_id, line));",
    )
    .await;
    let p = tables_pipeline(&legacy.url(), &file.url(), "", &extra);
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(file.scalar_i64("SELECT count(*) FROM orders WHERE id = 11").await, 0, "no half-loaded order");
    assert_eq!(file.scalar_i64("SELECT count(*) FROM orders").await, 2);
    let v = p.ferry(&["validate"]);
    assert_eq!(v.code, 0, "{v:?}");
}

/// Between engines, declared lengths and precisions survive where the
/// other engine can name them, and `check` lists the ones it cannot.
#[tokio::test]
async fn lengths_and_precisions_cross_between_postgres_and_sqlite() {
    let sqlite = SqliteDb::new();
    sqlite
        .exec(
            "CREATE TABLE prices (id INTEGER PRIMARY KEY, code VARCHAR(40) NOT NULL, unit CHAR(3), \
             amount NUMERIC(10,2), rate DECIMAL(12, 4), noted TEXT);
             INSERT INTO prices VALUES (1, 'A-1', 'EUR', '12.50', '0.1250', 'x'), (2, 'B-2', 'USD', '-0.01', NULL, NULL);",
        )
        .await;
    let pg = PgDb::new("carry_pg").await;
    let p = tables_pipeline(&sqlite.url(), &pg.url(), "include = [\"prices\"]", "");
    assert_eq!(p.ferry(&["migrate"]).code, 0);
    assert_eq!(
        column_types(&pg, "prices").await,
        [
            ("id".to_string(), "bigint".to_string()),
            ("code".into(), "character varying(40)".into()),
            ("unit".into(), "character(3)".into()),
            ("amount".into(), "numeric(10,2)".into()),
            ("rate".into(), "numeric(12,4)".into()),
            ("noted".into(), "text".into()),
        ]
    );
    assert_eq!(rows_text(&pg, "prices", "id").await, ["(1,A-1,EUR,12.50,0.1250,x)", "(2,B-2,USD,-0.01,,)"]);

    // And back: PostgreSQL to SQLite keeps them as declared; time(3) has
    // no SQLite name that keeps its kind, and check says so.
    pg.exec("ALTER TABLE prices ADD COLUMN at time(3)").await;
    let back = SqliteDb::new();
    let p = tables_pipeline(&pg.url(), &back.url(), "include = [\"public.prices\"]", "");
    let check = p.ferry(&["check", "--json"]);
    let report = check.json();
    let detail = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "table public.prices")
        .and_then(|i| i["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(detail.contains("not carried: at (time(3) without time zone → TIME)"), "{detail}");
    assert_eq!(p.ferry(&["migrate"]).code, 0);
    let mut c = back.conn().await;
    let declared: Vec<String> = sqlx::query_scalar("SELECT type FROM pragma_table_info('prices') ORDER BY cid")
        .fetch_all(&mut c)
        .await
        .unwrap();
    assert_eq!(
        declared,
        ["INTEGER", "VARCHAR(40)", "CHARACTER(3)", "NUMERIC TEXT(10,2)", "NUMERIC TEXT(12,4)", "TEXT", "TIME"]
    );
    let amount: String = sqlx::query_scalar("SELECT amount FROM prices WHERE id = 1").fetch_one(&mut c).await.unwrap();
    assert_eq!(amount, "12.50", "decimals stay exact text in SQLite");
}
