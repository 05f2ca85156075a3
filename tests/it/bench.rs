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
    assert!(
        stderr.contains("enqueueing 2000"),
        "progress on stderr:\n{stderr}"
    );
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

/// The database-only replay runs Herald's own claim, read-back and finish
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
        for phase in ["candidates", "claim", "fetch", "finish"] {
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
