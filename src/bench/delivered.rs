//! What the file transport wrote: progress while running, the tally after.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// Counts the lines appended to the output file so far, reading only what
/// is new on every call.
#[derive(Debug)]
pub struct LineCounter {
    file: File,
    buf: Vec<u8>,
    lines: u64,
}

impl LineCounter {
    pub fn open(path: &Path) -> anyhow::Result<LineCounter> {
        Ok(LineCounter {
            file: File::open(path).with_context(|| format!("opening {}", path.display()))?,
            buf: vec![0; 1 << 16],
            lines: 0,
        })
    }

    pub fn lines(&mut self) -> u64 {
        while let Ok(n) = self.file.read(&mut self.buf) {
            if n == 0 {
                break;
            }
            self.lines += self.buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        self.lines
    }
}

/// The fields of a delivery line the benchmark uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Line {
    pub id: u64,
    pub send_at: DateTime<Utc>,
    pub at_us: u64,
    /// The simulated latency as slept (`HERALD_FILE_LATENCY_MS` only).
    #[serde(default)]
    pub latency_us: Option<u64>,
}

pub fn read_lines(path: &Path) -> anyhow::Result<Vec<Line>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// Duplicates (deliveries beyond the first of an id) and losses (expected
/// ids never delivered, or whose row is not `sent`).
pub fn tally(
    expected: &[u64],
    delivered: impl IntoIterator<Item = u64>,
    not_sent: &[u64],
) -> (u64, u64) {
    let mut seen: HashMap<u64, u32> = HashMap::with_capacity(expected.len());
    for id in delivered {
        *seen.entry(id).or_default() += 1;
    }
    let dupes = seen.values().map(|&n| u64::from(n - 1)).sum();
    let not_sent: HashSet<u64> = not_sent.iter().copied().collect();
    let lost = expected
        .iter()
        .filter(|id| !seen.contains_key(id) || not_sent.contains(id))
        .count() as u64;
    (dupes, lost)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_extra_deliveries_and_missing_ids() {
        let (d, l) = tally(&[1, 2, 3, 4], [1, 2, 2, 2, 3], &[3]);
        assert_eq!((d, l), (2, 2));
        assert_eq!(tally(&[1, 2], [2, 1], &[]), (0, 0));
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
    }
}
