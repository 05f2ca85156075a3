//! The JSON line a run prints on stdout.

use std::io::Write;

use serde::Serialize;

/// One measurement. The first fields are the shared workload's
/// (`DESIGN.md`); scenario-specific figures go to `extra`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub system: &'static str,
    pub scenario: &'static str,
    #[serde(rename = "M")]
    pub m: u64,
    #[serde(rename = "W")]
    pub w: usize,
    #[serde(rename = "C")]
    pub c: usize,
    #[serde(rename = "L_ms")]
    pub l_ms: u64,
    pub wall_s: f64,
    pub jobs_per_s: f64,
    /// Deliveries beyond the first of an id (0 when every id went out once).
    pub dupes: u64,
    /// Enqueued ids never delivered, or whose row did not end `sent`.
    pub lost: u64,
    /// Largest VmHWM over the workers, read just before they were stopped.
    pub peak_rss_mib: f64,
    /// jobs_per_s / (W·C/L), when L > 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ideal_ratio: Option<f64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.dupes == 0 && self.lost == 0
    }

    pub fn set(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.extra.insert(key.to_owned(), value.into());
    }
}

/// Rounds for display: the line is read by people as well as scripts.
pub fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

pub fn emit(report: &Report) -> anyhow::Result<()> {
    print_line(report)
}

/// One compact JSON line on stdout, flushed at once (a script may be
/// waiting for it while the next run starts).
pub fn print_line(value: &impl Serialize) -> anyhow::Result<()> {
    let line = serde_json::to_string(value)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
