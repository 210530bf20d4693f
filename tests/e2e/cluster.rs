//! A throwaway PostgreSQL cluster on its own port with `wal_level = logical`,
//! for tests that need logical replication without touching the machine's
//! server. Works wherever PostgreSQL's server binaries are installed
//! (`pg_config --bindir`, or /usr/lib/postgresql/*/bin); as root it runs
//! them as the `postgres` user, since initdb refuses root.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    pub port: u16,
}

fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    candidates.sort();
    candidates.pop().expect("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with("", &[], "")
    }

    /// A cluster with more `postgresql.conf` lines, files in its data
    /// directory (certificates, keys: owned by the server, mode 0600), and
    /// lines put first in `pg_hba.conf`.
    pub fn start_with(conf_extra: &str, files: &[(&str, String)], hba_first: &str) -> Cluster {
        let bindir = bindir();
        let dir = tempfile::Builder::new().prefix("ferry-pg-").tempdir().expect("tempdir");
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cluster = Cluster { dir, bindir, port };
        cluster.run("initdb", &["-D", &cluster.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = logical\n\
             max_replication_slots = 10\nmax_wal_senders = 10\nfsync = off\nfull_page_writes = off\n{conf_extra}\n",
            cluster.dir.path().display()
        );
        let conf_path = Path::new(&cluster.data()).join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        let hba_path = Path::new(&cluster.data()).join("pg_hba.conf");
        let hba = std::fs::read_to_string(&hba_path).unwrap();
        std::fs::write(&hba_path, format!("{hba_first}\n{hba}")).unwrap();
        for (name, content) in files {
            cluster.write_file(name, content);
        }
        let log = cluster.dir.path().join("server.log");
        cluster.run("pg_ctl", &["-D", &cluster.data(), "-l", log.to_str().unwrap(), "-w", "start"]);
        cluster
    }

    /// Writes a file into the data directory, readable by the server only
    /// (PostgreSQL refuses a key file others can read).
    #[allow(dead_code)]
    pub fn write_file(&self, name: &str, content: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = Path::new(&self.data()).join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if is_root() {
            let status = Command::new("chown").args(["postgres:postgres"]).arg(&path).status().unwrap();
            assert!(status.success(), "chown {name}");
        }
    }

    /// Makes the server re-read its configuration and certificates.
    #[allow(dead_code)]
    pub fn reload(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "reload"]);
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bindir.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server URL, without a database name.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: no checkpoint, every
    /// connection cut, crash recovery on the next start) and starts it
    /// again after `down`.
    #[allow(dead_code)]
    pub fn crash(&self, down: std::time::Duration) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        std::thread::sleep(down);
        let log = self.dir.path().join("server.log");
        self.run("pg_ctl", &["-D", &self.data(), "-l", log.to_str().unwrap(), "-w", "start"]);
    }

    /// Restarts the server (a source restart during streaming).
    #[allow(dead_code)]
    pub fn restart(&self) {
        let log = self.dir.path().join("server.log");
        self.run("pg_ctl", &["-D", &self.data(), "-l", log.to_str().unwrap(), "-m", "fast", "-w", "restart"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        }));
    }
}

#[tokio::test]
async fn a_throwaway_cluster_has_logical_wal() {
    use sqlx::Connection;
    let cluster = Cluster::start();
    let mut c = sqlx::PgConnection::connect(&format!("{}/postgres", cluster.url())).await.unwrap();
    let level: String = sqlx::query_scalar("SHOW wal_level").fetch_one(&mut c).await.unwrap();
    assert_eq!(level, "logical");
    // ferry migrates from it like from any PostgreSQL.
    sqlx::raw_sql(crate::support::PG_LEGACY_DDL).execute(&mut c).await.unwrap();
    sqlx::query("INSERT INTO users VALUES (1, 'A B', 'A@B', now(), NULL)").execute(&mut c).await.unwrap();
    let target = crate::support::SqliteDb::new();
    let p = crate::support::Pipeline::new(
        &format!("{}/postgres", cluster.url()),
        &target.url(),
        &crate::support::plugins().transform_user,
        "",
    );
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 0, "{run:?}");
}
