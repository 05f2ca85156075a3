//! Per-channel settings from the config file, against real worker processes
//! and real HTTP receivers: each channel's retry schedule and send timeout,
//! the per-channel concurrency cap (which must not hold up other channels),
//! and signing-secret rotation.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use herald::secret::SecretString;
use herald::transport::{decode_secret, verify_signature};

use crate::helpers::*;
use crate::receiver::{Hit, Receiver};

const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// base64 of "the-new-signing-secret".
const NEW: &str = "whsec_dGhlLW5ldy1zaWduaW5nLXNlY3JldA==";

fn config_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn worker_env(
    config: &std::path::Path,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("HERALD_CONFIG", config.display().to_string()),
        ("HERALD_POLL_INTERVAL_MS", "50".to_owned()),
    ];
    v.extend(extra.iter().map(|(k, val)| (*k, val.to_string())));
    v
}

/// `n` rows on `channel`, due `age_s` seconds ago (older rows are polled first).
async fn insert(db: &TestDb, channel: &str, n: u64, age_s: u64) {
    let values: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "({i}, '{channel}', '{{}}', UTC_TIMESTAMP(6) - INTERVAL {age_s} SECOND, \
                 UTC_TIMESTAMP(6) - INTERVAL {age_s} SECOND)"
            )
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) VALUES {}",
        values.join(",")
    ))
    .await;
}

async fn count(db: &TestDb, channel: &str, cond: &str) -> i64 {
    db.scalar(&format!(
        "SELECT COUNT(*) FROM notifications WHERE channel = '{channel}' AND {cond}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_follows_its_own_schedule_and_timeout() {
    require_redis().await;
    let db = TestDb::new().await;
    // Two failures per notification, then success.
    let flaky =
        Receiver::scripted(Duration::ZERO, |_, n| (if n < 2 { 503 } else { 200 }, None)).await;
    // Answers after 1.5 s.
    let lazy = Receiver::ok(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        &dir,
        &format!(
            r#"
[defaults]
retry_schedule = "none"
# Schedules and timeouts alone: ten 503s in a row would open a breaker.
breaker = "off"

[channels.fast]
transport = "webhook"
url = "{flaky}"

[channels.slow]
transport = "webhook"
url = "{flaky}"
retry_schedule = "100ms,100ms,100ms"

[channels.tight]
transport = "webhook"
url = "{lazy}"
send_timeout = "400ms"

[channels.patient]
transport = "webhook"
url = "{lazy}"
send_timeout = "5s"
"#,
            flaky = flaky.url(),
            lazy = lazy.url()
        ),
    );
    for channel in ["fast", "slow", "tight", "patient"] {
        insert(&db, channel, 5, 1).await;
    }
    let mut worker = WorkerProc::spawn(&db, &key_prefix(), &worker_env(&config, &[]));
    wait_until("every row settled", Duration::from_secs(30), || async {
        db.scalar("SELECT COUNT(*) FROM notifications WHERE status IN ('sent', 'failed')")
            .await
            == 20
    })
    .await;
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(20)).await;

    // "fast" has no retries ([defaults]): the first 503 fails the row.
    assert_eq!(
        count(&db, "fast", "status = 'failed' AND attempts = 1").await,
        5
    );
    // "slow" retries on its own schedule and gets through on the third try.
    assert_eq!(
        count(&db, "slow", "status = 'sent' AND attempts = 3").await,
        5
    );
    // "tight" gives up on the 1.5 s receiver after its own 400 ms...
    assert_eq!(
        count(
            &db,
            "tight",
            "status = 'failed' AND last_error LIKE '%: timeout after 400ms'"
        )
        .await,
        5,
        "logs:\n{}",
        worker.logs()
    );
    // ...while "patient" waits for it.
    assert_eq!(
        count(&db, "patient", "status = 'sent' AND attempts = 1").await,
        5
    );
}

/// Most requests in progress at once among `hits`.
fn max_overlap(hits: &[Hit]) -> usize {
    let mut events: Vec<(Instant, i32)> = hits
        .iter()
        .flat_map(|h| [(h.start, 1), (h.end, -1)])
        .collect();
    // At equal instants, ends first.
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_channel_stays_under_its_cap_without_holding_up_the_others() {
    require_redis().await;
    let db = TestDb::new().await;
    let capped_rcv = Receiver::ok(Duration::from_millis(100)).await;
    let free_rcv = Receiver::ok(Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        &dir,
        &format!(
            "[channels.capped]\ntransport = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 2\n\n\
             [channels.free]\ntransport = \"webhook\"\nurl = \"{}\"\n",
            capped_rcv.url(),
            free_rcv.url()
        ),
    );
    // The capped channel's backlog is older (polled first) and much larger
    // than all a worker keeps claimed (8 slots + at most 16 ahead): were
    // its waiting rows to count as claimed work, "free" would wait until
    // all but 24 of them had been claimed, i.e. 76 sent.
    insert(&db, "capped", 100, 60).await;
    insert(&db, "free", 60, 1).await;
    let started = Instant::now();
    let mut worker = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &worker_env(
            &config,
            &[("HERALD_CONCURRENCY", "8"), ("HERALD_BATCH_SIZE", "16")],
        ),
    );
    wait_until(
        "free channel delivered",
        Duration::from_secs(30),
        || async { count(&db, "free", "status = 'sent'").await == 60 },
    )
    .await;
    let capped_when_free_done = count(&db, "capped", "status = 'sent'").await;
    let free_took = started.elapsed();
    wait_until(
        "capped channel delivered",
        Duration::from_secs(40),
        || async { count(&db, "capped", "status = 'sent'").await == 100 },
    )
    .await;
    let capped_took = started.elapsed();
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(20)).await;

    let hits = capped_rcv.hits();
    assert_eq!(hits.len(), 100, "each capped row sent once");
    assert_eq!(max_overlap(&hits), 2, "the cap is used, never exceeded");
    // 100 rows, 2 at a time, 100 ms each: at least 5 s.
    assert!(capped_took >= Duration::from_secs(5), "{capped_took:?}");
    // Typically about 20 (free is done in about a second); waiting behind
    // the capped rows it would be 76 or more.
    assert!(
        capped_when_free_done < 50,
        "free waited for capped: {capped_when_free_done} capped rows sent when free was done \
         ({free_took:?}; capped done in {capped_took:?})"
    );
    // Rows handed back while their channel was full kept their attempts.
    assert_eq!(count(&db, "capped", "attempts = 1").await, 100);
    assert_eq!(db.count_status("failed").await, 0);
}

/// Checks every hit's signature with `key`; returns how many signatures
/// each header carried.
fn verify_all(hits: &[Hit], key: &[u8]) -> Vec<usize> {
    hits.iter()
        .map(|h| {
            assert!(
                verify_signature(key, &h.webhook_id, &h.timestamp, &h.body, &h.signature),
                "delivery {} does not verify: {}",
                h.id,
                h.signature
            );
            h.signature.split(' ').count()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_on_either_side_of_a_secret_rotation_verify_every_delivery() {
    require_redis().await;
    let db = TestDb::new().await;
    let old_key = decode_secret(&SecretString::new(OLD.into())).unwrap();
    let new_key = decode_secret(&SecretString::new(NEW.into())).unwrap();
    // One receiver knows only the old secret, one only the new; a third
    // gets the built-in channel, signed from HERALD_WEBHOOK_SECRET.
    let knows_old = Receiver::ok(Duration::ZERO).await;
    let knows_new = Receiver::ok(Duration::ZERO).await;
    let global = Receiver::ok(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        &dir,
        &format!(
            "[channels.to_old]\ntransport = \"webhook\"\nurl = \"{}\"\nsecrets = [\"{OLD}\", \"{NEW}\"]\n\n\
             [channels.to_new]\ntransport = \"webhook\"\nurl = \"{}\"\nsecrets = [\"{OLD}\", \"{NEW}\"]\n",
            knows_old.url(),
            knows_new.url()
        ),
    );
    insert(&db, "to_old", 10, 1).await;
    insert(&db, "to_new", 10, 1).await;
    insert(&db, "webhook", 10, 1).await;
    let both = format!("{NEW} {OLD}");
    let mut worker = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &worker_env(
            &config,
            &[
                ("HERALD_WEBHOOK_URL", global.url().as_str()),
                ("HERALD_WEBHOOK_SECRET", both.as_str()),
            ],
        ),
    );
    wait_until("all sent", Duration::from_secs(30), || async {
        db.count_status("sent").await == 30
    })
    .await;
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(20)).await;

    assert_eq!(verify_all(&knows_old.hits(), &old_key), vec![2; 10]);
    assert_eq!(verify_all(&knows_new.hits(), &new_key), vec![2; 10]);
    let global_hits = global.hits();
    assert_eq!(verify_all(&global_hits, &old_key), vec![2; 10]);
    verify_all(&global_hits, &new_key);
    // The secrets never reach the logs.
    let logs = worker.logs();
    assert!(
        !logs.contains("MfKQ9r8") && !logs.contains("dGhlLW5ldy"),
        "{logs}"
    );
}
