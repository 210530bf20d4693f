//! `[notify]`: the same JSON document to a webhook (a listener of the
//! test's own, which records what reaches it) and to a shell hook (which
//! writes its stdin to a file named after `FERRY_EVENT`).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// An HTTP listener on 127.0.0.1 that answers 200 to every request and
/// keeps each request's path and body.
async fn webhook() -> (u16, Arc<Mutex<Vec<(String, serde_json::Value)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                // Headers, then Content-Length bytes of body.
                let (head_end, length) = loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..at]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                            .expect("a content-length");
                        break (at + 4, length);
                    }
                };
                while data.len() < head_end + length {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&data[..head_end]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                let body = serde_json::from_slice(&data[head_end..head_end + length]).unwrap();
                kept.lock().unwrap().push((path, body));
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn run_end_dead_letters_and_a_failed_validation_reach_the_webhook_and_the_hook() {
    let (port, seen) = webhook().await;
    let hooks = tempfile::tempdir().unwrap();
    let (source, target) = (PgDb::new("ntfsrc").await, SqliteDb::new());
    seed_pg_legacy(&source, 100).await;
    let notify = format!(
        "[notify]\nwebhook = \"http://127.0.0.1:{port}/hooks/secret-token\"\n\
         command = \"cat > {}/$FERRY_EVENT.json\"\ndead_letters_above = 1\n",
        hooks.path().display()
    );
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, &notify);
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");

    let got = seen.lock().unwrap().clone();
    let events: Vec<&str> = got.iter().map(|(_, b)| b["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["dead_letters", "run_ended"], "{got:?}");
    assert!(got.iter().all(|(path, _)| path == "/hooks/secret-token"));
    let (_, ended) = &got[1];
    assert_eq!(ended["pipeline"], "test");
    assert_eq!(ended["details"]["run_id"], run.json()["run_id"], "the run's own report");
    assert_eq!(ended["details"]["tables"][0]["dead_lettered"], invalid_rows(100));
    let summary = ended["summary"].as_str().unwrap();
    assert!(summary.contains("completed") && summary.contains("2 dead letters"), "{summary}");
    assert!(got[0].1["summary"].as_str().unwrap().starts_with("2 dead letters (more than 1)"), "{got:?}");
    // The hook got the same documents on stdin.
    let hooked: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hooks.path().join("run_ended.json")).unwrap()).unwrap();
    assert_eq!(hooked["details"], ended["details"]);
    assert!(hooks.path().join("dead_letters.json").exists());
    assert!(!run.stderr.contains("secret-token"), "the webhook's path is not logged: {run:?}");

    // A validation that finds a difference says so.
    target.exec("UPDATE users SET email = 'tampered@example.com' WHERE id = 'user_7'").await;
    let v = p.ferry(&["validate"]);
    assert_eq!(v.code, 3, "{v:?}");
    let last = seen.lock().unwrap().last().cloned().unwrap().1;
    assert_eq!(last["event"], "validation_failed", "{last}");
    assert!(last["summary"].as_str().unwrap().contains("1 different"), "{last}");
    let hooked: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hooks.path().join("validation_failed.json")).unwrap()).unwrap();
    assert_eq!(hooked["details"]["ok"], false);
}

/// A webhook that cannot be reached and a hook that fails cost a warning,
/// never the run: the command exits as it would have.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_webhook_and_a_failing_hook_do_not_change_the_outcome() {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, 20).await;
    let notify = "[notify]\nwebhook = \"http://127.0.0.1:1/hooks/secret-token\"\ncommand = \"exit 7\"\n";
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, notify);
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 0, "20 valid rows: {run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 20);
    assert!(run.stderr.contains("notification run_ended to http://127.0.0.1:1"), "{run:?}");
    assert!(run.stderr.contains("exited with exit status: 7"), "{run:?}");
    assert!(!run.stderr.contains("secret-token"), "{run:?}");
}

#[test]
fn a_webhook_that_is_not_http_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        "[source]\nurl = \"sqlite://a.db\"\n[target]\nurl = \"sqlite://b.db\"\n[plugin]\npath = \"p.wasm\"\n\
         [notify]\nwebhook = \"ftp://example.com/x\"\n",
    )
    .unwrap();
    let run = ferry(&["--config", config.to_str().unwrap(), "check"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("notify.webhook") && run.stderr.contains("http(s)"), "{run:?}");
}

/// A stream that stops (here `ferry apply` at the end of its input) says
/// what it applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_stops_says_what_it_applied() {
    let hooks = tempfile::tempdir().unwrap();
    let (source, target) = (PgDb::new("ntfsrc").await, PgDb::new("ntfdst").await);
    source.exec(PG_LEGACY_DDL).await;
    target.exec(PG_NEW_DDL).await;
    let notify = format!("[notify]\ncommand = \"cat > {}/$FERRY_EVENT.json\"\n", hooks.path().display());
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, &notify);
    let event = |id: i64, lsn: u64, metadata: &str| {
        serde_json::json!({
            "before": null,
            "after": {"id": id, "name": "Ada Lovelace", "email": "ada@x.org", "created_at": 1_700_000_000_000_000i64,
                      "metadata": metadata},
            "source": {"lsn": lsn, "txId": lsn, "snapshot": "false", "schema": "public", "table": "users"},
            "op": "c"
        })
        .to_string()
    };
    let input = hooks.path().join("events.jsonl");
    std::fs::write(&input, format!("{}\n{}\n", event(1, 10, "{}"), event(2, 20, "{broken"))).unwrap();
    let run = p.ferry(&["apply", "--input", input.to_str().unwrap()]);
    assert_eq!(run.code, 4, "one event rejected: {run:?}");
    let hooked: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hooks.path().join("run_ended.json")).unwrap()).unwrap();
    assert_eq!(hooked["event"], "run_ended");
    let summary = hooked["summary"].as_str().unwrap();
    assert!(summary.starts_with("apply stopped: 1 upserts") && summary.ends_with("1 dead letters"), "{summary}");
    assert_eq!(hooked["details"]["upserts"], 1);
}
