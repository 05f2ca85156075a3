//! `herald status`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config::Settings;
use crate::gate::{BreakerBoard, BreakerState, Gate};
use crate::store::{self, Store};

pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&settings.database_url, 2).await?;
    let report = store::status::report(store.pool())
        .await
        .context("reading status (has `herald migrate` been run?)")?;
    // The breakers live in Redis: status must still work when it is down.
    let breakers = breakers(settings).await;
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["breakers"] = match &breakers {
            Ok(board) => breakers_json(board),
            Err(e) => serde_json::json!({ "unknown": e }),
        };
        println!("{value}");
    } else {
        for (status, n) in &report.counts {
            println!("{status:<10} {n}");
        }
        println!("due backlog {}", report.due_backlog);
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
