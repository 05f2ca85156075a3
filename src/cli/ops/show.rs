//! `herald show ID | --dedupe-key K`: one row and its attempt history.

use std::process::ExitCode;

use super::table::{render, time};
use crate::config::ops::ShowArgs;
use crate::config::Settings;
use crate::store::ops::show::{show, Key};

pub async fn run(settings: &Settings, args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let key = match (&args.id, &args.dedupe_key) {
        (Some(id), _) => Key::Id(*id),
        (None, Some(k)) => Key::DedupeKey(k.clone()),
        (None, None) => unreachable!("clap requires one"),
    };
    let store = super::connect(settings).await?;
    let found = show(store.pool(), &key).await;
    store.close().await;
    let Some(d) = found? else {
        eprintln!("herald: no notification {key:?}");
        return Ok(ExitCode::FAILURE);
    };
    if args.json {
        println!("{}", serde_json::to_string(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    let r = &d.row;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let fields: Vec<(&str, String)> = vec![
        ("id", r.id.to_string()),
        ("status", r.status.clone()),
        ("user_id", r.user_id.to_string()),
        ("channel", r.channel.clone()),
        ("region", r.region.clone()),
        ("dedupe_key", opt(r.dedupe_key.clone())),
        ("attempts", r.attempts.to_string()),
        ("send_at", time(r.send_at)),
        ("due_at", time(r.due_at)),
        ("expires_at", time(d.expires_at)),
        ("finished_at", time(r.finished_at)),
        ("created_at", time(d.created_at)),
        ("claimed_by", opt(d.claimed_by.clone())),
        ("lease_until", time(d.lease_until)),
        ("cancel_requested", time(r.cancel_requested_at)),
        (
            "last_http_status",
            opt(d.last_http_status.map(|s| s.to_string())),
        ),
        ("last_error", opt(r.last_error.clone())),
        ("payload", d.payload.clone()),
    ];
    for (k, v) in fields {
        let v: String = v
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        println!("{k:<17} {v}");
    }
    println!();
    if d.attempt_history.is_empty() {
        println!("no attempts recorded");
    } else {
        let rows: Vec<Vec<String>> = d
            .attempt_history
            .iter()
            .map(|a| {
                vec![
                    a.attempt.to_string(),
                    time(a.started_at),
                    format!("{} ms", a.duration_ms),
                    a.outcome.clone(),
                    opt(a.http_status.map(|s| s.to_string())),
                    a.worker_id.clone(),
                    opt(a.error.clone()),
                ]
            })
            .collect();
        print!(
            "{}",
            render(
                &[
                    "attempt",
                    "started_at",
                    "took",
                    "outcome",
                    "http",
                    "worker",
                    "error"
                ],
                &rows
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}
