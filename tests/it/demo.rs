//! `herald demo --short`: the whole story (servers, mix, outage, three
//! workers with one killed, cleanup) ends in a clean summary, both on the
//! configured servers and on private ones started because nothing answers.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{herald, mysql_server, redis_url, text};
use crate::redis_procs::free_port;

fn run_demo(database_url: &str, redis_urls: &str) -> (Value, String) {
    let started = Instant::now();
    let out = herald(None)
        .env("HERALD_DATABASE_URL", database_url)
        .env("HERALD_REDIS_URLS", redis_urls)
        .args(["demo", "--short", "--json"])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the demo took {:?}",
        started.elapsed()
    );
    let summary: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    // The planted story, observed from the table and the receiver.
    assert_eq!(summary["rows"], 403, "{summary}");
    assert_eq!(summary["sent"], 400, "{summary}");
    assert_eq!(summary["failed"], 2, "{summary}");
    assert_eq!(summary["expired"], 1, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    // At least once: only sends the killed worker made and never recorded
    // can go out twice.
    assert!(
        summary["duplicates"].as_u64().unwrap() <= summary["killed_with_claims"].as_u64().unwrap(),
        "{summary}"
    );
    assert_eq!(summary["bad_signatures"], 0, "{summary}");
    assert!(summary["retried"].as_u64().unwrap() > 0, "{summary}");
    assert!(
        summary["unavailable_answers"].as_u64().unwrap() > 0,
        "{summary}"
    );
    for w in ["worker-1", "worker-3"] {
        assert!(summary["sent_by"][w].as_u64().unwrap() > 0, "{summary}");
    }
    assert!(stderr.contains("killed worker-2 (SIGKILL)"), "{stderr}");
    assert_eq!(summary["cleanup"], "deleted 403 in 1 batches", "{summary}");
    (summary, stderr)
}

#[tokio::test]
async fn the_short_demo_runs_clean_on_the_configured_servers_and_drops_its_database() {
    let (_, stderr) = run_demo(&format!("{}/herald", mysql_server()), redis_url());
    assert!(stderr.contains("HERALD_DATABASE_URL's server"), "{stderr}");
    let name = stderr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| w.starts_with("herald_demo_"))
        .unwrap_or_else(|| panic!("no database name in {stderr}"))
        .to_owned();
    let server = herald::secret::SecretUrl::parse(&format!("{}/mysql", mysql_server())).unwrap();
    let admin = herald::store::Store::connect(&server, 1).await.unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
    )
    .bind(&name)
    .fetch_one(admin.pool())
    .await
    .unwrap();
    admin.close().await;
    assert_eq!(left, 0, "{name} was left behind");
}

#[test]
fn the_short_demo_starts_private_servers_when_nothing_answers_and_removes_them() {
    let (db_port, redis_port) = (free_port(), free_port());
    let (_, stderr) = run_demo(
        &format!("mysql://root@127.0.0.1:{db_port}/herald"),
        &format!("redis://127.0.0.1:{redis_port}"),
    );
    assert!(stderr.contains("private mariadbd"), "{stderr}");
    assert!(
        stderr.contains("three private redis-server masters"),
        "{stderr}"
    );
    let dir = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("private servers live in "))
        .and_then(|l| l.split(" (removed").next())
        .unwrap_or_else(|| panic!("no directory in {stderr}"));
    assert!(!std::path::Path::new(dir).exists(), "{dir} was left behind");
}

/// Without the server programs the demo says in one message how to get
/// them, instead of failing somewhere inside.
#[test]
fn the_demo_says_how_to_install_missing_servers() {
    let empty = tempfile::tempdir().unwrap();
    let out = herald(None)
        .env("PATH", empty.path())
        .env(
            "HERALD_DATABASE_URL",
            format!("mysql://root@127.0.0.1:{}/herald", free_port()),
        )
        .args(["demo", "--short"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("herald: error:"))
            .count(),
        1,
        "{err}"
    );
    assert!(err.contains("is not installed"), "{err}");
    assert!(
        err.contains("apt-get install -y mariadb-server redis-server"),
        "{err}"
    );
    assert!(err.contains("brew install mariadb redis"), "{err}");
    assert!(err.contains("docker compose"), "{err}");
}
