//! `herald cancel IDS… | filters [--dry-run]`: pending rows are cancelled
//! at once; rows being sent get a cancel request, and the command waits
//! (`--wait-s`) to report each one's real outcome.

use std::process::ExitCode;
use std::time::Duration;

use super::table::render;
use crate::config::ops::CancelArgs;
use crate::config::Settings;
use crate::store::ops::cancel::{cancel, Wait};
use crate::store::ops::ChangeReport;

/// Rows listed in the table; the rest are counted (all are in `--json`).
const SHOWN: usize = 50;

pub async fn run(settings: &Settings, args: &CancelArgs) -> anyhow::Result<ExitCode> {
    let a = &args.change;
    let spec = a.filter.spec(&a.ids, a.limit, a.all);
    let sel = match super::selection(&spec, true) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let store = super::connect(settings).await?;
    let wait = Wait {
        max: Duration::from_secs(args.wait_s),
        ..Wait::default()
    };
    let report = cancel(store.pool(), &sel, a.dry_run, wait).await;
    store.close().await;
    let report = report?;
    let verb = if a.dry_run {
        "would cancel"
    } else {
        "cancelled"
    };
    print(&report, a.filter.json, verb)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints a retry or cancel report: JSON, or a summary line and a table.
pub(super) fn print(report: &ChangeReport, json: bool, verb: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    let mut by_outcome: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in &report.rows {
        *by_outcome.entry(c.outcome.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = by_outcome.iter().map(|(o, n)| format!("{o} {n}")).collect();
    println!(
        "{verb} {} of {} matched rows ({})",
        report.changed,
        report.matched,
        if parts.is_empty() {
            "nothing to do".to_owned()
        } else {
            parts.join(", ")
        }
    );
    if report.rows.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .take(SHOWN)
        .map(|c| {
            vec![
                c.id.to_string(),
                c.outcome.clone(),
                c.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!("{}", render(&["id", "outcome", "detail"], &rows));
    if report.rows.len() > SHOWN {
        println!(
            "… and {} more rows (--json lists all)",
            report.rows.len() - SHOWN
        );
    }
    Ok(())
}
