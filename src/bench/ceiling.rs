//! `herald bench ceiling`: what the database alone can do with the protocol.
//!
//! S1 on a small machine is bound by MariaDB, not by the workers: every
//! notification costs two fenced row updates (claim and finish). To tell
//! how far the worker is from that bound, this runs Herald's own statements
//! (the `store::claim` functions the poller and the finisher call) for M
//! rows over S connections, with no worker process, no Redis and no sends:
//! per batch of 1,000 the candidate read, the claim (which reads the
//! claimed rows in the same round trip), and the finish in chunks of 250 (about the size of the finisher's rounds in S1).
//! The candidate read is executed for its cost; each stream then claims its
//! own share of the ids, so streams never contend for rows, which is the
//! best case for the database.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::counters::Snapshot;
use super::report::{round, Report};
use super::workload::{self, BenchDb};
use super::Params;
use crate::config::Settings;
use crate::store::finish::{self, Finish};
use crate::store::Store;
use crate::store::{candidates, claim, ForeignLocks};

/// Rows per claim, as a worker with the default batch size claims them.
const BATCH: usize = 1000;
/// Rows per finish statement.
const FINISH_CHUNK: usize = 250;
const LEASE_US: i64 = 30_000_000;

/// Time spent in each kind of statement, summed over all streams.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    candidates: Duration,
    claim: Duration,
    finish: Duration,
}

impl Phases {
    fn add(&mut self, o: Phases) {
        self.candidates += o.candidates;
        self.claim += o.claim;
        self.finish += o.finish;
    }
}

pub async fn run(settings: &Settings, params: &Params, streams: usize) -> anyhow::Result<Report> {
    let label = format!("bench ceiling S={streams}");
    let db = BenchDb::create(&settings.database_url, params.keep).await?;
    let region = settings.regions[0].clone();
    eprintln!("{label}: enqueueing {} notifications", params.m);
    let send_at = chrono::Utc::now() - chrono::Duration::seconds(1);
    workload::enqueue(
        &db.store,
        0,
        params.m,
        params.users,
        "file",
        &region,
        send_at,
    )
    .await?;
    let ids = workload::ids_after(&db.store, 0).await?;
    workload::settle(&db.store).await?;

    // One single-connection pool per stream, dialled before the clock starts.
    let mut stores = Vec::with_capacity(streams);
    for _ in 0..streams {
        stores.push(Store::connect(&db.url, 1).await?);
    }
    let batches: Vec<Vec<u64>> = ids.chunks(BATCH).map(<[u64]>::to_vec).collect();
    let before = Snapshot::take(&db.store, &db.name).await?;
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for (k, store) in stores.into_iter().enumerate() {
        let mine: Vec<Vec<u64>> = batches.iter().skip(k).step_by(streams).cloned().collect();
        let regions = vec![region.clone()];
        tasks.push(tokio::spawn(async move {
            let r = stream(&store, &regions, &mine).await;
            store.close().await;
            r
        }));
    }
    let mut phases = Phases::default();
    for t in tasks {
        phases.add(t.await.context("a replay stream panicked")??);
    }
    let wall = t0.elapsed();
    let m = ids.len() as u64;
    let work = before.work_until(&Snapshot::take(&db.store, &db.name).await?, m);
    let not_sent = workload::not_sent(&db.store, 0).await?;
    db.finish().await?;

    let per_row_us = |d: Duration| round(d.as_secs_f64() * 1e6 / m.max(1) as f64, 2);
    let mut report = Report {
        system: "herald",
        scenario: "ceiling",
        m,
        w: streams,
        c: 0,
        l_ms: 0,
        wall_s: round(wall.as_secs_f64(), 3),
        jobs_per_s: round(m as f64 / wall.as_secs_f64(), 1),
        dupes: 0,
        lost: not_sent.len() as u64,
        peak_rss_mib: 0.0,
        ideal_ratio: None,
        extra: Default::default(),
    };
    report.set("streams", streams);
    report.set("candidates_us_per_row", per_row_us(phases.candidates));
    report.set("claim_us_per_row", per_row_us(phases.claim));
    report.set("finish_us_per_row", per_row_us(phases.finish));
    if let Some(cpu) = work.cpu_ms {
        report.set("db_cpu_ms_per_1000_rows", cpu);
    }
    if params.db_counters {
        report.set("db_per_1000_rows", serde_json::to_value(work)?);
    }
    eprintln!(
        "{label}: {m} rows in {:.3} s = {:.0}/s",
        wall.as_secs_f64(),
        m as f64 / wall.as_secs_f64()
    );
    Ok(report)
}

/// One connection's share: returns the time per statement kind. Whether
/// every row ended `sent` is checked afterwards, in the database.
async fn stream(store: &Store, regions: &[String], batches: &[Vec<u64>]) -> anyhow::Result<Phases> {
    let pool = store.pool();
    let mut p = Phases::default();
    // One per stream, as one per worker: it remembers the server's kind.
    let foreign = &ForeignLocks::default();
    for ids in batches {
        let token: [u8; 16] = rand::random();
        let t = Instant::now();
        candidates::candidates(pool, regions, ids.len(), None).await?;
        p.candidates += t.elapsed();
        let t = Instant::now();
        claim::claim_rows(pool, ids, regions, &token, "ceiling", LEASE_US, foreign).await?;
        p.claim += t.elapsed();
        let t = Instant::now();
        for chunk in ids.chunks(FINISH_CHUNK) {
            let rows: Vec<(u64, Finish)> = chunk.iter().map(|&id| (id, Finish::Sent)).collect();
            finish::finish(pool, &token, &rows).await?;
        }
        p.finish += t.elapsed();
    }
    Ok(p)
}
