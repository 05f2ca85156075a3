//! The harness itself: with nothing answering at `HERALD_TEST_DATABASE_URL`
//! and `HERALD_TEST_REDIS_URL`, a run starts private servers, passes, and
//! leaves nothing running behind.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::text;
use crate::redis_procs::free_port;

/// Runs two tests of this binary (one needs MariaDB, a worker and Redis,
/// the other Redis alone) in a child process whose servers point at closed
/// ports.
#[test]
fn a_run_with_no_servers_answering_starts_private_ones_and_cleans_up() {
    let (db_port, redis_port) = (free_port(), free_port());
    let out = Command::new(std::env::current_exe().unwrap())
        .env(
            "HERALD_TEST_DATABASE_URL",
            format!("mysql://root@127.0.0.1:{db_port}"),
        )
        .env(
            "HERALD_TEST_REDIS_URL",
            format!("redis://127.0.0.1:{redis_port}"),
        )
        .args([
            "--exact",
            "firstrun::a_row_that_expired_unsent_keeps_its_attempt_count",
            "lock::shared_redis_with_a_unique_prefix",
            "--test-threads=2",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 passed"), "{stdout}");
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("started a private server at "))
        .collect();
    assert_eq!(notes.len(), 2, "one MariaDB, one Redis:\n{stderr}");
    assert!(
        notes
            .iter()
            .any(|l| l.contains(&format!(":{db_port}; started"))),
        "{stderr}"
    );

    // Once the run has exited, its servers go too.
    let ports: Vec<u16> = notes
        .iter()
        .filter_map(|l| {
            l.rsplit(':')
                .next()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(ports.len(), 2, "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(15);
    for port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the server on {port} outlived the run"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
