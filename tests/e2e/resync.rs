//! `ferry resync --table T`: one table of a running stream copied again
//! from the source while the application writes it and the other tables
//! go on, through a kill -9 in the middle of the copy. Judged by the
//! source's own rows (md5 of every row as PostgreSQL prints it), never by
//! ferry's counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::Connection;

use crate::cluster::Cluster;
use crate::support::*;
use crate::tables::tables_pipeline;

/// Documents of several KB of incompressible text (stored out of line),
/// and events written beside them.
const DDL: &str = r#"
CREATE TABLE docs (id bigint PRIMARY KEY, rev int NOT NULL, body text NOT NULL);
CREATE TABLE events (id bigint PRIMARY KEY, doc_id bigint NOT NULL, kind text NOT NULL);
INSERT INTO docs SELECT g, 0, (SELECT string_agg(md5(g::text || ':' || r::text), '') FROM generate_series(1, 150) r)
    FROM generate_series(1, 8000) g;
"#;

const DOCS: &str = "SELECT md5(string_agg(d::text, '|' ORDER BY id)) FROM docs d";
const EVENTS: &str = "SELECT md5(string_agg(e::text, '|' ORDER BY id)) FROM events e";

/// `sql`'s one text (empty while the table is not there yet).
async fn text(url: &str, sql: &str) -> String {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let found = sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql)).fetch_one(&mut c).await;
    found.ok().flatten().unwrap_or_default()
}

fn daemon(p: &Pipeline) -> std::process::Child {
    p.daemon()
}

/// The application: documents revised, removed and added, each with an
/// event in the same transaction.
fn writer(url: String, running: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut n: i64 = 0;
        while running.load(Ordering::Relaxed) {
            n += 1;
            let id = 1 + (n * 7919) % 8000;
            let change = match n % 10 {
                0 => format!("DELETE FROM docs WHERE id = {id}"),
                1 => format!("INSERT INTO docs SELECT {}, 0, repeat(md5('{n}'), 150)", 100_000 + n),
                _ => format!("UPDATE docs SET rev = rev + 1, body = md5(body) || substr(body, 33) WHERE id = {id}"),
            };
            let sql = format!("BEGIN; {change}; INSERT INTO events VALUES ({n}, {id}, 'touched'); COMMIT;");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_copies_one_table_again_inside_the_running_stream_through_kill_9() {
    let cluster = Cluster::start();
    let source = PgDb::on(&cluster.url(), "postgres");
    source.exec(DDL).await;
    let target = PgDb::new("resync").await;
    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"public.*\"]", "[migrate]\nbatch_size = 200\n");
    let mut child = daemon(&p);
    eventually("the initial load", || async { text(&target.url(), DOCS).await == text(&source.url(), DOCS).await })
        .await;

    // The target drifted behind the stream's back (a hand-made fix, a
    // restore): the stream alone never repairs it.
    target
        .exec(
            "DELETE FROM docs WHERE id % 7 = 0; UPDATE docs SET body = 'drifted' WHERE id % 11 = 0; \
             INSERT INTO docs VALUES (999999, 0, 'stray');",
        )
        .await;
    let running = Arc::new(AtomicBool::new(true));
    let writing = writer(source.url(), Arc::clone(&running));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let asked = p.ferry(&["resync", "--table", "docs", "--wait", "0", "--json"]);
    assert_eq!(asked.code, 0, "{asked:?}");
    assert_eq!(asked.json()["done"], false);
    let events_at_start = target.scalar_i64("SELECT count(*) FROM events").await;
    let st = p.ferry(&["status", "--json"]).json();
    assert_eq!(st["stream"]["resyncs"][0]["table"], "public.docs", "{st}");

    // Killed in the middle of the copy, started again: it goes on.
    let copied = "SELECT coalesce((SELECT rows FROM ferry.stream_resyncs), 0)";
    eventually("part of the copy", || async { target.scalar_i64(copied).await >= 1000 }).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let midway = target.scalar_i64(copied).await;
    let mut child = daemon(&p);
    let done = "SELECT coalesce((SELECT (done_at IS NOT NULL)::int::int8 FROM ferry.stream_resyncs), 0)";
    eventually("the resync", || async { target.scalar_i64(done).await == 1 }).await;
    assert!(target.scalar_i64(copied).await > midway, "it went on from where it was");
    assert!(
        target.scalar_i64("SELECT count(*) FROM events").await > events_at_start,
        "the other table went on during the copy"
    );
    running.store(false, Ordering::Relaxed);
    writing.await.unwrap();
    eventually("the target equals the source", || async {
        text(&target.url(), DOCS).await == text(&source.url(), DOCS).await
            && text(&target.url(), EVENTS).await == text(&source.url(), EVENTS).await
    })
    .await;
    assert_eq!(target.scalar_i64("SELECT count(*) FROM docs WHERE id = 999999").await, 0, "the stray row went");

    // Asked and waited for: done, every row.
    let again = p.ferry(&["resync", "--table", "public.docs", "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    let r = again.json();
    assert_eq!(r["done"], true, "{r}");
    assert_eq!(r["rows"].as_i64(), Some(source.scalar_i64("SELECT count(*) FROM docs").await), "{r}");
    assert_eq!(text(&target.url(), DOCS).await, text(&source.url(), DOCS).await);
    let unknown = p.ferry(&["resync", "--table", "nope", "--wait", "0"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("public.docs"), "names the tables there are: {unknown:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await, 0);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
