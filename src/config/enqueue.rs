//! `herald enqueue` settings.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct EnqueueArgs {
    /// Read JSON lines from this file instead of stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Largest accepted payload, in bytes of compact JSON.
    #[arg(
        long,
        env = "HERALD_MAX_PAYLOAD_BYTES",
        default_value_t = 65_536,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_payload_bytes: usize,
    /// Skip the first N lines: resumes a run that stopped after N lines were
    /// settled (its last message says N), inserting nothing twice.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub skip_lines: usize,
}
