//! `herald bench`: a tiny S1 through the real command, worker processes and all.

use std::process::Stdio;

use crate::helpers::{herald, mysql_server, require_redis, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_s1_small_reports_a_clean_json_line() {
    require_redis().await;
    let out = herald(None)
        .env("HERALD_DATABASE_URL", format!("{}/herald", mysql_server()))
        .args([
            "bench", "s1", "--json", "--m", "2000", "--w", "2", "--c", "16",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running herald bench");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected, got:\n{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["system"], "herald");
    assert_eq!(v["scenario"], "s1");
    assert_eq!(v["M"], 2000);
    assert_eq!(v["W"], 2);
    assert_eq!(v["C"], 16);
    assert_eq!(v["L_ms"], 0);
    assert_eq!(v["dupes"], 0, "{stdout}");
    assert_eq!(v["lost"], 0, "{stdout}");
    let wall = v["wall_s"].as_f64().unwrap();
    let rate = v["jobs_per_s"].as_f64().unwrap();
    assert!(wall > 0.0 && rate > 0.0, "{stdout}");
    assert!((rate * wall - 2000.0).abs() < 2000.0 * 0.02, "{stdout}");
    let rss = v["peak_rss_mib"].as_f64().unwrap();
    assert!(rss > 1.0 && rss < 500.0, "{stdout}");
    // Timed as the peer harness times: the workers' start-up (until every
    // one answers /readyz) is reported apart, not in wall_s.
    let startup = v["startup_s"].as_f64().unwrap_or(-1.0);
    assert!(startup > 0.0 && startup < 60.0, "{stdout}");
    assert!(
        !stderr.contains("warning"),
        "the rows were enqueued in time:\n{stderr}"
    );
    assert!(
        stderr.contains("enqueueing 2000"),
        "progress on stderr:\n{stderr}"
    );
}

/// The file channel's simulated latency is reported as slept, next to
/// the ratio to the ideal at that latency: a sleep never ends early, so
/// that ratio is never below the plain one.
#[tokio::test]
async fn bench_s2_small_reports_the_latency_as_slept() {
    require_redis().await;
    let out = herald(None)
        .env("HERALD_DATABASE_URL", format!("{}/herald", mysql_server()))
        .args([
            "bench", "s2", "--json", "--m", "1000", "--w", "1", "--c", "10", "--l-ms", "5",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running herald bench");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (v["dupes"].as_u64(), v["lost"].as_u64()),
        (Some(0), Some(0))
    );
    let slept = v["latency_ms_mean"].as_f64().unwrap();
    assert!((5.0..10.0).contains(&slept), "{stdout}");
    let (plain, at_slept) = (
        v["ideal_ratio"].as_f64().unwrap(),
        v["ideal_ratio_at_latency_slept"].as_f64().unwrap(),
    );
    assert!(at_slept >= plain && at_slept <= 1.01, "{stdout}");
    // Where the slots went: the parts cover the whole drain, and most of
    // it was sending.
    let parts = ["sent", "simulation", "start", "tail", "between"].map(|k| {
        v["slot_time"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: {stdout}"))
    });
    assert!(parts.iter().all(|p| *p >= 0.0), "{stdout}");
    let sum: f64 = parts.iter().sum();
    assert!((sum - 1.0).abs() < 0.01, "parts add up to {sum}: {stdout}");
    assert!(parts[0] > 0.5, "{stdout}");
}

#[test]
fn bench_rejects_contradicting_scenarios() {
    let out = herald(None)
        .args(["bench", "s1", "--scenario", "s2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--scenario"));
}

/// The database-only replay runs Herald's own claim (with its read) and finish
/// statements: every row ends `sent`, once per stream count asked for.
#[test]
fn bench_ceiling_replays_the_protocol_without_workers() {
    let out = herald(None)
        .env("HERALD_DATABASE_URL", format!("{}/herald", mysql_server()))
        .args(["bench", "ceiling", "--json", "--m", "3000", "--w", "1,2"])
        .stdin(Stdio::null())
        .output()
        .expect("running herald bench ceiling");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (v, streams) in lines.iter().zip([1, 2]) {
        assert_eq!(v["scenario"], "ceiling");
        assert_eq!(v["streams"], streams);
        assert_eq!(v["M"], 3000);
        assert_eq!(v["lost"], 0, "{stdout}");
        for phase in ["candidates", "claim", "finish"] {
            let us = v[format!("{phase}_us_per_row")].as_f64().unwrap();
            assert!(us > 0.0, "{phase}: {stdout}");
        }
    }
}

/// Without `--json`, a run prints a short summary for people.
#[test]
fn bench_without_json_prints_a_summary_per_run() {
    let out = herald(None)
        .env("HERALD_DATABASE_URL", format!("{}/herald", mysql_server()))
        .args(["bench", "ceiling", "--m", "500", "--w", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("running herald bench ceiling");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(lines[0].starts_with("ceiling: M=500 W=1"), "{stdout}");
    assert!(lines[0].contains("dupes 0, lost 0"), "{stdout}");
    assert!(serde_json::from_str::<serde_json::Value>(lines[0]).is_err());
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `bench scale` in short mode: an empty-table run, a run on a table
/// already holding finished rows (compared with the empty one), and a
/// backlog drain timed per tenth; every row sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_scale_short_reports_each_table_size_and_the_backlog_tenths() {
    require_redis().await;
    let out = herald(None)
        .env("HERALD_DATABASE_URL", format!("{}/herald", mysql_server()))
        .args([
            "bench",
            "scale",
            "--json",
            "--db-counters",
            "--finished",
            "20000",
            "--m",
            "2000",
            "--backlog",
            "4000",
            "--rate",
            "300",
            "--seconds",
            "2",
            "--c",
            "16",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running herald bench scale");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 3, "{stdout}");
    for v in &lines {
        assert_eq!(v["scenario"], "scale", "{v}");
        assert_eq!(v["W"], 2);
        assert_eq!(v["dupes"], 0, "{v}");
        assert_eq!(v["lost"], 0, "{v}");
        assert!(v["jobs_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(
            v["db_per_1000_rows"]["status"]["Handler_read_key"]
                .as_f64()
                .unwrap()
                > 0.0
        );
    }
    let (empty, full, backlog) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(empty["phase"], "finished");
    assert_eq!(empty["finished_rows"], 0);
    assert_eq!(empty["M"], 2000);
    assert!(empty.get("vs_empty").is_none(), "{empty}");
    assert_eq!(full["finished_rows"], 20000);
    for key in ["lag_p50_ms", "lag_p99_ms", "candidates_us"] {
        assert!(full[key].as_f64().unwrap() > 0.0, "{key}: {full}");
    }
    // The candidate read walks the due rows only: about the 1,000 it
    // returns, however many finished rows the table holds.
    let reads = full["candidates_index_reads"].as_f64().unwrap();
    assert!((900.0..1100.0).contains(&reads), "{full}");
    for key in ["jobs_per_s", "lag_p99_ms", "candidates_us"] {
        assert!(
            full["vs_empty"][key].as_f64().unwrap() > 0.0,
            "{key}: {full}"
        );
    }
    assert_eq!(backlog["phase"], "backlog");
    assert_eq!(backlog["M"], 4000);
    let tenths = backlog["decile_jobs_per_s"].as_array().unwrap();
    assert_eq!(tenths.len(), 10, "{backlog}");
    assert!(tenths.iter().all(|r| r.as_f64().unwrap() >= 0.0));
    assert!(backlog["min_to_max_decile"].as_f64().is_some(), "{backlog}");
}

/// `bench soak` with `--duration` in seconds: per-window lag and worker
/// RSS, cleanup deleting behind the workers, nothing lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_soak_short_reports_every_window() {
    require_redis().await;
    let out = herald(None)
        .env("HERALD_DATABASE_URL", format!("{}/herald", mysql_server()))
        .args([
            "bench",
            "soak",
            "--json",
            "--duration",
            "6s",
            "--window-s",
            "2",
            "--rate",
            "300",
            "--c",
            "16",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running herald bench soak");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    let v = &lines[0];
    assert_eq!(v["scenario"], "soak");
    assert_eq!(v["M"], 1800, "{v}");
    assert_eq!(v["W"], 2);
    assert_eq!(v["dupes"], 0, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["duration_s"], 6);
    let windows = v["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 3, "{v}");
    let rows: u64 = windows.iter().map(|w| w["rows"].as_u64().unwrap()).sum();
    assert_eq!(rows, 1800, "{v}");
    for w in windows {
        assert!(w["lag_p99_ms"].as_f64().unwrap() > 0.0, "{w}");
        let rss = w["rss_mib"].as_array().unwrap();
        assert_eq!(rss.len(), 2, "{w}");
        assert!(rss.iter().all(|r| r.as_f64().unwrap() > 1.0), "{w}");
    }
    assert!(v["rss_growth_second_half_mib"].as_f64().is_some(), "{v}");
    assert!(v["lag_p99_ms_worst_window"].as_f64().unwrap() > 0.0, "{v}");
}

/// `--duration` belongs to the soak; elsewhere it is refused by name.
#[test]
fn bench_duration_is_for_the_soak_only() {
    let out = herald(None)
        .args(["bench", "s1", "--duration", "10s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--duration"));
}

/// `bench foreign-locks` in short mode: one alternating pair, the held
/// hundredth delivered after the other application lets go, nothing lost
/// or sent twice, and the pair's figures in the JSON line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_foreign_locks_short_reports_the_pair_and_loses_nothing() {
    require_redis().await;
    let out = herald(None)
        .env("HERALD_DATABASE_URL", format!("{}/herald", mysql_server()))
        .args([
            "bench",
            "foreign-locks",
            "--json",
            "--m",
            "3000",
            "--c",
            "16",
            "--pairs",
            "1",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running herald bench foreign-locks");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    let v = &lines[0];
    assert_eq!(v["scenario"], "foreign-locks");
    assert_eq!(v["W"], 2);
    assert_eq!(v["held_rows"], 30, "{stdout}");
    assert_eq!(v["dupes"], 0, "{stdout}");
    assert_eq!(v["lost"], 0, "{stdout}");
    assert_eq!(v["each_pair"].as_array().map(Vec::len), Some(1), "{stdout}");
    for key in ["free_jobs_per_s", "jobs_per_s", "ratio"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {stdout}");
    }
    assert!(v["released_drain_s"].as_f64().is_some(), "{stdout}");
}
