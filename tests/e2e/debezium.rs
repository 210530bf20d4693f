//! `ferry apply`: Debezium change events into PostgreSQL through the plugin,
//! exactly once across replays.

use serde_json::{Value, json};
use sqlx::Connection;

use crate::support::*;

/// A Debezium PostgreSQL-connector envelope.
fn envelope(op: &str, before: Value, after: Value, tx: i64, last_commit: u64, lsn: u64, snapshot: &str) -> Value {
    json!({
        "before": before,
        "after": after,
        "source": {
            "version": "2.7.3.Final", "connector": "postgresql", "name": "legacy", "ts_ms": 1700000000000u64,
            "snapshot": snapshot, "db": "legacy", "schema": "public", "table": "users",
            "sequence": format!("[\"{last_commit}\",\"{lsn}\"]"), "txId": tx, "lsn": lsn
        },
        "op": op,
        "ts_ms": 1700000000001u64
    })
}

fn user(id: i64, name: &str, email: &str, micros: i64, metadata: Option<&str>) -> Value {
    json!({"id": id, "name": name, "email": email, "created_at": micros, "metadata": metadata})
}

fn key_only(id: i64) -> Value {
    json!({"id": id, "name": null, "email": null, "created_at": null, "metadata": null})
}

/// The stream the tests replay: a snapshot of three rows, then changes of
/// every shape, and three events that must be dead-lettered.
fn stream() -> Vec<String> {
    let t = 1_700_000_000_123_456i64;
    let mut lines: Vec<Value> = vec![
        envelope("r", Value::Null, user(1, "Mary Ann de la Cruz", "Mary@X.ORG", t, None), 1, 0, 100, "first"),
        envelope(
            "r",
            Value::Null,
            user(2, "Zoë Ångström", "ZOE@X.ORG", t + 1, Some(r#"{"theme":"dark"}"#)),
            1,
            0,
            100,
            "true",
        ),
        envelope("r", Value::Null, user(3, "Prince", "P@X.ORG", t + 2, None), 1, 0, 100, "last"),
        // tx 10: insert 4
        envelope(
            "c",
            Value::Null,
            user(4, "New Comer", "NEW@X.ORG", t + 3, Some(r#"{"notifications":false}"#)),
            10,
            100,
            200,
            "false",
        ),
        // tx 11: update 1 (with the schema-carrying form below)
        // tx 12: delete 2, key only (REPLICA IDENTITY DEFAULT)
        envelope("d", key_only(2), Value::Null, 12, 300, 400, "false"),
    ];
    // tx 11, as {key, value:{schema, payload}} with a ZonedTimestamp.
    let mut update = envelope(
        "u",
        Value::Null,
        json!({"id": 1, "name": "Mary Ann Updated", "email": "MARY@X.ORG", "created_at": "2024-01-15T09:30:00.654321Z", "metadata": "{\"theme\":\"blue\"}"}),
        11,
        200,
        300,
        "false",
    );
    update["source"]["lsn"] = json!(300);
    let wrapped = json!({
        "key": {"id": 1},
        "value": {
            "schema": {"type": "struct", "fields": [{"field": "after", "fields": [{"field": "created_at", "name": "io.debezium.time.ZonedTimestamp", "type": "string"}]}]},
            "payload": update
        }
    });
    lines.insert(4, wrapped);
    let mut out: Vec<String> = lines.iter().map(Value::to_string).collect();
    // tx 13: primary-key change 3 → 30: delete, tombstone, create.
    out.push(envelope("d", key_only(3), Value::Null, 13, 400, 500, "false").to_string());
    out.push(json!({"key": {"id": 3}, "value": null}).to_string());
    out.push(
        envelope("c", Value::Null, user(30, "Prince Again", "P30@X.ORG", t + 4, None), 13, 400, 510, "false")
            .to_string(),
    );
    // Bad events: not JSON, no op, an unavailable TOASTed value.
    out.push("{this is not json".to_string());
    out.push(
        json!({"after": user(5, "a", "b", t, None), "source": {"lsn": 600, "sequence": "[\"510\",\"600\"]"}})
            .to_string(),
    );
    out.push(
        envelope(
            "u",
            Value::Null,
            user(4, "New Comer", "NEW@X.ORG", t + 3, Some("__debezium_unavailable_value")),
            14,
            510,
            700,
            "false",
        )
        .to_string(),
    );
    // tx 15: update 4 again, for real.
    out.push(
        envelope(
            "u",
            Value::Null,
            user(4, "New  Comer", "NEW@X.ORG", t + 3, Some(r#"{"theme":"green"}"#)),
            15,
            700,
            800,
            "false",
        )
        .to_string(),
    );
    out
}

fn write_lines(dir: &std::path::Path, name: &str, lines: &[String]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_string()
}

async fn target_rows(db: &PgDb) -> Vec<(String, String, String, String, Value)> {
    let mut c = db.conn().await;
    sqlx::query_as("SELECT id, first_name, last_name, email, settings FROM users ORDER BY id")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

async fn assert_final_state(db: &PgDb) {
    let rows = target_rows(db).await;
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, vec!["user_1", "user_30", "user_4"], "2 deleted, 3 renumbered to 30");
    assert_eq!((rows[0].1.as_str(), rows[0].2.as_str(), rows[0].3.as_str()), ("Mary", "Ann Updated", "mary@x.org"));
    assert_eq!(rows[0].4, json!({"theme": "blue", "notifications": true}));
    assert_eq!((rows[2].1.as_str(), rows[2].2.as_str()), ("New", " Comer"));
    assert_eq!(rows[2].4, json!({"theme": "green", "notifications": true}));
    let micros =
        db.scalar_i64("SELECT (extract(epoch FROM created_at) * 1000000)::int8 FROM users WHERE id = 'user_1'").await;
    assert_eq!(micros % 1_000_000, 654_321, "ZonedTimestamp microseconds kept");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 3);
}

/// A pipeline applying events of the legacy `users` table into `target`.
/// `apply` reads the source's catalog (the tables' definitions), not its
/// rows: the source here is an empty legacy table.
async fn pipeline(target: &PgDb, plugin: &std::path::Path) -> (PgDb, Pipeline) {
    let source = PgDb::new("dbzsrc").await;
    source.exec(PG_LEGACY_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), plugin, "");
    (source, p)
}

#[tokio::test]
async fn applies_every_shape_and_dead_letters_bad_events() {
    let target = PgDb::new("dbz").await;
    target.exec(PG_NEW_DDL).await;
    let (_p_source, p) = pipeline(&target, &plugins().transform_user).await;
    let file = write_lines(p.config.parent().unwrap(), "events.jsonl", &stream());
    let run = p.ferry(&["apply", "--input", &file, "--json"]);
    assert_eq!(run.code, 4, "dead letters present: {run:?}");
    let j = run.json();
    assert_eq!(
        (j["upserts"].as_u64(), j["deletes"].as_u64(), j["dead_lettered"].as_u64()),
        (Some(7), Some(2), Some(3)),
        "{run:?}"
    );
    assert_eq!(j["tombstones"], 1);
    assert_final_state(&target).await;
    let mut c = target.conn().await;
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM ferry.change_dead_letters ORDER BY id").fetch_all(&mut c).await.unwrap();
    assert!(reasons[0].starts_with("not JSON"), "{reasons:?}");
    assert!(reasons[1].contains("no `op`"), "{reasons:?}");
    assert!(reasons[2].contains("__debezium_unavailable_value") && reasons[2].contains("metadata"), "{reasons:?}");
}

#[tokio::test]
async fn replays_apply_nothing_twice() {
    let target = PgDb::new("dbz").await;
    target.exec(PG_NEW_DDL).await;
    let (_p_source, p) = pipeline(&target, &plugins().transform_user).await;
    let lines = stream();
    let dir = p.config.parent().unwrap().to_path_buf();
    // A consumer that stops part-way and restarts from an earlier offset,
    // then replays the whole stream twice (at-least-once delivery).
    for cut in [6, 9] {
        let first = write_lines(&dir, &format!("part-{cut}.jsonl"), &lines[..cut]);
        assert!([0, 4].contains(&p.ferry(&["apply", "--input", &first, "--group-size", "1"]).code));
    }
    let all = write_lines(&dir, "all.jsonl", &lines);
    let again = p.ferry(&["apply", "--input", &all, "--json"]);
    assert!([0, 4].contains(&again.code), "{again:?}");
    let j = again.json();
    assert_eq!(j["skipped_replayed"], 8, "the 9 lines applied before, less the tombstone: {again:?}");
    let last = p.ferry(&["apply", "--input", &all, "--json"]);
    assert_eq!(last.code, 0, "nothing new: {last:?}");
    assert_eq!((last.json()["upserts"].as_u64(), last.json()["deletes"].as_u64()), (Some(0), Some(0)));
    assert_final_state(&target).await;
}

/// Applies [`stream`] and then a truncate into `target`; it is empty after.
async fn apply_then_truncate(target: &PgDb) -> Pipeline {
    let (_p_source, p) = pipeline(target, &plugins().transform_user).await;
    let mut lines = stream();
    lines.push(
        json!({"source": {"lsn": 900, "sequence": "[\"800\",\"900\"]", "txId": 16, "snapshot": "false"}, "op": "t"})
            .to_string(),
    );
    let file = write_lines(p.config.parent().unwrap(), "events.jsonl", &lines);
    let run = p.ferry(&["apply", "--input", &file, "--json"]);
    assert_eq!(run.json()["truncates"], 1, "{run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 0);
    p
}

/// A stream applied into a table that held rows — updates of them, deletes,
/// a truncate — is taken back by `ferry rollback` to exactly those rows
/// (TOASTed documents included), judged by the test's own reading.
#[tokio::test]
async fn an_applied_stream_with_a_truncate_is_rolled_back_to_the_rows_before_it() {
    let target = PgDb::new("dbz").await;
    target.exec(PG_NEW_DDL).await;
    target
        .exec(
            "INSERT INTO users SELECT 'user_' || g, 'Before', 'Row ' || g, 'b' || g || '@example.com', \
             '2020-01-01 00:00:00+00'::timestamptz + g * interval '1.000001 second', \
             jsonb_build_object('theme', 'dark', 'doc', (SELECT string_agg(md5(g::text || i::text), '') \
                                                         FROM generate_series(1, 100) i)) \
             FROM generate_series(1, 50) g",
        )
        .await;
    let before = crate::tables::rows_text(&target, "users", "id").await;
    let p = apply_then_truncate(&target).await;
    let run_id: String =
        sqlx::query_scalar("SELECT run_id FROM ferry.runs").fetch_one(&mut target.conn().await).await.unwrap();
    let back = p.ferry(&["rollback", &run_id, "--json"]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(crate::tables::rows_text(&target, "users", "id").await, before);
}

#[tokio::test]
async fn truncate_empties_the_target() {
    let target = PgDb::new("dbz").await;
    target.exec(PG_NEW_DDL).await;
    apply_then_truncate(&target).await;
}

#[tokio::test]
async fn key_only_deletes_need_the_key_mapping() {
    let target = PgDb::new("dbz").await;
    target.exec(PG_NEW_DDL).await;
    // The chaos plugin exports only transform-user: no user-key.
    let (_p_source, p) = pipeline(&target, &plugins().chaos).await;
    let t = 1_700_000_000_000_000i64;
    let lines = vec![
        envelope("c", Value::Null, user(1, "A B", "a@x", t, None), 1, 0, 10, "false").to_string(),
        envelope("c", Value::Null, user(2, "C D", "c@x", t, None), 1, 0, 11, "false").to_string(),
        envelope("d", key_only(1), Value::Null, 2, 12, 20, "false").to_string(),
        // A full before-image (REPLICA IDENTITY FULL) is enough.
        envelope("d", user(2, "C D", "c@x", t, None), Value::Null, 3, 21, 30, "false").to_string(),
    ];
    let file = write_lines(p.config.parent().unwrap(), "events.jsonl", &lines);
    let run = p.ferry(&["apply", "--input", &file, "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_1'").await, 1, "kept: no key mapping");
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_2'").await,
        0,
        "deleted via before-image"
    );
    let mut c = target.conn().await;
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM ferry.change_dead_letters").fetch_one(&mut c).await.unwrap();
    assert!(reason.contains("user-key"), "{reason}");
}

/// A long stream of inserts, updates and deletes over 2000 keys.
fn busy_stream(events: usize) -> Vec<String> {
    let t = 1_700_000_000_000_000i64;
    let mut lines = Vec::with_capacity(events);
    let mut commit = 0u64;
    for i in 0..events {
        let id = (i * 7919 % 2000) as i64 + 1;
        let lsn = 1000 + i as u64 * 10;
        let line = match i % 5 {
            0..=2 => envelope(
                if i % 5 == 0 { "c" } else { "u" },
                Value::Null,
                user(
                    id,
                    &format!("Name {i} Of {id}"),
                    &format!("U{id}@X.ORG"),
                    t + i as i64,
                    Some(&format!(r#"{{"theme":"t{i}"}}"#)),
                ),
                i as i64,
                commit,
                lsn,
                "false",
            ),
            3 => envelope("d", key_only(id), Value::Null, i as i64, commit, lsn, "false"),
            _ => envelope(
                "u",
                Value::Null,
                user(id, "Bad Json", "b@x", t, Some("{oops")),
                i as i64,
                commit,
                lsn,
                "false",
            ),
        };
        commit = lsn + 1;
        lines.push(line.to_string());
    }
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_during_apply_converges_to_the_uninterrupted_result() {
    let (killed, reference) = (PgDb::new("dbzk").await, PgDb::new("dbzr").await);
    killed.exec(PG_NEW_DDL).await;
    reference.exec(PG_NEW_DDL).await;
    let lines = busy_stream(40_000);
    let (_p_ref_source, p_ref) = pipeline(&reference, &plugins().transform_user).await;
    let file = write_lines(p_ref.config.parent().unwrap(), "events.jsonl", &lines);
    assert_eq!(p_ref.ferry(&["apply", "--input", &file]).code, 4);

    let (_p_source, p) = pipeline(&killed, &plugins().transform_user).await;
    let kills = kill_until_done(|| p.command(&["apply", "--input", &file, "--group-size", "100"]), &[0, 4]);
    assert!(kills >= 2, "only {kills} kills landed");
    assert_eq!(target_rows(&killed).await, target_rows(&reference).await, "same rows as one uninterrupted apply");
    assert_eq!(
        killed.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await,
        reference.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await,
        "each dead letter recorded once"
    );
}

/// A JetStream stream made for one test and deleted after it.
struct TestStream {
    name: String,
    subject: String,
    js: async_nats::jetstream::Context,
}

impl TestStream {
    async fn new() -> TestStream {
        let client =
            async_nats::connect(nats_server()).await.expect("NATS at 127.0.0.1:4222 (is it running with -js?)");
        TestStream::on(client).await
    }

    async fn on(client: async_nats::Client) -> TestStream {
        let js = async_nats::jetstream::new(client);
        let tag = format!("{}_{}", std::process::id(), rand::random::<u32>());
        let (name, subject) = (format!("FERRY_T_{tag}"), format!("ferry.t{tag}.legacy.public.users"));
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .expect("create stream");
        TestStream { name, subject, js }
    }

    async fn publish(&self, lines: &[String]) {
        for line in lines {
            // Debezium Server sends a tombstone as an empty message.
            let payload = if line.contains("\"value\":null") { String::new() } else { line.clone() };
            self.js.publish(self.subject.clone(), payload.into()).await.unwrap().await.unwrap();
        }
    }

    async fn consumer_backlog(&self, durable: &str) -> (u64, usize) {
        let stream = self.js.get_stream(&self.name).await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream.get_consumer(durable).await.unwrap();
        let info = consumer.info().await.unwrap();
        (info.num_pending, info.num_ack_pending)
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (js, name) = (self.js.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let _ = js.delete_stream(&name).await;
            });
        })
        .join();
    }
}

fn nats_server() -> String {
    std::env::var("FERRY_TEST_NATS").unwrap_or_else(|_| "127.0.0.1:4222".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn consumes_jetstream_acks_after_commit_and_ignores_redeliveries() {
    let target = PgDb::new("dbzn").await;
    target.exec(PG_NEW_DDL).await;
    let s = TestStream::new().await;
    s.publish(&stream()).await;
    let (_p_source, p) = pipeline(&target, &plugins().transform_user).await;
    let url = format!("nats://{}", nats_server());
    let args = ["apply", "--nats", &url, "--stream", &s.name, "--subject", &s.subject, "--idle-exit", "1", "--json"];
    let run = p.ferry(&args);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(run.json()["dead_lettered"], 3, "{run:?}");
    assert_final_state(&target).await;
    assert_eq!(s.consumer_backlog("ferry-test").await, (0, 0), "everything acknowledged after the commit");

    // Debezium restarts and sends the whole stream again.
    s.publish(&stream()).await;
    let again = p.ferry(&args);
    assert_eq!(again.code, 0, "{again:?}");
    let j = again.json();
    assert_eq!(
        (j["upserts"].as_u64(), j["deletes"].as_u64(), j["dead_lettered"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{again:?}"
    );
    assert_final_state(&target).await;
    assert_eq!(s.consumer_backlog("ferry-test").await, (0, 0));
}

/// A throwaway `nats-server` with JetStream that speaks TLS only, on its own
/// port, stopped when dropped.
struct TlsNats {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsNats {
    fn start(cert: &std::path::Path, key: &std::path::Path) -> TlsNats {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let exe = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = std::process::Command::new(exe)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .arg("--tls")
            .arg("--tlscert")
            .arg(cert)
            .arg("--tlskey")
            .arg(key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "nats-server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        TlsNats { child, port, _dir: dir }
    }

    fn url(&self) -> String {
        format!("tls://localhost:{}", self.port)
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consumes_jetstream_over_verified_tls() {
    ferry::tls::install_crypto_provider();
    let pki = crate::tls::Pki::new("nats");
    let (cert, key) = pki.write("nats", &pki.leaf(&["localhost"], "localhost", false));
    let nats = TlsNats::start(&cert, &key);
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_file())
        .require_tls(true)
        .connect(nats.url())
        .await
        .expect("the test's own TLS connection");
    let s = TestStream::on(client).await;
    s.publish(&stream()).await;
    let target = PgDb::new("dbzt").await;
    target.exec(PG_NEW_DDL).await;
    let (_p_source, p) = pipeline(&target, &plugins().transform_user).await;
    let url = nats.url();
    let args = ["apply", "--nats", &url, "--stream", &s.name, "--subject", &s.subject, "--idle-exit", "1", "--json"];

    // The system's trust store does not know the test CA: refused, with the fix.
    let run = p.ferry(&args);
    assert_eq!(run.code, 7, "a connection failure: {run:?}");
    assert!(run.stderr.contains("not signed by a CA") && run.stderr.contains("--nats-ca"), "{run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 0);

    let ca = pki.ca_file();
    let mut with_ca = args.to_vec();
    with_ca.extend(["--nats-ca", ca.to_str().unwrap()]);
    let run = p.ferry(&with_ca);
    assert_eq!(run.code, 4, "{run:?}");
    assert_final_state(&target).await;
}

#[tokio::test]
async fn an_event_the_target_refuses_is_dead_lettered_and_the_stream_goes_on() {
    let target = PgDb::new("dbzr").await;
    target.exec(PG_NEW_DDL).await;
    target.exec("ALTER TABLE users ADD CHECK (first_name <> 'Refused')").await;
    let (_p_source, p) = pipeline(&target, &plugins().transform_user).await;
    let t = 1_700_000_000_123_456i64;
    let lines: Vec<String> = [
        envelope("c", Value::Null, user(1, "Ada Lovelace", "ada@x.org", t, None), 10, 100, 110, "false"),
        // NUL in text: PostgreSQL cannot hold it.
        envelope("c", Value::Null, user(2, "Nul\u{0}Byte Row", "nul@x.org", t, None), 11, 110, 120, "false"),
        envelope("c", Value::Null, user(3, "Refused Three", "r@x.org", t, None), 12, 120, 130, "false"),
        envelope("u", Value::Null, user(1, "Ada King", "ada@x.org", t, None), 13, 130, 140, "false"),
        envelope("u", Value::Null, user(3, "Accepted Three", "r@x.org", t, None), 14, 140, 150, "false"),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    let file = write_lines(p.config.parent().unwrap(), "events.jsonl", &lines);
    // One source transaction per target transaction, so the refused version
    // of user 3 is really written before its accepted one.
    let run = p.ferry(&["apply", "--input", &file, "--group-size", "1", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(run.json()["dead_lettered"], 2, "{run:?}");
    let rows = target_rows(&target).await;
    let names: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.2.as_str())).collect();
    assert_eq!(names, vec![("user_1", "King"), ("user_3", "Three")], "the rest of the stream applied");
    assert_eq!(rows[1].1, "Accepted", "a later accepted change of the refused key applies");
    let mut c = target.conn().await;
    let reasons: Vec<(String, String)> = sqlx::query_as(
        "SELECT source_key, reason FROM ferry.change_dead_letters WHERE kind = 'load' ORDER BY source_key",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].0 == "2" && reasons[0].1.contains("0x00"), "{reasons:?}");
    assert!(reasons[1].0 == "3" && reasons[1].1.contains("violates check constraint"), "{reasons:?}");
    // A replay applies nothing twice and records no dead letter twice.
    let again = p.ferry(&["apply", "--input", &file, "--group-size", "1", "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 2);
}

#[tokio::test]
async fn unavailable_toasted_values_are_read_from_the_source_with_reread() {
    // The source as it is now: row 1 renamed, with a document Debezium did
    // not send (unchanged TOASTed value); row 2 deleted since.
    let source = PgDb::new("dbzsrc").await;
    source.exec(PG_LEGACY_DDL).await;
    source
        .exec(
            "INSERT INTO users VALUES (1, 'Ada Renamed', 'ada@x.org', '2023-11-14 22:13:20.123456', \
             json_build_object('theme', 'big', 'blob', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i))::text)",
        )
        .await;
    let target = PgDb::new("dbzrr").await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let t = 1_700_000_000_123_456i64;
    let lines: Vec<String> = [
        envelope(
            "u",
            Value::Null,
            user(1, "Ada Renamed", "ada@x.org", t, Some("__debezium_unavailable_value")),
            10,
            100,
            110,
            "false",
        ),
        envelope(
            "u",
            Value::Null,
            user(2, "Gone Since", "g@x.org", t, Some("__debezium_unavailable_value")),
            11,
            110,
            120,
            "false",
        ),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    let file = write_lines(p.config.parent().unwrap(), "events.jsonl", &lines);

    // Without --reread: dead letters that say how to fix it.
    let without = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let run = without.ferry(&["--name", "plain", "apply", "--input", &file, "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    let reason: String = sqlx::query_scalar(
        "SELECT reason FROM ferry.change_dead_letters WHERE pipeline = 'plain' AND source_key = '1'",
    )
    .fetch_one(&mut target.conn().await)
    .await
    .unwrap();
    assert!(reason.contains("--reread") && reason.contains("REPLICA IDENTITY FULL"), "{reason}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 0);

    let run = p.ferry(&["apply", "--input", &file, "--reread", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["toast_rereads"], 1, "{run:?}");
    let (name, theme): (String, String) =
        sqlx::query_as("SELECT first_name || ' ' || last_name, settings->>'theme' FROM users WHERE id = 'user_1'")
            .fetch_one(&mut target.conn().await)
            .await
            .unwrap();
    assert_eq!((name.as_str(), theme.as_str()), ("Ada Renamed", "big"), "the document from the source");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_2'").await, 0, "gone since");
}

const ACCOUNTS_DDL: &str = r#"
CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric(12, 2), rate numeric, opened date, wake time,
    created timestamp, updated timestamptz, doc jsonb, uid uuid, tags text[], blob bytea, pause interval);
CREATE TABLE entries (account_id bigint NOT NULL REFERENCES accounts, n int NOT NULL, note text,
    PRIMARY KEY (account_id, n));
"#;

/// An event of table `table` with the value schema of `after` (Debezium's
/// logical types) when `fields` is given.
fn table_event(table: &str, op: &str, before: Value, after: Value, fields: Option<Value>, tx: i64, lsn: u64) -> String {
    let mut payload = envelope(op, before, after, tx, lsn - 1, lsn, "false");
    payload["source"]["table"] = json!(table);
    let value = match fields {
        None => payload,
        Some(fields) => json!({
            "schema": {"type": "struct", "fields": [
                {"field": "before", "type": "struct", "optional": true, "fields": fields.clone()},
                {"field": "after", "type": "struct", "optional": true, "fields": fields}
            ]},
            "payload": payload
        }),
    };
    value.to_string()
}

fn account_fields() -> Value {
    json!([
        {"field": "id", "type": "int64"},
        {"field": "balance", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}},
        {"field": "rate", "type": "struct", "name": "io.debezium.data.VariableScaleDecimal"},
        {"field": "opened", "type": "int32", "name": "io.debezium.time.Date"},
        {"field": "wake", "type": "int64", "name": "io.debezium.time.MicroTime"},
        {"field": "created", "type": "int64", "name": "io.debezium.time.MicroTimestamp"},
        {"field": "updated", "type": "string", "name": "io.debezium.time.ZonedTimestamp"},
        {"field": "doc", "type": "string", "name": "io.debezium.data.Json"},
        {"field": "uid", "type": "string", "name": "io.debezium.data.Uuid"},
        {"field": "tags", "type": "array", "items": {"type": "string"}},
        {"field": "blob", "type": "bytes"},
        {"field": "pause", "type": "int64", "name": "io.debezium.time.MicroDuration"}
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_decodes_logical_types_of_several_tables_in_one_transaction() {
    let source = PgDb::new("dbzsrc").await;
    source.exec(ACCOUNTS_DDL).await;
    let target = PgDb::new("dbztables").await;
    let p = crate::tables::tables_pipeline(&source.url(), &target.url(), "include = [\"public.*\"]", "");
    // The (empty) tables first: ferry creates them with their keys.
    assert_eq!(p.ferry(&["migrate"]).code, 0);

    let account = |id: i64, unscaled: &str, tags: Value| {
        json!({"id": id, "balance": unscaled, "rate": {"scale": 3, "value": "AeJA"}, "opened": 19723,
               "wake": 45296000001i64, "created": 1704110400123456i64, "updated": "2024-01-01T12:00:00.654321Z",
               "doc": "{\"a\": [1, 2.50], \"b\": \"é\"}", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
               "tags": tags, "blob": "AP8=", "pause": 90061000000i64})
    };
    let entry = |a: i64, n: i64, note: &str| json!({"account_id": a, "n": n, "note": note});
    let lines = vec![
        // One source transaction: an account and its two entries.
        table_event(
            "accounts",
            "c",
            Value::Null,
            account(1, "MDk=", json!(["x", null, "y z"])),
            Some(account_fields()),
            10,
            100,
        ),
        table_event("entries", "c", Value::Null, entry(1, 1, "first"), None, 10, 101),
        table_event("entries", "c", Value::Null, entry(1, 2, "second"), None, 10, 102),
        // A negative balance, an empty array.
        table_event("accounts", "c", Value::Null, account(2, "+w==", json!([])), Some(account_fields()), 11, 200),
        table_event("entries", "u", Value::Null, entry(1, 2, "second, edited"), None, 12, 300),
        table_event("entries", "d", entry(1, 1, ""), Value::Null, None, 13, 400),
        // A table outside the pipeline: dead-lettered, never ignored.
        table_event("audit", "c", Value::Null, json!({"id": 1}), None, 14, 500),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = write_lines(dir.path(), "events.jsonl", &lines);
    let run = p.ferry(&["apply", "--input", &file, "--json"]);
    assert_eq!(run.code, 4, "one dead letter: {run:?}");
    let r = run.json();
    assert_eq!(
        (r["upserts"].as_u64(), r["deletes"].as_u64(), r["dead_lettered"].as_u64()),
        (Some(5), Some(1), Some(1)),
        "{r}"
    );
    let reason: String = sqlx::query_scalar("SELECT reason FROM ferry.change_dead_letters")
        .fetch_one(&mut target.conn().await)
        .await
        .unwrap();
    assert!(reason.contains("\"public.audit\" is not in the pipeline"), "{reason}");

    // The same rows written by SQL into the source: equal, as PostgreSQL prints them.
    source
        .exec(
            "INSERT INTO accounts VALUES
               (1, 123.45, 123.456, '2024-01-01', '12:34:56.000001', '2024-01-01 12:00:00.123456',
                '2024-01-01 12:00:00.654321+00', '{\"a\": [1, 2.50], \"b\": \"é\"}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
                '{x,NULL,\"y z\"}', '\\x00ff', '25:01:01'),
               (2, -0.05, 123.456, '2024-01-01', '12:34:56.000001', '2024-01-01 12:00:00.123456',
                '2024-01-01 12:00:00.654321+00', '{\"a\": [1, 2.50], \"b\": \"é\"}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
                '{}', '\\x00ff', '25:01:01');
             INSERT INTO entries VALUES (1, 2, 'second, edited');",
        )
        .await;
    for (table, order) in [("accounts", "id"), ("entries", "account_id, n")] {
        let text = |db: &PgDb| {
            let url = db.url();
            async move {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                    "SELECT t::text FROM {table} t ORDER BY {order}"
                )))
                .fetch_all(&mut c)
                .await
                .unwrap()
            }
        };
        assert_eq!(text(&target).await, text(&source).await, "{table}");
    }
    // A replay applies nothing twice.
    let again = p.ferry(&["apply", "--input", &file, "--json"]);
    assert_eq!(again.json()["skipped_replayed"], 7, "{again:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 1);
}

/// Many tables, realistic values: out-of-line TOASTed documents of
/// incompressible text, a source transaction updating a document without
/// touching it (Debezium sends the placeholder) and inserting an entry of
/// another table. Without --reread the change is a dead letter and the
/// target keeps its last version; with it, the row is read back from the
/// source and the target equals the source, judged by md5 of both sides.
#[tokio::test(flavor = "multi_thread")]
async fn many_table_apply_rereads_unchanged_toasted_documents_from_the_source() {
    let source = PgDb::new("dbzdocs").await;
    source
        .exec(
            "CREATE TABLE docs (id bigint PRIMARY KEY, n int NOT NULL, body text NOT NULL);
             CREATE TABLE notes (doc_id bigint NOT NULL REFERENCES docs, seq int NOT NULL, note text,
                 PRIMARY KEY (doc_id, seq));
             INSERT INTO docs SELECT g, 0, \
               (SELECT string_agg(md5(g::text || ':' || i::text), '') FROM generate_series(1, 250) i) \
               FROM generate_series(1, 40) g;",
        )
        .await;
    assert!(
        source.scalar_i64("SELECT pg_relation_size(reltoastrelid)::int8 FROM pg_class WHERE relname = 'docs'").await
            > 200_000,
        "the documents (8 KB of incompressible text each) are stored out of line"
    );
    // Two targets loaded before the source transaction: one applies
    // without --reread, the other with it.
    let (target, target2) = (PgDb::new("dbzdocst").await, PgDb::new("dbzdocsr").await);
    let p = crate::tables::tables_pipeline(&source.url(), &target.url(), "include = [\"public.*\"]", "");
    let p2 = crate::tables::tables_pipeline(&source.url(), &target2.url(), "include = [\"public.*\"]", "");
    assert_eq!(p.ferry(&["migrate"]).code, 0);
    assert_eq!(p2.ferry(&["migrate"]).code, 0);

    // The source transaction the events describe.
    let mut c = source.conn().await;
    let xid: i64 = sqlx::query_scalar(
        "WITH u AS (UPDATE docs SET n = n + 7 WHERE id IN (3, 4) RETURNING id), \
              i AS (INSERT INTO notes VALUES (3, 1, 'read twice') RETURNING doc_id) \
         SELECT txid_current()",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    let unavailable = "__debezium_unavailable_value";
    let lines = vec![
        table_event("docs", "u", Value::Null, json!({"id": 3, "n": 7, "body": unavailable}), None, xid, 100),
        table_event("docs", "u", Value::Null, json!({"id": 4, "n": 7, "body": unavailable}), None, xid, 101),
        table_event("notes", "c", Value::Null, json!({"doc_id": 3, "seq": 1, "note": "read twice"}), None, xid, 102),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = write_lines(dir.path(), "events.jsonl", &lines);
    let digest = |db: &PgDb, table: &str, order: &str| {
        let (url, sql) =
            (db.url(), format!("SELECT md5(string_agg(md5(t::text), '' ORDER BY {order})) FROM {table} t"));
        async move {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql)).fetch_one(&mut c).await.unwrap()
        }
    };

    // Without --reread: the documents' changes are dead letters naming the
    // column and the fix; the target keeps the last good versions.
    let run = p.ferry(&["apply", "--input", &file, "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(run.json()["dead_lettered"], 2, "{run:?}");
    let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM ferry.change_dead_letters ORDER BY 1")
        .fetch_all(&mut target.conn().await)
        .await
        .unwrap();
    assert!(reasons.iter().all(|r| r.contains("`body`") && r.contains("--reread")), "{reasons:?}");
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM docs WHERE n <> 0").await,
        0,
        "nothing written with the placeholder"
    );
    assert_eq!(target.scalar_i64("SELECT count(*) FROM docs WHERE body LIKE '%unavailable%'").await, 0);

    // With --reread: the rows as the source has them.
    assert_ne!(digest(&target2, "docs", "id").await, digest(&source, "docs", "id").await, "not yet applied");
    let run = p2.ferry(&["apply", "--input", &file, "--reread", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["toast_rereads"], 2, "{run:?}");
    for (table, order) in [("docs", "id"), ("notes", "doc_id, seq")] {
        assert_eq!(digest(&target2, table, order).await, digest(&source, table, order).await, "{table}");
    }
    assert_eq!(target2.scalar_i64("SELECT sum(n)::int8 FROM docs").await, 14);
}

/// The source's columns change under a running `ferry apply` (a column
/// added and written, another dropped): the events say so by their
/// fields. The new column is found in the source's catalog; nothing tells
/// what the source gave the rows already there, so apply holds before the
/// first event of the new shape — the events before it applied, none
/// after — and says how to alter the target; once the target has the
/// column it goes on by itself, dropping the column the source dropped.
/// Events that lack a column the source still has (a connector leaving it
/// out) hold without dropping anything. Judged by the target's own rows
/// and columns.
#[tokio::test(flavor = "multi_thread")]
async fn apply_holds_on_a_new_shape_until_the_target_has_it_then_follows_it() {
    use std::io::Write;
    let source = PgDb::new("dbzshape").await;
    source.exec("CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, legacy text)").await;
    let target = PgDb::new("dbzshapet").await;
    let p = crate::tables::tables_pipeline(&source.url(), &target.url(), "include = [\"public.items\"]", "");
    assert_eq!(p.ferry(&["migrate"]).code, 0);
    let mut child = p
        .command(&["apply", "--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut events = child.stdin.take().unwrap();
    let mut send = |lines: &[String]| {
        events.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
        events.flush().unwrap();
    };
    let count = |sql: &'static str| {
        let target = &target;
        move || async move { target.scalar_i64(sql).await }
    };
    let old = |id: i64, qty: i64| json!({"id": id, "qty": qty, "legacy": "old"});
    send(&[
        table_event("items", "c", Value::Null, old(1, 1), None, 10, 100),
        table_event("items", "c", Value::Null, old(2, 2), None, 10, 101),
    ]);
    eventually("the first events", || async { count("SELECT count(*) FROM items")().await == 2 }).await;

    // The application's migration, then rows of the new shape.
    source.exec("ALTER TABLE items ADD COLUMN note text; ALTER TABLE items DROP COLUMN legacy;").await;
    let new = |id: i64, qty: i64, note: &str| json!({"id": id, "qty": qty, "note": note});
    // With the connector's schema block (its field order names the shape).
    let fields = Some(json!([
        {"field": "id", "type": "int64"},
        {"field": "qty", "type": "int32"},
        {"field": "note", "type": "string", "optional": true}
    ]));
    send(&[
        table_event("items", "c", Value::Null, new(3, 3, "first note"), fields.clone(), 11, 200),
        table_event("items", "u", Value::Null, new(1, 5, "noted"), fields, 12, 300),
        table_event("items", "d", json!({"id": 2}), Value::Null, None, 13, 400),
    ]);
    let paused = || async {
        let sql = "SELECT coalesce((SELECT paused IS NOT NULL FROM ferry.change_checkpoints), false)";
        sqlx::query_scalar::<_, bool>(sql).fetch_one(&mut target.conn().await).await.unwrap_or(false)
    };
    let reason = || async {
        sqlx::query_scalar::<_, String>("SELECT paused FROM ferry.change_checkpoints")
            .fetch_one(&mut target.conn().await)
            .await
            .unwrap()
    };
    eventually("apply holds", paused).await;
    let said = reason().await;
    assert!(said.contains(r#"ALTER TABLE "public"."items" ADD COLUMN "note" text"#), "{said}");
    assert_eq!(count("SELECT count(*) FROM items")().await, 2, "the events before, none after");
    target.exec("ALTER TABLE items ADD COLUMN note text").await;
    let all = "SELECT string_agg(i::text, ' ' ORDER BY id) FROM items i";
    let rows = || async { sqlx::query_scalar::<_, String>(all).fetch_one(&mut target.conn().await).await.unwrap() };
    eventually("the new shape", || async { rows().await == r#"(1,5,noted) (3,3,"first note")"# }).await;
    assert_eq!(count("SELECT count(*) FROM ferry.change_dead_letters")().await, 0);

    // A connector that leaves `qty` out of its events: nothing is dropped.
    send(&[table_event("items", "c", Value::Null, json!({"id": 4, "note": "no qty"}), None, 14, 500)]);
    eventually("apply holds", paused).await;
    let said = reason().await;
    assert!(said.contains("lack column qty") && said.contains("column.exclude.list"), "{said}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(11));
    let qty = "SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'qty'";
    assert_eq!(count(qty)().await, 1, "qty stays");
    assert_eq!(count("SELECT count(*) FROM items")().await, 2);
}
