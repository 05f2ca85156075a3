//! `herald status`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::config::Settings;
use crate::gate::{BreakerBoard, BreakerState, Gate};
use crate::store::retrying::{self, RetryReport};
use crate::store::status::StatusReport;
use crate::store::{self, Store};

/// The JSON shape: the counts, plus what waits for a retry and why.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    status: StatusReport,
    #[serde(flatten)]
    retry: RetryReport,
}

pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&settings.database_url, 2).await?;
    let hint = "reading status (has `herald migrate` been run?)";
    let report = store::status::report(store.pool()).await.context(hint)?;
    let regions = store::status::regions(store.pool()).await.context(hint)?;
    let retry = retrying::report(store.pool(), &regions)
        .await
        .context(hint)?;
    // The breakers live in Redis: status must still work when it is down.
    let breakers = breakers(settings).await;
    if json {
        let both = Report {
            status: report,
            retry,
        };
        let mut value = serde_json::to_value(&both)?;
        value["breakers"] = match &breakers {
            Ok(board) => breakers_json(board),
            Err(e) => serde_json::json!({ "unknown": e }),
        };
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    for (status, n) in &report.counts {
        println!("{status:<10} {n}");
    }
    println!("due backlog {}", report.due_backlog);
    let bound = if retry.retry_waiting_is_lower_bound {
        format!(
            " (at least: counted among the {} pending rows due soonest)",
            retrying::RETRY_WINDOW
        )
    } else {
        String::new()
    };
    println!("retry waiting {}{bound}", retry.retry_waiting);
    match report.oldest_due_lag_s {
        Some(lag) => println!("oldest due lag {lag:.3}s"),
        None => println!("oldest due lag -"),
    }
    if report.invalid_due_at > 0 {
        println!(
            "invalid due_at {} (zero or invalid dates, counted as due)",
            report.invalid_due_at
        );
    }
    if !retry.latest_errors.is_empty() {
        println!("latest errors by channel:");
        for e in &retry.latest_errors {
            let what = match e.status.as_str() {
                "pending" => "waiting for a retry",
                _ => "failed",
            };
            println!(
                "  {} ({} {what}) {}s ago: {}",
                e.channel, e.rows, e.age_s, e.error
            );
        }
    }
    match &breakers {
        Ok(board) if board.channels.is_empty() => {
            println!("breakers   all closed, no channel failing")
        }
        Ok(board) => {
            for (channel, b) in &board.channels {
                let state = match b.state {
                    BreakerState::Open(left) => {
                        format!("open (probe in {:.1}s)", left.as_secs_f64())
                    }
                    s => s.name().to_owned(),
                };
                println!(
                    "breaker    {channel}: {state}, {} consecutive failures",
                    b.failures
                );
            }
        }
        Err(e) => println!("breakers   unknown ({e})"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The fleet's breaker board, or why it could not be read.
async fn breakers(settings: &Settings) -> Result<BreakerBoard, String> {
    let redlock = crate::app::redlock(settings)
        .await
        .map_err(|e| format!("{e:#}"))?;
    redlock.warm_up(Duration::from_secs(1)).await;
    match tokio::time::timeout(Duration::from_secs(3), Gate::new(redlock).board()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("Redis did not answer within 3 s".into()),
    }
}

fn breakers_json(board: &BreakerBoard) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (channel, b) in &board.channels {
        let mut v = serde_json::json!({
            "state": b.state.name(),
            "failures": b.failures,
        });
        if let BreakerState::Open(left) = b.state {
            v["probe_in_s"] = serde_json::json!((left.as_secs_f64() * 1000.0).round() / 1000.0);
        }
        out.insert(channel.clone(), v);
    }
    serde_json::Value::Object(out)
}
