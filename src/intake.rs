//! Intake: JSON lines in, rows in the table out. Shared by `herald enqueue`
//! and anything else that takes notifications as lines of JSON; a bad line
//! is reported with its number and never stops the good ones around it.
//!
//! Rerun safety: lines go in as chunks, each chunk in its own transaction
//! and in input order, so when a run stops early (the database went away,
//! the input could not be read) every line up to
//! [`EnqueueSummary::done_through`] is settled (inserted, a duplicate, or
//! reported as rejected) and nothing after it was written. Rerunning with
//! `--skip-lines N` then inserts each line exactly once, dedupe key or not.

use std::io::{BufRead, ErrorKind, Write};

use anyhow::Context;
use chrono::Utc;
use sqlx::{Connection, MySqlConnection};

use crate::notification::{Limits, NewNotification};
use crate::store::enqueue::{
    enqueue_tolerant, error_number, row_bytes, statement_budget, Inserted, RowOutcome, INSERT_CHUNK,
};
use crate::store::Store;

/// Room on a line for everything but the payload (user id, channel,
/// region, times, dedupe key, field names, spacing).
const LINE_ROOM: usize = 64 * 1024;

/// Attempts of one chunk that hit a lock wait or deadlock (the transaction
/// is rolled back, so trying again is safe).
const CHUNK_ATTEMPTS: u32 = 3;

/// Summary of an enqueue run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EnqueueSummary {
    pub inserted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    /// Lines 1..=done_through are settled: inserted (committed), duplicates,
    /// rejected or blank. A rerun after `stopped` may skip exactly these.
    pub done_through: usize,
    /// Why the run ended before the end of the input, if it did. Lines after
    /// `done_through` were not written (but see `uncertain`).
    pub stopped: Option<String>,
    /// Lines whose chunk's COMMIT was cut off: they may or may not be in.
    pub uncertain: Option<(usize, usize)>,
}

/// The longest line accepted for a payload limit: every payload byte could
/// be written as a six-byte `\u` escape, plus room for the other fields.
/// Longer lines are rejected unread, so memory stays bounded whatever the
/// input (`/dev/zero`, a file without newlines).
pub fn max_line_bytes(limits: &Limits) -> usize {
    limits
        .max_payload_bytes
        .saturating_mul(6)
        .saturating_add(LINE_ROOM)
}

/// Reads JSON lines, inserts the valid ones in chunks, and reports each bad
/// line on `errors` as `line N: <field>: <reason>`. A bad line never stops
/// the good ones around it; an unreadable input or a database failure ends
/// the run with [`EnqueueSummary::stopped`] set (still `Ok`). The first
/// `skip_lines` lines are read but not processed (resuming a stopped run).
pub async fn enqueue_lines(
    store: &Store,
    input: impl BufRead,
    limits: &Limits,
    skip_lines: usize,
    errors: &mut impl Write,
) -> anyhow::Result<EnqueueSummary> {
    let mut conn = store
        .pool()
        .acquire()
        .await
        .context("connecting to MySQL")?;
    let (budget, packet) = statement_budget(&mut conn)
        .await
        .context("reading @@max_allowed_packet")?;
    let mut run = Run {
        conn: &mut conn,
        budget,
        summary: EnqueueSummary {
            done_through: skip_lines,
            ..EnqueueSummary::default()
        },
        pending: Vec::with_capacity(INSERT_CHUNK),
        pending_bytes: 0,
        handled: skip_lines,
    };
    let mut lines = LineReader::new(input, max_line_bytes(limits));
    let mut number = 0;
    loop {
        let line = match lines.next_line() {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                let msg = format!("line {}: cannot read the input: {e}", number + 1);
                return run.finish(errors, Some(msg)).await;
            }
        };
        number += 1;
        if number <= skip_lines {
            continue;
        }
        let text = match line {
            Line::Text(t) => t,
            Line::TooLong { bytes } => {
                writeln!(
                    errors,
                    "line {number}: (line): {bytes} bytes is longer than the limit of {} bytes \
                     (6 x HERALD_MAX_PAYLOAD_BYTES + 64 KiB); skipped unread",
                    lines.max
                )?;
                run.summary.rejected += 1;
                run.settle(number);
                continue;
            }
            Line::BadUtf8(e) => {
                writeln!(errors, "line {number}: (line): cannot read: {e}")?;
                run.summary.rejected += 1;
                run.settle(number);
                continue;
            }
            Line::Nul => {
                let msg = format!(
                    "line {number}: contains a NUL byte, which JSON text never does: \
                     the input is not JSON lines (a binary file?)"
                );
                return run.finish(errors, Some(msg)).await;
            }
        };
        if text.trim().is_empty() {
            run.settle(number);
            continue;
        }
        match NewNotification::from_json_line(&text, limits, Utc::now()) {
            Ok(n) => {
                let bytes = row_bytes(&n);
                if bytes > packet / 2 {
                    writeln!(
                        errors,
                        "line {number}: payload: {} bytes do not fit the server's \
                         max_allowed_packet of {packet} bytes",
                        n.payload.len()
                    )?;
                    run.summary.rejected += 1;
                    run.settle(number);
                    continue;
                }
                if !run.pending.is_empty() && run.pending_bytes + bytes > run.budget {
                    if let Some(msg) = run.flush(errors).await? {
                        return Ok(run.stop(msg));
                    }
                }
                run.pending_bytes += bytes;
                run.pending.push((number, n));
                run.handled = number;
            }
            Err(e) => {
                writeln!(errors, "line {number}: {e}")?;
                run.summary.rejected += 1;
                run.settle(number);
            }
        }
        if run.pending.len() >= INSERT_CHUNK {
            if let Some(msg) = run.flush(errors).await? {
                return Ok(run.stop(msg));
            }
        }
    }
    run.finish(errors, None).await
}

/// What an operator should do after a run that stopped early.
pub fn resume_hint(summary: &EnqueueSummary) -> String {
    let n = summary.done_through;
    let mut hint = if n == 0 {
        match summary.uncertain {
            None => "no line was inserted".to_owned(),
            Some(_) => "no earlier line was inserted".to_owned(),
        }
    } else {
        format!(
            "lines 1..{n} are settled (inserted, duplicates or reported); once the cause \
             is fixed, rerun with --skip-lines {n} to go on without inserting any line twice"
        )
    };
    if let Some((a, b)) = summary.uncertain {
        hint.push_str(&format!(
            "; lines {a}..{b} may or may not be in: lines with a dedupe_key are safe to \
             repeat, check the others in the table before rerunning"
        ));
    }
    hint
}

/// The state of one enqueue run.
struct Run<'a> {
    conn: &'a mut MySqlConnection,
    budget: usize,
    summary: EnqueueSummary,
    pending: Vec<(usize, NewNotification)>,
    pending_bytes: usize,
    /// The last line whose handling is complete but for a pending insert.
    handled: usize,
}

impl Run<'_> {
    /// Line `number` needs nothing more; with no rows waiting, every line up
    /// to it is settled.
    fn settle(&mut self, number: usize) {
        self.handled = number;
        if self.pending.is_empty() {
            self.summary.done_through = number;
        }
    }

    /// Ends the run after a chunk could not be written: its lines are not
    /// tried again (after a cut-off COMMIT that could insert them twice).
    fn stop(mut self, why: String) -> EnqueueSummary {
        self.summary.stopped = Some(why);
        self.summary
    }

    /// Flushes what is pending, records why the run stopped (if it did).
    async fn finish(
        mut self,
        errors: &mut impl Write,
        stopped: Option<String>,
    ) -> anyhow::Result<EnqueueSummary> {
        let flushed = self.flush(errors).await?;
        self.summary.stopped = match (flushed, stopped) {
            (Some(db), Some(first)) => Some(format!("{first}; then {db}")),
            (db, first) => first.or(db),
        };
        Ok(self.summary)
    }

    /// Inserts the pending rows as one transaction. Returns `Some(reason)`
    /// when the chunk could not be written (the run must stop), `None` when
    /// every line of it is settled.
    async fn flush(&mut self, errors: &mut impl Write) -> anyhow::Result<Option<String>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let first = self.pending[0].0;
        let last = self.pending[self.pending.len() - 1].0;
        let items: Vec<NewNotification> = self.pending.iter().map(|(_, n)| n.clone()).collect();
        let mut attempt = 0;
        let results = loop {
            attempt += 1;
            match self.write_chunk(&items).await {
                Ok(results) => break results,
                Err(ChunkError::Commit(e)) => {
                    self.summary.uncertain = Some((first, last));
                    return Ok(Some(format!(
                        "committing lines {first}..{last}: {e} (whether they are in is unknown)"
                    )));
                }
                Err(ChunkError::Statement(e))
                    if matches!(error_number(&e), Some(1205 | 1213))
                        && attempt < CHUNK_ATTEMPTS =>
                {
                    continue
                }
                Err(ChunkError::Statement(e)) => {
                    let hint = match error_number(&e) {
                        Some(1146 | 1054) => " (has `herald migrate` been run?)",
                        _ => "",
                    };
                    return Ok(Some(format!(
                        "inserting lines {first}..{last}: {e}{hint}; none of them was written"
                    )));
                }
            }
        };
        for ((number, n), result) in self.pending.iter().zip(results) {
            match result {
                RowOutcome::Done(Inserted::New) => self.summary.inserted += 1,
                RowOutcome::Done(Inserted::Duplicate { existing_id }) => {
                    self.summary.duplicates += 1;
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
                RowOutcome::Refused { reason } => {
                    self.summary.rejected += 1;
                    writeln!(errors, "line {number}: refused by the database: {reason}")?;
                }
            }
        }
        self.summary.done_through = self.handled.max(last);
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(None)
    }

    async fn write_chunk(
        &mut self,
        items: &[NewNotification],
    ) -> Result<Vec<RowOutcome>, ChunkError> {
        let mut tx = self.conn.begin().await.map_err(ChunkError::Statement)?;
        let results = match enqueue_tolerant(&mut tx, items).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(ChunkError::Statement(e));
            }
        };
        tx.commit().await.map_err(ChunkError::Commit)?;
        Ok(results)
    }
}

enum ChunkError {
    /// Nothing of the chunk was written.
    Statement(sqlx::Error),
    /// The COMMIT itself failed: the outcome is unknown.
    Commit(sqlx::Error),
}

/// One line of input as [`LineReader`] found it.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Text(String),
    /// Longer than the cap; its bytes were skipped, not kept.
    TooLong {
        bytes: u64,
    },
    BadUtf8(String),
    /// A NUL byte: not text at all.
    Nul,
}

/// Splits input into lines without ever holding more than `max` bytes of
/// one: the rest of an overlong line is skipped up to its newline.
struct LineReader<R> {
    inner: R,
    max: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> LineReader<R> {
    fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            max,
            buf: Vec::new(),
        }
    }

    /// The next line, `None` at the end of the input, or the read error
    /// that ends it (every error but an interrupted call is final).
    fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        self.buf.clear();
        let mut seen: u64 = 0;
        let mut too_long = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                if seen == 0 {
                    return Ok(None);
                }
                break;
            }
            let stop = available.iter().position(|&b| b == b'\n' || b == 0);
            let take = stop.unwrap_or(available.len());
            if stop.is_some_and(|i| available[i] == 0) {
                return Ok(Some(Line::Nul));
            }
            if !too_long {
                if self.buf.len() + take > self.max {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&available[..take]);
                }
            }
            seen += take as u64;
            match stop {
                Some(i) => {
                    self.inner.consume(i + 1);
                    break;
                }
                None => self.inner.consume(take),
            }
        }
        if too_long {
            return Ok(Some(Line::TooLong { bytes: seen }));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let bytes = std::mem::take(&mut self.buf);
        Ok(Some(match String::from_utf8(bytes) {
            Ok(s) => Line::Text(s),
            Err(e) => Line::BadUtf8(format!("not valid UTF-8 ({})", e.utf8_error())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut r = LineReader::new(std::io::BufReader::with_capacity(4, input), max);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            let nul = l == Line::Nul;
            out.push(l);
            if nul {
                break;
            }
        }
        out
    }

    #[test]
    fn splits_like_lines_and_caps_length() {
        let got = lines(b"ab\r\n\ncdefghij\nxy", 5);
        assert_eq!(
            got,
            vec![
                Line::Text("ab".into()),
                Line::Text(String::new()),
                Line::TooLong { bytes: 8 },
                Line::Text("xy".into()),
            ]
        );
        let got = lines(b"ok\n\xff\nab\0cd\nnever", 5);
        assert_eq!(got[0], Line::Text("ok".into()));
        assert!(matches!(got[1], Line::BadUtf8(_)));
        assert_eq!(got[2], Line::Nul);
        assert_eq!(got.len(), 3);
    }
}
