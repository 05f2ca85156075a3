//! Database work of a run, counted instead of timed (`--db-counters`).
//!
//! Wall-clock throughput on a shared 2-core machine swings with whatever
//! else runs; what the database *does* per notification does not: index
//! entries read, statements run, buffer-pool pages touched. So a run can
//! snapshot the server's counters just before the workers start and just
//! after the last row is finished, and report the differences per 1,000
//! rows:
//!
//! * `SHOW GLOBAL STATUS` (`Handler_read_next`, `Com_select`,
//!   `Innodb_buffer_pool_read_requests`, …): server-wide, so on a shared
//!   server they include other clients' work; use a private server for
//!   figures to compare;
//! * `performance_schema.events_statements_summary_by_digest` (when the
//!   server runs with `performance_schema=ON`), filtered on the run's own
//!   database, so exact even on a shared server: per statement shape, calls,
//!   rows examined, rows sent, rows affected and statement time;
//! * the CPU time of the server process, when it runs on this machine (its
//!   pid from `@@pid_file`, so other local servers are not mistaken for it).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;

use super::report::round;
use crate::store::Store;

/// The status counters reported. Chosen to show where index and row work
/// goes: index entries followed (`read_next`), index lookups (`read_key`),
/// statements, row changes, pages touched, redo written.
const STATUS: &[&str] = &[
    "Handler_read_key",
    "Handler_read_next",
    "Handler_read_prev",
    "Handler_read_first",
    "Handler_read_rnd_next",
    "Handler_update",
    "Handler_write",
    "Handler_delete",
    "Com_select",
    "Com_update",
    "Com_insert",
    "Com_delete",
    "Com_commit",
    "Questions",
    "Innodb_rows_read",
    "Innodb_rows_updated",
    "Innodb_rows_deleted",
    "Innodb_buffer_pool_read_requests",
    "Innodb_buffer_pool_write_requests",
    "Innodb_buffer_pool_reads",
    "Innodb_os_log_written",
    "Innodb_os_log_fsyncs",
    "Innodb_data_fsyncs",
    "Innodb_row_lock_waits",
    "Bytes_received",
    "Bytes_sent",
];

/// One statement shape's totals.
#[derive(Debug, Clone, Copy, Default)]
struct Digest {
    calls: u64,
    examined: u64,
    sent: u64,
    affected: u64,
    /// Picoseconds, as performance_schema counts.
    timer_ps: u64,
}

/// The counters at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    status: BTreeMap<String, u64>,
    /// Digest text → totals, for the run's database; `None` without
    /// performance_schema.
    digests: Option<BTreeMap<String, Digest>>,
    cpu: Option<Duration>,
    /// Server-wide statement and command counts by event name
    /// (`statement/com/Ping`, `statement/sql/update`, …).
    commands: BTreeMap<String, u64>,
    /// The local server's threads: CPU time by thread id, context switches.
    threads: Option<Threads>,
}

/// The local server's threads at one moment.
#[derive(Debug, Clone, Default)]
struct Threads {
    /// OS thread id → (performance_schema thread name, CPU time).
    cpu: BTreeMap<u64, (String, Duration)>,
    /// Voluntary and involuntary context switches, summed over threads.
    switches: (u64, u64),
}

/// One statement shape in the report, per 1,000 rows of the run.
#[derive(Debug, Clone, Serialize)]
pub struct StatementLine {
    /// What the statement is, by its shape (`claim`, `read_back`, …).
    pub kind: String,
    pub calls: f64,
    pub rows_examined: f64,
    pub rows_sent: f64,
    pub rows_affected: f64,
    pub time_ms: f64,
    /// The start of the normalised text, so a shape can be told apart.
    pub sql: String,
}

/// The differences between two snapshots, per 1,000 rows.
#[derive(Debug, Clone, Serialize)]
pub struct DbWork {
    /// CPU time of the local server process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    /// CPU time of the local server's threads by kind: `connection` for
    /// the threads running clients' statements, else the background
    /// thread's name (`page_cleaner_thread`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms_by_thread: Option<BTreeMap<String, f64>>,
    /// Context switches of the local server's threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_switches: Option<BTreeMap<String, f64>>,
    /// Global status deltas.
    pub status: BTreeMap<String, f64>,
    /// Statements and commands by event name, server-wide (needs
    /// performance_schema).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub commands: BTreeMap<String, f64>,
    /// Per statement shape, by statement time; absent without
    /// performance_schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statements: Option<Vec<StatementLine>>,
}

impl Snapshot {
    /// Reads the counters. `schema` is the run's database: only its
    /// statements count in the digest totals.
    pub async fn take(store: &Store, schema: &str) -> anyhow::Result<Snapshot> {
        let pool = store.pool();
        let mut status = BTreeMap::new();
        for row in sqlx::raw_sql("SHOW GLOBAL STATUS").fetch_all(pool).await? {
            let name: String = row.try_get(0)?;
            if STATUS.iter().any(|s| s.eq_ignore_ascii_case(&name)) {
                let value: String = row.try_get(1)?;
                status.insert(name, value.trim().parse().unwrap_or(0));
            }
        }
        let on: Option<i64> = sqlx::query_scalar("SELECT @@performance_schema")
            .fetch_one(pool)
            .await
            .ok();
        let digests = if on == Some(1) {
            Some(digests(store, schema).await?)
        } else {
            None
        };
        let pid_file: Option<String> = sqlx::query_scalar("SELECT @@pid_file")
            .fetch_one(pool)
            .await
            .ok();
        let pid = pid_file.as_deref().and_then(server_pid);
        let mut commands = BTreeMap::new();
        let mut names: BTreeMap<u64, String> = BTreeMap::new();
        if on == Some(1) {
            let rows = sqlx::raw_sql(
                "SELECT EVENT_NAME, CAST(COUNT_STAR AS UNSIGNED) \
                 FROM performance_schema.events_statements_summary_global_by_event_name \
                 WHERE COUNT_STAR > 0",
            )
            .fetch_all(pool)
            .await?;
            for r in rows {
                commands.insert(r.try_get::<String, _>(0)?, r.try_get::<u64, _>(1)?);
            }
            // Which kind of thread each OS thread is (MariaDB 10.5+, MySQL 8).
            if let Ok(rows) = sqlx::raw_sql(
                "SELECT CAST(THREAD_OS_ID AS UNSIGNED), NAME FROM performance_schema.threads \
                 WHERE THREAD_OS_ID IS NOT NULL",
            )
            .fetch_all(pool)
            .await
            {
                for r in rows {
                    let name: String = r.try_get(1)?;
                    let short = name.rsplit('/').next().unwrap_or(&name);
                    let kind = if short == "one_connection" {
                        "connection"
                    } else {
                        short
                    };
                    names.insert(r.try_get::<u64, _>(0)?, kind.to_owned());
                }
            }
        }
        Ok(Snapshot {
            status,
            digests,
            cpu: pid.and_then(|p| process_cpu(&std::path::Path::new("/proc").join(p.to_string()))),
            commands,
            threads: pid.map(|p| threads(p, &names)),
        })
    }

    /// What happened between `self` and `later`, per 1,000 `rows`.
    pub fn work_until(&self, later: &Snapshot, rows: u64) -> DbWork {
        let per = 1000.0 / rows.max(1) as f64;
        let status = later
            .status
            .iter()
            .map(|(k, v)| {
                let before = self.status.get(k).copied().unwrap_or(0);
                (k.clone(), round(v.saturating_sub(before) as f64 * per, 1))
            })
            .collect();
        let statements = match (&self.digests, &later.digests) {
            (Some(a), Some(b)) => Some(statement_lines(a, b, per)),
            _ => None,
        };
        let cpu_ms = match (self.cpu, later.cpu) {
            (Some(a), Some(b)) => Some(round(b.saturating_sub(a).as_secs_f64() * 1e3 * per, 1)),
            _ => None,
        };
        let commands = later
            .commands
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(self.commands.get(k).copied().unwrap_or(0));
                (d > 0).then(|| (k.clone(), round(d as f64 * per, 2)))
            })
            .collect();
        let (cpu_ms_by_thread, context_switches) = match (&self.threads, &later.threads) {
            (Some(a), Some(b)) => {
                let mut by: BTreeMap<String, f64> = BTreeMap::new();
                for (tid, (name, cpu)) in &b.cpu {
                    let before = a.cpu.get(tid).map_or(Duration::ZERO, |x| x.1);
                    let ms = cpu.saturating_sub(before).as_secs_f64() * 1e3;
                    if ms > 0.0 {
                        *by.entry(name.clone()).or_default() += ms * per;
                    }
                }
                let by = by.into_iter().map(|(k, v)| (k, round(v, 1))).collect();
                let sw = BTreeMap::from([
                    (
                        "voluntary".to_owned(),
                        round(b.switches.0.saturating_sub(a.switches.0) as f64 * per, 1),
                    ),
                    (
                        "involuntary".to_owned(),
                        round(b.switches.1.saturating_sub(a.switches.1) as f64 * per, 1),
                    ),
                ]);
                (Some(by), Some(sw))
            }
            _ => (None, None),
        };
        DbWork {
            cpu_ms,
            cpu_ms_by_thread,
            context_switches,
            status,
            commands,
            statements,
        }
    }
}

fn statement_lines(
    before: &BTreeMap<String, Digest>,
    after: &BTreeMap<String, Digest>,
    per: f64,
) -> Vec<StatementLine> {
    let mut out: Vec<(u64, StatementLine)> = Vec::new();
    for (text, b) in after {
        let a = before.get(text).copied().unwrap_or_default();
        let calls = b.calls.saturating_sub(a.calls);
        if calls == 0 {
            continue;
        }
        let timer = b.timer_ps.saturating_sub(a.timer_ps);
        let f = |x: u64, y: u64| round(x.saturating_sub(y) as f64 * per, 1);
        out.push((
            timer,
            StatementLine {
                kind: kind_of(text).to_owned(),
                calls: f(b.calls, a.calls),
                rows_examined: f(b.examined, a.examined),
                rows_sent: f(b.sent, a.sent),
                rows_affected: f(b.affected, a.affected),
                time_ms: round(timer as f64 / 1e9 * per, 2),
                sql: text.chars().take(120).collect(),
            },
        ));
    }
    out.sort_by_key(|x| std::cmp::Reverse(x.0));
    out.into_iter().map(|(_, l)| l).collect()
}

/// Names the statements of the delivery protocol by their shape.
fn kind_of(text: &str) -> &'static str {
    // Digest texts quote names in backticks and replace literals with `?`.
    let t = text.to_ascii_uppercase().replace('`', "");
    let has = |s: &str| t.contains(s);
    let select = t.starts_with("SELECT") || t.starts_with('(');
    if t.starts_with("SET SESSION INNODB_LOCK_WAIT_TIMEOUT") {
        // The one-round-trip claim or finish (store::guarded): MariaDB
        // files the whole multi-statement text under its first statement.
        "claim_or_finish"
    } else if t.starts_with("UPDATE") && has("CLAIMED_BY =") {
        "claim"
    } else if t.starts_with("UPDATE") && has("FINISHED_AT =") && has("LAST_ERROR = NULL") {
        "finish_sent"
    } else if t.starts_with("UPDATE") {
        "update_other"
    } else if select && has("PAYLOAD_BYTES") {
        "read_back"
    } else if select && has("FOR UPDATE") {
        "lock_free"
    } else if select && has("COUNT") && has("IX_NOTIFICATIONS_DUE") {
        "bench_progress"
    } else if select && has("DUE_AT <=") {
        "candidates"
    } else if t.starts_with("SELECT ROW_COUNT") {
        "row_count"
    } else if t.starts_with("DELETE") {
        "delete"
    } else if t.starts_with("INSERT") {
        "insert"
    } else if select {
        "select_other"
    } else {
        "other"
    }
}

async fn digests(store: &Store, schema: &str) -> anyhow::Result<BTreeMap<String, Digest>> {
    let rows = sqlx::query(
        "SELECT DIGEST_TEXT, CAST(COUNT_STAR AS UNSIGNED), CAST(SUM_ROWS_EXAMINED AS UNSIGNED), \
         CAST(SUM_ROWS_SENT AS UNSIGNED), CAST(SUM_ROWS_AFFECTED AS UNSIGNED), CAST(SUM_TIMER_WAIT AS UNSIGNED) \
         FROM performance_schema.events_statements_summary_by_digest WHERE SCHEMA_NAME = ?",
    )
    .bind(schema)
    .fetch_all(store.pool())
    .await?;
    let mut out: BTreeMap<String, Digest> = BTreeMap::new();
    for r in rows {
        let text: Option<String> = r.try_get(0)?;
        let d = out.entry(text.unwrap_or_default()).or_default();
        d.calls += r.try_get::<u64, _>(1)?;
        d.examined += r.try_get::<u64, _>(2)?;
        d.sent += r.try_get::<u64, _>(3)?;
        d.affected += r.try_get::<u64, _>(4)?;
        d.timer_ps += r.try_get::<u64, _>(5)?;
    }
    Ok(out)
}

/// The pid of the server whose pid file is `pid_file`, if it runs on this
/// machine (a remote server's pid file is not here, or names another
/// process).
fn server_pid(pid_file: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    matches!(comm.trim(), "mariadbd" | "mysqld").then_some(pid)
}

/// Every thread's CPU time and the context switches of the process.
/// Threads performance_schema does not name are `other`.
fn threads(pid: u32, names: &BTreeMap<u64, String>) -> Threads {
    let mut out = Threads::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in dir.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(cpu) = process_cpu(&task.path()) {
            let name = names
                .get(&tid)
                .cloned()
                .unwrap_or_else(|| "other".to_owned());
            out.cpu.insert(tid, (name, cpu));
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let field = |p: &str| {
                line.strip_prefix(p)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let Some(v) = field("voluntary_ctxt_switches:") {
                out.switches.0 += v;
            } else if let Some(v) = field("nonvoluntary_ctxt_switches:") {
                out.switches.1 += v;
            }
        }
    }
    out
}

/// Named `SHOW GLOBAL STATUS` counters now. Server-wide: they describe a
/// run only on a server nothing else uses.
pub async fn status_counters(
    store: &Store,
    names: &[&str],
) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let list = names
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(",");
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ({list})"
    ))
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(k, v)| (k, v.parse().unwrap_or(0.0)))
        .collect())
}

/// CPU time a Redis server has used so far (`INFO cpu`, user + system),
/// or `None` when it cannot be asked. Server-wide: a shared Redis counts
/// its other clients too.
pub async fn redis_cpu(url: &crate::secret::SecretUrl) -> Option<Duration> {
    let client = redis::Client::open(url.expose()).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(Duration::from_secs_f64(
        field("used_cpu_user")? + field("used_cpu_sys")?,
    ))
}

/// utime + stime of a process, from `/proc/<pid>/stat`.
pub fn process_cpu(proc_dir: &std::path::Path) -> Option<Duration> {
    let tick = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(Duration::from_secs_f64(ticks / tick))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_statements_are_named_by_shape() {
        assert_eq!(
            kind_of("UPDATE `notifications` SET `status` = ? , `claim_token` = ? , `claimed_by` = ? , `lease_until` = ..."),
            "claim"
        );
        assert_eq!(
            kind_of("UPDATE `notifications` SET `status` = ? , `finished_at` = UTC_TIMESTAMP ( ? ) , `lease_until` = NULL , `last_error` = NULL WHERE `id` IN (...)"),
            "finish_sent"
        );
        assert_eq!(
            kind_of("SET SESSION `innodb_lock_wait_timeout` = ? ; "),
            "claim_or_finish"
        );
        assert_eq!(
            kind_of("SELECT `id` , `user_id` , `channel` , CASE WHEN LENGTH ( `payload` ) > ? THEN NULL ELSE CAST ( `payload` AS CHAR ) END AS `payload` , CAST ( LENGTH ( `payload` ) AS SIGNED ) AS `payload_bytes`"),
            "read_back"
        );
        assert_eq!(
            kind_of("( SELECT `id` , `user_id` , `due_at` FROM `notifications` WHERE `region` = ? AND `status` = ? AND `due_at` <= UTC_TIMESTAMP ( ? ) ORDER BY `due_at` , `id` LIMIT ? ) UNION ALL ( ... )"),
            "candidates"
        );
    }
}
