//! Test harness: a fresh database per test, unique Redis key prefixes, and
//! the built `herald` binary as a child process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use herald::secret::SecretUrl;
use herald::store::Store;
use rand::Rng;

pub const MYSQL_SERVER: &str = "mysql://root@127.0.0.1:3306";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

const HOW_TO_START: &str = "MariaDB must listen on 127.0.0.1:3306 (user root, empty password) and Redis on \
127.0.0.1:6379. Start them with `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd` \
and `redis-server --daemonize yes --save '' --appendonly no`, or run `bash .ci/run`, which installs and starts both.";

/// A short random suffix for database names and key prefixes.
pub fn unique(tag: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{tag}_{:012x}", n & 0xffff_ffff_ffff)
}

/// A database name reserved for one test; the database (if anything created
/// it) is dropped when this goes out of scope, also on panic.
pub struct DbName {
    pub name: String,
    pub url: SecretUrl,
}

impl DbName {
    pub fn new() -> DbName {
        let name = unique("herald_t");
        let url = SecretUrl::parse(&format!("{MYSQL_SERVER}/{name}")).unwrap();
        DbName { name, url }
    }
}

impl Drop for DbName {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; a plain thread with its own
        // runtime can block on the DROP without stalling it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = SecretUrl::parse(&format!("{MYSQL_SERVER}/mysql")).unwrap();
                if let Ok(admin) = Store::connect(&server, 1).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                        .execute(admin.pool())
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A freshly created and migrated database for one test.
pub struct TestDb {
    pub store: Store,
    pub db: DbName,
    pub url: SecretUrl,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = DbName::new();
        if let Err(e) = herald::store::migrate::migrate(&db.url).await {
            panic!(
                "cannot create and migrate {}: {e:#}\n{HOW_TO_START}",
                db.name
            );
        }
        let store = Store::connect(&db.url, 8).await.unwrap();
        TestDb {
            store,
            url: db.url.clone(),
            db,
        }
    }

    pub fn url_str(&self) -> String {
        self.url.expose().to_owned()
    }

    /// Runs a query returning one integer.
    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(self.store.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql)
            .execute(self.store.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn count_status(&self, status: &str) -> i64 {
        self.scalar(&format!(
            "SELECT COUNT(*) FROM notifications WHERE status = '{status}'"
        ))
        .await
    }
}

/// A unique Redis key prefix for one test.
pub fn key_prefix() -> String {
    format!("{}:", unique("ht"))
}

/// Fails with set-up instructions when Redis is not reachable.
pub async fn require_redis() {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let conn = tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await;
    if !matches!(conn, Ok(Ok(_))) {
        panic!("cannot reach Redis at {REDIS_URL}\n{HOW_TO_START}");
    }
}

pub fn herald_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}

/// A `herald` command with a clean `HERALD_*` environment.
pub fn herald(db: Option<&TestDb>) -> Command {
    let mut cmd = Command::new(herald_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HERALD_LOG", "warn");
    if let Some(db) = db {
        cmd.env("HERALD_DATABASE_URL", db.url_str());
    }
    cmd
}

/// Runs `herald` with `stdin` fed in; returns its output.
pub fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning herald");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `check` until it returns true or `deadline` passes.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a signal to a child process with the `kill` command (no unsafe code).
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{sig} {} failed", child.id());
}

/// A `herald worker` child process whose stderr (the logs) goes to a file.
/// Killed (SIGKILL) when dropped, so a failing test leaves no strays.
pub struct WorkerProc {
    pub child: Child,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkerProc {
    /// Starts `herald worker` on `db` with the key prefix and extra settings.
    /// HTTP is off unless `HERALD_HTTP_ADDR` is given.
    pub fn spawn(db: &TestDb, prefix: &str, envs: &[(&str, String)]) -> WorkerProc {
        Self::spawn_on(&db.url_str(), prefix, envs)
    }

    /// [`WorkerProc::spawn`] against any database URL.
    pub fn spawn_on(database_url: &str, prefix: &str, envs: &[(&str, String)]) -> WorkerProc {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("worker.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = herald(None);
        cmd.env("HERALD_DATABASE_URL", database_url);
        cmd.env("HERALD_KEY_PREFIX", prefix)
            .env("HERALD_LOG", "info")
            .env("HERALD_HTTP_ADDR", "")
            .env("HERALD_CLEANUP", "false")
            .env("HERALD_STATS_INTERVAL_S", "0");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .arg("worker")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning herald worker");
        WorkerProc {
            child,
            log_path,
            _dir: dir,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        signal(&self.child, sig);
    }

    /// Waits for the process to exit, failing the test after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > deadline {
                panic!(
                    "worker did not exit within {deadline:?}; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
