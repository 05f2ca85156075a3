//! `herald status`.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::store::{self, Store};

pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&settings.database_url, 2).await?;
    let report = store::status::report(store.pool())
        .await
        .context("reading status (has `herald migrate` been run?)")?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
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
    }
    Ok(ExitCode::SUCCESS)
}
