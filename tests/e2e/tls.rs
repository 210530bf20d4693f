//! TLS on every connection: a throwaway PostgreSQL cluster with `ssl = on`,
//! a CA and certificates made by the test itself, and plaintext TCP refused
//! by the server (`hostnossl … reject`), so a connection that is not
//! encrypted cannot pass unnoticed. The server's own `pg_stat_ssl` is the
//! observer of what ferry's connections really are.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sqlx::{Connection, PgConnection};

use crate::cluster::Cluster;
use crate::support::*;

/// A CA, and certificates it signs, written as PEM files in a temporary
/// directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, as PEM text.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("ferry test CA {name}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names` (DNS names or IP addresses), with common
    /// name `cn`; `expired` makes one that ended in 2021.
    pub fn leaf(&self, names: &[&str], cn: &str, expired: bool) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem() }
    }

    /// Writes a leaf's certificate and key as `NAME.crt` and `NAME.key`.
    pub fn write(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let (cert, key) = (self.dir.path().join(format!("{name}.crt")), self.dir.path().join(format!("{name}.key")));
        std::fs::write(&cert, &leaf.cert).unwrap();
        std::fs::write(&key, &leaf.key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert, key)
    }
}

/// The role that must log in with a client certificate.
const CERT_USER: &str = "ferry_cert";

/// A logical-WAL cluster serving TLS with a certificate for `localhost` only
/// (so `127.0.0.1` is a host-name mismatch), refusing plaintext TCP, and
/// requiring a client certificate from [`CERT_USER`].
fn tls_cluster(pki: &Pki) -> Cluster {
    let server = pki.leaf(&["localhost"], "localhost", false);
    Cluster::start_with(
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'",
        &[
            ("server.crt", server.cert),
            ("server.key", server.key),
            ("root.crt", std::fs::read_to_string(pki.ca_file()).unwrap()),
        ],
        &format!(
            "hostssl all {CERT_USER} 127.0.0.1/32 cert\nhostssl all {CERT_USER} ::1/128 cert\n\
             hostnossl all all 127.0.0.1/32 reject\nhostnossl all all ::1/128 reject\n\
             hostnossl replication all 127.0.0.1/32 reject\nhostnossl replication all ::1/128 reject"
        ),
    )
}

/// The test's own connection (TLS, unverified: it only observes).
async fn observer(cluster: &Cluster, db: &str) -> PgConnection {
    PgConnection::connect(&format!("{}/{db}?sslmode=require", cluster.url())).await.unwrap()
}

/// `postgres://postgres@HOST:PORT/DB?PARAMS`.
fn url(cluster: &Cluster, host: &str, db: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/{db}?{params}", cluster.port)
}

fn verify_full(pki: &Pki) -> String {
    format!("sslmode=verify-full&sslrootcert={}", pki.ca_file().display())
}

async fn seed(cluster: &Cluster, rows: i64) {
    let mut c = observer(cluster, "postgres").await;
    sqlx::raw_sql(PG_LEGACY_DDL).execute(&mut c).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(&*pg_legacy_rows(1, rows))).execute(&mut c).await.unwrap();
    for db in ["migrated", "synced"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(&*format!("CREATE DATABASE {db}"))).execute(&mut c).await.unwrap();
        let mut t = observer(cluster, db).await;
        sqlx::raw_sql(PG_NEW_DDL).execute(&mut t).await.unwrap();
    }
}

fn item<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name}: {report}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_validate_and_sync_over_verify_full() {
    let pki = Pki::new("main");
    let cluster = tls_cluster(&pki);
    seed(&cluster, 3000).await;
    let params = verify_full(&pki);
    let plugin = &plugins().transform_user;
    let migrated = Pipeline::new(
        &url(&cluster, "localhost", "postgres", &params),
        &url(&cluster, "localhost", "migrated", &params),
        plugin,
        "",
    );

    // check: both connections encrypted and the server verified.
    let check = migrated.ferry(&["check", "--json"]);
    let report = check.json();
    for name in ["source TLS", "target TLS"] {
        let i = item(&report, name);
        assert_eq!(i["level"], "ok", "{check:?}");
        let detail = i["detail"].as_str().unwrap();
        assert!(
            detail.contains("encrypted (TLSv1.3") && detail.contains("certificate chain and host name"),
            "{detail}"
        );
    }

    let run = migrated.ferry(&["migrate"]);
    assert_eq!(run.code, 4, "dead letters for the invalid rows only: {run:?}");
    let v = migrated.ferry(&["validate"]);
    assert_eq!(v.code, 0, "{v:?}");
    let mut m = observer(&cluster, "migrated").await;
    let loaded: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&mut m).await.unwrap();
    assert_eq!(loaded, 3000 - invalid_rows(3000));

    // sync: the query, COPY and replication connections are all TLS, as the
    // server sees them while ferry streams.
    let synced = Pipeline::new(
        &url(&cluster, "localhost", "postgres", &params),
        &url(&cluster, "localhost", "synced", &params),
        plugin,
        "",
    );
    // Idle exit long enough for a loaded machine: the changes below must
    // reach the stream before it counts as idle.
    let child = synced.spawn(&["sync", "--idle-exit", "10", "--json"]);
    let mut obs = observer(&cluster, "postgres").await;
    let ferry_backends = "SELECT a.backend_type, s.ssl, s.version FROM pg_stat_activity a \
                          JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'ferry'";
    let started = std::time::Instant::now();
    let seen: Vec<(String, bool, Option<String>)> = loop {
        let seen: Vec<(String, bool, Option<String>)> =
            sqlx::query_as(ferry_backends).fetch_all(&mut obs).await.unwrap();
        if seen.iter().any(|(kind, _, _)| kind == "walsender") {
            break seen;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "ferry's walsender never showed: {seen:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(seen.iter().all(|(_, ssl, version)| *ssl && version.as_deref() == Some("TLSv1.3")), "{seen:?}");
    // The changes come once the initial load is in (its run completed, as
    // the target records it), so they reach the target through the stream.
    let mut t = observer(&cluster, "synced").await;
    loop {
        let made: bool =
            sqlx::query_scalar("SELECT to_regclass('ferry.runs') IS NOT NULL").fetch_one(&mut t).await.unwrap();
        if made {
            let completed: i64 = sqlx::query_scalar("SELECT count(*) FROM ferry.runs WHERE status = 'completed'")
                .fetch_one(&mut t)
                .await
                .unwrap();
            if completed == 1 {
                break;
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "the initial load never completed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(&*pg_legacy_rows(5001, 5100))).execute(&mut obs).await.unwrap();
    sqlx::raw_sql("UPDATE users SET name = 'Over Tls' WHERE id <= 10; DELETE FROM users WHERE id BETWEEN 11 AND 20")
        .execute(&mut obs)
        .await
        .unwrap();
    let report = json_report(child);
    assert!(report["stream"]["upserts"].as_u64().unwrap() >= 100, "{report}");
    let expected: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE id % 50 <> 0").fetch_one(&mut obs).await.unwrap();
    let mut s = observer(&cluster, "synced").await;
    let got: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&mut s).await.unwrap();
    assert_eq!(got, expected);
    let renamed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE first_name = 'Over'").fetch_one(&mut s).await.unwrap();
    assert_eq!(renamed, 10);
    let v = synced.ferry(&["validate"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(synced.ferry(&["sync", "--teardown"]).code, 0);
}

/// Runs `migrate` into an empty database and returns what it said; the
/// target must be left untouched.
async fn refused(cluster: &Cluster, source: &str, target_db: &str) -> Run {
    let p = Pipeline::new(source, &format!("{}/{target_db}", cluster.url()), &plugins().transform_user, "");
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 7, "a connection failure: {run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_ca_wrong_host_expired_and_missing_tls_are_refused_with_the_fix() {
    let pki = Pki::new("main");
    let cluster = tls_cluster(&pki);
    seed(&cluster, 10).await;

    // A CA that did not sign the server's certificate.
    let other = Pki::new("other");
    let wrong_ca = format!("sslmode=verify-full&sslrootcert={}", other.ca_file().display());
    let run = refused(&cluster, &url(&cluster, "localhost", "postgres", &wrong_ca), "migrated").await;
    assert!(
        run.stderr.contains("not signed by a CA ferry was told to trust") && run.stderr.contains("sslrootcert="),
        "{run:?}"
    );

    // The certificate names `localhost`, not `127.0.0.1`: verify-full refuses,
    // verify-ca (chain only) accepts.
    let run = refused(&cluster, &url(&cluster, "127.0.0.1", "postgres", &verify_full(&pki)), "migrated").await;
    assert!(
        run.stderr.contains("not valid for the host name `127.0.0.1`") && run.stderr.contains("verify-ca"),
        "{run:?}"
    );
    let chain_only = format!("sslmode=verify-ca&sslrootcert={}", pki.ca_file().display());
    let p = Pipeline::new(
        &url(&cluster, "127.0.0.1", "postgres", &chain_only),
        &url(&cluster, "127.0.0.1", "migrated", &chain_only),
        &plugins().transform_user,
        "",
    );
    let check = p.ferry(&["check", "--json"]);
    let detail = item(&check.json(), "source TLS")["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("host name not checked"), "{detail}");

    // A client certificate the server requires: refused without it, accepted with it.
    let mut c = observer(&cluster, "postgres").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(&*format!("CREATE ROLE {CERT_USER} LOGIN SUPERUSER")))
        .execute(&mut c)
        .await
        .unwrap();
    let as_cert_user = |params: &str| format!("postgres://{CERT_USER}@localhost:{}/postgres?{params}", cluster.port);
    let run = refused(&cluster, &as_cert_user(&verify_full(&pki)), "migrated").await;
    assert!(run.stderr.contains("sslcert=<client certificate>"), "{run:?}");
    let (cert, key) = pki.write("client", &pki.leaf(&[], CERT_USER, false));
    let with_cert = format!("{}&sslcert={}&sslkey={}", verify_full(&pki), cert.display(), key.display());
    let p = Pipeline::new(
        &as_cert_user(&with_cert),
        &url(&cluster, "localhost", "migrated", &verify_full(&pki)),
        &plugins().transform_user,
        "",
    );
    let check = p.ferry(&["check", "--json"]);
    assert_eq!(item(&check.json(), "source connectivity")["level"], "ok", "{check:?}");

    // An expired server certificate.
    let expired = pki.leaf(&["localhost"], "localhost", true);
    cluster.write_file("server.crt", &expired.cert);
    cluster.write_file("server.key", &expired.key);
    cluster.reload();
    let source = url(&cluster, "localhost", "postgres", &verify_full(&pki));
    let mut last = None;
    for _ in 0..100 {
        let p = Pipeline::new(&source, &format!("{}/migrated", cluster.url()), &plugins().transform_user, "");
        let run = p.ferry(&["migrate"]);
        if run.stderr.contains("expired") {
            last = None;
            assert!(run.stderr.contains("renew it on the server"), "{run:?}");
            break;
        }
        last = Some(run); // the reload has not reached the server yet
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(last.is_none(), "never refused as expired: {last:?}");

    // Nothing of the refused runs reached the target.
    let mut m = observer(&cluster, "migrated").await;
    let loaded: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&mut m).await.unwrap();
    assert_eq!(loaded, 0);

    // `require` against a server without TLS.
    let plain = Cluster::start();
    let mut c = PgConnection::connect(&format!("{}/postgres", plain.url())).await.unwrap();
    sqlx::raw_sql(PG_LEGACY_DDL).execute(&mut c).await.unwrap();
    let run = refused(&plain, &url(&plain, "127.0.0.1", "postgres", "sslmode=require"), "postgres").await;
    assert!(run.stderr.contains("does not accept TLS (ssl = off)"), "{run:?}");
    // check says what a plaintext connection is.
    let p = Pipeline::new(
        &url(&plain, "127.0.0.1", "postgres", "sslmode=prefer"),
        &url(&plain, "127.0.0.1", "postgres", "sslmode=disable"),
        &plugins().transform_user,
        "",
    );
    let report = p.ferry(&["check", "--json"]).json();
    let detail = |name| item(&report, name)["detail"].as_str().unwrap().to_string();
    assert!(detail("source TLS").contains("sslmode=prefer fell back to plaintext"), "{report}");
    assert!(
        detail("target TLS").contains("TLS is off") && detail("target TLS").contains("local connection"),
        "{report}"
    );
}

#[test]
fn bad_tls_settings_are_configuration_errors() {
    let p = Pipeline::new(
        "postgres://postgres@db.example:5432/legacy?sslmode=verify-full",
        "postgres://postgres@db.example:5432/new?sslmode=sometimes",
        Path::new("unused.wasm"),
        "",
    );
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("source.url") && run.stderr.contains("sslrootcert=system"), "{run:?}");
}
