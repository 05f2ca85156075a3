//! Intake: JSON lines in, rows in the table out. Shared by `herald enqueue`
//! and anything else that takes notifications as lines of JSON; a bad line
//! is reported with its number and never stops the good ones around it.

use std::io::{BufRead, Write};

use anyhow::Context;
use chrono::Utc;

use crate::notification::{Limits, NewNotification};
use crate::store::enqueue::{enqueue_batch, Inserted, INSERT_CHUNK};
use crate::store::Store;

/// Summary of an enqueue run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EnqueueSummary {
    pub inserted: usize,
    pub duplicates: usize,
    pub rejected: usize,
}

/// Reads JSON lines, inserts the valid ones in batches, and reports each bad
/// line on `errors` as `line N: <field>: <reason>`. A bad line never stops
/// the good ones around it.
pub async fn enqueue_lines(
    store: &Store,
    input: impl BufRead,
    limits: &Limits,
    errors: &mut impl Write,
) -> anyhow::Result<EnqueueSummary> {
    let mut summary = EnqueueSummary::default();
    let mut pending: Vec<(usize, NewNotification)> = Vec::with_capacity(INSERT_CHUNK);
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                // Invalid UTF-8 on one line; keep reading the rest.
                writeln!(errors, "line {number}: (line): cannot read: {e}")?;
                summary.rejected += 1;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match NewNotification::from_json_line(&line, limits, Utc::now()) {
            Ok(n) => pending.push((number, n)),
            Err(e) => {
                writeln!(errors, "line {number}: {e}")?;
                summary.rejected += 1;
            }
        }
        if pending.len() >= INSERT_CHUNK {
            flush(store, &mut pending, &mut summary, errors).await?;
        }
    }
    flush(store, &mut pending, &mut summary, errors).await?;
    Ok(summary)
}

async fn flush(
    store: &Store,
    pending: &mut Vec<(usize, NewNotification)>,
    summary: &mut EnqueueSummary,
    errors: &mut impl Write,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let items: Vec<NewNotification> = pending.iter().map(|(_, n)| n.clone()).collect();
    let mut conn = store
        .pool()
        .acquire()
        .await
        .context("connecting to MySQL")?;
    let results = enqueue_batch(&mut conn, &items)
        .await
        .context("inserting notifications (has `herald migrate` been run?)")?;
    for ((number, n), result) in pending.iter().zip(results) {
        match result {
            Inserted::New => summary.inserted += 1,
            Inserted::Duplicate { existing_id } => {
                summary.duplicates += 1;
                let key = n.dedupe_key.as_deref().unwrap_or_default();
                match existing_id {
                    Some(id) => writeln!(
                        errors,
                        "line {number}: duplicate dedupe_key {key:?} (already enqueued as id {id})"
                    )?,
                    None => writeln!(
                        errors,
                        "line {number}: duplicate dedupe_key {key:?} (repeated in this input)"
                    )?,
                }
            }
        }
    }
    pending.clear();
    Ok(())
}
