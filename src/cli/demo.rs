//! `herald demo [--short] [--json]`: see [`crate::demo`].

use std::process::ExitCode;

use clap::Args;

use crate::config::Settings;
use crate::demo::{self, Size};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// A tenth of the rows (400): the same story in a few seconds.
    #[arg(long)]
    pub short: bool,
    /// Print the summary as one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: &Settings, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let size = if args.short { Size::SHORT } else { Size::FULL };
    demo::run(settings, size, args.json).await
}
