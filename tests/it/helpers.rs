//! Test harness: a fresh database per test, unique Redis key prefixes, and
//! the built `herald` binary as a child process.
//!
//! The servers: MariaDB at `HERALD_TEST_DATABASE_URL` (a server URL without
//! a database, default `mysql://root@127.0.0.1:3306`) and Redis at
//! `HERALD_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). When nothing
//! answers there, the first test that needs one starts a private server
//! (`mariadbd` / `redis-server` from PATH or /usr/sbin, root without a
//! password, on a free port, in a temporary directory), shared by every
//! test of the run. A small watchdog process kills it and removes its
//! directory once the test process has exited (statics are never dropped,
//! so a destructor could not). One test binary holds all integration tests
//! and cargo runs test binaries one after another, so one `OnceLock` per
//! server is all the coordination needed.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use herald::secret::SecretUrl;
use herald::store::Store;
use rand::Rng;

use crate::mariadb_proc::MariaDbProc;
use crate::redis_procs::RedisProc;

const DEFAULT_MYSQL: &str = "mysql://root@127.0.0.1:3306";
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

const HOW_TO_START: &str = "The tests use MariaDB at HERALD_TEST_DATABASE_URL (default \
mysql://root@127.0.0.1:3306) and Redis at HERALD_TEST_REDIS_URL (default redis://127.0.0.1:6379), \
or, when nothing answers there, start private servers from the installed packages: \
`sudo apt-get install -y mariadb-server redis-server` (Debian/Ubuntu) or `brew install mariadb redis` (macOS).";

/// A server the tests use, and the private process behind it if the
/// harness started one (kept for the whole run).
struct Server<P> {
    url: String,
    _private: Option<P>,
}

static MYSQL: OnceLock<Server<MariaDbProc>> = OnceLock::new();
static REDIS: OnceLock<Server<RedisProc>> = OnceLock::new();

/// The MariaDB server URL (no database, no trailing slash).
pub fn mysql_server() -> &'static str {
    &MYSQL
        .get_or_init(|| {
            let url = setting("HERALD_TEST_DATABASE_URL", DEFAULT_MYSQL);
            provision(url, mysql_answers, || {
                let p = MariaDbProc::start();
                watch(p.pid(), p.dir());
                (mariadb_url(&p), p)
            })
        })
        .url
}

/// The Redis URL of the shared server (tests use their own key prefix).
pub fn redis_url() -> &'static str {
    &REDIS
        .get_or_init(|| {
            let url = setting("HERALD_TEST_REDIS_URL", DEFAULT_REDIS);
            provision(url, redis_answers, || {
                let p = RedisProc::start();
                watch(p.pid(), p.dir());
                (p.url(), p)
            })
        })
        .url
}

fn setting(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
        .trim()
        .trim_end_matches('/')
        .to_owned()
}

fn mariadb_url(p: &MariaDbProc) -> String {
    p.url("").trim_end_matches('/').to_owned()
}

/// `url` if it answers, else a private server from `start`. Runs on a
/// thread of its own: the checks need a runtime, and the caller may be
/// inside one.
fn provision<P: Send + 'static>(
    url: String,
    answers: fn(&str) -> bool,
    start: impl FnOnce() -> (String, P) + Send + 'static,
) -> Server<P> {
    std::thread::spawn(move || {
        if answers(&url) {
            return Server {
                url,
                _private: None,
            };
        }
        let (private, p) = start();
        eprintln!(
            "tests: nothing answers at {}; started a private server at {private} for this run",
            herald::secret::redact_text(&url)
        );
        Server {
            url: private,
            _private: Some(p),
        }
    })
    .join()
    .unwrap_or_else(|_| panic!("starting a private server failed\n{HOW_TO_START}"))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Whether a MariaDB/MySQL server at `server` lets us in.
fn mysql_answers(server: &str) -> bool {
    let Ok(url) = SecretUrl::parse(&format!("{server}/mysql")) else {
        return false;
    };
    block_on(async {
        let ok = tokio::time::timeout(Duration::from_secs(5), Store::connect(&url, 1)).await;
        match ok {
            Ok(Ok(store)) => {
                store.close().await;
                true
            }
            _ => false,
        }
    })
}

/// Whether a Redis server at `url` answers PING.
fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    block_on(async {
        let ping = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(3), ping).await,
            Ok(Ok(_))
        )
    })
}

/// Kills process `pid` and removes `dir` once this test process is gone.
fn watch(pid: u32, dir: &Path) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(r#"while kill -0 "$0" 2>/dev/null; do sleep 1; done; kill -9 "$1" 2>/dev/null; sleep 1; rm -rf "$2""#)
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

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
        let url = SecretUrl::parse(&format!("{}/{name}", mysql_server())).unwrap();
        DbName { name, url }
    }
}

/// Runs one administrative statement (a `DROP`) from a `Drop` impl.
/// Drop runs inside the test's runtime; a plain thread with its own
/// runtime can block on the statement without stalling it. Errors are
/// ignored: this is clean-up.
pub fn admin_statement_blocking(sql: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = SecretUrl::parse(&format!("{}/mysql", mysql_server())).unwrap();
            if let Ok(admin) = Store::connect(&server, 1).await {
                let _ = sqlx::query(&sql).execute(admin.pool()).await;
                admin.close().await;
            }
        });
    })
    .join();
}

impl Drop for DbName {
    fn drop(&mut self) {
        admin_statement_blocking(format!("DROP DATABASE IF EXISTS `{}`", self.name));
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
    let client = redis::Client::open(redis_url()).unwrap();
    let conn = tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await;
    if !matches!(conn, Ok(Ok(_))) {
        panic!("cannot reach Redis at {}\n{HOW_TO_START}", redis_url());
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
    if redis_url() != DEFAULT_REDIS {
        cmd.env("HERALD_REDIS_URLS", redis_url());
    }
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
