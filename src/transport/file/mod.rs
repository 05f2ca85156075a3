//! The file transport: one JSON line per delivery appended to a file.
//!
//! * this module — [`FileTransport`], the appends;
//! * [`latency`] — the simulated receiver latency of the `file` channel
//!   (`HERALD_FILE_LATENCY_MS`), a feature of this channel only: it lets a
//!   benchmark or a demo stand in for a receiver that takes L ms, measured
//!   to tens of microseconds.

pub mod latency;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{Delivery, SendOutcome, Transport};

/// Appends deliveries to a file; the benchmark's stand-in for a receiver.
///
/// Each line is one `write(2)` on an `O_APPEND` descriptor. On a local
/// filesystem the kernel then places every write at the current end of file
/// atomically, so concurrent tasks and several worker processes appending to
/// the same file never interleave or overwrite lines (this does not hold on
/// NFS). The write is done on the runtime thread: a small append to the page
/// cache takes microseconds, far less than handing it to a blocking pool at
/// tens of thousands of lines per second.
#[derive(Debug)]
pub struct FileTransport {
    file: File,
    path: PathBuf,
    latency: Duration,
}

#[derive(Serialize)]
struct Line<'a> {
    id: u64,
    user_id: u64,
    channel: &'a str,
    attempt: u32,
    key: &'a str,
    send_at: DateTime<Utc>,
    payload: &'a RawValue,
    /// When the line was written, in unix microseconds: the lag benchmark
    /// compares it with the due time.
    at_us: u64,
    /// How long the simulated latency actually took, in microseconds (only
    /// with `HERALD_FILE_LATENCY_MS`): a loaded machine wakes the sleeper
    /// late, and the S2 benchmark reports how much of its distance from
    /// the ideal is this simulation's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_us: Option<u64>,
}

impl FileTransport {
    /// Opens (creating if needed) `path` for appending. `latency` is slept
    /// (precisely, see [`latency`]) before each write to
    /// simulate a slow receiver.
    pub fn open(path: &Path, latency: Duration) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            latency,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, d: &Delivery<'_>, latency_us: Option<u64>) -> std::io::Result<()> {
        let at_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_micros() as u64);
        let mut line = Vec::with_capacity(192 + d.payload.get().len());
        serde_json::to_writer(
            &mut line,
            &Line {
                id: d.id,
                user_id: d.user_id,
                channel: d.channel,
                attempt: d.attempt,
                key: d.idempotency_key,
                send_at: d.send_at,
                payload: d.payload,
                at_us,
                latency_us,
            },
        )?;
        line.push(b'\n');
        loop {
            // Deliberately `write`, not `write_all`: a second call for the
            // rest of a line could land after another process's line.
            match (&self.file).write(&line) {
                Ok(n) if n == line.len() => return Ok(()),
                Ok(n) => {
                    return Err(std::io::Error::other(format!(
                        "short write ({n} of {} bytes)",
                        line.len()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Transport for FileTransport {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> BoxFuture<'a, SendOutcome> {
        Box::pin(async move {
            let mut slept = None;
            if !self.latency.is_zero() {
                let started = Instant::now();
                latency::sleep(self.latency).await;
                slept = Some(started.elapsed().as_micros() as u64);
            }
            match self.append(d, slept) {
                Ok(()) => SendOutcome::Sent,
                Err(e) => {
                    SendOutcome::transient(format!("appending to {}: {e}", self.path.display()))
                }
            }
        })
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}
