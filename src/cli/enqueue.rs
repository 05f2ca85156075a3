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
            let input = std::io::BufReader::new(file);
            enqueue_lines(&store, input, &limits, args.skip_lines, &mut stderr).await?
        }
        None => {
            let input = std::io::stdin().lock();
            enqueue_lines(&store, input, &limits, args.skip_lines, &mut stderr).await?
        }
    };
    if let Some(why) = &summary.stopped {
        writeln!(stderr, "herald: error: {why}")?;
        writeln!(stderr, "{}", crate::intake::resume_hint(&summary))?;
    }
    writeln!(
        stderr,
        "enqueued {}, duplicates {}, rejected {}",
        summary.inserted, summary.duplicates, summary.rejected
    )?;
    Ok(if summary.rejected > 0 || summary.stopped.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
