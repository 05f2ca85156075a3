//! `herald enqueue`: JSON lines from stdin or a file; the summary on stderr.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{EnqueueArgs, Settings};
use crate::intake::enqueue_lines;
use crate::notification::Limits;
use crate::store::Store;

pub async fn run(settings: &Settings, args: &EnqueueArgs) -> anyhow::Result<ExitCode> {
    let limits = Limits {
        max_payload_bytes: args.max_payload_bytes,
        default_region: settings.regions[0].clone(),
    };
    let store = Store::connect(&settings.database_url, 2).await?;
    let mut stderr = std::io::stderr().lock();
    let summary = match &args.file {
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            enqueue_lines(&store, std::io::BufReader::new(file), &limits, &mut stderr).await?
        }
        None => enqueue_lines(&store, std::io::stdin().lock(), &limits, &mut stderr).await?,
    };
    writeln!(
        stderr,
        "enqueued {}, duplicates {}, rejected {}",
        summary.inserted, summary.duplicates, summary.rejected
    )?;
    Ok(if summary.rejected > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
