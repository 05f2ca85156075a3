//! `herald status`.

use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::config::Settings;
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
    if json {
        let both = Report {
            status: report,
            retry,
        };
        println!("{}", serde_json::to_string(&both)?);
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
    Ok(ExitCode::SUCCESS)
}
