//! S1, S2 and webhook (and both halves of cleanup): enqueue M, start W
//! workers, time until all M rows are finished, stop, check.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;

use super::counters::{self, Snapshot};
use super::delivered::{read_lines, tally, LineCounter};
use super::fleet::{Fleet, FleetEnv};
use super::receiver::Receiver;
use super::report::{round, Report};
use super::slots;
use super::workload::{self, BenchDb};
use super::BenchScenario;
use super::Params;
use crate::config::Settings;
use crate::store::Store;

/// How long stopped workers get to drain and exit.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// How long a fleet may take to start before the run fails.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Every idle worker polls at least once a poll interval: rows ready this
/// long before they fall due have been seen by all of them. The workers
/// inherit this process's environment, so its `HERALD_POLL_INTERVAL_MS`
/// (500 ms unless set) is theirs.
fn min_margin() -> Duration {
    let poll_ms = std::env::var("HERALD_POLL_INTERVAL_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(500);
    Duration::from_millis(poll_ms.saturating_add(100))
}

/// How far ahead the rows of a timed drain are due: the enqueue and the
/// flush (measured here at well under 20 µs a row), then [`min_margin`]
/// with room to spare.
fn release_lead(m: u64) -> chrono::Duration {
    let margin = min_margin().as_millis() as i64;
    chrono::Duration::milliseconds(margin + 400 + (m as i64).saturating_mul(40) / 1_000)
}

/// Enqueues the drain's `m` rows due at `send_at` and flushes the table;
/// returns their ids.
async fn enqueue(
    db: &BenchDb,
    params: &Params,
    label: &str,
    channel: &str,
    region: &str,
    send_at: chrono::DateTime<Utc>,
    old_max: u64,
) -> anyhow::Result<Vec<u64>> {
    eprintln!(
        "{label}: enqueueing {} notifications for {} users",
        params.m, params.users
    );
    let started = Instant::now();
    workload::enqueue(
        &db.store,
        0,
        params.m,
        params.users,
        channel,
        region,
        send_at,
    )
    .await?;
    let expected = workload::ids_after(&db.store, old_max).await?;
    workload::settle(&db.store).await?;
    eprintln!(
        "{label}: enqueued {} in {:.2} s",
        expected.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(expected)
}

/// Additions of the cleanup scenario to a plain drain.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Old `sent` rows inserted (not timed) before the M notifications.
    pub old_rows: u64,
    /// Cleanup settings for the workers; empty = cleanup off.
    pub cleanup: Vec<(&'static str, String)>,
    /// Keep the workers running this long after the drain.
    pub tail: Duration,
    /// Enqueue the rows due before the workers start and time from their
    /// start, start-up included. The cleanup scenario needs it: its
    /// workers would otherwise delete old rows while the queue is empty
    /// before the drain, which is not the contest it measures.
    pub from_start: bool,
}

/// A drain's report plus what the cleanup scenario needs.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    /// Old rows left when the M were finished, and after the tail.
    pub old_left_at_drain: u64,
    pub old_left_at_end: u64,
}

/// A scratch directory for one run, removed on drop.
#[derive(Debug)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new() -> anyhow::Result<RunDir> {
        let dir = std::env::temp_dir().join(format!("herald-bench-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(RunDir(dir))
    }

    /// Leaves the directory in place (`--keep`), to read its deliveries.
    pub fn keep(mut self) {
        eprintln!("bench: run directory {} (kept)", self.0.display());
        self.0 = PathBuf::new();
    }

    /// An empty file the file transport appends to.
    pub fn output(&self) -> anyhow::Result<PathBuf> {
        let path = self.0.join("delivered.jsonl");
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn key_prefix() -> String {
    format!("hb{:010x}:", rand::random::<u64>() & 0xff_ffff_ffff)
}

pub async fn run(
    settings: &Settings,
    params: &Params,
    w: usize,
    extras: &Extras,
) -> anyhow::Result<Outcome> {
    let webhook = params.scenario == BenchScenario::Webhook;
    let label = format!("bench {} W={w}", params.scenario.name());
    let db = BenchDb::create(&settings.database_url, params.keep).await?;
    let region = settings.regions[0].as_str();
    let old_max = if extras.old_rows > 0 {
        eprintln!("{label}: inserting {} old sent rows", extras.old_rows);
        workload::insert_old_sent(&db.store, extras.old_rows, region).await?
    } else {
        0
    };
    let dir = RunDir::new()?;
    let output = dir.output()?;
    let receiver = if webhook {
        Some(Receiver::start(Duration::from_millis(params.l_ms)).await?)
    } else {
        None
    };
    let env = FleetEnv {
        exe: params.worker_exe.clone(),
        database_url: db.url.expose().to_owned(),
        key_prefix: key_prefix(),
        concurrency: params.c,
        file_path: Some(output.clone()),
        file_latency_ms: if webhook { 0 } else { params.l_ms },
        webhook_url: receiver.as_ref().map(Receiver::url),
        cleanup: extras.cleanup.clone(),
        extra: Vec::new(),
    };
    let channel = if webhook { "webhook" } else { "file" };
    let (mut fleet, startup, expected, t0) = if extras.from_start {
        // A second in the past, so a database clock slightly behind ours
        // still sees every row as due.
        let send_at = Utc::now() - chrono::Duration::seconds(1);
        let expected = enqueue(&db, params, &label, channel, region, send_at, old_max).await?;
        eprintln!("{label}: starting workers");
        let t0 = Instant::now();
        let fleet = Fleet::start(settings, w, &env)?;
        (fleet, None, expected, t0)
    } else {
        // As the peer harness times: from the moment every worker is ready
        // (its `/readyz` answers) and the rows fall due, to the last
        // finish. The rows are enqueued while the workers idle, all due at
        // one instant far enough ahead that each worker's idle poll has
        // seen them and waits for it (it wakes when the next row falls due).
        eprintln!("{label}: starting workers");
        let (fleet, startup) = Fleet::start_ready(settings, w, &env, READY_WITHIN).await?;
        let due = Utc::now() + release_lead(params.m);
        let expected = enqueue(&db, params, &label, channel, region, due, old_max).await?;
        let margin = (due - Utc::now()).to_std().unwrap_or_default();
        if margin < min_margin() {
            eprintln!(
                "{label}: warning: the rows were ready only {margin:?} before they fell due; \
                 a worker may have polled late and the timing includes it"
            );
        }
        (fleet, Some(startup), expected, Instant::now() + margin)
    };
    let mut lines = LineCounter::open(&output)?;
    let counted = match params.db_counters {
        true => Some(Snapshot::take(&db.store, &db.name).await?),
        false => None,
    };
    let redis_before = match (params.db_counters, settings.redis_urls.first()) {
        (true, Some(url)) => counters::redis_cpu(url).await,
        _ => None,
    };
    let cpu_before = fleet.cpu();
    let m = expected.len() as u64;
    let (wall, first) = wait_finished(
        &db.store,
        region,
        &mut fleet,
        &label,
        m,
        old_max,
        t0,
        params.timeout,
        || match &receiver {
            Some(r) => r.count(),
            None => lines.lines(),
        },
    )
    .await?;
    let work = match &counted {
        Some(before) => Some(before.work_until(&Snapshot::take(&db.store, &db.name).await?, m)),
        None => None,
    };
    // The rest of the machine's work per row, next to the database's.
    let per_1000 = |d: Duration| round(d.as_secs_f64() * 1e6 / m.max(1) as f64, 1);
    let workers_cpu = per_1000(fleet.cpu().saturating_sub(cpu_before));
    let redis_cpu = match (redis_before, settings.redis_urls.first()) {
        (Some(a), Some(url)) => counters::redis_cpu(url)
            .await
            .map(|b| per_1000(b.saturating_sub(a))),
        _ => None,
    };
    let peak = fleet.peak_rss_mib();
    let (old_left_at_drain, old_left_at_end) = if extras.old_rows > 0 {
        let at_drain = workload::count_up_to(&db.store, old_max).await?;
        tokio::time::sleep(extras.tail).await;
        (at_drain, workload::count_up_to(&db.store, old_max).await?)
    } else {
        (0, 0)
    };
    fleet.stop(STOP_GRACE).await?;

    let lines = match &receiver {
        Some(_) => Vec::new(),
        None => read_lines(&output)?,
    };
    let slept_us: Vec<u64> = lines.iter().filter_map(|l| l.latency_us).collect();
    let delivered: Vec<u64> = match &receiver {
        Some(r) => r.ids(),
        None => lines.iter().map(|l| l.id).collect(),
    };
    let slot_time = match slept_us.is_empty() {
        true => None,
        false => {
            let owner = workload::claimed_by(&db.store, old_max).await?;
            slots::slot_time(&lines, &owner, w, params.c, params.l_ms)
        }
    };
    let not_sent = workload::not_sent(&db.store, old_max).await?;
    let (dupes, lost) = tally(&expected, delivered, &not_sent);
    db.finish().await?;
    if params.keep {
        dir.keep();
    }

    let wall_s = wall.as_secs_f64();
    let jobs_per_s = m as f64 / wall_s;
    let ideal_ratio = (params.l_ms > 0).then(|| {
        round(
            jobs_per_s / (w as f64 * params.c as f64 * 1000.0 / params.l_ms as f64),
            3,
        )
    });
    let mut report = Report {
        system: "herald",
        scenario: params.scenario.name(),
        m,
        w,
        c: params.c,
        l_ms: params.l_ms,
        wall_s: round(wall_s, 3),
        jobs_per_s: round(jobs_per_s, 1),
        dupes,
        lost,
        peak_rss_mib: round(peak, 1),
        ideal_ratio,
        extra: Default::default(),
    };
    if let Some(f) = first {
        report.set("first_delivery_s", round(f.as_secs_f64(), 3));
    }
    if let Some(s) = startup {
        report.set("startup_s", round(s.as_secs_f64(), 3));
    }
    // The simulated receiver's own overshoot (a sleeper woken late on a
    // loaded machine) counts against `ideal_ratio`; this is the ratio to
    // the ideal at the latency the sends actually took.
    if !slept_us.is_empty() {
        let mean_ms = slept_us.iter().sum::<u64>() as f64 / slept_us.len() as f64 / 1000.0;
        report.set("latency_ms_mean", round(mean_ms, 3));
        report.set(
            "ideal_ratio_at_latency_slept",
            round(
                jobs_per_s / (w as f64 * params.c as f64 * 1000.0 / mean_ms),
                3,
            ),
        );
    }
    if let Some(t) = slot_time {
        report.set("slot_time", serde_json::to_value(t)?);
    }
    if let Some(work) = work {
        report.set("db_per_1000_rows", serde_json::to_value(work)?);
        report.set("workers_cpu_ms_per_1000_rows", workers_cpu);
        if let Some(r) = redis_cpu {
            report.set("redis_cpu_ms_per_1000_rows", r);
        }
    }
    eprintln!(
        "{label}: {m} in {wall_s:.3} s = {jobs_per_s:.0}/s, dupes {dupes}, lost {lost}, peak RSS {peak:.1} MiB"
    );
    Ok(Outcome {
        report,
        old_left_at_drain,
        old_left_at_end,
    })
}

/// Polls until `m` rows above `after_id` are finished; returns the time since
/// `t0`, and when the first delivery was seen (worker start-up included).
/// `delivered()` (cheap: lines in the output file, or the receiver's count)
/// drives progress and decides when to ask the database every 2 ms instead
/// of every 500 ms, so the polling barely loads the database.
#[allow(clippy::too_many_arguments)]
pub async fn wait_finished(
    store: &Store,
    region: &str,
    fleet: &mut Fleet,
    label: &str,
    m: u64,
    after_id: u64,
    t0: Instant,
    timeout: Duration,
    mut delivered: impl FnMut() -> u64,
) -> anyhow::Result<(Duration, Option<Duration>)> {
    let mut first: Option<Duration> = None;
    let mut last_db = Instant::now();
    let mut last_report = (Instant::now(), 0u64);
    let mut d = 0;
    loop {
        tokio::time::sleep(progress_pause(d, m)).await;
        fleet.check_alive()?;
        d = delivered();
        if d > 0 && first.is_none() {
            first = Some(t0.elapsed());
        }
        if d >= m || last_db.elapsed() >= Duration::from_millis(500) {
            let done = !workload::any_unfinished(store, region, after_id).await?;
            last_db = Instant::now();
            if done {
                return Ok((t0.elapsed(), first));
            }
            if t0.elapsed() > timeout {
                let finished =
                    m.saturating_sub(workload::unfinished_count(store, region, after_id).await?);
                bail!("{label}: only {finished} of {m} finished after {timeout:?} ({d} delivered)");
            }
        }
        let since = last_report.0.elapsed();
        if since >= Duration::from_secs(1) {
            let rate = (d - last_report.1.min(d)) as f64 / since.as_secs_f64();
            eprintln!(
                "{label}: delivered {d}/{m} ({rate:.0}/s), {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            last_report = (Instant::now(), d);
        }
    }
}

/// How long the progress loop sleeps with `delivered` of `m` rows seen.
///
/// Near the end it looks every 2 ms, so the wall time is not rounded up by
/// the poll: a drain ends between two looks, and with 20 ms between them
/// S2 runs were timed 2–20 ms past their last finish (13 ms on average
/// in five runs, 0.6 % of a 2 s drain). Reading the new lines of the
/// output file is cheap; before the last 5 % there is nothing to round,
/// so the loop stays quiet.
fn progress_pause(delivered: u64, m: u64) -> Duration {
    match delivered.saturating_mul(20) >= m.saturating_mul(19) {
        true => Duration::from_millis(2),
        false => Duration::from_millis(20),
    }
}

/// Sorted lags in ms of the delivery lines (written at minus due at).
pub fn lags_ms(output: &Path) -> anyhow::Result<(Vec<u64>, Vec<f64>)> {
    let lines = read_lines(output)?;
    let mut lags: Vec<f64> = lines
        .iter()
        .map(|l| (l.at_us as f64 - l.send_at.timestamp_micros() as f64) / 1000.0)
        .collect();
    lags.sort_by(f64::total_cmp);
    Ok((lines.into_iter().map(|l| l.id).collect(), lags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_loop_looks_often_only_near_the_end() {
        // A 2 s drain must not end up to 20 ms after its last finish.
        assert_eq!(progress_pause(19_000, 20_000), Duration::from_millis(2));
        assert_eq!(progress_pause(20_000, 20_000), Duration::from_millis(2));
        assert_eq!(progress_pause(18_999, 20_000), Duration::from_millis(20));
        assert_eq!(progress_pause(0, 20_000), Duration::from_millis(20));
        // Nothing to wait for: look often.
        assert_eq!(progress_pause(0, 0), Duration::from_millis(2));
    }
}
