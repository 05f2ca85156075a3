//! The lock under master faults: stalls that answer late, restarts that lose
//! data, one server listed twice. Real redis-server processes throughout.

use std::time::Duration;

use herald::lock::{LockConfig, LockError, Redlock};

use crate::helpers::wait_until;
use crate::lock::prefix;
use crate::redis_procs::Masters;

/// The lock tests' settings with one connection per master, so a stalled
/// master's queued requests are easy to reason about.
fn config(urls: Vec<String>, prefix: &str) -> LockConfig {
    LockConfig {
        pool_size: 1,
        ..crate::lock::config(urls, prefix)
    }
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Keys under `prefix` on one master, by SCAN.
async fn scan_prefix(url: &str, prefix: &str) -> Vec<String> {
    let mut c = conn(url).await;
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .unwrap();
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// Issue 13.9: a majority of masters stalls (SIGSTOP) while acquires, batch
/// acquires and an extend are sent to it; every caller gives up. On SIGCONT
/// the masters execute those requests; each late grant must be deleted again
/// at once, not live for its fresh 30 s TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_grants_after_a_stall_are_released_on_arrival() {
    let mut masters = Masters::start(3);
    let urls = masters.urls();
    let p = prefix();
    let rl = Redlock::new(config(urls.clone(), &p)).await.unwrap();
    assert_eq!(rl.warm_up(Duration::from_secs(3)).await, 3);
    let ttl = Duration::from_secs(30);
    // Held before the stall, extended during it, released after giving up.
    let mut held = rl.acquire("held", ttl).await.unwrap();

    masters[1].pause();
    masters[2].pause();
    // Several rounds, so the breakers open and later releases are refused.
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let rl = rl.clone();
            tasks.push(tokio::spawn(async move {
                rl.acquire(&format!("s:{round}:{i}"), ttl).await
            }));
        }
        let keys: Vec<String> = (0..50).map(|i| format!("b:{round}:{i}")).collect();
        let batch = rl.acquire_many(&keys, ttl).await;
        assert!(
            matches!(batch, Err(LockError::NoQuorum { .. })),
            "{batch:?}"
        );
        for t in tasks {
            let r = t.await.unwrap();
            assert!(matches!(r, Err(LockError::NoQuorum { .. })), "{r:?}");
        }
    }
    // The extend gives up on the stalled masters; so does its caller.
    let extend = tokio::time::timeout(Duration::from_millis(300), rl.extend(&mut held, ttl)).await;
    assert!(extend.is_err(), "extend cannot succeed: {extend:?}");
    let released = rl.release(held).await;
    assert!(released.is_err(), "{released:?}");

    masters[1].resume();
    masters[2].resume();
    // Well before the 30 s TTL: nothing of ours is left anywhere.
    for url in &urls {
        let url = url.clone();
        let p = p.clone();
        wait_until(
            "late grants released on every master",
            Duration::from_secs(5),
            || {
                let url = url.clone();
                let p = p.clone();
                async move { scan_prefix(&url, &p).await.is_empty() }
            },
        )
        .await;
    }
}

/// Issue 13 (the classic Redlock warning): a master restarted without
/// persistence has forgotten the locks it held. The holder took the lock on
/// A and B while C was down; then C comes back empty and B restarts empty.
/// B and C would now grant the lock to anyone, but their votes must not
/// count until the longest TTL has passed since they (re)started, so a
/// second owner gets nothing while the holder still believes it holds the
/// lock; after the quarantine, service is normal again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_does_not_vote_until_the_longest_ttl_has_passed() {
    let mut masters = Masters::start(3);
    masters[2].kill();
    let urls = masters.urls();
    let p = prefix();
    let holder = Redlock::new(config(urls.clone(), &p)).await.unwrap();
    let second = Redlock::new(config(urls.clone(), &p)).await.unwrap();
    assert_eq!(holder.warm_up(Duration::from_secs(3)).await, 2);
    assert_eq!(second.warm_up(Duration::from_secs(3)).await, 2);
    let ttl = Duration::from_secs(3);
    // The second instance has used this TTL before, so it knows it is in use.
    let warm = second.acquire("warm", ttl).await.unwrap();
    second.release(warm).await.unwrap();

    let (acquired_tx, acquired_rx) = tokio::sync::oneshot::channel();
    let h = holder.clone();
    let holding = tokio::spawn(async move {
        h.with_lock("res", ttl, |guard| async move {
            let _ = acquired_tx.send(guard.clone());
            // Holds until told the lock is lost (or well past the TTL).
            tokio::select! {
                _ = guard.lost().cancelled() => true,
                _ = tokio::time::sleep(ttl * 3) => false,
            }
        })
        .await
    });
    let guard = acquired_rx.await.expect("holder acquired");
    let restarted = std::time::Instant::now();
    masters[2].restart();
    masters[1].restart();

    let deadline = restarted + ttl * 3;
    let mut last = None;
    let got = loop {
        if std::time::Instant::now() >= deadline {
            let mut seen = Vec::new();
            for u in &urls {
                seen.push(scan_prefix(u, &p).await);
            }
            panic!(
                "service did not resume after the quarantine: {last:?}; keys {seen:?}; lost {}",
                guard.is_lost()
            );
        }
        match second.acquire("res", ttl).await {
            Ok(lock) => break lock,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20)).await
            }
        }
    };
    assert!(
        guard.is_lost() || guard.remaining_validity().is_zero(),
        "a second owner got the lock {:?} after the restarts while the holder still held it ({:?} validity left)",
        restarted.elapsed(),
        guard.remaining_validity()
    );
    assert!(
        holding.await.unwrap().unwrap(),
        "holder was told it lost the lock"
    );
    second.release(got).await.unwrap();
    // B's vote counts again once the TTL has passed since its restart, and
    // not before: with C down, only A and B together make a majority.
    masters[2].kill();
    let ok_at = loop {
        assert!(
            std::time::Instant::now() < restarted + ttl * 3,
            "the restarted master never voted again"
        );
        if let Ok(l) = second.acquire("after", ttl).await {
            second.release(l).await.unwrap();
            break restarted.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        ok_at >= ttl - Duration::from_millis(200),
        "the restarted master voted after {ok_at:?}, before the longest TTL ({ttl:?})"
    );
}

/// Issue 13.10, end to end: a worker given one server under two names exits
/// 2 (a settings error), naming both entries and no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_given_one_server_twice_exits_2() {
    let db = crate::helpers::TestDb::new().await;
    let srv = crate::redis_procs::RedisProc::start_with(&["--requirepass", "s3cr3t"]);
    let urls = format!(
        "redis://:s3cr3t@localhost:{0},redis://:s3cr3t@127.0.0.1:{0}",
        srv.port
    );
    let mut cmd = crate::helpers::herald(Some(&db));
    cmd.arg("worker")
        .env("HERALD_REDIS_URLS", urls)
        .env("HERALD_KEY_PREFIX", prefix());
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker started instead of refusing one server listed twice");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().unwrap();
    let err = crate::helpers::text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("same Redis server"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}

/// Issue 13.10: `redis://h:6379` and `redis://h:6379/0` are one master under
/// the one rule (`lock::config::same_master`), refused as a setting (exit 2)
/// before anything connects.
#[test]
fn default_port_and_database_make_one_master() {
    let out = crate::helpers::herald(None)
        .arg("status")
        .env(
            "HERALD_REDIS_URLS",
            "redis://u:pw1@h.example:6379,redis://u:pw1@H.example/0",
        )
        .output()
        .unwrap();
    let err = crate::helpers::text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("listed twice"), "{err}");
    assert!(!err.contains("pw1"), "{err}");
}
