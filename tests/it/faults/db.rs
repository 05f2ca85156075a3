//! Database faults: a MariaDB crash and restart mid-drain, `KILL QUERY` of
//! the workers' claim statements, and lock-wait timeouts and deadlocks in
//! the claim, which must be retried, not lost.

use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, Executor};

use super::*;
use crate::mariadb_proc::MariaDbProc;
use crate::redis_procs::Masters;

/// Both workers lose the database at once (SIGKILL, then a restart on the
/// same data directory after the fault length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_mariadb_restart_mid_drain() {
    let size = size();
    let mut mysql = MariaDbProc::start();
    let masters = Masters::start(3);
    let url = mysql.url("herald");
    let mut rig = Rig::on(&url, size).await;
    let mut workers = vec![
        rig.spawn("a", &url, &masters.urls(), &[]),
        rig.spawn("b", &url, &masters.urls(), &[]),
    ];
    rig.wait_sent(rig.strike_at()).await;

    let start = db_now();
    mysql.kill();
    tokio::time::sleep(size.fault).await;
    mysql.restart();
    let window = window_since(start);
    settle_and_report(
        &rig,
        "mariadb_restart",
        "SIGKILL mariadbd mid-drain, restart after the fault length (both workers)",
        window,
        &mut workers,
        None,
        json!({}),
    )
    .await;
    rig.store.close().await;
}

/// Claim statements are made to wait (another connection holds a READ
/// table lock for a moment), then killed with `KILL QUERY` while they wait:
/// a claim interrupted mid-statement. Repeated for the fault length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_kill_query_mid_claim() {
    let size = size();
    let masters = Masters::start(3);
    let mut rig = Rig::shared(size).await;
    let mut workers = vec![
        rig.spawn("a", &rig.url.clone(), &masters.urls(), &[]),
        rig.spawn("b", &rig.url.clone(), &masters.urls(), &[]),
    ];
    rig.wait_sent(rig.strike_at()).await;
    let db_name: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(rig.store.pool())
        .await
        .unwrap();

    let mut locker = sqlx::MySqlConnection::connect(&rig.url).await.unwrap();
    let sent_before = rig.sent().await;
    let start = db_now();
    let t = Instant::now();
    let mut kills = 0u64;
    let mut cycles = 0u32;
    // On a loaded machine a fault window can pass without a claim queueing
    // behind the lock; keep going (bounded) until one was caught.
    while t.elapsed() < size.fault || (kills == 0 && t.elapsed() < size.fault * 4) {
        locker
            .execute("LOCK TABLES notifications READ")
            .await
            .unwrap();
        let held = Instant::now();
        // Kill every claim that queues behind the lock for up to 300 ms:
        // its update, or (MariaDB's one-round-trip claim) its locking read.
        while held.elapsed() < Duration::from_millis(300) {
            let waiting: Vec<i64> = sqlx::query_scalar(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? \
                 AND (INFO LIKE 'UPDATE notifications SET status = ''sending''%' \
                      OR (INFO LIKE 'SELECT id, user_id,%' AND INFO LIKE '%@herald_claimed%'))",
            )
            .bind(&db_name)
            .fetch_all(rig.store.pool())
            .await
            .unwrap();
            for id in waiting {
                if sqlx::query(&format!("KILL QUERY {id}"))
                    .execute(rig.store.pool())
                    .await
                    .is_ok()
                {
                    kills += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        locker.execute("UNLOCK TABLES").await.unwrap();
        cycles += 1;
        // While the lock is held, finishes wait too, so a worker's claimed
        // rows stay counted and it has no room to claim more. Its next
        // claim comes a few milliseconds after the release, once the
        // waiting finish went through: a 100 ms free spell lets that claim
        // through (on a quiet machine, every claim of the drain did, and
        // none was caught). So every other release is taken back at once:
        // the waiting finishes go through first, and the claim they make
        // room for queues behind the new hold.
        if cycles % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let window = window_since(start);
    locker.close().await.unwrap();
    // Say how far the drain got: every row sent with no claim caught
    // means the claims all went through while the lock was released.
    let sent_after = rig.sent().await;
    assert!(
        kills > 0,
        "no claim statement was caught and killed in {cycles} lock cycles over {:?}; \
         rows sent: {sent_before} of {} when the fault began, {sent_after} when it ended",
        t.elapsed(),
        rig.rows
    );
    settle_and_report(
        &rig,
        "kill_query_mid_claim",
        "LOCK TABLES READ 300 ms, released for 100 ms or a moment in turn; KILL QUERY on each claim statement waiting behind it",
        window,
        &mut workers,
        None,
        json!({ "claims_killed": kills }),
    )
    .await;
}

async fn global_status(store: &Store, name: &str) -> i64 {
    let v: Option<String> = sqlx::query_scalar(
        "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = ?",
    )
    .bind(name)
    .fetch_optional(store.pool())
    .await
    .unwrap();
    v.and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn count_in_logs(workers: &[WorkerProc], needle: &str) -> usize {
    workers
        .iter()
        .map(|w| w.logs().matches(needle).count())
        .sum()
}

/// Lock-wait timeouts (1205) in the claim: another transaction holds
/// `FOR UPDATE` on the oldest due rows longer than the server's
/// `innodb_lock_wait_timeout` (1 s here, on a private server).
/// Deadlocks (1213) in the claim: another, heavier transaction locks a row
/// a waiting claim needs last, then one that claim already holds, so InnoDB
/// rolls the claim back as the cheaper victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_lock_wait_timeouts_and_deadlocks_in_the_claim() {
    let size = size();
    let mysql = MariaDbProc::start();
    let admin = herald::store::Store::connect(
        &herald::secret::SecretUrl::parse(&mysql.url("mysql")).unwrap(),
        1,
    )
    .await
    .unwrap();
    admin
        .pool()
        .execute("SET GLOBAL innodb_lock_wait_timeout = 1")
        .await
        .unwrap();
    let masters = Masters::start(3);

    // Lock waits.
    {
        let url = mysql.url("herald_wait");
        let mut rig = Rig::on(&url, size).await;
        let mut workers = vec![
            rig.spawn("a", &url, &masters.urls(), &[]),
            rig.spawn("b", &url, &masters.urls(), &[]),
        ];
        rig.wait_sent(rig.strike_at()).await;
        let before = global_status(&admin, "Innodb_row_lock_waits").await;
        let start = db_now();
        let t = Instant::now();
        while t.elapsed() < size.fault {
            let mut tx = rig.store.pool().begin().await.unwrap();
            sqlx::query(
                "SELECT id FROM notifications WHERE status = 'pending' \
                 ORDER BY due_at, id LIMIT 200 FOR UPDATE",
            )
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tx.commit().await.unwrap();
        }
        let window = window_since(start);
        let waits = global_status(&admin, "Innodb_row_lock_waits").await - before;
        let logged = count_in_logs(&workers, "Lock wait timeout exceeded");
        settle_and_report(
            &rig,
            "lock_wait_timeout",
            "another transaction holds FOR UPDATE on the 200 oldest due rows for 1.5 s at a time, innodb_lock_wait_timeout=1",
            window,
            &mut workers,
            None,
            json!({
                "row_lock_waits": waits,
                "lock_wait_errors_logged": logged,
            }),
        )
        .await;
        rig.store.close().await;
    }

    // Deadlocks.
    {
        let url = mysql.url("herald_deadlock");
        let mut rig = Rig::on(&url, size).await;
        rig.store
            .pool()
            .execute(
                "CREATE TABLE ballast (id INT PRIMARY KEY, v INT NOT NULL); \
                 INSERT INTO ballast SELECT seq, 0 FROM seq_1_to_2000",
            )
            .await
            .unwrap();
        let mut workers = vec![
            rig.spawn("a", &url, &masters.urls(), &[]),
            rig.spawn("b", &url, &masters.urls(), &[]),
        ];
        rig.wait_sent(rig.strike_at()).await;
        let before = global_status(&admin, "Innodb_deadlocks").await;
        let start = db_now();
        let t = Instant::now();
        let mut attempts = 0u64;
        while t.elapsed() < size.fault {
            attempts += 1;
            provoke_deadlock(&rig.store).await;
        }
        let window = window_since(start);
        let deadlocks = global_status(&admin, "Innodb_deadlocks").await - before;
        let logged = count_in_logs(&workers, "Deadlock found");
        settle_and_report(
            &rig,
            "deadlock_in_claim",
            "a heavier transaction locks rows a claim needs, waits until one queues on them, then locks a row that claim holds",
            window,
            &mut workers,
            None,
            json!({
                "deadlocks": deadlocks,
                "provocations": attempts,
                "deadlock_errors_logged": logged,
            }),
        )
        .await;
        rig.store.close().await;
    }
    admin.close().await;
}

/// One try: become heavy (2,000 row changes), lock every fourth of the 600
/// oldest due rows, so whatever batch a claim takes, it must queue on one of
/// them (`h`) after locking the lower ids of its list (InnoDB locks an
/// `id IN (…)` list in ascending order); then lock the lowest id of a
/// running claim's list. If the claim holds it, that closes the cycle and
/// InnoDB rolls back the claim, the lighter transaction; if not, the claim
/// just waits for us.
async fn provoke_deadlock(store: &Store) {
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("UPDATE ballast SET v = v + 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    let oldest: Vec<u64> = sqlx::query_scalar(
        "SELECT id FROM notifications WHERE status = 'pending' AND due_at <= UTC_TIMESTAMP(6) \
         ORDER BY due_at, id LIMIT 600",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap_or_default();
    let held: Vec<u64> = oldest.iter().copied().skip(3).step_by(4).collect();
    if held.is_empty() {
        let _ = tx.rollback().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        return;
    }
    let list = held
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let locked = sqlx::query(&format!(
        "SELECT id FROM notifications WHERE id IN ({list}) FOR UPDATE"
    ))
    .fetch_all(&mut *tx)
    .await;
    if locked.is_err() {
        let _ = tx.rollback().await;
        return;
    }
    let t = Instant::now();
    let mut lo = None;
    while t.elapsed() < Duration::from_secs(1) && lo.is_none() {
        let waiting: Vec<String> = sqlx::query_scalar(
            "SELECT INFO FROM information_schema.PROCESSLIST \
             WHERE INFO LIKE 'UPDATE notifications SET status = ''sending''%'",
        )
        .fetch_all(store.pool())
        .await
        .unwrap_or_default();
        lo = waiting.iter().find_map(|q| {
            let list = q.split("WHERE id IN (").nth(1)?.split(')').next()?;
            let mut ids: Vec<u64> = list
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect();
            ids.sort_unstable();
            let h = ids.iter().find(|i| held.contains(i))?;
            let first = *ids.first()?;
            (first < *h).then_some(first)
        });
        if lo.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    if let Some(lo) = lo {
        let _ = sqlx::query("SELECT id FROM notifications WHERE id = ? FOR UPDATE")
            .bind(lo)
            .fetch_optional(&mut *tx)
            .await;
    }
    let _ = tx.rollback().await;
}
