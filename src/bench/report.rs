//! What a run prints on stdout: one JSON line (`--json`) or a summary.

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

/// Prints one run's result: the JSON line with `--json`, else a summary.
pub fn emit(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        return print_line(report);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", summary(report))?;
    out.flush()?;
    Ok(())
}

/// One line for people: the shape of the run, its rate and whether every
/// row went out exactly once.
pub fn summary(r: &Report) -> String {
    let mut line = format!(
        "{}: M={} W={} C={} L={}ms: {:.0} jobs/s in {:.2} s, dupes {}, lost {}, peak RSS {:.1} MiB",
        r.scenario, r.m, r.w, r.c, r.l_ms, r.jobs_per_s, r.wall_s, r.dupes, r.lost, r.peak_rss_mib
    );
    if let Some(ratio) = r.ideal_ratio {
        line.push_str(&format!(", {:.0}% of W·C/L", ratio * 100.0));
    }
    if !r.is_clean() {
        line.push_str(" (NOT CLEAN)");
    }
    line
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

/// The median (NaN for none): what pairs of alternating runs report.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
