//! `herald list [filters] [--limit N] [--cursor C]`: one page of rows,
//! newest first unless `--oldest-first`.

use std::process::ExitCode;

use super::table::{render, time};
use crate::config::ops::ListArgs;
use crate::config::Settings;
use crate::store::ops::list::list;

pub async fn run(settings: &Settings, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let spec = args.filter.spec(&[], Some(args.limit), true);
    let sel = match super::selection(&spec, false) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let store = super::connect(settings).await?;
    let page = list(store.pool(), &sel, args.cursor).await;
    store.close().await;
    let page = page?;
    if args.filter.json {
        println!("{}", serde_json::to_string(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = page
        .rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.status.clone(),
                r.channel.clone(),
                r.user_id.to_string(),
                r.attempts.to_string(),
                time(r.send_at),
                time(r.finished_at),
                r.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &[
                "id",
                "status",
                "channel",
                "user",
                "attempts",
                "send_at",
                "finished_at",
                "last_error"
            ],
            &rows
        )
    );
    match page.next_cursor {
        Some(c) => println!("{} rows; more with --cursor {c}", page.rows.len()),
        None => println!("{} rows", page.rows.len()),
    }
    Ok(ExitCode::SUCCESS)
}
