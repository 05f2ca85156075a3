//! `herald retry IDS… | filters [--dry-run]`: failed, expired, cancelled
//! and backing-off rows become due now with a fresh set of attempts.

use std::process::ExitCode;

use crate::config::ops::ChangeArgs;
use crate::config::Settings;
use crate::store::ops::retry::retry;

pub async fn run(settings: &Settings, args: &ChangeArgs) -> anyhow::Result<ExitCode> {
    let spec = args.filter.spec(&args.ids, args.limit, args.all);
    let sel = match super::selection(&spec, true) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let store = super::connect(settings).await?;
    let report = retry(store.pool(), &sel, args.dry_run).await;
    store.close().await;
    let report = report?;
    let verb = if args.dry_run {
        "would retry"
    } else {
        "retried"
    };
    super::cancel::print(&report, args.filter.json, verb)?;
    Ok(ExitCode::SUCCESS)
}
