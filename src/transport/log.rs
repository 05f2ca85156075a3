//! The log transport: one JSON line per delivery on stdout, for development.

use std::fmt;
use std::io::Write;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{Delivery, SendOutcome, Transport};

/// Writes deliveries as JSON lines. Goes to stdout directly rather than
/// through `tracing`, so the lines stay machine-readable whatever log format
/// and filter the operator chose, and are never interleaved mid-line.
pub struct LogTransport {
    sink: Sink,
}

enum Sink {
    Stdout,
    Writer(Mutex<Box<dyn Write + Send>>),
}

impl fmt::Debug for LogTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = match self.sink {
            Sink::Stdout => "stdout",
            Sink::Writer(_) => "writer",
        };
        f.debug_struct("LogTransport").field("to", &to).finish()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    id: u64,
    user_id: u64,
    channel: &'a str,
    payload: &'a RawValue,
    send_at: DateTime<Utc>,
    attempt: u32,
    idempotency_key: &'a str,
}

impl LogTransport {
    pub fn stdout() -> Self {
        Self { sink: Sink::Stdout }
    }

    /// Lines go to `w` instead of stdout (tests, embedding).
    pub fn to_writer(w: impl Write + Send + 'static) -> Self {
        Self {
            sink: Sink::Writer(Mutex::new(Box::new(w))),
        }
    }

    fn write_line(&self, d: &Delivery<'_>) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(160 + d.payload.get().len());
        serde_json::to_writer(
            &mut line,
            &Line {
                id: d.id,
                user_id: d.user_id,
                channel: d.channel,
                payload: d.payload,
                send_at: d.send_at,
                attempt: d.attempt,
                idempotency_key: d.idempotency_key,
            },
        )?;
        line.push(b'\n');
        match &self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line)?;
                out.flush()
            }
            Sink::Writer(w) => {
                let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                w.write_all(&line)?;
                w.flush()
            }
        }
    }
}

impl Transport for LogTransport {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> BoxFuture<'a, SendOutcome> {
        let outcome = match self.write_line(d) {
            Ok(()) => SendOutcome::Sent,
            Err(e) => SendOutcome::transient(format!("writing to stdout: {e}")),
        };
        Box::pin(std::future::ready(outcome))
    }

    fn kind(&self) -> &'static str {
        "log"
    }
}
